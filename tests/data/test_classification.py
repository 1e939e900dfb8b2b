"""Classification readers: IMDB (archive and folder), CSV/TSV, JSONL, class folders."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from rnnkit.data.classification import (
    LabelMap,
    SkippedRow,
    SkippedRowsWarning,
    read_class_folders,
    read_csv,
    read_imdb,
    read_jsonl,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared acceptance data not present at {SHARED}"
)

IMDB_FILES = {
    "aclImdb/train/pos/3_9.txt": b"Great film.<br />Loved it.",
    "aclImdb/train/pos/10_7.txt": b"Good.",
    "aclImdb/train/neg/2_1.txt": b"Awful.",
    "aclImdb/train/neg/5_2.txt": b"   ",  # empty review: reported
    "aclImdb/train/neg/notes.txt": b"not a review name",  # bad name: reported
    "aclImdb/train/unsup/0_0.txt": b"unlabelled",
    "aclImdb/test/pos/1_10.txt": b"Test review.",
    "aclImdb/README": b"readme",
}


def make_imdb_tar(path: Path, prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in IMDB_FILES.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_imdb_dir(root: Path) -> Path:
    for name, data in IMDB_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / "aclImdb"


@pytest.mark.parametrize("prefix", ["", "./"])
def test_imdb_from_archive(tmp_path, prefix):
    archive = make_imdb_tar(tmp_path / "aclImdb_v1.tar.gz", prefix)
    with pytest.warns(SkippedRowsWarning, match="skipped 2 input"):
        data = read_imdb(archive)
    assert data.texts == ["Awful.", "Great film.<br />Loved it.", "Good."]
    assert data.labels == [0, 1, 1]
    assert data.ratings == [1, 9, 7]
    assert data.label_map.names == ["neg", "pos"]
    assert data.sources == ["train/neg/2_1.txt", "train/pos/3_9.txt", "train/pos/10_7.txt"]
    assert sorted(s.reason for s in data.skipped) == [
        "empty text",
        "file name is not ID_RATING.txt",
    ]
    test = read_imdb(archive, "test")
    assert test.texts == ["Test review."] and test.ratings == [10]
    unsup = read_imdb(archive, classes=("unsup",))
    assert unsup.texts == ["unlabelled"] and unsup.ratings == [0]


def test_imdb_folder_equals_archive(tmp_path):
    archive = make_imdb_tar(tmp_path / "a.tar.gz")
    folder = make_imdb_dir(tmp_path / "x")
    with pytest.warns(SkippedRowsWarning):
        a = read_imdb(archive)
    with pytest.warns(SkippedRowsWarning):
        b = read_imdb(folder)
    with pytest.warns(SkippedRowsWarning):
        c = read_imdb(folder.parent)  # the folder that contains aclImdb/
    assert a.texts == b.texts == c.texts and a.ratings == b.ratings and a.sources == b.sources


def test_imdb_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such IMDB archive"):
        read_imdb(tmp_path / "missing.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        read_imdb(tmp_path / "junk.tar.gz")
    with pytest.raises(FileNotFoundError, match="no aclImdb/train folder"):
        read_imdb(tmp_path)
    archive = make_imdb_tar(tmp_path / "a.tar.gz")
    with pytest.raises(ValueError, match="no reviews found"):
        read_imdb(archive, "dev")


@needs_shared
def test_imdb_real_archive():
    data = read_imdb(SHARED / "imdb" / "aclImdb_train.tar.gz")
    assert len(data) == 25_000
    assert data.class_counts() == {"neg": 12_500, "pos": 12_500}
    assert data.skipped == []
    assert all(1 <= r <= 4 for r, y in zip(data.ratings, data.labels, strict=True) if y == 0)
    assert all(7 <= r <= 10 for r, y in zip(data.ratings, data.labels, strict=True) if y == 1)


def test_csv_and_tsv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(
        'id,review,sentiment\n1,"Nice, very nice",pos\n2,Bad,neg\n3,,pos\n4,Meh\n5,Okay,\n\n'
        "6,Fine,pos\n",
        encoding="utf-8",
    )
    with pytest.warns(SkippedRowsWarning, match="skipped 4 input"):
        data = read_csv(p, text_column="review", label_column="sentiment")
    assert data.texts == ["Nice, very nice", "Bad", "Fine"]
    assert data.labels == [1, 0, 1]
    reasons = [s.reason for s in data.skipped]
    assert reasons == ["empty text", "expected 3 fields, found 2", "missing label", "empty row"]
    assert data.skipped[0] == SkippedRow(f"{p}:4", "empty text")
    t = tmp_path / "d.tsv"
    t.write_text("3\tone, two\n1\tthree\n10\tfour\n", encoding="utf-8")
    data = read_csv(t, text_column=1, label_column=0, has_header=False)
    assert data.label_map.names == ["1", "3", "10"] and data.labels == [1, 0, 2]


def test_csv_fixed_label_map_reports_unknown(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\na,pos\nb,neutral\n", encoding="utf-8")
    with pytest.warns(SkippedRowsWarning):
        data = read_csv(p, label_map=["neg", "pos"])
    assert data.labels == [1]
    assert "unknown label 'neutral'" in data.skipped[0].reason


def test_csv_missing_column_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("body,label\nx,1\n", encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"no column 'text' for text_column; columns are \['body', 'label'\]"
    ):
        read_csv(p)
    with pytest.raises(ValueError, match="index 5 out of range"):
        read_csv(p, text_column=5)
    with pytest.raises(ValueError, match="has_header=False"):
        read_csv(p, has_header=False)
    (tmp_path / "e.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty file"):
        read_csv(tmp_path / "e.csv")


def test_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        '{"text": "good", "label": 1}\n'
        "not json\n"
        "[1, 2]\n"
        '{"text": "", "label": 0}\n'
        '{"text": "no label"}\n'
        "\n"
        '{"text": "bad", "label": 0}\n',
        encoding="utf-8",
    )
    with pytest.warns(SkippedRowsWarning, match="skipped 5 input"):
        data = read_jsonl(p)
    assert data.texts == ["good", "bad"] and data.labels == [1, 0]
    reasons = [s.reason.split(" (")[0] for s in data.skipped]
    assert reasons == [
        "invalid JSON",
        "not a JSON object",
        "empty text",
        "missing label",
        "blank line",
    ]
    with pytest.raises(
        ValueError,
        match=r"no object has the key 'review' \(text_key\); keys found: \['label', 'text'\]",
    ):
        read_jsonl(p, text_key="review")


def test_class_folders(tmp_path):
    for cls, name, text in [
        ("spam", "1.txt", "buy now"),
        ("ham", "a.txt", "hi"),
        ("ham", "b.txt", ""),
    ]:
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / name).write_text(text, encoding="utf-8")
    (tmp_path / "spam" / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.warns(SkippedRowsWarning, match="skipped 2"):
        data = read_class_folders(tmp_path)
    assert data.label_map.names == ["ham", "spam"]
    assert data.texts == ["hi", "buy now"] and data.labels == [0, 1]
    assert {s.reason.split(" at")[0] for s in data.skipped} == {"empty text", "invalid UTF-8"}
    with pytest.raises(ValueError, match="no class sub-folders"):
        read_class_folders(tmp_path / "ham")


def test_label_map():
    lm = LabelMap.from_labels(["b", "a", "b"])
    assert LabelMap.from_dict(lm.to_dict()) == lm
    with pytest.raises(KeyError, match=r"unknown label 'c'; known labels: \['a', 'b'\]"):
        lm.encode("c")
    with pytest.raises(ValueError, match="unique"):
        LabelMap(["a", "a"])
