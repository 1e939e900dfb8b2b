"""Pick a backend for each recurrence call.

A backend is a module with ``run(spec, weights, inputs, initial_state, **options)`` (the
:mod:`rnnkit.kernels.spec` contract) and ``supports(spec, **options) -> bool``; optionally
``unsupported_reason(spec, **options) -> str | None`` for a better error message. ``supports``
and ``unsupported_reason`` also receive ``device=`` and ``dtype=`` of the inputs (device-specific
backends need them); ``run`` receives only the contract's keyword arguments. The registry
holds ``vendor`` and ``reference`` and, when their modules import, ``fused`` and ``triton``
(:mod:`rnnkit.kernels.triton_rnn`, which accepts CUDA inputs only).

``backend="auto"`` takes the first that supports the call exactly, in the order
``vendor, triton, fused, reference``; on the CPU, calls where the fused recurrence is faster go
``fused, vendor, reference``: masked calls, SimpleRNN, and (when the compiled loops of
:mod:`rnnkit.kernels.cpu_ext` are available) GRU, and on one or two threads the LSTM's small
calls (at most 96 tokens, batch x steps: torch's kernel's per-call costs dominate them), its
inference calls of 401-650 units and at most 1400 tokens on one thread, and its
training calls up to 1600 gate columns while :func:`rnnkit.allocator.tune` is not in effect or the
input needs no gradient, or on one thread where the call is small; on CUDA, masked calls and
recurrences whose per-step product Triton runs faster than cuDNN (measured bounds, see
:func:`auto_order`) go ``triton, vendor, fused, reference``;
naming a backend that cannot run the call raises ``ValueError``. :func:`record_choices` tells
which backend each call of a block ran on.

>>> from rnnkit.kernels.spec import RecurrenceSpec
>>> select(RecurrenceSpec("lstm", 8))
'vendor'
>>> select(RecurrenceSpec("lstm", 8, recurrent_activation="hard_sigmoid")) in ("fused", "reference")
True
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from rnnkit import allocator
from rnnkit.kernels import cpu_ext, reference, vendor
from rnnkit.kernels.products import fast_products
from rnnkit.kernels.spec import BackendUnavailable, RecurrenceSpec, RecurrentWeights

AUTO_ORDER = ("vendor", "triton", "fused", "reference")
# On the CPU, torch's kernels run packed (masked) sequences without oneDNN, several times slower
# than unmasked input (bench: 5-15x); the fused recurrence costs the same with or without a mask.
# The fused recurrence is also the faster exact choice without a mask for SimpleRNN and GRU
# (paired A/B, call by call, training, with the compiled loops of rnnkit.kernels.cpu_ext, 1 / 2
# threads: SimpleRNN 2.09x / 1.99x at 32x100 128->256, 1.75x / 1.61x at 20x20 200->200; GRU
# 2.14x / 2.07x and 1.93x / 1.86x; SimpleRNN's Python loops alone 1.46x and 0.98x with 1 thread).
# The LSTM depends on what is measured. Inference stays on torch's oneDNN kernel (the fused LSTM:
# 0.89-0.93x of it with 1 thread, 0.72-0.80x with 2) except for small calls (below). Training,
# paired call by call against torch.nn.LSTM (the vendor backend 0.97-1.00x of it throughout),
# 32x100 128->256 / 64x400 128->64:
# - glibc's default allocator (any script that does not call rnnkit.allocator.tune()): torch's
#   kernel page-faults its large workspace in again on every step; the fused LSTM 1.33x / 1.97x
#   with 1 thread, 1.40x / 1.62x with 2;
# - tuned: 1.01x / 1.17x with 1 thread, but 0.95x / 0.84x with 2 (torch's kernel gains more
#   from the second core, most at 64 units); after the padded product rows and the brgemm
#   weight gradients, 32x100: 1.07x with 1 thread, 0.96-1.01x with 2 (where torch's kernel
#   through rnnkit reads 0.96-0.98x: no clear winner, the rule stays).
# Those pairs fed inputs that need no gradient. torch's kernel computes the input gradient in its
# backward pass whether or not it is needed; the fused LSTM computes it only when it is (one more
# product, 5 ms here). benchmarks/cpu_lstm_dispatch.py (paired rounds; runs/dispatch/*.txt), the
# fused LSTM with / without the input gradient (needed by any layer after an embedding or another
# layer) against torch.nn.LSTM, torch's kernel through rnnkit (vendor) alongside: 32x100 128->256,
# tuned, 1 thread 0.93 / 1.07 vs 0.98-0.99, 2 threads 0.88 / 1.01 vs 0.99-1.01; untuned, 1 thread
# 1.29 / 1.42 vs 0.98. Other shapes, tuned, 1 thread: 20x20 200->200 (PTB-small) 1.01 / 1.19 vs
# 0.91-0.92 (2 threads 0.94 / 1.08 vs 0.94-0.96); 64x50 64->128 1.04 / 1.15 vs 0.96-0.97; 20x35
# 400->400 (4u = 1600) 0.99 / 1.14 vs 0.97; but 32x100 256->512 (4u = 2048) 0.85 / 0.97 vs
# 0.99-1.00 and 20x35 650->650 (PTB-medium) 0.81 / 0.93 vs 0.97 (untuned 0.80 / 0.89 vs
# 0.82-0.96): wider than FUSED_LSTM_MAX_GATE_COLUMNS the fused LSTM loses (its weight gradients
# leave brgemm above 1536 columns: 1600 still wins). With the input gradient it wins on small
# calls (the vendor path's per-call costs) and loses on large ones: the bound is
# FUSED_LSTM_MAX_INPUT_GRAD_MACS multiply-adds per call (T B 4u (I + u); 32x100 128->256 is
# 1.26e9, 20x35 400->400 0.9e9).
# 2 threads, tuned, without the input gradient, fused vs vendor: 64x50 64->128 1.01 vs 0.94,
# 20x35 400->400 1.08 vs 0.96, PTB-small 1.08 vs 0.93-0.94, 32x100 1.01 vs 1.00-1.01; with it
# 0.92-0.95 vs 0.94-0.96 (runs/dispatch/t2b.txt).
# So training goes fused first up to 1600 gate columns: with 1 or 2 threads while the allocator
# is untuned or the input needs no gradient, and tuned with the input's gradient on 1 thread
# when the call is small; with more threads (not measured here) it stays on torch's kernel.
# Calls of few tokens (batch x steps: a stateful layer fed a chunk at a time, a classifier on one
# short text) are dominated by per-call costs: torch's kernel reorders its weights on every call
# (and rnnkit's vendor path transposes them first), where the fused LSTM's gate-blocked weight
# copy is cheaper. benchmarks/cpu_lstm_dispatch.py --inference (paired, tuned; runs/dispatch/
# inf-*.txt), B x T I->u, fused vs vendor as a ratio to torch.nn.LSTM, 1 thread: 1x1 200 1.29 vs
# 0.70, 1x1 650 1.28 vs 0.65, 1x1 1500 1.13 vs 0.59, 1x5 1.19 vs 0.74, 1x20 200 1.01 vs 0.85, 1x20
# 650 0.99 vs 0.75, 1x50 0.93 vs 0.90, 4x20 1.08 vs 0.90, 2x40 1.24 vs 0.94, 8x10 0.95 vs 0.87,
# 16x6 0.97 vs 0.88, 32x3 256 1.18 vs 1.03, 8x12 650 0.97 vs 0.70; but 1x80 0.91 vs 0.96, 1x100
# 128->256 0.94 vs 1.03, 8x35 0.92 vs 0.96, 20x35 200 0.93 vs 0.97, 32x100 0.92 vs 0.97. 2 threads:
# 1x1 1.45 vs 0.74, 1x20 1.14 vs 0.87, 4x20 1.12 vs 0.92, 16x6 1.06 vs 0.93; 1x100 0.97 vs 0.98,
# 8x35 0.89 vs 0.95. Untuned alike (1x20 650: 1.08 vs 0.43). Training steps of such calls too, 2
# threads, tuned, with / without the input's gradient: 1x20 200 0.92 / 1.16 vs 0.85 / 0.85, 4x20
# 0.97 / 1.22 vs 0.88 / 0.85, 16x6 0.97 / 1.14 vs 0.89 / 0.85, 1x1 650 1.35 / 1.42 vs 0.73 / 0.73.
# So any LSTM call of at most FUSED_LSTM_MAX_SMALL_TOKENS tokens goes fused first (1 or 2
# threads, any width). Since the fused LSTM reads its weights as they come in calls of a few
# steps (fused._gate_blocked; runs/dispatch/inf-t1-plain.txt), `auto` there, 1 thread: 1x1 200
# 1.70, 1x1 650 5.07, 1x20 1.13, 4x20 1.20, 16x6 1.07, 8x12 650 1.13.
# Inference of wider layers at moderate tokens, 1 thread: the vendor path's transposes of the
# weights grow with the width (2.4 ms of a 31 ms call at 650 units), and there the fused LSTM
# (the plain or gate-blocked weight as it comes) is faster up to ~1400 tokens
# (benchmarks/cpu_lstm_dispatch.py --inference, paired, tuned, fused vs vendor as a ratio to
# torch.nn.LSTM): 650 units 10x35 0.96 vs 0.87, 20x20 0.98 vs 0.87, 20x35 0.94 vs 0.90, 40x35
# 0.97 vs 0.94, 1x200 0.93 vs 0.90, 4x200 1.01 vs 0.92; 512 units 20x35 1.05 vs 0.94; but 64x35
# at 650 units 0.93 vs 0.97, 32x100 at 512 0.96 vs 0.98, 1024 units 20x35 0.84 vs 0.98, 1500
# units 0.91 vs 0.95, and at 400 units or fewer torch's kernel ties or wins (400: 0.97 vs 0.96,
# 200 units 20x35 0.94 vs 0.98, 1x200 0.92 vs 1.00). 2 threads: mixed (650 units 20x35 0.90 vs
# 0.94), torch's kernel stays. So inference goes fused first on 1 thread for 1600 < 4u <= 2600
# (401-650 units) and at most FUSED_LSTM_MAX_INFERENCE_TOKENS tokens: PTB-medium's evaluation.
# Inference of small layers at more tokens (a Reber-sized LSTM(32) on a batch of 32 x 20): the
# vendor path's per-call costs (weight transposes, hx, torch's weight reorder) outweigh the
# fused loop's. benchmarks/cpu_lstm_dispatch.py --inference on a Zen 4 host (2026-11-23; 15
# rounds, paired, tuned), B x T I->u (multiply-adds T B 4u (I+u)), fused vs vendor as a ratio to
# torch.nn.LSTM, 1 thread: 32x20 7->32 (3.2M) 0.88 vs 0.77, 32x20 32->32 (5.2M) 0.90 vs 0.81,
# 64x20 16->32 (7.9M) 0.88 vs 0.85, 16x40 32->48 (9.8M) 0.93 vs 0.83; 2 threads 0.82 vs 0.80,
# 0.84 vs 0.78, 16x40 0.90 vs 0.89; then a tie or torch's: 32x20 64->64 (21M) 0.92 vs 0.91,
# 8x100 64->64 (26M) 0.83 vs 0.91, 16x50 128->128 (52M) 0.91 vs 0.98. On the earlier host the
# two were within noise from 32x20 32->32 to 64x50 64->128. So inference of at most
# FUSED_LSTM_MAX_SMALL_INFERENCE_MACS multiply-adds goes fused first (1 or 2 threads).
# Half precision on the CPU (benchmarks/bench_fused.py --dtype, 32x100 128->256, 3 repeats,
# training with the input's gradient / inference, ratio to torch.nn's kernel in that dtype):
# - float16 where the CPU has no oneDNN float16 kernels (products.fast_products; this AVX512-BF16
#   machine): torch's float16 products are scalar loops, its LSTM trains in 1.5-1.6 s; the fused
#   recurrence projects in float32 there: LSTM 18.3x / 9.0x, GRU 18.5x / 7.8x, SimpleRNN 14.8x /
#   6.8x (1 thread). Every cell goes fused; so does bfloat16 where oneDNN has no bfloat16 kernels
#   (CPUs without AVX-512: the same scalar products, not measured here).
# - bfloat16 with the compiled loops' bfloat16 products (cpu_ext.has_bf16_products): GRU 1.33x /
#   1.58x (2 threads 1.28x / 1.78x), SimpleRNN 1.58x / 1.97x (1.52x / 1.32x) go fused; the LSTM
#   0.93x / 0.89x (with its input projection in the loop) stays on torch's kernel.
FUSED_FIRST_ORDER = ("fused", "vendor", "reference")
FUSED_LSTM_MAX_THREADS = 2
FUSED_LSTM_MAX_GATE_COLUMNS = 1600
FUSED_LSTM_MAX_INPUT_GRAD_MACS = 2**30
FUSED_LSTM_MAX_SMALL_TOKENS = 96
FUSED_LSTM_INFERENCE_GATE_COLUMNS = (1600, 2600)  # (exclusive, inclusive) bounds on 4u
FUSED_LSTM_MAX_INFERENCE_TOKENS = 1400
FUSED_LSTM_MAX_SMALL_INFERENCE_MACS = 2**24
# On CUDA, cuDNN runs masked input as packed sequences (lengths copied to the host, rows sorted):
# a left-padded LSTM layer step measured 0.41x of torch.nn.LSTM's unmasked one on an H100
# (64x100, 512->512, forward+backward); the Triton LSTM keeps padded steps' state inside its step
# kernel: 1.35x. Unmasked, which is faster depends on the per-step recurrent product (G gate
# blocks of u units, batch B). benchmarks/gpu_dispatch_sweep.py on an H100 (float32, T=50, I=u,
# B 8/16/64/256 x u 128..1536, training step, speed relative to torch.nn; Triton vs rnnkit's layer
# on cuDNN):
# - B*G*u*u > TRITON_MAX_STEP_MACS or G*u > TRITON_MAX_GATE_WIDTH: the products dominate and
#   cuDNN runs them in TF32 (torch's default for cuDNN) against Triton's float32 cuBLAS products
#   (LSTM 256x512 0.54-0.70 vs 0.76-1.04, 64x768 0.62-0.78 vs 0.79-0.85, 8x1536 0.67 vs 0.97;
#   GRU 8x1536 0.70 vs 0.83; SimpleRNN 64x1536 0.65-0.71 vs 0.96-0.98);
# - below them Triton wins or ties (LSTM 16x768 1.12-1.54 vs 0.64-0.87, 64x512 1.06-1.09 vs
#   0.85-0.94, 64x128 1.33 vs 0.70; GRU 16x256 1.81-2.21 vs 0.70-0.85; SimpleRNN 16x1024 1.40-1.86
#   vs 0.72-0.99); the smallest shapes are host-bound, within noise of each other.
# With TF32 products (torch.backends.cuda.matmul.allow_tf32) or in bfloat16 / float16, Triton's
# products run on the tensor cores as cuDNN's do, and Triton won or tied at every shape of the
# sweep (TF32 LSTM 256x1536 1.05 vs 0.98; bf16 1.1-3.6x of cuDNN): no upper bound there.
TRITON_FIRST_ORDER = ("triton", "vendor", "fused", "reference")
TRITON_MAX_STEP_MACS = 2**26
TRITON_MAX_GATE_WIDTH = 3072
BACKEND_NAMES = ("auto", *AUTO_ORDER)

_REGISTRY: dict[str, ModuleType] = {"vendor": vendor, "reference": reference}
_OPTIONAL = {"fused": "rnnkit.kernels.fused", "triton": "rnnkit.kernels.triton_rnn"}


def _load_optional() -> None:
    """Register the backends whose modules import here (importing them imports no GPU code)."""
    for name, path in _OPTIONAL.items():
        try:
            module = importlib.import_module(path)
        except ImportError:
            continue
        if callable(getattr(module, "run", None)) and callable(getattr(module, "supports", None)):
            _REGISTRY[name] = module


_load_optional()


def auto_order(
    *,
    device=None,
    mask: torch.Tensor | None = None,
    spec: RecurrenceSpec | None = None,
    dtype=None,
    batch: int | None = None,
    steps: int | None = None,
    training: bool = False,
    input_grad: bool = False,
    macs: int | None = None,
    **_options,
) -> tuple[str, ...]:
    """The order in which ``auto`` tries the backends for a call (``batch``, ``steps``: its batch
    size and time steps; ``training``: whether the call records for a backward pass;
    ``input_grad``: whether that pass needs the inputs' gradient; ``macs``: the multiply-adds of
    its products, ``T B G u (I + u)``)."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    if not on_cpu:
        if mask is not None or _triton_is_faster(spec, dtype, batch):
            return TRITON_FIRST_ORDER
        return AUTO_ORDER
    tokens = None if batch is None or steps is None else batch * steps
    if mask is not None or _fused_is_faster(spec, dtype, training, input_grad, macs, tokens):
        return FUSED_FIRST_ORDER
    return AUTO_ORDER


