"""Matrix products on the CPU through oneDNN where torch's float32 matmul goes to MKL.

On x86 CPUs PyTorch's float32 ``matmul`` / ``F.linear`` go to MKL, which on some CPUs (AMD EPYC
here) runs at about half the speed of oneDNN's JIT GEMM, the one ``torch.nn.LSTM`` uses (measured,
1 thread: (700, 200) x (200, 10000) 32.8 ms through ``F.linear``, 14.9 ms through oneDNN).
oneDNN is reachable through the (inductor) op ``mkldnn._linear_pointwise``, which computes
``x @ w^T + b``. Exact float32 (no reduced-precision math mode); float64, other devices and torch
builds without the op use torch's own products.

- :func:`linear`: ``x @ weight^T + bias`` in ``torch.nn.Linear``'s layout, differentiable (the
  language model's decoder);
- :func:`keras_linear`: ``x @ w + b`` for a Keras-layout ``w (K, N)`` (the fused recurrences'
  input projection);
- :func:`nt` (``a @ b^T``) and :func:`tn` (``a^T @ b``, the weight gradients over all steps);
- :func:`fast_products`: whether a device multiplies matrices of a dtype fast.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rnnkit.kernels import cpu_ext


def _find_onednn_linear():
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._linear_pointwise
        x, w = torch.randn(3, 4), torch.randn(5, 4)
        torch.testing.assert_close(op(x, w, None, "none", [], ""), x @ w.t())
        return op
    except Exception:  # noqa: BLE001 - any failure means: not available, use torch.mm
        return None


ONEDNN_LINEAR = _find_onednn_linear()


def onednn(t: torch.Tensor) -> bool:
    """Whether ``t``'s products can go to oneDNN (float32 on the CPU, the op available)."""
    return ONEDNN_LINEAR is not None and t.dtype == torch.float32 and t.device.type == "cpu"


# Below this many multiply-adds torch's own product is faster than oneDNN's linear, whose every
# call sets up its kernel (~12-15 us). Measured, 1 thread, ``x (M, K) @ w (K, N)`` (+ b): 32 x 8
# x 64 2.4 us against 14.6, 64 x 32 x 128 7.8 against 16.6, 64 x 64 x 256 (1M) 24.7 against
# 24.2, 128 x 64 x 256 46.6 against 34.9; ``a @ b^T`` alike (32 x 64 x 8 3.1 against 12.7 us,
# 1M 25.7 against 22.8). With 2 threads the crossover is nearer 2M (1M: 15.2 against 20.1 us;
# 2M: 26.1 against 25.0). A single row is always torch's (its matrix-vector product).
ONEDNN_MIN_MACS = 1 << 20


def _onednn_worth(rows: int, inner: int, cols: int) -> bool:
    """Whether oneDNN's linear beats torch's product for ``(rows, inner) @ (inner, cols)``."""
    return rows > 1 and rows * inner * cols >= ONEDNN_MIN_MACS


