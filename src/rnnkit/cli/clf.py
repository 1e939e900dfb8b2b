"""``rnnkit clf``: train, evaluate and use recurrent text classifiers; Reber grammar task.

Examples::

    rnnkit clf train --dataset imdb --data-dir ../shared/data/imdb --preset strong
    rnnkit clf train --data reviews.csv --text-column review --label-column sentiment \\
        --cell gru --no-bidirectional --pooling max --epochs 5
    rnnkit clf eval runs/clf-imdb --data reviews_test.csv
    rnnkit clf predict runs/clf-imdb "A wonderful film." "Dull and far too long."
    rnnkit clf predict runs/clf-imdb --input texts.txt          # one text per line
    rnnkit clf reber --embedded --preset lstm

``train`` holds out ``--val-fraction`` of the data (stratified by class, fixed ``--seed``) as
validation unless ``--val-data`` is given, writes ``checkpoints/best`` and ``checkpoints/last``
(weights, config, vocabulary, label map), ``history.json``/``history.png``, and
``evaluation.json`` + ``confusion_matrix.png`` for the best checkpoint on the validation data.

``predict`` writes one JSON line per input, in order: ``{"text", "label", "probability"}``
(``probability`` is that of the predicted label). A text that has no token left after
standardisation (an empty line, say) gives ``"label": null, "probability": null,
"error": "empty text"`` so that outputs stay aligned with inputs.

The library functions here (:func:`train_text_classifier`, :func:`evaluate_classifier`,
:func:`train_reber`, :func:`reber_stage`) are what the commands call; ``rnnkit demo`` calls
:func:`reber_stage`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rnnkit import allocator
from rnnkit.cli.main import UsageError
from rnnkit.data import reber
from rnnkit.data.batching import (
    BucketBatchSampler,
    ClassificationDataset,
    pad_batch,
    padding_fraction,
)
from rnnkit.data.classification import (
    LabelMap,
    SkippedRowsWarning,
    TextClassificationData,
    read_class_folders,
    read_csv,
    read_imdb,
    read_jsonl,
)
from rnnkit.data.corpora import iter_lines
from rnnkit.models.classifier import (
    CELLS,
    POOLING_MODES,
    CharOneHot,
    ClassifierConfig,
    SequenceClassifier,
    build_text_classifier,
    load_classifier,
)
from rnnkit.training import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    Trainer,
    plot_history,
    set_seed,
)
from rnnkit.training.checkpoint import CheckpointError, atomic_write_text, resolve_checkpoint
from rnnkit.training.classification_metrics import (
    classification_report,
    format_report,
    plot_confusion_matrix,
)

__all__ = [
    "PRESETS",
    "REBER_PRESETS",
    "evaluate_classifier",
    "make_loader",
    "demo_stage",
    "read_labelled",
    "reber_stage",
    "stratified_split",
    "train_reber",
    "train_text_classifier",
]

# --------------------------------------------------------------------------------- presets

#: Text-classifier presets. ``seed`` is seed 002's IMDB model (134,209 parameters, as in Keras'
#: summary); ``strong`` is 20k words, 128-d embeddings, a 64-unit BiLSTM over the last 400 tokens,
#: masked max pooling and dropout. Measured on IMDB train with 20% held out (seed 0, one thread
#: of a shared 2-core CPU): ``seed`` 80.5% validation accuracy after 10 epochs (21 min wall,
#: 7 min CPU); ``strong`` 88.4% after 3 epochs (9.5 min wall, 2.7 min CPU). Keeping the start of
#: long reviews (``truncating="post"``) instead gave 87.8%.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "max_tokens": 1000,
        "max_length": None,
        "truncating": "post",
        "embedding_dim": 64,
        "cell": "lstm",
        "units": [64],
        "bidirectional": True,
        "pooling": "last",
        "head_units": [32],
        "embedding_dropout": 0.0,
        "head_dropout": 0.0,
        "optimizer": "adam",
        "lr": 1e-4,
        "batch_size": 128,
        "epochs": 10,
        "clip_grad_norm": None,
    },
    "strong": {
        "max_tokens": 20000,
        "max_length": 400,
        "truncating": "pre",
        "embedding_dim": 128,
        "cell": "lstm",
        "units": [64],
        "bidirectional": True,
        "pooling": "max",
        "head_units": [64],
        "embedding_dropout": 0.3,
        "head_dropout": 0.3,
        "optimizer": "adam",
        "lr": 2e-3,
        "batch_size": 64,
        "epochs": 3,
        "clip_grad_norm": 5.0,
    },
}

#: Reber presets: the seed's SimpleRNN(4) -> Dense(1) (53 parameters; RMSprop, Keras' default
#: optimizer) and an LSTM(32). On 5,000 fresh embedded-Reber strings: SimpleRNN(4) 94.9% after
#: 100 epochs (6 min), LSTM(32) 100% (val 100% from epoch 12; 30 epochs in 92 s).
REBER_PRESETS: dict[str, dict[str, Any]] = {
    "seed": {
        "cell": "simple",
        "units": [4],
        "optimizer": "rmsprop",
        "lr": 1e-3,
        "batch_size": 32,
        "epochs": 100,
    },
    "lstm": {
        "cell": "lstm",
        "units": [32],
        "optimizer": "adam",
        "lr": 1e-2,
        "batch_size": 64,
        "epochs": 30,
    },
}

_CELL_NAMES = {"lstm": "LSTM", "gru": "GRU", "simple": "SimpleRNN"}

# ------------------------------------------------------------------------------------ data


def _guess_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if (path / "train" / "pos").is_dir() or (path / "aclImdb").is_dir():
            return "aclimdb"
        return "folders"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "aclimdb"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv", ".tab", ".txt")):
        return "csv"
    raise UsageError(f"cannot tell the format of {path}; pass --format aclimdb|csv|jsonl|folders")


def read_labelled(
    path: str | Path,
    fmt: str | None = None,
    *,
    split: str = "train",
    text_column: str = "text",
    label_column: str = "label",
    label_map: LabelMap | None = None,
    errors: str = "strict",
) -> TextClassificationData:
    """Read labelled texts in any supported format.

    Args:
        path: file or folder.
        fmt: ``"aclimdb"`` (``.tar.gz`` or folder), ``"csv"`` (CSV/TSV), ``"jsonl"``,
            ``"folders"`` (one sub-folder per class); ``None`` guesses from the path.
        split: the ``aclImdb`` split.
        text_column, label_column: CSV column names / JSONL keys.
        label_map: fixed labels (evaluation); rows with other labels are skipped and listed in
            ``.skipped``.
        errors: ``"strict"`` (invalid UTF-8 is an error, or a skipped file for folder formats)
            or ``"replace"``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    fmt = fmt or _guess_format(path)
    if fmt == "aclimdb":
        classes = tuple(label_map.names) if label_map is not None else ("neg", "pos")
        return read_imdb(path, split, classes=classes, errors=errors)
    if fmt == "csv":
        return read_csv(
            path,
            text_column=text_column,
            label_column=label_column,
            label_map=label_map,
            errors=errors,
        )
    if fmt == "jsonl":
        return read_jsonl(
            path, text_key=text_column, label_key=label_column, label_map=label_map, errors=errors
        )
    if fmt == "folders":
        return read_class_folders(path, label_map=label_map, errors=errors)
    raise UsageError(f"--format must be aclimdb, csv, jsonl or folders; received {fmt!r}")


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, held_out)``: ``fraction`` of each class held out, chosen with ``seed``.

    >>> tr, va = stratified_split([0] * 10 + [1] * 10, 0.2, seed=0)
    >>> len(tr), len(va), sorted(np.bincount(np.array([0] * 10 + [1] * 10)[va]).tolist())
    (16, 4, [2, 2])
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1); received {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.append(idx[: int(round(fraction * idx.size))])
    va = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    tr = np.setdiff1d(np.arange(labels.size), va)
    return tr, va


class _Collate:
    """Pads a list of ``(x, label)`` into a trainer batch dict."""

    def __init__(self, features: bool, padding: str = "post") -> None:
        self.features, self.padding = features, padding

    def __call__(self, batch):
        xs, ys = zip(*batch, strict=True)
        targets = torch.stack([torch.as_tensor(y) for y in ys])
        if not self.features:
            ids, _ = pad_batch(xs, padding=self.padding)
            return {"inputs": ids, "targets": targets}
        lengths = torch.tensor([x.shape[0] for x in xs], dtype=torch.long)
        out = torch.zeros(len(xs), int(lengths.max()), xs[0].shape[1])  # (B, T, F)
        for i, x in enumerate(xs):
            out[i, : x.shape[0]] = x
        return {"inputs": out, "targets": targets, "lengths": lengths}


class _FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, rows: Sequence[torch.Tensor], labels: Sequence[int]) -> None:
        self.rows, self.labels = list(rows), [torch.tensor(int(y)) for y in labels]
        self.lengths = [r.shape[0] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i], self.labels[i]


