"""The fused backend equals the reference loop for every configuration, forward and backward."""

from __future__ import annotations

import pytest
import torch

from rnnkit.kernels import cpu_ext, fused, reference
from rnnkit.kernels.spec import LayerNormWeights, RecurrenceSpec, RecurrentWeights

B, T, I, U = 3, 5, 4, 3
F64 = torch.float64

MASKS = {
    "none": None,
    "right": [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]],
    "left": [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]],
    "arbitrary_empty_row": [[1, 0, 1, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]],
}
CELLS = [("lstm", True), ("gru", True), ("gru", False), ("simple", True)]
CELL_IDS = ["lstm", "gru", "gru_reset_before", "simple"]


def _mask(name):
    m = MASKS[name]
    return None if m is None else torch.tensor(m, dtype=torch.bool)


def _weights(spec: RecurrenceSpec, dtype=F64, seed=0) -> RecurrentWeights:
    g = torch.Generator().manual_seed(seed)
    G, u = spec.gates, spec.units

    def rnd(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(True)

    bias = None
    if spec.use_bias:
        two = spec.cell == "gru" and spec.reset_after
        bias = rnd(2, G * u, scale=0.3) if two else rnd(G * u, scale=0.3)
    ln = None
    if spec.layer_norm:
        lstm = spec.cell == "lstm"
        ln = LayerNormWeights(
            (1 + rnd(G * u, scale=0.2)).detach().requires_grad_(True),
            (1 + rnd(G * u, scale=0.2)).detach().requires_grad_(True),
            (1 + rnd(u, scale=0.2)).detach().requires_grad_(True) if lstm else None,
            rnd(u, scale=0.2) if lstm else None,
        )
    return RecurrentWeights(rnd(I, G * u), rnd(u, G * u), bias, ln)


def _params(w: RecurrentWeights) -> list[torch.Tensor]:
    out = [w.kernel, w.recurrent_kernel] + ([w.bias] if w.bias is not None else [])
    if w.layer_norm is not None:
        out += [p for p in w.layer_norm if p is not None]
    return out


def _options(spec, extra, dtype=F64, seed=1):
    g = torch.Generator().manual_seed(seed)
    kw = {}
    if "recurrent_dropout" in extra:
        kw["recurrent_dropout_mask"] = (torch.rand(B, U, generator=g) > 0.4).to(dtype) / 0.6
    if "input_dropout" in extra:
        kw["input_dropout_mask"] = (torch.rand(B, I, generator=g) > 0.3).to(dtype) / 0.7
    if "zoneout" in extra:
        kw["zoneout_mask"] = (torch.rand(B, T, U, generator=g) > 0.5).to(dtype)
    if "drop_connect" in extra:
        keep = torch.rand(U, spec.gates * U, generator=g) > 0.3
        kw["recurrent_kernel_dropout_mask"] = keep.to(dtype) / 0.7
    return kw


def _both(spec, w, kw, dtype=F64, seed=2):
    """Outputs, final states and all gradients of reference and fused on the same data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g, dtype=dtype).requires_grad_(True)
    state = tuple(
        torch.randn(B, U, generator=g, dtype=dtype).requires_grad_(True)
        for _ in range(spec.state_count)
    )
    results = []
    for backend in (reference, fused):
        out, final = backend.run(spec, w, x, state, **kw)
        weight = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
        loss = (out * weight).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(final))
        grads = torch.autograd.grad(loss, [x, *state, *_params(w)])
        results.append((out, final, grads))
    return results


def _assert_same(results, **tol):
    (o1, s1, g1), (o2, s2, g2) = results
    torch.testing.assert_close(o2, o1, **tol)
    for a, b in zip(s2, s1, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for k, (a, b) in enumerate(zip(g2, g1, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"gradient {k}: {m}")


MASK_DIRECTIONS = [
    ("none", False),
    ("right", True),
    ("left", True),
    ("arbitrary_empty_row", True),
]

EXTRAS = [
    (),
    ("recurrent_dropout",),
    ("input_dropout",),
    ("zoneout",),
    ("zoneout_eval",),
    ("drop_connect",),
    ("recurrent_dropout", "zoneout", "drop_connect"),
]


@pytest.mark.parametrize("extra", EXTRAS, ids=["+".join(e) or "plain" for e in EXTRAS])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["", "layer_norm"])
@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_fused_equals_reference(cell, reset_after, layer_norm, extra):
    spec = RecurrenceSpec(
        cell,
        U,
        reset_after=reset_after,
        layer_norm=layer_norm,
        zoneout=0.3 if "zoneout_eval" in extra else 0.0,
    )
    w = _weights(spec)
    for mask_name, go_backwards in MASK_DIRECTIONS:
        kw = _options(spec, extra)
        kw.update(mask=_mask(mask_name), go_backwards=go_backwards)
        _assert_same(_both(spec, w, kw))


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_zero_output_for_mask_and_no_bias(cell, reset_after, zero_output_for_mask):
    spec = RecurrenceSpec(cell, U, reset_after=reset_after, use_bias=False)
    kw = {"mask": _mask("arbitrary_empty_row"), "zero_output_for_mask": zero_output_for_mask}
    _assert_same(_both(spec, _weights(spec), kw))


ACTIVATION_NAMES = [
    "tanh",
    "sigmoid",
    "hard_sigmoid",
    "relu",
    "linear",
    "elu",
    "selu",
    "softsign",
    "softplus",
    "silu",
    "gelu",
    "exponential",
]


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_every_named_activation(name):
    for cell, reset_after in CELLS:
        for which in ("activation", "recurrent_activation"):
            if cell == "simple" and which == "recurrent_activation":
                continue
            if name == "exponential" and cell == "lstm" and which == "activation":
                continue  # exp(c) with c growing by exp(g) overflows to inf/nan in both backends
            spec = RecurrenceSpec(cell, U, reset_after=reset_after, **{which: name})
            w = _weights(spec)
            with torch.no_grad():  # keep exponential/relu recurrences tame
                w.recurrent_kernel.mul_(0.3)
                w.kernel.mul_(0.3)
            _assert_same(_both(spec, w, {"mask": _mask("left")}))


def test_activation_given_as_library_function_is_recognised():
    spec = RecurrenceSpec("lstm", U, activation=torch.tanh, recurrent_activation=torch.sigmoid)
    assert fused.supports(spec)
    _assert_same(_both(spec, _weights(spec), {}))


def test_arbitrary_callable_is_not_supported():
    spec = RecurrenceSpec("gru", U, activation=lambda x: torch.tanh(x) * 2)
    assert not fused.supports(spec)
    assert "callable" in fused.unsupported_reason(spec)
    with pytest.raises(ValueError, match="cannot run this configuration"):
        fused.run(spec, _weights(spec), torch.zeros(B, T, I, dtype=F64), (torch.zeros(B, U),))


def test_supports_every_implemented_configuration():
    for cell, reset_after in CELLS:
        for ln in (False, True):
            spec = RecurrenceSpec(cell, U, reset_after=reset_after, layer_norm=ln, zoneout=0.1)
            assert fused.supports(
                spec,
                mask=_mask("left"),
                go_backwards=True,
                zero_output_for_mask=True,
                recurrent_dropout_mask=torch.ones(B, U),
                zoneout_mask=torch.ones(B, T, U),
                recurrent_kernel_dropout_mask=torch.ones(U, spec.gates * U),
            )
    assert not fused.supports(RecurrenceSpec("lstm", U), unroll_twice=True)


GELU_SILU = {"activation": "gelu", "recurrent_activation": "silu"}  # derivatives need inputs
GRADCHECK = [
    ("lstm", True, False, (), {}),
    ("lstm", True, True, ("recurrent_dropout", "zoneout"), {}),
    ("gru", True, True, ("drop_connect",), {}),
    ("gru", False, True, ("recurrent_dropout",), {}),
    ("simple", True, True, ("zoneout",), {}),
    ("lstm", True, True, ("zoneout",), GELU_SILU),
    ("gru", True, False, (), {"activation": "selu", "recurrent_activation": "softsign"}),
    ("gru", False, False, ("zoneout",), GELU_SILU),
    ("simple", True, False, ("zoneout",), {"activation": "gelu"}),
    ("simple", True, False, (), {"activation": "softplus"}),
]


@pytest.mark.parametrize(("cell", "reset_after", "layer_norm", "extra", "acts"), GRADCHECK)
def test_gradcheck(cell, reset_after, layer_norm, extra, acts, monkeypatch):
    """float64 gradcheck of the whole fused run (input projection + hand-written BPTT)."""
    monkeypatch.setattr(fused, "ALLOW_REPEATED_BACKWARD", True)
    spec = RecurrenceSpec(cell, U, reset_after=reset_after, layer_norm=layer_norm, **acts)
    w = _weights(spec)
    params = _params(w)
    kw = _options(spec, extra)
    kw["mask"] = _mask("left")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, I, generator=g, dtype=F64).requires_grad_(True)
    state = tuple(
        torch.randn(2, U, generator=g, dtype=F64).requires_grad_(True)
        for _ in range(spec.state_count)
    )
    kw = {
        k: (v[:2, :4] if k == "zoneout_mask" else v[:2] if k.endswith("dropout_mask") else v)
        for k, v in kw.items()
    }
    if "recurrent_kernel_dropout_mask" in _options(spec, extra):
        kw["recurrent_kernel_dropout_mask"] = _options(spec, extra)["recurrent_kernel_dropout_mask"]
    kw["mask"] = kw["mask"][:2, 1:]
    n_state = len(state)

    def f(x, *rest):
        st, ps = rest[:n_state], list(rest[n_state:])
        ln = None
        if w.layer_norm is not None:
            k = len(ps) - sum(p is not None for p in w.layer_norm)
            it = iter(ps[k:])
            ln = LayerNormWeights(*[next(it) if p is not None else None for p in w.layer_norm])
            ps = ps[:k]
        ww = RecurrentWeights(ps[0], ps[1], ps[2] if w.bias is not None else None, ln)
        out, final = fused.run(spec, ww, x, st, **kw)
        return (out, *final)

    assert torch.autograd.gradcheck(f, (x, *state, *params), eps=1e-6, atol=1e-6)


def test_float32_onednn_path_matches_reference():
    for cell, reset_after in CELLS:
        for ln in (False, True):
            spec = RecurrenceSpec(cell, U, reset_after=reset_after, layer_norm=ln)
            w = _weights(spec, dtype=torch.float32)
            kw = _options(spec, ("recurrent_dropout",), dtype=torch.float32)
            kw["mask"] = _mask("left")
            _assert_same(_both(spec, w, kw, dtype=torch.float32), atol=1e-4, rtol=1e-3)


def _leaves(w: RecurrentWeights, dtype) -> RecurrentWeights:
    """``w``'s values as new leaf tensors of ``dtype``."""

    def leaf(p):
        return None if p is None else p.detach().to(dtype).requires_grad_(True)

    ln = w.layer_norm
    return RecurrentWeights(
        leaf(w.kernel),
        leaf(w.recurrent_kernel),
        leaf(w.bias),
        None if ln is None else LayerNormWeights(*(leaf(p) for p in ln)),
    )


@pytest.mark.parametrize(
    ("dtype", "fast16"),
    [
        (torch.bfloat16, None),
        (torch.bfloat16, False),
        (torch.float16, True),
        (torch.float16, False),
    ],
    ids=["bfloat16", "bfloat16-slow-products", "float16", "float16-slow-products"],
)
def test_half_precision_projects_in_its_dtype(dtype, fast16, monkeypatch):
    # bfloat16 / float16: the input projection in that dtype (never the float32 products), the
    # recurrence's state in float32 on the same (rounded) values (bfloat16: its products in
    # bfloat16 where the CPU has them), the results cast back, gradients in the parameters' own
    # dtype (before: the reference's Python loop). Against float32 throughout. A device without
    # fast products in that dtype (fast16 False: float16 here, bfloat16 on AVX2 CPUs) projects
    # in float32 instead, never in half precision (a scalar loop there: 70x slower).
    if fast16 is not None:
        monkeypatch.setattr(fused, "fast_products", lambda device, dtype: fast16)
    forbidden = "_half_linear" if fast16 is False else "keras_linear"
    for cell, reset_after in CELLS:
        for layer_norm in (False, True):
            spec = RecurrenceSpec(cell, U, reset_after=reset_after, layer_norm=layer_norm)
            low = _weights(spec, dtype=dtype)
            wide = _leaves(low, torch.float32)  # the same rounded values
            kw = _options(spec, ("recurrent_dropout", "zoneout"), dtype=dtype)
            kw["mask"] = _mask("left")
            assert fused.supports(spec, dtype=dtype, **kw)
            results = []
            for w, d in ((low, dtype), (wide, torch.float32)):
                x = torch.randn(B, T, I, generator=torch.Generator().manual_seed(2)).to(dtype)
                x = x.to(d).requires_grad_(True)
                opts = {k: v.to(d) if v.is_floating_point() else v for k, v in kw.items()}
                state = (x.new_zeros(B, U),) * spec.state_count
                with monkeypatch.context() as patch:
                    if d == dtype:  # (would raise if the half run used the other products)
                        patch.setattr(fused, forbidden, None)
                    out, final = fused.run(spec, w, x, state, **opts)
                loss = (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
                loss = loss + sum(s.float().sum() for s in final)
                grads = torch.autograd.grad(loss, [x, *_params(w)])
                results.append((out, final, grads))
            (o1, s1, g1), (o2, s2, g2) = results
            assert o1.dtype == dtype and all(s.dtype == dtype for s in s1)
            assert all(g.dtype == dtype for g in g1)
            # the projection's rounding (bfloat16: 8 bits of mantissa), then the outputs'
            tol = {"rtol": 5e-2, "atol": 0.1 if dtype == torch.bfloat16 else 3e-2}
            torch.testing.assert_close(o1.float(), o2, **tol)
            for a, b in zip([*s1, *g1], [*s2, *g2], strict=True):
                torch.testing.assert_close(a.float(), b, **tol)


def test_inference_path_equals_training_forward():
    for cell, reset_after in CELLS:
        spec = RecurrenceSpec(cell, U, reset_after=reset_after, layer_norm=True)
        w = _weights(spec)
        kw = _options(spec, ("zoneout", "recurrent_dropout"))
        kw["mask"] = _mask("right")
        x = torch.randn(B, T, I, dtype=F64)
        state = tuple(torch.randn(B, U, dtype=F64) for _ in range(spec.state_count))
        out, final = fused.run(spec, w, x, state, **kw)
        with torch.no_grad():
            out2, final2 = fused.run(spec, w, x, state, **kw)
        torch.testing.assert_close(out2, out.detach())
        for a, b in zip(final2, final, strict=True):
            torch.testing.assert_close(a, b.detach())


FUNCTIONS = {
    ("lstm", True): "_LSTMFunction",
    ("gru", True): "_GRUFunction",
    ("gru", False): "_GRUResetBeforeFunction",
    ("simple", True): "_SimpleFunction",
}


STATE_GRADS = {"none": (False, False), "all": (True, True), "c_only": (False, True)}


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("state_grad", sorted(STATE_GRADS))
def test_initial_h_gradient_only_when_asked(cell, reset_after, steps, state_grad, monkeypatch):
    """The compiled backward loops skip the first step's product through U^T when nothing needs
    h_0's gradient (a 1-step call then never transposes U): every other gradient still equals
    the reference's, with recurrent dropout and a left-padded mask in play."""
    if state_grad == "c_only" and cell != "lstm":
        pytest.skip("only the LSTM has a second state")
    spec = RecurrenceSpec(cell, U, reset_after=reset_after)
    w = _weights(spec)
    g = torch.Generator().manual_seed(3)
    kw = {"recurrent_dropout_mask": (torch.rand(B, U, generator=g) > 0.4).to(F64) / 0.6}
    kw["mask"] = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    kw["mask"] = kw["mask"][:, -steps:]
    x = torch.randn(B, steps, I, generator=g, dtype=F64).requires_grad_(True)
    needs = STATE_GRADS[state_grad][: spec.state_count]
    state = tuple(torch.randn(B, U, generator=g, dtype=F64).requires_grad_(n) for n in needs)
    wanted = [x, *(s for s in state if s.requires_grad), *_params(w)]
    transposed = []
    step_weight = fused._step_weight

    def counted(ext, mat, *args, **kwargs):
        transposed.append(mat)
        return step_weight(ext, mat, *args, **kwargs)

    monkeypatch.setattr(fused, "_step_weight", counted)
    results = []
    for backend in (reference, fused):
        out, final = backend.run(spec, w, x, state, **kw)
        weight = torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)
        loss = (out * weight).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(final))
        transposed.clear()
        results.append(torch.autograd.grad(loss, wanted))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a)
    if fused._compiled_ops(cell, fused._ACTS["tanh"], fused._ACTS["tanh"], x.device, F64):
        # the backward's weights through U^T (the GRU with reset_after=False: U_zr^T and U_h^T,
        # the candidate's product also giving the reset gate's gradient, needed at every step)
        products = 2 if cell == "gru" and not reset_after else 1
        skipped = steps == 1 and not needs[0]
        assert len(transposed) == products - skipped


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_calls_that_record_nothing_skip_autograd(cell, reset_after, monkeypatch):
    """No input needs a gradient (no_grad, or a frozen layer in grad mode): the Function's
    forward runs as a plain call (apply's bookkeeping is a third of a 1-step call), with the
    same results; a call with a trainable input still records."""
    spec = RecurrenceSpec(cell, U, reset_after=reset_after)
    w = _weights(spec)
    x = torch.randn(B, T, I, dtype=F64)
    state = tuple(torch.randn(B, U, dtype=F64) for _ in range(spec.state_count))
    out, final = fused.run(spec, w, x, state, mask=_mask("left"))
    assert out.grad_fn is not None
    function = getattr(fused, FUNCTIONS[(cell, reset_after)])

    def no_apply(*args):
        raise AssertionError("Function.apply for a call that records nothing")

    monkeypatch.setattr(function, "apply", no_apply)
    frozen = RecurrentWeights(*(None if p is None else p.detach() for p in w))
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            out2, final2 = fused.run(spec, frozen, x, state, mask=_mask("left"))
        assert not out2.requires_grad and not any(s.requires_grad for s in final2)
        torch.testing.assert_close(out2, out.detach())
        for a, b in zip(final2, final, strict=True):
            torch.testing.assert_close(a, b.detach())
    with pytest.raises(AssertionError, match="records nothing"):
        fused.run(spec, w, x, state)  # trainable weights: through apply


