"""The Triton backend (LSTM, GRU, SimpleRNN) against the float64 CPU reference loop.

GPU tests skip without CUDA and Triton; ``benchmarks/bench_gpu.py`` runs the same checks at the
benchmark shape and times the backend against cuDNN. Without a GPU, Triton's interpreter runs
them on the CPU (eagerly, no CUDA graphs)::

    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton.py   # needs `pip install triton`
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from rnnkit.kernels import reference, triton_rnn
from rnnkit.kernels.spec import (
    BackendUnavailable,
    LayerNormWeights,
    RecurrenceSpec,
    RecurrentWeights,
)

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_GPU = torch.cuda.is_available() and HAS_TRITON
INTERPRET = not HAS_GPU and HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
gpu = pytest.mark.skipif(
    not (HAS_GPU or INTERPRET), reason="needs CUDA and Triton (or TRITON_INTERPRET=1 and Triton)"
)
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
DEVICE = "cuda" if HAS_GPU else "cpu"


@pytest.fixture(autouse=True)
def _interpreter(request, monkeypatch):
    # The interpreter runs the kernels on CPU tensors, which the backend otherwise refuses.
    if INTERPRET and request.node.get_closest_marker("gpu"):
        monkeypatch.setattr(triton_rnn, "_device_reason", lambda device, dtype: None)


def test_importing_the_backend_does_not_import_triton():
    code = (
        "import sys, rnnkit.kernels.triton_rnn, rnnkit.kernels._triton_steps; "
        "assert 'triton' not in sys.modules or sys.argv[1] == '1'"
    )
    has = "1" if importlib.util.find_spec("triton") else "0"
    subprocess.run([sys.executable, "-c", code, has], check=True)


def test_supports_nothing_on_cpu():
    assert not triton_rnn.supports(RecurrenceSpec("lstm", 4), "cpu")
    assert "CUDA" in triton_rnn.unsupported_reason(RecurrenceSpec("lstm", 4), "cpu")


def _raise_from(module: str, message: str):
    """Raise RuntimeError(message) from a frame that belongs to ``module``."""
    scope = {"__name__": module}
    exec("def fail(message):\n    raise RuntimeError(message)\n", scope)
    scope["fail"](message)


def test_failures_inside_triton_are_told_apart_from_others():
    with pytest.raises(RuntimeError) as inside:
        _raise_from("triton.runtime.build", "Failed to find C compiler")
    assert triton_rnn._raised_by_triton(inside.value)
    with pytest.raises(RuntimeError) as outside:
        torch.empty(2, 3) @ torch.empty(4, 5)  # a shape error from torch
    assert not triton_rnn._raised_by_triton(outside.value)


@gpu
@pytest.mark.gpu
def test_a_triton_toolchain_failure_turns_the_backend_off(monkeypatch):
    monkeypatch.setattr(triton_rnn, "_BROKEN", [])
    monkeypatch.setattr(triton_rnn, "_ENGINES", {})
    from rnnkit.kernels import _triton_steps

    class Broken:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: _raise_from("triton.runtime.build", "no C compiler")

    monkeypatch.setattr(_triton_steps, "lstm_forward_step", Broken())
    p, _, _ = problem(2, 3, 4, 8, torch.float32, False, 3)
    dev = {k: v.to(DEVICE, torch.float32).requires_grad_() for k, v in p.items()}
    with pytest.raises(BackendUnavailable, match="no C compiler"):
        call(triton_rnn.run, dev, False, {}, cuda_graphs=HAS_GPU)
    assert triton_rnn._BROKEN == ["RuntimeError: no C compiler"]
    if HAS_GPU:  # auto warns once and runs the call on cuDNN instead
        from rnnkit.kernels import dispatch

        spec = RecurrenceSpec("lstm", 8)
        assert "failed on this machine" in triton_rnn.unsupported_reason(spec, "cuda")
        assert dispatch.select(spec, device=torch.device("cuda"), dtype=torch.float32) == "vendor"


def test_older_gpus_are_left_to_cudnn(monkeypatch):
    # Pretend to be a CUDA machine with Triton; only the GPU's generation differs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(triton_rnn, "triton_available", lambda: True)
    spec = RecurrenceSpec("lstm", 8)
    capability = {"value": (6, 1)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability["value"])
    assert "compute capability 7.0" in triton_rnn.unsupported_reason(spec, "cuda")
    capability["value"] = (7, 5)
    assert triton_rnn.supports(spec, "cuda", dtype=torch.float32)
    assert "bfloat16" in triton_rnn.unsupported_reason(spec, "cuda", dtype=torch.bfloat16)
    capability["value"] = (9, 0)
    assert triton_rnn.supports(spec, "cuda", dtype=torch.bfloat16)


def test_run_rejects_unsupported_configuration():
    spec = RecurrenceSpec("gru", 4, reset_after=False)
    w = RecurrentWeights(torch.zeros(3, 12), torch.zeros(4, 12), None)
    with pytest.raises(ValueError, match="triton backend cannot run this call"):
        triton_rnn.run(spec, w, torch.zeros(2, 3, 3), (torch.zeros(2, 4),))


def problem(B, T, I, u, dtype, ln, seed, options=()):
    """Float64 CPU leaves (values rounded to ``dtype``), cotangents and the call's masks."""
    g = torch.Generator().manual_seed(seed)
    G = 4 * u

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).double()

    p = dict(x=r(B, T, I), W=r(I, G, scale=I**-0.5), U=r(u, G, scale=u**-0.5), b=r(G, scale=0.1),
             h0=r(B, u, scale=0.5), c0=r(B, u, scale=0.5))  # fmt: skip
    if ln:
        p.update(gx=r(G, scale=0.1, shift=1.0), gh=r(G, scale=0.05, shift=0.5),
                 gc=r(u, scale=0.1, shift=1.0), bc=r(u, scale=0.1))  # fmt: skip
    cot = [r(B, T, u), r(B, u), r(B, u)]

    return p, cot, call_options(g, B, T, I, u, G, options)


