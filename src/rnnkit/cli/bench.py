"""``rnnkit bench``: speed of every layer configuration on every backend, and of LM training."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rnnkit.cli.main import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark recurrent layers and LM training",
        description=(
            "Tokens/second of a training step (forward+backward) and of inference for each "
            "layer configuration and backend, medians of torch.utils.benchmark runs, with the "
            "ratio to torch.nn's standard layer measured in the same run; the matrix-product "
            "roofline; and LM training throughput."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes and short timings (seconds, for tests)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="only configurations whose name contains TEXT (plus each cell's standard baseline)",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--fresh-allocator",
        action="store_true",
        help="keep glibc's default allocator settings (large buffers page-fault on every step); "
        "default: rnnkit.allocator.tune(), as rnnkit's training commands run",
    )
    parser.add_argument(
        "--no-input-grad",
        action="store_true",
        help="training steps without the input's gradient (a first layer on raw features); "
        "default: with it, as after an embedding or another layer (torch's kernels compute it "
        "either way)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="the layers' precision (default float32): every backend and torch.nn's baseline in "
        "that dtype (Keras left out); the LM benchmark stays float32",
    )
    parser.add_argument(
        "--paired",
        type=int,
        nargs="?",
        const=15,
        default=0,
        metavar="ROUNDS",
        help="also measure each ratio by alternating the layer and torch.nn's standard layer "
        "call by call, ROUNDS rounds (default 15; steadier on a shared machine, about twice "
        "the run time)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="also draw the results: bars of each configuration's speed per backend, relative "
        "to torch.nn's standard layer, training and inference",
    )
    parser.add_argument(
        "--from",
        dest="from_json",
        type=Path,
        metavar="JSON",
        help="measure nothing: print (and with --plot draw) the results a --json run wrote",
    )
    parser.set_defaults(run=run)


# the options that change what is measured, which --from cannot honour
_MEASURING = ("quick", "only", "threads", "fresh_allocator", "no_input_grad", "paired", "json")
# options with a default that --from cannot honour when they differ from it
_MEASURING_DEFAULTS = {"dtype": "float32"}


def run(args: argparse.Namespace) -> int:
    import torch

    from rnnkit import bench

    if args.from_json is not None:
        given = [f"--{k.replace('_', '-')}" for k in _MEASURING if getattr(args, k)]
        given += [f"--{k}" for k, v in _MEASURING_DEFAULTS.items() if getattr(args, k) != v]
        if given:
            raise UsageError(f"--from prints a saved run; it takes no {', '.join(given)}")
        result = bench.load_results(args.from_json)
        print(bench.format_table(result))
        _plot(bench, result, args.plot)
        return 0
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; received {args.threads}")
        torch.set_num_threads(args.threads)
    if args.paired < 0:
        raise ValueError(f"--paired must be >= 1 rounds; received {args.paired}")
    configs = bench.CONFIGS
    if args.only:
        chosen = {c.name for c in configs if args.only in c.name}
        if not chosen:
            names = ", ".join(c.name for c in bench.CONFIGS)
            raise ValueError(f"--only {args.only!r} matches no configuration; known: {names}")
        # the standard configuration of each chosen cell is the baseline of the ratios
        cells = {c.cell for c in configs if c.name in chosen}
        configs = tuple(c for c in configs if c.name in chosen or (c.standard and c.cell in cells))
    result = bench.run_benchmarks(
        quick=args.quick,
        configs=configs,
        progress=lambda what: print(f"  {what}", file=sys.stderr, flush=True),
        tune_allocator=not args.fresh_allocator,
        paired_rounds=args.paired,
        input_grad=not args.no_input_grad,
        dtype=args.dtype,
    )
    print(bench.format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    _plot(bench, result, args.plot)
    return 0


def _plot(bench, result: dict, path: Path | None) -> None:
    if path is not None:
        print(f"wrote {bench.plot_results(result, path)}")