def make_loader(
    rows: Sequence,
    labels: Sequence[int],
    *,
    batch_size: int,
    bucket_batches: int = 50,
    shuffle: bool = True,
    seed: int = 0,
    padding: str = "post",
) -> DataLoader:
    """A ``DataLoader`` of trainer batch dicts over id sequences or feature tensors.

    Batches are length-bucketed (:class:`~rnnkit.data.BucketBatchSampler`; ``bucket_batches=1``
    is plain random batching) and padded to their longest sequence: token batches are
    ``{"inputs": (B, T) ids, "targets"}`` (the model masks ``ids == 0``), feature batches add
    ``"lengths"``.
    """
    features = len(rows) > 0 and isinstance(rows[0], torch.Tensor) and rows[0].dim() == 2
    if features:
        ds: Any = _FeatureDataset(rows, labels)
    else:
        ds = ClassificationDataset(rows, [int(y) for y in labels])
    sampler = BucketBatchSampler(
        ds.lengths, batch_size, bucket_batches=bucket_batches, shuffle=shuffle, seed=seed
    )
    return DataLoader(ds, batch_sampler=sampler, collate_fn=_Collate(features, padding))


def _encode(model: SequenceClassifier, texts: Sequence[str]) -> list[list[int]]:
    """Encode and truncate texts as the model does at prediction time (empty -> [1] = OOV)."""
    out = []
    for t in texts:
        ids = model.encoder.encode(t)
        if model.max_length is not None and len(ids) > model.max_length:
            ids = ids[-model.max_length :] if model.truncating == "pre" else ids[: model.max_length]
        out.append(ids or [1])
    return out


