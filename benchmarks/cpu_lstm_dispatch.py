"""Which kernel should run an unmasked LSTM layer on the CPU (issue 6, ``dispatch.py``'s rule).

    PYTHONPATH=src python3 benchmarks/cpu_lstm_dispatch.py [--threads N] [--rounds R]
        [--shapes B,T,I,U ...] [--fresh-allocator] [--inference] [--cell lstm|gru|simple]

For each shape, a training step (forward + backward, the input's gradient computed or not) of
``torch.nn.LSTM`` and of rnnkit's ``LSTM`` layer on its ``vendor`` (torch's kernel) and ``fused``
backends, and on ``auto`` (with the backend it picked), paired: every round times each in turn
(2 calls each), and each ratio is the median over the rounds of torch's time over the layer's,
with its quartiles. Prints one line per (shape, input gradient, backend). ``--inference``: the
same for inference calls (``no_grad``, eval mode; small calls repeated to ~2 ms per timing).
``--cell gru`` / ``simple``: the same for rnnkit's GRU / SimpleRNN against ``torch.nn.GRU`` /
``RNN``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnkit import allocator
from rnnkit.kernels import dispatch
from rnnkit.layers import GRU, LSTM, SimpleRNN

CELLS = {
    "lstm": (LSTM, torch.nn.LSTM),
    "gru": (GRU, torch.nn.GRU),
    "simple": (SimpleRNN, torch.nn.RNN),
}

SHAPES = ("32,100,128,256", "20,20,200,200", "64,50,64,128", "20,35,400,400", "20,35,650,650")


def _step(module, x: torch.Tensor):
    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return step


def _inference(module, x: torch.Tensor):
    module.eval()

    def step() -> None:
        with torch.no_grad():
            module(x)

    return step


def sweep(
    shape: str, input_grad: bool, rounds: int, training: bool = True, cell: str = "lstm"
) -> None:
    batch, steps, features, units = (int(v) for v in shape.split(","))
    layer_cls, torch_cls = CELLS[cell]
    spec = layer_cls(units, input_size=features).cell.spec
    x = torch.randn(batch, steps, features).requires_grad_(input_grad and training)
    make = _step if training else _inference
    baseline = f"torch.nn.{torch_cls.__name__}"
    steps_by_name = {baseline: make(torch_cls(features, units, batch_first=True), x)}
    for backend in ("auto", "vendor", "fused"):
        layer = layer_cls(units, return_sequences=True, backend=backend, input_size=features)
        steps_by_name[f"rnnkit {backend}"] = make(layer, x)
    for step in steps_by_name.values():
        step()
        step()
    macs = batch * steps * spec.gates * units * (features + units)
    calls = 2 if training else max(2, min(200, int(2e-3 * 5e10 / macs)))  # ~2 ms or more
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            times[name].append((time.perf_counter() - start) / calls)
    picked = dispatch.select(
        spec,
        batch=batch,
        steps=steps,
        training=training,
        input_grad=input_grad and training,
        macs=macs,
        device=x.device,
        dtype=x.dtype,
    )
    base = times[baseline]
    for name, seconds in times.items():
        ratios = [b / s for b, s in zip(base, seconds, strict=True)]
        q1, _, q3 = statistics.quantiles(ratios)
        note = f"  (auto picks {picked})" if name == "rnnkit auto" else ""
        what = f"input grad {'yes' if input_grad else 'no ':3}" if training else "inference"
        print(
            f"{shape:>16}  {what}  {name:15} "
            f"{statistics.median(seconds) * 1e3:8.2f} ms  ratio {statistics.median(ratios):.3f} "
            f"(q1 {q1:.3f} q3 {q3:.3f}){note}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), metavar="B,T,I,U")
    parser.add_argument("--fresh-allocator", action="store_true", help="glibc's defaults")
    parser.add_argument("--inference", action="store_true", help="inference calls, not training")
    parser.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    args = parser.parse_args()
    if not args.fresh_allocator:
        allocator.tune()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, allocator {'tuned' if allocator.is_tuned() else 'default'}")
    for shape in args.shapes:
        if args.inference:
            sweep(shape, False, args.rounds, training=False, cell=args.cell)
            continue
        for input_grad in (True, False):
            sweep(shape, input_grad, args.rounds, cell=args.cell)


if __name__ == "__main__":
    main()
