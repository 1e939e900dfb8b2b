import json
import math

import pytest
import torch
from training_toys import (
    TinyClassifier,
    TinyStreamLM,
    classification_data,
    loader,
    stream_batches,
)

from rnnkit.training import (
    Accuracy,
    ModelCheckpoint,
    Trainer,
    ZarembaDecay,
    plot_history,
    set_seed,
)


def make_trainer(seed=0, **kwargs):
    set_seed(seed)
    kwargs.setdefault("quiet", True)
    kwargs.setdefault("device", "cpu")
    return Trainer(TinyClassifier(), kwargs.pop("optimizer", "adam"), **kwargs)


def test_fit_reduces_loss_and_history_structure(tmp_path):
    x, y = classification_data()
    trainer = make_trainer(lr=0.05, metrics=["accuracy"], log_every=2)
    hist = trainer.fit(loader(x, y), val_data=loader(x, y, shuffle=False), epochs=8)
    png = plot_history(hist, tmp_path / "history.png")
    assert png.stat().st_size > 10_000
    h = hist.history
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == 8 for v in h.values())
    assert hist.epoch == list(range(1, 9))
    assert h["loss"][-1] < 0.6 * h["loss"][0]
    assert h["val_accuracy"][-1] > 0.8
    assert h["lr"] == [0.05] * 8
    # 48 items / batch 8 = 6 steps per epoch, logged every 2 steps
    assert [s["step"] for s in hist.steps] == list(range(2, 49, 2))
    assert {"step", "epoch", "loss", "lr", "items_per_sec"} <= set(hist.steps[0])
    assert trainer.global_step == 48


def test_epoch_loss_is_weighted_by_batch_size():
    # batches of 5 and 1 items: the epoch loss is the per-item mean, not the mean of batch means
    x, y = classification_data(n=6)
    trainer = make_trainer(optimizer=torch.optim.SGD(TinyClassifier().parameters(), lr=1e-9))
    trainer.model.eval()  # (fit sets train mode; dropout is irrelevant for evaluate)
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    res = trainer.evaluate(batches)
    with torch.no_grad():
        logits, _ = trainer.model(x, y)
        full = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item() / 6
    assert res["loss"] == pytest.approx(full, rel=1e-6)
    assert res["count"] == 6


