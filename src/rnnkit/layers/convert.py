"""Converters between rnnkit layers and ``torch.nn.LSTM / GRU / RNN`` (modules and state dicts).

Keras arrays are handled by the layers themselves (``get_weights`` / ``set_weights``). Here:

- :func:`to_torch_state_dict` / :func:`load_torch_state_dict`: rnnkit layer <-> torch state
  dict (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``);
- :func:`to_torch` / :func:`from_torch`: build the equivalent module on the other side.

Supported shapes: one layer (``LSTM``, ``GRU`` with ``reset_after=True``, ``SimpleRNN`` with
``tanh`` / ``relu``), ``RNN(StackedRNNCells)`` of one cell kind (torch ``num_layers > 1``) and
``Bidirectional`` of one layer (torch ``bidirectional=True``). Loading a torch state dict sums
``b_ih + b_hh`` into Keras' single bias for the LSTM and SimpleRNN (same function).

>>> import torch
>>> lstm = torch.nn.LSTM(4, 3, batch_first=True)
>>> layer = from_torch(lstm, return_sequences=True)
>>> x = torch.randn(2, 5, 4)
>>> torch.testing.assert_close(layer(x), lstm(x)[0])
"""

from __future__ import annotations

import torch
from torch import nn

from rnnkit.kernels.vendor import torch_params
from rnnkit.layers.bidirectional import Bidirectional
from rnnkit.layers.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell, StackedRNNCells
from rnnkit.layers.rnn import GRU, LSTM, RNN, SimpleRNN


def _directions(layer) -> list[tuple[str, RNN]]:
    if isinstance(layer, Bidirectional):
        return [("", layer.forward_layer), ("_reverse", layer.backward_layer)]
    if isinstance(layer, RNN):
        return [("", layer)]
    raise TypeError(
        f"layer must be an rnnkit RNN or Bidirectional; received {type(layer).__name__}"
    )


def _check_convertible(cell: RecurrentCell) -> None:
    from rnnkit.kernels import vendor

    reason = vendor.unsupported_reason(cell.spec)
    if reason is not None:
        raise ValueError(f"{type(cell).__name__} has no torch.nn equivalent: {reason}")


def to_torch_state_dict(layer) -> dict[str, torch.Tensor]:
    """The ``torch.nn.LSTM/GRU/RNN`` state dict with the same function as ``layer``."""
    out: dict[str, torch.Tensor] = {}
    for suffix, sub in _directions(layer):
        for k, cell in enumerate(sub.cells):
            _check_convertible(cell)
            cell._check_built()
            params = [p.detach().clone() for p in torch_params(cell.spec, cell.weights)]
            names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"][: len(params)]
            for name, p in zip(names, params, strict=True):
                out[f"{name}_l{k}{suffix}"] = p.contiguous()
    return out


def _keras_arrays(cell: RecurrentCell, sd: dict, key: str) -> list[torch.Tensor]:
    """Torch tensors -> Keras ``[kernel, recurrent_kernel, bias]`` for ``cell``."""
    w_ih, w_hh = sd[f"weight_ih_{key}"], sd[f"weight_hh_{key}"]
    b_ih, b_hh = sd.get(f"bias_ih_{key}"), sd.get(f"bias_hh_{key}")
    if cell.use_bias != (b_ih is not None):
        raise ValueError(
            f"use_bias={cell.use_bias} but the state dict "
            f"{'has no' if b_ih is None else 'has'} biases for {key}"
        )
    if cell.cell_type == "gru":
        u = cell.units

        def keras_order(w):  # torch r, z, n -> Keras z, r, h (along dim 0)
            return torch.cat([w[u : 2 * u], w[:u], w[2 * u :]], dim=0)

        arrays = [keras_order(w_ih).t(), keras_order(w_hh).t()]
        if b_ih is not None:
            arrays.append(torch.stack([keras_order(b_ih), keras_order(b_hh)]))
        return arrays
    arrays = [w_ih.t(), w_hh.t()]
    if b_ih is not None:
        arrays.append(b_ih + b_hh)
    return arrays


