"""The layer options run by the fused backend: layer_norm, zoneout, recurrent_weight_dropout."""

import pytest
import torch

from rnnkit.kernels import dispatch
from rnnkit.layers import GRU, LSTM, Bidirectional, SimpleRNN, lengths_to_mask

LAYERS = {"lstm": LSTM, "gru": GRU, "simple": SimpleRNN}
OPTIONS = [
    {"layer_norm": True},
    {"zoneout": 0.3},
    {"recurrent_weight_dropout": 0.4},
    {"layer_norm": True, "zoneout": 0.2, "recurrent_weight_dropout": 0.3, "dropout": 0.2},
]


def _twins(cell, options, backend, **kw):
    torch.manual_seed(0)
    ref = LAYERS[cell](3, return_sequences=True, backend="reference", input_size=4, **options, **kw)
    other = LAYERS[cell](3, return_sequences=True, backend=backend, input_size=4, **options, **kw)
    other.load_state_dict(ref.state_dict())
    return ref.double(), other.double()


def _run(layer, x, mask, seed):
    torch.manual_seed(seed)  # the same random masks for both layers
    x = x.clone().requires_grad_(True)
    out = layer(x, mask=mask)
    out.square().sum().backward()
    return out, x.grad, [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("backend", ["auto", "fused"])
@pytest.mark.parametrize("training", [True, False])
def test_backends_equal_reference(cell, options, backend, training):
    ref, other = _twins(cell, options, backend)
    ref.train(training), other.train(training)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = lengths_to_mask(torch.tensor([5, 2, 0]), 5, padding="pre")  # left-padded + empty row
    got, want = _run(other, x, mask, seed=1), _run(ref, x, mask, seed=1)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("options", OPTIONS[:3], ids=lambda o: "+".join(o))
def test_auto_never_falls_back_to_the_reference_loop(options):
    layer = LSTM(3, input_size=4, **options)
    layer(torch.randn(2, 3, 4))
    chosen = dispatch.select(layer.cell.spec, **_mask_kwargs(layer))
    # DropConnect only changes the recurrent kernel: torch.nn's kernel runs it exactly
    assert chosen == ("vendor" if "recurrent_weight_dropout" in options else "fused")


def _mask_kwargs(layer):
    return {k: v for k, v in layer.cell.sequence_masks(2, 3).items() if v is not None}


def test_zoneout_eval_is_the_deterministic_expectation_and_training_is_random():
    layer = LSTM(4, zoneout=0.5, return_sequences=True, input_size=3)
    x = torch.randn(2, 6, 3)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_recurrent_weight_dropout_only_in_training_and_fixed_over_the_sequence():
    layer = GRU(4, recurrent_weight_dropout=0.5, return_sequences=True, input_size=3)
    x = torch.randn(2, 6, 3)
    layer.eval()
    plain = GRU(4, return_sequences=True, input_size=3)
    plain.load_state_dict(layer.state_dict())
    plain.eval()
    torch.testing.assert_close(layer(x), plain(x))  # eval: no DropConnect
    layer.train()
    masks = layer.cell.sequence_masks(2, 6)
    assert masks["recurrent_kernel_dropout_mask"].shape == (4, 12)  # one mask per call


def test_layer_norm_weights_in_keras_order_and_round_trip():
    layer = LSTM(3, layer_norm=True, input_size=2)
    shapes = [w.shape for w in layer.get_weights()]
    assert shapes == [(2, 12), (3, 12), (12,), (12,), (12,), (3,), (3,)]
    gammas = layer.get_weights()[3:5]
    assert all((g == 1).all() for g in gammas) and (layer.get_weights()[6] == 0).all()
    other = LSTM(3, layer_norm=True)
    other.set_weights(layer.get_weights())
    x = torch.randn(2, 4, 2)
    torch.testing.assert_close(other(x), layer(x))
    with pytest.raises(ValueError, match="expected 7 arrays"):
        LSTM(3, layer_norm=True).set_weights(layer.get_weights()[:3])


def test_bidirectional_layer_norm_padded_equals_unpadded():
    torch.manual_seed(0)
    bi = Bidirectional(LSTM(3, layer_norm=True, return_sequences=True, input_size=2)).eval()
    x = torch.randn(2, 5, 2)
    mask = lengths_to_mask(torch.tensor([5, 3]), 5)
    out = bi(x, mask=mask)
    single = bi(x[1:, :3])
    torch.testing.assert_close(out[1:, :3], single)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"zoneout": 1.0}, ValueError, r"zoneout must be in \[0, 1\); received zoneout=1.0"),
        ({"zoneout": "x"}, TypeError, "zoneout must be a float"),
        (
            {"recurrent_weight_dropout": -0.1},
            ValueError,
            r"recurrent_weight_dropout must be in \[0, 1\); received recurrent_weight_dropout=-0.1",
        ),
        ({"layer_norm": 1}, TypeError, "layer_norm must be a bool; received layer_norm=1"),
    ],
)
def test_option_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        LSTM(3, **kwargs)


def test_vendor_refuses_layer_norm_with_a_reason():
    layer = LSTM(3, layer_norm=True, backend="vendor", input_size=2)
    with pytest.raises(ValueError, match="backend 'vendor' cannot run this configuration"):
        layer(torch.randn(1, 2, 2))
