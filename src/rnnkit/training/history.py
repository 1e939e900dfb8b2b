"""The record of a training run, Keras-style.

``history.history`` maps each logged quantity to one value per completed epoch (``loss``,
``val_loss``, every metric and its ``val_`` twin, ``perplexity`` for LMs, ``lr``);
``history.epoch`` lists the (1-based) epoch numbers; ``history.steps`` holds the per-step logs.

>>> h = History()
>>> h.append_epoch(1, {"loss": 2.0, "val_loss": 2.5, "lr": 0.1})
>>> h.append_epoch(2, {"loss": 1.5, "val_loss": 2.0, "lr": 0.1})
>>> h.history["loss"], h.epoch
([2.0, 1.5], [1, 2])
>>> History.from_dict(h.to_dict()).history == h.history
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["History"]


class History:
    """Per-epoch and per-step logs of a run.

    Attributes:
        history: ``{name: [value per epoch]}``.
        epoch: the epoch numbers (1-based) the values belong to.
        steps: one dict per logged step (``step``, ``epoch``, ``loss``, ``lr``, ...).
        params: the run's settings (``epochs``, ``max_steps``, ...).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.steps: list[dict[str, Any]] = []
        self.params: dict[str, Any] = {}

    def append_epoch(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Record one epoch's logs; a key missing from some epochs is padded with NaN."""
        n = len(self.epoch)
        for key, value in logs.items():
            self.history.setdefault(key, [math.nan] * n).append(float(value))
        self.epoch.append(int(epoch))
        for values in self.history.values():
            if len(values) < n + 1:
                values.append(math.nan)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "epoch": list(self.epoch),
            "steps": [dict(s) for s in self.steps],
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        h = cls()
        h.history = {k: [float(x) for x in v] for k, v in data.get("history", {}).items()}
        h.epoch = [int(e) for e in data.get("epoch", [])]
        h.steps = [dict(s) for s in data.get("steps", [])]
        h.params = dict(data.get("params", {}))
        return h

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"
