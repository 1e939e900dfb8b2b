"""The compiled CPU step loops (csrc/fused_cpu.cpp) equal the fused backend's Python loops."""

from __future__ import annotations

import pytest
import torch

from rnnkit.kernels import cpu_ext, fused
from rnnkit.kernels.spec import LayerNormWeights, RecurrenceSpec, RecurrentWeights

B, T, I, U = 5, 7, 6, 16


def _compiled_available():
    if cpu_ext.ops() is None:
        pytest.skip(f"the CPU extension could not be built here: {cpu_ext.build_error()}")


def _weights(spec, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.4):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(True)

    U = spec.units
    G, lstm = spec.gates * U, spec.cell == "lstm"
    ln = None
    if spec.layer_norm:
        ln = LayerNormWeights(
            (1 + rnd(G, scale=0.2)).detach().requires_grad_(True),
            (1 + rnd(G, scale=0.2)).detach().requires_grad_(True),
            (1 + rnd(U, scale=0.2)).detach().requires_grad_(True) if lstm else None,
            rnd(U, scale=0.2) if lstm else None,
        )
    bias = None
    if spec.use_bias:
        two = spec.cell == "gru" and spec.reset_after  # GRU: input and recurrent rows
        bias = rnd(2, G, scale=0.3) if two else rnd(G, scale=0.3)
    return RecurrentWeights(rnd(I, G), rnd(U, G), bias, ln)


def _spec(cell, units, **kw):
    """``gru_rb``: the GRU with ``reset_after=False``."""
    if cell == "gru_rb":
        return RecurrenceSpec("gru", units, reset_after=False, **kw)
    return RecurrenceSpec(cell, units, **kw)


