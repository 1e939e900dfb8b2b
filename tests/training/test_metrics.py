import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rnnkit.training import Accuracy, MeanMetric, perplexity
from rnnkit.training.metrics import build_metrics


def test_accuracy_multiclass_binary_and_ignore_index():
    acc = Accuracy()
    acc.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    acc.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert acc.compute() == pytest.approx(2 / 3)
    binary = Accuracy()
    binary.update(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1.0, 0.0, 0.0]))
    assert binary.compute() == pytest.approx(2 / 3)
    tokens = Accuracy(ignore_index=-100)
    tokens.update(torch.eye(3).unsqueeze(0), torch.tensor([[0, 2, -100]]))  # (1, 3, 3) vs (1, 3)
    assert tokens.compute() == 0.5
    with pytest.raises(ValueError, match=r"received logits \(2, 3\) and targets \(3,\)"):
        Accuracy().update(torch.zeros(2, 3), torch.zeros(3))


def test_accuracy_state_round_trip():
    a = Accuracy()
    a.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    b = Accuracy()
    b.load_state_dict(a.state_dict())
    assert b.compute() == 1.0


@given(st.lists(st.tuples(st.floats(0.0, 50.0), st.integers(1, 100)), min_size=1, max_size=20))
def test_perplexity_is_exp_of_token_mean(batches):
    sums = [s for s, _ in batches]
    counts = [n for _, n in batches]
    assert perplexity(sums, counts) == pytest.approx(math.exp(sum(sums) / sum(counts)))
    assert perplexity(sum(sums), sum(counts)) == pytest.approx(perplexity(sums, counts))


def test_perplexity_differs_from_mean_of_batch_perplexities():
    # a short tail batch must not weigh as much as a full one
    exact = perplexity([10.0, 3.0], [10, 1])
    assert exact == pytest.approx(math.exp(13 / 11))
    assert exact != pytest.approx((math.exp(1.0) + math.exp(3.0)) / 2)


def test_perplexity_errors():
    with pytest.raises(ValueError, match="same length; received 2 and 1"):
        perplexity([1.0, 2.0], [3])
    with pytest.raises(ValueError, match="total token count must be > 0"):
        perplexity(1.0, 0)
    assert perplexity(1e6, 1) == math.inf


def test_build_metrics_names():
    ms = build_metrics({"acc": "accuracy", "mae": lambda lo, t: (lo - t).abs().mean()})
    assert [m.name for m in ms] == ["acc", "mae"] and isinstance(ms[1], MeanMetric)
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        build_metrics(["f2"])
    with pytest.raises(ValueError, match="must be unique"):
        build_metrics(["accuracy", Accuracy()])
    with pytest.raises(ValueError, match="not start with 'val_'"):
        build_metrics({"val_x": Accuracy()})
