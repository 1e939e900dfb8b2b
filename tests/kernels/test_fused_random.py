"""The fused backend in float32 against the reference loop in float64, on random configurations.

`test_fused.py` walks a grid of configurations on tiny shapes in float64. The compiled float32
loops branch on sizes the grid never reaches: brgemm products, weights in gate blocks or plain
(`fused._gate_blocked`: more than 4 or 32 steps), the LSTM's input projection and weight
gradients in chunks of ~128 rows of whole steps, steps split between two threads by units,
widths that are no multiple of the 16-float vectors. Here each case draws a cell, sizes across
those boundaries, a mask, the dropout / zoneout / DropConnect masks, activations, layer norm and
the thread count from one seed, and compares outputs, final states and every gradient with the
float64 reference on the same numbers (the float64 reference is the better oracle: where the two
float32 loops differ, the fused one was measured the closer to it). The activations are
bounded, the gates sigmoid-like and the weights scaled by the fan-in, so that the recurrences stay
well conditioned (with tanh gates some draws were chaotic: the float32 reference itself missed
its float64 by 1e-2 to 1 after 70 steps); the 32 cases below pass with a margin of 7x or more.
"""

from __future__ import annotations

import random

import pytest
import torch

from rnnkit.kernels import fused, reference
from rnnkit.kernels.spec import LayerNormWeights, RecurrenceSpec, RecurrentWeights

F32, F64 = torch.float32, torch.float64
CELLS = [("lstm", True), ("gru", True), ("gru", False), ("simple", True)]
CASES = 32  # 8 of each cell


def _case(seed: int) -> dict:
    r = random.Random(seed)
    cell, reset_after = CELLS[seed % len(CELLS)]
    case = {
        "cell": cell,
        "reset_after": reset_after,
        "units": r.choice([3, 16, 17, 33, 64, 130, 257]),
        "inputs": r.choice([1, 5, 16, 31, 128]),
        "batch": r.choice([1, 3, 8, 33, 40]),
        "steps": r.choice([1, 4, 5, 33, 40, 70]),
        "mask": r.choice([None, None, "right", "left", "random"]),
        "go_backwards": r.random() < 0.3,
        "layer_norm": r.random() < 0.35,
        "activation": r.choice(["tanh", "tanh", "softsign", "sigmoid"]),
        "recurrent_activation": r.choice(["sigmoid", "sigmoid", "hard_sigmoid"]),
        "use_bias": r.random() < 0.8,
        "zoneout": r.random() < 0.2,
        "recurrent_dropout": r.random() < 0.25,
        "input_dropout": r.random() < 0.2,
        "drop_connect": r.random() < 0.2,
        "initial_state": r.random() < 0.5,
        "threads": r.choice([1, 2]),
    }
    # a LayerNorm over a few units, or of a projection of one or two features (its gradient
    # goes as 1 / |x|), is ill-conditioned: the float32 reference itself misses its float64 by
    # 1e-3 there (the float64 fused loops still match it)
    case["layer_norm"] &= case["units"] >= 16 and case["inputs"] >= 5
    return case


def _problem(case: dict, seed: int):
    """The spec, float32 weights, input, initial state and keyword masks of a case."""
    g = torch.Generator().manual_seed(seed)
    cell, u, n_in = case["cell"], case["units"], case["inputs"]
    B, T = case["batch"], case["steps"]
    spec = RecurrenceSpec(
        cell,
        u,
        activation=case["activation"],
        recurrent_activation=case["recurrent_activation"],
        use_bias=case["use_bias"],
        reset_after=case["reset_after"],
        layer_norm=case["layer_norm"],
    )
    G = spec.gates

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    bias = None
    if spec.use_bias:
        two = cell == "gru" and case["reset_after"]
        bias = rnd(2, G * u, scale=0.3) if two else rnd(G * u, scale=0.3)
    ln = None
    if spec.layer_norm:
        lstm = cell == "lstm"
        ln = LayerNormWeights(
            1 + rnd(G * u, scale=0.2),
            1 + rnd(G * u, scale=0.2),
            1 + rnd(u, scale=0.2) if lstm else None,
            rnd(u, scale=0.2) if lstm else None,
        )
    kernel, recurrent = rnd(n_in, G * u, scale=n_in**-0.5), rnd(u, G * u, scale=u**-0.5)
    weights = RecurrentWeights(kernel, recurrent, bias, ln)
    x = rnd(B, T, n_in)
    state = tuple(
        rnd(B, u) if case["initial_state"] else torch.zeros(B, u) for _ in range(spec.state_count)
    )
    kw = {"go_backwards": case["go_backwards"]}
    if case["mask"] == "random":
        kw["mask"] = torch.rand(B, T, generator=g) < 0.7
    elif case["mask"] is not None:
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        steps = torch.arange(T)[None]
        right = case["mask"] == "right"
        kw["mask"] = steps < lengths[:, None] if right else steps >= (T - lengths)[:, None]
    if case["recurrent_dropout"]:
        kw["recurrent_dropout_mask"] = (torch.rand(B, u, generator=g) > 0.3).float() / 0.7
    if case["input_dropout"]:
        kw["input_dropout_mask"] = (torch.rand(B, n_in, generator=g) > 0.2).float() / 0.8
    if case["zoneout"]:
        kw["zoneout_mask"] = (torch.rand(B, T, u, generator=g) < 0.2).float()
    if case["drop_connect"]:
        keep = torch.rand(u, G * u, generator=g) > 0.3
        kw["recurrent_kernel_dropout_mask"] = keep.float() / 0.7
    return spec, weights, x, state, kw


def _leaves(tensors, dtype):
    return [None if t is None else t.to(dtype).requires_grad_(True) for t in tensors]


def _run(backend, spec, weights, x, state, kw, dtype, seed):
    """Outputs, final states and the gradients of every input of one backend in ``dtype``."""
    w_leaves = _leaves(weights[:3], dtype)
    ln = weights.layer_norm
    ln_leaves = None if ln is None else LayerNormWeights(*_leaves(ln, dtype))
    w = RecurrentWeights(*w_leaves, ln_leaves)
    xs, states = _leaves([x], dtype)[0], tuple(_leaves(state, dtype))
    options = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
               for k, v in kw.items()}  # fmt: skip
    out, final = backend.run(spec, w, xs, states, **options)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g).to(dtype)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g).to(dtype)).sum() for s in final)
    inputs = [t for t in (*w_leaves, *(ln_leaves or ()), xs, *states) if t is not None]
    return [out, *final, *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("seed", range(CASES))
def test_fused_float32_equals_float64_reference_on_random_configurations(seed):
    case = _case(seed)
    spec, weights, x, state, kw = _problem(case, seed)
    torch.set_num_threads(case["threads"])  # (the conftest fixture restores it)
    got = _run(fused, spec, weights, x, state, kw, F32, seed)
    want = _run(reference, spec, weights, x, state, kw, F64, seed)
    names = ["output", *(f"state {k}" for k in range(spec.state_count)), "gradients"]
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        scale = b.abs().max().item() if b.numel() else 0.0
        name = names[min(k, len(names) - 1)]
        torch.testing.assert_close(
            a.double(),
            b,
            rtol=1e-4,
            atol=1e-4 * max(scale, 1e-3),
            msg=lambda m, k=k, name=name: f"{name} (result {k}) of {case}: {m}",
        )
