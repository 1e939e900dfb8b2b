"""RNN / LSTM / GRU / SimpleRNN layers: backends agree, Keras conventions, invariants, errors."""

import numpy as np
import pytest
import torch

from rnnkit.layers import (
    GRU,
    LSTM,
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    SimpleRNN,
    SimpleRNNCell,
    lengths_to_mask,
)

B, T, I, U = 3, 5, 4, 2
F64 = torch.float64
MASKS = {
    "none": None,
    "right": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool),
    "left": torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool),
    "arbitrary": torch.tensor(
        [[1, 0, 1, 1, 0], [0, 1, 0, 0, 1], [1, 1, 0, 1, 1]], dtype=torch.bool
    ),
}


def make_cell(kind):
    return {
        "lstm": lambda: LSTMCell(U, dtype=F64),
        "gru": lambda: GRUCell(U, dtype=F64),
        "simple": lambda: SimpleRNNCell(U, dtype=F64),
        "stacked": lambda: [LSTMCell(3, dtype=F64), GRUCell(U, dtype=F64)],
    }[kind]()


def run_layer(layer, x, mask, init):
    out = layer(x, mask=mask, initial_state=init)
    return out if isinstance(out, list) else [out]


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple", "stacked"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize(
    ("go_backwards", "return_state", "with_init"),
    [(False, True, True), (True, True, False), (True, False, True)],
)
def test_auto_equals_reference_forward_and_backward(
    kind, mask_name, go_backwards, return_state, with_init
):
    torch.manual_seed(0)
    cell = make_cell(kind)
    kw = dict(return_sequences=True, return_state=return_state, go_backwards=go_backwards)
    auto = RNN(cell, **kw)
    ref = RNN(auto.cell, backend="reference", **kw)  # same parameters
    x = torch.randn(B, T, I, dtype=F64, requires_grad=True)
    auto(x)  # build
    init = None
    if with_init:
        init = [torch.randn(B, n, dtype=F64, requires_grad=True) for n in auto.cell.state_sizes]
    mask = MASKS[mask_name]
    results = []
    for layer in (auto, ref):
        outs = run_layer(layer, x, mask, init)
        loss = sum(
            (o * (k + 1) * torch.cos(torch.arange(o.numel(), dtype=F64).view_as(o))).sum()
            for k, o in enumerate(outs)
        )
        leaves = [x, *auto.parameters(), *(init or [])]
        results.append((outs, torch.autograd.grad(loss, leaves)))
    (o1, g1), (o2, g2) = results
    assert len(o1) == (1 + len(auto.cell.state_sizes) if return_state else 1)
    for a, b in zip(o1 + list(g1), o2 + list(g2), strict=True):
        torch.testing.assert_close(a, b)


def test_return_conventions_match_keras():
    x = torch.randn(B, T, I)
    out = LSTM(U)(x)
    assert out.shape == (B, U)
    out, h, c = LSTM(U, return_state=True)(x)
    torch.testing.assert_close(out, h)
    seq, h = GRU(U, return_sequences=True, return_state=True)(x)
    assert seq.shape == (B, T, U)
    torch.testing.assert_close(seq[:, -1], h)
    out, h = SimpleRNN(U, return_state=True)(x)
    assert c.shape == h.shape == (B, U)


def test_go_backwards_returns_reversed_sequence():
    torch.manual_seed(0)
    fwd = LSTM(U, return_sequences=True, input_size=I)
    bwd = LSTM(U, return_sequences=True, go_backwards=True, input_size=I)
    bwd.set_weights(fwd.get_weights())
    x = torch.randn(B, T, I)
    torch.testing.assert_close(bwd(x), fwd(x.flip(1)))


def test_time_major():
    torch.manual_seed(0)
    a = GRU(U, return_sequences=True, input_size=I)
    b = GRU(U, return_sequences=True, time_major=True, input_size=I)
    b.set_weights(a.get_weights())
    x = torch.randn(B, T, I)
    torch.testing.assert_close(
        b(x.transpose(0, 1), lengths=torch.tensor([5, 2, 0])).transpose(0, 1),
        a(x, lengths=torch.tensor([5, 2, 0])),
    )


