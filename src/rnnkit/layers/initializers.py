"""Keras initialisers for Keras-layout weights, by name.

Keras kernels are ``(fan_in, fan_out)`` (the transpose of ``torch.nn.Linear.weight``), so the fan
computation differs from ``torch.nn.init``'s; these functions use Keras' convention.

>>> w = torch.empty(4, 8)
>>> _ = glorot_uniform_(w)
>>> bool(w.abs().max() <= (6 / (4 + 8)) ** 0.5)
True
>>> b = unit_forget_bias_(torch.empty(8))  # LSTM, units=2: gates i, f, c, o
>>> b
tensor([0., 0., 1., 1., 0., 0., 0., 0.])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Initializer = Callable[[torch.Tensor], torch.Tensor]


def _fans(tensor: torch.Tensor) -> tuple[int, int]:
    if tensor.dim() < 2:
        return tensor.numel(), tensor.numel()
    receptive = math.prod(tensor.shape[:-2])
    return tensor.shape[-2] * receptive, tensor.shape[-1] * receptive


@torch.no_grad()
def glorot_uniform_(tensor: torch.Tensor) -> torch.Tensor:
    """Uniform in ``[-l, l]`` with ``l = sqrt(6 / (fan_in + fan_out))``, Keras fans."""
    fan_in, fan_out = _fans(tensor)
    limit = math.sqrt(6.0 / max(1, fan_in + fan_out))
    return tensor.uniform_(-limit, limit)


@torch.no_grad()
def glorot_normal_(tensor: torch.Tensor) -> torch.Tensor:
    """Truncated normal, ``std = sqrt(2 / (fan_in + fan_out))`` (Keras)."""
    fan_in, fan_out = _fans(tensor)
    std = math.sqrt(2.0 / max(1, fan_in + fan_out)) / 0.87962566103423978
    return torch.nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std)


@torch.no_grad()
def orthogonal_(tensor: torch.Tensor) -> torch.Tensor:
    """Orthogonal matrix (rows or columns orthonormal, whichever fits), as Keras ``orthogonal``.

    Computed in float32 for half-precision tensors (torch has no QR for them)."""
    if tensor.dtype in (torch.bfloat16, torch.float16):
        wide = torch.empty_like(tensor, dtype=torch.float32)
        return tensor.copy_(torch.nn.init.orthogonal_(wide))
    return torch.nn.init.orthogonal_(tensor)


@torch.no_grad()
def zeros_(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.zero_()


@torch.no_grad()
def ones_(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.fill_(1.0)


@torch.no_grad()
def uniform_(tensor: torch.Tensor) -> torch.Tensor:
    """Keras ``RandomUniform`` default: ``U(-0.05, 0.05)`` (Keras' ``Embedding`` default)."""
    return tensor.uniform_(-0.05, 0.05)


@torch.no_grad()
def unit_forget_bias_(tensor: torch.Tensor) -> torch.Tensor:
    """LSTM bias ``(4u,)``: zeros with the forget gate block ``[u, 2u)`` set to one."""
    units = tensor.shape[-1] // 4
    tensor.zero_()
    tensor[..., units : 2 * units] = 1.0
    return tensor


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform_,
    "glorot_normal": glorot_normal_,
    "orthogonal": orthogonal_,
    "zeros": zeros_,
    "ones": ones_,
    "uniform": uniform_,
    "random_uniform": uniform_,
}


def get_initializer(
    initializer: str | Initializer, *, argument: str = "initializer"
) -> Initializer:
    """Return the initialiser for a Keras name, or a callable ``f(tensor) -> tensor`` as is."""
    if callable(initializer):
        return initializer
    if isinstance(initializer, str) and initializer in INITIALIZERS:
        return INITIALIZERS[initializer]
    raise ValueError(
        f"{argument} must be one of {sorted(INITIALIZERS)} or a callable; "
        f"received {argument}={initializer!r}"
    )
