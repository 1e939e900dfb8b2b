"""The layers on a CUDA device: which backend ``auto`` picks, and that it computes what the
reference loop computes (outputs, final states, gradients of inputs and every parameter).

On a GPU, every recurrence of these shapes (16 units, 5 rows: the products run on padded rows;
LSTM, GRU in both forms, SimpleRNN) goes to Triton in every configuration (standard, layer norm,
dropouts, DropConnect, zoneout, masks, the twelve named activations); an arbitrary activation
function to the reference loop. Without CUDA
the Triton cases run in Triton's interpreter when ``TRITON_INTERPRET=1`` (CPU tensors, routed as
on a GPU, no CUDA graphs); otherwise everything here is skipped.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

from rnnkit.kernels import dispatch, triton_rnn
from rnnkit.layers import GRU, LSTM, SimpleRNN

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = not HAS_CUDA and HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (HAS_CUDA or INTERPRET), reason="needs CUDA (or TRITON_INTERPRET=1)"),
]
DEVICE = "cuda" if HAS_CUDA else "cpu"

CASES = {
    "lstm": (LSTM, {}, False, "triton"),
    "lstm left-padded": (LSTM, {}, True, "triton"),
    "lstm layer norm + dropouts": (
        LSTM, dict(layer_norm=True, dropout=0.2, recurrent_dropout=0.3), False, "triton"),
    "lstm recurrent dropout": (LSTM, dict(recurrent_dropout=0.3), False, "triton"),
    "lstm DropConnect": (LSTM, dict(recurrent_weight_dropout=0.3), False, "triton"),
    "lstm zoneout": (LSTM, dict(zoneout=0.2), False, "triton"),
    "lstm hard_sigmoid": (LSTM, dict(recurrent_activation="hard_sigmoid"), False, "triton"),
    "lstm layer norm, masked": (LSTM, dict(layer_norm=True), True, "triton"),
    "lstm gelu": (LSTM, dict(activation="gelu"), False, "triton"),
    "lstm silu gates": (LSTM, dict(recurrent_activation="silu"), False, "triton"),
    "lstm callable activation": (LSTM, dict(activation=lambda x: torch.tanh(x) * 0.5), False,
                                 "reference"),
    "gru left-padded": (GRU, {}, True, "triton"),
    "simple rnn left-padded": (SimpleRNN, {}, True, "triton"),
    # cuDNN, named: what auto picks for large products (and where Triton is missing)
    "lstm on cuDNN": (LSTM, dict(backend="vendor"), False, "vendor"),
    "gru left-padded on cuDNN": (GRU, dict(backend="vendor"), True, "vendor"),
    "simple rnn on cuDNN": (SimpleRNN, dict(backend="vendor"), False, "vendor"),
    "gru": (GRU, {}, False, "triton"),
    "gru layer norm + dropouts": (
        GRU, dict(layer_norm=True, dropout=0.2, recurrent_dropout=0.3), False, "triton"),
    "gru zoneout": (GRU, dict(zoneout=0.2), False, "triton"),
    "gru reset_after=False": (GRU, dict(reset_after=False), False, "triton"),
    "gru reset_after=False, left-padded, layer norm": (
        GRU, dict(reset_after=False, layer_norm=True), True, "triton"),
    "simple rnn": (SimpleRNN, {}, False, "triton"),
    "simple rnn layer norm + dropouts": (
        SimpleRNN, dict(layer_norm=True, dropout=0.2, recurrent_dropout=0.3), False, "triton"),
    "simple rnn gelu": (SimpleRNN, dict(activation="gelu"), False, "triton"),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    # Triton's interpreter runs the kernels on CPU tensors: route the layers as on a GPU.
    if not INTERPRET:
        return
    monkeypatch.setattr(triton_rnn, "_device_reason", lambda device, dtype: None)
    monkeypatch.setattr(dispatch, "auto_order", lambda **_: dispatch.TRITON_FIRST_ORDER)
    run = triton_rnn.run
    monkeypatch.setattr(triton_rnn, "run", lambda *a, **k: run(*a, **k, cuda_graphs=False))


@pytest.fixture(autouse=True)
def _no_tf32():
    # cuDNN's RNNs use TF32 by default; the comparison is in plain float32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _spy_backends(monkeypatch) -> list[str]:
    picked: list[str] = []
    select = dispatch.select

    def spy(*args, **kwargs):
        name = select(*args, **kwargs)
        picked.append(name)
        return name

    monkeypatch.setattr(dispatch, "select", spy)
    return picked


@pytest.mark.parametrize("case", list(CASES))
def test_auto_on_cuda_matches_reference(case, monkeypatch):
    layer_cls, options, masked, expected = CASES[case]
    if expected == "triton" and not HAS_TRITON:
        pytest.skip("needs Triton")
    if INTERPRET and expected == "vendor":
        pytest.skip("cuDNN: needs CUDA")
    torch.manual_seed(0)
    B, T, I, u = 5, 9, 6, 16
    auto = layer_cls(u, return_sequences=True, return_state=True, **options).to(DEVICE)
    auto.build(I, DEVICE, torch.float32)
    ref = copy.deepcopy(auto)
    ref.backend = "reference"
    x = torch.randn(B, T, I, device=DEVICE)
    lengths = torch.tensor([9, 4, 7, 1, 9], device=DEVICE)
    # Left padding: the valid steps are the last ``length`` ones.
    mask = (torch.arange(T, device=DEVICE) >= T - lengths[:, None]) if masked else None

    results = []
    picked = _spy_backends(monkeypatch)
    for layer in (auto, ref):
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout / zoneout masks in both layers
        out, *states = layer(xi, mask=mask)
        g = torch.Generator(DEVICE).manual_seed(2)
        cot = [torch.randn(t.shape, generator=g, device=DEVICE) for t in (out, *states)]
        loss = sum((t * c).sum() for t, c in zip((out, *states), cot, strict=True))
        params = [p for _, p in sorted(layer.named_parameters())]
        grads = torch.autograd.grad(loss, [xi, *params])
        results.append(((out, *states), grads))
    assert picked == [expected, "reference"], picked

    (out_a, grads_a), (out_r, grads_r) = results
    names = ["output", "h_T", "c_T"][: len(out_a)] + ["d inputs"]
    names += [n for n, _ in sorted(auto.named_parameters())]
    # ||auto - reference|| / ||reference|| per tensor: float32 lands at 1e-7 to 1e-5 (cuDNN,
    # Triton and the fused loop sum in other orders than the reference loop; cuDNN's SimpleRNN
    # measured 1.0e-5 on an H100); a wrong index, gate or mask gives errors near 1.
    errors = {
        name: (torch.linalg.norm(a - r) / torch.linalg.norm(r)).item()
        for name, a, r in zip(names, (*out_a, *grads_a), (*out_r, *grads_r), strict=True)
    }
    assert max(errors.values()) < 1e-4, errors
