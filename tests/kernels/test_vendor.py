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
