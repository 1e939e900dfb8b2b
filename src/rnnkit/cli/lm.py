"""``rnnkit lm``: train, evaluate and sample stream language models (PTB, WikiText, your files).

Examples::

    rnnkit lm train --dataset ptb --data-dir ../shared/data/ptb --preset small --out runs/ptb-small
    rnnkit lm train --train a.txt --valid b.txt --num-lstm-units 64 --epochs 3 --out runs/mine
    rnnkit lm train --config my.toml --out runs/x --resume      # continue an interrupted run
    rnnkit lm eval runs/ptb-small --data ../shared/data/ptb/ptb.valid.txt
    rnnkit lm generate runs/ptb-small --prompt "the" --max-tokens 50 --temperature 0.8 \\
        --top-k 40 --seed 1

Settings come from a preset (``--preset``, default ``small``), then a TOML file (``--config``,
flat keys named like the flags with ``_``), then the flags given on the command line. Unknown TOML
keys are an error listing the valid ones. A run folder holds ``recipe.json`` (the resolved
settings), ``checkpoints/best`` and ``checkpoints/last``, ``history.json``, ``steps.csv`` /
``steps.jsonl``, ``history.png`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rnnkit import allocator
from rnnkit.cli.main import UsageError
from rnnkit.models.language_model import LanguageModel, LanguageModelConfig
from rnnkit.models.presets import LM_PRESETS, recipe_keys, resolve_recipe

# flag name -> (recipe key, type, help). Every recipe key can also be set in the TOML file.
_MODEL_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--num-lstm-units", "num_lstm_units", int, "hidden units per layer"),
    ("--num-lstm-layers", "num_lstm_layers", int, "stacked recurrent layers"),
    ("--embedding-dim", "embedding_dim", int, "embedding size (presets: the hidden size)"),
    ("--cell", "cell", str, "recurrent cell: lstm or gru"),
    ("--dropout-keep-prob", "dropout_keep_prob", float,
     "keep probability of the non-recurrent connections in training (dropout = 1 - keep)"),
    ("--embedding-dropout", "embedding_dropout", float, "rate of dropping whole word embeddings"),
    ("--weight-drop", "weight_drop", float, "DropConnect rate on the recurrent kernels"),
    ("--init-scale", "init_scale", float, "uniform(-s, s) initialisation of every parameter"),
    ("--backend", "backend", str, "recurrence backend: auto, vendor, fused, reference"),
]  # fmt: skip
_TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--epochs", "epochs", int, "epochs to train (total, counting resumed ones)"),
    ("--batch-size", "batch_size", int, "rows of the token stream per batch"),
    ("--num-steps", "num_steps", int, "BPTT window length"),
    ("--optimizer", "optimizer", str, "sgd, adam or adamw"),
    ("--lr", "lr", float, "learning rate (see --sum-over-steps)"),
    ("--lr-decay", "lr_decay", float, "lr multiplier per epoch after --decay-after epochs"),
    ("--decay-after", "decay_after", int, "epochs at the base learning rate"),
    ("--clip-grad-norm", "clip_grad_norm", float, "clip the global gradient norm (0: off)"),
    ("--weight-decay", "weight_decay", float, "L2 penalty"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--eval-batch-size", "eval_batch_size", int, "rows when evaluating (1: full context)"),
    ("--eval-num-steps", "eval_num_steps", int, "window length when evaluating"),
    ("--seed", "seed", int, "random seed"),
    ("--log-every", "log_every", int, "optimizer steps between step-log rows"),
    (
        "--precision",
        "precision",
        str,
        "float32 (default) or bfloat16: forward passes under torch.autocast, float32 weights",
    ),
]
_BOOL_FLAGS: list[tuple[str, str, str]] = [
    ("tie-weights", "tie_weights", "share the input embedding with the output weights"),
    ("locked-dropout", "locked_dropout", "one dropout mask per sequence instead of per step"),
    ("sum-over-steps", "sum_over_steps",
     "lr and clip refer to the loss summed over the window (Zaremba); rnnkit then uses "
     "lr*num_steps and clip/num_steps with its per-token mean loss"),
]  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lm",
        help="train, evaluate and sample language models",
        description="Stream language models with truncated BPTT (PTB, WikiText, text files).",
    )
    sub = parser.add_subparsers(dest="lm_command", metavar="ACTION", required=True)
    _register_train(sub)
    _register_eval(sub)
    _register_generate(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a stream LM",
        description="Train a stream LM. Settings: --preset, then --config, then flags.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", help="a named dataset (ptb, wikitext-2, ...; see 'rnnkit data')")
    data.add_argument(
        "--data-dir", type=Path, help="folder holding the dataset's files (default: the cache)"
    )
    data.add_argument("--train", type=Path, help="training text file (instead of --dataset)")
    data.add_argument("--valid", type=Path, help="validation text file")
    data.add_argument("--test", type=Path, help="test text file (evaluated at the end)")
    data.add_argument(
        "--level",
        choices=("word", "char"),
        default=None,
        help="tokens of --train/--valid files: words (+ <eos> per line) or characters",
    )
    data.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="download a named dataset if it is missing (default: off)",
    )
    rec = p.add_argument_group("recipe")
    rec.add_argument(
        "--preset", choices=sorted(LM_PRESETS), default=None, help="base settings (default small)"
    )
    rec.add_argument("--config", type=Path, help="TOML file of settings (flat keys)")
    for flag, key, typ, text in _MODEL_FLAGS + _TRAIN_FLAGS:
        rec.add_argument(flag, dest=key, type=typ, default=None, help=text)
    for flag, key, text in _BOOL_FLAGS:
        rec.add_argument(
            f"--{flag}", dest=key, action=argparse.BooleanOptionalAction, default=None, help=text
        )
    rec.add_argument(
        "--adaptive-softmax",
        dest="adaptive_softmax_cutoffs",
        default=None,
        metavar="CUTOFFS",
        help="adaptive softmax with these comma-separated cutoffs, e.g. 2000,6000",
    )
    run = p.add_argument_group("run")
    run.add_argument("--out", type=Path, default=None, help="run folder (default runs/lm)")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument(
        "--compare-torch",
        type=int,
        default=0,
        metavar="STEPS",
        help="before training, time STEPS training steps of this model and of a plain "
        "torch.nn.LSTM model of the same size (tokens/s, written to throughput.json)",
    )
    run.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also log scalars to OUT/tensorboard (needs the optional tensorboard package)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=run_train)


def _register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="exact perplexity of a text file",
        description="Exact perplexity: every token of the file but the first predicted once.",
    )
    p.add_argument("checkpoint", type=Path, help="run folder (its best checkpoint) or checkpoint")
    p.add_argument("--data", type=Path, required=True, help="text file to evaluate")
    p.add_argument(
        "--batch-size", type=int, default=1, help="rows evaluated in parallel (default 1)"
    )
    p.add_argument("--num-steps", type=int, default=200, help="window length (default 200)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(run=run_eval)


def _register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a trained LM",
        description="Sample token by token, carrying the recurrent state.",
    )
    p.add_argument("checkpoint", type=Path, help="run folder (its best checkpoint) or checkpoint")
    p.add_argument("--prompt", default="", help="text to continue (default: a sentence start)")
    p.add_argument("--max-tokens", type=int, default=50, help="tokens to generate (default 50)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="random seed (reproducible samples)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples (default 1)")
    p.add_argument(
        "--stop-at-eos",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stop a sample at the end-of-sentence token (default: off)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="print only the samples")
    p.set_defaults(run=run_generate)


# ------------------------------------------------------------------------------- helpers


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file (``tomllib`` on Python 3.11+, else ``tomli`` if installed)."""
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UsageError(
                "--config needs Python 3.11+ (tomllib) or the 'tomli' package"
            ) from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path} is not valid TOML: {err}") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise UsageError(
            f"{path}: settings are flat keys; received tables {nested}. "
            f"Valid keys: {', '.join(recipe_keys())}"
        )
    return data


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = [k for _, k, _, _ in _MODEL_FLAGS + _TRAIN_FLAGS] + [k for _, k, _ in _BOOL_FLAGS]
    out = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.adaptive_softmax_cutoffs is not None:
        try:
            out["adaptive_softmax_cutoffs"] = [
                int(c) for c in args.adaptive_softmax_cutoffs.split(",") if c.strip()
            ]
        except ValueError:
            raise UsageError(
                "--adaptive-softmax takes comma-separated integers, e.g. 2000,6000; "
                f"received {args.adaptive_softmax_cutoffs!r}"
            ) from None
    if out.get("clip_grad_norm") == 0:
        out["clip_grad_norm"] = None
    if args.preset is not None:
        out["preset"] = args.preset
    return out