def test_zoneout_mask_of_ones_keeps_the_initial_state():
    spec = RecurrenceSpec("lstm", U)
    w = _weights(spec)
    h0, c0 = torch.randn(B, U, dtype=F64), torch.randn(B, U, dtype=F64)
    out, (h, c) = fused.run(
        spec, w, torch.randn(B, T, I, dtype=F64), (h0, c0), zoneout_mask=torch.ones(B, T, U)
    )
    torch.testing.assert_close(h.detach(), h0)
    torch.testing.assert_close(out.detach(), h0[:, None].expand(B, T, U))
    assert not torch.allclose(c.detach(), c0)  # the cell state is not zoned out (haste)


def test_empty_sequence_returns_initial_state():
    spec = RecurrenceSpec("gru", U)
    h0 = torch.randn(B, U, dtype=F64)
    out, (h,) = fused.run(spec, _weights(spec), torch.zeros(B, 0, I, dtype=F64), (h0,))
    assert out.shape == (B, 0, U)
    assert h is h0


def test_backward_twice_raises():
    spec = RecurrenceSpec("lstm", U)
    w = _weights(spec)
    x = torch.randn(B, T, I, dtype=F64)
    state = (torch.zeros(B, U, dtype=F64), torch.zeros(B, U, dtype=F64))
    out, _ = fused.run(spec, w, x, state)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        out.sum().backward()


