"""The reference loop against a hand-stepped loop over the cells (an independent oracle)."""

import pytest
import torch

from rnnkit.kernels import reference
from rnnkit.layers import GRUCell, LSTMCell, SimpleRNNCell

B, T, I, U = 3, 5, 4, 2
MASK = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)


def hand_loop(cell, x, state, mask, go_backwards, zero_output):
    """Keras' masking rule, stepping the cell module directly."""
    prev = torch.zeros(x.shape[0], cell.units, dtype=x.dtype)
    outs = []
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    for t in steps:
        out, new = cell(x[:, t], state)
        valid = mask[:, t, None]
        state = tuple(torch.where(valid, n, s) for n, s in zip(new, state, strict=True))
        out = torch.where(valid, out, torch.zeros_like(out) if zero_output else prev)
        prev = out
        outs.append(out)
    return torch.stack(outs, 1), state


CELLS = [
    lambda: SimpleRNNCell(U, input_size=I, dtype=torch.float64),
    lambda: LSTMCell(U, input_size=I, dtype=torch.float64),
    lambda: GRUCell(U, input_size=I, dtype=torch.float64),
    lambda: GRUCell(U, reset_after=False, input_size=I, dtype=torch.float64),
    lambda: LSTMCell(U, recurrent_activation="hard_sigmoid", input_size=I, dtype=torch.float64),
]


@pytest.mark.parametrize("make", CELLS, ids=["simple", "lstm", "gru", "gru_v1", "lstm_hard"])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
def test_reference_equals_hand_loop(make, go_backwards, zero_output):
    torch.manual_seed(0)
    cell = make()
    with torch.no_grad():
        if cell.bias is not None:
            cell.bias.normal_()
    x = torch.randn(B, T, I, dtype=torch.float64)
    h0 = tuple(torch.randn(B, U, dtype=torch.float64) for _ in cell.state_sizes)
    out, final = reference.run(
        cell.spec,
        cell.weights,
        x,
        h0,
        mask=MASK,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output,
    )
    want_out, want_final = hand_loop(cell, x, h0, MASK, go_backwards, zero_output)
    torch.testing.assert_close(out, want_out)
    for a, b in zip(final, want_final, strict=True):
        torch.testing.assert_close(a, b)
    # empty row: final state is the initial state, outputs zero
    for a, b in zip(final, h0, strict=True):
        torch.testing.assert_close(a[1], b[1])
    assert (out[1] == 0).all()


def test_reference_gradcheck():
    torch.manual_seed(0)
    cell = LSTMCell(U, input_size=I, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, U, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, U, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, k, rk, b):
        from rnnkit.kernels.spec import RecurrentWeights

        out, (h, c) = reference.run(cell.spec, RecurrentWeights(k, rk, b), x, (h0, c0), mask=MASK)
        return out, h, c

    assert torch.autograd.gradcheck(
        f, (x, h0, c0, *[p.detach().requires_grad_() for p in cell.weights[:3]])
    )
