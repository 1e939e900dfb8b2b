"""Tests of rnnkit.data.batching: BPTT streams, padded LM batches, bucketed classification."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from rnnkit.data.batching import (
    IGNORE_INDEX,
    BPTTBatches,
    BucketBatchSampler,
    ClassificationCollate,
    ClassificationDataset,
    LMCollate,
    batch_producer,
    lm_batch,
    pad_batch,
    padding_fraction,
)

# ---------------------------------------------------------------------------------------------
# batch_producer


def test_batch_producer_hand_worked_example():
    # range(20), batch 3, steps 2: rows [0..5], [6..11], [12..17]; 18, 19 dropped; 2 windows.
    batches = batch_producer(range(20), 3, 2)
    assert isinstance(batches, BPTTBatches)
    assert batches.batch_len == 6 and batches.epoch_size == 2 == len(batches)
    assert batches.data.tolist() == [
        [0, 1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10, 11],
        [12, 13, 14, 15, 16, 17],
    ]
    got = [(x.tolist(), y.tolist()) for x, y in batches]
    assert got == [
        ([[0, 1], [6, 7], [12, 13]], [[1, 2], [7, 8], [13, 14]]),
        ([[2, 3], [8, 9], [14, 15]], [[3, 4], [9, 10], [15, 16]]),
    ]
    for x, y in batches:
        assert x.dtype == y.dtype == torch.long


def test_batch_producer_partial_last_window_and_time_major():
    got = [(x.tolist(), y.tolist()) for x, y in batch_producer(range(20), 3, 2, drop_last=False)]
    assert got[-1] == ([[4], [10], [16]], [[5], [11], [17]])
    assert len(got) == 3
    x, y = next(iter(batch_producer(range(20), 3, 2, time_major=True)))
    assert x.tolist() == [[0, 6, 12], [1, 7, 13]] and y.tolist() == [[1, 7, 13], [2, 8, 14]]
    on_device = batch_producer(range(20), 3, 2, cover_all=True, device="cpu")
    assert on_device.num_targets == 19 and len(on_device) == 4


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), batch_size=st.integers(1, 9), num_steps=st.integers(1, 12))
def test_epoch_size_formula_and_shift(n, batch_size, num_steps):
    expected = ((n // batch_size) - 1) // num_steps
    data = torch.arange(n) * 7 + 3
    if expected <= 0:
        with pytest.raises(ValueError, match="no window fits"):
            batch_producer(data, batch_size, num_steps)
        return
    batches = batch_producer(data, batch_size, num_steps)
    assert batches.epoch_size == expected == len(list(batches))
    batch_len = n // batch_size
    for i, (x, y) in enumerate(batches):
        assert x.shape == y.shape == (batch_size, num_steps)
        for b in range(batch_size):
            start = b * batch_len + i * num_steps
            assert x[b].tolist() == data[start : start + num_steps].tolist()
            assert y[b].tolist() == data[start + 1 : start + num_steps + 1].tolist()
    assert batches.num_targets == batch_size * expected * num_steps


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), batch_size=st.integers(1, 9), num_steps=st.integers(1, 12))
def test_drop_last_false_predicts_every_column_once(n, batch_size, num_steps):
    if n // batch_size < 2:
        return
    batches = batch_producer(range(n), batch_size, num_steps, drop_last=False)
    ys = torch.cat([y for _, y in batches], dim=1)
    batch_len = n // batch_size
    assert ys.tolist() == batches.data[:, 1:].tolist()
    assert batches.num_targets == batch_size * (batch_len - 1)
    # The cut drops fewer than batch_size tokens.
    assert n - batch_size * batch_len < batch_size


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(2, 300),
    batch_size=st.integers(1, 9),
    num_steps=st.integers(1, 12),
    world_size=st.integers(1, 3),
)
def test_cover_all_predicts_every_token_but_the_first_exactly_once(
    n, batch_size, num_steps, world_size
):
    data = torch.arange(n) + 1  # no id equals the input padding 0
    targets, count = [], 0
    for rank in range(world_size):
        batches = batch_producer(
            data, batch_size, num_steps, cover_all=True, rank=rank, world_size=world_size
        )
        for x, y in batches:
            real = y != IGNORE_INDEX
            targets += y[real].tolist()
            # each real target's input is the token just before it in the stream
            assert (x[real] == y[real] - 1).all()
            # past the end: input padding 0, or the last token whose target is past the end
            assert ((x[~real] == 0) | (x[~real] == n)).all()
        count += batches.num_targets
    assert sorted(targets) == list(range(2, n + 1))
    assert count == n - 1


def test_cover_all_with_batch_size_one_is_the_sequential_pass():
    batches = batch_producer(range(10), 1, 4, cover_all=True)
    got = [(x.tolist(), y.tolist()) for x, y in batches]
    assert got == [
        ([[0, 1, 2, 3]], [[1, 2, 3, 4]]),
        ([[4, 5, 6, 7]], [[5, 6, 7, 8]]),
        ([[8]], [[9]]),
    ]


def test_cover_all_loss_gives_exact_mean_over_tokens():
    # Summing cross-entropy (ignore_index=-100) over windows and dividing by num_targets equals
    # the mean over the whole stream computed in one piece.
    torch.manual_seed(0)
    vocab, n = 11, 103
    data = torch.randint(0, vocab, (n,))
    table = torch.randn(vocab, vocab)  # a bigram "model": logits of next given current
    full = torch.nn.functional.cross_entropy(table[data[:-1]], data[1:], reduction="mean")
    batches = batch_producer(data, 4, 5, cover_all=True)
    total = sum(
        torch.nn.functional.cross_entropy(
            table[x].reshape(-1, vocab), y.reshape(-1), reduction="sum"
        )
        for x, y in batches
    )
    torch.testing.assert_close(total / batches.num_targets, full)


def test_variable_length_windows_cover_the_stream_and_are_seeded():
    n, bs, bptt = 5000, 4, 35
    batches = batch_producer(range(n), bs, bptt, variable_length=True, drop_last=False, seed=3)
    lengths = batches.window_lengths()
    assert sum(lengths) == n // bs - 1
    assert min(lengths[:-1]) >= 5
    assert 20 < np.mean(lengths[:-1]) < bptt + 2
    ys = torch.cat([y for _, y in batches], dim=1)
    assert ys.tolist() == batches.data[:, 1:].tolist()
    # the half-length draws appear (p = 0.05)
    assert any(length < bptt / 2 + 10 for length in lengths[:-1])
    # reproducible per (seed, epoch), different across epochs and seeds
    again = batch_producer(range(n), bs, bptt, variable_length=True, drop_last=False, seed=3)
    assert again.window_lengths() == lengths
    again.set_epoch(1)
    assert again.window_lengths() != lengths
    other = batch_producer(range(n), bs, bptt, variable_length=True, drop_last=False, seed=4)
    assert other.window_lengths() != lengths
    dropped = batch_producer(range(n), bs, bptt, variable_length=True, seed=3)
    assert dropped.window_lengths() == lengths[:-1] or dropped.window_lengths() == lengths


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 400),
    batch_size=st.integers(1, 5),
    world_size=st.integers(1, 4),
    num_steps=st.integers(1, 4),
)
def test_sharding_is_disjoint_contiguous_and_aligned(n, batch_size, world_size, num_steps):
    rows = batch_size * world_size
    if (n // rows - 1) // num_steps == 0:
        return
    shards = [
        batch_producer(range(n), batch_size, num_steps, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    stacked = torch.cat([s.data for s in shards])  # (rows, batch_len)
    batch_len = n // rows
    assert stacked.flatten().tolist() == list(range(rows * batch_len))  # disjoint, in order
    for r, shard in enumerate(shards):
        flat = shard.data.flatten().tolist()
        start = r * batch_size * batch_len
        assert flat == list(range(start, start + batch_size * batch_len))  # one contiguous piece
    single = batch_producer(range(n), rows, num_steps)
    for windows in zip(single, *shards, strict=True):
        x_all = windows[0][0]
        assert torch.equal(torch.cat([w[0] for w in windows[1:]]), x_all)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer; received batch_size=0"),
        ({"num_steps": -1}, "num_steps must be a positive integer"),
        ({"rank": 2, "world_size": 2}, r"rank must be an integer in \[0, world_size=2\)"),
        ({"cover_all": True, "drop_last": True}, "cover_all=True"),
        ({"p_full": 1.5}, r"p_full must be in \[0, 1\]"),
        ({"batch_size": 50}, "no window fits"),
    ],
)
def test_batch_producer_errors(kwargs, match):
    args = {"batch_size": 2, "num_steps": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        BPTTBatches(range(60), **args)


def test_batch_producer_rejects_bad_data():
    with pytest.raises(ValueError, match="1-D"):
        batch_producer(np.zeros((3, 4), dtype=np.int64), 1, 1)
    with pytest.raises(TypeError, match="integer token ids"):
        batch_producer(np.linspace(0, 1, 30), 1, 1)


# ---------------------------------------------------------------------------------------------
# Padded batches


def test_lm_batch_shifts_pads_and_truncates():
    batch = lm_batch([[1, 5, 6, 2], [1, 7, 2], [1]], max_length=4)
    assert batch.inputs.tolist() == [[1, 5, 6], [1, 7, 0], [0, 0, 0]]
    assert batch.targets.tolist() == [[5, 6, 2], [7, 2, 0], [0, 0, 0]]
    assert batch.lengths.tolist() == [3, 2, 0]
    cut = lm_batch([[1, 2, 3, 4, 5]], max_length=3)
    assert cut.inputs.tolist() == [[1, 2]] and cut.targets.tolist() == [[2, 3]]
    cut = lm_batch([[1, 2, 3, 4, 5]], max_length=3, truncating="pre")
    assert cut.inputs.tolist() == [[3, 4]] and cut.targets.tolist() == [[4, 5]]
    ignore = lm_batch([[1, 2, 3], [4, 5]], target_value=IGNORE_INDEX)
    assert ignore.targets.tolist() == [[2, 3], [5, IGNORE_INDEX]]


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(1, 50), min_size=0, max_size=12), min_size=1, max_size=6),
    padding=st.sampled_from(["pre", "post"]),
    truncating=st.sampled_from(["pre", "post"]),
    max_length=st.one_of(st.none(), st.integers(0, 14)),
)
def test_pad_batch_properties(seqs, padding, truncating, max_length):
    ids, lengths = pad_batch(seqs, max_length=max_length, padding=padding, truncating=truncating)
    width = max_length if max_length is not None else max(len(s) for s in seqs)
    assert ids.shape == (len(seqs), width)
    for row, length, seq in zip(ids.tolist(), lengths.tolist(), seqs, strict=True):
        kept = (
            seq
            if max_length is None
            else (
                seq[:max_length]
                if truncating == "post"
                else seq[len(seq) - min(len(seq), max_length) :]
            )
        )
        assert length == len(kept)
        valid = row[:length] if padding == "post" else row[width - length :]
        pad = row[length:] if padding == "post" else row[: width - length]
        assert valid == kept and all(v == 0 for v in pad)


def test_lm_collate_in_a_dataloader():
    seqs = [[1, 3, 4, 2], [1, 5, 2], [1, 6, 7, 8, 2]]
    loader = DataLoader(seqs, batch_size=3, collate_fn=LMCollate())
    (batch,) = list(loader)
    assert batch.inputs.shape == batch.targets.shape == (3, 4)
    assert batch.lengths.tolist() == [3, 2, 4]


# ---------------------------------------------------------------------------------------------
# Classification batching


def _lognormal_lengths(n, seed=0):
    # IMDB-like review lengths: median ~175 tokens, long right tail.
    rng = np.random.default_rng(seed)
    return np.maximum(1, rng.lognormal(mean=5.2, sigma=0.75, size=n).astype(int)).tolist()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 200),
    batch_size=st.integers(1, 17),
    bucket_batches=st.integers(1, 6),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_bucket_sampler_every_index_once(n, batch_size, bucket_batches, shuffle, drop_last, epoch):
    lengths = np.random.default_rng(n).integers(1, 50, size=n).tolist()
    sampler = BucketBatchSampler(
        lengths, batch_size, bucket_batches=bucket_batches, shuffle=shuffle, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    if drop_last:
        assert all(len(b) == batch_size for b in batches)
        assert len(flat) == n - n % batch_size
    else:
        assert sorted(flat) == list(range(n))
        assert sum(len(b) < batch_size for b in batches) <= 1


def test_bucket_sampler_is_seeded_and_changes_with_epoch():
    lengths = _lognormal_lengths(500)
    a, b = BucketBatchSampler(lengths, 16, seed=1), BucketBatchSampler(lengths, 16, seed=1)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(a) != list(BucketBatchSampler(lengths, 16, seed=2))
    fixed = BucketBatchSampler([3, 1, 2, 5], 2, shuffle=False)
    assert list(fixed) == [[1, 2], [0, 3]]


def test_bucketing_padding_fraction_is_small_on_lognormal_lengths():
    lengths = _lognormal_lengths(5000)
    random_batches = BucketBatchSampler(lengths, 32, bucket_batches=1, seed=0)
    bucketed = BucketBatchSampler(lengths, 32, seed=0)  # default buckets of 50 batches
    waste_random = padding_fraction(random_batches, lengths)
    waste_bucketed = padding_fraction(bucketed, lengths)
    assert waste_random > 0.6  # heavy tail: a batch is padded to a rare long review
    assert waste_bucketed < 0.12
    few = padding_fraction(BucketBatchSampler(lengths, 32, bucket_batches=8, seed=0), lengths)
    assert waste_bucketed < few < waste_random


IMDB_TAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "imdb" / "aclImdb_train.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not IMDB_TAR.exists(), reason=f"shared IMDB archive absent: {IMDB_TAR}")
def test_bucketing_padding_fraction_on_real_imdb_lengths():
    # Whitespace token counts of the 25,000 training reviews (mean 234, max 2470), read
    # straight from the archive; a real tokenizer changes them by a few percent.
    lengths = []
    with tarfile.open(IMDB_TAR) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".txt") and "/train/" in member.name:
                if "/pos/" in member.name or "/neg/" in member.name:
                    lengths.append(len(tar.extractfile(member).read().split()))
    assert len(lengths) == 25000
    waste_random = padding_fraction(BucketBatchSampler(lengths, 32, bucket_batches=1), lengths)
    waste_bucketed = padding_fraction(BucketBatchSampler(lengths, 32), lengths)
    assert waste_random > 0.6  # measured 0.70
    assert waste_bucketed < 0.10  # measured 0.07


def test_padding_fraction_edge_cases():
    assert padding_fraction([], []) == 0.0
    assert padding_fraction([[0, 1]], [3, 3]) == 0.0
    assert padding_fraction([[0, 1]], [1, 3]) == pytest.approx(2 / 6)


def test_classification_pipeline_with_dataloader():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 100, size=int(length)).tolist() for length in rng.integers(1, 30, 50)]
    labels = rng.integers(0, 2, 50).tolist()
    ds = ClassificationDataset(seqs, labels)
    sampler = BucketBatchSampler(ds.lengths, 8, bucket_batches=2)
    for padding in ("post", "pre"):
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=ClassificationCollate(padding))
        seen = []
        for (ids, lengths, ys), idx in zip(loader, sampler, strict=True):
            assert ids.dtype == torch.long and ys.dtype == torch.long
            assert ids.shape == (len(idx), max(ds.lengths[i] for i in idx))
            assert lengths.tolist() == [ds.lengths[i] for i in idx]
            assert ys.tolist() == [labels[i] for i in idx]
            for row, i in zip(ids.tolist(), idx, strict=True):
                n = ds.lengths[i]
                valid = row[:n] if padding == "post" else row[len(row) - n :]
                assert valid == seqs[i]
            seen += idx
        assert sorted(seen) == list(range(50))


def test_classification_collate_truncates_and_keeps_float_labels():
    collate = ClassificationCollate(max_length=2, truncating="pre")
    ids, lengths, ys = collate(
        [(torch.tensor([1, 2, 3]), torch.tensor(0.5)), (torch.tensor([4]), torch.tensor(1.0))]
    )
    assert ids.tolist() == [[2, 3], [4, 0]] and lengths.tolist() == [2, 1]
    assert ys.dtype == torch.float32


def test_classification_errors():
    with pytest.raises(ValueError, match="same length"):
        ClassificationDataset([[1]], [0, 1])
    with pytest.raises(
        ValueError, match="padding must be 'pre' or 'post'; received padding='left'"
    ):
        ClassificationCollate("left")
    with pytest.raises(ValueError, match="bucket_batches must be a positive integer"):
        BucketBatchSampler([1, 2], 2, bucket_batches=0)
