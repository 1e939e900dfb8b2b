"""The ``rnnkit`` command: one module per subcommand in this package.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets
``run=<function(args) -> int>`` as a default. Modules are discovered, so adding a subcommand
touches no other file. Exit codes: 0 success, 1 failure at run time, 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import rnnkit
import rnnkit.cli


class UsageError(Exception):
    """A user error found after parsing (bad file, bad combination): exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent neural networks for text, on PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {rnnkit.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(rnnkit.cli.__path__), key=lambda m: m.name):
        if info.name in {"main", "common"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"rnnkit.cli.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UsageError as exc:
        print(f"rnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"rnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
