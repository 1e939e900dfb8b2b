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
"""

from __future__ import annotations

import torch

from rnnkit.kernels.activations import Activation


def lstm_step(
    xw: torch.Tensor,  # (B, 4u)
    h: torch.Tensor,  # (B, u)
    c: torch.Tensor,  # (B, u)
    h_in: torch.Tensor,  # (B, u)  h after recurrent dropout
    recurrent_kernel: torch.Tensor,  # (u, 4u)
    activation: Activation,
    recurrent_activation: Activation,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the new ``(h, c)``."""
    z = xw + h_in @ recurrent_kernel  # (B, 4u)
    i, f, g, o = z.chunk(4, dim=-1)
    c_new = recurrent_activation(f) * c + recurrent_activation(i) * activation(g)
    h_new = recurrent_activation(o) * activation(c_new)
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
) -> torch.Tensor:
    """Return the new ``h``."""
    u = h.shape[-1]
    x_z, x_r, x_h = xw.chunk(3, dim=-1)
    if reset_after:
        rec = h_in @ recurrent_kernel  # (B, 3u)
        if recurrent_bias is not None:
            rec = rec + recurrent_bias
        r_z, r_r, r_h = rec.chunk(3, dim=-1)
        z = recurrent_activation(x_z + r_z)
        r = recurrent_activation(x_r + r_r)
        candidate = activation(x_h + r * r_h)
    else:
        rec = h_in @ recurrent_kernel[:, : 2 * u]  # (B, 2u)
        r_z, r_r = rec.chunk(2, dim=-1)
        z = recurrent_activation(x_z + r_z)
        r = recurrent_activation(x_r + r_r)
        candidate = activation(x_h + (r * h_in) @ recurrent_kernel[:, 2 * u :])
    return z * h + (1.0 - z) * candidate


def simple_step(
    xw: torch.Tensor,  # (B, u)
    h_in: torch.Tensor,  # (B, u)
    recurrent_kernel: torch.Tensor,  # (u, u)
    activation: Activation,
) -> torch.Tensor:
    """Return the new ``h``."""
    return activation(xw + h_in @ recurrent_kernel)
