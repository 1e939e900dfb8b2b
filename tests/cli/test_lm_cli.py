"""``rnnkit lm train|eval|generate`` in-process on a tiny corpus."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from rnnkit.cli.main import main

WORDS = "the cat sat on a mat and the dog ran far away".split()


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    rng = random.Random(0)
    files = {}
    for split, lines in (("train", 120), ("valid", 20)):
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(lines))
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text(text + "\n")
    return files


def tiny_args(corpus, out: Path, *extra: str) -> list[str]:
    return [
        "lm", "train", "--train", str(corpus["train"]), "--valid", str(corpus["valid"]),
        "--num-lstm-units", "8", "--embedding-dim", "8", "--batch-size", "4", "--num-steps", "5",
        "--eval-num-steps", "50", "--log-every", "5", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def test_train_eval_generate(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(corpus, out, "--max-steps", "2")) == 0
    assert (out / "checkpoints" / "last" / "manifest.json").exists()
    assert json.loads((out / "recipe.json").read_text())["recipe"]["num_lstm_units"] == 8
    assert main(tiny_args(corpus, tmp_path / "run2", "--epochs", "1", "--max-steps", "50")) == 0
    for name in ("history.png", "history.json", "steps.csv", "summary.json"):
        assert (tmp_path / "run2" / name).exists(), name
    capsys.readouterr()

    assert main(["lm", "eval", str(tmp_path / "run2"), "--data", str(corpus["valid"])]) == 0
    text = capsys.readouterr().out
    ppl = float(re.search(r"^perplexity: ([0-9.]+)$", text, re.M).group(1))
    assert 1 < ppl < 20
    assert "tokens: 139 predicted (140 in the file" in text
    assert "evaluation batch size: 1" in text
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert summary["valid_perplexity"] == pytest.approx(ppl, rel=1e-3)

    gen = ["lm", "generate", str(tmp_path / "run2"), "--prompt", "the cat", "--max-tokens", "9"]
    assert main([*gen, "--seed", "3", "--top-k", "5", "--temperature", "0.8"]) == 0
    first = capsys.readouterr()
    assert first.out.startswith("the cat") and "tokens/s" in first.err
    assert main([*gen, "--seed", "3", "--top-k", "5", "--temperature", "0.8", "--quiet"]) == 0
    assert capsys.readouterr().out == first.out  # same seed, same sample
    assert main([*gen, "--top-p", "0.9", "--stop-at-eos", "--num-samples", "2"]) == 0


def test_resume_equals_uninterrupted(corpus, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(tiny_args(corpus, whole, "--epochs", "2", "--dropout-keep-prob", "0.7")) == 0
    assert main(tiny_args(corpus, parts, "--epochs", "2", "--dropout-keep-prob", "0.7",
                          "--max-steps", "7")) == 0  # fmt: skip
    assert main(["lm", "train", "--out", str(parts), "--resume", "--quiet"]) == 0
    a = json.loads((whole / "history.json").read_text())["history"]
    b = json.loads((parts / "history.json").read_text())["history"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)


def test_toml_config_and_unknown_keys(corpus, tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('preset = "small"\nnum_lstm_units = 6\ncell = "gru"\ntie_weights = true\n')
    out = tmp_path / "run"
    args = tiny_args(corpus, out, "--config", str(good), "--max-steps", "2")
    args[args.index("--num-lstm-units") + 1] = "6"
    args[args.index("--embedding-dim") + 1] = "6"
    assert main(args) == 0
    recipe = json.loads((out / "recipe.json").read_text())["recipe"]
    assert (recipe["cell"], recipe["tie_weights"], recipe["num_lstm_units"]) == ("gru", True, 6)

    bad = tmp_path / "bad.toml"
    bad.write_text("hidden_size = 3\n")
    assert main(tiny_args(corpus, tmp_path / "r2", "--config", str(bad))) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s) ['hidden_size']" in err and "num_lstm_units" in err


def test_flags_override_preset_and_errors(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(corpus, out, "--max-steps", "1", "--adaptive-softmax", "4",
                          "--locked-dropout", "--weight-drop", "0.2")) == 0  # fmt: skip
    recipe = json.loads((out / "recipe.json").read_text())["recipe"]
    assert recipe["adaptive_softmax_cutoffs"] == [4] and recipe["weight_drop"] == 0.2
    assert recipe["init_scale"] == 0.1  # from the small preset
    assert main(tiny_args(corpus, out, "--max-steps", "1")) == 2  # the run exists: --resume?
    assert "--resume" in capsys.readouterr().err
    assert main(["lm", "train", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no training data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["lm", "train", "--no-such-flag"])
    assert exc.value.code == 2


def test_bfloat16_precision_is_a_recipe_setting(corpus, tmp_path, capsys):
    out = tmp_path / "bf16"
    args = tiny_args(corpus, out, "--epochs", "1", "--max-steps", "50", "--precision", "bfloat16")
    assert main(args) == 0
    assert json.loads((out / "recipe.json").read_text())["recipe"]["precision"] == "bfloat16"
    summary = json.loads((out / "summary.json").read_text())
    assert 1 < summary["valid_perplexity"] < 100
    assert main(tiny_args(corpus, tmp_path / "bad", "--max-steps", "1", "--precision", "fp8")) == 2
    assert "precision must be one of float32, bfloat16; received precision='fp8'" in (
        capsys.readouterr().err
    )


def test_corrupted_checkpoint_is_a_clear_error(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(corpus, out, "--max-steps", "1")) == 0
    weights = out / "checkpoints" / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert main(["lm", "eval", str(out / "checkpoints" / "last"), "--data",
                 str(corpus["valid"])]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "truncated" in err
    assert main(["lm", "generate", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


PTB = Path(__file__).resolve().parents[3] / "shared" / "data" / "ptb"


@pytest.mark.skipif(not (PTB / "ptb.train.txt").exists(), reason="../shared/data/ptb is absent")
def test_ptb_by_name_smoke(tmp_path):
    args = ["lm", "train", "--dataset", "ptb", "--data-dir", str(PTB), "--max-steps", "2",
            "--num-lstm-units", "8", "--embedding-dim", "8", "--out", str(tmp_path / "p"),
            "--quiet", "--eval-batch-size", "64", "--eval-num-steps", "400"]  # fmt: skip
    assert main(args) == 0


def test_compare_torch_writes_throughput_of_both_models(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(corpus, out, "--max-steps", "1", "--compare-torch", "4", "--device", "cpu")
    args.remove("--quiet")
    assert main(args) == 0
    res = json.loads((out / "throughput.json").read_text())
    assert res["steps"] == 4 and res["device"] == "cpu"
    assert res["rnnkit"] > 0 and res["torch.nn.LSTM"] > 0
    assert res["ratio"] == pytest.approx(res["rnnkit"] / res["torch.nn.LSTM"])
    assert re.search(
        r"throughput \(4 steps, \d+ threads\): rnnkit [0-9,]+ tokens/s", capsys.readouterr().out
    )
