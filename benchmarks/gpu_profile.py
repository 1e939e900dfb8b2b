"""Where a training step's time goes on a GPU (a development tool; needs CUDA):

    PYTHONPATH=src python3 benchmarks/gpu_profile.py

1. host-device synchronisations in one training step of the PTB-small language model and of
   rnnkit layers (``torch.cuda.set_sync_debug_mode``), each with the rnnkit line that caused it:
   a synchronisation makes the host wait for the GPU, so launch overhead no longer overlaps
   GPU work;
2. the CUDA kernels of one forward+backward of an rnnkit LSTM layer next to torch.nn.LSTM's
   (``torch.profiler``), and the same for the language model against a plain torch.nn model.
"""

from __future__ import annotations

import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from rnnkit.cli.lm import TorchLSTMLM
from rnnkit.layers import LSTM
from rnnkit.models.language_model import LanguageModel

DEV = "cuda"


def lm_step(net, B=20, T=20, V=10001):
    x = torch.randint(1, V, (B, T), device=DEV)
    y = torch.randint(1, V, (B, T), device=DEV)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    state = [None]

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss, s = net(x, y, state=state[0])
        state[0] = tuple(t.detach() for t in s)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.25)
        opt.step()

    return step


def layer_step(layer, B=64, T=100, I=512, u=512, mask=None):
    x = torch.randn(B, T, I, device=DEV, requires_grad=True)
    g = torch.randn(B, T, u, device=DEV)

    def step():
        out = layer(x)[0] if isinstance(layer, torch.nn.LSTM) else layer(x, mask=mask)
        out.backward(g)

    return step


def report_syncs(name, step):
    step()  # warm-up
    torch.cuda.synchronize()
    seen = []

    def show(message, category, filename, lineno, file=None, line=None):
        if "debug mode is" in str(message):  # torch's note that the mode is a prototype
            return
        frames = [f for f in traceback.extract_stack() if "/rnnkit/" in f.filename]
        where = f"{filename}:{lineno}"
        if frames:
            f = frames[-1]
            where = f"{f.filename.split('src/')[-1]}:{f.lineno} {f.line}"
        seen.append(f"    {str(message)[:60]} <- {where}")

    saved = warnings.showwarning
    warnings.showwarning = show
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = saved
    print(f"{name}: {len(seen)} synchronisations")
    for s in seen:
        print(s)


def report_kernels(name, step, rows=14):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(f"\n=== {name} (5 steps)")
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60
    )
    print(table)


def main():
    torch.manual_seed(0)
    ours_lm = LanguageModel(10001, None, 200, 2, embedding_dim=200, dropout_keep_prob=1.0).to(DEV)
    torch_lm = TorchLSTMLM(10001, 200, 200, 2).to(DEV)
    lstm = LSTM(512, return_sequences=True).to(DEV)
    lstm.build(512, DEV, torch.float32)
    ln = LSTM(512, return_sequences=True, layer_norm=True).to(DEV)
    ln.build(512, DEV, torch.float32)
    ref = torch.nn.LSTM(512, 512, batch_first=True).to(DEV)
    lengths = torch.randint(50, 101, (64,), device=DEV)
    left = torch.arange(100, device=DEV) >= 100 - lengths[:, None]
    cases = {
        "LM step (rnnkit)": lm_step(ours_lm),
        "LM step (torch.nn)": lm_step(torch_lm),
        "LSTM layer step": layer_step(lstm),
        "LSTM layer-norm layer step": layer_step(ln),
        "LSTM left-padded layer step": layer_step(lstm, mask=left),
        "torch.nn.LSTM step": layer_step(ref),
    }
    for name, step in cases.items():
        report_syncs(name, step)
    for name in ("LSTM layer step", "torch.nn.LSTM step", "LM step (rnnkit)", "LM step (torch.nn)"):
        report_kernels(name, cases[name])


if __name__ == "__main__":
    main()
