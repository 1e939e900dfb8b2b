"""``rnnkit data list|get|info``, run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnkit.cli.main import main

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared acceptance data not present at {SHARED}"
)


def test_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert f"data folder: {tmp_path}" in out
    for name in ("ptb", "ptb-char", "wikitext-2", "imdb", "tiny-shakespeare"):
        assert name in out
    assert "missing" in out and "aclImdb_v1.tar.gz" in out


def test_info_missing_without_download_names_url(tmp_path, capsys):
    assert main(["data", "info", "ptb", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "simple-examples.tgz" in err and "place it at" in err


def test_get_unreachable_fails_cleanly(tmp_path, monkeypatch, capsys):
    from rnnkit.data import datasets as ds

    spec = ds.replace_url(ds.get_spec("tiny-shakespeare"), "http://127.0.0.1:9/input.txt")
    monkeypatch.setitem(ds.DATASETS, "tiny-shakespeare", spec)
    assert main(["data", "get", "tiny-shakespeare", "--data-dir", str(tmp_path)]) == 1
    assert "cannot download http://127.0.0.1:9/input.txt" in capsys.readouterr().err


def test_unknown_name_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "info", "mnist"])
    assert exc.value.code == 2


@needs_shared
def test_info_ptb_and_get_local(capsys):
    assert main(["data", "info", "ptb", "--data-dir", str(SHARED / "ptb")]) == 0
    out = capsys.readouterr().out
    assert "train: 929,589 tokens, 42,068 lines" in out
    assert "valid: 73,760 tokens, 3,370 lines" in out
    assert "vocabulary: 10,000 tokens + padding id 0" in out
    assert main(["data", "get", "tiny-shakespeare", "--data-dir", str(SHARED)]) == 0
    assert "input.txt" in capsys.readouterr().out
    assert main(["data", "list", "--data-dir", str(SHARED)]) == 0
    assert "present" in capsys.readouterr().out
