r"""One time step of each recurrence, as pure functions of tensors.

These are the equations every backend must reproduce. ``xw`` is the step's input projection
``x_t @ kernel (+ input bias)``, computed for all steps at once by the caller; ``h_in`` is the
previous hidden state as it enters the recurrent product (after recurrent dropout).

LSTM (gate order i, f, c, o; :math:`\sigma` = recurrent activation, :math:`\phi` = activation):

.. math::
    [i, f, g, o] = xw + h_{in} U, \quad
    c' = \sigma(f) \odot c + \sigma(i) \odot \phi(g), \quad
    h' = \sigma(o) \odot \phi(c')

GRU (gate order z, r, h). ``reset_after=True`` (cuDNN / ``torch.nn.GRU`` form):

.. math::
    [r_z, r_r, r_h] = h_{in} U + b_{rec}, \quad
    z = \sigma(x_z + r_z), \; r = \sigma(x_r + r_r), \quad
    \tilde h = \phi(x_h + r \odot r_h), \quad h' = z \odot h + (1 - z) \odot \tilde h

``reset_after=False`` (the original GRU): :math:`\tilde h = \phi(x_h + (r \odot h_{in}) U_h)`.

SimpleRNN: :math:`h' = \phi(xw + h_{in} U)`.

Layer normalisation (``spec.layer_norm``; LayerNorm-LSTM as in haste). :math:`LN(v; \gamma, \beta)`
normalises each row over its last dimension (mean 0, variance 1, epsilon
:data:`~rnnkit.kernels.spec.LAYER_NORM_EPS`), then scales by :math:`\gamma` and adds :math:`\beta`
(0 when absent). The input projection becomes :math:`xw = LN(x W; \gamma_x) + b` (all ``G*u``
columns normalised together; computed by the caller) and the recurrent product
:math:`h_{in} U` becomes :math:`LN(h_{in} U; \gamma_h)` for LSTM and SimpleRNN, and
:math:`LN(h_{in} U; \gamma_h) + b_{rec}` for GRU ``reset_after=True``. GRU ``reset_after=False``
normalises its two recurrent products separately: :math:`LN(h_{in} U_{zr}; \gamma_h[:2u])` and
:math:`LN((r \odot h_{in}) U_h; \gamma_h[2u:])`. The LSTM also normalises the cell state before the
output activation: :math:`h' = \sigma(o) \odot \phi(LN(c'; \gamma_c, \beta_c))` (the carried
state is the un-normalised :math:`c'`).

Zoneout (applied by the caller, :mod:`rnnkit.kernels.reference`):
:math:`h_t = m \odot h_{t-1} + (1-m) \odot h'`
with a 0/1 mask :math:`m` per step in training and :math:`m = p` in evaluation; LSTM cell states are
not zoned out (haste). DropConnect replaces :math:`U` by :math:`U \odot M` for the whole sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnkit.kernels.activations import Activation
from rnnkit.kernels.spec import LAYER_NORM_EPS


def layer_norm(
    v: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None = None
) -> torch.Tensor:
    r""":math:`LN(v; \gamma, \beta)` over the last dimension; identity when ``gamma`` is None."""
    if gamma is None:
        return v
    return F.layer_norm(v, (v.shape[-1],), gamma, beta, LAYER_NORM_EPS)


def lstm_step(
    xw: torch.Tensor,  # (B, 4u)
    c: torch.Tensor,  # (B, u)
    h_in: torch.Tensor,  # (B, u)  h after recurrent dropout
    recurrent_kernel: torch.Tensor,  # (u, 4u)
    activation: Activation,
    recurrent_activation: Activation,
    *,
    recurrent_gamma: torch.Tensor | None = None,  # (4u,) layer norm of h_in U
    cell_gamma: torch.Tensor | None = None,  # (u,) layer norm of c'
    cell_beta: torch.Tensor | None = None,  # (u,)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the new ``(h, c)``."""
    z = xw + layer_norm(h_in @ recurrent_kernel, recurrent_gamma)  # (B, 4u)
    i, f, g, o = z.chunk(4, dim=-1)
    c_new = recurrent_activation(f) * c + recurrent_activation(i) * activation(g)
    h_new = recurrent_activation(o) * activation(layer_norm(c_new, cell_gamma, cell_beta))
    return h_new, c_new


def gru_step(
    xw: torch.Tensor,  # (B, 3u)  input projection incl. input bias
    h: torch.Tensor,  # (B, u)
    h_in: torch.Tensor,  # (B, u)  h after recurrent dropout
    recurrent_kernel: torch.Tensor,  # (u, 3u)
    recurrent_bias: torch.Tensor | None,  # (3u,) when reset_after and use_bias, else None
    activation: Activation,
    recurrent_activation: Activation,
    reset_after: bool,
    *,
    recurrent_gamma: torch.Tensor | None = None,  # (3u,) layer norm of the recurrent products
) -> torch.Tensor:
    """Return the new ``h``."""
    u = h.shape[-1]
    x_z, x_r, x_h = xw.chunk(3, dim=-1)
    g_zr = g_h = None
    if recurrent_gamma is not None:
        g_zr, g_h = recurrent_gamma[: 2 * u], recurrent_gamma[2 * u :]
    if reset_after:
        rec = layer_norm(h_in @ recurrent_kernel, recurrent_gamma)  # (B, 3u)
        if recurrent_bias is not None:
            rec = rec + recurrent_bias
        r_z, r_r, r_h = rec.chunk(3, dim=-1)
        z = recurrent_activation(x_z + r_z)
        r = recurrent_activation(x_r + r_r)
        candidate = activation(x_h + r * r_h)
    else:
        rec = layer_norm(h_in @ recurrent_kernel[:, : 2 * u], g_zr)  # (B, 2u)
        r_z, r_r = rec.chunk(2, dim=-1)
        z = recurrent_activation(x_z + r_z)
        r = recurrent_activation(x_r + r_r)
        candidate = activation(x_h + layer_norm((r * h_in) @ recurrent_kernel[:, 2 * u :], g_h))
    return z * h + (1.0 - z) * candidate


def simple_step(
    xw: torch.Tensor,  # (B, u)
    h_in: torch.Tensor,  # (B, u)
    recurrent_kernel: torch.Tensor,  # (u, u)
    activation: Activation,
    *,
    recurrent_gamma: torch.Tensor | None = None,  # (u,) layer norm of h_in U
) -> torch.Tensor:
    """Return the new ``h``."""
    return activation(xw + layer_norm(h_in @ recurrent_kernel, recurrent_gamma))