def test_explicit_weight_and_perplexity_are_exact():
    lm = TinyStreamLM()
    trainer = Trainer(lm, "sgd", lr=0.1, stateful=True, perplexity=True, quiet=True, device="cpu")
    batches = [{"inputs": i, "targets": t, "weight": t.numel()} for i, t in stream_batches()]
    res = trainer.evaluate(batches)
    # reference: run the windows by hand, summing token NLL
    lm.eval()
    nll, n, state = 0.0, 0, None
    with torch.no_grad():
        for b in batches:
            logits, _, state = lm(b["inputs"], b["targets"], state=state)
            nll += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), b["targets"].flatten(), reduction="sum"
            ).item()
            n += b["targets"].numel()
    assert res["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-6)
    assert res["count"] == n


def test_stateful_carries_detached_state_and_resets_each_epoch():
    lm = TinyStreamLM()
    batches = stream_batches(n_windows=3)
    trainer = Trainer(lm, "sgd", lr=0.1, stateful=True, quiet=True, device="cpu")
    trainer.fit(batches, epochs=2)
    got = lm.received
    assert len(got) == 6
    assert got[0] is None and got[3] is None  # reset at each epoch start
    for s in (got[1], got[2], got[4], got[5]):
        assert isinstance(s, torch.Tensor) and s.shape == (1, 2, 6)
        assert not s.requires_grad and s.grad_fn is None  # detached between windows
    # evaluation starts from a fresh state too
    lm.received.clear()
    trainer.evaluate(batches)
    assert lm.received[0] is None and lm.received[1] is not None


def test_stream_lm_overfits():
    set_seed(0)
    lm = TinyStreamLM(hidden=16)
    trainer = Trainer(
        lm, "adam", lr=0.03, stateful=True, perplexity=True, clip_grad_norm=5.0,
        quiet=True, device="cpu", log_every=1,
    )  # fmt: skip
    hist = trainer.fit(stream_batches(), epochs=30)
    assert hist.history["perplexity"][-1] < 1.3 < 3 < hist.history["perplexity"][0]
    assert "grad_norm" in hist.steps[0]


def test_bfloat16_precision_runs_forward_passes_under_autocast():
    # Trainer(precision="bfloat16"): every forward pass (training and evaluation) under
    # torch.autocast in bfloat16, the parameters, gradients and optimizer state in float32
    seen = []

    class Probe(TinyClassifier):
        def forward(self, inputs, targets=None, **extra):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return super().forward(inputs, targets, **extra)

    set_seed(0)
    model = Probe()
    data = loader(*classification_data(), batch_size=16)
    trainer = Trainer(model, "adam", precision="bfloat16", quiet=True, device="cpu")
    hist = trainer.fit(data, val_data=data, epochs=2)
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    seen.clear()
    Trainer(model, "adam", quiet=True, device="cpu").evaluate(data)
    assert seen and not any(on for on, _ in seen)  # float32 (the default): no autocast
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16; received"):
        Trainer(model, "adam", precision="fp8", device="cpu")


def test_model_contract_errors():
    class NoTuple(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, inputs, targets=None, state=None):
            return (inputs * self.w).sum()

    class VectorLoss(NoTuple):
        def forward(self, inputs, targets=None, state=None):
            return inputs, inputs * self.w

    data = [(torch.ones(2), torch.ones(2))]
    with pytest.raises(TypeError, match=r"must return \(logits, loss"):
        Trainer(NoTuple(), quiet=True, device="cpu").fit(data)
    with pytest.raises(TypeError, match=r"stateful=True .* \(logits, loss, new_state\)"):
        Trainer(VectorLoss(), quiet=True, device="cpu", stateful=True).fit(data)
    with pytest.raises(ValueError, match=r"scalar mean loss.*shape \(2,\)"):
        Trainer(VectorLoss(), quiet=True, device="cpu").fit(data)
    with pytest.raises(TypeError, match="a batch must be a tuple"):
        Trainer(VectorLoss(), quiet=True, device="cpu").fit([(1, 2, 3)])
    with pytest.raises(KeyError, match="missing \\['targets'\\]"):
        Trainer(VectorLoss(), quiet=True, device="cpu").fit([{"inputs": 1}])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Trainer(VectorLoss(), "rmsprop")
    with pytest.raises(ValueError, match="epochs must be an int >= 1; received epochs=0"):
        Trainer(VectorLoss(), quiet=True, device="cpu").fit(data, epochs=0)


def test_dict_batches_pass_extra_kwargs():
    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)
            self.seen = []

        def forward(self, inputs, targets=None, mask=None):
            self.seen.append(mask)
            out = self.lin(inputs).squeeze(-1)  # (B, T)
            err = ((out - targets) ** 2 * mask).sum() / mask.sum()
            return out, err

    m = Masked()
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    batch = {"inputs": torch.ones(1, 3, 1), "targets": torch.zeros(1, 3), "mask": mask,
             "weight": mask.sum()}  # fmt: skip
    res = Trainer(m, quiet=True, device="cpu").evaluate([batch])
    assert m.seen[0] is not None and res["count"] == 2


def test_logs_written_to_run_dir(tmp_path):
    x, y = classification_data()
    trainer = make_trainer(run_dir=tmp_path, log_every=3, metrics=[Accuracy()])
    trainer.fit(loader(x, y), val_data=loader(x, y), epochs=2)
    rows = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    csv_lines = (tmp_path / "steps.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,epoch,loss,lr")
    assert len(csv_lines) == 5
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["epoch"] == [1, 2] and len(hist["history"]["val_accuracy"]) == 2


def test_tensorboard_missing_gives_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'rnnkit\[tensorboard\]'"):
        make_trainer(run_dir=tmp_path, tensorboard=True)


