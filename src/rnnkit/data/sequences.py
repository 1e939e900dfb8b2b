"""``pad_sequences``: variable-length id sequences to one rectangular array (Keras semantics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pad_sequences"]

_SIDES = ("pre", "post")


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    maxlen: int | None = None,
    dtype: str | np.dtype = "int64",
    padding: str = "pre",
    truncating: str = "pre",
    value: float = 0,
) -> np.ndarray:
    """Pad (and truncate) sequences to the same length, as ``keras.utils.pad_sequences``.

    Args:
        sequences: a list of sequences (lists, tuples, 1-D arrays or tensors) of numbers.
        maxlen: the output length; ``None`` means the longest sequence.
        dtype: output dtype. ``int64`` by default (what ``torch`` indexing and losses want;
            Keras' default is ``int32``).
        padding: ``"pre"`` pads at the start, ``"post"`` at the end.
        truncating: ``"pre"`` drops values from the start of longer sequences, ``"post"`` from
            the end.
        value: the padding value (0 is rnnkit's padding id).

    Returns:
        An array of shape ``(len(sequences), maxlen)``.

    Example:
        >>> pad_sequences([[1, 2, 3], [4]], maxlen=2)
        array([[2, 3],
               [0, 4]])
        >>> pad_sequences([[1, 2, 3], [4]], padding="post", truncating="post", maxlen=2)
        array([[1, 2],
               [4, 0]])
        >>> pad_sequences([[1, 2, 3], [4]])
        array([[1, 2, 3],
               [0, 0, 4]])
    """
    if padding not in _SIDES:
        raise ValueError(f'padding must be "pre" or "post"; received padding={padding!r}')
    if truncating not in _SIDES:
        raise ValueError(f'truncating must be "pre" or "post"; received truncating={truncating!r}')
    if maxlen is not None and (
        isinstance(maxlen, bool) or not isinstance(maxlen, int | np.integer) or maxlen < 0
    ):
        raise ValueError(f"maxlen must be a non-negative int or None; received maxlen={maxlen!r}")
    try:
        lengths = [len(s) for s in sequences]
    except TypeError:
        raise TypeError(
            "sequences must be a list of sequences (each with a length); "
            f"received {type(sequences).__name__}"
        ) from None
    if maxlen is None:
        maxlen = max(lengths, default=0)
    maxlen = int(maxlen)
    out = np.full((len(lengths), maxlen), value, dtype=dtype)
    if maxlen == 0:
        return out
    for row, (seq, n) in enumerate(zip(sequences, lengths, strict=True)):
        if n == 0:
            continue
        arr = np.asarray(seq)
        if arr.ndim != 1:
            raise ValueError(f"sequence {row} must be 1-D; received shape {tuple(arr.shape)}")
        if n > maxlen:
            arr = arr[-maxlen:] if truncating == "pre" else arr[:maxlen]
            n = maxlen
        if padding == "post":
            out[row, :n] = arr
        else:
            out[row, maxlen - n :] = arr
    return out
