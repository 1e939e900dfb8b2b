"""Callbacks: learning-rate schedules, early stopping and checkpointing.

A callback subclasses :class:`Callback` and overrides any of the hooks. The trainer calls them in
list order; epochs are numbered from 1. ``logs`` at epoch end holds ``loss``, ``val_loss``, the
metrics and their ``val_`` twins, ``perplexity`` (LMs) and ``lr``. A callback that must survive a
resume implements :meth:`Callback.state_dict` / :meth:`Callback.load_state_dict`.

NT-ASGD (Merity et al.) is not implemented; :class:`LRScheduler` wraps any ``torch`` scheduler.

>>> [zaremba_lr(e, 1.0, decay_after=4, factor=0.5) for e in range(1, 8)]
[1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rnnkit.training.trainer import Trainer

__all__ = [
    "Callback",
    "ZarembaDecay",
    "zaremba_lr",
    "ReduceLROnPlateau",
    "LRScheduler",
    "EarlyStopping",
    "ModelCheckpoint",
]


class Callback:
    """Base class of trainer callbacks; every hook is optional.

    Attributes:
        trainer: set by the trainer before ``on_fit_begin``.
    """

    trainer: Trainer

    def set_trainer(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_fit_begin(self) -> None:
        """Before the first epoch (also when resuming)."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Before epoch ``epoch`` (1-based); also for a resumed, partly done epoch."""

    def on_batch_end(self, step: int, logs: Mapping[str, Any]) -> None:
        """After optimizer step ``step`` (global, 1-based); ``logs`` has ``loss`` and ``lr``."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        """After epoch ``epoch`` and its validation."""

    def on_fit_end(self) -> None:
        """After the last epoch, early stop or ``max_steps``."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors or JSON-able values needed to resume."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


# --------------------------------------------------------------------------- LR schedules


def zaremba_lr(epoch: int, base_lr: float, decay_after: int, factor: float) -> float:
    """The learning rate of Zaremba et al. (2014) for ``epoch`` (1-based).

    Constant for the first ``decay_after`` epochs, then multiplied by ``factor`` each epoch:
    ``base_lr * factor ** max(0, epoch - decay_after)``. The paper's small model uses
    ``base_lr=1, decay_after=4, factor=0.5``; medium ``6, 1/1.2``; large ``14, 1/1.15``.
    """
    return base_lr * factor ** max(0, epoch - decay_after)


def _base_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    # like torch schedulers: remember the starting lr in the param group (saved with it)
    return [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]


class ZarembaDecay(Callback):
    """Set each parameter group's lr to :func:`zaremba_lr` at the start of every epoch.

    Args:
        decay_after: number of epochs at the base lr (4 for the paper's small model).
        factor: multiplier per later epoch, in (0, 1] (0.5 small, 1/1.2 medium, 1/1.15 large).
    """

    def __init__(self, decay_after: int, factor: float):
        if not isinstance(decay_after, int) or decay_after < 0:
            raise ValueError(f"decay_after must be an int >= 0; received decay_after={decay_after}")
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1]; received factor={factor}")
        self.decay_after = decay_after
        self.factor = factor

    def on_epoch_begin(self, epoch: int) -> None:
        opt = self.trainer.optimizer
        for group, base in zip(opt.param_groups, _base_lrs(opt), strict=True):
            group["lr"] = zaremba_lr(epoch, base, self.decay_after, self.factor)


