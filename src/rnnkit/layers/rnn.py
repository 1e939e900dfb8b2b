r"""The ``RNN`` layer (Keras semantics) and the ``SimpleRNN`` / ``LSTM`` / ``GRU`` layers.

The layer owns everything around the step: the time loop (delegated to a backend through
:mod:`rnnkit.kernels.dispatch`), masks and lengths, direction, initial and stateful state,
``return_sequences`` / ``return_state`` and the per-sequence dropout masks.

Masking rule: at a masked step the state is carried unchanged and the output repeats the
previous output (zeros before the first valid step), or is zero with ``zero_output_for_mask``.
The final state is the state after the last valid step; the last output is the output of the
last processed step (Keras). ``go_backwards=True`` processes ``T-1 .. 0`` and returns the
sequence in processing order (reversed, as Keras does).

>>> layer = LSTM(5, return_sequences=True, return_state=True)   # builds on the first call
>>> x = torch.randn(3, 7, 4)                                     # (B, T, I)
>>> out, h, c = layer(x, lengths=torch.tensor([7, 3, 0]))
>>> tuple(out.shape), tuple(h.shape), tuple(c.shape)
((3, 7, 5), (3, 5), (3, 5))
>>> bool((out[2] == 0).all()), bool((out[1, 3:] == out[1, 2]).all())  # empty row; forward fill
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rnnkit.kernels import dispatch
from rnnkit.layers.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell, StackedRNNCells
from rnnkit.layers.masking import resolve_mask


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; received {name}={value!r}")
    return value


class RNN(nn.Module):
    """Run a cell (or :class:`StackedRNNCells`) over sequences, with Keras' ``RNN`` semantics.

    Args:
        cell: a cell or :class:`StackedRNNCells` (a list of cells is stacked).
        return_sequences: return the whole output sequence ``(B, T, u)`` instead of the last
            output ``(B, u)``.
        return_state: also return the final states: ``[output, *states]``.
        go_backwards: process the sequence backwards; sequences come back reversed.
        stateful: use the final state of each call as the initial state of the next (detached
            copies are kept, so gradients stop at call boundaries); see :meth:`reset_states`.
        zero_output_for_mask: output zeros at masked steps instead of the previous output.
        time_major: inputs and output sequences are ``(T, B, ...)`` instead of ``(B, T, ...)``.
        backend: ``"auto"`` (fastest exact backend per call), ``"vendor"``, ``"fused"`` or
            ``"reference"``.

    Call arguments:
        inputs: ``(B, T, I)`` float tensor (``(T, B, I)`` with ``time_major``).
        mask: optional ``(B, T)`` bool, ``True`` at valid steps (always batch-first).
        lengths: optional ``(B,)`` valid lengths (right padding); not together with ``mask``.
        initial_state: optional list of ``(B, u)`` tensors (``[h, c]`` for the LSTM; all cells'
            states in order for stacked cells).

    Returns:
        ``output`` or, with ``return_state``, the list ``[output, *final_states]``.
    """

    def __init__(
        self,
        cell,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        zero_output_for_mask: bool = False,
        time_major: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if isinstance(cell, (list, tuple)):
            cell = StackedRNNCells(cell)
        if not isinstance(cell, (RecurrentCell, StackedRNNCells)):
            raise TypeError(
                "cell must be an rnnkit cell (SimpleRNNCell, LSTMCell, GRUCell) or "
                f"StackedRNNCells; received {type(cell).__name__}"
            )
        self.cell = cell
        self.return_sequences = _check_bool("return_sequences", return_sequences)
        self.return_state = _check_bool("return_state", return_state)
        self.go_backwards = _check_bool("go_backwards", go_backwards)
        self.stateful = _check_bool("stateful", stateful)
        self.zero_output_for_mask = _check_bool("zero_output_for_mask", zero_output_for_mask)
        self.time_major = _check_bool("time_major", time_major)
        self.backend = dispatch.check_backend_name(backend)
        self.states: tuple[torch.Tensor, ...] | None = None  # stateful layers only

    # --- structure -----------------------------------------------------------------------
    @property
    def cells(self) -> list[RecurrentCell]:
        """The cells in order (one unless stacked)."""
        cell = self.cell  # (one lookup: a submodule, found through __getattr__)
        return list(cell.cells) if isinstance(cell, StackedRNNCells) else [cell]

    @property
    def units(self) -> int:
        return self.cell.output_size

    @property
    def state_size(self):
        return self.cell.state_size

    @property
    def built(self) -> bool:
        return self.cell.built

    def build(self, input_size: int, device=None, dtype=None) -> None:
        self.cell.build(input_size, device, dtype)

    def reset_parameters(self) -> None:
        self.cell.reset_parameters()

    # --- state ---------------------------------------------------------------------------
    def reset_states(self, states=None) -> None:
        """Forget (``states=None``) or set the state of a stateful layer.

        Args:
            states: ``None`` (the next call starts from zeros) or a list of ``(B, u)`` tensors /
                arrays, one per state.
        """
        if not self.stateful:
            raise ValueError("reset_states() needs a stateful layer; this layer has stateful=False")
        if states is None:
            self.states = None
            return
        if isinstance(states, (torch.Tensor, np.ndarray)):
            states = [states]
        states = [torch.as_tensor(s) for s in states]
        batch = states[0].shape[0] if states and states[0].dim() else -1
        self.states = tuple(
            s.detach().clone() for s in self._check_initial_state(states, batch, None, None)
        )

    def _check_initial_state(self, state, batch: int, device, dtype) -> tuple[torch.Tensor, ...]:
        if isinstance(state, torch.Tensor):
            state = [state]
        if not isinstance(state, (list, tuple)):
            raise TypeError(
                "initial_state must be a tensor or a list of tensors; "
                f"received {type(state).__name__}"
            )
        sizes = self.cell.state_sizes
        if len(state) != len(sizes):
            raise ValueError(
                f"initial_state must have {len(sizes)} tensors (state sizes {list(sizes)}); "
                f"received {len(state)}"
            )
        out = []
        for i, (s, n) in enumerate(zip(state, sizes, strict=True)):
            if not isinstance(s, torch.Tensor):
                raise TypeError(
                    f"initial_state[{i}] must be a torch.Tensor; received {type(s).__name__}"
                )
            if tuple(s.shape) != (batch, n):
                raise ValueError(
                    f"initial_state[{i}] must have shape ({batch}, {n}); "
                    f"received shape {tuple(s.shape)}"
                )
            out.append(s.to(device=device, dtype=dtype) if device is not None else s)
        return tuple(out)

    # --- call ----------------------------------------------------------------------------
    def _check_inputs(self, inputs) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor; received {type(inputs).__name__}")
        if inputs.dim() != 3:
            layout = "(time, batch, features)" if self.time_major else "(batch, time, features)"
            raise ValueError(
                f"inputs must be 3-D {layout}; received inputs of shape {tuple(inputs.shape)}"
            )
        if not inputs.dtype.is_floating_point:
            raise TypeError(f"inputs must be floating point; received dtype {inputs.dtype}")
        return inputs

    def forward(self, inputs: torch.Tensor, *, mask=None, lengths=None, initial_state=None):
        inputs = self._check_inputs(inputs)
        x = inputs.transpose(0, 1) if self.time_major else inputs  # (B, T, I)
        batch, steps, features = x.shape
        top = self.cell  # (one lookup: a submodule, found through __getattr__)
        top.build(features, x.device, x.dtype)
        if features != top.input_size:
            raise ValueError(
                f"inputs must have {top.input_size} features (the layer's input size); "
                f"received inputs of shape {tuple(inputs.shape)}"
            )
        mask = resolve_mask(mask, lengths, batch_size=batch, time_steps=steps, device=x.device)
        cells = self.cells
        param = cells[0].kernel
        if x.dtype != param.dtype:
            raise TypeError(
                f"inputs dtype must match the layer's parameters ({param.dtype}); "
                f"received dtype {x.dtype}"
            )

        if initial_state is not None:
            state = self._check_initial_state(initial_state, batch, x.device, x.dtype)
        elif self.stateful and self.states is not None:
            if self.states[0].shape[0] != batch:
                raise ValueError(
                    f"a stateful layer keeps the batch size: expected batch size "
                    f"{self.states[0].shape[0]}, received inputs with batch size {batch} "
                    "(call reset_states() to start over with another batch size)"
                )
            state = tuple(s.to(device=x.device, dtype=x.dtype) for s in self.states)
        else:
            state = top.initial_state(batch, x.device, x.dtype)

        per_cell = top.split_state(state) if isinstance(top, StackedRNNCells) else [state]
        finals: list[torch.Tensor] = []
        seq, layer_mask = x, mask
        for k, (cell, s0) in enumerate(zip(cells, per_cell, strict=True)):
            masks = cell.sequence_masks(batch, steps, x.device, x.dtype)
            # go_backwards on the first cell puts the sequence in processing order; later
            # cells then run forwards over it (with the mask in the same order).
            backwards = self.go_backwards and k == 0
            seq, final = dispatch.run(
                cell.spec,
                cell.weights,
                seq,
                s0,
                backend=self.backend,
                mask=layer_mask,
                go_backwards=backwards,
                zero_output_for_mask=self.zero_output_for_mask,
                **masks,
            )
            if backwards and layer_mask is not None:
                layer_mask = layer_mask.flip(1)
            finals.extend(final)

        if self.stateful:
            self.states = tuple(s.detach() for s in finals)
        if self.return_sequences:
            output = seq.transpose(0, 1) if self.time_major else seq
        elif steps == 0:
            output = seq.new_zeros(batch, self.units)
        else:
            output = seq[:, -1]
        if self.return_state:
            return [output, *finals]
        return output

    # --- Keras weights ---------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Keras arrays: per cell ``kernel, recurrent_kernel, bias`` (see the cell classes)."""
        return self.cell.get_weights()

    def set_weights(self, weights: Sequence) -> None:
        """Load Keras arrays (shapes are checked; an unbuilt layer builds from the kernel)."""
        self.cell.set_weights(weights)

    def extra_repr(self) -> str:
        flags = [
            n
            for n in ("return_sequences", "return_state", "go_backwards", "stateful", "time_major")
            if getattr(self, n)
        ]
        return ", ".join([f"backend={self.backend!r}", *flags])


