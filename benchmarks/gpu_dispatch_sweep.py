"""Where ``backend="auto"`` should send an unmasked standard layer on CUDA (issue 6).

    PYTHONPATH=src python3 benchmarks/gpu_dispatch_sweep.py [--quick] [--out DIR]

For LSTM, GRU and SimpleRNN over a grid of batch sizes and widths (input width = units, 50
steps), times a training step (forward + backward) and an inference call of ``torch.nn``'s cuDNN
layer and of rnnkit's layer on each CUDA backend (``vendor`` = cuDNN, ``triton``) and on ``auto``
(with the backend it picked), float32 (or ``--dtype bfloat16``) with torch's default TF32 settings
(cuDNN may use TF32; ``torch.mm`` does not; ``--tf32`` lets it). Medians of CUDA-event
times, all in one process. Writes ``sweep-<dtype>[-tf32].json`` under ``--out``; the table is
printed last, with the per-step recurrent product size ``B * u * G * u`` (multiply-adds) that the
dispatch rule reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import rnnkit.layers as layers
from rnnkit.kernels import dispatch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import timed  # noqa: E402  (a sibling script: median, p10, p90 of CUDA events)

DEV = "cuda"
TORCH_CELLS = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "SimpleRNN": torch.nn.RNN}
GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def measure(cell: str, B: int, T: int, u: int, reps: int, dtype: torch.dtype) -> dict:
    xs = [torch.randn(B, T, u, device=DEV, dtype=dtype, requires_grad=True) for _ in range(3)]
    gout = torch.randn(B, T, u, device=DEV, dtype=dtype)
    nets = {"torch.nn": TORCH_CELLS[cell](u, u, batch_first=True).to(DEV, dtype)}
    for backend in ("vendor", "triton", "auto"):
        layer = getattr(layers, cell)(u, return_sequences=True, backend=backend)
        layer.build(u, DEV, dtype)
        nets[backend] = layer
    row = {"cell": cell, "B": B, "T": T, "u": u, "macs_per_step": B * u * GATES[cell] * u}
    picked = []
    select = dispatch.select

    def spy(*args, **kwargs):
        picked.append(select(*args, **kwargs))
        return picked[-1]

    dispatch.select = spy
    try:
        nets["auto"](xs[0])
    finally:
        dispatch.select = select
    row["auto_picked"] = picked[0]
    for name, net in nets.items():
        it = [0]

        def forward(net=net, it=it):
            out = net(xs[it[0] % 3])
            it[0] += 1
            return out[0] if isinstance(out, tuple) else out

        def train(forward=forward):
            forward().backward(gout)

        def infer(forward=forward):
            with torch.no_grad():
                forward()

        row[f"{name}_train_ms"] = timed(train, reps)[0]
        row[f"{name}_infer_ms"] = timed(infer, reps)[0]
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--tf32", action="store_true", help="let torch.mm use TF32 (Triton's products)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    tag = args.dtype + ("-tf32" if args.tf32 else "")
    batches = (16, 256) if args.quick else (16, 64, 256)
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
    widths = (256, 1024) if args.quick else (128, 256, 512, 768, 1024, 1536)
    reps = 5 if args.quick else 15
    rows = []
    for cell in TORCH_CELLS:
        for B in batches:
            for u in widths:
                row = measure(cell, B, 50, u, reps, dtype)
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in row.items()}), flush=True)  # fmt: skip
    with open(os.path.join(args.out, f"sweep-{tag}.json"), "w") as fh:
        json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, fh, indent=1)
    print(f"\n{torch.cuda.get_device_name(0)}; {tag}, T=50, I=u; ms per training step "
          "(forward + backward) / inference; speed = torch.nn ms / this ms; auto = the backend "
          "auto picked and its speed")  # fmt: skip
    print(f"{'cell':9s} {'B':>4s} {'u':>5s} {'MMAC/step':>9s} {'nn train':>9s} {'vendor':>7s} "
          f"{'triton':>7s} {'auto':>15s} {'nn infer':>9s} {'vendor':>7s} {'triton':>7s} "
          f"{'auto':>7s}")  # fmt: skip
    for r in rows:
        nt, ni = r["torch.nn_train_ms"], r["torch.nn_infer_ms"]
        train = [nt / r[f"{b}_train_ms"] for b in ("vendor", "triton", "auto")]
        infer = [ni / r[f"{b}_infer_ms"] for b in ("vendor", "triton", "auto")]
        print(f"{r['cell']:9s} {r['B']:4d} {r['u']:5d} {r['macs_per_step'] / 1e6:9.1f} "
              f"{nt:9.3f} {train[0]:7.2f} {train[1]:7.2f} {r['auto_picked']:>8s} {train[2]:6.2f} "
              f"{ni:9.3f} {infer[0]:7.2f} {infer[1]:7.2f} {infer[2]:7.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