def call_options(g, B, T, I, u, G, options):
    """The ``run`` keyword arguments that ``options`` name, drawn from the generator ``g``."""

    def drop(*shape, rate=0.3):
        return (torch.rand(*shape, generator=g) > rate).double() / (1 - rate)

    every = "dropouts" in options  # input and recurrent dropout and DropConnect together
    masks = {}
    if "input_dropout" in options or every:
        masks["input_dropout_mask"] = drop(B, I)
    if "recurrent_dropout" in options or every:
        masks["recurrent_dropout_mask"] = drop(B, u)
    if "dropconnect" in options or every:
        masks["recurrent_kernel_dropout_mask"] = drop(u, G)
    if "go_backwards" in options:
        masks["go_backwards"] = True
    if "left_padded" in options:  # lengths T, ~T/2, 1 and 0 (a row with no real step)
        lengths = torch.tensor([T, T // 2, 1, 0] * B)[:B]
        masks["mask"] = torch.arange(T) >= T - lengths[:, None]
    if "random_mask" in options:
        masks["mask"] = torch.rand(B, T, generator=g) > 0.4
    if "zero_output" in options:
        masks["zero_output_for_mask"] = True
    if "zoneout_mask" in options:
        masks["zoneout_mask"] = (torch.rand(B, T, u, generator=g) < 0.3).double()
    return masks


def call(run, p, ln, masks, spec_options=None, **kw):
    spec = RecurrenceSpec("lstm", p["U"].shape[0], layer_norm=ln, **(spec_options or {}))
    lnw = LayerNormWeights(p["gx"], p["gh"], p["gc"], p["bc"]) if ln else None
    w = RecurrentWeights(p["W"], p["U"], p["b"], lnw)
    out, (h, c) = run(spec, w, p["x"], (p["h0"], p["c0"]), **masks, **kw)
    return out, h, c


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all()
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


def compare(B, T, I, u, dtype, ln, graphs=True, seed=0, options=(), spec_options=None):
    """Relative errors of every output and gradient against the float64 reference."""
    p, cot, masks = problem(B, T, I, u, dtype, ln, seed, options)
    graphs = graphs and HAS_GPU  # the interpreter runs eagerly

    def run(fn, q, o, **kw):
        return call(fn, q, ln, o, spec_options, **kw)

    return against_reference(run, p, masks, cot, dtype, graphs)


def against_reference(run, p, options, cot, dtype, graphs=HAS_GPU):
    """Run ``run(fn, leaves, options)`` on the float64 reference and on the Triton backend;
    assert every output's and gradient's relative error is under the dtype's tolerance."""
    ref = {k: v.clone().requires_grad_() for k, v in p.items()}
    dev = {k: v.to(DEVICE, dtype).requires_grad_() for k, v in p.items()}
    dopts = {
        k: v.to(DEVICE, dtype if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
        for k, v in options.items()
    }
    r_out = run(reference.run, ref, options)
    d_out = run(triton_rnn.run, dev, dopts, cuda_graphs=graphs)
    r_g = torch.autograd.grad(
        sum((o * c).sum() for o, c in zip(r_out, cot, strict=True)), list(ref.values())
    )
    d_g = torch.autograd.grad(
        sum((o.float() * c.to(DEVICE)).sum() for o, c in zip(d_out, cot, strict=True)),
        list(dev.values()),
    )
    errs = {n: rel(a, b) for n, a, b in zip(("out", "h", "c"), d_out, r_out, strict=False)}
    errs.update({"d" + k: rel(a, b) for k, a, b in zip(ref, d_g, r_g, strict=True)})
    assert max(errs.values()) < TOL[dtype], errs
    return errs


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize("graphs", [True, False])
def test_matches_float64_reference(dtype, ln, graphs):
    compare(3, 5, 7, 12, dtype, ln, graphs=graphs, seed=int(ln) + 2 * int(graphs))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("ln", [False, True])
def test_dropouts_dropconnect_and_go_backwards(ln):
    options = ("input_dropout", "recurrent_dropout", "dropconnect", "go_backwards")
    compare(4, 6, 8, 16, torch.float32, ln, seed=5, options=options)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    "options",
    [("left_padded",), ("left_padded", "zero_output"), ("random_mask",),
     ("random_mask", "zero_output", "go_backwards"), ("zoneout_mask",),
     ("random_mask", "zoneout_mask", "recurrent_dropout", "go_backwards")],
    ids=lambda o: "+".join(o),
)  # fmt: skip
@pytest.mark.parametrize("ln", [False, True])
def test_masks_and_zoneout(options, ln):
    compare(4, 7, 5, 12, torch.float32, ln, seed=11, options=options)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masks_and_zoneout_half_precision(dtype):
    options = ("random_mask", "zoneout_mask", "recurrent_dropout")
    compare(4, 7, 5, 12, dtype, True, seed=12, options=options)


@gpu
@pytest.mark.gpu
def test_inference_zoneout_is_a_constant_mix():
    compare(3, 5, 4, 8, torch.float32, False, seed=13, spec_options={"zoneout": 0.3})


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", triton_rnn.ACTIVATIONS)
@pytest.mark.parametrize("which", ["activation", "recurrent_activation"])
def test_activations(name, which):
    # exponential gates grow the cell state by exp(.) per step: 2 steps keep float32 finite
    steps = 2 if name == "exponential" else 5
    compare(3, steps, 4, 8, torch.float32, False, seed=14, spec_options={which: name})


def test_activation_names_match_the_kernel_codes():
    from rnnkit.kernels._triton_steps import ACTIVATION_CODES
    from rnnkit.kernels.activations import ACTIVATIONS

    assert set(triton_rnn.ACTIVATIONS) == set(ACTIVATION_CODES)
    assert set(triton_rnn.ACTIVATIONS) <= set(ACTIVATIONS)
    assert triton_rnn.activation_name(torch.tanh) == "tanh"
    assert triton_rnn.activation_name(torch.nn.functional.gelu) == "gelu"
    assert triton_rnn.activation_name("gelu") == "gelu"
    assert triton_rnn.activation_name(lambda x: x) is None


def cell_compare(
    cell, dtype=torch.float32, ln=False, bias=True, options=(), seed=0, batch=4, **spec
):
    """The GRU (either form) or SimpleRNN against the float64 reference, like
    :func:`compare`."""
    B, T, I, u = batch, 6, 5, 8
    G = {"gru": 3, "simple": 1}[cell] * u
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).double()

    p = dict(x=r(B, T, I), W=r(I, G, scale=I**-0.5), U=r(u, G, scale=u**-0.5), h0=r(B, u))
    if bias:  # GRU (reset_after): input and recurrent bias rows
        two = cell == "gru" and spec.get("reset_after", True)
        p["b"] = r(2, G, scale=0.1) if two else r(G, scale=0.1)
    if ln:
        p.update(gx=r(G, scale=0.1, shift=1.0), gh=r(G, scale=0.05, shift=0.5))
    opts = call_options(g, B, T, I, u, G, options)
    spec = RecurrenceSpec(cell, u, layer_norm=ln, use_bias=bias, **spec)

    def call_cell(run, q, o, **kw):
        lnw = LayerNormWeights(q["gx"], q["gh"], None, None) if ln else None
        out, (h,) = run(spec, RecurrentWeights(q["W"], q["U"], q.get("b"), lnw), q["x"],
                        (q["h0"],), **o, **kw)  # fmt: skip
        return out, h

    cot = [r(B, T, u), r(B, u)]
    return against_reference(call_cell, p, opts, cot, dtype)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    "options",
    [(), ("random_mask",), ("random_mask", "zero_output", "go_backwards"), ("zoneout_mask",),
     ("left_padded", "zoneout_mask", "dropouts", "go_backwards")],
    ids=lambda o: "+".join(o) or "plain",
)  # fmt: skip
@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize("cell", ["gru", "simple"])
def test_gru_and_simple_rnn(cell, options, ln):
    cell_compare(cell, ln=ln, options=options, seed=21)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["gru", "simple"])