def _triton_is_faster(spec: RecurrenceSpec | None, dtype, batch: int | None) -> bool:
    """Unmasked CUDA calls where Triton beats cuDNN (the H100 sweep above)."""
    if spec is None:
        return False
    if dtype in (torch.bfloat16, torch.float16) or torch.backends.cuda.matmul.allow_tf32:
        return True
    width = spec.gates * spec.units  # G * u: the recurrent product's output columns
    macs = (batch or 1) * width * spec.units
    return width <= TRITON_MAX_GATE_WIDTH and macs <= TRITON_MAX_STEP_MACS


def _fused_is_faster(
    spec: RecurrenceSpec | None,
    dtype,
    training: bool = False,
    input_grad: bool = False,
    macs: int | None = None,
    tokens: int | None = None,
) -> bool:
    """Unmasked CPU calls where the fused recurrence beats torch's kernel (measurements above;
    ``tokens``: batch x steps)."""
    if spec is None:
        return False
    if dtype in (torch.bfloat16, torch.float16) and not fast_products(torch.device("cpu"), dtype):
        return True
    if dtype == torch.float16:
        return False
    if dtype == torch.bfloat16:
        if spec.cell not in ("gru", "simple") or not cpu_ext.covers(spec.cell):
            return False
        ops = cpu_ext.ops()
        return ops is not None and cpu_ext.has_bf16_products(ops)
    if dtype not in (None, torch.float32):
        return False
    if spec.cell == "simple":
        return True
    if not (cpu_ext.covers(spec.cell) and cpu_ext.ops() is not None):
        return False
    if spec.cell == "gru":
        return True
    threads = torch.get_num_threads()
    if spec.cell != "lstm" or threads > FUSED_LSTM_MAX_THREADS:
        return False
    if tokens is not None and tokens <= FUSED_LSTM_MAX_SMALL_TOKENS:
        return True  # per-call costs dominate, training or not, any width
    if not training:
        if macs is not None and macs <= FUSED_LSTM_MAX_SMALL_INFERENCE_MACS:
            return True  # small layers: per-call costs dominate
        # wide layers' inference at moderate tokens, on 1 thread
        low, high = FUSED_LSTM_INFERENCE_GATE_COLUMNS
        return (
            threads == 1
            and tokens is not None
            and tokens <= FUSED_LSTM_MAX_INFERENCE_TOKENS
            and low < spec.gates * spec.units <= high
        )
    if spec.gates * spec.units > FUSED_LSTM_MAX_GATE_COLUMNS:
        return False
    if not allocator.is_tuned() or not input_grad:
        return True
    return threads == 1 and macs is not None and macs <= FUSED_LSTM_MAX_INPUT_GRAD_MACS