def _run(spec, w, kw, dtype, batch=B):
    """Outputs, final states and gradients of x, h0, c0 and every weight."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, T, I, generator=g, dtype=dtype).requires_grad_(True)
    state = tuple(
        torch.randn(batch, spec.units, generator=g, dtype=dtype).requires_grad_(True)
        for _ in range(spec.state_count)
    )
    out, final = fused.run(spec, w, x, state, **kw)
    weight = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
    loss = (out * weight).sum() + sum((s * (k + 2)).sum() for k, s in enumerate(final))
    params = [p for p in (w.kernel, w.recurrent_kernel, w.bias) if p is not None]
    if w.layer_norm is not None:
        params += [p for p in w.layer_norm if p is not None]
    return out, final, torch.autograd.grad(loss, [x, *state, *params])


LEFT = torch.tensor([[0] * k + [1] * (T - k) for k in (0, 2, 6, 1, 7)], dtype=torch.bool)
CASES = {
    "plain": ({}, {}),
    "left-padded": ({}, {"mask": LEFT}),
    "go_backwards+mask": ({}, {"mask": LEFT, "go_backwards": True}),
    "hard_sigmoid+relu": ({"recurrent_activation": "hard_sigmoid", "activation": "relu"}, {}),
    "linear+no_bias": ({"activation": "linear", "use_bias": False}, {}),
    "softsign+elu": ({"recurrent_activation": "softsign", "activation": "elu"}, {}),
    "selu": ({"activation": "selu"}, {}),
    "softplus+mask": ({"activation": "softplus"}, {"mask": LEFT}),
    # SiLU and GELU: the derivatives read the pre-activations (P; G itself for a plain SimpleRNN)
    "silu+gelu": ({"recurrent_activation": "silu", "activation": "gelu"}, {}),
    "silu+gelu+mask": ({"recurrent_activation": "silu", "activation": "gelu"}, {"mask": LEFT}),
    # the activation alone (sigmoid gates): the LSTM keeps the candidate's pre-activations only
    "gelu": ({"activation": "gelu"}, {}),
    "silu+mask+layer_norm": ({"activation": "silu", "layer_norm": True}, {"mask": LEFT}),
    "gelu+layer_norm+zoneout": (
        {"recurrent_activation": "gelu", "activation": "silu", "layer_norm": True},
        {"zoneout_mask": "zo"},
    ),
    "layer_norm": ({"layer_norm": True}, {}),
    "layer_norm+mask": ({"layer_norm": True}, {"mask": LEFT}),
    "recurrent_dropout": ({}, {"recurrent_dropout_mask": "rd"}),
    "zoneout+mask": ({}, {"zoneout_mask": "zo", "mask": LEFT}),
    "zoneout_eval": ({"zoneout": 0.25}, {}),
}


TAMED = {"elu", "selu", "softsign", "softplus", "silu", "gelu"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_rb", "simple"])
def test_compiled_loops_equal_python_loops(cell, case, dtype, monkeypatch):
    _check_against_python_loops(cell, case, dtype, U, monkeypatch)


@pytest.mark.parametrize(
    "case",
    ["plain", "left-padded", "recurrent_dropout", "zoneout+mask", "layer_norm", "silu+gelu+mask"],
)
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_rb", "simple"])
def test_loops_split_between_threads_equal_python_loops(cell, case, monkeypatch):
    # 40 units and 2 threads: the loops give the threads units 0-31 and 32-39 (layer norm: batch
    # rows in chunks of at least 8192 / (gates * units), each thread with its own accumulator of
    # the gamma gradient: a batch of 420 reaches both threads for every cell)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if case == "layer_norm":  # float64: the sums of 420 rows, compared without float32 rounding
            _check_against_python_loops(cell, case, torch.float64, 40, monkeypatch, batch=420)
        else:
            _check_against_python_loops(cell, case, torch.float32, 40, monkeypatch)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("units", [1, 13])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_rb", "simple"])
def test_odd_sizes_equal_python_loops(cell, units, monkeypatch):
    # fewer units than a cache line of h, and a size that is no multiple of 16 (the loops split
    # units in parts of 16): float64, layer norm, SiLU/GELU (pre-activations kept), zoneout
    _check_against_python_loops(cell, "gelu+layer_norm+zoneout", torch.float64, units, monkeypatch)


@pytest.mark.parametrize("batch", [37, 100])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["plain", "recurrent_dropout", "layer_norm", "silu+gelu"])
def test_weight_gradients_from_transposed_chunks(case, threads, batch, monkeypatch):
    # The LSTM's backward loop sums the weight gradients from chunks of whole steps, ~128 rows
    # with brgemm (float32 where torch has it: x2 and h_in transposed, the gate rows read as
    # they are), else ~512 rows, all operands transposed, in 16 x 16 register tiles (AVX-512)
    # with element-by-element edges: batch 37 (two tiles and 5 edge rows per step; 259 rows:
    # chunks of 4 steps and 3, or one), batch 100 (700 rows: chunks of 2 steps and a last one, or
    # 6 steps and 1); 6 inputs (edges only), 40 units. The weight gradients sum 7 x 100 rows in
    # float32: atol 5e-5.
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_against_python_loops(
            "lstm", case, torch.float32, 40, monkeypatch, batch=batch, atol=5e-5
        )
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["plain", "linear+no_bias", "go_backwards+mask", "zoneout_eval"])
def test_input_projection_in_the_loop_chunk_by_chunk(case, threads, monkeypatch):
    # With brgemm the float32 LSTM loop projects its input itself, ~128 rows of whole steps at
    # a time (batch 37: chunks of 3, 3 and 1 steps), each thread the columns of its own units (40
    # units: 32 + 8 with 2 threads), the bias added in the gate pass; training and inference
    _brgemm_available()
    spec_kw, kw = CASES[case]
    batch = 37
    kw = {**kw, "mask": _left_rows(batch)} if "mask" in kw else kw
    spec = _spec("lstm", 40, **spec_kw)
    w = _weights(spec, torch.float32)
    x = torch.randn(batch, T, I, generator=torch.Generator().manual_seed(4))
    state = (torch.zeros(batch, 40), torch.ones(batch, 40))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_against_python_loops(
            "lstm", case, torch.float32, 40, monkeypatch, batch=batch, tame=True
        )
        with torch.no_grad():  # inference (the loop keeps one step's buffers)
            monkeypatch.setenv(cpu_ext.ENV_SWITCH, "0")
            python = fused.run(spec, w, x, state, **kw)
            monkeypatch.delenv(cpu_ext.ENV_SWITCH)
            compiled = fused.run(spec, w, x, state, **kw)
        torch.testing.assert_close(compiled, python, rtol=1e-4, atol=2e-5)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("blocked", [True, False], ids=["gate_blocked", "plain_weights"])
@pytest.mark.parametrize(
    "case",
    ["plain", "left-padded", "recurrent_dropout", "zoneout+mask", "silu+gelu+mask", "layer_norm"],
)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_loops_read_gate_blocked_or_plain_weights(cell, case, blocked, threads, monkeypatch):
    # the compiled LSTM and GRU loops read (G, K, u) gate blocks or the (K, G u) matrix as it
    # comes (fused._gate_blocked: plain for calls of a few steps); 40 units: 32 + 8 units (LSTM)
    # or column blocks (GRU) with 2 threads
    _brgemm_available()
    monkeypatch.setattr(fused, "_gate_blocked", lambda steps, width: blocked)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_against_python_loops(cell, case, torch.float32, 40, monkeypatch, tame=True)
    finally:
        torch.set_num_threads(saved)


def test_which_weight_layout_the_loops_read():
    # plain for a few steps at any width, and for up to 32 where the weight's rows (G u floats)
    # are no multiple of 4 KB: LSTM units no multiple of 256, GRU units no multiple of 1024
    assert not fused._gate_blocked(4, 4 * 256) and fused._gate_blocked(5, 4 * 256)
    assert not fused._gate_blocked(32, 4 * 650) and fused._gate_blocked(33, 4 * 650)
    assert fused._gate_blocked(8, 4 * 512) and not fused._gate_blocked(8, 4 * 200)
    assert not fused._gate_blocked(8, 3 * 256) and fused._gate_blocked(8, 3 * 1024)


@pytest.mark.parametrize("case", ["plain", "layer_norm"])
def test_wide_weight_gradients_from_transposed_chunks(case, monkeypatch):
    # above 1536 gate columns (4u) the LSTM's weight gradients come from oneDNN's linear of
    # transposed chunks of ~512 rows in float32 too (below, brgemm reads the gate rows): 400
    # units, batch 100 (700 rows: chunks of 6 steps and 1), weights scaled to 400 units
    _check_against_python_loops(
        "lstm", case, torch.float32, 400, monkeypatch, batch=100, atol=5e-5, tame=True
    )


def _left_rows(batch):
    return LEFT.repeat((batch + LEFT.shape[0] - 1) // LEFT.shape[0], 1)[:batch]


def _check_against_python_loops(
    cell, case, dtype, units, monkeypatch, batch=B, atol=2e-5, tame=False
):
    _compiled_available()
    spec_kw, kw = CASES[case]
    spec = _spec(cell, units, **spec_kw)
    g = torch.Generator().manual_seed(5)
    masks = {
        "rd": (torch.rand(batch, units, generator=g) > 0.3).to(dtype) / 0.7,
        "zo": (torch.rand(batch, T, units, generator=g) > 0.5).to(dtype),
    }
    kw = {k: masks.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    if "mask" in kw:  # LEFT's rows again for a larger batch
        kw["mask"] = _left_rows(batch)
    w = _weights(spec, dtype)
    # unbounded activations (gates, too) at the default scale give gradients of 100s, where
    # float32 rounding alone exceeds the tolerance: a tamer problem
    if tame or {spec_kw.get("activation"), spec_kw.get("recurrent_activation")} & TAMED:
        with torch.no_grad():
            for p in (w.kernel, w.recurrent_kernel, *(w.layer_norm or ())):
                if p is not None:
                    p.mul_(0.3 * (U / units) ** 0.5)
    compiled = _run(spec, w, kw, dtype, batch)
    monkeypatch.setenv(cpu_ext.ENV_SWITCH, "0")
    tanh = fused._ACTS["tanh"]
    assert fused._compiled_ops(spec.cell, tanh, tanh, w.kernel.device, w.kernel.dtype) is None
    python = _run(spec, w, kw, dtype, batch)
    tol = {"rtol": 1e-4, "atol": atol} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    (o1, s1, g1), (o2, s2, g2) = compiled, python
    torch.testing.assert_close(o1, o2, **tol)
    for a, b in zip(s1, s2, strict=True):
        torch.testing.assert_close(a, b, **tol)
    for k, (a, b) in enumerate(zip(g1, g2, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"gradient {k}: {m}")


def test_which_calls_the_compiled_loops_run():
    _compiled_available()
    act, x = fused._ACTS, torch.zeros(1)
    for cell in ("lstm", "gru", "simple"):  # GRU: both forms
        assert fused._compiled_ops(cell, act["tanh"], act["sigmoid"], x.device, x.dtype) is not None
    for name in act:  # every named activation
        ops = fused._compiled_ops("lstm", act[name], act[name], x.device, x.dtype)
        assert ops is not None, name
    assert fused._compiled_ops("lstm", act["tanh"], act["sigmoid"], x.device, torch.float16) is None


def test_build_failure_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(cpu_ext, "_state", {})
    monkeypatch.setenv(cpu_ext.ENV_SWITCH, "1")

    def broken():
        raise OSError("no C++ compiler")

    monkeypatch.setattr(cpu_ext, "_build", broken)
    with pytest.warns(RuntimeWarning, match=r"no C\+\+ compiler"):
        assert cpu_ext.ops() is None
    assert cpu_ext.build_error() == "OSError: no C++ compiler"
    spec = RecurrenceSpec("lstm", U)
    w = _weights(spec, torch.float32)
    out, _, grads = _run(spec, w, {}, torch.float32)  # the Python loops, no second warning
    assert out.shape == (B, T, U) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_environment_switch_turns_the_extension_off(value, monkeypatch):
    monkeypatch.setenv(cpu_ext.ENV_SWITCH, value)
    assert not cpu_ext.enabled()
    assert cpu_ext.ops() is None


def test_build_name_depends_on_the_source():
    name = cpu_ext.build_name()
    assert name.startswith("rnnkit_fused_cpu_") and len(name) == len("rnnkit_fused_cpu_") + 12
    assert cpu_ext.build_name() == name


@pytest.mark.parametrize("case", ["plain", "layer_norm", "zoneout+mask"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_rb", "simple"])
def test_loops_without_brgemm_use_the_packed_onednn_product(cell, case, monkeypatch):
    # torch builds without a float32 brgemm (older than this one): oneDNN's linear, packed weight
    monkeypatch.setattr(cpu_ext, "has_brgemm", lambda ops: False)
    _check_against_python_loops(cell, case, torch.float32, 40, monkeypatch)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(200, 800), (37, 51), (16, 16), (3, 40), (0, 5)])
def test_transpose_equals_torch(shape, dtype, threads):
    # the vendor backend's weights: 16 x 16 register tiles (float32, AVX-512) with element-by-
    # element edges (37 x 51: both), split between threads by 16-column strips
    _compiled_available()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(*shape, dtype=dtype)
        out = cpu_ext.ops().transpose(x)
        assert out.is_contiguous() and out.shape == (shape[1], shape[0])
        assert torch.equal(out, x.t())
        strided = torch.randn(shape[1], shape[0], dtype=dtype).t()  # a transposed view
        assert torch.equal(cpu_ext.ops().transpose(strided), strided.t())
    finally:
        torch.set_num_threads(saved)


def test_transpose_refuses_other_ranks():
    _compiled_available()
    with pytest.raises(RuntimeError, match="2-D tensor, received 3-D"):
        cpu_ext.ops().transpose(torch.zeros(2, 3, 4))


def _brgemm_available():
    _compiled_available()
    if not cpu_ext.has_brgemm(cpu_ext.ops()):
        pytest.skip("this torch build has no float32 brgemm")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("rows", "widths", "cols"),
    [(300, [6, 40], 160), (128, [37], 768), (257, [128, 256], 1024), (5, [3], 17)],
)
def test_weight_grads_equal_torch(rows, widths, cols, threads):
    # [a_1 | a_2]^T b by brgemm: chunks of 128 rows (300, 257: a short last chunk; 5: one),
    # lefts transposed in 16 x 16 tiles with edges (6, 37, 3 columns), b's columns split
    # between threads (768: 4 x 192 with 2 threads; 17: one block)
    _brgemm_available()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(1)
        lefts = [torch.randn(rows, w, generator=g) for w in widths]
        b = torch.randn(rows, cols, generator=g)
        out = cpu_ext.ops().weight_grads(lefts, b)
        expected = torch.cat(lefts, dim=1).double().t() @ b.double()
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(saved)


def test_weight_grads_refuses_bad_operands():
    _brgemm_available()
    ops = cpu_ext.ops()
    with pytest.raises(RuntimeError, match=r"lefts, N = 4"):
        ops.weight_grads([torch.zeros(3, 2)], torch.zeros(4, 5))
    with pytest.raises(RuntimeError, match="float32"):
        ops.weight_grads([torch.zeros(4, 2)], torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.weight_grads([torch.zeros(4, 2)], torch.zeros(5, 4).t())
