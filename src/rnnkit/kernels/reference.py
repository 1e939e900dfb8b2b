"""The reference backend: a plain step loop under autograd. Slow, obvious, and the test oracle.

Implements the backend contract of :mod:`rnnkit.kernels.spec` for every configuration.

>>> import torch
>>> from rnnkit.kernels.spec import RecurrenceSpec, RecurrentWeights
>>> spec = RecurrenceSpec("simple", units=1, activation="linear")
>>> w = RecurrentWeights(torch.ones(1, 1), torch.ones(1, 1), None)  # h' = x + h
>>> x = torch.tensor([[[1.0], [2.0], [3.0]]])  # (B=1, T=3, I=1)
>>> mask = torch.tensor([[True, False, True]])  # step 1 is padding
>>> out, (h,) = run(spec, w, x, (torch.zeros(1, 1),), mask=mask)
>>> out.squeeze(-1), h
(tensor([[1., 1., 4.]]), tensor([[4.]]))
"""

from __future__ import annotations

import torch

from rnnkit.kernels.activations import get_activation
from rnnkit.kernels.spec import RecurrenceSpec, RecurrentWeights
from rnnkit.kernels.steps import gru_step, layer_norm, lstm_step, simple_step


def input_projection(
    spec: RecurrenceSpec, weights: RecurrentWeights, inputs: torch.Tensor
) -> torch.Tensor:
    """``inputs @ kernel + input bias`` for all steps at once: ``(B, T, I) -> (B, T, G*u)``.

    With ``spec.layer_norm``: ``LN(inputs @ kernel; input_gamma) + input bias`` (the bias as the
    LayerNorm's beta: one op).
    """
    xw = inputs @ weights.kernel
    bias = weights.bias
    if bias is not None and bias.dim() == 2:  # GRU reset_after: row 0 is the input bias
        bias = bias[0]
    if spec.layer_norm:
        return layer_norm(xw, _layer_norm_weights(weights).input_gamma, bias)
    return xw if bias is None else xw + bias


def _layer_norm_weights(weights: RecurrentWeights):
    ln = getattr(weights, "layer_norm", None)
    if ln is None:
        raise ValueError(
            "spec.layer_norm=True needs weights.layer_norm (LayerNormWeights); received None"
        )
    return ln


def run(
    spec: RecurrenceSpec,
    weights: RecurrentWeights,
    inputs: torch.Tensor,
    initial_state: tuple[torch.Tensor, ...],
    *,
    mask: torch.Tensor | None = None,
    go_backwards: bool = False,
    zero_output_for_mask: bool = False,
    input_dropout_mask: torch.Tensor | None = None,
    recurrent_dropout_mask: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    recurrent_kernel_dropout_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run one recurrence over ``inputs``; see :mod:`rnnkit.kernels.spec` for the contract."""
    act = get_activation(spec.activation)
    ract = get_activation(spec.recurrent_activation)
    recurrent_kernel = weights.recurrent_kernel
    if recurrent_kernel_dropout_mask is not None:
        recurrent_kernel = recurrent_kernel * recurrent_kernel_dropout_mask
    g_h = g_c = b_c = None
    if spec.layer_norm:
        ln = _layer_norm_weights(weights)
        g_h, g_c, b_c = ln.recurrent_gamma, ln.cell_gamma, ln.cell_beta
    if input_dropout_mask is not None:
        inputs = inputs * input_dropout_mask[:, None, :]
    xw = input_projection(spec, weights, inputs)  # (B, T, G*u)
    recurrent_bias = None
    if spec.cell == "gru" and weights.bias is not None and weights.bias.dim() == 2:
        recurrent_bias = weights.bias[1]

    state = tuple(initial_state)
    prev_output = torch.zeros_like(state[0])
    outputs = []
    steps = range(inputs.shape[1] - 1, -1, -1) if go_backwards else range(inputs.shape[1])
    for t in steps:
        h = state[0]
        h_in = h if recurrent_dropout_mask is None else h * recurrent_dropout_mask
        if spec.cell == "lstm":
            new_state = lstm_step(
                xw[:, t],
                state[1],
                h_in,
                recurrent_kernel,
                act,
                ract,
                recurrent_gamma=g_h,
                cell_gamma=g_c,
                cell_beta=b_c,
            )
        elif spec.cell == "gru":
            new_state = (
                gru_step(
                    xw[:, t],
                    h,
                    h_in,
                    recurrent_kernel,
                    recurrent_bias,
                    act,
                    ract,
                    spec.reset_after,
                    recurrent_gamma=g_h,
                ),
            )
        else:
            new_state = (simple_step(xw[:, t], h_in, recurrent_kernel, act, recurrent_gamma=g_h),)
        if zoneout_mask is not None:
            keep = zoneout_mask[:, t]  # (B, u): 1 keeps the previous hidden state
            new_state = (keep * h + (1.0 - keep) * new_state[0],) + new_state[1:]
        elif spec.zoneout > 0.0:
            new_state = (spec.zoneout * h + (1.0 - spec.zoneout) * new_state[0],) + new_state[1:]
        output = new_state[0]
        if mask is not None:
            valid = mask[:, t, None]  # (B, 1)
            new_state = tuple(
                torch.where(valid, n, s) for n, s in zip(new_state, state, strict=True)
            )
            fill = torch.zeros_like(output) if zero_output_for_mask else prev_output
            output = torch.where(valid, output, fill)
        state = new_state
        prev_output = output
        outputs.append(output)
    if outputs:
        out = torch.stack(outputs, dim=1)  # (B, T, u)
    else:
        out = inputs.new_zeros(inputs.shape[0], 0, spec.units)
    return out, state