def register(name: str, module: ModuleType) -> None:
    """Add or replace a backend (a module or object with ``supports`` and ``run``)."""
    if not (callable(getattr(module, "run", None)) and callable(getattr(module, "supports", None))):
        raise TypeError(f"backend {name!r} must define supports() and run(); received {module!r}")
    _REGISTRY[name] = module


def available() -> list[str]:
    """Registered backend names, in ``auto`` preference order."""
    return [n for n in AUTO_ORDER if n in _REGISTRY] + [n for n in _REGISTRY if n not in AUTO_ORDER]


def check_backend_name(backend: str) -> str:
    if backend in BACKEND_NAMES or backend in _REGISTRY:
        return backend
    names = ["auto", *available()]
    raise ValueError(f"backend must be one of {names}; received backend={backend!r}")


def _reason(name: str, module, spec: RecurrenceSpec, options: dict) -> str | None:
    if name == "reference":
        return None
    explain = getattr(module, "unsupported_reason", None)
    if callable(explain):
        return explain(spec, **options)
    return None if module.supports(spec, **options) else "it does not support this configuration"


def select(
    spec: RecurrenceSpec,
    *,
    backend: str = "auto",
    batch: int | None = None,
    steps: int | None = None,
    training: bool = False,
    input_grad: bool = False,
    macs: int | None = None,
    **options,
) -> str:
    """The backend name that :func:`run` would use for this call (``batch``, ``steps``: its batch
    size and time steps; ``training``: whether it records for a backward pass, see
    :func:`recording`; ``input_grad``: whether that pass needs the inputs' gradient; ``macs``: the
    multiply-adds of the call's products).

    Raises:
        ValueError: unknown backend, or a named backend that cannot run this call exactly.
    """
    check_backend_name(backend)
    if backend == "auto":
        order = auto_order(
            spec=spec,
            batch=batch,
            steps=steps,
            training=training,
            input_grad=input_grad,
            macs=macs,
            **options,
        )
        for name in order:
            module = _REGISTRY.get(name)
            if module is not None and (name == "reference" or module.supports(spec, **options)):
                return name
        return "reference"
    module = _REGISTRY.get(backend)
    if module is None:
        raise ValueError(
            f"backend {backend!r} is not available here; available backends: {available()}"
        )
    reason = _reason(backend, module, spec, options)
    if reason is not None:
        raise ValueError(f"backend {backend!r} cannot run this configuration: {reason}")
    return backend


