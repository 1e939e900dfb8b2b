"""Bernoulli masks (kernels/masks.py): distribution, reproducibility, fallback."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.kernels import cpu_ext, masks


@pytest.fixture
def compiled():
    if cpu_ext.ops() is None:
        pytest.skip(f"the CPU extension could not be built here: {cpu_ext.build_error()}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_entries_are_0_or_1_with_probability_p(p, dtype, compiled):
    torch.manual_seed(0)
    n = 200_001  # odd: the last element has no partner in its 64-bit draw
    m = masks.bernoulli_mask((n,), p, dtype=dtype)
    assert m.dtype == dtype and m.shape == (n,) and m.is_contiguous()
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(m.mean().item() - p) <= 5 * sd + 1e-12
    if 0 < p < 1:
        assert 0 < m[-1000:].sum() < 1000  # the tail (and the odd last element) is drawn too


def test_neighbouring_entries_are_uncorrelated(compiled):
    torch.manual_seed(1)
    m = masks.bernoulli_mask((32, 100, 256), 0.5).flatten().double()
    z = (m - m.mean()) / m.std()
    n = z.numel()
    for lag in (1, 2, 256):  # 1: the two halves of one 64-bit draw; 256: the next row
        assert abs((z[:-lag] * z[lag:]).mean().item()) < 5 / math.sqrt(n)


def test_reproducible_under_manual_seed_and_generator(compiled):
    torch.manual_seed(5)
    a = masks.bernoulli_mask((7, 9), 0.3)
    torch.manual_seed(5)
    b = masks.bernoulli_mask((7, 9), 0.3)
    c = masks.bernoulli_mask((7, 9), 0.3)  # the global generator moved on
    assert torch.equal(a, b) and not torch.equal(b, c)
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    assert torch.equal(
        masks.bernoulli_mask((50, 50), 0.4, generator=g1),
        masks.bernoulli_mask((50, 50), 0.4, generator=g2),
    )


def test_mask_does_not_depend_on_the_thread_count(compiled):
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(3)
            out.append(masks.bernoulli_mask((400_000,), 0.2))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1])


def test_without_the_extension_it_uses_torch_rand(monkeypatch):
    monkeypatch.setattr(cpu_ext, "ops", lambda: None)
    torch.manual_seed(2)
    m = masks.bernoulli_mask((4, 5), 0.25, dtype=torch.float64)
    torch.manual_seed(2)
    expected = (torch.rand(4, 5) < 0.25).double()
    assert torch.equal(m, expected)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_rejects_a_probability_outside_0_1(p):
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]; received"):
        masks.bernoulli_mask((3,), p)