def test_zaremba_schedule_by_epoch():
    x, y = classification_data(n=8)
    trainer = make_trainer(optimizer="sgd", lr=1.0, callbacks=[ZarembaDecay(4, 0.5)])
    hist = trainer.fit(loader(x, y), epochs=7)
    assert hist.history["lr"] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]


# ----------------------------------------------------------------------------- resume


def _run_classifier(tmp_path, *, epochs, max_steps=None, resume=False, log_every=1):
    x, y = classification_data()
    trainer = make_trainer(
        seed=123, optimizer="adam", lr=0.01, metrics=["accuracy"], run_dir=tmp_path,
        log_every=log_every, callbacks=[ModelCheckpoint(monitor="val_loss"),
                                        ZarembaDecay(1, 0.5)],
    )  # fmt: skip
    if resume:  # a fresh model/optimizer, as a new process would build them
        set_seed(999)
    hist = trainer.fit(
        loader(x, y, batch_size=7),  # 7 batches, the last one smaller
        val_data=loader(x, y, batch_size=16),
        epochs=epochs,
        max_steps=max_steps,
        resume_from=tmp_path if resume else None,
    )
    return trainer, hist


def _step_losses(hist):
    return [(s["step"], s["epoch"], s["loss"], s["lr"]) for s in hist.steps]


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path):
    _, full = _run_classifier(tmp_path / "full", epochs=3)
    _run_classifier(tmp_path / "cut", epochs=1)
    trainer, resumed = _run_classifier(tmp_path / "cut", epochs=3, resume=True)
    assert _step_losses(resumed) == _step_losses(full)
    assert resumed.history == full.history
    assert resumed.epoch == [1, 2, 3]


@pytest.mark.parametrize("log_every", [1, 3])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, log_every):
    _, full = _run_classifier(tmp_path / "full", epochs=2, log_every=log_every)
    _, part = _run_classifier(tmp_path / "cut", epochs=2, max_steps=10, log_every=log_every)
    assert part.epoch == [1] and part.steps[-1]["step"] <= 10
    manifest = json.loads((tmp_path / "cut/checkpoints/last/manifest.json").read_text())
    assert (manifest["step"], manifest["batch_in_epoch"]) == (10, 3)
    _, resumed = _run_classifier(tmp_path / "cut", epochs=2, resume=True, log_every=log_every)
    assert _step_losses(resumed) == _step_losses(full)
    assert resumed.history == full.history


def test_resume_stateful_mid_epoch(tmp_path):
    def run(run_dir, max_steps=None, resume=False):
        set_seed(5)
        lm = TinyStreamLM(hidden=8)
        lm.rnn.dropout = 0.0
        trainer = Trainer(
            lm, "sgd", lr=0.5, stateful=True, perplexity=True, quiet=True, device="cpu",
            run_dir=run_dir, log_every=1, callbacks=[ModelCheckpoint(monitor=None)],
        )  # fmt: skip
        return trainer.fit(
            stream_batches(n_windows=4),
            epochs=2,
            max_steps=max_steps,
            resume_from=run_dir if resume else None,
        )

    full = run(tmp_path / "full")
    run(tmp_path / "cut", max_steps=6)  # stops in epoch 2 with a carried state
    resumed = run(tmp_path / "cut", resume=True)
    assert _step_losses(resumed) == _step_losses(full)
    assert resumed.history["perplexity"] == full.history["perplexity"]


def test_resume_without_checkpoint_is_clear(tmp_path):
    from rnnkit.training import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint in"):
        _run_classifier(tmp_path, epochs=1, resume=True)


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    lm = TinyStreamLM()
    trainer = Trainer(lm, "sgd", lr=0.1, stateful=True, perplexity=True, device="cpu",
                      unit="token")  # fmt: skip
    trainer.fit(stream_batches(), epochs=1)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "ppl=" in err and "token/s=" in err
    capsys.readouterr()
    Trainer(TinyStreamLM(), stateful=True, device="cpu", quiet=True).fit(stream_batches())
    assert "epoch" not in capsys.readouterr().err
