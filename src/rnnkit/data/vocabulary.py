"""One vocabulary concept for every text path in rnnkit, and Keras' ``Tokenizer`` on top of it.

A :class:`Vocabulary` is an ordered list of tokens; a token's id is its position. Two ids are
special and always come first when present:

* id 0 is the **padding** token (``padding_token``, default ``"<pad>"``); it never stands for text.
* the **OOV** token (``oov_token``, e.g. ``"<unk>"`` or ``"[UNK]"``) comes next; unknown tokens map
  to it. If the training text itself contains the OOV token (PTB and WikiText already carry
  ``<unk>``), those occurrences map to the same id, so no extra "unknown" id appears and
  vocabulary sizes match the literature.

The remaining tokens are ordered by count, most frequent first, ties broken by first occurrence.
The same text therefore always gives the same ids.

:class:`Tokenizer` reproduces ``keras.preprocessing.text.Tokenizer`` (the seeds' tokenizer);
:class:`rnnkit.data.vectorization.TextVectorization` is the classification path. Both keep their
ids in a :class:`Vocabulary`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "KERAS_FILTERS",
    "Tokenizer",
    "Vocabulary",
    "atomic_write_text",
    "text_to_word_sequence",
]

#: Keras' default ``filters``: characters removed from text before splitting.
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'

_VOCAB_FORMAT = "rnnkit.vocabulary/1"
_TOKENIZER_FORMAT = "rnnkit.tokenizer/1"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Vocabulary:
    """An ordered token <-> id map with a reserved padding id 0 and an optional OOV id.

    Args:
        tokens: the ordinary tokens in id order (without the padding and OOV tokens; if they
            appear they are skipped). Duplicates are an error.
        padding_token: token of id 0, or ``None`` for a vocabulary without padding (ids of
            ordinary tokens then start at 0; only for data that is never padded).
        oov_token: token that unknown tokens map to, placed right after the padding token;
            ``None`` means unknown tokens are an error in :meth:`encode`.
        counts: optional token counts (kept for reports and saved with the vocabulary).

    Example:
        >>> vocab = Vocabulary.from_counts({"the": 3, "cat": 1, "sat": 1}, oov_token="<unk>")
        >>> vocab.tokens
        ['<pad>', '<unk>', 'the', 'cat', 'sat']
        >>> vocab.encode(["the", "dog", "sat"])
        [2, 1, 4]
        >>> vocab.decode([2, 1, 4, 0, 0])
        ['the', '<unk>', 'sat']
        >>> len(vocab), vocab.num_tokens
        (5, 4)
    """

    def __init__(
        self,
        tokens: Iterable[str] = (),
        *,
        padding_token: str | None = "<pad>",
        oov_token: str | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        if padding_token is not None and padding_token == oov_token:
            raise ValueError(
                "padding_token and oov_token must differ; "
                f"received padding_token={padding_token!r}, oov_token={oov_token!r}"
            )
        self.padding_token = padding_token
        self.oov_token = oov_token
        itos: list[str] = []
        if padding_token is not None:
            itos.append(padding_token)
        if oov_token is not None:
            itos.append(oov_token)
        stoi = {tok: i for i, tok in enumerate(itos)}
        for tok in tokens:
            if tok in (padding_token, oov_token):
                continue
            if not isinstance(tok, str):
                raise TypeError(f"tokens must be str; received {tok!r} ({type(tok).__name__})")
            if tok in stoi:
                raise ValueError(f"duplicate token in vocabulary: {tok!r}")
            stoi[tok] = len(itos)
            itos.append(tok)
        self._itos = itos
        self._stoi = stoi
        self.counts: dict[str, int] = dict(counts) if counts is not None else {}

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        *,
        max_size: int | None = None,
        min_freq: int = 1,
        padding_token: str | None = "<pad>",
        oov_token: str | None = None,
        specials: Sequence[str] = (),
    ) -> Vocabulary:
        """Build a vocabulary from token counts.

        Tokens are ordered by count (descending), ties by the order of ``counts`` (a
        :class:`collections.Counter` filled from text keeps first-occurrence order).

        Args:
            counts: token -> count.
            max_size: the largest number of ids, padding and OOV and ``specials`` included
                (Keras' ``max_tokens``); the least frequent tokens are dropped. ``None``: no limit.
            min_freq: drop tokens seen fewer times than this.
            padding_token: see :class:`Vocabulary`.
            oov_token: see :class:`Vocabulary`.
            specials: extra tokens placed right after padding/OOV, whatever their count.

        Example:
            >>> Vocabulary.from_counts({"b": 2, "a": 2, "c": 5}, padding_token=None).tokens
            ['c', 'b', 'a']
        """
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be a positive int or None; received {max_size!r}")
        if not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be an int >= 1; received {min_freq!r}")
        reserved = {padding_token, oov_token, *specials} - {None}
        ranked = sorted(
            (kv for kv in counts.items() if kv[1] >= min_freq and kv[0] not in reserved),
            key=lambda kv: -kv[1],
        )
        tokens = [*specials, *(tok for tok, _ in ranked)]
        if max_size is not None:
            n_fixed = (padding_token is not None) + (oov_token is not None)
            tokens = tokens[: max(0, max_size - n_fixed)]
        return cls(tokens, padding_token=padding_token, oov_token=oov_token, counts=counts)

    @classmethod
    def from_iterator(cls, token_lists: Iterable[Iterable[str]], **kwargs: object) -> Vocabulary:
        """Count tokens over an iterable of token sequences (streamed) and build a vocabulary.

        Keyword arguments are those of :meth:`from_counts`.

        Example:
            >>> Vocabulary.from_iterator([["a", "b"], ["b"]], padding_token=None).tokens
            ['b', 'a']
        """
        counts: Counter[str] = Counter()
        for toks in token_lists:
            counts.update(toks)
        return cls.from_counts(counts, **kwargs)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- lookup
    def __len__(self) -> int:
        """Number of ids, padding and OOV included: the ``input_dim`` of an embedding."""
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __iter__(self) -> Iterator[str]:
        return iter(self._itos)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (
            self._itos == other._itos
            and self.padding_token == other.padding_token
            and self.oov_token == other.oov_token
        )

    def __repr__(self) -> str:
        return (
            f"Vocabulary(size={len(self)}, padding_token={self.padding_token!r}, "
            f"oov_token={self.oov_token!r})"
        )

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order (a copy)."""
        return list(self._itos)

    @property
    def token_to_id(self) -> dict[str, int]:
        """The token -> id dict (the live mapping; do not modify it)."""
        return self._stoi

    @property
    def num_tokens(self) -> int:
        """Number of ids that stand for text: ``len(self)`` without the padding id."""
        return len(self._itos) - (self.padding_token is not None)

    @property
    def padding_id(self) -> int | None:
        """0 when there is a padding token, else ``None``."""
        return 0 if self.padding_token is not None else None

    @property
    def oov_id(self) -> int | None:
        """Id of the OOV token, or ``None``."""
        return None if self.oov_token is None else self._stoi[self.oov_token]

    def lookup(self, token: str) -> int:
        """Id of ``token``; unknown tokens give the OOV id, or raise ``KeyError`` without one."""
        i = self._stoi.get(token)
        if i is not None:
            return i
        if self.oov_token is None:
            raise KeyError(f"token {token!r} is not in the vocabulary and there is no oov_token")
        return self._stoi[self.oov_token]

    def lookup_token(self, index: int) -> str:
        """Token of id ``index`` (``IndexError`` if out of range)."""
        if not 0 <= index < len(self._itos):
            raise IndexError(f"id {index} out of range for a vocabulary of size {len(self)}")
        return self._itos[index]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens``; unknown ones map to the OOV id (``KeyError`` without one)."""
        stoi = self._stoi
        if self.oov_token is None:
            try:
                return [stoi[t] for t in tokens]
            except KeyError as exc:
                raise KeyError(
                    f"token {exc.args[0]!r} is not in the vocabulary and there is no oov_token"
                ) from None
        oov = stoi[self.oov_token]
        get = stoi.get
        return [get(t, oov) for t in tokens]

    def decode(self, ids: Iterable[int], *, skip_padding: bool = True) -> list[str]:
        """Tokens of ``ids`` (ints, numpy or torch integers); padding ids are dropped by default."""
        itos = self._itos
        pad = self.padding_id
        out = []
        for i in ids:
            i = int(i)
            if skip_padding and i == pad:
                continue
            out.append(itos[i])
        return out

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` rebuilds the same vocabulary."""
        reserved = {self.padding_token, self.oov_token}
        return {
            "format": _VOCAB_FORMAT,
            "padding_token": self.padding_token,
            "oov_token": self.oov_token,
            "tokens": [t for t in self._itos if t not in reserved],
            "counts": self.counts,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_dict` output."""
        if data.get("format") != _VOCAB_FORMAT:
            raise ValueError(
                f"not an rnnkit vocabulary: expected format {_VOCAB_FORMAT!r}, "
                f"received {data.get('format')!r}"
            )
        return cls(
            data["tokens"],
            padding_token=data["padding_token"],
            oov_token=data["oov_token"],
            counts=data.get("counts") or {},
        )

    def to_json(self) -> str:
        """The vocabulary as a JSON string."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON to ``path`` (atomically)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def text_to_word_sequence(
    text: str, filters: str = KERAS_FILTERS, lower: bool = True, split: str = " "
) -> list[str]:
    """Split a text into words as Keras does: lowercase, replace ``filters`` by ``split``, split.

    Example:
        >>> text_to_word_sequence("Hello, World!  It's me.")
        ['hello', 'world', "it's", 'me']
    """
    if lower:
        text = text.lower()
    if filters:
        text = text.translate(_translate_table(filters, split))
    return [w for w in text.split(split) if w]


_TABLES: dict[tuple[str, str], dict[int, str]] = {}


def _translate_table(filters: str, split: str) -> dict[int, str]:
    key = (filters, split)
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = {ord(c): split for c in filters}
    return table


class Tokenizer:
    """Keras' text ``Tokenizer``: fit a word index on texts, turn texts into id sequences.

    Semantics follow ``keras.preprocessing.text.Tokenizer``: ``word_index`` holds every word seen
    (ids from 1, most frequent first, ties by first occurrence); id 0 is reserved for padding;
    ``oov_token`` (if given) gets id 1 and stands for unknown words; ``num_words`` keeps only ids
    below ``num_words`` when converting (the most frequent ``num_words - 1`` words, the OOV token
    included). Without ``oov_token``, unknown words are dropped from sequences, as in Keras.

    Unlike Keras: a word equal to ``oov_token`` in the text maps to the OOV id instead of
    corrupting the index; ``sequences_to_texts`` skips the padding id 0.

    Args:
        num_words: if set, the number of ids kept when converting (``None``: all words).
        filters: characters removed from texts (ignored with ``char_level=True``).
        lower: lowercase texts first.
        split: the word separator.
        char_level: every character is a token.
        oov_token: token for unknown words, or ``None``.

    Example:
        >>> tok = Tokenizer(num_words=4, oov_token="<unk>")
        >>> tok.fit_on_texts(["The cat sat.", "The dog sat on the mat!"])
        >>> tok.word_index["the"], tok.word_index["sat"], tok.word_index["cat"]
        (2, 3, 4)
        >>> tok.texts_to_sequences(["the cat sat on a mat"])
        [[2, 1, 3, 1, 1, 1]]
        >>> tok.sequences_to_texts([[0, 2, 3]])
        ['the sat']
    """

    def __init__(
        self,
        num_words: int | None = None,
        filters: str = KERAS_FILTERS,
        lower: bool = True,
        split: str = " ",
        char_level: bool = False,
        oov_token: str | None = None,
    ) -> None:
        if num_words is not None and (not isinstance(num_words, int) or num_words < 1):
            raise ValueError(f"num_words must be a positive int or None; received {num_words!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string; received split={split!r}")
        self.num_words = num_words
        self.filters = filters
        self.lower = lower
        self.split = split
        self.char_level = char_level
        self.oov_token = oov_token
        self.word_counts: dict[str, int] = {}
        self.word_docs: dict[str, int] = {}
        self.document_count = 0
        self.vocabulary = Vocabulary(padding_token="", oov_token=oov_token)

    # ---------------------------------------------------------------- tokenising
    def tokenize(self, text: str | Sequence[str]) -> list[str]:
        """The tokens of one text (a list of strings is taken as already tokenised)."""
        if not isinstance(text, str):
            return [w.lower() for w in text] if self.lower else list(text)
        if self.char_level:
            return list(text.lower() if self.lower else text)
        return text_to_word_sequence(text, self.filters, self.lower, self.split)

    def fit_on_texts(self, texts: Iterable[str | Sequence[str]]) -> None:
        """Count words in ``texts`` (streamed; may be called repeatedly) and rebuild the index."""
        counts = Counter(self.word_counts)
        docs = Counter(self.word_docs)
        for text in texts:
            toks = self.tokenize(text)
            self.document_count += 1
            counts.update(toks)
            docs.update(set(toks))
        self.word_counts = dict(counts)
        self.word_docs = dict(docs)
        self.vocabulary = Vocabulary.from_counts(counts, padding_token="", oov_token=self.oov_token)

    @property
    def word_index(self) -> dict[str, int]:
        """word -> id (from 1) for every word seen, the OOV token included."""
        return {t: i for i, t in enumerate(self.vocabulary.tokens) if i != 0}

    @property
    def index_word(self) -> dict[int, str]:
        """id -> word, the inverse of :attr:`word_index`."""
        return {i: t for i, t in enumerate(self.vocabulary.tokens) if i != 0}

    def _limit(self) -> int:
        return len(self.vocabulary) if self.num_words is None else self.num_words

    def texts_to_sequences(self, texts: Iterable[str | Sequence[str]]) -> list[list[int]]:
        """Id sequences of ``texts`` (unknown or rare words: OOV id, or dropped without one)."""
        return list(self.texts_to_sequences_generator(texts))

    def texts_to_sequences_generator(
        self, texts: Iterable[str | Sequence[str]]
    ) -> Iterator[list[int]]:
        """Like :meth:`texts_to_sequences`, one sequence at a time (for streams)."""
        stoi = self.vocabulary.token_to_id
        limit = self._limit()
        oov = self.vocabulary.oov_id
        for text in texts:
            seq = []
            for w in self.tokenize(text):
                i = stoi.get(w)
                if i is None or i >= limit:
                    if oov is not None:
                        seq.append(oov)
                else:
                    seq.append(i)
            yield seq

    def sequences_to_texts(self, sequences: Iterable[Iterable[int]]) -> list[str]:
        """Texts of id sequences (words joined by ``split``, or nothing for ``char_level``)."""
        itos = self.vocabulary.tokens
        limit = self._limit()
        oov = self.vocabulary.oov_id
        joiner = "" if self.char_level else self.split
        out = []
        for seq in sequences:
            words = []
            for i in seq:
                i = int(i)
                if i == 0:
                    continue
                if 0 < i < len(itos) and i < limit:
                    words.append(itos[i])
                elif oov is not None:
                    words.append(itos[oov])
            out.append(joiner.join(words))
        return out

    # ---------------------------------------------------------------- persistence
    def get_config(self) -> dict:
        """Constructor arguments, as Keras' ``get_config``."""
        return {
            "num_words": self.num_words,
            "filters": self.filters,
            "lower": self.lower,
            "split": self.split,
            "char_level": self.char_level,
            "oov_token": self.oov_token,
        }

    def to_json(self) -> str:
        """The fitted tokenizer as JSON (config, vocabulary with counts, document counts)."""
        return json.dumps(
            {
                "format": _TOKENIZER_FORMAT,
                "config": self.get_config(),
                "vocabulary": self.vocabulary.to_dict(),
                "word_docs": self.word_docs,
                "document_count": self.document_count,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_json` output.

        Example:
            >>> tok = Tokenizer(oov_token="<unk>")
            >>> tok.fit_on_texts(["a b b"])
            >>> Tokenizer.from_json(tok.to_json()).word_index == tok.word_index
            True
        """
        data = json.loads(text)
        if data.get("format") != _TOKENIZER_FORMAT:
            raise ValueError(
                f"not an rnnkit tokenizer: expected format {_TOKENIZER_FORMAT!r}, "
                f"received {data.get('format')!r}"
            )
        tok = cls(**data["config"])
        tok.vocabulary = Vocabulary.from_dict(data["vocabulary"])
        tok.word_counts = dict(tok.vocabulary.counts)
        tok.word_docs = data.get("word_docs", {})
        tok.document_count = data.get("document_count", 0)
        return tok

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` (atomically)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