def test_repeated_backward_when_allowed(monkeypatch):
    monkeypatch.setattr(fused, "ALLOW_REPEATED_BACKWARD", True)
    spec = RecurrenceSpec("gru", U, reset_after=False)
    w = _weights(spec)
    out, _ = fused.run(spec, w, torch.randn(B, T, I, dtype=F64), (torch.zeros(B, U, dtype=F64),))
    (g1,) = torch.autograd.grad(out.sum(), [w.kernel], retain_graph=True)
    (g2,) = torch.autograd.grad(out.sum(), [w.kernel])
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("h0_grad", [False, True], ids=["constant_zero_h0", "trainable_zero_h0"])
@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_masked_outputs_before_the_first_valid_step_with_a_zero_initial_state(
    cell, reset_after, h0_grad
):
    # a zero initial state that needs no gradient is carried as the zero outputs the masking
    # rule asks for before each row's first valid step (the fused backend then skips zeroing
    # them); one that needs its gradient must get none from those outputs
    spec = RecurrenceSpec(cell, U, reset_after=reset_after)
    w = _weights(spec)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, I, generator=g, dtype=F64).requires_grad_(True)
    state = tuple(
        torch.zeros(B, U, dtype=F64).requires_grad_(h0_grad) for _ in range(spec.state_count)
    )
    for mask_name in ("left", "arbitrary_empty_row"):
        results = []
        for backend in (reference, fused):
            out, final = backend.run(spec, w, x, state, mask=_mask(mask_name))
            weight = torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)
            loss = (out * weight).sum() + sum((s * 2).sum() for s in final)
            wrt = [x, *_params(w), *(state if h0_grad else ())]
            results.append((out, final, torch.autograd.grad(loss, wrt)))
        _assert_same(results)
        before = (_mask(mask_name).cumsum(1) == 0)[..., None]  # before each row's first step
        assert before.any() and not results[1][0].masked_select(before).any()


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["", "layer_norm"])
@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_calls_with_fewer_rows_than_the_kernel_permute_the_product(
    cell, reset_after, layer_norm, steps
):
    # batch x steps below the input size: the input projection's columns are put in the loops'
    # gate order after the product, not in the kernel before it (1 row: torch's product)
    spec = RecurrenceSpec(cell, U, reset_after=reset_after, layer_norm=layer_norm)
    wide = 12  # > 1 x 3 rows
    g = torch.Generator().manual_seed(4)
    base = _weights(spec)
    kernel = (torch.randn(wide, spec.gates * U, generator=g, dtype=F64) * 0.4).requires_grad_()
    w = RecurrentWeights(kernel, base.recurrent_kernel, base.bias, base.layer_norm)
    x = torch.randn(1, steps, wide, generator=g, dtype=F64).requires_grad_(True)
    state = tuple(torch.randn(1, U, generator=g, dtype=F64) for _ in range(spec.state_count))
    results = []
    for backend in (reference, fused):
        out, final = backend.run(spec, w, x, state)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum()
        loss = loss + sum((s * 2).sum() for s in final)
        results.append((out, final, torch.autograd.grad(loss, [x, *_params(w)])))
    _assert_same(results)