class ReduceLROnPlateau(Callback):
    """Wrap :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`, stepped on ``monitor`` each epoch.

    Args:
        monitor: the log key watched (``"val_loss"``).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy-like keys, else min).
        factor, patience, threshold, cooldown, min_lr: as in torch.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ):
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor)
        self.kwargs = dict(
            factor=factor, patience=patience, threshold=threshold, cooldown=cooldown, min_lr=min_lr
        )
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._pending_state: Mapping[str, Any] | None = None

    def on_fit_begin(self) -> None:
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.trainer.optimizer, mode=self.mode, **self.kwargs
        )
        if self._pending_state is not None:
            self.scheduler.load_state_dict(dict(self._pending_state))
            self._pending_state = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        assert self.scheduler is not None
        self.scheduler.step(_monitored(logs, self.monitor, self))

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self._pending_state = state


class LRScheduler(Callback):
    """Step any torch LR scheduler each ``"epoch"`` or each ``"step"``.

    Args:
        scheduler: a scheduler built on the trainer's optimizer, or a callable
            ``optimizer -> scheduler`` (use it when the trainer builds the optimizer).
        interval: ``"epoch"`` (after each epoch) or ``"step"`` (after each optimizer step).
    """

    def __init__(self, scheduler: Any, interval: str = "epoch"):
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step'; received interval={interval!r}")
        self._factory = scheduler if not hasattr(scheduler, "step") else None
        self.scheduler = scheduler if hasattr(scheduler, "step") else None
        self.interval = interval

    def on_fit_begin(self) -> None:
        if self.scheduler is None:
            self.scheduler = self._factory(self.trainer.optimizer)

    def on_batch_end(self, step: int, logs: Mapping[str, Any]) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        if self.interval == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            return {}
        return {k: v for k, v in self.scheduler.state_dict().items() if not callable(v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            if self.scheduler is None:
                self.scheduler = self._factory(self.trainer.optimizer)
            self.scheduler.load_state_dict(dict(state))


# ------------------------------------------------------------------------ early stopping


def _resolve_mode(mode: str, monitor: str) -> str:
    if mode not in ("min", "max", "auto"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto'; received mode={mode!r}")
    if mode != "auto":
        return mode
    key = monitor.removeprefix("val_")
    return "max" if any(s in key for s in ("acc", "f1", "auc", "precision", "recall")) else "min"


def _monitored(logs: Mapping[str, float], monitor: str, who: Callback) -> float:
    if monitor not in logs:
        raise KeyError(
            f"{type(who).__name__} monitors {monitor!r}, which is not in the epoch logs; "
            f"available: {sorted(logs)} (monitor 'loss' when there is no validation data)"
        )
    return float(logs[monitor])


class _Best:
    def __init__(self, mode: str, min_delta: float = 0.0):
        self.mode, self.min_delta = mode, abs(min_delta)
        self.value = math.inf if mode == "min" else -math.inf

    def improves(self, v: float) -> bool:
        if math.isnan(v):
            return False
        if self.mode == "min":
            return v < self.value - self.min_delta
        return v > self.value + self.min_delta


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs.

    Args:
        monitor: the log key watched.
        patience: epochs without improvement before stopping.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        min_delta: the smallest change counted as an improvement.
        restore_best_weights: at the end, put back the weights of the best epoch (kept in memory,
            not in checkpoints).

    Attributes:
        stopped_epoch: the epoch after which training stopped (0 if it did not).
        best_epoch: the epoch with the best value.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        mode: str = "auto",
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
    ):
        if patience < 0:
            raise ValueError(f"patience must be >= 0; received patience={patience}")
        self.monitor = monitor
        self.patience = patience
        self.mode = _resolve_mode(mode, monitor)
        self.min_delta = min_delta
        self.restore_best_weights = restore_best_weights
        self._best = _Best(self.mode, min_delta)
        self.wait = 0
        self.best_epoch = 0
        self.stopped_epoch = 0
        self._best_weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        v = _monitored(logs, self.monitor, self)
        if self._best.improves(v):
            self._best.value, self.best_epoch, self.wait = v, epoch, 0
            if self.restore_best_weights:
                self._best_weights = copy.deepcopy(self.trainer.model.state_dict())
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_fit_end(self) -> None:
        if self.restore_best_weights and self._best_weights is not None and self.stopped_epoch:
            self.trainer.model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._best.value, "wait": self.wait, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self._best.value = float(state["best"])
            self.wait, self.best_epoch = int(state["wait"]), int(state["best_epoch"])


# ---------------------------------------------------------------------------- checkpoints


class ModelCheckpoint(Callback):
    """Save ``best`` (by ``monitor``) and ``last`` checkpoints of the trainer.

    Checkpoints go to ``directory/best`` and ``directory/last`` (default: ``<run_dir>/checkpoints``)
    in the format of :mod:`rnnkit.training.checkpoint`, with the trainer's model config,
    artefacts and full training state, so ``Trainer.fit(resume_from=run_dir)`` continues the run.

    Args:
        directory: where to write; defaults to the trainer's ``run_dir / "checkpoints"``.
        monitor: the log key deciding ``best``; ``None`` saves no ``best``.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        save_last: write ``last`` after every epoch and at the end of ``fit`` (also mid-epoch
            when ``max_steps`` stops it, so a resume continues from there).
        every_n_steps: also write ``last`` every this many optimizer steps (mid-epoch).
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        monitor: str | None = "val_loss",
        mode: str = "auto",
        save_last: bool = True,
        every_n_steps: int | None = None,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1; received every_n_steps={every_n_steps}")
        self.directory = Path(directory) if directory is not None else None
        self.monitor = monitor
        self.mode = _resolve_mode(mode, monitor or "loss")
        self.save_last = save_last
        self.every_n_steps = every_n_steps
        self._best = _Best(self.mode)
        self.best_epoch = 0
        self._saved_step = -1

    @property
    def dir(self) -> Path:
        if self.directory is not None:
            return self.directory
        if self.trainer.run_dir is None:
            raise ValueError("ModelCheckpoint needs a directory, or a Trainer with run_dir set")
        return self.trainer.run_dir / "checkpoints"

    def on_fit_begin(self) -> None:
        _ = self.dir  # fail before training, not after the first epoch

    def on_batch_end(self, step: int, logs: Mapping[str, Any]) -> None:
        if self.every_n_steps and self.save_last and step % self.every_n_steps == 0:
            self._save_last()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float]) -> None:
        if self.monitor is not None:
            v = _monitored(logs, self.monitor, self)
            if self._best.improves(v):
                self._best.value, self.best_epoch = v, epoch
                self.trainer.save_checkpoint(self.dir / "best")
        if self.save_last:
            self._save_last()

    def on_fit_end(self) -> None:
        if self.save_last:
            self._save_last()

    def _save_last(self) -> None:
        if self._saved_step == self.trainer.global_step and (self.dir / "last").exists():
            return
        self.trainer.save_checkpoint(self.dir / "last")
        self._saved_step = self.trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._best.value, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self._best.value = float(state["best"])
            self.best_epoch = int(state["best_epoch"])
