"""What a backend is asked to compute: the contract every kernel implements.

A recurrent layer reduces each call to one :class:`RecurrenceSpec` (the cell's configuration),
one :class:`RecurrentWeights` (its parameters, in Keras layout) and tensors. Every backend
(``reference``, ``vendor``, ``fused``) implements::

    run(spec, weights, inputs, initial_state, *, mask=None, go_backwards=False,
        zero_output_for_mask=False, input_dropout_mask=None, recurrent_dropout_mask=None,
        zoneout_mask=None, recurrent_kernel_dropout_mask=None)
        -> (outputs, final_state)

with

- ``inputs``: ``(B, T, I)`` float, batch-first (the layer transposes ``time_major`` input);
- ``initial_state``: tuple of ``(B, units)`` tensors — ``(h,)`` for SimpleRNN/GRU, ``(h, c)`` for
  LSTM;
- ``mask``: ``(B, T)`` bool or ``None``; ``True`` marks a valid step. Any pattern is allowed
  (right-, left-padded, arbitrary, all-false rows);
- ``go_backwards``: process time steps from ``T-1`` to ``0``; ``outputs`` are returned in processing
  order (Keras semantics: the layer flips them when it needs time order);
- ``input_dropout_mask``: ``(B, I)`` multiplicative mask, already scaled by ``1/(1-rate)``, applied
  to every step's input (Keras: one mask per sequence, constant over time);
- ``recurrent_dropout_mask``: ``(B, units)``, applied to the previous hidden state where it enters
  the recurrent product (not to the carried state);
- ``zoneout_mask``: ``(B, T, units)`` 0/1 float (training), indexed by input time ``t``: where it is
  1 the hidden state keeps its previous value, ``h_t = m h_{t-1} + (1 - m) h'`` (Krueger et al.;
  as in haste, only ``h`` is zoned out, also for LSTM, not the cell state). With
  ``zoneout_mask=None`` and ``spec.zoneout = p > 0`` the deterministic expectation
  ``h_t = p h_{t-1} + (1 - p) h'`` is used (evaluation). Zoneout is applied before the masking rule;
- ``recurrent_kernel_dropout_mask``: ``(units, G*units)`` multiplicative mask, already scaled by
  ``1/(1-rate)``, on ``recurrent_kernel`` (DropConnect / AWD-LSTM weight drop), fixed for the
  sequence;
- ``outputs``: ``(B, T, units)``; ``final_state``: tuple like ``initial_state``.

A backend that finds it cannot work on this machine at all (its compiler toolchain fails, say)
raises :class:`BackendUnavailable` and declines every later call in ``supports``; ``auto`` then
warns once and runs the call on the next backend.

With ``spec.layer_norm`` the input and recurrent projections (and the LSTM cell state) are layer
normalised; ``weights.layer_norm`` then holds the :class:`LayerNormWeights`; the equations are in
:mod:`rnnkit.kernels.steps`.

The masking rule (DESIGN.md), written once in :mod:`rnnkit.kernels.reference`: at a masked step
the state is carried unchanged and the output is the previous output (zeros before the first valid
step), or zeros when ``zero_output_for_mask``. The final state is the state after the last valid
step.

Weight layout (Keras): ``kernel (I, G*u)``, ``recurrent_kernel (u, G*u)``, ``bias (G*u,)`` with
gate order LSTM ``i, f, c, o`` (G=4), GRU ``z, r, h`` (G=3), SimpleRNN G=1. A GRU with
``reset_after=True`` has ``bias (2, 3u)``: row 0 input bias, row 1 recurrent bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

CellType = Literal["lstm", "gru", "simple"]

GATES: dict[str, int] = {"lstm": 4, "gru": 3, "simple": 1}


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine (and will decline further calls)."""


@dataclass(frozen=True)
class RecurrenceSpec:
    """The configuration of one recurrence (one direction of one layer)."""

    cell: CellType  # which recurrence: "lstm", "gru" or "simple"
    units: int  # hidden size u
    activation: str | Callable = "tanh"  # candidate / output activation (Keras name or callable)
    recurrent_activation: str | Callable = "sigmoid"  # gate activation; unused by "simple"
    use_bias: bool = True
    reset_after: bool = True  # GRU only: apply the reset gate after the recurrent product
    layer_norm: bool = False  # layer-normalise the projections (and LSTM cell state); steps.py
    zoneout: float = 0.0  # zoneout probability p of the hidden state; used in eval when no mask

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def state_count(self) -> int:
        return 2 if self.cell == "lstm" else 1


LAYER_NORM_EPS = 1e-5  # epsilon of every layer normalisation in the recurrences


class LayerNormWeights(NamedTuple):
    """Gains (and the cell-state bias) of a layer-normalised recurrence (haste's LayerNormLSTM).

    The projections' LayerNorms have a gain only; the cell's own ``bias`` is added after them.
    """

    input_gamma: torch.Tensor  # (G*u,) gain of LN(x W)
    recurrent_gamma: torch.Tensor  # (G*u,) gain of LN(h U) (GRU reset_after=False: [zr | h] parts)
    cell_gamma: torch.Tensor | None = None  # (u,) LSTM only: gain of LN(c)
    cell_beta: torch.Tensor | None = None  # (u,) LSTM only: bias of LN(c)


class RecurrentWeights(NamedTuple):
    """Parameters of one recurrence, in Keras layout (see module docstring)."""

    kernel: torch.Tensor  # (I, G*u)
    recurrent_kernel: torch.Tensor  # (u, G*u)
    bias: torch.Tensor | None  # (G*u,) or, GRU reset_after, (2, 3u); None without bias
    layer_norm: LayerNormWeights | None = None  # required when spec.layer_norm, else ignored


def default_layer_norm_weights(
    spec: RecurrenceSpec, dtype: torch.dtype = torch.float32
) -> LayerNormWeights:
    """Initial layer-norm parameters: gains 1, cell bias 0 (haste's initialisation)."""
    gu = spec.gates * spec.units
    cell = spec.cell == "lstm"
    return LayerNormWeights(
        torch.ones(gu, dtype=dtype),
        torch.ones(gu, dtype=dtype),
        torch.ones(spec.units, dtype=dtype) if cell else None,
        torch.zeros(spec.units, dtype=dtype) if cell else None,
    )
