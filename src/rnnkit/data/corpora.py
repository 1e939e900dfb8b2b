"""Language-modelling corpora: read text files into token-id streams.

Formats:

* **word level** (PTB, WikiText; ``level="word"``): each line's whitespace-separated tokens
  followed by ``<eos>``. The corpora already carry ``<unk>``; it is the vocabulary's OOV token,
  so it maps to itself and PTB has exactly 10,000 token ids (9,999 words incl. ``<unk>``, plus
  ``<eos>``), WikiText-2 33,278, plus id 0 for padding.
* **PTB character level** (``ptb.char.*.txt``): characters separated by spaces and ``_`` between
  words, one sentence per line; this is the word-level format whose "words" are characters, so
  it is read with ``level="word"`` (``<eos>`` per line, as awd-lstm-lm does).
* **plain character level** (tiny-shakespeare; ``level="char"``): every character, newlines
  included, is a token; no ``<eos>``.

Files are read as UTF-8 line by line (never whole, so files larger than memory can be streamed
with :func:`iter_lines` / :func:`iter_line_tokens` / :func:`iter_encoded`). Invalid UTF-8 raises
:class:`InvalidUTF8Error` naming the file, byte offset and line, unless ``errors="replace"`` or
``"ignore"`` is chosen explicitly.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .vocabulary import Vocabulary

__all__ = [
    "InvalidUTF8Error",
    "LMCorpus",
    "SPLITS",
    "build_lm_vocabulary",
    "encode_file",
    "find_split_files",
    "iter_encoded",
    "iter_line_tokens",
    "iter_lines",
    "iter_text_files",
    "read_text",
]

SPLITS = ("train", "valid", "test")
LEVELS = ("word", "char")
_ERRORS = ("strict", "replace", "ignore")
# Names tried, in order, for each split by find_split_files (``{split}`` is the split name).
DEFAULT_SPLIT_PATTERNS = (
    "{split}.txt",
    "ptb.{split}.txt",
    "wiki.{split}.tokens",
    "{split}.tokens",
)


class InvalidUTF8Error(ValueError):
    """A file is not valid in its declared encoding; names the file, byte offset and line."""

    def __init__(self, path: str | os.PathLike, offset: int, line: int, reason: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.line = line
        super().__init__(
            f"{self.path}: invalid UTF-8 at byte offset {offset} (line {line}): {reason}; "
            "fix the file or pass errors='replace' (or 'ignore') to read it anyway"
        )


def _check_errors(errors: str) -> None:
    if errors not in _ERRORS:
        raise ValueError(f"errors must be one of {_ERRORS}; received errors={errors!r}")


def iter_lines(
    path: str | os.PathLike,
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    keepends: bool = False,
) -> Iterator[str]:
    """Yield the lines of a text file one at a time (constant memory).

    Args:
        path: the file.
        encoding: its encoding.
        errors: ``"strict"`` raises :class:`InvalidUTF8Error` with the byte offset;
            ``"replace"`` / ``"ignore"`` as in :meth:`bytes.decode`.
        keepends: keep the line terminators (``"\\n"``; ``"\\r\\n"`` is kept as is).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "bad.txt"
        >>> _ = p.write_bytes(b"ok\\nbad \\xff here\\n")
        >>> list(iter_lines(p, errors="replace"))
        ['ok', 'bad \\ufffd here']
        >>> list(iter_lines(p))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rnnkit.data.corpora.InvalidUTF8Error: ...bad.txt: invalid UTF-8 at byte offset 7 (line 2)...
    """
    _check_errors(errors)
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode(encoding, errors)
            except UnicodeDecodeError as exc:
                raise InvalidUTF8Error(path, offset + exc.start, lineno, exc.reason) from None
            offset += len(raw)
            if not keepends:
                line = line.rstrip("\r\n")
            yield line


def read_text(path: str | os.PathLike, *, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The whole text of a file; :class:`InvalidUTF8Error` on bad bytes (see :func:`iter_lines`)."""
    _check_errors(errors)
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidUTF8Error(path, exc.start, line, exc.reason) from None


