"""Per-call cost of small recurrent layers: rnnkit's layers (``backend="auto"``) against torch.nn.

Usage::

    .venv/bin/python benchmarks/bench_small_calls.py [--shapes 4,8,8,16 32,20,7,32]
        [--threads 1] [--min-run-time 0.4]

Each shape is ``batch,steps,inputs,units``. For LSTM, GRU and SimpleRNN: the median time
(``torch.utils.benchmark``, ``blocked_autorange``) of a training call (forward + backward of the
outputs' sum, the input needing its gradient) and of an inference call (``torch.no_grad``), and
the ratio ``torch.nn time / rnnkit time`` (> 1: rnnkit is faster), torch.nn measured right after
rnnkit in the same process. At these sizes the per-call costs (Python, kernel setup) are most of
a call, so comparing code versions means alternating processes of each (see
docs/performance.md).
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as tb

from rnnkit import allocator
from rnnkit.layers import GRU, LSTM, SimpleRNN

CELLS = {
    "lstm": (LSTM, torch.nn.LSTM),
    "gru": (GRU, torch.nn.GRU),
    "simple": (SimpleRNN, torch.nn.RNN),
}


def _median_us(fn, min_run_time: float) -> float:
    timer = tb.Timer("f()", globals={"f": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def _calls(module, x, sequences):
    def train():
        out = module(x)
        (out if sequences else out[0]).sum().backward()

    def infer():
        with torch.no_grad():
            module(x)

    return train, infer


def measure(shape: tuple[int, int, int, int], min_run_time: float) -> list[str]:
    batch, steps, inputs, units = shape
    torch.manual_seed(0)
    x = torch.randn(batch, steps, inputs, requires_grad=True)
    lines = []
    for name, (ours_cls, torch_cls) in CELLS.items():
        ours = _calls(ours_cls(units, return_sequences=True, input_size=inputs), x, True)
        theirs = _calls(torch_cls(inputs, units, batch_first=True), x, False)
        times = [
            _median_us(f, min_run_time) for pair in zip(ours, theirs, strict=True) for f in pair
        ]
        tr, tr_ref, inf, inf_ref = times
        lines.append(
            f"{name:6s} train {tr:8.1f} us ({tr_ref / tr:4.2f}x of {tr_ref:8.1f})   "
            f"infer {inf:8.1f} us ({inf_ref / inf:4.2f}x of {inf_ref:8.1f})"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["4,8,8,16", "32,20,7,32"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-run-time", type=float, default=0.4)
    args = p.parse_args(argv)
    allocator.tune()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; x of torch.nn's time")
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        if len(shape) != 4:
            p.error(f"--shapes takes batch,steps,inputs,units; received {text!r}")
        print(f"batch {shape[0]}, steps {shape[1]}, {shape[2]} -> {shape[3]}:")
        for line in measure(shape, args.min_run_time):
            print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
