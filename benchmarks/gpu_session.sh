#!/usr/bin/env bash
# Everything a GPU session checks, in one call of the device tool (its machine is lent for
# minutes, and each call pays a start): the kernel and GPU-layer tests, the GPU benchmark
# (checks, ceilings, kernel timings, layer and shape tables), the dispatch sweep, the small-batch
# products and, when the PTB files are carried in .gpudata/, the PTB-small LM on CUDA against a
# plain torch.nn model. Results under $OUT
# (default runs/gpu); a failing part does not stop the others.
#
#   bash benchmarks/gpu_session.sh            # on the GPU machine, from the repository root
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
out="${OUT:-runs/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -o addopts= tests/kernels 2>&1 \
  | tee "$out/tests.txt" | tail -15
python3 benchmarks/bench_gpu.py --out "$out" 2>&1 | tee "$out/bench_gpu.txt" | tail -70
# Where auto sends a layer (quick grid) and cuBLAS' small-batch products (triton_rnn.PAD_ROWS).
python3 benchmarks/gpu_dispatch_sweep.py --quick --out "$out" 2>&1 | tee "$out/sweep.txt" | tail -14
python3 benchmarks/gpu_small_products.py 2>&1 | tee "$out/small_products.txt" | tail -1
if [ -f .gpudata/ptb.train.txt ]; then
  python3 -m rnnkit lm train --train .gpudata/ptb.train.txt --valid .gpudata/ptb.valid.txt \
    --level word --preset small --max-steps 1 --device cuda --compare-torch 300 \
    --out "$out/lm" 2>&1 | tee "$out/lm.txt" | tail -15
fi