_RECORDERS: list[list[str]] = []  # the lists of the open record_choices() blocks


@contextlib.contextmanager
def record_choices() -> Iterator[list[str]]:
    """Collect the backend that each recurrence run inside the block ran on, in call order (what
    ``auto`` picked, after any fallback):

    >>> from rnnkit.layers import LSTM
    >>> with record_choices() as used:
    ...     _ = LSTM(4, input_size=3, recurrent_activation="hard_sigmoid")(torch.zeros(2, 5, 3))
    >>> used in (["fused"], ["reference"])
    True
    """
    seen: list[str] = []
    _RECORDERS.append(seen)
    try:
        yield seen
    finally:
        _RECORDERS.remove(seen)


def _record(name: str) -> None:
    for seen in _RECORDERS:
        seen.append(name)


def recording(
    weights: RecurrentWeights, inputs: torch.Tensor, initial_state: tuple[torch.Tensor, ...]
) -> bool:
    """Whether a call records for a backward pass: grad mode on and a tensor needing gradients."""
    if not torch.is_grad_enabled():
        return False
    tensors = (inputs, weights.kernel, weights.recurrent_kernel, weights.bias, *initial_state)
    tensors += tuple(weights.layer_norm or ())
    return any(t is not None and t.requires_grad for t in tensors)


