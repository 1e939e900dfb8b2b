"""Text-classification readers: IMDB (``aclImdb``), CSV/TSV, JSONL, one folder per class.

Every reader returns a :class:`TextClassificationData` (texts, integer labels, the
:class:`LabelMap` that names them, where each example came from) and never drops input
silently: rows or files that are empty or cannot be parsed are listed in
``data.skipped`` (:class:`SkippedRow`: where, and why) and announced once with a
:class:`SkippedRowsWarning` giving the count.

The IMDB reader reads ``aclImdb_v1.tar.gz`` (or any archive with that layout) member by
member, without extracting it, or the extracted ``aclImdb`` folder: labels come from the
``pos``/``neg`` folder, the 1-10 rating from the file name ``ID_RATING.txt``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .corpora import InvalidUTF8Error, iter_lines, read_text

__all__ = [
    "LabelMap",
    "SkippedRow",
    "SkippedRowsWarning",
    "TextClassificationData",
    "read_class_folders",
    "read_csv",
    "read_imdb",
    "read_jsonl",
]

_LABEL_FORMAT = "rnnkit.labels/1"
_IMDB_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")


class SkippedRowsWarning(UserWarning):
    """Some rows or files were skipped while reading; the reader's result lists them."""


@dataclass(frozen=True)
class SkippedRow:
    """One input that a reader did not turn into an example.

    Attributes:
        source: where it was (``"file.csv:17"`` for a row, a path or archive member for a file).
        reason: why it was skipped (``"empty text"``, ``"missing label"``, ...).
    """

    source: str
    reason: str


class LabelMap:
    """A fixed mapping from label names to class ids ``0..K-1``.

    Names are strings; built from data they are sorted (numerically when every name is an
    integer, so ``"2" < "10"``), which makes ids independent of row order.

    Example:
        >>> labels = LabelMap.from_labels(["pos", "neg", "pos"])
        >>> labels.names, labels.encode("pos"), labels.decode(0), len(labels)
        (['neg', 'pos'], 1, 'neg', 2)
        >>> LabelMap.from_labels([10, 2, 1]).names
        ['1', '2', '10']
    """

    def __init__(self, names: Sequence[str]) -> None:
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique; received {names}")
        self.names = names
        self._ids = {n: i for i, n in enumerate(names)}

    @classmethod
    def from_labels(cls, labels: Iterable[object]) -> LabelMap:
        """The sorted distinct labels of ``labels``."""
        distinct = {str(x) for x in labels}
        if all(re.fullmatch(r"-?\d+", s) for s in distinct):
            return cls(sorted(distinct, key=int))
        return cls(sorted(distinct))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, label: object) -> bool:
        return str(label) in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.names == other.names

    def __repr__(self) -> str:
        return f"LabelMap({self.names!r})"

    def encode(self, label: object) -> int:
        """Class id of ``label`` (``KeyError`` naming the known labels if unknown)."""
        try:
            return self._ids[str(label)]
        except KeyError:
            raise KeyError(f"unknown label {label!r}; known labels: {self.names}") from None

    def decode(self, index: int) -> str:
        """Name of class id ``index``."""
        return self.names[int(index)]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"format": _LABEL_FORMAT, "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelMap:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != _LABEL_FORMAT:
            raise ValueError(
                f"not an rnnkit label map: expected format {_LABEL_FORMAT!r}, "
                f"received {data.get('format')!r}"
            )
        return cls(data["names"])


@dataclass
class TextClassificationData:
    """Examples read by a classification reader.

    Attributes:
        texts: the texts.
        labels: class ids (``labels[i]`` is the class of ``texts[i]``).
        label_map: names of the class ids.
        sources: where each example came from (file, ``file:line`` or archive member).
        ratings: per-example ratings where the format has them (IMDB: 1-10), else ``None``.
        skipped: inputs that were not read, with the reason.
    """

    texts: list[str]
    labels: list[int]
    label_map: LabelMap
    sources: list[str] = field(default_factory=list)
    ratings: list[int] | None = None
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> dict[str, int]:
        """label name -> number of examples."""
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_map.names)}