def iter_text_files(
    path: str | os.PathLike,
    *,
    pattern: str = "*.txt",
    recursive: bool = True,
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, text)`` for a file, or for every file matching ``pattern`` in a directory
    (sorted, so the order is the same on every machine)."""
    path = Path(path)
    if path.is_file():
        files: Iterable[Path] = [path]
    elif path.is_dir():
        files = sorted(path.rglob(pattern) if recursive else path.glob(pattern))
        files = [f for f in files if f.is_file()]
    else:
        raise FileNotFoundError(f"no such file or directory: {path}")
    for f in files:
        yield f, read_text(f, encoding=encoding, errors=errors)


def iter_line_tokens(
    path: str | os.PathLike,
    *,
    level: str = "word",
    eos_token: str | None = "<eos>",
    encoding: str = "utf-8",
    errors: str = "strict",
) -> Iterator[list[str]]:
    """Yield the tokens of each line: words + ``eos_token`` (``level="word"``) or every
    character including the newline (``level="char"``; ``eos_token`` is not added).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
        >>> _ = p.write_text(" the cat <unk> \\n\\nsat\\n")
        >>> list(iter_line_tokens(p))
        [['the', 'cat', '<unk>', '<eos>'], ['<eos>'], ['sat', '<eos>']]
        >>> list(iter_line_tokens(p, level="char"))[1:]
        [['\\n'], ['s', 'a', 't', '\\n']]
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; received level={level!r}")
    if level == "char":
        for line in iter_lines(path, encoding=encoding, errors=errors, keepends=True):
            yield list(line)
        return
    tail = [eos_token] if eos_token is not None else []
    for line in iter_lines(path, encoding=encoding, errors=errors):
        yield line.split() + tail


def build_lm_vocabulary(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    level: str = "word",
    eos_token: str | None = "<eos>",
    unk_token: str | None = "<unk>",
    padding_token: str | None = "<pad>",
    max_size: int | None = None,
    min_freq: int = 1,
    errors: str = "strict",
) -> Vocabulary:
    """Count the tokens of one or more files (streamed) and build their vocabulary.

    ``unk_token`` is the OOV token: when the text already contains it (PTB, WikiText) it maps
    to itself. ``max_size`` counts every id (padding and ``<unk>`` included).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    counts: Counter[str] = Counter()
    for p in paths:
        for toks in iter_line_tokens(p, level=level, eos_token=eos_token, errors=errors):
            counts.update(toks)
    return Vocabulary.from_counts(
        counts,
        max_size=max_size,
        min_freq=min_freq,
        padding_token=padding_token,
        oov_token=unk_token,
    )


def _encoder(vocab: Vocabulary, path: str | os.PathLike):
    stoi = vocab.token_to_id
    oov = vocab.oov_id
    if oov is not None:
        get = stoi.get
        return lambda toks: [get(t, oov) for t in toks]

    def strict(toks: list[str]) -> list[int]:
        try:
            return [stoi[t] for t in toks]
        except KeyError as exc:
            raise KeyError(
                f"{path}: token {exc.args[0]!r} is not in the vocabulary and it has no "
                "unk/oov token; build the vocabulary with unk_token=... to map unknown tokens"
            ) from None

    return strict


def iter_encoded(
    path: str | os.PathLike,
    vocab: Vocabulary,
    *,
    level: str = "word",
    eos_token: str | None = "<eos>",
    chunk_tokens: int = 1 << 20,
    errors: str = "strict",
) -> Iterator[np.ndarray]:
    """Encode a file in int64 chunks of about ``chunk_tokens`` ids (files larger than memory)."""
    encode = _encoder(vocab, path)
    buf = array("q")
    for toks in iter_line_tokens(path, level=level, eos_token=eos_token, errors=errors):
        buf.extend(encode(toks))
        if len(buf) >= chunk_tokens:
            yield np.frombuffer(buf, dtype=np.int64).copy()
            buf = array("q")
    if buf:
        yield np.frombuffer(buf, dtype=np.int64).copy()


def encode_file(
    path: str | os.PathLike,
    vocab: Vocabulary,
    *,
    level: str = "word",
    eos_token: str | None = "<eos>",
    errors: str = "strict",
) -> torch.Tensor:
    """The whole file as one 1-D int64 tensor of ids (the stream a BPTT batcher cuts up)."""
    chunks = list(iter_encoded(path, vocab, level=level, eos_token=eos_token, errors=errors))
    if not chunks:
        return torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(np.concatenate(chunks))


def find_split_files(
    directory: str | os.PathLike,
    patterns: Sequence[str] | str = DEFAULT_SPLIT_PATTERNS,
    *,
    required: Sequence[str] = ("train",),
) -> dict[str, Path]:
    """Find ``train``/``valid``/``test`` files in ``directory``.

    Args:
        directory: where to look.
        patterns: file-name patterns with ``{split}``, tried in order (first match wins), e.g.
            ``"ptb.char.{split}.txt"``.
        required: splits that must be present (``FileNotFoundError`` listing the names tried).

    Returns:
        split -> path, for the splits found (``test`` is optional: only train/valid may exist).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"not a directory: {directory}")
    if isinstance(patterns, str):
        patterns = [patterns]
    found: dict[str, Path] = {}
    for split in SPLITS:
        for pat in patterns:
            candidate = directory / pat.format(split=split)
            if candidate.is_file():
                found[split] = candidate
                break
    missing = [s for s in required if s not in found]
    if missing:
        tried = ", ".join(p.format(split=missing[0]) for p in patterns)
        raise FileNotFoundError(
            f"no {missing[0]} file in {directory} (tried: {tried}); "
            "pass patterns=... naming the files, e.g. 'mydata.{split}.txt'"
        )
    return found