def test_gru_and_simple_rnn_without_bias_bfloat16_and_other_activations(cell):
    cell_compare(cell, bias=False, seed=22)
    cell_compare(cell, torch.bfloat16, ln=True, options=("random_mask", "dropouts"), seed=23)
    cell_compare(cell, torch.float16, options=("random_mask", "zoneout_mask"), seed=29)
    cell_compare(cell, activation="softsign", recurrent_activation="hard_sigmoid", seed=24)
    cell_compare(cell, activation="relu", seed=26)
    cell_compare(cell, activation="gelu", recurrent_activation="silu", seed=27)  # saved inputs
    cell_compare(cell, activation="silu", ln=True, options=("random_mask", "zoneout_mask"), seed=28)
    cell_compare(cell, zoneout=0.3, seed=25)  # inference: the constant mix


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_rb", "simple"])
def test_small_batches_run_the_products_on_padded_rows(cell, ln):
    # 5-19 rows in float32 (TF32 off, torch's default): the per-step products run on PAD_ROWS
    # rows whose extra rows stay zero; the kernels, outputs and gradients see the B real rows.
    assert not torch.backends.cuda.matmul.allow_tf32
    triton_rnn.clear_cache()
    options = ("left_padded", "dropouts", "zoneout_mask")
    if cell == "lstm":
        compare(7, 5, 6, 8, torch.float32, ln, seed=41, options=options)
    else:
        spec = {"reset_after": False} if cell == "gru_rb" else {}
        cell_compare(cell[:3] if cell != "simple" else cell, ln=ln, options=options, seed=41,
                     batch=7, **spec)  # fmt: skip
    rows = [e.rows for e in triton_rnn._ENGINES.values()]
    assert rows == [triton_rnn.PAD_ROWS]
    triton_rnn.clear_cache()
    compare(3, 5, 6, 8, torch.float32, ln, seed=42)  # 4 rows or fewer: no padding
    assert [e.rows for e in triton_rnn._ENGINES.values()] == [3]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    "options",
    [(), ("random_mask", "zero_output", "go_backwards"), ("zoneout_mask", "dropouts"),
     ("left_padded", "zoneout_mask", "dropouts", "go_backwards")],
    ids=lambda o: "+".join(o) or "plain",
)  # fmt: skip
@pytest.mark.parametrize("ln", [False, True])
def test_gru_reset_before(options, ln):
    # two products per step (the reset gate scales h_{t-1} before the candidate's)
    cell_compare("gru", ln=ln, options=options, seed=31, reset_after=False)


