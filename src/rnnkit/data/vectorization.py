"""``TextVectorization``: raw strings -> padded id tensors for classification (seed 002).

It follows ``keras.layers.TextVectorization`` with ``output_mode="int"``: standardise, split on
whitespace, look up in a :class:`~rnnkit.data.vocabulary.Vocabulary` built by :meth:`adapt`
(id 0 ``""`` for padding, id 1 ``"[UNK]"`` for unknown words, then words by frequency), and pad
or truncate to ``output_sequence_length``.

One difference on purpose: the default standardisation also removes HTML tags (IMDB reviews
contain ``<br />``) *before* stripping punctuation, so ``<br />`` does not leave a ``br`` word
behind as it does in Keras.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .classification import LabelMap
from .sequences import pad_sequences
from .vocabulary import Vocabulary, atomic_write_text

__all__ = ["TextVectorization", "standardize_text"]

_FORMAT = "rnnkit.text_vectorization/1"
_HTML_TAG = re.compile(r"<[^>]*>")
# Keras' DEFAULT_STRIP_REGEX: ASCII punctuation.
_PUNCT_TABLE = {ord(c): None for c in "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'"}

STANDARDIZE_MODES = (
    "lower_and_strip_punctuation",
    "lower",
    "strip_punctuation",
    "html_lower_and_strip_punctuation",
)


def standardize_text(text: str, mode: str = "html_lower_and_strip_punctuation") -> str:
    """Standardise one text.

    Args:
        text: the input string.
        mode: one of ``"html_lower_and_strip_punctuation"`` (HTML tags -> space, lowercase,
            remove ASCII punctuation; the default), ``"lower_and_strip_punctuation"`` (Keras'
            default), ``"lower"``, ``"strip_punctuation"``.

    Example:
        >>> standardize_text("Great film!<br /><br />Loved it, 10/10.")
        'great film  loved it 1010'
        >>> standardize_text("Great film!<br />", "lower_and_strip_punctuation")
        'great filmbr '
    """
    if mode not in STANDARDIZE_MODES:
        raise ValueError(f"standardize must be one of {STANDARDIZE_MODES}; received {mode!r}")
    if mode.startswith("html_"):
        text = _HTML_TAG.sub(" ", text)
    if "lower" in mode:
        text = text.lower()
    if mode.endswith("strip_punctuation"):
        text = text.translate(_PUNCT_TABLE)
    return text


class TextVectorization:
    """Turn raw strings into padded id tensors, with a vocabulary learned by :meth:`adapt`.

    Args:
        max_tokens: the largest vocabulary size, padding and OOV ids included (Keras'
            meaning); ``None`` keeps every word.
        standardize: a mode of :func:`standardize_text`, a callable ``str -> str``, or ``None``.
        split: ``"whitespace"``, a callable ``str -> list[str]``, or ``None`` (the whole text is
            one token).
        output_sequence_length: pad/truncate every output to this length; ``None`` pads each
            batch to its longest text.
        padding: ``"post"`` (Keras' behaviour) or ``"pre"``.
        truncating: ``"post"`` (Keras' behaviour) or ``"pre"``.
        min_freq: drop words seen fewer times than this in :meth:`adapt`.
        oov_token: token of id 1.
        vocabulary: a ready :class:`Vocabulary` or a list of words (skips :meth:`adapt`).
        labels: an optional :class:`~rnnkit.data.classification.LabelMap` saved alongside.

    Example:
        >>> vec = TextVectorization(max_tokens=6, output_sequence_length=4)
        >>> vec.adapt(["The movie was great.<br />Great!", "the plot was thin"])
        >>> vec.get_vocabulary()
        ['', '[UNK]', 'the', 'was', 'great', 'movie']
        >>> vec(["A great movie", "the the the the the"]).tolist()
        [[1, 4, 5, 0], [2, 2, 2, 2]]
    """

    def __init__(
        self,
        max_tokens: int | None = None,
        standardize: str | Callable[[str], str] | None = "html_lower_and_strip_punctuation",
        split: str | Callable[[str], list[str]] | None = "whitespace",
        output_sequence_length: int | None = None,
        padding: str = "post",
        truncating: str = "post",
        min_freq: int = 1,
        oov_token: str = "[UNK]",
        vocabulary: Vocabulary | Iterable[str] | None = None,
        labels: LabelMap | None = None,
    ) -> None:
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 3):
            raise ValueError(
                "max_tokens must be an int >= 3 (padding, OOV and one word) or None; "
                f"received max_tokens={max_tokens!r}"
            )
        if isinstance(standardize, str) and standardize not in STANDARDIZE_MODES:
            raise ValueError(
                f"standardize must be one of {STANDARDIZE_MODES}, a callable or None; "
                f"received standardize={standardize!r}"
            )
        if isinstance(split, str) and split != "whitespace":
            raise ValueError(
                f'split must be "whitespace", a callable or None; received split={split!r}'
            )
        if output_sequence_length is not None and (
            not isinstance(output_sequence_length, int) or output_sequence_length < 1
        ):
            raise ValueError(
                "output_sequence_length must be a positive int or None; "
                f"received output_sequence_length={output_sequence_length!r}"
            )
        for name, side in (("padding", padding), ("truncating", truncating)):
            if side not in ("pre", "post"):
                raise ValueError(f'{name} must be "pre" or "post"; received {name}={side!r}')
        self.max_tokens = max_tokens
        self.standardize = standardize
        self.split = split
        self.output_sequence_length = output_sequence_length
        self.padding = padding
        self.truncating = truncating
        self.min_freq = min_freq
        self.oov_token = oov_token
        self.labels = labels
        self.vocabulary: Vocabulary | None = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    # ---------------------------------------------------------------- text -> tokens
    def tokenize(self, text: str) -> list[str]:
        """Standardise and split one text."""
        if callable(self.standardize):
            text = self.standardize(text)
        elif self.standardize is not None:
            text = standardize_text(text, self.standardize)
        if self.split is None:
            return [text]
        if callable(self.split):
            return list(self.split(text))
        return text.split()

    def adapt(self, texts: Iterable[str]) -> None:
        """Learn the vocabulary from ``texts`` (any iterable of strings; streamed)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(self.tokenize(text))
        self.vocabulary = Vocabulary.from_counts(
            counts,
            max_size=self.max_tokens,
            min_freq=self.min_freq,
            padding_token="",
            oov_token=self.oov_token,
        )

    def set_vocabulary(self, vocabulary: Vocabulary | Iterable[str]) -> None:
        """Use a given vocabulary (a :class:`Vocabulary`, or words in id order after ``""``/OOV)."""
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary(vocabulary, padding_token="", oov_token=self.oov_token)
        if vocabulary.padding_id != 0 or vocabulary.oov_id is None:
            raise ValueError(
                "TextVectorization needs a vocabulary with a padding token (id 0) and an "
                f"oov_token; received {vocabulary!r}"
            )
        self.vocabulary = vocabulary

    def _vocab(self) -> Vocabulary:
        if self.vocabulary is None:
            raise RuntimeError("TextVectorization has no vocabulary: call adapt(texts) first")
        return self.vocabulary

    def get_vocabulary(self) -> list[str]:
        """All tokens in id order (``""`` then the OOV token then words)."""
        return self._vocab().tokens

    def vocabulary_size(self) -> int:
        """Number of ids: the ``input_dim`` of the embedding that follows."""
        return len(self._vocab())

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Ids of one text, unpadded and untruncated."""
        return self._vocab().encode(self.tokenize(text))

    def __call__(self, texts: str | Iterable[str]) -> torch.Tensor:
        """Encode a batch of texts to an int64 tensor ``(batch, length)``.

        A single string gives a 1-D tensor ``(length,)``.
        """
        if isinstance(texts, str):
            return self([texts])[0]
        seqs = [self.encode(t) for t in texts]
        arr = pad_sequences(
            seqs,
            maxlen=self.output_sequence_length,
            padding=self.padding,
            truncating=self.truncating,
        )
        return torch.from_numpy(arr)

    # ---------------------------------------------------------------- persistence
    def get_config(self) -> dict:
        """Constructor arguments (callables cannot be saved)."""
        for name in ("standardize", "split"):
            if callable(getattr(self, name)):
                raise ValueError(f"cannot save a TextVectorization with a callable {name}")
        return {
            "max_tokens": self.max_tokens,
            "standardize": self.standardize,
            "split": self.split,
            "output_sequence_length": self.output_sequence_length,
            "padding": self.padding,
            "truncating": self.truncating,
            "min_freq": self.min_freq,
            "oov_token": self.oov_token,
        }

    def to_json(self) -> str:
        """Config, vocabulary and label map as JSON."""
        return json.dumps(
            {
                "format": _FORMAT,
                "config": self.get_config(),
                "vocabulary": None if self.vocabulary is None else self.vocabulary.to_dict(),
                "labels": None if self.labels is None else self.labels.to_dict(),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> TextVectorization:
        """Rebuild from :meth:`to_json` output."""
        data = json.loads(text)
        if data.get("format") != _FORMAT:
            raise ValueError(
                f"not an rnnkit TextVectorization: expected format {_FORMAT!r}, "
                f"received {data.get('format')!r}"
            )
        vec = cls(**data["config"])
        if data.get("vocabulary") is not None:
            vec.vocabulary = Vocabulary.from_dict(data["vocabulary"])
        if data.get("labels") is not None:
            vec.labels = LabelMap.from_dict(data["labels"])
        return vec

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` (atomically)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextVectorization:
        """Read a file written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
