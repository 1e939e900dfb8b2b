"""The model-agnostic training loop: ``Trainer.fit`` / ``Trainer.evaluate``.

The model contract (nanoGPT): ``model(inputs, targets, **extra) -> (logits, loss)`` where ``loss``
is the scalar *mean* over the batch's ``weight`` units (tokens for an LM, items for a classifier).
A stateful stream LM (``Trainer(stateful=True)``) is called as
``model(inputs, targets, state=state, **extra) -> (logits, loss, new_state)``; the trainer carries
the state from one BPTT window to the next, detached, and resets it to ``None`` (the model's zero
state) at the start of every epoch and of every evaluation::

    epoch e:  state=None ─► [window 1] ─► detach ─► [window 2] ─► detach ─► ... ─► [window n]
    epoch e+1: state=None ─► ...

Batches are ``(inputs, targets)`` tuples or dicts ``{"inputs", "targets", "weight"?, **extra}``;
``extra`` keys (``lengths``, ``mask``, ...) are passed to the model as keyword arguments. Each
batch's weight (``"weight"``, else ``Trainer(batch_weight=fn)``, else ``targets.numel()``) makes the
epoch loss the exact per-unit mean: ``sum(loss_b * w_b) / sum(w_b)``; for an LM whose loss is the
mean token NLL, ``perplexity = exp(loss)`` is then the exact perplexity of the epoch.

A tiny regression, end to end:

>>> _ = torch.manual_seed(0)
>>> x = torch.randn(64, 3); y = x @ torch.tensor([1.0, -2.0, 0.5])
>>> class Reg(torch.nn.Module):
...     def __init__(self):
...         super().__init__(); self.lin = torch.nn.Linear(3, 1)
...     def forward(self, inputs, targets=None):
...         out = self.lin(inputs).squeeze(-1)
...         loss = None if targets is None else torch.nn.functional.mse_loss(out, targets)
...         return out, loss
>>> data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
>>> trainer = Trainer(Reg(), "adam", lr=0.1, quiet=True, device="cpu")
>>> history = trainer.fit(data, val_data=data, epochs=5)
>>> history.history["loss"][-1] < history.history["loss"][0]
True
>>> sorted(trainer.evaluate(data))
['count', 'loss']
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from rnnkit.training.callbacks import Callback, LRScheduler, ModelCheckpoint
from rnnkit.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from rnnkit.training.history import History
from rnnkit.training.logs import ProgressBar, StepLogger, TensorBoardLogger
from rnnkit.training.metrics import Metric, build_metrics, safe_exp
from rnnkit.training.utils import (
    detach_state,
    get_rng_state,
    move_to_device,
    select_device,
    set_rng_state,
    set_seed,
)

__all__ = ["Trainer", "TrainableModel", "StatefulModel", "build_optimizer", "unpack_batch"]

# Trainer(precision=...): the autocast dtype of the forward pass (float32: none)
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class TrainableModel(Protocol):
    """``model(inputs, targets, **extra) -> (logits, loss)``, loss a scalar mean."""

    def __call__(self, inputs: Any, targets: Any, **extra: Any) -> tuple[torch.Tensor, ...]: ...


class StatefulModel(Protocol):
    """``model(inputs, targets, state=state, **extra) -> (logits, loss, new_state)``.

    ``state=None`` means the model's initial (zero) state; ``new_state`` is any nesting of
    tuples/lists/dicts of tensors (see :func:`~rnnkit.training.utils.detach_state`).
    """

    def __call__(
        self, inputs: Any, targets: Any, *, state: Any = None, **extra: Any
    ) -> tuple[torch.Tensor, torch.Tensor, Any]: ...


_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """Build an optimizer from a simple config.

    Args:
        params: the parameters (``model.parameters()`` lists tied parameters once).
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: learning rate (> 0).
        weight_decay: L2 penalty (decoupled for AdamW).
        momentum: SGD momentum (ignored by Adam/AdamW).

    Raises:
        ValueError: unknown name or a non-positive lr.

    >>> type(build_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", lr=1.0)).__name__
    'SGD'
    """
    key = name.lower()
    if key not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}; received {name!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0; received lr={lr}")
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if key == "sgd":
        kwargs["momentum"] = momentum
    return _OPTIMIZERS[key](params, **kwargs)


def unpack_batch(batch: Any) -> tuple[Any, Any, dict[str, Any], Any]:
    """Split a batch into ``(inputs, targets, extra_kwargs, weight_or_None)``.

    >>> unpack_batch((1, 2))
    (1, 2, {}, None)
    >>> unpack_batch({"inputs": 1, "targets": 2, "weight": 5, "lengths": 3})
    (1, 2, {'lengths': 3}, 5)
    """
    if isinstance(batch, Mapping):
        missing = [k for k in ("inputs", "targets") if k not in batch]
        if missing:
            raise KeyError(
                f"a dict batch needs the keys 'inputs' and 'targets'; missing {missing}, "
                f"received keys {sorted(batch)}"
            )
        extra = {k: v for k, v in batch.items() if k not in ("inputs", "targets", "weight")}
        return batch["inputs"], batch["targets"], extra, batch.get("weight")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1], {}, None
    raise TypeError(
        "a batch must be a tuple (inputs, targets) or a dict with 'inputs' and 'targets'; "
        f"received {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def _default_weight(targets: Any) -> Any:
    if isinstance(targets, torch.Tensor):
        return targets.numel()
    return len(targets)


class Trainer:
    """Train and evaluate any model that follows the ``(logits, loss)`` contract.

    Args:
        model: the module (moved to ``device``).
        optimizer: an optimizer built on the model's parameters, or a name for
            :func:`build_optimizer` (``"sgd"``, ``"adam"``, ``"adamw"``).
        lr: learning rate when the optimizer is built here.
        weight_decay: weight decay when the optimizer is built here.
        momentum: SGD momentum when the optimizer is built here.
        scheduler: a torch LR scheduler, or ``optimizer -> scheduler`` (shorthand for the
            :class:`~rnnkit.training.callbacks.LRScheduler` callback).
        scheduler_interval: ``"epoch"`` or ``"step"``.
        clip_grad_norm: clip the global gradient norm to this value (``None``: no clipping);
            the pre-clip norm is logged as ``grad_norm``.
        metrics: :class:`~rnnkit.training.metrics.Metric` objects, ``fn(logits, targets)``
            callables or names (``"accuracy"``); a list or ``{name: metric}``.
        callbacks: :class:`~rnnkit.training.callbacks.Callback` objects.
        stateful: carry a recurrent state across batches (see the module docstring).
        perplexity: also report ``perplexity = exp(loss)`` (for LMs whose loss is token NLL).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (see :func:`select_device`).
        run_dir: the run folder for step logs, ``history.json``, checkpoints, TensorBoard.
        log_every: log (history.steps, CSV/JSONL, TensorBoard) every this many optimizer steps.
        quiet: no progress bars (they are also off when stderr is not a terminal).
        tensorboard: write TensorBoard scalars to ``run_dir/tensorboard`` (optional extra).
        seed: seed everything (:func:`set_seed`) at the start of a fresh ``fit``.
        batch_weight: ``fn(inputs, targets) -> weight`` when batches carry no ``"weight"``;
            default ``targets.numel()``.
        unit: what the weight counts, for throughput logs (``"token"``, ``"item"``).
        model_config: JSON-able config from which the caller rebuilds the model (checkpoints).
        artifacts: ``{name: JSON-able}`` saved with every checkpoint (vocabulary, label map).
        precision: ``"float32"``, or ``"bfloat16"``: the model's forward pass (training and
            evaluation) under ``torch.autocast`` in bfloat16 on the trainer's device, the
            parameters, their gradients and the optimizer in float32 (no loss scaling is needed
            in bfloat16). rnnkit's recurrent layers then run their recurrence in bfloat16.

    Attributes:
        history: the :class:`History` of the current/last ``fit``.
        global_step: optimizer steps taken.
        stop_training: set by a callback to stop after the current epoch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | str = "adam",
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        clip_grad_norm: float | None = None,
        metrics: Sequence[Metric | Callable | str] | Mapping[str, Any] | None = None,
        callbacks: Sequence[Callback] | None = None,
        stateful: bool = False,
        perplexity: bool = False,
        device: str | torch.device | None = "auto",
        run_dir: str | os.PathLike | None = None,
        log_every: int = 10,
        quiet: bool = False,
        tensorboard: bool = False,
        seed: int | None = None,
        batch_weight: Callable[[Any, Any], Any] | None = None,
        unit: str = "item",
        model_config: Mapping[str, Any] | None = None,
        artifacts: Mapping[str, Any] | None = None,
        precision: str = "float32",
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; received {type(model).__name__}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None; received {clip_grad_norm}")
        if not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"log_every must be an int >= 1; received log_every={log_every}")
        if tensorboard and run_dir is None:
            raise ValueError("tensorboard=True needs run_dir (the logs go to run_dir/tensorboard)")
        if precision not in PRECISIONS:
            known = ", ".join(PRECISIONS)
            raise ValueError(f"precision must be one of {known}; received precision={precision!r}")
        self.precision = precision
        self.device = select_device(device)
        self.model = model.to(self.device)
        if isinstance(optimizer, str):
            optimizer = build_optimizer(
                self.model.parameters(), optimizer, lr=lr, weight_decay=weight_decay,
                momentum=momentum,
            )  # fmt: skip
        elif not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or one of {sorted(_OPTIMIZERS)}; "
                f"received {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.clip_grad_norm = clip_grad_norm
        self.metrics = build_metrics(metrics)
        cbs = list(callbacks or [])
        if scheduler is not None:
            cbs.insert(0, LRScheduler(scheduler, interval=scheduler_interval))
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback objects; received {cb!r}")
        # checkpoints last, so that they capture every other callback's end-of-epoch state
        self.callbacks = [c for c in cbs if not isinstance(c, ModelCheckpoint)] + [
            c for c in cbs if isinstance(c, ModelCheckpoint)
        ]
        self.stateful = stateful
        self.perplexity = perplexity
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log_every = log_every
        self.quiet = quiet
        self.seed = seed
        self.batch_weight = batch_weight
        self.unit = unit
        self.model_config = dict(model_config) if model_config is not None else None
        self.artifacts = dict(artifacts or {})
        self._tb = TensorBoardLogger(self.run_dir / "tensorboard") if tensorboard else None
        self.history = History()
        self.global_step = 0
        self.epochs_done = 0
        self.batch_in_epoch = 0
        self.stop_training = False
        self._in_epoch = False
        self._epoch_ctx: dict[str, Any] = {}
        self._resume_partial: dict[str, Any] | None = None
        self._step_logger: StepLogger | None = None
        self._generator: torch.Generator | None = None

    # ----------------------------------------------------------------------------- fit

    def fit(
        self,
        train_data: Iterable[Any],
        val_data: Iterable[Any] | None = None,
        *,
        epochs: int = 1,
        max_steps: int | None = None,
        resume_from: str | os.PathLike | None = None,
    ) -> History:
        """Train for ``epochs`` epochs (total, counting resumed ones) or ``max_steps`` steps.

        Args:
            train_data: an iterable of batches, re-iterated each epoch (a DataLoader, a list).
                For an exact resume its order must be a function of the global RNG state at the
                epoch start (a shuffled DataLoader is) or of ``sampler.set_epoch(epoch)``.
            val_data: batches evaluated after every epoch (``val_`` keys).
            epochs: the epoch to stop after (Keras semantics: a run resumed after epoch 1
                with ``epochs=3`` trains epochs 2 and 3).
            max_steps: stop after this many optimizer steps in total, mid-epoch if need be
                (the partial epoch is not in ``history.history``, its steps are in
                ``history.steps``, and a ``ModelCheckpoint`` saves ``last`` so that a resume
                continues from that very batch).
            resume_from: a run folder (its ``last`` checkpoint) or checkpoint directory written
                by this trainer's checkpoints: weights, optimizer, callbacks, RNG, history and
                position are restored and training continues as if never interrupted.

        Returns:
            The :class:`History`.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1; received epochs={epochs}")
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be an int >= 1 or None; received {max_steps}")
        self.history = History()
        self.global_step = self.epochs_done = self.batch_in_epoch = 0
        self._resume_partial = None
        self.stop_training = False
        for cb in self.callbacks:
            cb.set_trainer(self)
        self._generator = getattr(train_data, "generator", None)
        if resume_from is not None:
            self._restore(load_checkpoint(resume_from, prefer="last"))
        elif self.seed is not None:
            set_seed(self.seed)
        self.history.params = {"epochs": epochs, "max_steps": max_steps}
        if self.run_dir is not None:
            self._step_logger = StepLogger(self.run_dir)
        try:
            for cb in self.callbacks:
                cb.on_fit_begin()
            for epoch in range(self.epochs_done + 1, epochs + 1):
                if max_steps is not None and self.global_step >= max_steps:
                    break
                logs = self._train_epoch(train_data, epoch, epochs, max_steps)
                if logs is None:  # max_steps reached mid-epoch
                    break
                if val_data is not None:
                    val = self.evaluate(val_data)
                    val.pop("count", None)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                self.epochs_done = epoch
                self.batch_in_epoch = 0
                self._in_epoch = False
                self.history.append_epoch(epoch, logs)
                for cb in self.callbacks:
                    cb.on_epoch_end(epoch, logs)
                self._write_history()
                if self._tb is not None:
                    self._tb.log("epoch", logs, epoch)
                if self.stop_training:
                    break
            for cb in self.callbacks:
                cb.on_fit_end()
        finally:
            if self._step_logger is not None:
                self._step_logger.close()
                self._step_logger = None
        self._write_history()
        return self.history

    def _train_epoch(
        self, data: Iterable[Any], epoch: int, epochs: int, max_steps: int | None
    ) -> dict[str, float] | None:
        self.model.train()
        generator = getattr(data, "generator", None)
        partial, self._resume_partial = self._resume_partial, None
        if partial is not None:
            set_rng_state(partial["epoch_rng"], generator)
        sampler = getattr(data, "sampler", None)
        for obj in (data, sampler, getattr(data, "batch_sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        ctx: dict[str, Any] = {
            "epoch_rng": get_rng_state(generator),
            "loss_sum": torch.zeros((), dtype=torch.float64, device=self.device),
            "weight_sum": torch.zeros((), dtype=torch.float64, device=self.device),
            "log_loss_sum": torch.zeros((), dtype=torch.float64, device=self.device),
            "log_weight_sum": torch.zeros((), dtype=torch.float64, device=self.device),
            "state": None,
        }
        for m in self.metrics:
            m.reset()
        skip = 0
        if partial is not None:
            for key in ("loss_sum", "weight_sum", "log_loss_sum", "log_weight_sum"):
                ctx[key] = partial[key].to(self.device)
            for m, s in zip(self.metrics, partial["metrics"], strict=True):
                m.load_state_dict(s)
            ctx["state"] = move_to_device(partial["state"], self.device)
            skip = int(partial["batch_in_epoch"])
        self._epoch_ctx = ctx
        self._in_epoch = True
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
        bar = ProgressBar(total, f"epoch {epoch}/{epochs}", quiet=self.quiet, unit=self.unit)
        it = iter(data)
        for i in range(skip):  # replay the data order up to where the checkpoint was taken
            try:
                next(it)
            except StopIteration:
                raise CheckpointError(
                    f"cannot resume at batch {skip} of epoch {epoch}: the data has only {i} "
                    "batches (is it the same data as in the interrupted run?)"
                ) from None
        if partial is not None:
            set_rng_state(partial["rng"], generator)
            bar.update(skip)
        self.batch_in_epoch = skip
        t_log = t_bar = time.perf_counter()
        stopped = False
        try:
            for batch in it:
                inputs, targets, extra, weight = self._prepare(batch)
                self.optimizer.zero_grad(set_to_none=True)
                logits, loss, ctx["state"] = self._forward(inputs, targets, extra, ctx["state"])
                loss.backward()
                grad_norm = None
                if self.clip_grad_norm is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        self.model.parameters(), self.clip_grad_norm
                    )
                self.optimizer.step()
                self.global_step += 1
                self.batch_in_epoch += 1
                w = torch.as_tensor(weight, dtype=torch.float64, device=self.device)
                wl = loss.detach().to(torch.float64) * w
                ctx["loss_sum"] += wl
                ctx["weight_sum"] += w
                ctx["log_loss_sum"] += wl
                ctx["log_weight_sum"] += w
                for m in self.metrics:
                    m.update(logits, targets, weight)
                lr = self.optimizer.param_groups[0]["lr"]
                if self.global_step % self.log_every == 0:
                    now = time.perf_counter()
                    self._log_step(epoch, lr, grad_norm, now - t_log)
                    t_log = now
                bar.update()
                now = time.perf_counter()
                if bar.enabled and now - t_bar > 0.5:
                    run_loss = float(ctx["loss_sum"] / ctx["weight_sum"])
                    ppl = safe_exp(run_loss) if self.perplexity else None
                    rate = float(ctx["weight_sum"]) / max(now - bar.bar.start_t, 1e-9)  # type: ignore[union-attr]
                    bar.set_values(run_loss, ppl, rate)
                    t_bar = now
                step_logs = {"loss": loss.detach(), "lr": lr, "weight": weight}
                for cb in self.callbacks:
                    cb.on_batch_end(self.global_step, step_logs)
                if max_steps is not None and self.global_step >= max_steps:
                    stopped = total is None or self.batch_in_epoch < total
                    break
            if bar.enabled and self.batch_in_epoch > 0:
                run_loss = float(ctx["loss_sum"] / ctx["weight_sum"])
                elapsed = time.perf_counter() - bar.bar.start_t  # type: ignore[union-attr]
                bar.set_values(
                    run_loss,
                    safe_exp(run_loss) if self.perplexity else None,
                    float(ctx["weight_sum"]) / max(elapsed, 1e-9),
                )
        finally:
            bar.close()
        if stopped:
            return None
        if self.batch_in_epoch == 0:
            raise ValueError(f"train_data yielded no batches in epoch {epoch}")
        logs = {"loss": float(ctx["loss_sum"] / ctx["weight_sum"])}
        if self.perplexity:
            logs["perplexity"] = safe_exp(logs["loss"])
        for m in self.metrics:
            logs[m.name] = m.compute()
        logs["lr"] = lr
        return logs

    def _log_step(self, epoch: int, lr: float, grad_norm: Any, seconds: float) -> None:
        ctx = self._epoch_ctx
        weight = float(ctx["log_weight_sum"])
        row: dict[str, Any] = {
            "step": self.global_step,
            "epoch": epoch,
            "loss": float(ctx["log_loss_sum"]) / weight if weight else math.nan,
        }
        if self.perplexity:
            row["perplexity"] = safe_exp(row["loss"])
        row["lr"] = lr
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        row[f"{self.unit}s_per_sec"] = weight / seconds if seconds > 0 else math.nan
        row["time"] = time.time()
        ctx["log_loss_sum"] = torch.zeros_like(ctx["log_loss_sum"])
        ctx["log_weight_sum"] = torch.zeros_like(ctx["log_weight_sum"])
        self.history.steps.append(row)
        if self._step_logger is not None:
            self._step_logger.log(row)
        if self._tb is not None:
            self._tb.log("train", row, self.global_step)

    # ------------------------------------------------------------------------ evaluate

    @torch.no_grad()
    def evaluate(self, data: Iterable[Any]) -> dict[str, float]:
        """Evaluate on ``data`` (eval mode, no gradients; stateful models start from ``None``).

        Returns:
            ``{"loss": weighted mean loss, <metric>: value, "perplexity": exp(loss) (if enabled),
            "count": total weight (tokens/items evaluated)}``. With per-batch weights equal to
            each batch's token count this perplexity is exact over the whole data; the evaluation
            batch size (set by the caller's loader) should be reported with it.

        Raises:
            ValueError: ``data`` yielded no batches.
        """
        was_training = self.model.training
        self.model.eval()
        metrics = [_fresh(m) for m in self.metrics]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        weight_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        state = None
        n = 0
        try:
            for batch in data:
                inputs, targets, extra, weight = self._prepare(batch)
                logits, loss, state = self._forward(inputs, targets, extra, state)
                w = torch.as_tensor(weight, dtype=torch.float64, device=self.device)
                loss_sum += loss.to(torch.float64) * w
                weight_sum += w
                for m in metrics:
                    m.update(logits, targets, weight)
                n += 1
        finally:
            self.model.train(was_training)
        if n == 0:
            raise ValueError("evaluate: the data yielded no batches")
        out = {"loss": float(loss_sum / weight_sum)}
        if self.perplexity:
            out["perplexity"] = safe_exp(out["loss"])
        for m in metrics:
            out[m.name] = m.compute()
        out["count"] = float(weight_sum)
        return out

    # --------------------------------------------------------------------------- steps

    def _prepare(self, batch: Any) -> tuple[Any, Any, dict[str, Any], Any]:
        inputs, targets, extra, weight = unpack_batch(batch)
        inputs = move_to_device(inputs, self.device)
        targets = move_to_device(targets, self.device)
        extra = move_to_device(extra, self.device)
        if weight is None:
            if self.batch_weight is not None:
                weight = self.batch_weight(inputs, targets)
            else:
                weight = _default_weight(targets)
        return inputs, targets, extra, weight

    def _forward(self, inputs: Any, targets: Any, extra: dict[str, Any], state: Any):
        low = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=low, enabled=low != torch.float32):
            return self._call_model(inputs, targets, extra, state)

    def _call_model(self, inputs: Any, targets: Any, extra: dict[str, Any], state: Any):
        if self.stateful:
            out = self.model(inputs, targets, state=state, **extra)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise TypeError(
                    "with stateful=True the model must return (logits, loss, new_state); "
                    f"received {_describe(out)}"
                )
            logits, loss, new_state = out
            new_state = detach_state(new_state)
        else:
            out = self.model(inputs, targets, **extra)
            if not isinstance(out, (tuple, list)) or len(out) < 2:
                raise TypeError(
                    f"the model must return (logits, loss, ...); received {_describe(out)}"
                )
            logits, loss, new_state = out[0], out[1], None
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(
                "the model must return a scalar mean loss when given targets; received "
                + (f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else repr(loss))
            )
        return logits, loss, new_state

    # ----------------------------------------------------------------------- checkpoints

    def training_state(self) -> dict[str, Any]:
        """Everything needed to resume: position, optimizer, callbacks, RNG, history, and the
        partial-epoch accumulators and recurrent state when called mid-epoch."""
        generator = self._generator
        state: dict[str, Any] = {
            "epochs_done": self.epochs_done,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "callbacks": {_cb_key(i, cb): cb.state_dict() for i, cb in enumerate(self.callbacks)},
            "history": self.history.to_dict(),
            "rng": get_rng_state(generator),
            "partial": None,
        }
        if self._in_epoch and self.batch_in_epoch > 0:
            ctx = self._epoch_ctx
            state["partial"] = {
                "batch_in_epoch": self.batch_in_epoch,
                "epoch_rng": ctx["epoch_rng"],
                "rng": state["rng"],
                "loss_sum": ctx["loss_sum"],
                "weight_sum": ctx["weight_sum"],
                "log_loss_sum": ctx["log_loss_sum"],
                "log_weight_sum": ctx["log_weight_sum"],
                "metrics": [m.state_dict() for m in self.metrics],
                "state": ctx["state"],
            }
        return state

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write a full checkpoint (weights, config, artefacts, training state) to ``path``."""
        last = {k: v[-1] for k, v in self.history.history.items() if v}
        meta = {
            "epoch": self.epochs_done,
            "step": self.global_step,
            "batch_in_epoch": self.batch_in_epoch if self._in_epoch else 0,
            "logs": last,
        }
        return save_checkpoint(
            path,
            self.model,
            config=self.model_config,
            artifacts=self.artifacts,
            training_state=self.training_state(),
            metadata=meta,
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        st = ckpt.training_state
        if st is None:
            raise CheckpointError(
                f"{ckpt.path} holds weights only (no training state): it cannot be resumed"
            )
        ckpt.load_weights(self.model, device=self.device)
        self.optimizer.load_state_dict(st["optimizer"])
        saved = st.get("callbacks", {})
        for i, cb in enumerate(self.callbacks):
            if _cb_key(i, cb) in saved:
                cb.load_state_dict(saved[_cb_key(i, cb)])
        self.history = History.from_dict(st["history"])
        self.epochs_done = int(st["epochs_done"])
        self.global_step = int(st["global_step"])
        set_rng_state(st["rng"], self._generator)
        self._resume_partial = st.get("partial")

    def _write_history(self) -> None:
        if self.run_dir is not None:
            import json

            atomic_write_text(self.run_dir / "history.json", json.dumps(self.history.to_dict()))


def _cb_key(i: int, cb: Callback) -> str:
    return f"{i}:{type(cb).__name__}"


def _fresh(m: Metric) -> Metric:
    import copy

    c = copy.copy(m)
    c.reset()
    return c


def _describe(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of length {len(out)}"
    return f"a {type(out).__name__}"