@gpu
@pytest.mark.gpu
def test_gru_reset_before_other_settings():
    cell_compare("gru", bias=False, seed=32, reset_after=False)
    cell_compare("gru", activation="gelu", recurrent_activation="hard_sigmoid", seed=33,
                 reset_after=False)  # fmt: skip
    cell_compare("gru", zoneout=0.3, seed=34, reset_after=False)
    opts = ("random_mask", "dropouts")
    cell_compare("gru", torch.bfloat16, ln=True, options=opts, seed=35, reset_after=False)
    cell_compare("gru", torch.float16, ln=True, options=opts, seed=36, reset_after=False)


def test_gru_reset_before_is_supported_on_cuda_only():
    spec = RecurrenceSpec("gru", 4, reset_after=False)
    assert not triton_rnn.supports(spec, "cpu")
    if torch.cuda.is_available() and HAS_TRITON:
        assert triton_rnn.supports(spec, "cuda")


@gpu
@pytest.mark.gpu
def test_sequences_of_varying_length_share_one_engine(monkeypatch):
    # 6 steps, then 4 (the first 4 steps of the same buffers), 9 (the buffers grow, the graphs
    # are dropped), 4 again: every call equals the reference.
    monkeypatch.setattr(triton_rnn, "_ENGINES", {})
    for T in (6, 4, 9, 4):
        compare(3, T, 5, 8, torch.float32, True, seed=T, options=("random_mask", "zoneout_mask"))
    (engine,) = triton_rnn._ENGINES.values()
    assert engine.slots[0].capacity == 9
    if HAS_GPU:
        assert sorted(engine.slots[0].graphs) == [4, 9]


