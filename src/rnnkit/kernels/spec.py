"""What a backend is asked to compute: the contract every kernel implements.

A recurrent layer reduces each call to one :class:`RecurrenceSpec` (the cell's configuration),
one :class:`RecurrentWeights` (its parameters, in Keras layout) and tensors. Every backend
(``reference``, ``vendor``, ``fused``) implements::

    run(spec, weights, inputs, initial_state, *, mask=None, go_backwards=False,
        zero_output_for_mask=False, input_dropout_mask=None, recurrent_dropout_mask=None)
        -> (outputs, final_state)

with

- ``inputs``: ``(B, T, I)`` float, batch-first (the layer transposes ``time_major`` input);
- ``initial_state``: tuple of ``(B, units)`` tensors — ``(h,)`` for SimpleRNN/GRU, ``(h, c)`` for LSTM;
- ``mask``: ``(B, T)`` bool or ``None``; ``True`` marks a valid step. Any pattern is allowed
  (right-, left-padded, arbitrary, all-false rows);
- ``go_backwards``: process time steps from ``T-1`` to ``0``; ``outputs`` are returned in processing
  order (Keras semantics: the layer flips them when it needs time order);
- ``input_dropout_mask``: ``(B, I)`` multiplicative mask, already scaled by ``1/(1-rate)``, applied to
  every step's input (Keras: one mask per sequence, constant over time);
- ``recurrent_dropout_mask``: ``(B, units)``, applied to the previous hidden state where it enters
  the recurrent product (not to the carried state);
- ``outputs``: ``(B, T, units)``; ``final_state``: tuple like ``initial_state``.

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


@dataclass(frozen=True)
class RecurrenceSpec:
    """The configuration of one recurrence (one direction of one layer)."""

    cell: CellType  # which recurrence: "lstm", "gru" or "simple"
    units: int  # hidden size u
    activation: str | Callable = "tanh"  # candidate / output activation (Keras name or callable)
    recurrent_activation: str | Callable = "sigmoid"  # gate activation; unused by "simple"
    use_bias: bool = True
    reset_after: bool = True  # GRU only: apply the reset gate after the recurrent product

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def state_count(self) -> int:
        return 2 if self.cell == "lstm" else 1


class RecurrentWeights(NamedTuple):
    """Parameters of one recurrence, in Keras layout (see module docstring)."""

    kernel: torch.Tensor  # (I, G*u)
    recurrent_kernel: torch.Tensor  # (u, G*u)
    bias: torch.Tensor | None  # (G*u,) or, GRU reset_after, (2, 3u); None without bias
