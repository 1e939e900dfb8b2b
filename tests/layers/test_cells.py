"""Cells: shapes, state sizes, lazy build, stacking and the explicit dropout masks."""

import numpy as np
import pytest
import torch

from rnnkit.layers import LSTM, GRUCell, LSTMCell, SimpleRNNCell, StackedRNNCells


def test_state_and_output_sizes():
    assert SimpleRNNCell(3).state_size == 3
    assert LSTMCell(3).state_size == (3, 3)
    assert GRUCell(3).output_size == 3
    stack = StackedRNNCells([LSTMCell(3), GRUCell(2)])
    assert stack.state_size == ((3, 3), 2) and stack.output_size == 2


def test_lazy_build_uses_first_input():
    cell = GRUCell(2)
    assert cell.kernel is None
    out, (h,) = cell(
        torch.randn(3, 4, dtype=torch.float64), cell.initial_state(3, dtype=torch.float64)
    )
    assert cell.kernel.shape == (4, 6) and cell.kernel.dtype == torch.float64
    assert cell.bias.shape == (2, 6) and out.shape == h.shape == (3, 2)


def test_stacked_step_equals_manual():
    torch.manual_seed(0)
    a, b = LSTMCell(3, input_size=4), SimpleRNNCell(2, input_size=3)
    stack = StackedRNNCells([a, b])
    x = torch.randn(5, 4)
    state = tuple(torch.randn(5, n) for n in stack.state_sizes)
    out, new = stack(x, state)
    y, (h1, c1) = a(x, state[:2])
    y2, (h2,) = b(y, state[2:])
    torch.testing.assert_close(out, y2)
    torch.testing.assert_close(new, (h1, c1, h2))
    assert len(stack.get_weights()) == 6


def test_sequence_masks_scaled_and_only_in_training():
    torch.manual_seed(0)
    cell = LSTMCell(
        4,
        dropout=0.5,
        recurrent_dropout=0.25,
        zoneout=0.3,
        recurrent_weight_dropout=0.2,
        input_size=3,
    )
    masks = cell.sequence_masks(1000, 7)
    inp, rec = masks["input_dropout_mask"], masks["recurrent_dropout_mask"]
    assert inp.shape == (1000, 3) and rec.shape == (1000, 4)
    assert set(inp.unique().tolist()) <= {0.0, 2.0}
    torch.testing.assert_close(rec.unique(), torch.tensor([0.0, 4 / 3]))
    assert abs(inp.mean().item() - 1.0) < 0.1
    zone = masks["zoneout_mask"]  # 1 = keep the previous h, probability 0.3, not rescaled
    assert zone.shape == (1000, 7, 4) and set(zone.unique().tolist()) == {0.0, 1.0}
    assert abs(zone.mean().item() - 0.3) < 0.02
    drop = masks["recurrent_kernel_dropout_mask"]
    assert drop.shape == (4, 16)
    torch.testing.assert_close(drop.unique(), torch.tensor([0.0, 1.25]))
    # keep probabilities 1 - rate (the means of inverted dropout are 1), which a swapped rate
    # would not give: 4,000 recurrent entries kept with 0.75; a 64 x 256 DropConnect mask, 0.8
    assert abs(rec.mean().item() - 1.0) < 0.05
    big = LSTMCell(64, recurrent_weight_dropout=0.2, input_size=3).sequence_masks(2, 3)
    assert abs((big["recurrent_kernel_dropout_mask"] > 0).double().mean().item() - 0.8) < 0.01
    cell.eval()
    assert all(m is None for m in cell.sequence_masks(10, 7).values())


def test_cell_errors():
    with pytest.raises(ValueError, match=r"expected state of shape \[\(2, 3\), \(2, 3\)\]"):
        LSTMCell(3, input_size=2)(torch.zeros(2, 2), (torch.zeros(2, 3),))
    with pytest.raises(ValueError, match="expected inputs with 2 features"):
        LSTMCell(3, input_size=2)(torch.zeros(2, 5), LSTMCell(3).initial_state(2))
    with pytest.raises(TypeError, match="use_bias must be a bool"):
        GRUCell(3, use_bias="yes")
    with pytest.raises(ValueError, match="kernel_initializer must be one of"):
        GRUCell(3, kernel_initializer="he")
    with pytest.raises(TypeError, match="cells must be rnnkit cells"):
        StackedRNNCells([torch.nn.LSTMCell(2, 2)])
    with pytest.raises(ValueError, match=r"shapes \[\(2, 3\), \(3, 3\), \(3,\)\]"):
        SimpleRNNCell(3, input_size=2).set_weights(
            [np.zeros((2, 3)), np.zeros((3, 3)), np.zeros(4)]
        )


@pytest.mark.parametrize("name", ["kernel", "recurrent_kernel", "bias"])
def test_a_parametrized_weight_is_what_the_layer_runs(name):
    # torch.nn.utils.parametrize (weight norm and the like) replaces the parameter by a property:
    # the layer must run (and differentiate) the parametrized value, on every backend
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    for backend in ("reference", "fused", "vendor"):
        plain = LSTM(5, input_size=4, backend=backend)
        layer = LSTM(5, input_size=4, backend=backend)
        layer.load_state_dict(plain.state_dict())
        with torch.no_grad():
            getattr(plain.cell, name).mul_(2)
        parametrize.register_parametrization(layer.cell, name, Double())
        torch.testing.assert_close(layer(x), plain(x))
        layer(x).sum().backward()
        original = getattr(layer.cell.parametrizations, name).original
        assert original.grad is not None and original.grad.abs().sum() > 0
