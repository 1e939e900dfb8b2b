import pytest
import torch
from training_toys import TinyClassifier, classification_data, loader

from rnnkit.training import (
    Callback,
    EarlyStopping,
    LRScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    Trainer,
    ZarembaDecay,
    load_checkpoint,
    set_seed,
    zaremba_lr,
)


class Scripted(Callback):
    """Overwrites val_loss with scripted values, to drive monitors deterministically."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, epoch, logs):
        logs["val_loss"] = self.values[epoch - 1]


def fit(callbacks, epochs, **kwargs):
    set_seed(0)
    x, y = classification_data(n=16)
    kwargs.setdefault("optimizer", "sgd")
    trainer = Trainer(
        TinyClassifier(), kwargs.pop("optimizer"), lr=kwargs.pop("lr", 0.1), quiet=True,
        device="cpu", callbacks=callbacks, **kwargs,
    )  # fmt: skip
    return trainer, trainer.fit(loader(x, y), val_data=loader(x, y), epochs=epochs)


def test_zaremba_lr_presets():
    medium = [zaremba_lr(e, 1.0, 6, 1 / 1.2) for e in (6, 7, 8)]
    assert medium == pytest.approx([1, 1 / 1.2, 1 / 1.44])
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\]; received factor=2"):
        ZarembaDecay(4, 2)


def test_early_stopping_stops_and_restores_best():
    es = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    trainer, hist = fit([Scripted([3.0, 2.0, 2.5, 2.4, 1.0, 0.5]), es], epochs=6)
    # best at epoch 2; epochs 3 and 4 do not improve -> stop after epoch 4 (patience 1)
    assert hist.epoch == [1, 2, 3, 4]
    assert es.stopped_epoch == 4 and es.best_epoch == 2


def test_early_stopping_max_mode_and_missing_monitor():
    es = EarlyStopping(monitor="val_accuracy", patience=0)
    assert es.mode == "max"
    with pytest.raises(KeyError, match=r"'val_accuracy', which is not in the epoch logs"):
        fit([es], epochs=2)


def test_reduce_lr_on_plateau():
    cb = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0)
    _, hist = fit([Scripted([1.0, 2.0, 2.0, 0.5]), cb], epochs=4)
    assert hist.history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_lr_scheduler_factory_per_step():
    _, hist = fit(
        [], epochs=2, scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
        scheduler_interval="step",
    )  # fmt: skip
    # 2 steps per epoch, lr halves after each step; epoch logs the lr of its last step
    assert hist.history["lr"] == pytest.approx([0.05, 0.0125])


def test_model_checkpoint_best_and_last(tmp_path):
    mc = ModelCheckpoint(monitor="val_loss")
    fit([Scripted([3.0, 1.0, 2.0]), mc], epochs=3, run_dir=tmp_path)
    best = load_checkpoint(tmp_path / "checkpoints" / "best")
    last = load_checkpoint(tmp_path, prefer="last")
    assert best.manifest["epoch"] == 2 and last.manifest["epoch"] == 3
    assert mc.best_epoch == 2


def test_model_checkpoint_needs_a_directory():
    with pytest.raises(ValueError, match="ModelCheckpoint needs a directory"):
        fit([ModelCheckpoint()], epochs=1)


def test_callback_order_and_hooks():
    events = []

    class Spy(Callback):
        def on_fit_begin(self):
            events.append("fit_begin")

        def on_epoch_begin(self, epoch):
            events.append(f"epoch_begin {epoch}")

        def on_batch_end(self, step, logs):
            events.append(f"batch {step}")
            assert set(logs) == {"loss", "lr", "weight"}

        def on_epoch_end(self, epoch, logs):
            events.append(f"epoch_end {epoch}")

        def on_fit_end(self):
            events.append("fit_end")

    fit([Spy()], epochs=1)
    assert events == ["fit_begin", "epoch_begin 1", "batch 1", "batch 2", "epoch_end 1", "fit_end"]


def test_scheduler_callback_resumes(tmp_path):
    def run(epochs, resume=False):
        set_seed(0)
        x, y = classification_data(n=16)
        trainer = Trainer(
            TinyClassifier(), "sgd", lr=0.1, quiet=True, device="cpu", run_dir=tmp_path,
            callbacks=[LRScheduler(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.5)),
                       ModelCheckpoint(monitor=None)],
        )  # fmt: skip
        return trainer.fit(loader(x, y), epochs=epochs, resume_from=tmp_path if resume else None)

    run(2)
    hist = run(4, resume=True)
    assert hist.history["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