@pytest.mark.parametrize("backend", ["vendor", "reference"])
def test_masked_steps_leave_state_unchanged(backend):
    torch.manual_seed(0)
    layer = LSTM(U, return_sequences=True, return_state=True, input_size=I, backend=backend)
    x = torch.randn(B, T, I)
    mask = MASKS["arbitrary"]
    out_m, h_m, c_m = layer(x, mask=mask)
    # the same sequences with the masked steps removed
    for b in range(B):
        xb = x[b : b + 1, mask[b]]
        out, h, c = layer(xb)
        torch.testing.assert_close(h, h_m[b : b + 1])
        torch.testing.assert_close(c, c_m[b : b + 1])
        torch.testing.assert_close(out[0], out_m[b, mask[b]])
    # masked step outputs repeat the previous output (zeros before the first valid step)
    torch.testing.assert_close(out_m[0, 1], out_m[0, 0])
    assert (out_m[1, 0] == 0).all()


def test_left_and_right_padding_agree():
    torch.manual_seed(0)
    layer = GRU(U, return_sequences=True, return_state=True, input_size=I)
    lengths = torch.tensor([5, 3, 0])
    right = torch.randn(B, T, I)
    left = torch.zeros_like(right)
    for b, n in enumerate(lengths.tolist()):
        left[b, T - n :] = right[b, :n]
    out_r, h_r = layer(right, mask=lengths_to_mask(lengths, T))
    out_l, h_l = layer(left, mask=lengths_to_mask(lengths, T, padding="pre"))
    torch.testing.assert_close(h_r, h_l)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out_r[b, :n], out_l[b, T - n :])


def test_lengths_equal_mask():
    torch.manual_seed(0)
    layer = SimpleRNN(U, return_sequences=True, input_size=I)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([5, 2, 0])
    torch.testing.assert_close(
        layer(x, lengths=lengths), layer(x, mask=lengths_to_mask(lengths, T))
    )


def test_stateful_carries_until_reset():
    torch.manual_seed(0)
    layer = LSTM(U, stateful=True, return_state=True, input_size=I)
    x = torch.randn(B, 2 * T, I)
    ref = LSTM(U, return_state=True, input_size=I)
    ref.set_weights(layer.get_weights())
    _, h_whole, c_whole = ref(x)
    layer(x[:, :T])
    _, h, c = layer(x[:, T:])
    torch.testing.assert_close(h, h_whole)
    torch.testing.assert_close(c, c_whole)
    assert not layer.states[0].requires_grad
    layer.reset_states()
    _, h2, _ = layer(x[:, T:])
    torch.testing.assert_close(h2, ref(x[:, T:])[1])
    with pytest.raises(
        ValueError, match="expected batch size 3, received inputs with batch size 2"
    ):
        layer(x[:2])
    layer.reset_states([np.ones((B, U), np.float32), np.zeros((B, U), np.float32)])
    torch.testing.assert_close(layer.states[0], torch.ones(B, U))


def test_recurrent_dropout_step0_unchanged_and_off_in_eval():
    torch.manual_seed(0)
    layer = LSTM(U, recurrent_dropout=0.5, return_sequences=True, input_size=I)
    plain = LSTM(U, return_sequences=True, input_size=I)
    plain.set_weights(layer.get_weights())
    x = torch.randn(B, T, I)
    layer.train()
    out = layer(x)
    want = plain(x)
    torch.testing.assert_close(out[:, 0], want[:, 0])  # zero initial state: nothing to drop
    assert not torch.allclose(out[:, 1:], want[:, 1:])
    layer.eval()
    torch.testing.assert_close(layer(x), want)


def test_input_dropout_mask_constant_over_time():
    torch.manual_seed(0)
    layer = SimpleRNN(
        U,
        dropout=0.5,
        activation="linear",
        use_bias=False,
        recurrent_initializer="zeros",
        return_sequences=True,
        input_size=I,
    )
    x = torch.ones(B, T, I)
    out = layer.train()(x)  # no recurrence: each step sees x_t * mask only
    torch.testing.assert_close(out, out[:, :1].expand(-1, T, -1))
    torch.testing.assert_close(layer.eval()(x)[:, 0], x[:, 0] @ layer.cell.kernel.detach())


