"""The vendor backend equals the reference loop, forward and backward, on every mask pattern."""

import pytest
import torch

from rnnkit.kernels import reference, vendor
from rnnkit.kernels.spec import RecurrenceSpec, RecurrentWeights

B, T, I, U = 3, 5, 4, 2
MASKS = {
    "none": None,
    "all": torch.ones(B, T, dtype=torch.bool),
    "right": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool),
    "left": torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool),
    "arbitrary": torch.tensor(
        [[1, 0, 1, 1, 0], [0, 1, 0, 0, 1], [1, 1, 0, 1, 1]], dtype=torch.bool
    ),
    "empty_rows": torch.tensor(
        [[0, 0, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool
    ),
    "all_empty": torch.zeros(B, T, dtype=torch.bool),
}
SPECS = {
    "lstm": RecurrenceSpec("lstm", U),
    "lstm_nobias": RecurrenceSpec("lstm", U, use_bias=False),
    "gru": RecurrenceSpec("gru", U),
    "gru_nobias": RecurrenceSpec("gru", U, use_bias=False),
    "simple_tanh": RecurrenceSpec("simple", U),
    "simple_relu": RecurrenceSpec("simple", U, activation="relu"),
}


def make_weights(spec, gen):
    g = spec.gates * U
    kernel = torch.randn(I, g, dtype=torch.float64, generator=gen)
    rec = torch.randn(U, g, dtype=torch.float64, generator=gen) * 0.5
    bias = None
    if spec.use_bias:
        shape = (2, g) if spec.cell == "gru" and spec.reset_after else (g,)
        bias = torch.randn(shape, dtype=torch.float64, generator=gen)
    return [t.requires_grad_() for t in (kernel, rec)] + [
        None if bias is None else bias.requires_grad_()
    ]


def both(spec, mask, go_backwards, zero_output, init, **extra):
    gen = torch.Generator().manual_seed(0)
    w = make_weights(spec, gen)
    x = torch.randn(B, T, I, dtype=torch.float64, generator=gen, requires_grad=True)
    states = tuple(
        (
            torch.randn(B, U, dtype=torch.float64, generator=gen)
            if init
            else torch.zeros(B, U, dtype=torch.float64)
        ).requires_grad_()
        for _ in range(spec.state_count)
    )
    leaves = [x, *states, *[t for t in w if t is not None]]
    results = []
    for backend in (vendor, reference):
        out, final = backend.run(
            spec,
            RecurrentWeights(*w),
            x,
            states,
            mask=mask,
            go_backwards=go_backwards,
            zero_output_for_mask=zero_output,
            **extra,
        )
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        loss = loss + sum((s * (k + 2)).sum() for k, s in enumerate(final))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((out, final, grads))
    return results


def assert_same(a, b):
    (out_v, fin_v, g_v), (out_r, fin_r, g_r) = a, b
    torch.testing.assert_close(out_v, out_r)
    for s, t in zip(fin_v, fin_r, strict=True):
        torch.testing.assert_close(s, t)
    for s, t in zip(g_v, g_r, strict=True):
        if s is None or t is None:
            assert s is None and t is None or (s if s is not None else t).abs().max() == 0
        else:
            torch.testing.assert_close(s, t)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("go_backwards", [False, True])
def test_vendor_equals_reference(spec_name, mask_name, go_backwards):
    spec = SPECS[spec_name]
    zero_output = mask_name in ("arbitrary", "left")  # both output rules are covered
    assert_same(*both(spec, MASKS[mask_name], go_backwards, zero_output, init=True))


@pytest.mark.parametrize("zero_output", [False, True])
def test_vendor_zero_initial_state_and_output_rule(zero_output):
    assert_same(*both(SPECS["lstm"], MASKS["arbitrary"], False, zero_output, init=False))


def test_vendor_input_dropout_and_dropconnect():
    gen = torch.Generator().manual_seed(1)
    drop = (torch.rand(B, I, generator=gen) > 0.3).double() / 0.7
    dc = (torch.rand(U, 4 * U, generator=gen) > 0.3).double() / 0.7
    assert_same(
        *both(
            SPECS["lstm"],
            MASKS["left"],
            True,
            False,
            True,
            input_dropout_mask=drop,
            recurrent_kernel_dropout_mask=dc,
        )
    )


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
@pytest.mark.parametrize("ext", ["compiled", "off"])
def test_vendor_hands_contiguous_weights_on_cpu(cell, ext, monkeypatch):
    # torch's CPU kernels copy strided weights in the forward and again in the backward pass
    # (measured: 10% of PTB-small's LSTM training step); with and without the compiled transpose
    if ext == "off":
        monkeypatch.setenv("RNNKIT_CPU_EXT", "0")
    spec = RecurrenceSpec(cell, 24)
    gen = torch.Generator().manual_seed(2)
    g = spec.gates * 24
    kernel = torch.randn(20, g, generator=gen, requires_grad=True)
    rec = torch.randn(24, g, generator=gen, requires_grad=True)
    bias = torch.randn(*((2, g) if cell == "gru" else (g,)), generator=gen, requires_grad=True)
    params = vendor.torch_params(spec, RecurrentWeights(kernel, rec, bias))
    assert all(p.is_contiguous() for p in params)
    with torch.no_grad():  # inference: the same matrices, nothing recorded
        plain = vendor.torch_params(spec, RecurrentWeights(kernel, rec, bias))
    assert all(p.is_contiguous() and p.grad_fn is None for p in plain)
    assert all(torch.equal(a, b) for a, b in zip(plain, params, strict=True))
    # the gradients land on the Keras-layout weights, transposed back
    sum((p * torch.arange(p.numel()).view_as(p)).sum() for p in params[:2]).backward()
    expect_k = torch.arange(g * 20.0).view(g, 20).t()
    expect_r = torch.arange(g * 24.0).view(g, 24).t()
    if cell == "gru":  # torch's r, z, n blocks are Keras' z, r, h
        expect_k, expect_r = (vendor._gru_reorder(e, 1) for e in (expect_k, expect_r))
    assert torch.equal(kernel.grad, expect_k) and kernel.grad.is_contiguous()
    assert torch.equal(rec.grad, expect_r)


@pytest.mark.parametrize("spec_name", ["lstm", "gru"])
def test_vendor_equals_reference_float32_tiles(spec_name):
    # float32 weights of 20 and 24 rows, 96 / 72 columns: the compiled transpose's register
    # tiles and edges, forward and backward
    spec = RecurrenceSpec(SPECS[spec_name].cell, 24)
    gen = torch.Generator().manual_seed(4)
    g = spec.gates * 24
    w = [
        torch.randn(20, g, generator=gen) * 0.3,
        torch.randn(24, g, generator=gen) * 0.3,
        torch.randn(*((2, g) if spec.cell == "gru" else (g,)), generator=gen),
    ]
    x = torch.randn(6, 9, 20, generator=gen)
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[2, 5:] = False
    results = []
    for backend in (vendor, reference):
        leaves = [t.clone().requires_grad_() for t in (x, *w)]
        state = tuple(torch.zeros(6, 24) for _ in range(spec.state_count))
        out, _ = backend.run(spec, RecurrentWeights(*leaves[1:]), leaves[0], state, mask=mask)
        grads = torch.autograd.grad((out * out.detach().sign()).sum(), leaves)
        results.append((out, grads))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_vendor_zero_time_steps():
    spec = SPECS["gru"]
    w = RecurrentWeights(
        *[t.detach() for t in make_weights(spec, torch.Generator().manual_seed(0))]
    )
    h0 = (torch.randn(B, U, dtype=torch.float64),)
    out, (h,) = vendor.run(spec, w, torch.zeros(B, 0, I, dtype=torch.float64), h0)
    assert out.shape == (B, 0, U)
    torch.testing.assert_close(h, h0[0])


@pytest.mark.parametrize(
    ("spec", "options", "reason"),
    [
        (RecurrenceSpec("lstm", U, activation="relu"), {}, "activation must be 'tanh'"),
        (
            RecurrenceSpec("lstm", U, recurrent_activation="hard_sigmoid"),
            {},
            "recurrent_activation",
        ),
        (RecurrenceSpec("gru", U, reset_after=False), {}, "reset_after=False"),
        (RecurrenceSpec("simple", U, activation="elu"), {}, "'tanh' or 'relu'"),
        (
            RecurrenceSpec("lstm", U),
            {"recurrent_dropout_mask": torch.ones(B, U)},
            "recurrent dropout",
        ),
        (RecurrenceSpec("lstm", U, layer_norm=True), {}, "layer_norm"),
        (RecurrenceSpec("lstm", U, zoneout=0.1), {}, "zoneout"),
    ],
)
def test_vendor_refuses_what_it_cannot_do(spec, options, reason):
    assert not vendor.supports(spec, **options)
    assert reason in vendor.unsupported_reason(spec, **options)
    w = RecurrentWeights(torch.zeros(I, spec.gates * U), torch.zeros(U, spec.gates * U), None)
    with pytest.raises(ValueError, match="backend 'vendor' cannot run"):
        vendor.run(
            spec, w, torch.zeros(B, T, I), (torch.zeros(B, U),) * spec.state_count, **options
        )