# --------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def predict_loader(model: SequenceClassifier, loader) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, C), targets (N,))`` over a loader, in loader order."""
    model.eval()
    device = model.output.weight.device
    probs, ys = [], []
    for batch in loader:
        extra = {k: v.to(device) for k, v in batch.items() if k not in ("inputs", "targets")}
        logits, _ = model(batch["inputs"].to(device), **extra)
        probs.append(model.probabilities(logits).cpu().numpy())
        ys.append(batch["targets"].numpy())
    return np.concatenate(probs), np.concatenate(ys)


def evaluate_classifier(
    model: SequenceClassifier,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    batch_size: int = 128,
    out_dir: str | Path | None = None,
    name: str = "evaluation",
) -> dict[str, Any]:
    """Evaluate on labelled texts; optionally write ``<name>.json`` and ``<name>_confusion.png``.

    Returns:
        :func:`~rnnkit.training.classification_metrics.classification_report`'s dict, plus
        ``seconds`` and the file paths written.
    """
    t0 = time.perf_counter()
    if isinstance(model.encoder, CharOneHot):
        rows: list = [model.encoder.encode(t) for t in texts]
    else:
        rows = _encode(model, texts)
    loader = make_loader(rows, labels, batch_size=batch_size, shuffle=False)
    probs, ys = predict_loader(model, loader)
    names = model.label_map.names if model.label_map is not None else None
    report = classification_report(ys, probs, names)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    if out_dir is not None:
        out_dir = Path(out_dir)
        png = plot_confusion_matrix(
            report["confusion_matrix"], out_dir / f"{name}_confusion.png", report["labels"],
            title=f"Confusion matrix: {name} (accuracy {report['accuracy']:.4f})",
        )  # fmt: skip
        report["confusion_matrix_png"] = str(png)
        path = out_dir / f"{name}.json"
        report["report_json"] = str(path)
        atomic_write_text(path, json.dumps(report, indent=1))
    return report


# ------------------------------------------------------------------------------------ train


def _optimizer(model: torch.nn.Module, name: str, lr: float) -> torch.optim.Optimizer | str:
    if name == "rmsprop":  # Keras defaults (rho 0.9, epsilon 1e-7): the seed's compile()
        return torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, eps=1e-7)
    return name


class _Throughput(Callback):
    """Counts training examples and the time of training batches (validation excluded)."""

    def __init__(self) -> None:
        self.examples, self.seconds, self.cpu_seconds = 0, 0.0, 0.0
        self._start = self._last = self._cpu_start = self._cpu_last = 0.0

    def on_epoch_begin(self, epoch: int) -> None:
        self._start = self._last = time.perf_counter()
        self._cpu_start = self._cpu_last = time.process_time()

    def on_batch_end(self, step: int, logs) -> None:
        self.examples += int(logs["weight"])
        self._last = time.perf_counter()
        self._cpu_last = time.process_time()

    def on_epoch_end(self, epoch: int, logs) -> None:
        self.on_fit_end()

    def on_fit_end(self) -> None:  # also when max_steps stops an epoch midway
        self.seconds += self._last - self._start
        self.cpu_seconds += self._cpu_last - self._cpu_start
        self._start = self._last = self._cpu_start = self._cpu_last = 0.0


