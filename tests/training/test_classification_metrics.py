"""Classification metrics against hand-computed values and brute-force definitions."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from rnnkit.training.classification_metrics import (
    MacroF1,
    classification_report,
    confusion_matrix,
    format_confusion_matrix,
    format_report,
    plot_confusion_matrix,
    precision_recall_f1,
    roc_auc,
)


def test_confusion_matrix_hand_worked():
    cm = confusion_matrix([0, 1, 2, 2, 1, 0], [0, 2, 2, 1, 1, 0], num_classes=3)
    assert cm.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 1])).tolist() == [[0, 0], [1, 1]]
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], num_classes=2)


def test_precision_recall_f1_hand_worked_and_zero_division():
    s = precision_recall_f1([[2, 0, 0], [0, 1, 1], [0, 1, 1]])
    assert s["precision"] == [1.0, 0.5, 0.5]
    assert s["recall"] == [1.0, 0.5, 0.5]
    assert s["f1"] == [1.0, 0.5, 0.5]
    assert s["support"] == [2, 2, 2]
    assert s["macro"]["f1"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(4 / 6)
    z = precision_recall_f1([[3, 0], [0, 0]])  # class 1 never true nor predicted
    assert z["precision"] == [1.0, 0.0] and z["f1"] == [1.0, 0.0]
    assert z["weighted"]["f1"] == 1.0


def _auc_brute(y, s):
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        s = rng.integers(0, 5, 30).astype(float)  # many ties
        if 0 < y.sum() < 30:
            assert roc_auc(y, s) == pytest.approx(_auc_brute(y, s))
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert roc_auc([1, 0], [0.2, 0.9]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.9]))
    with pytest.raises(ValueError, match="binary"):
        roc_auc([0, 2], [0.1, 0.2])


def test_classification_report_is_json_and_printable(tmp_path):
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    r = classification_report([0, 1, 2, 2], probs, ["a", "b", "c"])
    json.dumps(r)
    assert r["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert r["per_class"]["c"]["recall"] == 0.5
    assert "roc_auc" not in r
    text = format_report(r)
    assert "macro avg" in text and "true \\ pred" in text
    with pytest.raises(ValueError, match="label names"):
        classification_report([0], [[0.5, 0.5]], ["a", "b", "c"])


def test_format_confusion_matrix_alignment():
    text = format_confusion_matrix([[10, 0], [3, 1234]], ["neg", "pos"])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["pos", "3", "1234"]


def test_plot_confusion_matrix_writes_png(tmp_path):
    path = plot_confusion_matrix([[5, 1], [2, 7]], tmp_path / "sub" / "cm.png", ["neg", "pos"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = plot_confusion_matrix(np.eye(6, dtype=int), tmp_path / "n.png", normalize=True)
    assert path.stat().st_size > 1000


def test_macro_f1_metric_accumulates_and_resumes():
    m = MacroF1(3)
    m.update(torch.tensor([[2.0, 0, 0], [0, 2.0, 0]]), torch.tensor([0, 2]))
    state = m.state_dict()
    m2 = MacroF1(3)
    m2.load_state_dict(state)
    for metric in (m, m2):
        metric.update(torch.tensor([[0, 0, 1.0]]), torch.tensor([2]))
    ref = precision_recall_f1(confusion_matrix([0, 2, 2], [0, 1, 2], 3))["macro"]["f1"]
    assert m.compute() == pytest.approx(ref) and m2.compute() == pytest.approx(ref)
