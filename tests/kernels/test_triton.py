"""The Triton LSTM backend against a float64 CPU oracle. GPU tests skip without CUDA and Triton."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rnnkit.kernels import triton_lstm
from rnnkit.kernels.spec import RecurrenceSpec, RecurrentWeights

HAS_GPU = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CUDA and Triton")
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def test_importing_the_backend_does_not_import_triton():
    code = (
        "import sys, rnnkit.kernels.triton_lstm, rnnkit.kernels._triton_lstm_steps; "
        "assert 'triton' not in sys.modules or sys.argv[1] == '1'"
    )
    has = "1" if importlib.util.find_spec("triton") else "0"
    subprocess.run([sys.executable, "-c", code, has], check=True)


def test_supports_nothing_on_cpu():
    assert not triton_lstm.supports(RecurrenceSpec("lstm", 4), "cpu")


def test_run_rejects_unsupported_configuration():
    spec = RecurrenceSpec("gru", 4)
    w = RecurrentWeights(torch.zeros(3, 12), torch.zeros(4, 12), None)
    with pytest.raises(ValueError, match="triton LSTM backend supports"):
        triton_lstm.run(spec, w, torch.zeros(2, 3, 3), (torch.zeros(2, 4),))


def equations(p, ln, go_backwards=False):
    """Layer-norm LSTM in plain torch (the oracle; float64 on the CPU)."""
    x, W, U, b, h, c = p["x"], p["W"], p["U"], p["b"], p["h0"], p["c0"]
    G = W.shape[1]
    if go_backwards:
        x = x.flip(1)
    xw = x @ W
    if ln:
        xw = F.layer_norm(xw, (G,), p["gx"], p["bx"], 1e-5)
    xw = xw + b
    outs = []
    for t in range(x.shape[1]):
        r = h @ U
        if ln:
            r = F.layer_norm(r, (G,), p["gh"], p["bh"], 1e-5)
        i, f, g, o = (xw[:, t] + r).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        cn = F.layer_norm(c, (G // 4,), p["gc"], p["bc"], 1e-5) if ln else c
        h = torch.sigmoid(o) * torch.tanh(cn)
        outs.append(h)
    return torch.stack(outs, 1), h, c


def problem(B, T, I, u, dtype, ln, seed):
    g = torch.Generator().manual_seed(seed)
    G = 4 * u

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).double()

    p = dict(x=r(B, T, I), W=r(I, G, scale=I**-0.5), U=r(u, G, scale=u**-0.5), b=r(G, scale=0.1),
             h0=r(B, u, scale=0.5), c0=r(B, u, scale=0.5))  # fmt: skip
    if ln:
        p.update(gx=r(G, scale=0.1, shift=1.0), bx=r(G, scale=0.1), gh=r(G, scale=0.1, shift=1.0),
                 bh=r(G, scale=0.1), gc=r(u, scale=0.1, shift=1.0), bc=r(u, scale=0.1))  # fmt: skip
    cot = [r(B, T, u), r(B, u), r(B, u)]
    return p, cot


def triton_call(p, ln, go_backwards=False, graphs=True):
    lnp = None
    if ln:
        lnp = triton_lstm.LayerNormParams(p["gx"], p["bx"], p["gh"], p["bh"], p["gc"], p["bc"])
    spec = RecurrenceSpec("lstm", p["U"].shape[0])
    w = RecurrentWeights(p["W"], p["U"], p["b"])
    out, (h, c) = triton_lstm.run(spec, w, p["x"], (p["h0"], p["c0"]), layer_norm=lnp,
                                  go_backwards=go_backwards, cuda_graphs=graphs)  # fmt: skip
    return out, h, c


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all()
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


def compare(B, T, I, u, dtype, ln, graphs=True, go_backwards=False, seed=0):
    p, cot = problem(B, T, I, u, dtype, ln, seed)
    ref = {k: v.clone().requires_grad_() for k, v in p.items()}
    dev = {k: v.to("cuda", dtype).requires_grad_() for k, v in p.items()}
    r_out = equations(ref, ln, go_backwards)
    d_out = triton_call(dev, ln, go_backwards, graphs)
    r_g = torch.autograd.grad(
        sum((o * c).sum() for o, c in zip(r_out, cot, strict=True)), list(ref.values())
    )
    d_g = torch.autograd.grad(
        sum((o.float() * c.to("cuda")).sum() for o, c in zip(d_out, cot, strict=True)),
        list(dev.values()),
    )
    errs = {n: rel(a, b) for n, a, b in zip(("out", "h", "c"), d_out, r_out, strict=True)}
    errs.update({"d" + k: rel(a, b) for k, a, b in zip(ref, d_g, r_g, strict=True)})
    assert max(errs.values()) < TOL[dtype], errs


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize("graphs", [True, False])
def test_matches_float64_equations(dtype, ln, graphs):
    compare(3, 5, 7, 12, dtype, ln, graphs=graphs, seed=int(ln) + 2 * int(graphs))


@gpu
@pytest.mark.gpu
def test_go_backwards_and_power_of_two_units():
    compare(4, 6, 8, 16, torch.float32, True, go_backwards=True)


@gpu
@pytest.mark.gpu
def test_two_layers_of_one_shape_in_flight():
    # Two recurrences of the same shape share an engine; each needs its own slot until backward.
    p, _ = problem(3, 5, 12, 12, torch.float32, True, 7)
    ref = {k: v.clone().requires_grad_() for k, v in p.items()}
    dev = {k: v.to("cuda", torch.float32).requires_grad_() for k, v in p.items()}
    y_ref = equations({**ref, "x": equations(ref, True)[0]}, True)[0]
    y_dev = triton_call({**dev, "x": triton_call(dev, True)[0]}, True)[0]
    y_ref.sum().backward()
    y_dev.sum().backward()
    assert rel(y_dev, y_ref) < 1e-4
    for k in ref:
        assert rel(dev[k].grad, ref[k].grad) < 1e-4, k


@gpu
@pytest.mark.gpu
def test_second_backward_raises():
    p, _ = problem(2, 3, 4, 8, torch.float32, False, 3)
    dev = {k: v.to("cuda", torch.float32).requires_grad_() for k, v in p.items()}
    out = triton_call(dev, False)[0]
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.sum().backward()
