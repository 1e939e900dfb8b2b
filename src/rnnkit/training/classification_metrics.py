"""Classification metrics: confusion matrix, precision/recall/F1, ROC-AUC, reports and plots.

Plain numpy, no scikit-learn. Conventions (scikit-learn's): rows of the confusion matrix are the
true classes, columns the predicted ones; a precision/recall/F1 whose denominator is zero is 0.0;
macro averages are unweighted means over classes, ``weighted`` averages weight by support.

>>> cm = confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], num_classes=2)
>>> cm
array([[1, 1],
       [1, 2]])
>>> s = precision_recall_f1(cm)
>>> [round(v, 4) for v in s["precision"]], round(s["macro"]["f1"], 4)
([0.5, 0.6667], 0.5833)
>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit.training.metrics import Metric

__all__ = [
    "MacroF1",
    "classification_report",
    "confusion_matrix",
    "format_confusion_matrix",
    "format_report",
    "plot_confusion_matrix",
    "precision_recall_f1",
    "roc_auc",
]


def _as_int_array(name: str, values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{name} must hold integer class ids; received dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """``(C, C)`` counts: ``cm[i, j]`` = examples of true class ``i`` predicted as ``j``.

    Args:
        y_true: true class ids ``(N,)``.
        y_pred: predicted class ids ``(N,)``.
        num_classes: ``C``; default ``max(ids) + 1``.

    Raises:
        ValueError: lengths differ, or an id is outside ``[0, C)``.
    """
    t, p = _as_int_array("y_true", y_true), _as_int_array("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(
            f"y_true and y_pred must have the same length; received {t.size} and {p.size}"
        )
    if num_classes is None:
        num_classes = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(
                f"{name} must be class ids in [0, {num_classes}); "
                f"received ids in [{a.min()}, {a.max()}]"
            )
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def precision_recall_f1(cm: np.ndarray) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support from a confusion matrix, plus averages.

    Returns:
        ``{"precision": [C], "recall": [C], "f1": [C], "support": [C], "accuracy": float,
        "macro": {"precision", "recall", "f1"}, "weighted": {...}}``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    pred = cm.sum(axis=0)
    true = cm.sum(axis=1)
    precision = _div(tp, pred)
    recall = _div(tp, true)
    f1 = _div(2 * precision * recall, precision + recall)
    total = cm.sum()
    out: dict[str, Any] = {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": true.astype(np.int64).tolist(),
        "accuracy": float(tp.sum() / total) if total > 0 else math.nan,
    }
    out["macro"] = {k: float(np.mean(out[k])) for k in ("precision", "recall", "f1")}
    out["weighted"] = {
        k: float((np.asarray(out[k]) * true).sum() / total) if total > 0 else math.nan
        for k in ("precision", "recall", "f1")
    }
    return out


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve for binary labels (the Mann-Whitney U statistic, ties halved).

    Args:
        y_true: 0/1 labels ``(N,)``.
        scores: higher means more likely class 1 (probabilities or logits) ``(N,)``.

    Returns:
        The AUC, or ``nan`` when only one class is present.
    """
    y = _as_int_array("y_true", y_true)
    s = np.asarray(
        scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores,
        dtype=np.float64,
    ).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(
            f"y_true and scores must have the same length; received {y.size} and {s.size}"
        )
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("roc_auc needs binary 0/1 labels")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_report(
    y_true, probabilities, label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Everything about a classifier's predictions on labelled data, JSON-ready.

    Args:
        y_true: true class ids ``(N,)``.
        probabilities: ``(N, C)`` class probabilities (argmax is the prediction).
        label_names: the ``C`` class names (default ``"0"``, ``"1"``, ...).

    Returns:
        ``{"count", "accuracy", "labels", "confusion_matrix", "per_class": {name: {precision,
        recall, f1, support}}, "macro": {...}, "weighted": {...}, "roc_auc" (binary only)}``.

    >>> r = classification_report([0, 1, 1], [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], ["neg", "pos"])
    >>> r["accuracy"], r["confusion_matrix"], r["roc_auc"]
    (0.6666666666666666, [[1, 0], [1, 1]], 1.0)
    """
    probs = probabilities
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (N, C); received shape {probs.shape}")
    c = probs.shape[1]
    names = [str(i) for i in range(c)] if label_names is None else [str(n) for n in label_names]
    if len(names) != c:
        raise ValueError(f"{len(names)} label names for {c} probability columns")
    y = _as_int_array("y_true", y_true)
    cm = confusion_matrix(y, probs.argmax(axis=1), num_classes=c)
    s = precision_recall_f1(cm)
    report: dict[str, Any] = {
        "count": int(y.size),
        "accuracy": s["accuracy"],
        "labels": names,
        "confusion_matrix": cm.tolist(),
        "per_class": {
            n: {
                "precision": s["precision"][i],
                "recall": s["recall"][i],
                "f1": s["f1"][i],
                "support": s["support"][i],
            }
            for i, n in enumerate(names)
        },
        "macro": s["macro"],
        "weighted": s["weighted"],
    }
    if c == 2:
        report["roc_auc"] = roc_auc(y, probs[:, 1])
    return report


def format_confusion_matrix(cm, label_names: Sequence[str] | None = None) -> str:
    """The confusion matrix as an aligned text table (rows true, columns predicted).

    >>> print(format_confusion_matrix([[5, 1], [2, 7]], ["neg", "pos"]))
    true \\ pred  neg  pos
            neg    5    1
            pos    2    7
    """
    cm = np.asarray(cm)
    names = [str(i) for i in range(cm.shape[0])] if label_names is None else list(label_names)
    corner = "true \\ pred"
    w0 = max(len(corner), *(len(n) for n in names))
    w = max(max(len(n) for n in names), len(str(cm.max(initial=0))), 3)
    lines = [f"{corner:>{w0}}  " + "  ".join(f"{n:>{w}}" for n in names)]
    for name, row in zip(names, cm, strict=True):
        lines.append(f"{name:>{w0}}  " + "  ".join(f"{int(v):>{w}}" for v in row))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """A printable summary of :func:`classification_report`'s output."""
    names = report["labels"]
    w = max(10, *(len(n) for n in names))
    lines = [f"{'':>{w}}  precision  recall      f1  support"]
    for n in names:
        r = report["per_class"][n]
        scores = f"{r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}"
        lines.append(f"{n:>{w}}  {scores}  {r['support']:7d}")
    m = report["macro"]
    lines.append(
        f"{'macro avg':>{w}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  "
        f"{report['count']:7d}"
    )
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['count']} examples")
    if "roc_auc" in report:
        lines.append(f"ROC-AUC  {report['roc_auc']:.4f}")
    lines.append("")
    lines.append(format_confusion_matrix(report["confusion_matrix"], names))
    return "\n".join(lines)