def load_torch_state_dict(layer, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a ``torch.nn.LSTM/GRU/RNN`` state dict into ``layer`` (shapes are checked)."""
    expected = set()
    for suffix, sub in _directions(layer):
        for k, cell in enumerate(sub.cells):
            _check_convertible(cell)
            key = f"l{k}{suffix}"
            names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if cell.use_bias else [])
            expected |= {f"{n}_{key}" for n in names}
            missing = [f"{n}_{key}" for n in names if f"{n}_{key}" not in state_dict]
            if missing:
                raise ValueError(
                    f"state_dict is missing {missing}; received keys {sorted(state_dict)}"
                )
            arrays = _keras_arrays(cell, state_dict, key)
            cell.set_weights([a.detach().cpu().numpy() for a in arrays])
    unexpected = sorted(set(state_dict) - expected)
    if unexpected:
        raise ValueError(f"state_dict has unexpected keys {unexpected}")


_CELLS = {nn.LSTM: LSTMCell, nn.GRU: GRUCell, nn.RNN: SimpleRNNCell}


def from_torch(module: nn.RNNBase, **layer_kwargs):
    """The rnnkit layer equivalent to a ``torch.nn.LSTM/GRU/RNN`` module, with its weights.

    ``num_layers > 1`` gives ``RNN(StackedRNNCells([...]))``; ``bidirectional=True`` (one layer)
    gives ``Bidirectional``; ``batch_first=False`` gives ``time_major=True``. ``layer_kwargs`` go
    to the layer (``return_sequences``, ``return_state``, ...).
    """
    kind = next((t for t in _CELLS if type(module) is t), None)
    if kind is None:
        raise TypeError(
            f"module must be torch.nn.LSTM, GRU or RNN; received {type(module).__name__}"
        )
    if getattr(module, "proj_size", 0):
        raise ValueError(
            f"proj_size has no Keras equivalent; received proj_size={module.proj_size}"
        )
    if module.bidirectional and module.num_layers > 1:
        raise ValueError(
            "bidirectional modules with num_layers > 1 interleave directions; convert one layer "
            f"at a time (received num_layers={module.num_layers}, bidirectional=True)"
        )
    layer_kwargs.setdefault("time_major", not module.batch_first)
    ref = module.weight_ih_l0
    cell_kw = {"use_bias": module.bias, "device": ref.device, "dtype": ref.dtype}
    if kind is nn.RNN:
        cell_kw["activation"] = module.nonlinearity
    sizes = [module.input_size] + [module.hidden_size] * module.num_layers
    if module.num_layers == 1:
        cls = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: SimpleRNN}[kind]
        layer = cls(module.hidden_size, input_size=module.input_size, **cell_kw, **layer_kwargs)
    else:
        cells = [
            _CELLS[kind](module.hidden_size, input_size=sizes[k], **cell_kw)
            for k in range(module.num_layers)
        ]
        layer = RNN(StackedRNNCells(cells), **layer_kwargs)
    if module.bidirectional:
        layer = Bidirectional(layer)
    load_torch_state_dict(layer, module.state_dict())
    return layer


def to_torch(layer) -> nn.RNNBase:
    """The ``torch.nn.LSTM/GRU/RNN`` module equivalent to ``layer``, with its weights."""
    dirs = _directions(layer)
    base = dirs[0][1]
    cells = base.cells
    kinds = {type(c) for _, sub in dirs for c in sub.cells}
    if len(kinds) != 1:
        raise ValueError(
            f"all cells must be of one kind; received {sorted(k.__name__ for k in kinds)}"
        )
    cell = cells[0]
    cell._check_built()
    if any(c.units != cell.units for c in cells):
        raise ValueError("all stacked cells must have the same units for torch.nn modules")
    kw = {
        "num_layers": len(cells),
        "bias": cell.use_bias,
        "batch_first": not base.time_major,
        "bidirectional": isinstance(layer, Bidirectional),
        "device": cell.kernel.device,
        "dtype": cell.kernel.dtype,
    }
    if isinstance(layer, Bidirectional) and len(cells) > 1:
        raise ValueError("Bidirectional of stacked cells has no torch.nn equivalent")
    if isinstance(cell, SimpleRNNCell):
        _check_convertible(cell)
        kw["nonlinearity"] = (
            cell.activation
            if isinstance(cell.activation, str)
            else ("relu" if cell.activation is torch.relu else "tanh")
        )
        module = nn.RNN(cell.input_size, cell.units, **kw)
    else:
        cls = nn.LSTM if isinstance(cell, LSTMCell) else nn.GRU
        module = cls(cell.input_size, cell.units, **kw)
    module.load_state_dict(to_torch_state_dict(layer))
    return module