# torch.compile: the backends' kernels (compiled C++ loops, oneDNN's inductor-only ops, Triton with
# CUDA graphs) have no fake-tensor implementations, so a compiled model breaks its graph here
# and runs each recurrence as it runs without compilation.
@torch.compiler.disable
def run(
    spec: RecurrenceSpec,
    weights: RecurrentWeights,
    inputs: torch.Tensor,
    initial_state: tuple[torch.Tensor, ...],
    *,
    backend: str = "auto",
    mask: torch.Tensor | None = None,
    go_backwards: bool = False,
    zero_output_for_mask: bool = False,
    input_dropout_mask: torch.Tensor | None = None,
    recurrent_dropout_mask: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    recurrent_kernel_dropout_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run one recurrence on the chosen backend (see :mod:`rnnkit.kernels.spec`).

    Under ``torch.autocast`` for the inputs' device the recurrence runs in the autocast dtype, as
    ``torch.nn.LSTM`` does: its float32 inputs, weights, initial states and dropout masks cast to
    that dtype (differentiably: the gradients reach the float32 parameters), the results in it
    (:func:`_autocast_args`)."""
    masks = (input_dropout_mask, recurrent_dropout_mask, zoneout_mask)
    cast = _autocast_args(weights, inputs, initial_state, *masks, recurrent_kernel_dropout_mask)
    if cast is not None:
        weights, inputs, initial_state, *masks = cast
        with torch.autocast(inputs.device.type, enabled=False):  # the backends see no autocast
            return run(
                spec, weights, inputs, initial_state, backend=backend, mask=mask,
                go_backwards=go_backwards, zero_output_for_mask=zero_output_for_mask,
                input_dropout_mask=masks[0], recurrent_dropout_mask=masks[1],
                zoneout_mask=masks[2], recurrent_kernel_dropout_mask=masks[3],
            )  # fmt: skip
    options = {
        "mask": mask,
        "go_backwards": go_backwards,
        "zero_output_for_mask": zero_output_for_mask,
        "input_dropout_mask": input_dropout_mask,
        "recurrent_dropout_mask": recurrent_dropout_mask,
        "zoneout_mask": zoneout_mask,
        "recurrent_kernel_dropout_mask": recurrent_kernel_dropout_mask,
    }
    training = recording(weights, inputs, initial_state)
    batch, steps, features = inputs.shape
    call = {  # what the rule reads of this call, and its options
        "batch": batch,
        "steps": steps,
        "training": training,
        "input_grad": training and inputs.requires_grad,
        "macs": batch * steps * spec.gates * spec.units * (features + spec.units),
        "device": inputs.device,
        "dtype": inputs.dtype,
        **options,
    }
    name = select(spec, backend=backend, **call)
    try:
        result = _REGISTRY[name].run(spec, weights, inputs, tuple(initial_state), **options)
        _record(name)
        return result
    except BackendUnavailable as err:
        if backend != "auto":
            raise
        fallback = select(spec, **call)
        warnings.warn(
            f"rnnkit: the {name} backend cannot run on this machine ({err}); "
            f"using {fallback} from now on",
            RuntimeWarning,
            stacklevel=2,
        )
        result = _REGISTRY[fallback].run(spec, weights, inputs, tuple(initial_state), **options)
        _record(fallback)
        return result


def _autocast_args(weights: RecurrentWeights, inputs: torch.Tensor, initial_state, *masks):
    """``(weights, inputs, initial_state, *masks)`` with every float32 tensor cast to the
    autocast dtype where ``torch.autocast`` is on for ``inputs``' device (autocast's
    lower-precision rule, as it applies to ``torch.nn.LSTM``: float64 and integer tensors stay
    as they are); ``None`` where it is off or nothing is float32."""
    device = inputs.device.type
    if not torch.is_autocast_enabled(device):
        return None
    low = torch.get_autocast_dtype(device)

    def cast(t):
        if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
            return t.to(low)
        return t

    if inputs.dtype != torch.float32 or low == torch.float32:
        return None
    ln = weights.layer_norm
    weights = weights._replace(
        kernel=cast(weights.kernel),
        recurrent_kernel=cast(weights.recurrent_kernel),
        bias=cast(weights.bias),
        layer_norm=None if ln is None else type(ln)(*(cast(p) for p in ln)),
    )
    return (weights, cast(inputs), tuple(cast(s) for s in initial_state), *map(cast, masks))