class _CellLayer(RNN):
    """An ``RNN`` around one cell whose attributes it exposes (``units``, ``dropout``, ...)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            cell = self._modules.get("cell")
            if cell is not None and not name.startswith("_") and hasattr(cell, name):
                return getattr(cell, name)
            raise


class SimpleRNN(_CellLayer):
    r"""Fully connected RNN layer (Keras ``SimpleRNN``): :math:`h_t = \phi(x_t W + b + h_{t-1} U)`.

    Args:
        units: hidden size ``u``.
        activation, use_bias, kernel_initializer, recurrent_initializer, bias_initializer,
            dropout, recurrent_dropout: as :class:`~rnnkit.layers.SimpleRNNCell`.
        return_sequences, return_state, go_backwards, stateful, zero_output_for_mask,
            time_major, backend: as :class:`RNN`.
        layer_norm, zoneout, recurrent_weight_dropout: as :class:`~rnnkit.layers.RecurrentCell`
            (layer-normalised projections, zoneout of ``h``, DropConnect on the recurrent kernel;
            run by the fused backend).
        input_size: input features; ``None`` builds on the first call.
        device, dtype: where to create the parameters.

    Call arguments and returns: as :class:`RNN` (``[output, h]`` with ``return_state``).
    """

    def __init__(
        self,
        units: int,
        activation="tanh",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        zero_output_for_mask: bool = False,
        time_major: bool = False,
        backend: str = "auto",
        *,
        layer_norm: bool = False,
        zoneout: float = 0.0,
        recurrent_weight_dropout: float = 0.0,
        input_size: int | None = None,
        device=None,
        dtype=None,
    ):
        cell = SimpleRNNCell(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            layer_norm=layer_norm,
            zoneout=zoneout,
            recurrent_weight_dropout=recurrent_weight_dropout,
            input_size=input_size,
            device=device,
            dtype=dtype,
        )
        super().__init__(
            cell,
            return_sequences,
            return_state,
            go_backwards,
            stateful,
            zero_output_for_mask,
            time_major,
            backend,
        )


class LSTM(_CellLayer):
    r"""Long short-term memory layer (Keras ``LSTM``); gate order ``i, f, c, o``.

    .. math::
        [i, f, g, o] = x_t W + b + h_{t-1} U, \quad
        c_t = \sigma(f) c_{t-1} + \sigma(i) \phi(g), \quad h_t = \sigma(o) \phi(c_t)

    Args:
        units: hidden size ``u``.
        activation (:math:`\phi`), recurrent_activation (:math:`\sigma`), use_bias,
            kernel_initializer, recurrent_initializer, bias_initializer, unit_forget_bias,
            dropout, recurrent_dropout: as :class:`~rnnkit.layers.LSTMCell`.
        return_sequences, return_state, go_backwards, stateful, zero_output_for_mask,
            time_major, backend: as :class:`RNN`.
        layer_norm, zoneout, recurrent_weight_dropout: as :class:`~rnnkit.layers.RecurrentCell`
            (layer-normalised projections, zoneout of ``h``, DropConnect on the recurrent kernel;
            run by the fused backend).
        input_size: input features; ``None`` builds on the first call.
        device, dtype: where to create the parameters.

    Returns ``output`` or ``[output, h, c]``: ``output`` is ``(B, T, u)`` with
    ``return_sequences`` else ``(B, u)``; ``h``, ``c`` are ``(B, u)``.

    Weights (Keras): ``kernel (I, 4u)``, ``recurrent_kernel (u, 4u)``, ``bias (4u,)``.
    """

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        zero_output_for_mask: bool = False,
        time_major: bool = False,
        backend: str = "auto",
        *,
        layer_norm: bool = False,
        zoneout: float = 0.0,
        recurrent_weight_dropout: float = 0.0,
        input_size: int | None = None,
        device=None,
        dtype=None,
    ):
        cell = LSTMCell(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            layer_norm=layer_norm,
            zoneout=zoneout,
            recurrent_weight_dropout=recurrent_weight_dropout,
            input_size=input_size,
            device=device,
            dtype=dtype,
        )
        super().__init__(
            cell,
            return_sequences,
            return_state,
            go_backwards,
            stateful,
            zero_output_for_mask,
            time_major,
            backend,
        )


class GRU(_CellLayer):
    r"""Gated recurrent unit layer (Keras ``GRU``); gate order ``z, r, h``.

    .. math::
        z = \sigma(x_z + h U_z + b^r_z), \; r = \sigma(x_r + h U_r + b^r_r), \;
        \tilde h = \phi(x_h + r \odot (h U_h + b^r_h)), \; h_t = z h_{t-1} + (1 - z) \tilde h

    (``reset_after=True``; with ``reset_after=False``, :math:`\tilde h = \phi(x_h + (r h) U_h)`.)

    Args:
        units: hidden size ``u``.
        activation, recurrent_activation, use_bias, kernel_initializer, recurrent_initializer,
            bias_initializer, dropout, recurrent_dropout, reset_after: as
            :class:`~rnnkit.layers.GRUCell`.
        return_sequences, return_state, go_backwards, stateful, zero_output_for_mask,
            time_major, backend: as :class:`RNN`.
        layer_norm, zoneout, recurrent_weight_dropout: as :class:`~rnnkit.layers.RecurrentCell`
            (layer-normalised projections, zoneout of ``h``, DropConnect on the recurrent kernel;
            run by the fused backend).
        input_size: input features; ``None`` builds on the first call.
        device, dtype: where to create the parameters.

    Weights (Keras): ``kernel (I, 3u)``, ``recurrent_kernel (u, 3u)``, ``bias (2, 3u)``
    (``(3u,)`` with ``reset_after=False``).
    """

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        zero_output_for_mask: bool = False,
        time_major: bool = False,
        reset_after: bool = True,
        backend: str = "auto",
        *,
        layer_norm: bool = False,
        zoneout: float = 0.0,
        recurrent_weight_dropout: float = 0.0,
        input_size: int | None = None,
        device=None,
        dtype=None,
    ):
        cell = GRUCell(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            reset_after=reset_after,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            layer_norm=layer_norm,
            zoneout=zoneout,
            recurrent_weight_dropout=recurrent_weight_dropout,
            input_size=input_size,
            device=device,
            dtype=dtype,
        )
        super().__init__(
            cell,
            return_sequences,
            return_state,
            go_backwards,
            stateful,
            zero_output_for_mask,
            time_major,
            backend,
        )
