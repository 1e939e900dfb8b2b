"""Speed of the standard LSTM layer against raw ``torch.nn.LSTM`` (forward + backward).

Run: ``.venv/bin/python benchmarks/bench_layers.py [--threads 2] [--batch 32] [--time 100]
[--input 128] [--units 256] [--min-run-time 3]``. Target: rnnkit within 10% of torch.nn.LSTM.
Not a test: numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.utils.benchmark as tb

from rnnkit.layers import LSTM, lengths_to_mask, to_torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--time", type=int, default=100, help="time steps")
    p.add_argument("--input", type=int, default=128, help="input features")
    p.add_argument("--units", type=int, default=256, help="LSTM units")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median of medians)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    layer = LSTM(args.units, return_sequences=True, input_size=args.input)
    module = to_torch(layer)  # same weights
    x = torch.randn(args.batch, args.time, args.input, requires_grad=True)
    lengths = torch.randint(args.time // 2, args.time + 1, (args.batch,))
    mask = lengths_to_mask(lengths, args.time, padding="pre")  # left-padded: the hard case

    def step_torch():
        module(x)[0].sum().backward()

    def step_layer():
        layer(x).sum().backward()

    def step_layer_masked():
        layer(x, mask=mask).sum().backward()

    cases = [
        ("torch.nn.LSTM", step_torch),
        ("rnnkit LSTM (auto)", step_layer),
        ("rnnkit LSTM (auto, left-padded mask)", step_layer_masked),
    ]
    for _, fn in cases:
        fn()  # warm-up (oneDNN primitive caches)
    # Interleave the cases so that load from other processes hits all of them alike.
    runs: dict[str, list[float]] = {label: [] for label, _ in cases}
    for _ in range(args.rounds):
        for label, fn in cases:
            timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads)
            runs[label].append(timer.blocked_autorange(min_run_time=args.min_run_time).median)
    medians = {label: statistics.median(ts) for label, ts in runs.items()}
    shape = f"B={args.batch} T={args.time} I={args.input} u={args.units}"
    print(f"forward+backward, {shape}, threads={args.threads}")
    base = medians["torch.nn.LSTM"]
    for label, t in medians.items():
        print(f"  {label:40s} median {t * 1e3:8.2f} ms   ratio {t / base:5.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