def test_clear_cache_drops_every_engine(monkeypatch):
    monkeypatch.setattr(triton_rnn, "_ENGINES", {})
    config = (torch.float32, False, False, True, "tanh", "sigmoid", False, 0, 0.0)
    triton_rnn._engine("gru", "cuda:0", 4, 8, *config)
    assert len(triton_rnn._ENGINES) == 1
    triton_rnn.clear_cache()
    assert triton_rnn._ENGINES == {}


def test_engine_cache_keeps_the_most_recently_used(monkeypatch):
    monkeypatch.setattr(triton_rnn, "_ENGINES", {})
    config = (torch.float32, False, False, True, "tanh", "sigmoid", False, 0, 0.0)
    keys = [("lstm", "cuda:0", b, 8, *config) for b in range(1, triton_rnn.MAX_ENGINES + 3)]
    first = triton_rnn._engine(*keys[0])
    for key in keys[1:]:
        triton_rnn._engine(*key)
        triton_rnn._engine(*keys[0])  # used again: stays
    assert len(triton_rnn._ENGINES) == triton_rnn.MAX_ENGINES
    assert triton_rnn._engine(*keys[0]) is first
    batches = sorted(e.batch for e in triton_rnn._ENGINES.values())
    assert batches == [1, *range(4, triton_rnn.MAX_ENGINES + 3)]  # 2 and 3 dropped