@functools.cache
def fast_products(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``device`` multiplies ``dtype`` matrices fast. On the CPU, bfloat16 and float16
    only where oneDNN has kernels for them (bfloat16: AVX-512 or native BF16; float16:
    AVX512-FP16 or AMX-FP16): elsewhere torch's half-precision CPU product is a scalar loop, as
    float16 is on this project's AVX512-BF16 machine: (3200, 128) x (128, 1024) took 758 ms
    against 11 ms in float32 and 4.5 ms in bfloat16, and torch.nn's float16 LSTM trained 8-18x
    slower than the fused recurrence projecting in float32 (the casts are exact)."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return True
    query = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else "_is_mkldnn_fp16_supported"
    try:
        return bool(getattr(torch.ops.mkldnn, query)())
    except (AttributeError, RuntimeError):  # a torch without the query
        return False


def nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b^T`` for ``a (M, K)``, ``b (N, K)``: oneDNN's linear, no copies when contiguous;
    small products (:data:`ONEDNN_MIN_MACS`, a single row) torch's own (as :func:`keras_linear`)."""
    if onednn(a) and onednn(b) and _onednn_worth(a.shape[0], a.shape[1], b.shape[0]):
        return ONEDNN_LINEAR(a, b.contiguous(), None, "none", [], "")
    return a @ b.t()


TN_ROWS = 512  # rows per chunk of the products below: small temporaries


def tn(*lefts: torch.Tensor, b: torch.Tensor, bf16: bool = False):
    """``a^T @ b`` for each tall ``a (N, K_a)`` of ``lefts`` and ``b (N, K2)``: the weight
    gradients over all steps (one result per left operand; a single one for a single left).
    ``bf16`` (a bfloat16 call, where the compiled loops have bfloat16 products): the compiled
    op multiplies in bfloat16 (float32 accumulation), at any width.

    Where the compiled loops are built with brgemm and ``b`` has at most
    ``cpu_ext.weight_grads_max_cols`` columns, their ``weight_grads`` op computes it: the left
    operands transposed in chunks of ~128 rows, ``b``'s rows read as they are, the sum
    accumulated in place (paired vs the oneDNN path below, training steps at the bench shape:
    GRU 1.04x / 1.07x with 1 / 2 threads, SimpleRNN 1.11x / 1.19x, the layer-norm LSTM's input
    projection 1.03x / 1.04x).

    Otherwise oneDNN's linear computes ``x @ w^T``; it is fed ``x`` = the left operands' chunk
    transposed into one small ``(sum K_a, rows)`` buffer and ``w = b^T`` as a transposed *view*,
    which oneDNN reorders itself much faster than a ``.contiguous()`` copy (measured, (3200, 256)
    x (3200, 1024), 1 thread: 9-10 ms against 16-20 ms with both copied, 17 ms for MKL's
    ``a.t() @ b`` on this AMD CPU). Stacking the left operands lets each chunk of ``b`` (the gate
    gradients, the largest operand) be reordered once for all of them. Chunks of ``TN_ROWS``
    rows keep the temporaries small; the partial products are summed.

    A single row (a 1-step call of batch 1) is an outer product: torch's own (measured, 1
    thread: (650, 1) x (1, 1950) 82 us against 306 us for oneDNN's, (200, 1) x (1, 800) 11
    against 15; from 2 rows the paths above are faster, up to 2x).
    """
    if b.shape[0] == 1 or not (all(onednn(a) for a in lefts) and onednn(b)):
        out = [a.t() @ b for a in lefts]
        return out[0] if len(lefts) == 1 else tuple(out)
    ext = cpu_ext.ops()
    if ext is not None and (bf16 or b.shape[1] <= cpu_ext.weight_grads_max_cols(ext)):
        both = ext.weight_grads([a.contiguous() for a in lefts], b.contiguous(), bf16)
        out = both.split([a.shape[1] for a in lefts])
        return out[0] if len(lefts) == 1 else out
    # only a transposed view of *contiguous* rows is fast: a view of rows with a longer stride
    # (a column block of the gate buffer) sends oneDNN to a reference path, measured ~1000x slower
    b = b.contiguous()
    widths = [a.shape[1] for a in lefts]
    both = None
    for s in range(0, b.shape[0], TN_ROWS):
        rows = min(TN_ROWS, b.shape[0] - s)
        x = b.new_empty(sum(widths), rows)
        for part, a in zip(x.split(widths), lefts, strict=True):
            part.copy_(a[s : s + rows].t())
        prod = ONEDNN_LINEAR(x, b[s : s + rows].t(), None, "none", [], "")
        both = prod if both is None else both.add_(prod)
    out = both.split(widths)
    return out[0] if len(lefts) == 1 else out


class _KerasLinear(torch.autograd.Function):
    """``x @ w + b`` for ``w (K, N)`` with oneDNN products (the input projection of all steps)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        # the transposed view as it is: oneDNN reorders the weight itself, faster than a
        # contiguous copy first (paired, 1 thread: (1, 650) x (650, 1950) 0.11 ms against 1.03,
        # (3200, 128) x (128, 1024) 4.57 against 4.73)
        return ONEDNN_LINEAR(x, w.t(), b, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = nt(dy, w) if ctx.needs_input_grad[0] else None
        dw = tn(x, b=dy) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def keras_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x (M, K) @ w (K, N) + b``: oneDNN's products where :func:`onednn`, else torch's; a
    single row always torch's (its matrix-vector product skips the weight reorder oneDNN does on
    every call: (1, 200) x (200, 800) 9 us against 24, (1, 650) x (650, 1950) 68 against 84; from
    2 rows oneDNN is as fast or up to 2x faster), and so are products of fewer than
    :data:`ONEDNN_MIN_MACS` multiply-adds."""
    if onednn(x) and onednn(w) and _onednn_worth(x.shape[0], x.shape[1], w.shape[1]):
        return _KerasLinear.apply(x, w, b)
    return x @ w if b is None else torch.addmm(b, x, w)


class _Linear(torch.autograd.Function):
    """``x @ weight^T + bias`` for ``weight (N, K)`` (``torch.nn.Linear``'s layout), oneDNN's
    products both ways: ``dx = dy @ weight`` from a transposed view of the weight (oneDNN reorders
    it itself), ``dweight = dy^T x`` by :func:`_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return ONEDNN_LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dx = None
        if ctx.needs_input_grad[0]:
            dx = ONEDNN_LINEAR(dy, weight.t(), None, "none", [], "")
        dw = _weight_grad(dy, x) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _weight_grad(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``dy^T x`` (N, K) for ``dy (M, N)``, ``x (M, K)``, as ``(x^T dy)^T``: :func:`tn` with the
    narrow ``x`` as its left operand (it transposes its left operands chunk by chunk: ``dy`` is
    the wide one, 10,000 columns for a decoder), the product transposed back. Measured, (400,
    10000) and (400, 200), 1 thread: 8.3 ms, against 15.1 ms for ``tn(dy, b=x)`` and 18.7 ms for
    MKL."""
    r = tn(x, b=dy)  # (K, N)
    ext = cpu_ext.ops()
    return ext.transpose(r) if ext is not None else r.t().contiguous()


@torch.compiler.disable  # (inductor cannot lower mkldnn._linear_pointwise from eager code)
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (``x (..., K)``, ``weight (N, K)``), on oneDNN's products
    where :func:`onednn` applies to both (about 2x faster than MKL on this AMD CPU; the same
    numbers up to float rounding), else ``F.linear`` itself (and for products of fewer than
    :data:`ONEDNN_MIN_MACS` multiply-adds)."""
    if not (onednn(x) and onednn(weight)) or (bias is not None and not onednn(bias)):
        return F.linear(x, weight, bias)
    if x.numel() == 0 or weight.numel() == 0:  # (oneDNN rejects empty operands)
        return F.linear(x, weight, bias)
    if not _onednn_worth(x.numel() // x.shape[-1], x.shape[-1], weight.shape[0]):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    y = _Linear.apply(x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous(), bias)
    return y.view(*lead, weight.shape[0])