def test_lazy_build_and_weights_roundtrip():
    layer = GRU(U)
    assert not layer.built and list(layer.parameters()) == []
    layer(torch.randn(B, T, I))
    assert [w.shape for w in layer.get_weights()] == [(I, 3 * U), (U, 3 * U), (2, 3 * U)]
    other = GRU(U, reset_after=False)
    other.set_weights([np.zeros((I, 3 * U)), np.zeros((U, 3 * U)), np.zeros(3 * U)])  # builds
    assert other.built and other.cell.input_size == I
    assert LSTM(U, use_bias=False, input_size=I).get_weights()[-1].shape == (U, 4 * U)


def test_keras_initialisers():
    torch.manual_seed(0)
    layer = LSTM(4, input_size=3)
    kernel, rec, bias = layer.get_weights()
    np.testing.assert_allclose(rec @ rec.T, np.eye(4), atol=1e-5)  # orthogonal rows
    assert np.abs(kernel).max() <= np.sqrt(6 / (3 + 16))
    np.testing.assert_array_equal(bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [LSTM, GRU, SimpleRNN])
def test_layers_build_in_half_precision(cls, dtype):
    # torch has no QR in half precision: the orthogonal initialiser works in float32 and copies.
    layer = cls(8)
    layer.build(5, dtype=dtype)
    rec = layer.cell.recurrent_kernel
    assert rec.dtype == dtype
    rows = rec.float()  # (8, G * 8): orthonormal rows, as in float32
    torch.testing.assert_close(rows @ rows.T, torch.eye(8), atol=2e-2, rtol=0)


