"""``rnnkit demo``: the offline end-to-end demo (about two minutes on 2 CPU cores).

Everything it needs it makes itself, so it runs on a fresh machine without a network:

1. **reber-lm** — an LSTM language model trained on strings of the embedded Reber grammar
   (:mod:`rnnkit.data.reber`). It reports the exact test perplexity next to the grammar's
   theoretical optimum (and the optimum of the very strings tested), samples strings from the
   model and reports the fraction that are grammatical.

Further stages run after it. A stage is a function ``stage(ctx: DemoContext) -> dict`` that
writes into its own folder ``ctx.stage_dir(name)`` and returns a JSON-able summary; register it
with :func:`add_stage` (or append ``(name, fn)`` to :data:`STAGES`). ``ctx.quick`` asks for a
seconds-long version (the test suite runs ``rnnkit demo --quick``).

The run folder (``--out``, default ``runs/demo``) receives each stage's plots, logs and model,
and ``summary.json`` / ``summary.md`` for the whole demo.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnnkit import allocator

__all__ = ["STAGES", "DemoContext", "add_stage", "reber_lm_stage", "register", "run"]


@dataclass
class DemoContext:
    """What a stage gets: where to write, how big to be, how to talk."""

    out: Path  # the demo's run folder
    quick: bool = False  # a seconds-long version (tests)
    seed: int = 0  # seed of data generation and training
    quiet: bool = False  # no progress output
    summary: dict[str, Any] = field(default_factory=dict)  # stage name -> its summary

    def stage_dir(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def say(self, *parts: Any) -> None:
        if not self.quiet:
            print(*parts, flush=True)


Stage = Callable[[DemoContext], dict]


# --------------------------------------------------------------------------- reber LM


@dataclass
class ReberLMSettings:
    """Sizes of the Reber LM stage (full demo; ``quick()`` for tests)."""

    train_strings: int = 6000
    valid_strings: int = 500
    test_strings: int = 2000
    samples: int = 2000
    units: int = 64
    embedding_dim: int = 8
    epochs: int = 12
    batch_size: int = 32
    lr: float = 0.01
    decay_after: int = 4  # epochs at the base lr, then x lr_decay per epoch
    lr_decay: float = 0.6

    @classmethod
    def quick(cls) -> ReberLMSettings:
        return cls(
            train_strings=300, valid_strings=50, test_strings=100, samples=100, units=16,
            epochs=2, decay_after=1,
        )  # fmt: skip


def _reber_batches(strings: list[str], eos: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    from rnnkit.data import lm_batch
    from rnnkit.data.reber import str2ids

    out = []
    for i in range(0, len(strings), batch_size):
        seqs = [np.concatenate([str2ids(s), [eos]]) for s in strings[i : i + batch_size]]
        b = lm_batch(seqs)  # inputs seq[:-1], targets seq[1:], padded with 0 (ignored)
        out.append({"inputs": b.inputs, "targets": b.targets})
    return out


def _plot_perplexity(history, optimum: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    epochs = list(history.epoch)
    ax.plot(epochs, history.history["perplexity"], "-o", ms=4, label="train")
    ax.plot(epochs, history.history["val_perplexity"], "-s", ms=4, label="validation")
    ax.axhline(optimum, color="k", ls="--", lw=1, label=f"grammar optimum {optimum:.4f}")
    ax.axhline(optimum * 1.02, color="gray", ls=":", lw=1, label="optimum + 2%")
    ax.set_ylim(optimum * 0.99, optimum * 1.08)  # the last percent matters; epoch 1 is above
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (per symbol, end token included)")
    ax.set_title("Embedded Reber LM: perplexity vs the grammar's optimum")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path, dpi=100)


def reber_lm_stage(ctx: DemoContext) -> dict[str, Any]:
    """Train an LSTM LM on embedded-Reber strings; perplexity vs optimum; grammatical samples."""
    from rnnkit.data.reber import (
        CHARS,
        EMBEDDED_REBER_GRAMMAR,
        generate_valid_string,
        is_valid,
        log_prob,
        optimal_perplexity,
    )
    from rnnkit.models import LanguageModel
    from rnnkit.training import Trainer, ZarembaDecay, plot_history, set_seed

    cfg = ReberLMSettings.quick() if ctx.quick else ReberLMSettings()
    grammar = EMBEDDED_REBER_GRAMMAR
    out = ctx.stage_dir("reber-lm")
    eos = len(CHARS) + 1  # ids: 0 padding, 1..7 the symbols "BTSXPVE", 8 end of string
    rng = np.random.default_rng(ctx.seed)
    train, valid, test = (
        [generate_valid_string(grammar, rng) for _ in range(n)]
        for n in (cfg.train_strings, cfg.valid_strings, cfg.test_strings)
    )
    ctx.say(
        f"[reber-lm] {len(train):,} embedded-Reber training strings, e.g. {', '.join(train[:3])}"
    )
    set_seed(ctx.seed)
    model = LanguageModel(
        eos + 1,
        None,
        cfg.units,
        1,
        embedding_dim=cfg.embedding_dim,
        dropout_keep_prob=1.0,
    )
    trainer = Trainer(
        model,
        "adam",
        lr=cfg.lr,
        clip_grad_norm=1.0,
        callbacks=[ZarembaDecay(cfg.decay_after, cfg.lr_decay)],
        perplexity=True,
        device="cpu",
        run_dir=out,
        quiet=True,
        seed=ctx.seed,
        batch_weight=model.count_targets,
        unit="symbol",
        model_config=model.config.to_dict(),
        artifacts={"symbols": {"padding": 0, "chars": CHARS, "eos": eos}},
    )
    t0 = time.perf_counter()
    history = trainer.fit(
        _reber_batches(train, eos, cfg.batch_size),
        _reber_batches(valid, eos, cfg.batch_size),
        epochs=cfg.epochs,
    )
    train_seconds = time.perf_counter() - t0
    trainer.save_checkpoint(out / "model")

    # Exact perplexity over every predicted symbol of the test strings (end token included).
    test_eval = trainer.evaluate(_reber_batches(test, eos, 256))
    ppl = test_eval["perplexity"]
    optimum = optimal_perplexity(grammar, end_token=True)
    predicted = sum(len(s) for s in test)  # len - 1 symbols + the end token, per string
    sample_optimum = math.exp(-sum(log_prob(s, grammar) for s in test) / predicted)

    # Sample strings: start from "B", draw until the end token (temperature 1, no truncation).
    start = torch.full((cfg.samples, 1), 1, dtype=torch.long)
    rows = model.generate(start, 200, seed=ctx.seed + 1, eos_id=eos).tolist()
    samples = []
    for row in rows:
        body = "".join(CHARS[i - 1] for i in row if 0 < i < eos)
        samples.append(("B" + body, eos in row))
    good = sum(1 for s, ended in samples if ended and is_valid(s, grammar))
    fraction = good / len(samples)

    plot_history(history, out / "history.png", title="Embedded Reber LM")
    _plot_perplexity(history, optimum, out / "perplexity.png")
    summary = {
        "train_strings": len(train),
        "test_strings": len(test),
        "test_symbols": int(test_eval["count"]),
        "epochs": cfg.epochs,
        "train_seconds": round(train_seconds, 1),
        "test_perplexity": ppl,
        "optimal_perplexity": optimum,
        "test_strings_optimal_perplexity": sample_optimum,
        "ratio_to_optimum": ppl / optimum,
        "samples": len(samples),
        "grammatical_fraction": fraction,
        "example_samples": [s for s, _ in samples[:8]],
    }
    ctx.say(
        f"[reber-lm] test perplexity {ppl:.4f}; grammar optimum {optimum:.4f} "
        f"({100 * (ppl / optimum - 1):+.2f}%); optimum on these test strings "
        f"{sample_optimum:.4f} ({100 * (ppl / sample_optimum - 1):+.2f}%)"
    )
    ctx.say(
        f"[reber-lm] {good}/{len(samples)} sampled strings are grammatical "
        f"({100 * fraction:.2f}%), e.g. {', '.join(s for s, _ in samples[:4])}"
    )
    ctx.say(f"[reber-lm] trained in {train_seconds:.0f} s; plots in {out}")
    return summary


# ------------------------------------------------------------------------------ stages

#: The demo's stages, in order: ``(name, stage(ctx) -> summary dict)``.
STAGES: list[tuple[str, Stage]] = [("reber-lm", reber_lm_stage)]


def add_stage(name: str, stage: Stage, *, before: str | None = None) -> None:
    """Register a demo stage (appended, or inserted before the stage named ``before``).

    Raises:
        ValueError: a stage of that name exists, or ``before`` names no stage.
    """
    names = [n for n, _ in STAGES]
    if name in names:
        raise ValueError(f"a demo stage named {name!r} exists already; stages: {names}")
    if before is None:
        STAGES.append((name, stage))
        return
    if before not in names:
        raise ValueError(f"before must name a stage; received {before!r}, stages: {names}")
    STAGES.insert(names.index(before), (name, stage))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline end-to-end demo (about two minutes on 2 CPU cores)",
        description=__doc__.split("\n\n")[0] + " " + ", ".join(n for n, _ in STAGES) + ".",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)"
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long version (tests)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="STAGE",
        help="run only this stage (repeatable)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these small models gain nothing from more)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnkit.cli.main import UsageError

    names = [n for n, _ in STAGES]
    chosen = args.only or names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; stages: {names}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1; received {args.threads}")
    torch.set_num_threads(args.threads)
    allocator.tune()
    ctx = DemoContext(out=args.out, quick=args.quick, seed=args.seed, quiet=args.quiet)
    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for name, stage in STAGES:
        if name in chosen:
            ctx.summary[name] = stage(ctx)
    total = time.perf_counter() - t0
    report = {"seconds": round(total, 1), "quick": args.quick, "stages": ctx.summary}
    (ctx.out / "summary.json").write_text(json.dumps(report, indent=1))
    (ctx.out / "summary.md").write_text(_markdown(report))
    ctx.say(f"demo finished in {total:.0f} s; summary in {ctx.out / 'summary.md'}")
    return 0


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# rnnkit demo ({report['seconds']} s{', quick' if report['quick'] else ''})", ""]
    for name, summary in report["stages"].items():
        lines += [f"## {name}", "", "| quantity | value |", "| --- | --- |"]
        for k, v in summary.items():
            if isinstance(v, float):
                v = f"{v:.4f}"
            elif isinstance(v, list):
                v = ", ".join(map(str, v))
            lines.append(f"| {k} | {v} |")
        lines.append("")
    return "\n".join(lines)
