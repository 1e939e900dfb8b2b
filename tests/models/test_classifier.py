"""SequenceClassifier: padding invariance for every pooling mode, fast path == masked path,
overfitting, class weights, predict on raw texts, save -> load -> identical predictions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rnnkit.data import LabelMap
from rnnkit.models.classifier import (
    CharOneHot,
    ClassifierConfig,
    SequenceClassifier,
    build_text_classifier,
    load_classifier,
    masked_pool,
    reverse_valid,
    save_classifier,
)
from rnnkit.training import Trainer
from rnnkit.training.checkpoint import CheckpointError

SEQS = [[5, 7, 9, 3], [3], [2, 4, 6, 8, 10, 12]]


def _pad(seqs, width, side):
    out = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "post":
            out[i, : len(s)] = torch.tensor(s)
        else:
            out[i, width - len(s) :] = torch.tensor(s)
    return out


def _model(**kw) -> SequenceClassifier:
    torch.manual_seed(0)
    base = {"vocab_size": 16, "embedding_dim": 5, "units": [4], "head_units": [3]}
    return SequenceClassifier(ClassifierConfig(**{**base, **kw})).double().eval()


CASES = list(
    itertools.product(["last", "mean", "max", "attention"], [False, True], ["lstm", "gru"])
)


@pytest.mark.parametrize(("pooling", "bidirectional", "cell"), CASES)
def test_padding_never_changes_the_logits(pooling, bidirectional, cell):
    model = _model(pooling=pooling, bidirectional=bidirectional, cell=cell, units=[4, 3])
    alone = torch.cat([model(torch.tensor([s]))[0] for s in SEQS])  # each unpadded
    for width, side in [(6, "post"), (6, "pre"), (9, "post"), (9, "pre")]:
        logits, _ = model(_pad(SEQS, width, side))
        torch.testing.assert_close(logits, alone, atol=1e-10, rtol=0)


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
def test_simple_rnn_and_merge_modes_padding_invariant(pooling, merge_mode):
    model = _model(pooling=pooling, cell="simple", merge_mode=merge_mode)
    a = model(_pad(SEQS, 6, "post"))[0]
    b = model(_pad(SEQS, 8, "pre"))[0]
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("pooling", "bidirectional", "cell"), CASES[::3])
def test_fast_path_equals_masked_layers_forward_and_backward(pooling, bidirectional, cell):
    model = _model(pooling=pooling, bidirectional=bidirectional, cell=cell, units=[4, 3])
    ids = _pad(SEQS + [[]], 7, "post")  # includes an empty row
    y = torch.tensor([1, 0, 1, 0])
    grads = []
    for fast in (True, False):
        model.fast_path = fast
        model.zero_grad()
        logits, loss = model(ids, y)
        loss.backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-10, rtol=0)
    for g1, g2 in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_fast_path_equals_masked_layers_in_float32(cell):
    """float32 on the CPU: the fast path's dense calls run the fused recurrence (auto's choice)."""
    model = _model(pooling="mean", bidirectional=True, cell=cell, units=[4, 3]).float().train()
    ids = _pad(SEQS + [[]], 7, "post")
    y = torch.tensor([1, 0, 1, 0])
    runs = []
    for fast in (True, False):
        model.fast_path = fast
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks (none here: rates are 0)
        logits, loss = model(ids, y)
        loss.backward()
        runs.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=1e-5, rtol=1e-5)
    for g1, g2 in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)


def test_feature_inputs_with_lengths_and_masks():
    torch.manual_seed(0)
    cfg = ClassifierConfig(input_size=3, units=[4], bidirectional=True, pooling="mean")
    model = SequenceClassifier(cfg).eval()
    x = torch.randn(2, 5, 3)
    lengths = torch.tensor([5, 2])
    a = model(x, lengths=lengths)[0]
    b = model(x[1:, :2])[0]
    torch.testing.assert_close(a[1:], b)
    left = torch.zeros(2, 5, 3)
    left[0], left[1, 3:] = x[0], x[1, :2]
    mask = torch.tensor([[True] * 5, [False, False, False, True, True]])
    torch.testing.assert_close(model(left, mask=mask)[0], a)


def test_masked_pool_and_reverse_valid():
    x = torch.arange(8.0).reshape(2, 4, 1)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    assert masked_pool(x, mask, "mean").tolist() == [[0.5], [0.0]]
    assert masked_pool(x, mask, "max").tolist() == [[1.0], [0.0]]
    with pytest.raises(ValueError, match="mode must be"):
        masked_pool(x, mask, "median")
    r = reverse_valid(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([2, 0]))
    assert r.tolist() == [[2, 1, 3], [4, 5, 6]]


def test_binary_and_multiclass_heads_and_class_weights():
    ids = _pad(SEQS, 6, "post")
    binary = _model()
    logits, loss = binary(ids, torch.tensor([1, 0, 1]))
    assert logits.shape == (3,) and loss.dim() == 0
    multi = _model(num_classes=3)
    logits, loss = multi(ids, torch.tensor([2, 0, 1]))
    assert logits.shape == (3, 3) and not multi.config.binary
    y = torch.tensor([1, 0, 0])
    weighted = _model(class_weights=[1.0, 3.0])
    logits, loss = weighted(ids, y)
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double(), reduction="none")
    w = torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(loss, (per * w).sum() / w.sum())
    weighted3 = _model(num_classes=3, class_weights=[1.0, 2.0, 0.5])
    logits, loss = weighted3(ids, torch.tensor([2, 0, 1]))
    ref = torch.nn.functional.cross_entropy(
        logits, torch.tensor([2, 0, 1]), weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    )
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cell": "rnn"}, "cell must be one of"),
        ({"pooling": "sum"}, "pooling must be one of"),
        ({"units": []}, "units must be"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"class_weights": [1.0]}, "class_weights must be 2"),
        ({"merge_mode": None}, "merge_mode must be one of"),
        ({"input_size": 3}, "not both"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ClassifierConfig(**{"vocab_size": 10, **kw})
    with pytest.raises(ValueError, match="unknown classifier config keys"):
        ClassifierConfig.from_dict({"vocab_size": 10, "unit": 3})


def test_overfits_a_tiny_dataset_with_the_trainer():
    texts = ["good great fine", "great good", "bad awful", "awful bad poor", "fine good", "poor"]
    labels = [1, 1, 0, 0, 1, 0]
    torch.manual_seed(0)
    model = build_text_classifier(
        texts, LabelMap(["neg", "pos"]), embedding_dim=8, units=[8], pooling="max", head_units=[8]
    )
    ids = [model.encoder.encode(t) for t in texts]
    x = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for i, s in enumerate(ids):
        x[i, : len(s)] = torch.tensor(s)
    batch = {"inputs": x, "targets": torch.tensor(labels)}
    trainer = Trainer(model, "adam", lr=0.05, metrics=["accuracy"], quiet=True, device="cpu")
    history = trainer.fit([batch], epochs=40)
    assert history.history["loss"][-1] < 0.05
    assert history.history["accuracy"][-1] == 1.0
    assert [p["label"] for p in model.predict(texts)] == ["pos", "pos", "neg", "neg", "pos", "neg"]


def test_predict_proba_predict_and_empty_texts():
    model = build_text_classifier(
        ["a b c", "d e"], LabelMap(["x", "y", "z"]), embedding_dim=4, units=[3], head_units=[]
    )
    p = model.predict_proba(["a b", "c d e", "unknown words"])
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1.0, atol=1e-6)
    out = model.predict(["a b", "   ", "!!!"], on_empty="null")
    assert out[0]["label"] in {"x", "y", "z"} and out[0]["probability"] == pytest.approx(
        p[0].max(), abs=1e-6
    )
    assert out[1] == {"text": "   ", "label": None, "probability": None, "error": "empty text"}
    assert out[2]["label"] is None
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        model.predict(["a", ""])
    with pytest.raises(ValueError, match="on_empty must be"):
        model.predict(["a"], on_empty="skip")
    bare = _model()
    with pytest.raises(RuntimeError, match="no text encoder"):
        bare.predict(["a"])


def test_save_load_gives_identical_predictions(tmp_path):
    texts = ["the film was great", "awful film, truly bad", "great acting", "bad plot"] * 3
    torch.manual_seed(1)
    model = build_text_classifier(
        texts,
        LabelMap(["neg", "pos"]),
        embedding_dim=6,
        units=[5, 4],
        cell="gru",
        pooling="attention",
        attention_hidden=3,
        max_length=3,
        truncating="pre",
    )
    path = save_classifier(model, tmp_path / "ckpt")
    loaded = load_classifier(path)
    queries = ["great film", "what a bad, bad film it was", "never seen words"]
    np.testing.assert_array_equal(model.predict_proba(queries), loaded.predict_proba(queries))
    assert loaded.predict(queries) == model.predict(queries)
    assert loaded.max_length == 3 and loaded.truncating == "pre"
    assert loaded.encoder.get_vocabulary() == model.encoder.get_vocabulary()
    assert loaded.label_map == model.label_map


def test_char_onehot_model_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SequenceClassifier(
        ClassifierConfig(
            input_size=3, cell="simple", units=[4], bidirectional=False, head_units=[]
        ),
        encoder=CharOneHot("BTE"),
        label_map=LabelMap(["invalid", "valid"]),
    )
    loaded = load_classifier(save_classifier(model, tmp_path / "c"))
    assert loaded.predict(["BTE", "BE"]) == model.predict(["BTE", "BE"])
    with pytest.raises(ValueError, match="not in the alphabet"):
        model.predict(["BXE"])


def test_load_rejects_non_classifier_checkpoints(tmp_path):
    from rnnkit.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "lin", torch.nn.Linear(2, 1), config={"a": 1})
    with pytest.raises(CheckpointError, match="not a sequence-classifier checkpoint"):
        load_classifier(tmp_path / "lin")


def test_dropouts_train_mode_random_eval_mode_deterministic_and_padding_invariant():
    model = _model(dropout=0.3, recurrent_dropout=0.3, embedding_dropout=0.2, head_dropout=0.2,
                   pooling="mean")  # fmt: skip
    ids = _pad(SEQS, 6, "post")
    model.train()
    assert not model._fast_path_ok()  # recurrent dropout in training: the masked layers run
    a, b = model.encode(ids), model.encode(ids)
    assert not torch.allclose(a, b)
    model.eval()
    assert model._fast_path_ok()
    torch.testing.assert_close(model(ids)[0], model(_pad(SEQS, 8, "pre"))[0], atol=1e-10, rtol=0)
