"""Bidirectional: merge modes, state order, padded == unpadded per sequence, weights, errors."""

import pytest
import torch

from rnnkit.layers import GRU, LSTM, Bidirectional, SimpleRNN, lengths_to_mask

B, T, I, U = 3, 5, 4, 2


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_padded_batch_equals_each_sequence_unpadded(padding, backend):
    torch.manual_seed(0)
    bi = Bidirectional(
        LSTM(U, return_sequences=True, return_state=True, input_size=I, backend=backend)
    )
    lengths = torch.tensor([5, 3, 0])
    mask = lengths_to_mask(lengths, T, padding=padding)
    x = torch.randn(B, T, I)
    out, hf, cf, hb, cb = bi(x, mask=mask)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            assert (out[b] == 0).all() and (hb[b] == 0).all()
            continue
        o, *s = bi(x[b : b + 1, mask[b]])
        torch.testing.assert_close(out[b, mask[b]], o[0])
        for got, want in zip((hf, cf, hb, cb), s, strict=True):
            torch.testing.assert_close(got[b : b + 1], want)
        assert (out[b, ~mask[b]] == 0).all()  # zero_output_for_mask with return_sequences


def test_last_output_of_backward_direction_left_padded():
    torch.manual_seed(0)
    bi = Bidirectional(GRU(U, input_size=I))  # return_sequences=False
    x = torch.randn(1, T, I)
    mask = lengths_to_mask(torch.tensor([3]), T, padding="pre")
    torch.testing.assert_close(bi(x, mask=mask), bi(x[:, 2:]))


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_merge_modes(merge_mode):
    torch.manual_seed(0)
    bi = Bidirectional(SimpleRNN(U, return_sequences=True, input_size=I), merge_mode=merge_mode)
    x = torch.randn(B, T, I)
    f = bi.forward_layer(x)
    b = bi.backward_layer(x).flip(1)
    want = {
        "concat": torch.cat([f, b], -1),
        "sum": f + b,
        "mul": f * b,
        "ave": (f + b) / 2,
    }
    got = bi(x)
    if merge_mode is None:
        torch.testing.assert_close(got[0], f)
        torch.testing.assert_close(got[1], b)
    else:
        torch.testing.assert_close(got, want[merge_mode])


def test_weights_forward_then_backward_and_initial_state():
    torch.manual_seed(0)
    bi = Bidirectional(LSTM(U, return_state=True, input_size=I))
    w = bi.get_weights()
    assert len(w) == 6
    torch.testing.assert_close(torch.as_tensor(w[0]), bi.forward_layer.cell.kernel.detach())
    assert not torch.equal(bi.forward_layer.cell.kernel, bi.backward_layer.cell.kernel)
    other = Bidirectional(LSTM(U, return_state=True))
    other.set_weights(w)
    x = torch.randn(B, T, I)
    init = [torch.randn(B, U) for _ in range(4)]
    for a, b in zip(bi(x, initial_state=init), other(x, initial_state=init), strict=True):
        torch.testing.assert_close(a, b)


def test_errors():
    with pytest.raises(ValueError, match="merge_mode must be one of .*received merge_mode='max'"):
        Bidirectional(LSTM(U), merge_mode="max")
    with pytest.raises(TypeError, match="layer must be an rnnkit recurrent layer"):
        Bidirectional(torch.nn.LSTM(2, 2))
    with pytest.raises(ValueError, match="backward_layer.go_backwards must be the opposite"):
        Bidirectional(LSTM(U), backward_layer=LSTM(U))
    with pytest.raises(ValueError, match="backward_layer.return_sequences must equal"):
        Bidirectional(LSTM(U), backward_layer=LSTM(U, go_backwards=True, return_sequences=True))
    bi = Bidirectional(LSTM(U, input_size=I))
    with pytest.raises(ValueError, match="initial_state must have 4 tensors"):
        bi(torch.randn(B, T, I), initial_state=[torch.zeros(B, U)])
    with pytest.raises(ValueError, match=r"expected 6 arrays \(3 forward, then 3 backward\)"):
        bi.set_weights(bi.get_weights()[:3])
