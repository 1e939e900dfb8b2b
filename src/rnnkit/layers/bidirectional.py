"""``Bidirectional``: a forward and a backward recurrent layer over the same sequence (Keras).

::

    x:        x0 x1 x2 .  .        (right-padded, lengths = 3)
    forward:  f0 f1 f2 0  0        runs t = 0 .. T-1
    backward: b0 b1 b2 0  0        runs t = T-1 .. 0 (go_backwards), flipped back to time order;
                                   padded steps are skipped, so b2 sees only x2 like the unpadded
                                   sequence
    output:   merge(f_t, b_t)      concat | sum | mul | ave | None (the pair)

>>> from rnnkit.layers import GRU
>>> bi = Bidirectional(GRU(3, return_sequences=True, input_size=2))
>>> tuple(bi(torch.randn(4, 6, 2)).shape)
(4, 6, 6)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rnnkit.layers.rnn import RNN

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _weight_count(layer: RNN) -> int:
    return sum(3 if c.use_bias else 2 for c in layer.cells)


class Bidirectional(nn.Module):
    """Run ``layer`` forwards and a copy of it backwards, and merge the two (Keras).

    Args:
        layer: an :class:`~rnnkit.layers.RNN` (``LSTM``, ``GRU``, ``SimpleRNN``, ...); it becomes
            the forward layer.
        merge_mode: ``"concat"`` (default), ``"sum"``, ``"mul"``, ``"ave"`` or ``None`` (return
            both outputs as a list).
        backward_layer: optional layer for the backward direction; it must have the opposite
            ``go_backwards`` and the same ``return_sequences``, ``return_state``, ``stateful`` and
            ``time_major``. By default a deep copy of ``layer`` with ``go_backwards`` flipped and
            freshly initialised weights.

    Both layers get ``zero_output_for_mask = return_sequences`` (Keras): padded steps of the
    returned sequences are zeros, and the last output of each direction is that of its last valid
    step. With a mask, the backward direction on a padded batch gives exactly what it gives on
    each sequence unpadded (left, right or arbitrary padding).

    Call arguments:
        inputs, mask, lengths: as :class:`~rnnkit.layers.RNN`.
        initial_state: list of the forward states followed by the backward states.

    Returns:
        the merged output (``(B, T, 2u)`` for concat with ``return_sequences``, else ``(B, 2u)``),
        or the list ``[output_f, output_b]`` with ``merge_mode=None``; with ``return_state``
        followed by the forward final states, then the backward final states.
    """

    def __init__(self, layer: RNN, merge_mode: str | None = "concat", backward_layer=None):
        super().__init__()
        if not isinstance(layer, RNN):
            raise TypeError(
                f"layer must be an rnnkit recurrent layer (RNN, LSTM, GRU, SimpleRNN); "
                f"received {type(layer).__name__}"
            )
        if merge_mode not in MERGE_MODES:
            raise ValueError(
                f"merge_mode must be one of {list(MERGE_MODES)}; received merge_mode={merge_mode!r}"
            )
        if backward_layer is None:
            backward_layer = copy.deepcopy(layer)
            backward_layer.go_backwards = not layer.go_backwards
            backward_layer.states = None
            backward_layer.reset_parameters()
        else:
            if not isinstance(backward_layer, RNN):
                raise TypeError(
                    "backward_layer must be an rnnkit recurrent layer; "
                    f"received {type(backward_layer).__name__}"
                )
            if backward_layer.go_backwards == layer.go_backwards:
                raise ValueError(
                    "backward_layer.go_backwards must be the opposite of layer.go_backwards; "
                    f"received go_backwards={backward_layer.go_backwards} for both"
                )
            for attr in ("return_sequences", "return_state", "stateful", "time_major"):
                if getattr(layer, attr) != getattr(backward_layer, attr):
                    raise ValueError(
                        f"backward_layer.{attr} must equal layer.{attr} "
                        f"({getattr(layer, attr)}); received {getattr(backward_layer, attr)}"
                    )
        self.forward_layer = layer
        self.backward_layer = backward_layer
        self.merge_mode = merge_mode
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = sub.return_sequences
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.stateful = layer.stateful
        self.time_major = layer.time_major

    def _split(self, states, name: str):
        if isinstance(states, torch.Tensor):
            states = [states]
        states = list(states)
        n_f = len(self.forward_layer.cell.state_sizes)
        n_b = len(self.backward_layer.cell.state_sizes)
        if len(states) != n_f + n_b:
            raise ValueError(
                f"{name} must have {n_f + n_b} tensors (forward states, then backward states); "
                f"received {len(states)}"
            )
        return states[:n_f], states[n_f:]

    def forward(self, inputs: torch.Tensor, *, mask=None, lengths=None, initial_state=None):
        init_f = init_b = None
        if initial_state is not None:
            init_f, init_b = self._split(initial_state, "initial_state")
        kw = {"mask": mask, "lengths": lengths}
        y = self.forward_layer(inputs, initial_state=init_f, **kw)
        y_rev = self.backward_layer(inputs, initial_state=init_b, **kw)
        states: list[torch.Tensor] = []
        if self.return_state:
            y, states_f = y[0], y[1:]
            y_rev, states_b = y_rev[0], y_rev[1:]
            states = [*states_f, *states_b]
        if self.return_sequences:
            y_rev = y_rev.flip(0 if self.time_major else 1)
        if self.merge_mode == "concat":
            output = torch.cat([y, y_rev], dim=-1)
        elif self.merge_mode == "sum":
            output = y + y_rev
        elif self.merge_mode == "ave":
            output = (y + y_rev) / 2
        elif self.merge_mode == "mul":
            output = y * y_rev
        else:
            output = [y, y_rev]
        if self.return_state:
            return [*output, *states] if self.merge_mode is None else [output, *states]
        return output

    def reset_states(self, states=None) -> None:
        """Reset (or set: forward states, then backward states) both stateful layers."""
        if states is None:
            self.forward_layer.reset_states()
            self.backward_layer.reset_states()
            return
        f, b = self._split(states, "states")
        self.forward_layer.reset_states(f)
        self.backward_layer.reset_states(b)

    def get_weights(self) -> list[np.ndarray]:
        """Forward layer's Keras arrays, then the backward layer's."""
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()

    def set_weights(self, weights: Sequence) -> None:
        weights = list(weights)
        n_f, n_b = _weight_count(self.forward_layer), _weight_count(self.backward_layer)
        if len(weights) != n_f + n_b:
            raise ValueError(
                f"Bidirectional.set_weights expected {n_f + n_b} arrays ({n_f} forward, then "
                f"{n_b} backward); received {len(weights)}"
            )
        self.forward_layer.set_weights(weights[:n_f])
        self.backward_layer.set_weights(weights[n_f:])

    def extra_repr(self) -> str:
        return f"merge_mode={self.merge_mode!r}"
