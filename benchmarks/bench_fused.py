"""Benchmark the fused CPU recurrence against torch.nn.LSTM / GRU / RNN in the same process.

Usage::

    .venv/bin/python benchmarks/bench_fused.py [--batch 32] [--steps 100] [--inputs 128]
        [--units 256] [--threads 2] [--repeats 3] [--only lstm,gru,simple] [--memory]
        [--dtype float32|bfloat16|float16]

For each configuration: median seconds (torch.utils.benchmark, ``blocked_autorange``) of
forward+backward and of inference, and the ratio ``torch.nn.X standard time / rnnkit time``
(> 1 means rnnkit is faster) with the torch.nn module measured right before, in the same process.
torch.nn and rnnkit are measured alternately ``--repeats`` times per configuration (the machine is
shared and noisy); the table shows the median ratio and its min..max over the repeats.

``--memory`` also reports the peak memory of one training step (forward + backward) measured with
``torch.profiler`` (``profile_memory=True``): the maximum over time of the running sum of every
op's own CPU allocations minus frees (``self_cpu_memory_usage``, ordered by start time), i.e. the
peak of memory allocated during the step on top of the inputs and weights that exist before it.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.utils.benchmark as tb

from rnnkit.bench import peak_memory_bytes
from rnnkit.kernels import fused
from rnnkit.kernels.spec import RecurrenceSpec, RecurrentWeights, default_layer_norm_weights

TORCH_MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple": torch.nn.RNN}


def _configs(cell: str):
    yield "standard", {}, {}
    if cell == "gru":
        yield "reset_after=False", {"reset_after": False}, {}
    yield "layer norm", {"layer_norm": True}, {}
    yield "recurrent dropout", {}, {"recurrent_dropout": 0.25}
    yield "zoneout (train)", {}, {"zoneout": 0.1}
    yield "DropConnect", {}, {"drop_connect": 0.5}
    act = {"activation": "relu"} if cell == "simple" else {"recurrent_activation": "hard_sigmoid"}
    yield f"custom activation {next(iter(act.values()))}", act, {}
    yield "left-padded mask", {}, {"mask": "left"}
    yield "no bias", {"use_bias": False}, {}
    yield "go_backwards + right mask", {}, {"mask": "right", "go_backwards": True}


def _median(stmt, globs, min_run_time=1.0) -> float:
    t = tb.Timer(stmt=stmt, globals=globs, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=min_run_time).median


def _rnnkit_case(cell, spec_kw, opt, B, T, I, u, dtype=torch.float32):
    spec = RecurrenceSpec(cell, u, **spec_kw)
    G = spec.gates
    bias = None
    if spec.use_bias:
        bias = torch.zeros(2, G * u) if cell == "gru" and spec.reset_after else torch.zeros(G * u)
        bias.requires_grad_(True)
    ln = default_layer_norm_weights(spec) if spec.layer_norm else None
    if ln is not None:
        for p in ln:
            if p is not None:
                p.requires_grad_(True)
    w = RecurrentWeights(
        (torch.randn(I, G * u) * 0.05).requires_grad_(True),
        (torch.randn(u, G * u) * 0.05).requires_grad_(True),
        bias,
        ln,
    )
    if dtype != torch.float32:  # the same layer in that dtype: new leaves
        w = type(w)(
            *(_leaf(p, dtype) for p in w[:3]), ln and type(ln)(*(_leaf(p, dtype) for p in ln))
        )
    x = torch.randn(B, T, I, dtype=dtype, requires_grad=True)
    state = tuple(torch.zeros(B, u, dtype=dtype) for _ in range(spec.state_count))
    kw = {"go_backwards": opt.get("go_backwards", False)}
    if "recurrent_dropout" in opt:
        kw["recurrent_dropout_mask"] = ((torch.rand(B, u) > 0.25) / 0.75).to(dtype)
    if "zoneout" in opt:
        kw["zoneout_mask"] = (torch.rand(B, T, u) < opt["zoneout"]).to(dtype)
    if "drop_connect" in opt:
        kw["recurrent_kernel_dropout_mask"] = ((torch.rand(u, G * u) > 0.5) / 0.5).to(dtype)
    if "mask" in opt:
        lengths = torch.randint(T // 2, T + 1, (B,))
        steps = torch.arange(T)[None, :]
        if opt["mask"] == "left":
            kw["mask"] = steps >= (T - lengths)[:, None]
        else:
            kw["mask"] = steps < lengths[:, None]

    def train():
        out, st = fused.run(spec, w, x, state, **kw)
        (out.float().sum() + st[0].float().sum()).backward()

    def infer():
        with torch.no_grad():
            fused.run(spec, w, x, state, **kw)

    return train, infer


def _leaf(p, dtype):
    return None if p is None else p.detach().to(dtype).requires_grad_(True)


def _torch_case(cell, B, T, I, u, dtype=torch.float32):
    m = TORCH_MODULES[cell](I, u, batch_first=True).to(dtype)
    x = torch.randn(B, T, I, dtype=dtype, requires_grad=True)

    def train():
        out, st = m(x)
        h = st[0] if cell == "lstm" else st
        (out.float().sum() + h.float().sum()).backward()

    def infer():
        with torch.no_grad():
            m(x)

    return train, infer, m, x


def peak_memory(fn) -> float:
    """Peak MiB allocated during ``fn`` (see :func:`rnnkit.bench.peak_memory_bytes`)."""
    return peak_memory_bytes(fn) / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--inputs", type=int, default=128)
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--only", default="lstm,gru,simple")
    p.add_argument("--configs", default="", help="comma-separated substrings to select configs")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T, I, u = args.batch, args.steps, args.inputs, args.units
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={B} T={T} I={I} u={u}, "
        f"{args.dtype}"
    )
    rows: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    mrt = args.min_run_time
    for cell in args.only.split(","):
        t_train, t_infer, _, _ = _torch_case(cell, B, T, I, u, dtype)
        for name, spec_kw, opt in _configs(cell):
            if args.configs and not any(s in name for s in args.configs.split(",")):
                continue
            tr, inf = _rnnkit_case(cell, spec_kw, opt, B, T, I, u, dtype)
            for rep in range(args.repeats):
                # torch.nn and rnnkit alternate, so both see the same machine load
                base_tr = _median("f()", {"f": t_train}, mrt)
                m_tr = _median("f()", {"f": tr}, mrt)
                base_inf = _median("f()", {"f": t_infer}, mrt)
                m_inf = _median("f()", {"f": inf}, mrt)
                rows.setdefault((cell, f"torch.nn.{TORCH_MODULES[cell].__name__}"), []).append(
                    (base_tr, 1.0, base_inf, 1.0)
                )
                rows.setdefault((cell, name), []).append(
                    (m_tr, base_tr / m_tr, m_inf, base_inf / m_inf)
                )
                print(
                    f"[rep {rep}] {cell:6s} {name:30s} train {m_tr * 1e3:7.1f} ms "
                    f"(torch {base_tr * 1e3:6.1f}, {base_tr / m_tr:4.2f}x)  infer "
                    f"{m_inf * 1e3:6.1f} ms (torch {base_inf * 1e3:6.1f}, "
                    f"{base_inf / m_inf:4.2f}x)",
                    flush=True,
                )
    print()
    print(
        "| cell | configuration | fwd+bwd ms | ratio (min..max) | inference ms | ratio (min..max) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for (cell, name), vals in rows.items():
        tr = statistics.median(v[0] for v in vals) * 1e3
        inf = statistics.median(v[2] for v in vals) * 1e3
        r1 = [v[1] for v in vals]
        r2 = [v[3] for v in vals]
        print(
            f"| {cell} | {name} | {tr:.1f} | {statistics.median(r1):.2f} "
            f"({min(r1):.2f}..{max(r1):.2f}) | {inf:.1f} | {statistics.median(r2):.2f} "
            f"({min(r2):.2f}..{max(r2):.2f}) |"
        )
    if args.memory:
        print()
        for cell in args.only.split(","):
            t_train, _, _, _ = _torch_case(cell, B, T, I, u)
            t_train()
            base = peak_memory(t_train)
            tr, _ = _rnnkit_case(cell, {}, {}, B, T, I, u)
            tr()
            ours = peak_memory(tr)
            trl, _ = _rnnkit_case(cell, {"layer_norm": True}, {}, B, T, I, u)
            trl()
            ours_ln = peak_memory(trl)
            print(
                f"peak memory of a training step, {cell}: torch.nn {base:.1f} MiB, "
                f"fused {ours:.1f} MiB ({ours / base:.2f}x), fused layer norm {ours_ln:.1f} MiB "
                f"({ours_ln / base:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
