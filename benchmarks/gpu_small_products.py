"""The per-step recurrent products at small batch sizes, as cuBLAS runs them (issue 6).

    PYTHONPATH=src python3 benchmarks/gpu_small_products.py [--tf32] [--lt]

For batch sizes 1-256, widths 64-1024 and 1, 3 or 4 gate blocks, times a CUDA graph of 50
float32 products in each direction of a recurrence step: forward ``(B, u) @ (u, G*u)`` and
backward ``(B, G*u) @ (G*u, u)``, the weight a transposed view as in the backward pass
(microseconds per product, median of graph replays). Prints one line per (u, G) and then the
slow cases (over 14 us). ``--tf32`` lets the products use TF32, ``--lt`` asks for cuBLASLt. It is
the measurement behind ``triton_rnn.PAD_ROWS``: with TF32 off, cuBLAS picks much slower kernels
for 5-19 rows.
"""

from __future__ import annotations

import argparse
import statistics

import torch

DEV = "cuda"
STEPS = 50
BATCHES = (1, 2, 4, 8, 12, 16, 20, 24, 28, 31, 32, 33, 40, 48, 56, 64, 80, 96, 100, 128, 200, 256)


def graph_us(fn) -> float:
    """Microseconds per call of ``fn``, from replays of a graph of STEPS calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(STEPS):
            fn()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times) / STEPS * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tf32", action="store_true", help="let the products use TF32")
    ap.add_argument("--lt", action="store_true", help="prefer cuBLASLt")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.lt:
        torch.backends.cuda.preferred_blas_library("cublaslt")
    slow = []
    for u in (64, 128, 256, 512, 1024):
        for G in (1, 3, 4):
            cells = []
            for B in BATCHES:
                fwd_w = torch.randn(u, G * u, device=DEV)
                bwd_w = torch.randn(u, G * u, device=DEV).t()  # the backward's U^T view
                times = []
                for w in (fwd_w, bwd_w):
                    a = torch.randn(B, w.shape[0], device=DEV)
                    out = torch.empty(B, w.shape[1], device=DEV)
                    times.append(graph_us(lambda a=a, w=w, out=out: torch.mm(a, w, out=out)))
                cells.append(f"{B}:{times[0]:.0f}/{times[1]:.0f}")
                if max(times) > 14:
                    slow.append((u, G, B, round(times[0], 1), round(times[1], 1)))
            print(f"u={u} G={G}  B:fwd/bwd us  " + " ".join(cells), flush=True)
    print("slow (u, G, B, fwd us, bwd us):", slow)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
