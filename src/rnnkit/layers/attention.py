r"""Mask-aware attention pooling: the seed's "custom layer" that consumes a mask.

Scores each step, softmaxes over time with padded steps excluded, and returns the weighted sum:

.. math::
    s_t = v^\top \tanh(x_t W + b) \;(\text{or } x_t w + b \text{ without } hidden), \quad
    \alpha = \mathrm{softmax}_{t \in \text{valid}}(s), \quad y = \sum_t \alpha_t x_t

A row with no valid step pools to zeros (no NaN).

>>> pool = AttentionPooling(4)
>>> x = torch.randn(2, 5, 4)
>>> y, w = pool(x, lengths=torch.tensor([5, 2]), return_weights=True)
>>> tuple(y.shape), bool((w[1, 2:] == 0).all()), bool(torch.allclose(w.sum(1), torch.ones(2)))
((2, 4), True, True)
"""

from __future__ import annotations

import torch
from torch import nn

from rnnkit.layers.cells import check_positive_int
from rnnkit.layers.masking import resolve_mask


class AttentionPooling(nn.Module):
    """Pool ``(B, T, F)`` to ``(B, F)`` with a learned, mask-aware softmax over time.

    Args:
        features: input features ``F``.
        hidden: size of the tanh scoring layer (additive attention); ``None`` scores with one
            linear map ``x_t w + b``.

    Call arguments:
        inputs: ``(B, T, F)``.
        mask: optional ``(B, T)`` bool, ``True`` at valid steps; or ``lengths`` ``(B,)``.
        return_weights: also return the attention weights ``(B, T)`` (zero at padded steps).

    Returns:
        ``(B, F)``, or ``((B, F), (B, T))`` with ``return_weights``.
    """

    def __init__(self, features: int, hidden: int | None = None):
        super().__init__()
        self.features = check_positive_int("features", features)
        self.hidden = None if hidden is None else check_positive_int("hidden", hidden)
        if self.hidden is None:
            self.score = nn.Linear(self.features, 1)
        else:
            self.score = nn.Sequential(
                nn.Linear(self.features, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 1)
            )

    def forward(self, inputs, *, mask=None, lengths=None, return_weights: bool = False):
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
            raise ValueError(f"inputs must be (batch, time, features); received {shape}")
        if inputs.shape[-1] != self.features:
            raise ValueError(
                f"inputs must have {self.features} features; received shape {tuple(inputs.shape)}"
            )
        batch, steps, _ = inputs.shape
        mask = resolve_mask(mask, lengths, batch_size=batch, time_steps=steps, device=inputs.device)
        scores = self.score(inputs).squeeze(-1)  # (B, T)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1)  # (B, T)
        if mask is not None:
            weights = weights * mask  # all-padded rows: uniform * 0 = 0
        pooled = torch.einsum("bt,btf->bf", weights, inputs)  # (B, F)
        return (pooled, weights) if return_weights else pooled

    def compute_mask(self, inputs, mask=None):
        """The time axis is pooled away, so no mask is handed on."""
        return None
