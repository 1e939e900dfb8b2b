"""Step logs written to the run folder (CSV and JSON lines), optional TensorBoard, progress bars.

Every logged step (``log_every``) is one CSV row and one JSON line::

    step,epoch,loss,lr,items_per_sec,elapsed,...
    10,1,5.91,1.0,10234.5,1.3

>>> import tempfile, json
>>> with tempfile.TemporaryDirectory() as d:
...     log = StepLogger(d)
...     log.log({"step": 1, "epoch": 1, "loss": 2.5})
...     log.close()
...     json.loads(open(f"{d}/steps.jsonl").read()), open(f"{d}/steps.csv").read().split()
({'step': 1, 'epoch': 1, 'loss': 2.5}, ['step,epoch,loss', '1,1,2.5'])
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = ["StepLogger", "TensorBoardLogger", "ProgressBar"]


class StepLogger:
    """Append step logs to ``steps.csv`` and/or ``steps.jsonl`` in ``run_dir``.

    The CSV columns are fixed by the first row written (by the existing header when appending to
    a resumed run); keys outside them still go to the JSONL file.

    Args:
        run_dir: the run folder (created if needed).
        csv: write ``steps.csv``.
        jsonl: write ``steps.jsonl``.
    """

    def __init__(self, run_dir: str | os.PathLike, csv: bool = True, jsonl: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "steps.csv" if csv else None
        self.jsonl_path = self.run_dir / "steps.jsonl" if jsonl else None
        self._csv_file = None
        self._writer: Any = None
        self._fields: list[str] | None = None
        self._jsonl_file = None

    def log(self, row: Mapping[str, Any]) -> None:
        if self.jsonl_path is not None:
            if self._jsonl_file is None:
                self._jsonl_file = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
            self._jsonl_file.write(json.dumps(dict(row)) + "\n")
            self._jsonl_file.flush()
        if self.csv_path is not None:
            if self._csv_file is None:
                self._open_csv(list(row))
            self._writer.writerow({k: row.get(k, "") for k in self._fields})
            self._csv_file.flush()

    def _open_csv(self, fields: list[str]) -> None:
        assert self.csv_path is not None
        exists = self.csv_path.exists() and self.csv_path.stat().st_size > 0
        if exists:
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            fields = header or fields
        self._fields = fields
        self._csv_file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.DictWriter(self._csv_file, fieldnames=fields, extrasaction="ignore")
        if not exists:
            self._writer.writeheader()

    def close(self) -> None:
        for f in (self._csv_file, self._jsonl_file):
            if f is not None:
                f.close()
        self._csv_file = self._jsonl_file = None


class TensorBoardLogger:
    """Scalars to TensorBoard (the optional ``tensorboard`` extra).

    Raises:
        ImportError: TensorBoard is not installed; the message says how to install it.
    """

    def __init__(self, log_dir: str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoard logging needs the optional 'tensorboard' package: "
                "pip install 'rnnkit[tensorboard]' (or pass tensorboard=False)"
            ) from err
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ProgressBar:
    """One tqdm bar per epoch with live loss / perplexity / throughput.

    Disabled when ``quiet`` or when stderr is not a terminal.

    Args:
        total: batches in the epoch (``None`` when the data has no length).
        desc: the bar's label, e.g. ``"epoch 3/13"``.
        quiet: never show.
        unit: what the batch weight counts, shown as ``<unit>/s`` (``"tok"``, ``"item"``).
    """

    def __init__(self, total: int | None, desc: str, quiet: bool = False, unit: str = "item"):
        self.enabled = not quiet and sys.stderr.isatty()
        self.unit = unit
        self.bar = (
            tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)
            if self.enabled
            else None
        )

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_values(self, loss: float, ppl: float | None, rate: float | None) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{loss:.4f}"}
        if ppl is not None:
            post["ppl"] = f"{ppl:.2f}"
        if rate is not None:
            post[f"{self.unit}/s"] = f"{rate:,.0f}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
