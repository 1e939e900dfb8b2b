r"""Recurrent cells: one time step ``(x_t, state) -> (output, new_state)``, Keras weight layout.

A cell holds ``kernel (I, G*u)``, ``recurrent_kernel (u, G*u)`` and ``bias`` exactly as Keras
does (gate order LSTM ``i, f, c, o``; GRU ``z, r, h``) and steps with the equations of
:mod:`rnnkit.kernels.steps`. The time loop, masking, direction and dropout-mask drawing belong to
:class:`rnnkit.layers.RNN`; a cell only says what one step is (its :attr:`spec` and
:attr:`weights` are what a backend needs to run a whole sequence).

Lazy building: when ``input_size`` is omitted, the parameters do not exist until the first call
(or :meth:`build`, or :meth:`set_weights`, which reads the size from the kernel), like
``torch.nn.LazyLinear``. They are then created on the device and dtype given to the constructor,
or else those of the first input. Create the optimiser after that first call.

>>> cell = LSTMCell(3, input_size=2)
>>> [tuple(w.shape) for w in cell.get_weights()]
[(2, 12), (3, 12), (12,)]
>>> h, (h, c) = cell(torch.zeros(5, 2), cell.initial_state(5))
>>> tuple(h.shape), tuple(c.shape)
((5, 3), (5, 3))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rnnkit.kernels import reference
from rnnkit.kernels.activations import get_activation
from rnnkit.kernels.masks import bernoulli_mask
from rnnkit.kernels.spec import GATES, LayerNormWeights, RecurrenceSpec, RecurrentWeights
from rnnkit.layers.initializers import get_initializer, unit_forget_bias_

State = tuple[torch.Tensor, ...]


def check_rate(name: str, value: float) -> float:
    """Dropout rates must be in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1); received {name}={value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1); received {name}={value}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int; received {name}={value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int; received {name}={value}")
    return int(value)


def draw_dropout_mask(
    rate: float, shape: tuple[int, ...], device, dtype, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A Bernoulli keep-mask scaled by ``1/(1-rate)`` (inverted dropout).

    Drawn by :func:`rnnkit.kernels.masks.bernoulli_mask`: on the CPU a DropConnect mask of a
    ``(256, 1024)`` recurrent kernel takes ~0.1 ms there against 2.1 ms for torch's
    ``bernoulli_`` (5% of that LSTM's training step at the benchmark shape).
    """
    keep = bernoulli_mask(shape, 1.0 - rate, device=device, dtype=dtype, generator=generator)
    return keep.div_(1.0 - rate)


class RecurrentCell(nn.Module):
    """Base of the Keras cells; subclasses set ``cell_type`` and the bias shape.

    Args:
        units: hidden size ``u`` (positive int).
        activation: candidate/output activation, a Keras name or a callable.
        recurrent_activation: gate activation (LSTM, GRU).
        use_bias: whether the cell has a bias.
        kernel_initializer, recurrent_initializer, bias_initializer: Keras names or callables
            ``f(tensor) -> tensor`` (in place).
        dropout: rate of the input dropout, in ``[0, 1)``.
        recurrent_dropout: rate of the recurrent dropout, in ``[0, 1)``.
        layer_norm: layer-normalise the input and recurrent projections (and the LSTM cell
            state), as in LayerNorm-LSTM (Ba et al. 2016; haste); adds the gains
            ``input_gamma (G*u,)``, ``recurrent_gamma (G*u,)`` and, for the LSTM,
            ``cell_gamma (u,)``, ``cell_beta (u,)``. Equations: :mod:`rnnkit.kernels.steps`.
        zoneout: probability in ``[0, 1)`` that a unit of ``h`` keeps its previous value at a
            step (Krueger et al. 2017); in eval mode the expectation
            ``h = p h_prev + (1 - p) h_new`` is used.
        recurrent_weight_dropout: DropConnect rate in ``[0, 1)`` on ``recurrent_kernel`` (AWD-LSTM
            weight drop): one mask per call, in training mode only.
        input_size: input features ``I``; ``None`` builds on the first call.
        device, dtype: where to create the parameters.
    """

    cell_type: str = ""

    def __init__(
        self,
        units: int,
        *,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        layer_norm: bool = False,
        zoneout: float = 0.0,
        recurrent_weight_dropout: float = 0.0,
        input_size: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.units = check_positive_int("units", units)
        get_activation(activation, argument="activation")
        get_activation(recurrent_activation, argument="recurrent_activation")
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        if not isinstance(use_bias, bool):
            raise TypeError(f"use_bias must be a bool; received use_bias={use_bias!r}")
        self.use_bias = use_bias
        self.kernel_initializer = get_initializer(kernel_initializer, argument="kernel_initializer")
        self.recurrent_initializer = get_initializer(
            recurrent_initializer, argument="recurrent_initializer"
        )
        self.bias_initializer = get_initializer(bias_initializer, argument="bias_initializer")
        self.dropout = check_rate("dropout", dropout)
        self.recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm must be a bool; received layer_norm={layer_norm!r}")
        self.layer_norm = layer_norm
        self.zoneout = check_rate("zoneout", zoneout)
        self.recurrent_weight_dropout = check_rate(
            "recurrent_weight_dropout", recurrent_weight_dropout
        )
        self._device, self._dtype = device, dtype
        self.input_size: int | None = None
        self.kernel: nn.Parameter | None
        self.recurrent_kernel: nn.Parameter | None
        self.bias: nn.Parameter | None
        self.register_parameter("kernel", None)
        self.register_parameter("recurrent_kernel", None)
        self.register_parameter("bias", None)
        for name in LayerNormWeights._fields:
            self.register_parameter(name, None)
        if input_size is not None:
            self.build(check_positive_int("input_size", input_size))

    # --- shapes -------------------------------------------------------------------------
    @property
    def gates(self) -> int:
        return GATES[self.cell_type]

    @property
    def state_size(self):
        """``units`` for one-state cells, ``(units, units)`` for the LSTM (``h``, ``c``)."""
        return self.units

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """The state sizes as a flat tuple (one entry per state tensor)."""
        return (self.units,)

    @property
    def output_size(self) -> int:
        return self.units

    def _bias_shape(self) -> tuple[int, ...]:
        return (self.gates * self.units,)

    @property
    def built(self) -> bool:
        return self.kernel is not None

    def build(self, input_size: int, device=None, dtype=None) -> None:
        """Create the parameters for ``input_size`` features (no-op when already built)."""
        if self.built:
            return
        input_size = check_positive_int("input_size", input_size)
        kw = {
            "device": self._device if self._device is not None else device,
            "dtype": self._dtype if self._dtype is not None else dtype,
        }
        gu = self.gates * self.units
        self.input_size = input_size
        self.kernel = nn.Parameter(torch.empty(input_size, gu, **kw))
        self.recurrent_kernel = nn.Parameter(torch.empty(self.units, gu, **kw))
        if self.use_bias:
            self.bias = nn.Parameter(torch.empty(self._bias_shape(), **kw))
        for name, shape in self._layer_norm_shapes():
            setattr(self, name, nn.Parameter(torch.empty(shape, **kw)))
        self.reset_parameters()

    def _layer_norm_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the layer-norm parameters (none without ``layer_norm``)."""
        if not self.layer_norm:
            return []
        gu = self.gates * self.units
        shapes = [("input_gamma", (gu,)), ("recurrent_gamma", (gu,))]
        if self.cell_type == "lstm":
            shapes += [("cell_gamma", (self.units,)), ("cell_beta", (self.units,))]
        return shapes

    def reset_parameters(self) -> None:
        """Re-draw the parameters with the cell's initialisers."""
        if not self.built:
            return
        self.kernel_initializer(self.kernel.data)
        self.recurrent_initializer(self.recurrent_kernel.data)
        if self.bias is not None:
            self.bias_initializer(self.bias.data)
        for name, _ in self._layer_norm_shapes():  # gains 1, cell-state bias 0 (haste)
            getattr(self, name).data.fill_(0.0 if name == "cell_beta" else 1.0)

    def _check_built(self) -> None:
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} is not built yet: call it once or give input_size="
            )

    # --- what a backend needs ---------------------------------------------------------------
    @property
    def spec(self) -> RecurrenceSpec:
        return RecurrenceSpec(
            self.cell_type,
            self.units,
            activation=self.activation,
            recurrent_activation=self.recurrent_activation,
            use_bias=self.use_bias,
            reset_after=vars(self).get("reset_after", True),  # (GRU only; no AttributeError)
            layer_norm=self.layer_norm,
            zoneout=self.zoneout,
        )

    @property
    def weights(self) -> RecurrentWeights:
        # attributes, not self._parameters: a parametrization (torch.nn.utils.parametrize, weight
        # norm) replaces a parameter by a property
        kernel = self.kernel  # (read once: each is a Module.__getattr__)
        if kernel is None:
            self._check_built()
        ln = None
        if self.layer_norm:
            ln = LayerNormWeights(*(getattr(self, n) for n in LayerNormWeights._fields))
        return RecurrentWeights(kernel, self.recurrent_kernel, self.bias, ln)

    def parameter_list(self) -> list[nn.Parameter]:
        """The parameters in Keras order: ``kernel, recurrent_kernel[, bias]`` then the layer-norm
        parameters (``input_gamma, recurrent_gamma[, cell_gamma, cell_beta]``)."""
        self._check_built()
        names = ["kernel", "recurrent_kernel"] + (["bias"] if self.use_bias else [])
        return [getattr(self, n) for n in names + [n for n, _ in self._layer_norm_shapes()]]

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: a tuple of ``(batch_size, units)`` tensors."""
        if device is None and self.kernel is not None:
            device = self.kernel.device
        if dtype is None:
            dtype = self.kernel.dtype if self.kernel is not None else torch.get_default_dtype()
        return tuple(
            torch.zeros(batch_size, n, device=device, dtype=dtype) for n in self.state_sizes
        )

    def sequence_masks(
        self,
        batch_size: int,
        steps: int,
        device=None,
        dtype=None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Draw the random masks of one call, as keyword arguments of a backend's ``run``.

        ``input_dropout_mask (B, I)`` and ``recurrent_dropout_mask (B, u)`` (scaled keep-masks,
        fixed over time), ``zoneout_mask (B, T, u)`` (1 = keep the previous ``h``) and
        ``recurrent_kernel_dropout_mask (u, G*u)`` (scaled DropConnect mask). Each is ``None``
        where its rate is 0 or in eval mode (Keras: regularisers act only in training).
        """
        self._check_built()
        masks: dict[str, torch.Tensor | None] = {
            "input_dropout_mask": None,
            "recurrent_dropout_mask": None,
            "zoneout_mask": None,
            "recurrent_kernel_dropout_mask": None,
        }
        if not self.training:
            return masks
        device = device if device is not None else self.kernel.device
        dtype = dtype if dtype is not None else self.kernel.dtype
        u, gu = self.units, self.gates * self.units
        for key, rate, shape in (
            ("input_dropout_mask", self.dropout, (batch_size, self.input_size)),
            ("recurrent_dropout_mask", self.recurrent_dropout, (batch_size, u)),
            ("recurrent_kernel_dropout_mask", self.recurrent_weight_dropout, (u, gu)),
        ):
            if rate > 0:
                masks[key] = draw_dropout_mask(rate, shape, device, dtype, generator)
        if self.zoneout > 0:  # drawn time-major, the order the backends read it in
            shape, p = (steps, batch_size, u), self.zoneout
            keep = bernoulli_mask(shape, p, device=device, dtype=dtype, generator=generator)
            masks["zoneout_mask"] = keep.transpose(0, 1)
        return masks

    # --- one step ---------------------------------------------------------------------------
    def _normalise_state(self, state, batch_size: int) -> State:
        if isinstance(state, torch.Tensor):
            state = (state,)
        if not isinstance(state, (tuple, list)):
            raise TypeError(
                f"state must be a tensor or a tuple of tensors; received {type(state).__name__}"
            )
        state = tuple(state)
        expected = [(batch_size, n) for n in self.state_sizes]
        got = [tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in state]
        if got != expected:
            raise ValueError(f"expected state of shape {expected}; received {got}")
        return state

    def forward(
        self,
        inputs: torch.Tensor,
        state,
        **masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, State]:
        """One step: the reference recurrence over a sequence of length one.

        Args:
            inputs: ``(B, I)``.
            state: tuple of ``(B, u)`` tensors (a bare tensor is accepted for one-state cells).
            **masks: the masks of :meth:`sequence_masks` (``input_dropout_mask``,
                ``recurrent_dropout_mask``, ``recurrent_kernel_dropout_mask``, and
                ``zoneout_mask`` of shape ``(B, 1, u)`` for this step), or none of them.

        Returns:
            ``(output (B, u), new_state)``. The cell draws no mask itself: the layer draws them
            once per sequence (:meth:`sequence_masks`) and passes them in.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
            raise ValueError(
                "inputs must be a (batch, features) tensor; received "
                f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)}"
            )
        self.build(inputs.shape[-1], inputs.device, inputs.dtype)
        if inputs.shape[-1] != self.input_size:
            raise ValueError(
                f"expected inputs with {self.input_size} features; "
                f"received inputs of shape {tuple(inputs.shape)}"
            )
        state = self._normalise_state(state, inputs.shape[0])
        out, new_state = reference.run(self.spec, self.weights, inputs[:, None], state, **masks)
        return out[:, 0], new_state

    # --- Keras weights ----------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """``[kernel (I, G*u), recurrent_kernel (u, G*u), bias]``; no bias without ``use_bias``."""
        self._check_built()
        return [p.detach().cpu().numpy().copy() for p in self.parameter_list()]

    def weight_shapes(self, input_size: int | None = None) -> list[tuple[int, ...]]:
        input_size = self.input_size if input_size is None else input_size
        gu = self.gates * self.units
        shapes = [(input_size, gu), (self.units, gu)]
        if self.use_bias:
            shapes.append(self._bias_shape())
        return shapes + [shape for _, shape in self._layer_norm_shapes()]

    def set_weights(self, weights: Sequence) -> None:
        """Load Keras arrays (the layout of :meth:`get_weights`); shapes are checked first."""
        weights = list(weights)
        if not self.built:
            if not weights or np.ndim(weights[0]) != 2:
                raise ValueError(
                    f"{type(self).__name__}.set_weights expected a 2-D kernel first; "
                    f"received {[np.shape(w) for w in weights]}"
                )
            input_size = int(np.shape(weights[0])[0])
        else:
            input_size = self.input_size
        expected = self.weight_shapes(input_size)
        received = [tuple(np.shape(w)) for w in weights]
        if received != expected:
            raise ValueError(
                f"{type(self).__name__}.set_weights expected {len(expected)} arrays of shapes "
                f"{expected}; received shapes {received}"
            )
        self.build(input_size)
        with torch.no_grad():
            for p, w in zip(self.parameter_list(), weights, strict=True):
                p.copy_(torch.as_tensor(np.asarray(w), dtype=p.dtype))

    def extra_repr(self) -> str:
        return f"units={self.units}, input_size={self.input_size}"


class SimpleRNNCell(RecurrentCell):
    r"""Fully connected RNN cell (Keras ``SimpleRNNCell``).

    .. math:: h_t = \phi(x_t W + b + h_{t-1} U)

    Args:
        units: hidden size ``u``.
        activation: :math:`\phi`, default ``"tanh"``.
        **kwargs: see :class:`RecurrentCell`.

    Weights: ``kernel (I, u)``, ``recurrent_kernel (u, u)``, ``bias (u,)``.
    """

    cell_type = "simple"

    def __init__(self, units: int, activation="tanh", use_bias: bool = True, **kwargs):
        super().__init__(units, activation=activation, use_bias=use_bias, **kwargs)


class LSTMCell(RecurrentCell):
    r"""Long short-term memory cell (Keras ``LSTMCell``), gate order ``i, f, c, o``.

    .. math::
        [i, f, g, o] = x_t W + b + h_{t-1} U, \quad
        c_t = \sigma(f) c_{t-1} + \sigma(i) \phi(g), \quad h_t = \sigma(o) \phi(c_t)

    Args:
        units: hidden size ``u``.
        activation: :math:`\phi`, default ``"tanh"``.
        recurrent_activation: :math:`\sigma`, default ``"sigmoid"``.
        unit_forget_bias: initialise the forget-gate bias to one (Keras default ``True``).
        **kwargs: see :class:`RecurrentCell`.

    State: ``(h, c)``, each ``(B, u)``. Weights: ``kernel (I, 4u)``, ``recurrent_kernel (u, 4u)``,
    ``bias (4u,)``.
    """

    cell_type = "lstm"

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        unit_forget_bias: bool = True,
        **kwargs,
    ):
        self.unit_forget_bias = bool(unit_forget_bias)
        super().__init__(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            **kwargs,
        )

    @property
    def state_size(self):
        return (self.units, self.units)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.units, self.units)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None and self.unit_forget_bias:
            unit_forget_bias_(self.bias.data)


class GRUCell(RecurrentCell):
    r"""Gated recurrent unit cell (Keras ``GRUCell``), gate order ``z, r, h``.

    ``reset_after=True`` (Keras 2+ default, cuDNN / ``torch.nn.GRU`` form):

    .. math::
        z = \sigma(x_z + h U_z + b^r_z), \; r = \sigma(x_r + h U_r + b^r_r), \;
        \tilde h = \phi(x_h + r \odot (h U_h + b^r_h)), \; h_t = z h_{t-1} + (1 - z) \tilde h

    ``reset_after=False`` (the original GRU): :math:`\tilde h = \phi(x_h + (r \odot h) U_h)`.

    Args:
        units: hidden size ``u``.
        reset_after: where the reset gate applies (see above).
        **kwargs: see :class:`RecurrentCell`.

    Weights: ``kernel (I, 3u)``, ``recurrent_kernel (u, 3u)``, ``bias (2, 3u)`` with
    ``reset_after=True`` (row 0 input bias, row 1 recurrent bias), else ``bias (3u,)``.
    """

    cell_type = "gru"

    def __init__(
        self,
        units: int,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias: bool = True,
        reset_after: bool = True,
        **kwargs,
    ):
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool; received reset_after={reset_after!r}")
        self.reset_after = reset_after
        super().__init__(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            **kwargs,
        )

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)


class StackedRNNCells(nn.Module):
    """Cells applied one after another at each step (Keras ``StackedRNNCells``).

    The output of cell ``k`` is the input of cell ``k + 1``; the state is the flat tuple of all
    cells' states in order (LSTM cells contribute ``h, c``).

    Args:
        cells: a non-empty sequence of cells.

    >>> stack = StackedRNNCells([LSTMCell(4, input_size=3), GRUCell(2)])
    >>> out, state = stack(torch.zeros(1, 3), stack.initial_state(1))
    >>> tuple(out.shape), [tuple(s.shape) for s in state]
    ((1, 2), [(1, 4), (1, 4), (1, 2)])
    """

    def __init__(self, cells: Sequence[RecurrentCell]):
        super().__init__()
        cells = list(cells) if isinstance(cells, (list, tuple, nn.ModuleList)) else cells
        if not isinstance(cells, list) or not cells:
            raise ValueError(f"cells must be a non-empty list of cells; received cells={cells!r}")
        for c in cells:
            if not isinstance(c, RecurrentCell):
                raise TypeError(
                    "cells must be rnnkit cells (SimpleRNNCell, LSTMCell, GRUCell); "
                    f"received {type(c).__name__}"
                )
        self.cells = nn.ModuleList(cells)

    @property
    def state_size(self) -> tuple:
        return tuple(c.state_size for c in self.cells)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return tuple(n for c in self.cells for n in c.state_sizes)

    @property
    def output_size(self) -> int:
        return self.cells[-1].output_size

    @property
    def input_size(self) -> int | None:
        return self.cells[0].input_size

    @property
    def built(self) -> bool:
        return all(c.built for c in self.cells)

    def build(self, input_size: int, device=None, dtype=None) -> None:
        for c in self.cells:
            c.build(input_size, device, dtype)
            input_size = c.output_size

    def reset_parameters(self) -> None:
        for c in self.cells:
            c.reset_parameters()

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        return tuple(s for c in self.cells for s in c.initial_state(batch_size, device, dtype))

    def split_state(self, state: Sequence[torch.Tensor]) -> list[State]:
        out, i = [], 0
        for c in self.cells:
            n = len(c.state_sizes)
            out.append(tuple(state[i : i + n]))
            i += n
        return out

    def forward(self, inputs: torch.Tensor, state, *, masks=None):
        """One step through all cells; ``masks`` is a list of per-cell mask dicts
        (:meth:`RecurrentCell.sequence_masks`)."""
        if isinstance(state, torch.Tensor):
            state = (state,)
        state = tuple(state)
        if len(state) != len(self.state_sizes):
            raise ValueError(
                f"expected {len(self.state_sizes)} state tensors; received {len(state)}"
            )
        new_states: list[torch.Tensor] = []
        x = inputs
        for k, (c, s) in enumerate(zip(self.cells, self.split_state(state), strict=True)):
            x, ns = c(x, s, **(masks[k] if masks is not None else {}))
            new_states.extend(ns)
        return x, tuple(new_states)

    def get_weights(self) -> list[np.ndarray]:
        return [w for c in self.cells for w in c.get_weights()]

    def set_weights(self, weights: Sequence) -> None:
        weights = list(weights)
        i = 0
        for c in self.cells:
            n = len(c.weight_shapes(0))
            c.set_weights(weights[i : i + n])
            i += n
        if i != len(weights):
            raise ValueError(
                f"StackedRNNCells.set_weights expected {i} arrays; received {len(weights)}"
            )