@pytest.mark.parametrize("options", [{}, {"layer_norm": True}], ids=["standard", "layer_norm"])
@pytest.mark.parametrize("cls", [LSTM, GRU, SimpleRNN])
def test_autocast_runs_the_recurrence_in_its_dtype(cls, options):
    # as torch.nn.LSTM under torch.autocast: the recurrence in the autocast dtype, its outputs
    # and states in it, the gradients back in the float32 parameters; the same numbers as the
    # layer cast to that dtype. float64 inputs are left as they are.
    torch.manual_seed(0)
    layer = cls(8, return_sequences=True, return_state=True, input_size=5, **options)
    low = cls(8, return_sequences=True, return_state=True, input_size=5, **options)
    low.load_state_dict(layer.state_dict())
    low.to(torch.bfloat16)
    x = torch.randn(3, 7, 5)
    results = []
    for model, inputs, autocast in ((layer, x, True), (low, x.bfloat16(), False)):
        xs = inputs.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, *states = model(xs)
        out.float().sum().backward()
        results.append((out, states, xs.grad, model.cell.kernel.grad))
    (out, states, dx, dw), (out2, states2, dx2, dw2) = results
    assert out.dtype == torch.bfloat16 and all(s.dtype == torch.bfloat16 for s in states)
    assert dx.dtype == torch.float32 and dw.dtype == torch.float32
    torch.testing.assert_close(out, out2)
    for a, b in zip([*states, dx, dw], [*states2, dx2, dw2], strict=True):
        torch.testing.assert_close(a.float(), b.float())
    double = cls(8, return_sequences=True, input_size=5, **options).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert double(x.double()).dtype == torch.float64
    # the float32 dropout and zoneout masks cast along (training mode, a left-padded mask)
    noisy = cls(8, return_sequences=True, input_size=5, dropout=0.2, recurrent_dropout=0.3,
                zoneout=0.1, recurrent_weight_dropout=0.2, **options)  # fmt: skip
    mask = torch.arange(7)[None, :] >= torch.tensor([[0], [2], [4]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = noisy(x.requires_grad_(True), mask=mask)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("options", [{}, {"layer_norm": True}], ids=["standard", "layer_norm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [LSTM, GRU, SimpleRNN])
def test_layers_train_in_half_precision_on_the_cpu(cls, dtype, options):
    # torch's kernels take half-precision weights (rnnkit's compiled transpose is float32 and
    # float64 only: it raised before); the other configurations run the fused recurrence with a
    # float32 state (before: the reference loop), bfloat16 products where the CPU has them.
    # Against the float32 layer on the same rounded values: relative error of the whole tensor
    # (layer norm amplifies single elements' rounding; measured 0.5-1.5%).
    from rnnkit.kernels import dispatch

    torch.manual_seed(0)
    low = cls(8, return_sequences=True, input_size=5, **options).to(dtype)
    wide = cls(8, return_sequences=True, input_size=5, **options)
    wide.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    x = torch.randn(3, 7, 5).to(dtype)
    outs, grads = [], []
    for layer, d in ((low, dtype), (wide, torch.float32)):
        xs = x.to(d).detach().requires_grad_(True)
        out = layer(xs)
        out.float().sum().backward()
        outs.append(out)
        grads.append((xs.grad, layer.cell.kernel.grad))
    assert outs[0].dtype == dtype and all(g.dtype == dtype for g in grads[0])
    for a, b in zip([outs[0], *grads[0]], [outs[1].detach(), *grads[1]], strict=True):
        assert ((a.float() - b).norm() / b.norm()).item() < 4e-2
    spec = low.cell.spec
    picked = dispatch.select(spec, training=True, device=x.device, dtype=dtype)
    # the standard configuration on torch's kernel, except where the fused recurrence measured
    # faster: either dtype without fast products in it (float16 here, bfloat16 on AVX2 CPUs), the
    # bfloat16 GRU / SimpleRNN with the compiled loops' bfloat16 products
    # (dispatch._fused_is_faster)
    from rnnkit.kernels import cpu_ext
    from rnnkit.kernels.products import fast_products

    ops = cpu_ext.ops()
    fused_first = (
        bool(options)
        or not fast_products(x.device, dtype)
        or (
            dtype == torch.bfloat16
            and cls is not LSTM
            and ops is not None
            and cpu_ext.has_bf16_products(ops)
        )
    )
    assert picked == ("fused" if fused_first else "vendor")


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: LSTM(6, return_sequences=True, input_size=4),  # torch's kernel
        lambda: LSTM(6, return_sequences=True, input_size=4, layer_norm=True, zoneout=0.2),
        lambda: Bidirectional(GRU(6, return_sequences=True, input_size=4)),
    ],
    ids=["lstm", "lstm_layer_norm_zoneout", "bidirectional_gru"],
)
def test_layers_work_under_torch_compile(make, backend):
    # the kernels (compiled loops, oneDNN's ops, zoneout's mask op) have no fake-tensor
    # implementations: dynamo raised tracing into them; dispatch.run and the mask op are opaque
    # to it now, so a compiled model breaks its graph there and runs them as without compiling
    torch.manual_seed(0)
    layer = make()
    compiled = torch.compile(layer, backend=backend)
    x = torch.randn(3, 7, 4, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, :3] = False
    compiled(x, mask=mask).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, mask=mask), layer(x, mask=mask))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: LSTM(U)(torch.randn(B, I)),
            ValueError,
            r"inputs must be 3-D .* received inputs of shape \(3, 4\)",
        ),
        (
            lambda: LSTM(U, input_size=3)(torch.randn(B, T, I)),
            ValueError,
            "must have 3 features.*received inputs of shape",
        ),
        (lambda: LSTM(U)(torch.zeros(B, T, I, dtype=torch.long)), TypeError, "floating point"),
        (lambda: LSTM(U)([[1.0]]), TypeError, "inputs must be a torch.Tensor; received list"),
        (
            lambda: LSTM(U)(torch.randn(B, T, I), mask=torch.ones(B, T + 1, dtype=torch.bool)),
            ValueError,
            r"mask must have shape \(batch, time\) = \(3, 5\); received mask of shape \(3, 6\)",
        ),
        (
            lambda: LSTM(U)(torch.randn(B, T, I), lengths=torch.tensor([1, -1, 2])),
            ValueError,
            "lengths must be >= 0; received a length of -1",
        ),
        (
            lambda: LSTM(U)(torch.randn(B, T, I), lengths=torch.tensor([1, 6, 2])),
            ValueError,
            r"lengths must be <= the time dimension \(5\); received a length of 6",
        ),
        (
            lambda: LSTM(U)(torch.randn(B, T, I), lengths=torch.tensor([1, 2])),
            ValueError,
            r"lengths must have shape \(3,\)",
        ),
        (
            lambda: LSTM(U)(
                torch.randn(B, T, I), mask=torch.ones(B, T), lengths=torch.ones(B, dtype=torch.long)
            ),
            ValueError,
            "not both",
        ),
        (
            lambda: LSTM(U)(torch.randn(B, T, I), mask=torch.ones(B, T)),
            TypeError,
            "mask must be a bool",
        ),
        (
            lambda: LSTM(U)(torch.randn(B, T, I), initial_state=[torch.zeros(B, U)]),
            ValueError,
            "initial_state must have 2 tensors",
        ),
        (
            lambda: GRU(U)(torch.randn(B, T, I), initial_state=[torch.zeros(2, U)]),
            ValueError,
            r"initial_state\[0\] must have shape \(3, 2\); received shape \(2, 2\)",
        ),
        (
            lambda: LSTM(U, dropout=1.0),
            ValueError,
            r"dropout must be in \[0, 1\); received dropout=1.0",
        ),
        (
            lambda: LSTM(U, recurrent_dropout=-0.1),
            ValueError,
            r"recurrent_dropout must be in \[0, 1\); received recurrent_dropout=-0.1",
        ),
        (
            lambda: LSTM(U, activation="tanhh"),
            ValueError,
            "activation must be one of .*received activation='tanhh'",
        ),
        (
            lambda: LSTM(U, recurrent_activation="nope"),
            ValueError,
            "recurrent_activation must be one of",
        ),
        (lambda: LSTM(0), ValueError, "units must be a positive int; received units=0"),
        (
            lambda: LSTM(U, backend="cuda"),
            ValueError,
            "backend must be one of .*received backend='cuda'",
        ),
        (
            lambda: GRU(U, reset_after=False, backend="vendor")(torch.randn(B, T, I)),
            ValueError,
            "backend 'vendor' cannot run this configuration: GRU with reset_after=False",
        ),
        (
            lambda: LSTM(U, recurrent_dropout=0.2, backend="vendor")(torch.randn(B, T, I)),
            ValueError,
            "recurrent dropout",
        ),
        (
            lambda: LSTM(U, input_size=I).set_weights([np.zeros((I, 4 * U))]),
            ValueError,
            r"expected 3 arrays of shapes \[\(4, 8\), \(2, 8\), \(8,\)\]; "
            r"received shapes \[\(4, 8\)\]",
        ),
        (lambda: LSTM(U).reset_states(), ValueError, "stateful=False"),
        (lambda: RNN("lstm"), TypeError, "cell must be an rnnkit cell"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("go_backwards", [False, True])
def test_stacked_layer_equals_stepping_the_stacked_cell(go_backwards):
    """The layer runs stacked cells layer by layer; stepping the whole stack must agree."""
    torch.manual_seed(0)
    stack = make_cell("stacked")
    layer = RNN(stack, return_sequences=True, return_state=True, go_backwards=go_backwards)
    x = torch.randn(B, T, I, dtype=F64)
    mask = MASKS["arbitrary"]
    out, *final = layer(x, mask=mask)
    state = layer.cell.initial_state(B, dtype=F64)
    prev, outs = torch.zeros(B, U, dtype=F64), []
    for t in range(T - 1, -1, -1) if go_backwards else range(T):
        y, new = layer.cell(x[:, t], state)
        valid = mask[:, t, None]
        state = tuple(torch.where(valid, n, s) for n, s in zip(new, state, strict=True))
        prev = torch.where(valid, y, prev)
        outs.append(prev)
    torch.testing.assert_close(out, torch.stack(outs, 1))
    for a, b in zip(final, state, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["auto", "vendor", "fused", "reference"])
@pytest.mark.parametrize("cls", [LSTM, GRU, SimpleRNN], ids=["lstm", "gru", "simple"])
def test_an_empty_batch_gives_empty_outputs_on_every_backend(cls, backend):
    # (an empty last batch, a filter that kept nothing) the fused backend used to raise
    layer = cls(4, input_size=3, return_sequences=True, return_state=True, backend=backend)
    out, *states = layer(torch.zeros(0, 5, 3))
    assert out.shape == (0, 5, 4) and all(s.shape == (0, 4) for s in states)
    mask = torch.zeros(0, 5, dtype=torch.bool)
    assert layer(torch.zeros(0, 5, 3), mask=mask)[0].shape == (0, 5, 4)