def _finish(
    where: str,
    texts: list[str],
    raw_labels: list[object],
    sources: list[str],
    skipped: list[SkippedRow],
    label_map: LabelMap | Sequence[str] | None,
    ratings: list[int] | None = None,
) -> TextClassificationData:
    """Encode labels with the given (or a fresh) label map; rows with unknown labels are skipped."""
    if label_map is None:
        label_map = LabelMap.from_labels(raw_labels)
    elif not isinstance(label_map, LabelMap):
        label_map = LabelMap(label_map)
    keep_t, keep_l, keep_s, keep_r = [], [], [], []
    for i, (t, lab, src) in enumerate(zip(texts, raw_labels, sources, strict=True)):
        if lab not in label_map:
            skipped.append(SkippedRow(src, f"unknown label {lab!r} (known: {label_map.names})"))
            continue
        keep_t.append(t)
        keep_l.append(label_map.encode(lab))
        keep_s.append(src)
        if ratings is not None:
            keep_r.append(ratings[i])
    if skipped:
        first = skipped[0]
        warnings.warn(
            f"{where}: skipped {len(skipped)} input(s) (first: {first.source}: {first.reason}); "
            "the list is in .skipped",
            SkippedRowsWarning,
            stacklevel=3,
        )
    return TextClassificationData(
        texts=keep_t,
        labels=keep_l,
        label_map=label_map,
        sources=keep_s,
        ratings=keep_r if ratings is not None else None,
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------ IMDB
def _imdb_member(name: str, split: str, classes: Sequence[str]) -> tuple[str, int, int] | None:
    """``(label, id, rating)`` for ``.../aclImdb/{split}/{label}/{id}_{rating}.txt``; ``None``
    for members outside that split/classes; ``(label, -1, -1)`` for a bad file name."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[-3] != split or parts[-2] not in classes:
        return None
    m = _IMDB_NAME.match(parts[-1])
    if not m:
        return (parts[-2], -1, -1) if parts[-1].endswith(".txt") else None
    return parts[-2], int(m.group(1)), int(m.group(2))


def read_imdb(
    path: str | os.PathLike,
    split: str = "train",
    *,
    classes: Sequence[str] = ("neg", "pos"),
    errors: str = "strict",
) -> TextClassificationData:
    """Read the IMDB Large Movie Review dataset from its ``.tar.gz`` or extracted folder.

    Args:
        path: ``aclImdb_v1.tar.gz`` (any ``.tar``/``.tar.gz``/``.tgz`` with the ``aclImdb``
            layout; read member by member, nothing is extracted), the ``aclImdb`` folder, or a
            folder containing it.
        split: ``"train"`` or ``"test"``.
        classes: sub-folders to read, in class-id order: ``("neg", "pos")`` gives neg=0, pos=1.
            ``("unsup",)`` reads the unlabelled reviews (rating 0 in their file names).
        errors: ``"strict"`` skips (and reports) a review with invalid UTF-8; ``"replace"``
            reads it with U+FFFD.

    Returns:
        Examples ordered by class, then review id (the same for the archive and the folder),
        with ``ratings`` from the file names and ``sources`` like ``"train/pos/0_9.txt"``.
    """
    path = Path(path)
    found: list[tuple[int, int, str, int, str]] = []  # (class, id, source, rating, text)
    skipped: list[SkippedRow] = []

    def add(name: str, data: bytes) -> None:
        parsed = _imdb_member(name, split, classes)
        if parsed is None:
            return
        label, rid, rating = parsed
        source = "/".join(PurePosixPath(name).parts[-3:])
        if rid < 0:
            skipped.append(SkippedRow(source, "file name is not ID_RATING.txt"))
            return
        try:
            text = data.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            skipped.append(SkippedRow(source, f"invalid UTF-8 at byte offset {exc.start}"))
            return
        if not text.strip():
            skipped.append(SkippedRow(source, "empty text"))
            return
        found.append((classes.index(label), rid, source, rating, text))

    if path.is_file():
        try:
            tar = tarfile.open(path, "r|*")
        except tarfile.TarError as exc:
            raise ValueError(f"{path}: not a readable tar archive ({exc})") from None
        with tar:
            for member in tar:
                if not member.isfile() or _imdb_member(member.name, split, classes) is None:
                    continue
                fh = tar.extractfile(member)
                add(member.name, fh.read() if fh is not None else b"")
    elif path.is_dir():
        root = path if (path / split).is_dir() else path / "aclImdb"
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{path}: no aclImdb/{split} folder (expected the layout aclImdb/{split}/pos/*.txt)"
            )
        for label in classes:
            folder = root / split / label
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.is_file():
                    name = f"{split}/{label}/{f.name}"
                    if _imdb_member(name, split, classes) is not None:
                        add(name, f.read_bytes())
    else:
        raise FileNotFoundError(f"no such IMDB archive or folder: {path}")
    if not found and not skipped:
        raise ValueError(f"{path}: no reviews found under aclImdb/{split}/{{{','.join(classes)}}}/")
    found.sort(key=lambda r: (r[0], r[1]))
    return _finish(
        str(path),
        texts=[r[4] for r in found],
        raw_labels=[classes[r[0]] for r in found],
        sources=[r[2] for r in found],
        skipped=skipped,
        label_map=LabelMap(classes),
        ratings=[r[3] for r in found],
    )


# ------------------------------------------------------------------------------ CSV / TSV
def _column_index(header: list[str] | None, column: str | int, what: str, path: Path) -> int:
    if isinstance(column, int):
        if header is not None and not 0 <= column < len(header):
            raise ValueError(
                f"{path}: {what} index {column} out of range for {len(header)} columns {header}"
            )
        return column
    if header is None:
        raise ValueError(
            f"{what}={column!r} names a column but has_header=False; pass a column index"
        )
    if column not in header:
        raise ValueError(f"{path}: no column {column!r} for {what}; columns are {header}")
    return header.index(column)


def read_csv(
    path: str | os.PathLike,
    *,
    text_column: str | int = "text",
    label_column: str | int = "label",
    delimiter: str | None = None,
    has_header: bool = True,
    label_map: LabelMap | Sequence[str] | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> TextClassificationData:
    """Read a CSV or TSV file of ``text, label`` rows.

    Args:
        path: the file.
        text_column: the text column's name (or index).
        label_column: the label column's name (or index).
        delimiter: field separator; ``None`` picks tab for ``.tsv``/``.tab`` files, else comma.
        has_header: whether the first row names the columns.
        label_map: fixed label names (rows with other labels are skipped and reported);
            ``None`` builds one from the labels found.
        encoding: file encoding.
        errors: see :func:`rnnkit.data.corpora.iter_lines`.

    Rows with an empty text, an empty label or the wrong number of fields are skipped and
    reported; a missing column is a ``ValueError`` naming the columns present.

    Example:
        >>> import tempfile, pathlib, warnings
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = p.write_text('text,label\\n"good, really",pos\\nbad,neg\\n,pos\\n')
        >>> with warnings.catch_warnings(record=True):
        ...     data = read_csv(p)
        >>> data.texts, data.labels, data.label_map.names
        (['good, really', 'bad'], [1, 0], ['neg', 'pos'])
        >>> data.skipped  # doctest: +ELLIPSIS
        [SkippedRow(source='...d.csv:4', reason='empty text')]
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    lines = iter_lines(path, encoding=encoding, errors=errors, keepends=True)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    try:
        if has_header:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file (expected a header row)")
            header = [h.strip() for h in header]
        ti = _column_index(header, text_column, "text_column", path)
        li = _column_index(header, label_column, "label_column", path)
        n_fields = len(header) if header is not None else None
        texts, labels, sources, skipped = [], [], [], []
        for row in reader:
            src = f"{path}:{reader.line_num}"
            if not row or all(not c.strip() for c in row):
                skipped.append(SkippedRow(src, "empty row"))
                continue
            if (n_fields is not None and len(row) != n_fields) or max(ti, li) >= len(row):
                want = n_fields if n_fields is not None else max(ti, li) + 1
                skipped.append(SkippedRow(src, f"expected {want} fields, found {len(row)}"))
                continue
            text, label = row[ti], row[li].strip()
            if not text.strip():
                skipped.append(SkippedRow(src, "empty text"))
                continue
            if not label:
                skipped.append(SkippedRow(src, "missing label"))
                continue
            texts.append(text)
            labels.append(label)
            sources.append(src)
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return _finish(str(path), texts, labels, sources, skipped, label_map)


# ---------------------------------------------------------------------------------- JSONL
def read_jsonl(
    path: str | os.PathLike,
    *,
    text_key: str = "text",
    label_key: str = "label",
    label_map: LabelMap | Sequence[str] | None = None,
    errors: str = "strict",
) -> TextClassificationData:
    """Read a JSON-lines file, one ``{"text": ..., "label": ...}`` object per line.

    Lines that are blank, not valid JSON, not an object, or lack the text/label (or have an
    empty text) are skipped and reported. If *no* line has ``text_key`` or ``label_key``, that
    is a ``ValueError`` naming the keys that were found (most likely a wrong key name).
    """
    path = Path(path)
    texts: list[str] = []
    labels: list[object] = []
    sources: list[str] = []
    skipped: list[SkippedRow] = []
    keys_seen: Counter[str] = Counter()
    n_objects = 0
    for lineno, line in enumerate(iter_lines(path, errors=errors), 1):
        src = f"{path}:{lineno}"
        if not line.strip():
            skipped.append(SkippedRow(src, "blank line"))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append(SkippedRow(src, f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            skipped.append(SkippedRow(src, f"not a JSON object ({type(obj).__name__})"))
            continue
        n_objects += 1
        keys_seen.update(obj.keys())
        text, label = obj.get(text_key), obj.get(label_key)
        if not isinstance(text, str):
            reason = "missing text" if text is None else f"text is {type(text).__name__}"
            skipped.append(SkippedRow(src, f"{reason} (key {text_key!r})"))
            continue
        if not text.strip():
            skipped.append(SkippedRow(src, "empty text"))
            continue
        if label is None or (isinstance(label, str) and not label.strip()):
            skipped.append(SkippedRow(src, f"missing label (key {label_key!r})"))
            continue
        if isinstance(label, dict | list):
            skipped.append(SkippedRow(src, f"label is a {type(label).__name__}"))
            continue
        texts.append(text)
        labels.append(label)
        sources.append(src)
    for key, what in ((text_key, "text_key"), (label_key, "label_key")):
        if n_objects and key not in keys_seen:
            raise ValueError(
                f"{path}: no object has the key {key!r} ({what}); keys found: {sorted(keys_seen)}"
            )
    return _finish(str(path), texts, labels, sources, skipped, label_map)


# -------------------------------------------------------------------------- class folders
def read_class_folders(
    path: str | os.PathLike,
    *,
    pattern: str = "*.txt",
    label_map: LabelMap | Sequence[str] | None = None,
    errors: str = "strict",
) -> TextClassificationData:
    """Read ``path/<class>/<file>`` texts: one sub-folder per class, one example per file.

    Files are read in sorted order. Empty files and files with invalid UTF-8 (under
    ``errors="strict"``) are skipped and reported. Labels are the folder names, sorted,
    unless ``label_map`` fixes them.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"not a directory: {path}")
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir())
    if not class_dirs:
        raise ValueError(f"{path}: no class sub-folders (expected {path}/<class>/{pattern})")
    texts, labels, sources, skipped = [], [], [], []
    for d in class_dirs:
        for f in sorted(d.glob(pattern)):
            if not f.is_file():
                continue
            src = str(f)
            try:
                text = read_text(f, errors=errors)
            except InvalidUTF8Error as exc:
                skipped.append(SkippedRow(src, f"invalid UTF-8 at byte offset {exc.offset}"))
                continue
            if not text.strip():
                skipped.append(SkippedRow(src, "empty text"))
                continue
            texts.append(text)
            labels.append(d.name)
            sources.append(src)
    return _finish(str(path), texts, labels, sources, skipped, label_map)
