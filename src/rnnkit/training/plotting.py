"""``plot_history``: loss and metric curves, train vs validation, one subplot each (PNG).

The seed's ``plot_results`` drew train/validation loss and accuracy in two stacked panels; this
does the same for every quantity in a :class:`~rnnkit.training.history.History`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rnnkit.training.history import History

__all__ = ["plot_history"]

_LOG_SCALE = ("perplexity",)
_TITLES = {
    "loss": "Loss",
    "perplexity": "Perplexity",
    "accuracy": "Accuracy",
    "lr": "Learning rate",
}


def plot_history(
    history: History | Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    keys: Sequence[str] | None = None,
    include_lr: bool = False,
    title: str | None = None,
) -> Path:
    """Draw each logged quantity (train and ``val_`` curves together) against the epoch to a PNG.

    Args:
        history: a :class:`History` or a Keras-style ``{name: [value per epoch]}`` dict.
        path: the PNG to write (folders are created).
        keys: which base quantities to draw, in order (default: ``loss`` first, then every other
            key that is not ``val_*``, ``lr`` or ``count``).
        include_lr: add a panel with the learning rate.
        title: a figure title.

    Returns:
        The path written.

    Raises:
        ValueError: there is nothing to plot, or a requested key is absent.
    """
    # A Figure with its own Agg canvas: no pyplot, so the global backend is never touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    data: Mapping[str, Sequence[float]]
    if isinstance(history, History):
        data, epochs = history.history, list(history.epoch)
    else:
        data, epochs = history, []
    if keys is None:
        base = [k for k in data if not k.startswith("val_") and k not in ("lr", "count")]
        base += [k[4:] for k in data if k.startswith("val_") and k[4:] not in data]
        keys = sorted(dict.fromkeys(base), key=lambda k: (k != "loss", k))
    keys = list(keys)
    if include_lr and "lr" in data:
        keys.append("lr")
    for k in keys:
        if k not in data and f"val_{k}" not in data:
            raise ValueError(f"no values for {k!r} in the history; available: {sorted(data)}")
    if not keys:
        raise ValueError("the history is empty: nothing to plot")

    fig = Figure(figsize=(8, 3.2 * len(keys)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows=len(keys), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for name, label, style in ((key, "train", "-o"), (f"val_{key}", "validation", "-s")):
            if name not in data:
                continue
            ys = [float(v) for v in data[name]]
            xs = epochs if len(epochs) == len(ys) else list(range(1, len(ys) + 1))
            ax.plot(xs, ys, style, label=label if key != "lr" else "lr", markersize=4)
        pretty = _TITLES.get(key, key.replace("_", " ").capitalize())
        ax.set_title(pretty)
        ax.set_xlabel("epoch")
        ax.set_ylabel(pretty)
        if key in _LOG_SCALE or key == "lr":
            values = [v for n in (key, f"val_{key}") for v in data.get(n, [])]
            positive = values and all(v > 0 and math.isfinite(v) for v in values)
            if positive and max(values) >= 10 * min(values):  # log only when it spans a decade
                ax.set_yscale("log")
                plain = FuncFormatter(lambda v, _: f"{v:g}")
                ax.yaxis.set_major_formatter(plain)
                if key != "lr":
                    ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