@gpu
@pytest.mark.gpu
def test_two_layers_of_one_shape_in_flight():
    # Two recurrences of the same shape share an engine; each needs its own slot until backward.
    p, _, _ = problem(3, 5, 12, 12, torch.float32, True, 7)
    ref = {k: v.clone().requires_grad_() for k, v in p.items()}
    dev = {k: v.to(DEVICE, torch.float32).requires_grad_() for k, v in p.items()}
    y_ref = call(reference.run, {**ref, "x": call(reference.run, ref, True, {})[0]}, True, {})[0]
    kw = {"cuda_graphs": HAS_GPU}
    first = call(triton_rnn.run, dev, True, {}, **kw)[0]
    y_dev = call(triton_rnn.run, {**dev, "x": first}, True, {}, **kw)
    y_ref.sum().backward()
    y_dev[0].sum().backward()
    assert rel(y_dev[0], y_ref) < 1e-4
    for k in ref:
        assert rel(dev[k].grad, ref[k].grad) < 1e-4, k


@gpu
@pytest.mark.gpu
def test_second_backward_raises():
    p, _, _ = problem(2, 3, 4, 8, torch.float32, False, 3)
    dev = {k: v.to(DEVICE, torch.float32).requires_grad_() for k, v in p.items()}
    out = call(triton_rnn.run, dev, False, {}, cuda_graphs=HAS_GPU)[0]
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.sum().backward()


@pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs Triton, not its interpreter",
)
@pytest.mark.parametrize("flags_on", [False, True], ids=["plain", "every option"])
def test_every_step_kernel_compiles_for_hopper(flags_on):
    # Compiles to sm_90 machine code without a GPU (Triton ships ptxas): catches what the
    # interpreter does not check (types, constexpr branches, register allocation).
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rnnkit.kernels import _triton_steps as k

    storage = {"xn_ptr", "r_ptr", "h_ptr", "hin_ptr", "h_prev_ptr", "dout_ptr", "dhrec_ptr",
               "dz_ptr", "dr_ptr", "rh_ptr", "r2_ptr", "dr2_ptr", "drh_ptr",
               "dhin_ptr"}  # fmt: skip
    kernels = [k.lstm_forward_step, k.lstm_backward_step, k.gru_forward_step,
               k.gru_backward_step, k.simple_forward_step, k.simple_backward_step,
               k.gru_rb_gates_step, k.gru_rb_state_step, k.gru_rb_state_backward_step,
               k.gru_rb_gates_backward_step]  # fmt: skip
    cases = [(f, d, 2, 1) for f in kernels for d in ("fp32", "bf16", "fp16")]
    if not flags_on:  # every activation code, as activation and as recurrent activation
        codes = sorted(set(k.ACTIVATION_CODES.values()))
        cases += [(f, "fp32", c, c) for f in kernels for c in codes]
    for kernel, dtype, act, ract in cases:
        names = list(inspect.signature(kernel.fn).parameters)
        flags = {"U": 96, "BLOCK": 128, "LAYER_NORM": flags_on, "RDROP": flags_on, "ACT": act,
                 "RACT": ract, "MASKED": flags_on, "ZONEOUT": 1 if flags_on else 0,
                 "CARRY": flags_on}  # fmt: skip
        flags = {n: v for n, v in flags.items() if n in names}
        signature = {
            n: "constexpr" if n in flags
            else (f"*{dtype}" if n in storage else "*fp32") if n.endswith("_ptr")
            else "fp32" if n in ("eps", "zoneout") else "i32"
            for n in names
        }  # fmt: skip
        try:
            source = ASTSource(kernel, signature, {(names.index(n),): v for n, v in flags.items()})
        except TypeError as err:  # another Triton's compiler API
            pytest.skip(f"Triton {triton.__version__}: {err}")
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], kernel.fn.__name__