@dataclass
class LMCorpus:
    """A language-modelling corpus: a vocabulary and one id stream per split.

    Attributes:
        vocab: the vocabulary (built from the train split).
        train: 1-D int64 tensor of ids.
        valid: 1-D int64 tensor, or ``None``.
        test: 1-D int64 tensor, or ``None``.
        paths: split -> source file.
        lines: split -> number of lines read.
        oov: split -> number of tokens that were not in the vocabulary and became ``<unk>``
            (0 for PTB/WikiText, whose ``<unk>`` is in the text itself).
        level: ``"word"`` or ``"char"``.
        eos_token: the end-of-line token (``None`` for ``level="char"``).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "train.txt").write_text("a b <unk>\\nb\\n")
        >>> _ = (d / "valid.txt").write_text("b c\\n")
        >>> corpus = LMCorpus.from_directory(d)
        >>> corpus.vocab.tokens
        ['<pad>', '<unk>', 'b', '<eos>', 'a']
        >>> corpus.train.tolist(), corpus.valid.tolist(), corpus.oov["valid"]
        ([4, 2, 1, 3, 2, 3], [2, 1, 3], 1)
    """

    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor | None = None
    test: torch.Tensor | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    oov: dict[str, int] = field(default_factory=dict)
    level: str = "word"
    eos_token: str | None = "<eos>"

    @classmethod
    def from_files(
        cls,
        train: str | os.PathLike,
        valid: str | os.PathLike | None = None,
        test: str | os.PathLike | None = None,
        *,
        level: str = "word",
        eos_token: str | None = "<eos>",
        unk_token: str | None = "<unk>",
        padding_token: str | None = "<pad>",
        max_size: int | None = None,
        min_freq: int = 1,
        vocab: Vocabulary | None = None,
        errors: str = "strict",
    ) -> LMCorpus:
        """Read train (and optional valid/test) files; the vocabulary comes from train.

        Args:
            train: the training file.
            valid: the validation file, or ``None``.
            test: the test file, or ``None``.
            level: ``"word"`` (tokens + ``<eos>`` per line; also PTB char files) or ``"char"``.
            eos_token: appended to every line at word level; ignored at char level.
            unk_token: the OOV token (unknown tokens in valid/test map to it; counted in
                :attr:`oov`); it is always in the vocabulary, so pass ``None`` for character
                corpora without one (an unknown token is then an error naming the file).
            padding_token: token of id 0 (``None``: no padding id; ids then start at 0 and
                ``len(vocab)`` is exactly the literature's vocabulary size).
            max_size: cap on the number of ids (padding and ``<unk>`` included).
            min_freq: drop train tokens seen fewer times (they become ``<unk>``).
            vocab: use this vocabulary instead of building one from train.
            errors: UTF-8 error handling, see :func:`iter_lines`.
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}; received level={level!r}")
        eos = eos_token if level == "word" else None
        if vocab is None:
            vocab = build_lm_vocabulary(
                train,
                level=level,
                eos_token=eos,
                unk_token=unk_token,
                padding_token=padding_token,
                max_size=max_size,
                min_freq=min_freq,
                errors=errors,
            )
        corpus = cls(
            vocab=vocab, train=torch.zeros(0, dtype=torch.int64), level=level, eos_token=eos
        )
        for split, path in (("train", train), ("valid", valid), ("test", test)):
            if path is None:
                continue
            ids, n_lines, n_oov = _encode_counting(path, vocab, level, eos, errors)
            setattr(corpus, split, ids)
            corpus.paths[split] = Path(path)
            corpus.lines[split] = n_lines
            corpus.oov[split] = n_oov
        return corpus

    @classmethod
    def from_directory(
        cls,
        directory: str | os.PathLike,
        *,
        patterns: Sequence[str] | str = DEFAULT_SPLIT_PATTERNS,
        **kwargs,
    ) -> LMCorpus:
        """Read ``train``/``valid``/``test`` files found in a directory (see
        :func:`find_split_files`); keyword arguments as :meth:`from_files`."""
        files = find_split_files(directory, patterns)
        return cls.from_files(files["train"], files.get("valid"), files.get("test"), **kwargs)

    @classmethod
    def from_text(
        cls,
        path: str | os.PathLike,
        *,
        valid_fraction: float = 0.1,
        padding_token: str | None = "<pad>",
        errors: str = "strict",
    ) -> LMCorpus:
        """A character-level corpus from one plain text file (tiny-shakespeare): the first
        ``1 - valid_fraction`` of the characters are train, the rest valid. The vocabulary is
        every character of the whole file (nanoGPT/char-rnn convention: 65 for
        tiny-shakespeare)."""
        if not 0.0 <= valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1); received {valid_fraction!r}")
        text = read_text(path, errors=errors)
        counts = Counter(text)
        vocab = Vocabulary.from_counts(counts, padding_token=padding_token)
        stoi = vocab.token_to_id
        ids = torch.from_numpy(np.fromiter((stoi[c] for c in text), np.int64, len(text)))
        n_train = int(round(len(text) * (1.0 - valid_fraction)))
        corpus = cls(vocab=vocab, train=ids[:n_train], level="char", eos_token=None)
        corpus.paths = {"train": Path(path)}
        corpus.lines = {"train": text.count("\n", 0, n_train)}
        corpus.oov = {"train": 0}
        if valid_fraction > 0:
            corpus.valid = ids[n_train:]
            corpus.paths["valid"] = Path(path)
            corpus.lines["valid"] = text.count("\n", n_train)
            corpus.oov["valid"] = 0
        return corpus

    def splits(self) -> dict[str, torch.Tensor]:
        """split -> id stream, for the splits present."""
        return {s: t for s in SPLITS if (t := getattr(self, s)) is not None}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per split: ``tokens`` (with ``<eos>``), ``lines``, ``oov``; plus ``vocab`` sizes."""
        out: dict[str, dict[str, int]] = {
            s: {
                "tokens": int(t.numel()),
                "lines": self.lines.get(s, 0),
                "oov": self.oov.get(s, 0),
            }
            for s, t in self.splits().items()
        }
        out["vocab"] = {"ids": len(self.vocab), "tokens": self.vocab.num_tokens}
        return out


def _encode_counting(
    path: str | os.PathLike, vocab: Vocabulary, level: str, eos: str | None, errors: str
) -> tuple[torch.Tensor, int, int]:
    """Encode a file to a tensor; also count lines and tokens that fell to the OOV id."""
    stoi = vocab.token_to_id
    oov = vocab.oov_id
    encode = _encoder(vocab, path)
    buf = array("q")
    n_lines = 0
    n_oov = 0
    oov_literal = vocab.oov_token
    for toks in iter_line_tokens(path, level=level, eos_token=eos, errors=errors):
        n_lines += 1
        ids = encode(toks)
        if oov is not None and oov in ids:
            n_oov += sum(1 for t in toks if t not in stoi and t != oov_literal)
        buf.extend(ids)
    arr = np.frombuffer(buf, dtype=np.int64).copy() if buf else np.zeros(0, np.int64)
    return torch.from_numpy(arr), n_lines, n_oov