def plot_confusion_matrix(
    cm,
    path: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    *,
    title: str | None = None,
    normalize: bool = False,
) -> Path:
    """Draw the confusion matrix as a PNG heat map with the counts written in the cells.

    Args:
        cm: ``(C, C)`` counts (rows true, columns predicted).
        path: the PNG to write (folders are created).
        label_names: class names for the axes.
        title: figure title.
        normalize: colour (and print) each row as fractions of its true class.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.float64)
    c = cm.shape[0]
    names = [str(i) for i in range(c)] if label_names is None else [str(n) for n in label_names]
    shown = _div(cm, cm.sum(axis=1, keepdims=True)) if normalize else cm
    size = min(2.0 + 0.6 * c, 14.0)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(c), names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center")
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    hi = shown.max() if shown.size else 0
    if c <= 30:
        for i in range(c):
            for j in range(c):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                color = "white" if hi and shown[i, j] > hi / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    ax.set_title(
        title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix")
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


class MacroF1(Metric):
    """Macro-averaged F1 over an epoch, as a trainer metric (``metrics=[MacroF1(C)]``).

    Binary logits ``(B,)`` are thresholded at 0; multi-class logits ``(B, C)`` take the argmax.

    >>> m = MacroF1(2)
    >>> m.update(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1, 0, 0]))
    >>> round(m.compute(), 4)
    0.6667
    """

    def __init__(self, num_classes: int, name: str = "macro_f1"):
        self.num_classes = int(num_classes)
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, logits: torch.Tensor, targets: Any, weight: float = 1.0) -> None:
        logits = logits.detach()
        if logits.dim() == 2 and logits.shape[-1] > 1:
            pred = logits.argmax(dim=-1)
        else:
            pred = (logits.reshape(-1) > 0).long()
        self.cm += confusion_matrix(
            torch.as_tensor(targets).reshape(-1), pred, num_classes=self.num_classes
        )

    def compute(self) -> float:
        return precision_recall_f1(self.cm)["macro"]["f1"]

    def state_dict(self) -> dict[str, Any]:
        return {"cm": self.cm.tolist()}

    def load_state_dict(self, state) -> None:
        self.cm = np.asarray(state["cm"], dtype=np.int64)