def train_text_classifier(
    train: TextClassificationData,
    val: TextClassificationData | None,
    *,
    run_dir: str | Path,
    settings: dict[str, Any],
    seed: int = 0,
    bucket_batches: int = 50,
    max_steps: int | None = None,
    patience: int | None = None,
    quiet: bool = False,
    device: str = "cpu",
    fast_path: bool = True,
    precision: str = "float32",
) -> dict[str, Any]:
    """Train a token classifier on labelled texts and evaluate its best checkpoint.

    Args:
        train: training examples (its label map names the classes).
        val: validation examples (same label map) or ``None``.
        run_dir: the run folder (checkpoints, history, evaluation).
        settings: a :data:`PRESETS` entry with overrides (model config fields plus
            ``max_tokens``, ``max_length``, ``truncating``, ``optimizer``, ``lr``,
            ``batch_size``, ``epochs``, ``clip_grad_norm``).
        seed: seeds the weights, the batch order and nothing else.
        bucket_batches: batches per length bucket (1 = plain random batches).
        max_steps: stop after this many optimizer steps (smoke tests, throughput).
        patience: early-stopping patience on ``val_accuracy`` (``None``: off).
        quiet: no progress bars.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``.
        fast_path: see :attr:`SequenceClassifier.fast_path` (exact either way; speed only).
        precision: ``"float32"`` or ``"bfloat16"`` (training under autocast; see
            :class:`~rnnkit.training.Trainer`); the evaluation of the best checkpoint runs in
            float32.

    Returns:
        A summary dict (also written to ``run_dir/summary.json``).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    s = dict(settings)
    set_seed(seed)
    t0 = time.perf_counter()
    model_keys = {f for f in ClassifierConfig.__dataclass_fields__} - {"vocab_size", "num_classes"}
    model_kw = {k: v for k, v in s.items() if k in model_keys}
    model = build_text_classifier(
        train.texts,
        train.label_map,
        max_tokens=s["max_tokens"],
        max_length=s["max_length"],
        truncating=s["truncating"],
        **model_kw,
    )
    model.fast_path = fast_path
    train_ids = _encode(model, train.texts)
    loader = make_loader(
        train_ids, train.labels, batch_size=s["batch_size"], bucket_batches=bucket_batches,
        seed=seed,
    )  # fmt: skip
    val_loader = None
    if val is not None:
        val_loader = make_loader(
            _encode(model, val.texts), val.labels, batch_size=2 * s["batch_size"], shuffle=False
        )
    prep_s = time.perf_counter() - t0
    counter = _Throughput()
    callbacks: list = [
        counter,
        ModelCheckpoint(monitor="val_accuracy" if val is not None else None),
    ]
    if patience is not None and val is not None:
        callbacks.append(EarlyStopping("val_accuracy", patience=patience))
    trainer = Trainer(
        model,
        _optimizer(model, s["optimizer"], s["lr"]),
        lr=s["lr"],
        clip_grad_norm=s.get("clip_grad_norm"),
        metrics=["accuracy"],
        callbacks=callbacks,
        device=device,
        run_dir=run_dir,
        quiet=quiet,
        seed=seed,
        unit="review",
        precision=precision,
        model_config=model.config.to_dict(),
        artifacts=model.artifacts(),
    )
    t1, c1 = time.perf_counter(), time.process_time()
    history = trainer.fit(loader, val_loader, epochs=s["epochs"], max_steps=max_steps)
    train_s, train_cpu = time.perf_counter() - t1, time.process_time() - c1
    n_train = len(train_ids)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "settings": s,
        "seed": seed,
        "bucket_batches": bucket_batches,
        "fast_path": fast_path,
        "precision": precision,
        "train_padding_fraction": round(
            padding_fraction(loader.batch_sampler, loader.batch_sampler.lengths), 4
        ),
        "train_examples": n_train,
        "val_examples": 0 if val is None else len(val),
        "vocabulary_size": model.config.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs_done": trainer.epochs_done,
        "steps": trainer.global_step,
        "prepare_seconds": round(prep_s, 2),
        "train_seconds": round(train_s, 2),
        "train_cpu_seconds": round(train_cpu, 2),
        "train_batches_seconds": round(counter.seconds, 2),
        "train_batches_cpu_seconds": round(counter.cpu_seconds, 2),
        "examples_seen": counter.examples,
        "examples_per_second": round(counter.examples / counter.seconds, 2)
        if counter.seconds > 0
        else None,
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator.describe(),
        "history": history.history,
    }
    if history.epoch:
        layers = " + ".join(f"{_CELL_NAMES[model.config.cell]}({u})" for u in model.config.units)
        if model.config.bidirectional:
            layers = f"Bidirectional {layers}"
        title = f"{run_dir.name}: {layers}, {model.config.pooling} pooling"
        plot_history(history, run_dir / "history.png", title=title)
        summary["history_png"] = str(run_dir / "history.png")
    if val is not None and trainer.epochs_done:
        best = load_classifier(run_dir)
        report = evaluate_classifier(
            best, val.texts, val.labels, batch_size=2 * s["batch_size"],
            out_dir=run_dir, name="evaluation",
        )  # fmt: skip
        summary["val"] = {k: report[k] for k in ("accuracy", "macro", "count")}
        summary["val"]["roc_auc"] = report.get("roc_auc")
        summary["best_epoch"] = int(np.nanargmax(history.history["val_accuracy"])) + 1
        summary["evaluation_json"] = report["report_json"]
        summary["confusion_matrix_png"] = report["confusion_matrix_png"]
    summary["total_seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------------------ Reber


def _reber_rows(strings: Sequence[str]) -> list[torch.Tensor]:
    enc = CharOneHot(reber.CHARS)
    return [enc.encode(s) for s in strings]


def train_reber(
    run_dir: str | Path,
    *,
    embedded: bool = True,
    preset: str = "lstm",
    train_size: int = 10000,
    val_size: int = 5000,
    test_size: int = 5000,
    seed: int = 0,
    quiet: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a valid-vs-corrupted Reber string classifier (seed 002) and test it on fresh data.

    Data: ``generate_labelled_strings`` with seeds ``seed`` (train), ``seed + 1`` (validation)
    and ``seed + 2`` (the fresh test set); strings are one-hot over ``BTSXPVE``, full length,
    masked (the seed cut them to 12 steps).

    Args:
        run_dir: the run folder (checkpoints, history, test report).
        embedded: the embedded Reber grammar (else the plain one).
        preset: a :data:`REBER_PRESETS` name (``"seed"``: SimpleRNN(4); ``"lstm"``).
        train_size, val_size, test_size: numbers of strings (half valid, half corrupted).
        seed: data and weight seed.
        quiet: no progress bars.
        **overrides: preset fields to change (``epochs``, ``units``, ``cell``, ``lr``, ...).

    Returns:
        A summary dict with ``test_accuracy`` and ``train_seconds`` (also ``summary.json``).
    """
    if preset not in REBER_PRESETS:
        raise ValueError(f"preset must be one of {sorted(REBER_PRESETS)}; received {preset!r}")
    s = {**REBER_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    grammar = reber.EMBEDDED_REBER_GRAMMAR if embedded else reber.REBER_GRAMMAR
    t0 = time.perf_counter()
    data = {}
    for name, n, k in (("train", train_size, 0), ("val", val_size, 1), ("test", test_size, 2)):
        strings, labels = reber.generate_labelled_strings(n, grammar, seed=seed + k)
        data[name] = (strings, labels.tolist())
    set_seed(seed)
    config = ClassifierConfig(
        input_size=len(reber.CHARS),
        cell=s["cell"],
        units=list(s["units"]),
        bidirectional=False,
        pooling="last",
        head_units=[],
    )
    model = SequenceClassifier(
        config, encoder=CharOneHot(reber.CHARS), label_map=LabelMap(["invalid", "valid"])
    )
    loader = make_loader(
        _reber_rows(data["train"][0]), data["train"][1], batch_size=s["batch_size"], seed=seed
    )
    val_loader = make_loader(
        _reber_rows(data["val"][0]), data["val"][1], batch_size=512, shuffle=False
    )
    trainer = Trainer(
        model,
        _optimizer(model, s["optimizer"], s["lr"]),
        lr=s["lr"],
        metrics=["accuracy"],
        callbacks=[ModelCheckpoint(monitor="val_accuracy")],
        device="cpu",
        run_dir=run_dir,
        quiet=quiet,
        seed=seed,
        unit="string",
        model_config=config.to_dict(),
        artifacts=model.artifacts(),
    )
    t1, c1 = time.perf_counter(), time.process_time()
    history = trainer.fit(loader, val_loader, epochs=s["epochs"])
    train_s, train_cpu = time.perf_counter() - t1, time.process_time() - c1
    layers = " + ".join(f"{_CELL_NAMES[s['cell']]}({u})" for u in s["units"])
    grammar_name = "embedded Reber" if embedded else "Reber"
    plot_history(history, run_dir / "history.png", title=f"{grammar_name}: {layers}")
    best = load_classifier(run_dir)
    report = evaluate_classifier(
        best, data["test"][0], data["test"][1], batch_size=512, out_dir=run_dir, name="test"
    )
    summary = {
        "run_dir": str(run_dir),
        "grammar": "embedded" if embedded else "reber",
        "preset": preset,
        "settings": s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_size": train_size,
        "val_size": val_size,
        "test_size": test_size,
        "epochs_done": trainer.epochs_done,
        "best_val_accuracy": float(np.nanmax(history.history["val_accuracy"])),
        "test_accuracy": report["accuracy"],
        "test_roc_auc": report.get("roc_auc"),
        "train_seconds": round(train_s, 2),
        "train_cpu_seconds": round(train_cpu, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator.describe(),
        "test_report": report["report_json"],
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


def reber_stage(run_dir: str | Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The demo's classifier stage: an LSTM on embedded Reber strings, tested on fresh strings.

    Args:
        run_dir: folder for this stage's run (checkpoints, plots, ``summary.json``).
        quick: a seconds-long version (1,000 training strings, 3 epochs) for smoke runs.
        seed: data and weight seed.

    Returns:
        :func:`train_reber`'s summary (``test_accuracy``, ``train_seconds``, ...). The full
        version (10,000 strings, 15 epochs; about 45 s on one core) reaches 100% on 5,000 fresh
        strings.
    """
    if quick:
        return train_reber(
            run_dir, preset="lstm", train_size=1000, val_size=300, test_size=500, epochs=3,
            seed=seed, quiet=True,
        )  # fmt: skip
    return train_reber(run_dir, preset="lstm", epochs=15, seed=seed, quiet=True)


def demo_stage(ctx) -> dict[str, Any]:
    """``rnnkit demo`` stage ``reber-clf``: :func:`reber_stage` in ``ctx.stage_dir``.

    Registered with :func:`rnnkit.cli.demo.add_stage` when this module is imported (the
    ``rnnkit`` command imports every subcommand module).
    """
    out = ctx.stage_dir("reber-clf")
    ctx.say("reber-clf: LSTM classifier, valid vs corrupted embedded Reber strings ...")
    s = reber_stage(out, quick=ctx.quick, seed=ctx.seed)
    summary = {
        "task": "embedded Reber: valid vs corrupted strings",
        "model": " + ".join(
            f"{_CELL_NAMES[s['settings']['cell']]}({u})" for u in s["settings"]["units"]
        ),
        "parameters": s["parameters"],
        "train_strings": s["train_size"],
        "epochs": s["epochs_done"],
        "test_strings": s["test_size"],
        "test_accuracy": s["test_accuracy"],
        "train_seconds": s["train_seconds"],
    }
    ctx.say(
        f"reber-clf: test accuracy {s['test_accuracy']:.4f} on {s['test_size']} fresh strings "
        f"({s['train_seconds']:.0f} s of training)"
    )
    return summary


def _register_demo_stage() -> None:
    try:
        from rnnkit.cli import demo
    except ImportError:  # the demo module is optional
        return
    add = getattr(demo, "add_stage", None)
    if add is not None and "reber-clf" not in [n for n, _ in demo.STAGES]:
        add("reber-clf", demo_stage)


_register_demo_stage()


# -------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "clf",
        help="train, evaluate and use text classifiers (IMDB, CSV/JSONL/folders, Reber)",
        description="Recurrent sequence classifiers: train, eval, predict, reber.",
    )
    sub = parser.add_subparsers(dest="clf_command", metavar="ACTION", required=True)

    # ---- train
    p = sub.add_parser("train", help="train a text classifier")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=["imdb"], help="a named dataset (IMDB train split)")
    src.add_argument("--data", type=Path, help="labelled data: file or folder")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="with --dataset: folder (or archive) holding it; default: the cache",
    )
    p.add_argument(
        "--format",
        choices=["aclimdb", "csv", "jsonl", "folders"],
        default=None,
        help="format of --data (default: guessed from the path)",
    )
    p.add_argument("--text-column", default="text", help="CSV column / JSONL key of the text")
    p.add_argument("--label-column", default="label", help="CSV column / JSONL key of the label")
    p.add_argument(
        "--val-data",
        type=Path,
        default=None,
        help="validation data (same format); default: hold out --val-fraction",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction held out (stratified by class, --seed) (default: 0.2)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="strong",
        help="starting settings: 'seed' (seed 002's model) or 'strong' (default)",
    )
    p.add_argument("--cell", choices=sorted(CELLS), help="recurrent cell")
    p.add_argument("--units", type=int, nargs="+", help="units of each recurrent layer")
    p.add_argument(
        "--bidirectional",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap each recurrent layer in Bidirectional",
    )
    p.add_argument(
        "--merge-mode", choices=["concat", "sum", "mul", "ave"], help="Bidirectional merge mode"
    )
    p.add_argument("--pooling", choices=POOLING_MODES, help="how the sequence becomes a vector")
    p.add_argument("--attention-hidden", type=int, help="tanh layer of attention pooling")
    p.add_argument("--embedding-dim", type=int, help="embedding size")
    p.add_argument("--max-tokens", type=int, help="vocabulary size (padding and OOV included)")
    p.add_argument(
        "--max-length", type=int, help="truncate texts to this many tokens (0: no truncation)"
    )
    p.add_argument(
        "--truncating",
        choices=["pre", "post"],
        help="'pre' keeps the end of long texts, 'post' the start",
    )
    p.add_argument("--head-units", type=int, nargs="*", help="hidden dense layers of the head")
    p.add_argument("--dropout", type=float, help="input dropout of the recurrent layers")
    p.add_argument("--recurrent-dropout", type=float, help="recurrent dropout")
    p.add_argument("--embedding-dropout", type=float, help="dropout on the embeddings")
    p.add_argument("--head-dropout", type=float, help="dropout in the dense head")
    p.add_argument(
        "--class-weights", type=float, nargs="+", help="loss weight of each class (in label order)"
    )
    p.add_argument(
        "--balanced",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="class weights inversely proportional to class frequency",
    )
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "rmsprop"], help="optimizer")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int, help="examples per batch")
    p.add_argument("--epochs", type=int, help="epochs")
    p.add_argument("--clip-grad-norm", type=float, help="clip the gradient norm (0: off)")
    p.add_argument(
        "--bucket-batches",
        type=int,
        default=50,
        help="batches per length bucket; 1 = plain random batches (default: 50)",
    )
    p.add_argument(
        "--fast-path",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run right-padded batches unmasked on the vendor kernel (exact; default: on); "
        "--no-fast-path runs the masked layers (packed sequences), for comparison",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: train under torch.autocast (bfloat16 products, float32 weights); "
        "default float32",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early stopping on val_accuracy after this many epochs without gain",
    )
    p.add_argument(
        "--encoding-errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: 'strict' errors (files: skipped+reported), 'replace'",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of split, weights and batches")
    _add_run_folder_options(p, "clf")
    p.set_defaults(run=run_train)

    # ---- eval
    p = sub.add_parser("eval", help="evaluate a classifier on labelled data")
    p.add_argument("checkpoint", type=Path, help="run folder or checkpoint directory")
    p.add_argument("--data", type=Path, required=True, help="labelled data: file or folder")
    p.add_argument(
        "--format",
        choices=["aclimdb", "csv", "jsonl", "folders"],
        default=None,
        help="format of --data (default: guessed from the path)",
    )
    p.add_argument("--split", default="test", help="aclImdb split to read (default: test)")
    p.add_argument("--text-column", default="text", help="CSV column / JSONL key of the text")
    p.add_argument("--label-column", default="label", help="CSV column / JSONL key of the label")
    p.add_argument(
        "--unknown-labels",
        choices=["error", "skip"],
        default="error",
        help="rows whose label the model does not know: error (default) or skip",
    )
    p.add_argument(
        "--encoding-errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: 'strict' errors (files: skipped+reported), 'replace'",
    )
    p.add_argument("--batch-size", type=int, default=128, help="texts per forward pass")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the report JSON and PNG (default: beside the checkpoint)",
    )
    p.add_argument("--name", default=None, help="report name (default: eval-<data name>)")
    p.set_defaults(run=run_eval)

    # ---- predict
    p = sub.add_parser("predict", help="classify texts; JSON lines on stdout")
    p.add_argument("checkpoint", type=Path, help="run folder or checkpoint directory")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="file with one text per line ('-' for stdin), UTF-8",
    )
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    p.add_argument(
        "--all-probabilities",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add {label: probability} for every class",
    )
    p.set_defaults(run=run_predict)

    # ---- reber
    p = sub.add_parser("reber", help="valid vs corrupted Reber strings (seed 002)")
    p.add_argument(
        "--embedded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the embedded Reber grammar (default) or the plain one",
    )
    p.add_argument(
        "--preset",
        choices=sorted(REBER_PRESETS),
        default="lstm",
        help="'seed': SimpleRNN(4) + RMSprop, 100 epochs; 'lstm' (default)",
    )
    p.add_argument("--cell", choices=sorted(CELLS), help="override the preset's cell")
    p.add_argument("--units", type=int, nargs="+", help="units of each recurrent layer")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "rmsprop"], help="optimizer")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int, help="strings per batch")
    p.add_argument("--epochs", type=int, help="epochs (seed: 100, lstm: 30)")
    p.add_argument("--train-size", type=int, default=10000, help="training strings")
    p.add_argument("--val-size", type=int, default=5000, help="validation strings")
    p.add_argument("--test-size", type=int, default=5000, help="fresh strings for the test")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="data and weight seed")
    _add_run_folder_options(p, "reber")
    p.set_defaults(run=run_reber)


def _add_run_folder_options(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument(
        "--out",
        "--run-dir",
        dest="run_dir",
        type=Path,
        default=None,
        help=f"run folder (default: runs/{prefix}-<time>); --run-dir is the same",
    )
    p.add_argument(
        "--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bars"
    )


def _load(path: Path) -> SequenceClassifier:
    try:
        return load_classifier(path)
    except CheckpointError as exc:  # exit code 1 with the message (main() handles ValueError)
        raise ValueError(str(exc)) from exc


def _default_run_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _read_or_usage(path: Path, args, **kw) -> TextClassificationData:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRowsWarning)
        data = read_labelled(
            path, args.format, text_column=args.text_column, label_column=args.label_column,
            errors=args.encoding_errors, **kw,
        )  # fmt: skip
    for w in caught:
        if issubclass(w.category, SkippedRowsWarning):
            print(f"rnnkit clf: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return data


def _subset(data: TextClassificationData, idx) -> TextClassificationData:
    return TextClassificationData(
        texts=[data.texts[i] for i in idx],
        labels=[data.labels[i] for i in idx],
        label_map=data.label_map,
        sources=[data.sources[i] for i in idx] if data.sources else [],
    )


def run_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator.tune()
    if args.dataset == "imdb":
        from rnnkit.data.datasets import fetch_dataset

        archive = fetch_dataset("imdb", args.data_dir)["archive"]
        data = read_imdb(archive, "train", errors=args.encoding_errors)
    else:
        data = _read_or_usage(args.data, args)
    if len(data) == 0:
        raise UsageError(f"no examples read from {args.data or args.dataset}")
    if len(data.label_map) < 2:
        raise UsageError(f"need at least 2 classes; found {data.label_map.names}")
    if args.val_data is not None:
        val = _read_or_usage(args.val_data, args, label_map=data.label_map)
        train = data
    else:
        tr, va = stratified_split(data.labels, args.val_fraction, seed=args.seed)
        train, val = _subset(data, tr), _subset(data, va)
    s = dict(PRESETS[args.preset])
    for key in (
        "cell", "units", "bidirectional", "merge_mode", "pooling", "attention_hidden",
        "embedding_dim", "max_tokens", "truncating", "head_units", "dropout",
        "recurrent_dropout", "embedding_dropout", "head_dropout", "optimizer", "lr",
        "batch_size", "epochs",
    ):  # fmt: skip
        v = getattr(args, key)
        if v is not None:
            s[key] = v
    if args.max_length is not None:
        s["max_length"] = args.max_length or None
    if args.clip_grad_norm is not None:
        s["clip_grad_norm"] = args.clip_grad_norm or None
    if args.class_weights is not None:
        s["class_weights"] = args.class_weights
    elif args.balanced:
        counts = np.bincount(train.labels, minlength=len(data.label_map)).astype(float)
        s["class_weights"] = (counts.sum() / (len(counts) * np.maximum(counts, 1))).tolist()
    run_dir = args.run_dir or _default_run_dir("clf")
    print(
        f"rnnkit clf train: {len(train)} training / {len(val)} validation examples, classes "
        f"{train.class_counts()}, run folder {run_dir}",
        file=sys.stderr,
    )
    try:
        summary = train_text_classifier(
            train, val, run_dir=run_dir, settings=s, seed=args.seed,
            bucket_batches=args.bucket_batches, max_steps=args.max_steps,
            patience=args.patience, quiet=args.quiet, device=args.device,
            fast_path=args.fast_path, precision=args.precision,
        )  # fmt: skip
    except ValueError as exc:  # bad settings (e.g. config validation)
        raise UsageError(str(exc)) from exc
    short = {k: v for k, v in summary.items() if k not in ("history", "settings")}
    print(json.dumps(short, indent=1))
    if "evaluation_json" in summary:
        report = json.loads(Path(summary["evaluation_json"]).read_text())
        print(format_report(report), file=sys.stderr)
    return 0


def run_eval(args) -> int:
    model = _load(args.checkpoint)
    if model.label_map is None:
        raise UsageError(f"{args.checkpoint}: the checkpoint has no label map")
    if isinstance(model.encoder, CharOneHot):
        raise UsageError("eval reads labelled text files; Reber models are tested by 'clf reber'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRowsWarning)
        data = read_labelled(
            args.data, args.format, split=args.split, text_column=args.text_column,
            label_column=args.label_column, label_map=model.label_map,
            errors=args.encoding_errors,
        )  # fmt: skip
    unknown = [r for r in data.skipped if r.reason.startswith("unknown label")]
    if unknown and args.unknown_labels == "error":
        raise UsageError(
            f"{args.data}: {len(unknown)} row(s) have labels the model does not know "
            f"(model labels: {model.label_map.names}); first: {unknown[0].source}: "
            f"{unknown[0].reason}. Pass --unknown-labels skip to leave them out"
        )
    for w in caught:
        print(f"rnnkit clf eval: warning: {w.message}", file=sys.stderr)
    if len(data) == 0:
        raise UsageError(f"{args.data}: no examples to evaluate")
    given = Path(args.checkpoint)
    resolved = resolve_checkpoint(given)
    out_dir = args.output or (given if resolved != given and given.is_dir() else resolved.parent)
    name = args.name or f"eval-{args.data.name.split('.')[0] or 'data'}"
    report = evaluate_classifier(
        model, data.texts, data.labels, batch_size=args.batch_size, out_dir=out_dir, name=name
    )
    report["data"] = str(args.data)
    report["checkpoint"] = str(resolved)
    report["skipped"] = [{"source": r.source, "reason": r.reason} for r in data.skipped]
    atomic_write_text(Path(report["report_json"]), json.dumps(report, indent=1))
    print(format_report(report))
    print(f"report: {report['report_json']}\nconfusion matrix: {report['confusion_matrix_png']}")
    return 0


def _read_inputs(path: Path) -> list[str]:
    if str(path) == "-":
        data = sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"stdin: invalid UTF-8 at byte offset {exc.start}") from None
        return text.splitlines()
    if not path.is_file():
        raise UsageError(f"--input: no such file: {path}")
    return [line.rstrip("\r") for line in iter_lines(path)]


def run_predict(args) -> int:
    texts = list(args.texts)
    if args.input is not None:
        texts += _read_inputs(args.input)
    if not texts:
        raise UsageError("give texts to classify, or --input FILE")
    model = _load(args.checkpoint)
    results = model.predict(texts, batch_size=args.batch_size, on_empty="null")
    if args.all_probabilities:
        keep = [i for i, r in enumerate(results) if r["label"] is not None]
        probs = model.predict_proba([texts[i] for i in keep], batch_size=args.batch_size)
        names = model.label_map.names if model.label_map is not None else None
        for i, p in zip(keep, probs, strict=True):
            labels = names or [str(k) for k in range(len(p))]
            results[i]["probabilities"] = {n: float(v) for n, v in zip(labels, p, strict=True)}
    out = sys.stdout
    for r in results:
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
    out.flush()
    return 0


def run_reber(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator.tune()
    run_dir = args.run_dir or _default_run_dir(
        f"reber-{'embedded-' if args.embedded else ''}{args.preset}"
    )
    summary = train_reber(
        run_dir, embedded=args.embedded, preset=args.preset, train_size=args.train_size,
        val_size=args.val_size, test_size=args.test_size, seed=args.seed, quiet=args.quiet,
        cell=args.cell, units=args.units, optimizer=args.optimizer, lr=args.lr,
        batch_size=args.batch_size, epochs=args.epochs,
    )  # fmt: skip
    print(json.dumps(summary, indent=1))
    return 0
