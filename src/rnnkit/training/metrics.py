"""Metrics accumulated over an epoch, and exact perplexity.

A metric sees every batch's ``(logits, targets)`` and the batch weight, and reports one number
for the epoch. Plain callables ``fn(logits, targets) -> float`` (a batch mean) are accepted
anywhere a metric is, and are averaged with the batch weights.

Perplexity is not a metric over logits: it is ``exp`` of the mean token negative log-likelihood,
so it is derived from the exactly weighted epoch loss (see :func:`perplexity`).

>>> acc = Accuracy()
>>> acc.update(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1]))
>>> round(acc.compute(), 4)
0.6667
>>> perplexity([2.0, 4.0], [2, 2])  # exp(6 / 4)
4.4816890703380645
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["Metric", "Accuracy", "MeanMetric", "perplexity", "safe_exp", "build_metrics"]


def safe_exp(x: float) -> float:
    """``math.exp`` that returns ``inf`` instead of raising on overflow.

    >>> safe_exp(1000.0)
    inf
    """
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def perplexity(nll_sums: float | Iterable[float], token_counts: int | Iterable[int]) -> float:
    """Exact perplexity: ``exp(total_nll / total_tokens)``.

    Sum the negative log-likelihood (natural log) of every token of the evaluated text, each token
    counted exactly once, and divide by the number of tokens. Averaging per-batch perplexities (or
    per-batch mean losses with unequal batch sizes) is *not* the same number; this is.

    The result does not depend on the evaluation batch size as long as every token is counted once
    with the same context; for a stateful stream LM the context does depend on the batch layout,
    so the caller should report the evaluation batch size (and BPTT length) next to the number.

    Args:
        nll_sums: summed NLL per batch (or one total).
        token_counts: tokens per batch (or one total), matching ``nll_sums``.

    Returns:
        The perplexity (``inf`` on overflow).

    Raises:
        ValueError: the lengths differ, or the total token count is not positive.

    >>> perplexity(math.log(10) * 5, 5)
    10.000000000000002
    """
    if isinstance(nll_sums, (int, float)) and isinstance(token_counts, (int, float)):
        sums, counts = [float(nll_sums)], [token_counts]
    else:
        sums, counts = [float(s) for s in nll_sums], list(token_counts)  # type: ignore[union-attr]
        if len(sums) != len(counts):
            raise ValueError(
                f"nll_sums and token_counts must have the same length; "
                f"received {len(sums)} and {len(counts)}"
            )
    total = sum(counts)
    if total <= 0:
        raise ValueError(f"the total token count must be > 0; received {total}")
    return safe_exp(math.fsum(sums) / total)


class Metric:
    """Base class: a value accumulated over the batches of one epoch.

    Subclasses implement :meth:`update`, :meth:`compute`, :meth:`reset`, and
    :meth:`state_dict` / :meth:`load_state_dict` (tensors or JSON-able values) so that a run
    resumed mid-epoch reports the same number.
    """

    name: str = "metric"

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, logits: torch.Tensor, targets: Any, weight: float = 1.0) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Accuracy(Metric):
    """Fraction of correct predictions.

    Multi-class: ``logits (..., C)`` and integer ``targets (...)`` (argmax). Binary:
    ``logits (...)`` or ``(..., 1)`` and 0/1 ``targets (...)``; a logit above ``threshold``
    predicts 1 (``0.0`` is probability 0.5).

    Args:
        ignore_index: targets equal to this value are not counted (e.g. padding ``-100``).
        threshold: the decision threshold on binary logits.
        name: the key in the history.
    """

    def __init__(
        self, ignore_index: int | None = None, threshold: float = 0.0, name: str = "accuracy"
    ):
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.correct = torch.zeros((), dtype=torch.float64)
        self.total = torch.zeros((), dtype=torch.float64)

    def update(self, logits: torch.Tensor, targets: Any, weight: float = 1.0) -> None:
        logits = logits.detach()
        targets = torch.as_tensor(targets, device=logits.device)
        if logits.shape == targets.shape or (
            logits.dim() == targets.dim() + 1 and logits.shape[-1] == 1
        ):
            logits = logits.reshape(targets.shape)
            preds = (logits > self.threshold).to(targets.dtype)
        elif logits.shape[:-1] == targets.shape:
            preds = logits.argmax(dim=-1)
        else:
            raise ValueError(
                f"Accuracy expects logits (..., C) with targets (...), or equal shapes for binary "
                f"logits; received logits {tuple(logits.shape)} and targets {tuple(targets.shape)}"
            )
        hit = preds == targets
        if self.ignore_index is not None:
            keep = targets != self.ignore_index
            hit = hit & keep
            n = keep.sum()
        else:
            n = torch.tensor(targets.numel())
        self.correct = self.correct.to(hit.device) + hit.sum().to(torch.float64)
        self.total = self.total.to(hit.device) + n.to(torch.float64)

    def compute(self) -> float:
        total = float(self.total)
        return float(self.correct) / total if total > 0 else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {"correct": self.correct.cpu(), "total": self.total.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.correct = torch.as_tensor(state["correct"], dtype=torch.float64)
        self.total = torch.as_tensor(state["total"], dtype=torch.float64)


class MeanMetric(Metric):
    """Wrap ``fn(logits, targets) -> float`` (a batch mean), averaged with the batch weights.

    >>> m = MeanMetric(lambda logits, targets: float(logits.mean()), name="mean_logit")
    >>> m.update(torch.ones(2), None, weight=2); m.update(torch.zeros(2), None, weight=6)
    >>> m.compute()
    0.25
    """

    def __init__(self, fn: Callable[[torch.Tensor, Any], Any], name: str | None = None):
        if not callable(fn):
            raise TypeError(f"a metric must be callable or a Metric; received {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "metric")
        self.reset()

    def reset(self) -> None:
        self.sum = 0.0
        self.weight = 0.0

    def update(self, logits: torch.Tensor, targets: Any, weight: float = 1.0) -> None:
        with torch.no_grad():
            value = float(self.fn(logits.detach(), targets))
        self.sum += value * float(weight)
        self.weight += float(weight)

    def compute(self) -> float:
        return self.sum / self.weight if self.weight > 0 else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum, "weight": self.weight}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sum = float(state["sum"])
        self.weight = float(state["weight"])


_BY_NAME: dict[str, Callable[[], Metric]] = {"accuracy": Accuracy, "acc": Accuracy}


def build_metrics(
    metrics: Sequence[Metric | Callable | str] | Mapping[str, Metric | Callable | str] | None,
) -> list[Metric]:
    """Normalise the ``metrics`` argument of the trainer to a list of :class:`Metric`.

    Accepts a list (names ``"accuracy"``, :class:`Metric` objects or callables) or a dict
    ``name -> metric``. Names must be unique and may not start with ``val_``.

    >>> [m.name for m in build_metrics(["accuracy", {"f": len}.get("f")])]
    ['accuracy', 'len']
    """
    if metrics is None:
        return []
    items = list(metrics.items()) if isinstance(metrics, Mapping) else [(None, m) for m in metrics]
    out: list[Metric] = []
    for name, m in items:
        if isinstance(m, str):
            if m not in _BY_NAME:
                raise ValueError(f"unknown metric {m!r}; known: {sorted(_BY_NAME)}")
            m = _BY_NAME[m]()
        elif not isinstance(m, Metric):
            m = MeanMetric(m)
        if name is not None:
            m.name = name
        out.append(m)
    names = [m.name for m in out]
    reserved = {"loss", "lr", "perplexity", "count"}
    for n in names:
        if n.startswith("val_") or n in reserved or names.count(n) > 1:
            raise ValueError(
                f"metric names must be unique, not start with 'val_' and not be one of "
                f"{sorted(reserved)}; received names {names}"
            )
    return out
