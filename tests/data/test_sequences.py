"""pad_sequences against a direct reference, for every padding/truncating combination."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.data.sequences import pad_sequences


def reference(seqs, maxlen, padding, truncating, value):
    if maxlen is None:
        maxlen = max((len(s) for s in seqs), default=0)
    rows = []
    for s in seqs:
        s = list(s)
        if len(s) > maxlen:
            s = s[len(s) - maxlen :] if truncating == "pre" else s[:maxlen]
        pad = [value] * (maxlen - len(s))
        rows.append(pad + s if padding == "pre" else s + pad)
    return rows, maxlen


@settings(max_examples=200, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(1, 99), max_size=8), max_size=6),
    maxlen=st.one_of(st.none(), st.integers(0, 10)),
    padding=st.sampled_from(["pre", "post"]),
    truncating=st.sampled_from(["pre", "post"]),
    value=st.integers(-3, 0),
)
def test_pad_sequences_matches_reference(seqs, maxlen, padding, truncating, value):
    out = pad_sequences(seqs, maxlen=maxlen, padding=padding, truncating=truncating, value=value)
    rows, n = reference(seqs, maxlen, padding, truncating, value)
    assert out.shape == (len(seqs), n)
    assert out.dtype == np.int64
    assert out.tolist() == rows
    # Invariant: the kept values are a contiguous piece of each sequence, in order.
    for s, row in zip(seqs, out.tolist(), strict=True):
        kept = [v for v in row if v >= 1]
        assert len(kept) == min(len(s), n)


def test_pad_sequences_keras_examples():
    seqs = [[1], [2, 3], [4, 5, 6]]
    assert pad_sequences(seqs).tolist() == [[0, 0, 1], [0, 2, 3], [4, 5, 6]]
    assert pad_sequences(seqs, value=-1).tolist() == [[-1, -1, 1], [-1, 2, 3], [4, 5, 6]]
    assert pad_sequences(seqs, padding="post").tolist() == [[1, 0, 0], [2, 3, 0], [4, 5, 6]]
    assert pad_sequences(seqs, maxlen=2).tolist() == [[0, 1], [2, 3], [5, 6]]


def test_pad_sequences_accepts_arrays_tensors_and_dtype():
    out = pad_sequences([np.array([1, 2]), torch.tensor([3])], dtype="int32", padding="post")
    assert out.dtype == np.int32 and out.tolist() == [[1, 2], [3, 0]]
    assert pad_sequences([], maxlen=3).shape == (0, 3)
    assert pad_sequences([[], []]).shape == (2, 0)


def test_pad_sequences_errors():
    with pytest.raises(ValueError, match='padding must be "pre" or "post"; received'):
        pad_sequences([[1]], padding="middle")
    with pytest.raises(ValueError, match="truncating must be"):
        pad_sequences([[1]], truncating="both")
    with pytest.raises(ValueError, match="maxlen must be a non-negative int"):
        pad_sequences([[1]], maxlen=-1)
    with pytest.raises(TypeError, match="list of sequences"):
        pad_sequences([1, 2])
    with pytest.raises(ValueError, match="must be 1-D"):
        pad_sequences([[[1, 2]]])
