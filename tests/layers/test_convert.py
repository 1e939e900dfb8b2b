"""Converters: rnnkit layers and torch.nn.LSTM/GRU/RNN compute the same function."""

import pytest
import torch

from rnnkit.layers import (
    GRU,
    LSTM,
    from_torch,
    load_torch_state_dict,
    to_torch,
    to_torch_state_dict,
)

B, T, I, U = 3, 5, 4, 2


@pytest.mark.parametrize(
    "module",
    [
        lambda: torch.nn.LSTM(I, U, batch_first=True),
        lambda: torch.nn.GRU(I, U, batch_first=True, bias=False),
        lambda: torch.nn.RNN(I, U, batch_first=True, nonlinearity="relu"),
        lambda: torch.nn.LSTM(I, U, num_layers=2, batch_first=True),
        lambda: torch.nn.GRU(I, U, bidirectional=True),
    ],
    ids=["lstm", "gru_nobias", "rnn_relu", "lstm_2layers", "gru_bidir_time_major"],
)
def test_from_torch_and_back(module):
    torch.manual_seed(0)
    m = module()
    layer = from_torch(m, return_sequences=True, return_state=True)
    x = torch.randn(B, T, I) if m.batch_first else torch.randn(T, B, I)
    h0 = torch.randn(m.num_layers * (2 if m.bidirectional else 1), B, U)
    states = [h0[k] for k in range(h0.shape[0])]
    if isinstance(m, torch.nn.LSTM):
        c0 = torch.randn_like(h0)
        want, (h, c) = m(x, (h0, c0))
        init = [s for k in range(h0.shape[0]) for s in (h0[k], c0[k])]
        finals = [s for k in range(h0.shape[0]) for s in (h[k], c[k])]
    else:
        want, h = m(x, h0)
        init, finals = states, [h[k] for k in range(h.shape[0])]
    out, *got = layer(x, initial_state=init)
    torch.testing.assert_close(out, want)
    for a, b in zip(got, finals, strict=True):
        torch.testing.assert_close(a, b)
    back = to_torch(layer)
    for k, v in m.state_dict().items():
        if "bias" in k and isinstance(m, (torch.nn.LSTM, torch.nn.RNN)):
            continue  # Keras has one bias: b_ih + b_hh is kept, the split is not
        torch.testing.assert_close(back.state_dict()[k], v)
    torch.testing.assert_close(
        back(x, h0 if not isinstance(m, torch.nn.LSTM) else (h0, c0))[0], want
    )


def test_state_dict_roundtrip_and_errors():
    torch.manual_seed(0)
    layer = GRU(U, input_size=I)
    sd = to_torch_state_dict(layer)
    assert sorted(sd) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    other = GRU(U)
    load_torch_state_dict(other, sd)
    for a, b in zip(layer.get_weights(), other.get_weights(), strict=True):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b))
    with pytest.raises(ValueError, match="no torch.nn equivalent: GRU with reset_after=False"):
        to_torch_state_dict(GRU(U, reset_after=False, input_size=I))
    with pytest.raises(ValueError, match=r"missing \['bias_ih_l0', 'bias_hh_l0'\]"):
        load_torch_state_dict(GRU(U), {k: v for k, v in sd.items() if "bias" not in k})
    with pytest.raises(ValueError, match=r"expected 3 arrays of shapes \[\(4, 8\)"):
        load_torch_state_dict(LSTM(U), sd)
    with pytest.raises(TypeError, match="module must be torch.nn.LSTM, GRU or RNN"):
        from_torch(torch.nn.Linear(2, 2))