def test_vnni_layout_pairs_rows_column_by_column():
    # the compiled loops' bfloat16 weights: rows 2k and 2k + 1 interleaved, an odd K padded
    mat = torch.arange(5 * 6, dtype=torch.float32).view(5, 6)
    w = fused._vnni(mat)
    assert w.shape == (3, 6, 2) and w.dtype == torch.bfloat16 and w.is_contiguous()
    for k in range(5):
        for n in range(6):
            assert w[k // 2, n, k % 2] == mat[k, n]
    assert not w[2, :, 1].any()  # the zero row
    g = fused._vnni(mat, gate_blocks=3)  # (gates, K' / 2, N / gates, 2)
    assert g.shape == (3, 3, 2, 2) and g.is_contiguous()
    assert torch.equal(g[2, 1, 1], mat[2:4, 5].bfloat16())


def _bf16_products() -> bool:
    ops = cpu_ext.ops()
    return ops is not None and cpu_ext.has_bf16_products(ops)


@pytest.mark.skipif(not _bf16_products(), reason="no bfloat16 brgemm products on this CPU/torch")
@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_bfloat16_calls_run_bfloat16_products(cell, reset_after, monkeypatch):
    # A bfloat16 call's recurrent products (every step's, forward and backward, and the LSTM's
    # weight-gradient sums) in bfloat16 with float32 accumulation and state. Against the float64
    # reference on the same rounded values: relative error of the outputs, final states and
    # every gradient at bfloat16's rounding. Odd sizes (padded pairs) and a longer call
    # (gate-blocked weights, several weight-gradient chunks); masks, dropout and zoneout. Every
    # value from one generator: two draws from the global RNG made the cases depend on the tests
    # run before (the layer-norm LSTM's gradients then erred by 2-50% over draws, with float32
    # products as well: its backward from a zero state is ill-conditioned at bfloat16 rounding).
    packed = []
    vnni = fused._vnni
    monkeypatch.setattr(fused, "_vnni", lambda m, g=1: packed.append(m.shape) or vnni(m, g))
    gen = torch.Generator().manual_seed(5)
    cases = [((3, 7, 5, 9), False, True), ((3, 7, 5, 9), True, False)]
    cases += [((16, 40, 32, 64), False, False), ((16, 40, 32, 64), True, True)]
    for (b, t, i, u), layer_norm, extra in cases:
        spec = RecurrenceSpec(cell, u, reset_after=reset_after, layer_norm=layer_norm)
        g = spec.gates
        two = cell == "gru" and reset_after
        values = [torch.randn(i, g * u, generator=gen) / i**0.5]
        values += [torch.randn(u, g * u, generator=gen) / u**0.5]
        values += [torch.randn(*([2] if two else []), g * u, generator=gen) * 0.3]
        ln_values = []
        if layer_norm:
            ln_values = [1 + 0.2 * torch.randn(g * u, generator=gen) for _ in range(2)]
            if cell == "lstm":
                ln_values += [
                    1 + 0.2 * torch.randn(u, generator=gen),
                    0.2 * torch.randn(u, generator=gen),
                ]
        x = torch.randn(b, t, i, generator=gen)
        kw = {}
        if extra:
            lengths = torch.randint(1, t + 1, (b,), generator=gen)
            kw["mask"] = torch.arange(t)[None, :] >= (t - lengths)[:, None]  # left-padded
            kw["recurrent_dropout_mask"] = (torch.rand(b, u, generator=gen) > 0.3) / 0.7
            kw["zoneout_mask"] = (torch.rand(b, t, u, generator=gen) > 0.5).double()
        dy = torch.randn(b, t, u, generator=gen, dtype=F64)
        results = []
        for backend, dtype in ((fused, torch.bfloat16), (reference, F64)):
            params = [v.bfloat16().to(dtype).requires_grad_(True) for v in values + ln_values]
            ln = None
            if layer_norm:
                ln = LayerNormWeights(*params[3:], *([None, None] if cell != "lstm" else []))
            w = RecurrentWeights(*params[:3], ln)
            xs = x.bfloat16().to(dtype).requires_grad_(True)
            opts = {k: v.to(dtype) if v.is_floating_point() else v for k, v in kw.items()}
            state = tuple(torch.zeros(b, u, dtype=dtype) for _ in range(spec.state_count))
            out, final = backend.run(spec, w, xs, state, **opts)
            loss = (out.double() * dy).sum() + sum(s.double().sum() for s in final)
            grads = torch.autograd.grad(loss, [xs, *params])
            results.append([out, *final, *grads])
        for got, want in zip(*results, strict=True):
            assert got.dtype == torch.bfloat16
            err = ((got.double() - want).norm() / want.norm()).item()
            # measured: 2.8e-3 to 6.6e-3 without layer norm, 7.8e-3 to 5.0e-2 with it (LSTM:
            # its zero initial state's first LayerNorm sits at the variance epsilon); a wrong
            # pairing errs by ~100%
            assert err < (0.1 if layer_norm else 1e-2), (spec, (b, t, i, u), extra, err)
    assert len(packed) >= 4  # the loops took bfloat16 weights (forward and backward)
    if cell == "lstm":  # and the LSTM's input kernel (odd width: _vnni pads its rows), in-loop
        assert (5, 4 * 9) in packed, packed
        assert (32, 4 * 64) in packed