def _set_threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise UsageError(f"--threads must be >= 1; received {n}")
        torch.set_num_threads(n)


def _load_corpus(data: dict[str, Any]):
    from rnnkit.data import LMCorpus, load_dataset

    if data.get("dataset"):
        if data.get("train"):
            raise UsageError("give --dataset or --train/--valid files, not both")
        corpus = load_dataset(
            data["dataset"], data.get("data_dir"), download=bool(data.get("download"))
        )
        if not isinstance(corpus, LMCorpus):
            raise UsageError(f"dataset {data['dataset']!r} is not a language-modelling corpus")
        return corpus
    if not data.get("train"):
        raise UsageError("no training data: give --dataset NAME or --train FILE [--valid FILE]")
    for key in ("train", "valid", "test"):
        if data.get(key) and not Path(data[key]).is_file():
            raise UsageError(f"--{key} file not found: {data[key]}")
    return LMCorpus.from_files(
        data["train"], data.get("valid"), data.get("test"), level=data.get("level") or "word"
    )


class _PrintProgress:
    """Plain progress lines (for logs and non-terminals): a few per epoch, one per epoch end."""

    def __init__(self, steps_per_epoch: int, epochs: int, enabled: bool):
        from rnnkit.training import Callback

        outer = self

        class _CB(Callback):
            def on_epoch_begin(self, epoch):
                outer.t0, outer.tokens, outer.epoch = time.perf_counter(), 0.0, epoch

            def on_batch_end(self, step, logs):
                outer.tokens += float(logs.get("weight", 0))
                every = max(1, steps_per_epoch // 10)
                if outer.enabled and step % every == 0:
                    dt = time.perf_counter() - outer.t0
                    loss = float(logs["loss"])
                    print(
                        f"  epoch {outer.epoch} step {step}: loss {loss:.3f} "
                        f"(ppl {math.exp(min(loss, 700)):.1f}), lr {logs['lr']:.4g}, "
                        f"{outer.tokens / max(dt, 1e-9):,.0f} tokens/s",
                        flush=True,
                    )

            def on_epoch_end(self, epoch, logs):
                if not outer.enabled:
                    return
                dt = time.perf_counter() - outer.t0
                val = (
                    f", valid ppl {logs['val_perplexity']:.2f}" if "val_perplexity" in logs else ""
                )
                print(
                    f"epoch {epoch}/{epochs}: train ppl {logs['perplexity']:.2f}{val}, "
                    f"lr {logs['lr']:.4g}, {dt:.0f} s ({outer.tokens / max(dt, 1e-9):,.0f} "
                    "tokens/s incl. validation)",
                    flush=True,
                )

        self.enabled = enabled
        self.callback = _CB()
        self.t0, self.tokens, self.epoch = time.perf_counter(), 0.0, 0


class TorchLSTMLM(torch.nn.Module):
    """The plain PyTorch baseline: ``nn.Embedding`` -> ``nn.LSTM`` -> ``nn.Linear``."""

    def __init__(self, vocab_size: int, embedding_dim: int, units: int, layers: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embedding_dim)
        self.lstm = torch.nn.LSTM(embedding_dim, units, layers, batch_first=True)
        self.decoder = torch.nn.Linear(units, vocab_size)

    def forward(self, inputs, targets, state=None):
        out, state = self.lstm(self.embedding(inputs), state)
        logits = self.decoder(out)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss, state


def compare_torch_throughput(
    model: LanguageModel,
    batches,
    steps: int,
    *,
    lr: float = 1.0,
    clip: float | None = 0.25,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Time ``steps`` SGD training steps of a copy of ``model`` and of a plain ``torch.nn.LSTM``
    model of the same size on the same windows, in this process, on ``device``. Returns
    tokens/s of each.

    Both models warm up first (3 steps each); the timed steps then alternate between the two in
    up to 5 rounds, so that neither is favoured by what the machine does meanwhile (a GPU
    raising its clocks during the first model's turn, another job on a shared CPU).
    """
    device = torch.device(device)
    cfg = model.config
    ours = copy.deepcopy(model).to(device).train()
    theirs = TorchLSTMLM(
        cfg.vocab_size, cfg.embedding_dim, cfg.num_lstm_units, cfg.num_lstm_layers
    ).to(device)
    theirs.train()
    warmup = 3
    windows = []
    for x, y in batches:
        windows.append((x.to(device), y.to(device)))
        if len(windows) >= steps + warmup:
            break
    timed = windows[warmup:]
    rounds = max(1, min(5, len(timed)))
    bounds = [len(timed) * r // rounds for r in range(rounds + 1)]

    def sync() -> None:  # GPU work is asynchronous: finish it before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    runs = {}
    for name, net in (("rnnkit", ours), ("torch.nn.LSTM", theirs)):
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        runs[name] = {"net": net, "opt": opt, "state": None, "seconds": 0.0, "tokens": 0}

    def train(run: dict, part: list) -> None:
        net, opt = run["net"], run["opt"]
        for x, y in part:
            opt.zero_grad(set_to_none=True)
            _, loss, state = net(x, y, state=run["state"])
            run["state"] = tuple(s.detach() for s in state)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()

    for run in runs.values():
        train(run, windows[:warmup])
    for r in range(rounds):
        part = timed[bounds[r] : bounds[r + 1]]
        for run in runs.values():
            sync()
            t0 = time.perf_counter()
            train(run, part)
            sync()
            run["seconds"] += time.perf_counter() - t0
            run["tokens"] += sum(y.numel() for _, y in part)
    result: dict[str, float] = {
        name: run["tokens"] / run["seconds"] if run["seconds"] else 0.0
        for name, run in runs.items()
    }
    result["steps"] = len(timed)
    result["ratio"] = result["rnnkit"] / result["torch.nn.LSTM"]
    return result


# ------------------------------------------------------------------------------- train


def run_train(args: argparse.Namespace) -> int:
    from rnnkit.data import batch_producer
    from rnnkit.training import (
        ModelCheckpoint,
        Trainer,
        ZarembaDecay,
        plot_history,
        select_device,
        set_seed,
    )

    _set_threads(args.threads)
    allocator.tune()
    out = args.out if args.out is not None else Path("runs/lm")
    saved_recipe = out / "recipe.json"
    data = {
        "dataset": args.dataset,
        "data_dir": str(args.data_dir) if args.data_dir else None,
        "train": str(args.train) if args.train else None,
        "valid": str(args.valid) if args.valid else None,
        "test": str(args.test) if args.test else None,
        "level": args.level,
        "download": args.download,
    }
    base: dict[str, Any] = {}
    if args.resume:
        if not saved_recipe.is_file():
            raise UsageError(f"--resume: no run to resume in {out} ({saved_recipe} is missing)")
        saved = json.loads(saved_recipe.read_text())
        base = saved["recipe"]
        if not (args.dataset or args.train):
            data = saved["data"]
    elif (out / "checkpoints").exists():
        raise UsageError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    config = load_toml(args.config) if args.config else {}
    try:
        if base:
            preset = base.pop("preset", None)
            base.update(config)
            recipe = resolve_recipe(preset, base, _overrides(args))
        else:
            recipe = resolve_recipe("small", config, _overrides(args))
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"--max-steps must be >= 1; received {args.max_steps}")
    tc = recipe.training
    say = (lambda *a: print(*a, flush=True)) if not args.quiet else (lambda *a: None)

    corpus = _load_corpus(data)
    vocab = corpus.vocab
    if corpus.valid is None:
        raise UsageError("a validation split is needed (--valid FILE, or a dataset with one)")
    model_cfg = dict(recipe.model)
    model_cfg["mask_zero"] = vocab.padding_id == 0
    try:
        set_seed(tc.seed)
        model = LanguageModel.from_config({"vocab_size": len(vocab), **model_cfg})
        train = batch_producer(corpus.train, tc.batch_size, tc.num_steps)
        valid = batch_producer(corpus.valid, tc.eval_batch_size, tc.eval_num_steps, cover_all=True)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None

    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"data: {corpus.train.numel():,} train tokens, {corpus.valid.numel():,} valid tokens, "
        f"vocabulary {len(vocab):,} ids"
    )
    say(
        f"model: {model.config.num_lstm_layers} x {model.config.num_lstm_units} "
        f"{model.config.cell.upper()}, embedding {model.config.embedding_dim}, "
        f"{n_params:,} parameters; preset {recipe.preset}"
    )
    scale = tc.num_steps if tc.sum_over_steps else 1
    lr = tc.lr * scale
    clip = tc.clip_grad_norm / scale if tc.clip_grad_norm else None
    say(
        f"training: {tc.epochs} epochs of {len(train):,} windows ({tc.batch_size} x "
        f"{tc.num_steps}), {tc.optimizer} lr {tc.lr:g}, clip {tc.clip_grad_norm}"
        + (f" (per-token loss: lr {lr:g}, clip {clip:g})" if scale != 1 and clip else "")
    )
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        from rnnkit.training.checkpoint import atomic_write_text

        atomic_write_text(
            saved_recipe, json.dumps({"recipe": recipe.to_dict(), "data": data}, indent=1)
        )

    if args.compare_torch:
        device = select_device(args.device)
        res = compare_torch_throughput(
            model, train, args.compare_torch, lr=lr, clip=clip, device=device
        )
        where = device.type if device.type != "cpu" else f"{torch.get_num_threads()} threads"
        say(
            f"throughput ({res['steps']} steps, {where}): rnnkit "
            f"{res['rnnkit']:,.0f} tokens/s, torch.nn.LSTM {res['torch.nn.LSTM']:,.0f} tokens/s "
            f"(ratio {res['ratio']:.2f})"
        )
        res["threads"] = torch.get_num_threads()
        res["device"] = str(device)
        (out / "throughput.json").write_text(json.dumps(res, indent=1))
        set_seed(tc.seed)

    callbacks = [ModelCheckpoint(monitor="val_loss")]
    if tc.lr_decay != 1.0:
        callbacks.insert(0, ZarembaDecay(tc.decay_after, tc.lr_decay))
    progress = _PrintProgress(len(train), tc.epochs, enabled=not args.quiet)
    callbacks.append(progress.callback)
    try:
        trainer = Trainer(
            model,
            tc.optimizer,
            lr=lr,
            weight_decay=tc.weight_decay,
            momentum=tc.momentum,
            clip_grad_norm=clip,
            callbacks=callbacks,
            stateful=True,
            perplexity=True,
            device=args.device,
            run_dir=out,
            log_every=tc.log_every,
            quiet=args.quiet,
            tensorboard=args.tensorboard,
            seed=tc.seed,
            batch_weight=model.count_targets,
            unit="token",
            precision=tc.precision,
            model_config=model.config.to_dict(),
            artifacts={
                "vocabulary": vocab.to_dict(),
                "corpus": {"level": corpus.level, "eos_token": corpus.eos_token},
                "recipe": recipe.to_dict(),
            },
        )
    except (ValueError, TypeError, ImportError) as err:
        raise UsageError(str(err)) from None
    t0 = time.perf_counter()
    history = trainer.fit(
        train,
        valid,
        epochs=tc.epochs,
        max_steps=args.max_steps,
        resume_from=out if args.resume else None,
    )
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "epochs_done": trainer.epochs_done,
        "steps": trainer.global_step,
        "train_seconds": seconds,
        "eval_batch_size": tc.eval_batch_size,
    }
    if history.epoch:
        plot_history(history, out / "history.png", include_lr=True, title=f"LM {out.name}")
        best = min(range(len(history.epoch)), key=lambda i: history.history["val_loss"][i])
        summary["best_epoch"] = history.epoch[best]
        summary["valid_perplexity"] = history.history["val_perplexity"][best]
        say(
            f"best validation perplexity: {summary['valid_perplexity']:.2f} (epoch "
            f"{summary['best_epoch']}, exact, evaluation batch size {tc.eval_batch_size})"
        )
    if corpus.test is not None and history.epoch:
        from rnnkit.training import load_checkpoint

        load_checkpoint(out, model, prefer="best")
        res = model.to(trainer.device).evaluate_stream(
            corpus.test.to(trainer.device), tc.eval_batch_size, tc.eval_num_steps
        )
        summary["test_perplexity"] = res["perplexity"]
        say(f"test perplexity: {res['perplexity']:.2f} ({res['tokens']:,} tokens)")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    say(f"run folder: {out}")
    return 0


# -------------------------------------------------------------------------------- load


def load_lm(path: Path, device: str = "cpu"):
    """Rebuild a trained LM from a run folder or checkpoint: ``(model, vocab, corpus_info)``."""
    from rnnkit.data import Vocabulary
    from rnnkit.training import CheckpointError, load_checkpoint, select_device

    try:
        ckpt = load_checkpoint(path, prefer="best")
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if ckpt.config is None or "vocabulary" not in ckpt.artifacts:
        raise UsageError(f"{ckpt.path} is not a language-model checkpoint (no config/vocabulary)")
    model = LanguageModel.from_config(LanguageModelConfig.from_dict(ckpt.config))
    ckpt.load_weights(model)
    vocab = Vocabulary.from_dict(ckpt.artifacts["vocabulary"])
    info = ckpt.artifacts.get("corpus", {"level": "word", "eos_token": "<eos>"})
    return model.to(select_device(device)).eval(), vocab, info


# -------------------------------------------------------------------------------- eval


def run_eval(args: argparse.Namespace) -> int:
    from rnnkit.data import encode_file

    _set_threads(args.threads)
    if args.batch_size < 1 or args.num_steps < 1:
        raise UsageError("--batch-size and --num-steps must be >= 1")
    if not args.data.is_file():
        raise UsageError(f"--data file not found: {args.data}")
    model, vocab, info = load_lm(args.checkpoint, args.device)
    ids = encode_file(args.data, vocab, level=info["level"], eos_token=info["eos_token"])
    if ids.numel() < 2:
        raise UsageError(f"{args.data} has fewer than 2 tokens")
    t0, c0 = time.perf_counter(), time.process_time()
    res = model.evaluate_stream(ids, args.batch_size, args.num_steps)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"perplexity: {res['perplexity']:.3f}")
    print(
        f"tokens: {res['tokens']:,} predicted ({ids.numel():,} in the file; the first is context)"
    )
    print(f"evaluation batch size: {args.batch_size} (window {args.num_steps})")
    print(
        f"time: {dt:.1f} s ({res['tokens'] / dt:,.0f} tokens/s; {cpu:.1f} CPU-s, "
        f"{torch.get_num_threads()} thread(s))"
    )
    return 0


# ---------------------------------------------------------------------------- generate


def run_generate(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    if args.max_tokens < 0:
        raise UsageError(f"--max-tokens must be >= 0; received {args.max_tokens}")
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1; received {args.num_samples}")
    model, vocab, info = load_lm(args.checkpoint, args.device)
    level, eos = info["level"], info.get("eos_token")
    tokens = list(args.prompt) if level == "char" else args.prompt.split()
    if not tokens:
        if eos is None or eos not in vocab:
            raise UsageError("this model has no end-of-sentence token: give a --prompt")
        prompt_ids = [vocab.lookup(eos)]
    else:
        unknown = [t for t in tokens if t not in vocab]
        if unknown and vocab.oov_id is None:
            raise UsageError(f"prompt tokens not in the vocabulary: {unknown}")
        prompt_ids = vocab.encode(tokens)
    eos_id = vocab.lookup(eos) if (args.stop_at_eos and eos and eos in vocab) else None
    gen = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    total, t0, c0 = 0, time.perf_counter(), time.process_time()
    for _ in range(args.num_samples):
        try:
            new = model.generate(
                prompt_ids,
                args.max_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                generator=gen,
                eos_id=eos_id,
            )
        except ValueError as err:
            raise UsageError(str(err)) from None
        total += new.numel()
        words = vocab.decode(new.tolist())
        if eos_id is not None and words and words[-1] == eos:
            words = words[:-1]
        if level == "char":
            text = args.prompt + "".join(words)
        else:
            text = " ".join(tokens + words)
            if eos:
                text = text.replace(f" {eos} ", "\n").replace(f" {eos}", "\n")
        print(text.rstrip("\n"))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not args.quiet:
        print(
            f"[{total:,} tokens in {dt:.2f} s: {total / max(dt, 1e-9):,.0f} tokens/s, batch 1, "
            f"{torch.get_num_threads()} thread(s); {total / max(cpu, 1e-9):,.0f} tokens per "
            "CPU-second]",
            file=sys.stderr,
        )
    return 0


__all__ = ["register", "run_train", "run_eval", "run_generate", "compare_torch_throughput"]
