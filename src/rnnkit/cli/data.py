"""``rnnkit data``: list, fetch and describe the named datasets.

Examples::

    rnnkit data list
    rnnkit data get ptb                       # download into the cache if missing
    rnnkit data info ptb --data-dir ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rnnkit.data import datasets as ds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="list, download and describe datasets",
        description="List, download (with checksums) and describe rnnkit's named datasets.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help=(
                "folder holding the dataset's files (or the archive itself); downloads go to "
                f"DATA_DIR/<name>/. Default: ${ds.ENV_VAR} or the user cache folder"
            ),
        )

    p_list = sub.add_parser("list", help="list the datasets and whether they are present")
    common(p_list)
    p_list.set_defaults(run=run_list)

    p_get = sub.add_parser("get", help="download (if missing) and verify a dataset")
    p_get.add_argument("name", choices=ds.list_datasets(), help="dataset name")
    common(p_get)
    p_get.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a download progress bar (default: on)",
    )
    p_get.set_defaults(run=run_get)

    p_info = sub.add_parser("info", help="sizes, token/line counts and vocabulary of a dataset")
    p_info.add_argument("name", choices=ds.list_datasets(), help="dataset name")
    common(p_info)
    p_info.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="download the dataset if it is missing (default: off; use 'rnnkit data get')",
    )
    p_info.set_defaults(run=run_info)


def _present(name: str, data_dir: Path | None) -> bool:
    try:
        ds.fetch_dataset(name, data_dir, download=False, progress=False)
    except (FileNotFoundError, OSError, ValueError):
        return False
    return True


def run_list(args: argparse.Namespace) -> int:
    root = args.data_dir if args.data_dir is not None else ds.default_data_dir()
    print(f"data folder: {root}")
    width = max(len(n) for n in ds.list_datasets())
    for name in ds.list_datasets():
        spec = ds.get_spec(name)
        mark = "present" if _present(name, args.data_dir) else "missing"
        print(f"{name:<{width}}  {mark:<7}  {spec.description}")
        print(f"{'':<{width}}           {spec.url}")
    return 0


def run_get(args: argparse.Namespace) -> int:
    files = ds.fetch_dataset(args.name, args.data_dir, download=True, progress=args.progress)
    for split, path in files.items():
        print(f"{split}: {path}")
    return 0


def _size(path: Path) -> str:
    if path.is_dir():
        n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        n = os.path.getsize(path)
    return f"{n:,} B"


def run_info(args: argparse.Namespace) -> int:
    spec = ds.get_spec(args.name)
    files = ds.fetch_dataset(spec, args.data_dir, download=args.download, progress=True)
    print(f"{spec.name}: {spec.description}")
    print(f"source: {spec.url}")
    print(f"sha256: {spec.sha256 or 'none published (members verified where known)'}")
    for split, path in files.items():
        print(f"{split} file: {path} ({_size(path)})")
    data = ds.load_dataset(spec, args.data_dir, download=False, progress=False)
    if isinstance(data, dict):
        for split, d in data.items():
            counts = ", ".join(f"{k} {v:,}" for k, v in d.class_counts().items())
            n_tokens = sum(len(t.split()) for t in d.texts)
            print(
                f"{split}: {len(d):,} examples ({counts}), {n_tokens:,} whitespace tokens, "
                f"{len(d.skipped)} skipped"
            )
        return 0
    stats = data.stats()
    vocab = stats.pop("vocab")
    for split, s in stats.items():
        oov = f", {s['oov']:,} mapped to {data.vocab.oov_token}" if s["oov"] else ""
        print(f"{split}: {s['tokens']:,} tokens, {s['lines']:,} lines{oov}")
    pad = " + padding id 0" if data.vocab.padding_token is not None else ""
    print(f"vocabulary: {vocab['tokens']:,} tokens{pad} ({data.level} level)")
    return 0
