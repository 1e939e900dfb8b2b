"""Random 0/1 masks: zoneout's (one value per unit *and step*) and the cells' dropout keep-masks.

A zoneout mask has ``batch * time * units`` entries, one random draw each: 0.8 M draws for a
batch of 32 x 100 steps x 256 units. torch's CPU generator (Mersenne Twister) takes 1.9 ms for
them, 1 thread, which is 4% of that layer's whole training step. On the CPU, when rnnkit's
compiled kernels are available (:mod:`rnnkit.kernels.cpu_ext`), the mask comes from a
counter-based generator instead (SplitMix64, vectorised, ~0.1 ms): entry ``i`` is a function of
a 62-bit seed and ``i`` only, so the mask does not depend on the thread count. The seed is drawn
from torch's generator (``generator`` or the global one), so ``torch.manual_seed`` makes the masks
reproducible as usual. Elsewhere (other devices, the extension off) the mask is
``torch.rand(...) < p``: the same distribution, different draws. The dropout keep-masks of the
cells (:func:`rnnkit.layers.cells.draw_dropout_mask`) come from here too: torch's ``bernoulli_``
takes 2.04 ms for a ``(256, 1024)`` DropConnect mask, this 0.06 ms.
"""

from __future__ import annotations

import torch

from rnnkit.kernels import cpu_ext

_SEED_BOUND = 2**62


@torch.compiler.disable  # (a compiled op without a fake-tensor kernel; see dispatch.run)
def bernoulli_mask(
    shape: tuple[int, ...],
    p: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A contiguous tensor of ``shape`` with entries 1 with probability ``p``, else 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1]; received {p!r}")
    out = torch.empty(shape, device=device, dtype=dtype)
    ops = None
    if out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64):
        ops = cpu_ext.ops()
    if ops is None:
        draws = torch.rand(shape, device=out.device, generator=generator)
        return (draws < p).to(out.dtype)
    seed = int(torch.randint(_SEED_BOUND, (), generator=generator))
    ops.bernoulli_mask_(out, float(p), seed)
    return out
