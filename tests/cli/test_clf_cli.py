"""``rnnkit clf`` in-process on tiny data made in tmp_path: train (every format), eval,
predict, reber, the demo stage hook, and bad inputs."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pytest

from rnnkit.cli.main import main

POS = ["good great film", "great acting loved it", "wonderful fun", "superb great"]
NEG = ["bad awful film", "boring dull plot", "awful waste", "terrible bad"]
TINY = [
    "--preset", "strong", "--units", "4", "--embedding-dim", "4", "--head-units", "3",
    "--epochs", "2", "--batch-size", "4", "--max-tokens", "50", "--quiet",
]  # fmt: skip


def _write_csv(path: Path, rows, header=("text", "label"), delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(n=3, labels=("pos", "neg")):
    rows = []
    for i in range(n):
        rows += [(POS[i % 4], labels[0]), (NEG[i % 4], labels[1])]
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    data = _write_csv(d / "d.csv", _rows(6))
    run = d / "run"
    assert main(["clf", "train", "--data", str(data), "--run-dir", str(run), *TINY]) == 0
    return run, data


def test_train_writes_checkpoints_history_and_evaluation(trained, capsys):
    run, _ = trained
    for name in ("checkpoints/best/manifest.json", "checkpoints/last/manifest.json",
                 "history.json", "history.png", "evaluation.json", "evaluation_confusion.png",
                 "summary.json"):  # fmt: skip
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_examples"] == 10 and summary["val_examples"] == 2
    report = json.loads((run / "evaluation.json").read_text())
    assert report["labels"] == ["neg", "pos"] and report["count"] == 2
    assert {"accuracy", "macro", "per_class", "confusion_matrix", "roc_auc"} <= set(report)
    artifacts = {p.name for p in (run / "checkpoints/best/artifacts").iterdir()}
    assert artifacts == {"classifier.json", "labels.json", "vectorizer.json"}


def test_train_in_bfloat16_precision(trained, tmp_path):
    _, data = trained
    run = tmp_path / "bf16"
    args = ["clf", "train", "--data", str(data), "--run-dir", str(run), *TINY]
    assert main([*args, "--precision", "bfloat16"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "bfloat16" and summary["val"]["count"] == 2
    with pytest.raises(SystemExit):
        main([*args, "--precision", "float16"])


def test_predict_texts_and_input_file_in_order(trained, tmp_path, capsys):
    run, _ = trained
    inputs = tmp_path / "in.txt"
    inputs.write_text("wonderful fun\n\nbad plot\n", encoding="utf-8")
    capsys.readouterr()
    ckpt = run / "checkpoints" / "best"
    assert main(["clf", "predict", str(ckpt), "great film", "--input", str(inputs)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == ["great film", "wonderful fun", "", "bad plot"]
    assert all(x["label"] in ("neg", "pos") for i, x in enumerate(lines) if i != 2)
    assert all(0.5 <= x["probability"] <= 1.0 for i, x in enumerate(lines) if i != 2)
    assert lines[2] == {"text": "", "label": None, "probability": None, "error": "empty text"}
    # the run folder works as well, and --all-probabilities adds every class
    assert main(["clf", "predict", str(run), "great film", "--all-probabilities"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["probabilities"]) == {"neg", "pos"}
    assert out["probabilities"][out["label"]] == pytest.approx(out["probability"])


def test_eval_writes_report_beside_checkpoint(trained, tmp_path, capsys):
    run, _ = trained
    test = _write_csv(tmp_path / "test.csv", _rows(4))
    capsys.readouterr()
    assert main(["clf", "eval", str(run), "--data", str(test)]) == 0
    out = capsys.readouterr().out
    assert "true \\ pred" in out and "macro avg" in out
    report = json.loads((run / "eval-test.json").read_text())
    assert report["count"] == 8 and (run / "eval-test_confusion.png").is_file()
    ckpt = run / "checkpoints" / "last"
    assert main(["clf", "eval", str(ckpt), "--data", str(test), "--name", "x"]) == 0
    assert (run / "checkpoints" / "x.json").is_file()


def test_eval_unknown_labels_error_or_skip(trained, tmp_path, capsys):
    run, _ = trained
    test = _write_csv(tmp_path / "t.csv", [*_rows(2), ("meh", "neutral")])
    assert main(["clf", "eval", str(run), "--data", str(test)]) == 2
    err = capsys.readouterr().err
    assert "labels the model does not know" in err and "neutral" in err
    assert main(["clf", "eval", str(run), "--data", str(test), "--unknown-labels", "skip"]) == 0
    report = json.loads((run / "eval-t.json").read_text())
    assert report["count"] == 4 and len(report["skipped"]) == 1


def test_bad_inputs_give_clear_errors(trained, tmp_path, capsys):
    run, data = trained
    # label column missing
    assert main(["clf", "train", "--data", str(data), "--label-column", "y", *TINY]) == 1
    assert "no column 'y' for label_column" in capsys.readouterr().err
    # non-UTF-8 file
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\ngood \xff film,pos\nbad,neg\n")
    assert main(["clf", "train", "--data", str(bad), *TINY]) == 1
    assert "invalid UTF-8 at byte offset" in capsys.readouterr().err
    bad_in = tmp_path / "bad.txt"
    bad_in.write_bytes(b"fine\n\xfe\n")
    assert main(["clf", "predict", str(run), "--input", str(bad_in)]) == 1
    assert "invalid UTF-8" in capsys.readouterr().err
    # empty texts are skipped and reported by the readers
    empty = _write_csv(tmp_path / "e.csv", [*_rows(3), ("", "pos"), ("  ", "neg")])
    assert main(["clf", "train", "--data", str(empty), "--run-dir", str(tmp_path / "r"),
                 "--max-steps", "1", *TINY]) == 0  # fmt: skip
    assert "skipped 2 input(s)" in capsys.readouterr().err
    # one class only, nothing to predict, not a checkpoint
    one = _write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x")])
    assert main(["clf", "train", "--data", str(one), *TINY]) == 2
    assert main(["clf", "predict", str(run)]) == 2
    assert main(["clf", "predict", str(tmp_path), "hi"]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_train_formats_jsonl_tsv_folders_aclimdb_multiclass(tmp_path, capsys):
    rows = _rows(3, ("a", "b")) + [("neutral words here", "c"), ("plain neutral", "c")] * 3
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"review": t, "y": lab}) for t, lab in rows) + "\n")
    tsv = _write_csv(tmp_path / "d.tsv", rows, header=("review", "y"), delimiter="\t")
    folders = tmp_path / "folders"
    imdb = tmp_path / "aclImdb" / "train"
    for i, (t, lab) in enumerate(rows):
        (folders / lab).mkdir(parents=True, exist_ok=True)
        (folders / lab / f"{i}.txt").write_text(t)
    for i, (t, lab) in enumerate(_rows(4)):
        (imdb / lab).mkdir(parents=True, exist_ok=True)
        (imdb / lab / f"{i}_{8 if lab == 'pos' else 2}.txt").write_text(t)
    archive = tmp_path / "imdb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "aclImdb", arcname="aclImdb")
    cases = [
        (["--data", str(jl), "--text-column", "review", "--label-column", "y"], 3),
        (["--data", str(tsv), "--format", "csv", "--text-column", "review", "--label-column", "y",
          "--cell", "gru", "--no-bidirectional", "--pooling", "attention"], 3),
        (["--data", str(folders), "--cell", "simple", "--pooling", "mean", "--balanced"], 3),
        (["--data", str(tmp_path / "aclImdb"), "--pooling", "last"], 2),
        (["--dataset", "imdb", "--data-dir", str(archive), "--merge-mode", "sum"], 2),
    ]  # fmt: skip
    for i, (args, n_classes) in enumerate(cases):
        run = tmp_path / f"run{i}"
        assert main(["clf", "train", *args, "--run-dir", str(run), *TINY]) == 0, args
        report = json.loads((run / "evaluation.json").read_text())
        assert len(report["labels"]) == n_classes
        assert ("roc_auc" in report) == (n_classes == 2)
    cfg = json.loads((tmp_path / "run1/checkpoints/best/config.json").read_text())
    assert cfg["cell"] == "gru" and not cfg["bidirectional"] and cfg["pooling"] == "attention"
    assert main(["clf", "eval", str(tmp_path / "run4"), "--data", str(archive),
                 "--split", "train"]) == 0  # fmt: skip


def test_reber_and_demo_stage(tmp_path, capsys):
    run = tmp_path / "reber"
    args = ["clf", "reber", "--no-embedded", "--preset", "seed", "--epochs", "2",
            "--train-size", "200", "--val-size", "50", "--test-size", "60",
            "--run-dir", str(run), "--quiet"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["grammar"] == "reber" and summary["settings"]["cell"] == "simple"
    assert summary["parameters"] == 7 * 4 + 4 * 4 + 4 + 4 + 1  # the seed's 53
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    capsys.readouterr()
    assert main(["clf", "predict", str(run), "BTSSXXTVVE", "BPE"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["label"] in ("valid", "invalid") for x in lines] == [True, True]
    from rnnkit.cli import demo

    assert "reber-clf" in [n for n, _ in demo.STAGES]
    ctx = demo.DemoContext(out=tmp_path / "demo", quick=True, quiet=True)
    s = dict(demo.STAGES)["reber-clf"](ctx)
    assert s["test_strings"] == 500 and (tmp_path / "demo/reber-clf/summary.json").is_file()


def test_out_and_run_dir_name_the_same_run_folder():
    from rnnkit.cli.main import build_parser

    parser = build_parser()
    for flag in ("--out", "--run-dir"):
        args = parser.parse_args(["clf", "reber", flag, "runs/x"])
        assert str(args.run_dir) == "runs/x"
