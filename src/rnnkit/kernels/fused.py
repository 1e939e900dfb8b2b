"""The fused backend: one recurrence per call with a hand-written backward pass through time.

Implements the backend contract of :mod:`rnnkit.kernels.spec` (LSTM, GRU in both ``reset_after``
forms, SimpleRNN) with the same numbers as :mod:`rnnkit.kernels.reference`, for every
configuration: any named activation / recurrent activation (analytic derivatives), no bias, input
and recurrent dropout, layer normalisation, zoneout, recurrent-kernel DropConnect, masks of any
padding side, ``go_backwards``, initial states (with gradients). An arbitrary user callable as
activation is *not* supported (``supports`` returns False, the dispatcher uses ``reference``);
callables that are the library's own functions (e.g. ``torch.tanh``) are recognised.

The recipe (CPU)::

    xw = X @ W (+ b)                  one GEMM for all T steps, time-major (T, B, G*u),
                                      under autograd (input dropout, input LayerNorm, bias too)
    for t in 0..T-1:                  _*Function.forward, no autograd graph
        G[t] += h_in @ U              addmm_ into the step's slice of xw (the buffer is reused
        gate math in place            as the store of gate activations for the backward)
    backward: vectorised coefficients for all steps (derivatives, masks, zoneout), then
    for t in T-1..0:                  per step only one GEMM dG[t] @ U^T and 3-5 element-wise ops
    dU = H_in^T dG                    one GEMM over all (T*B) rows; dW, db, dX by autograd on xw

The Python loops permute the gate columns once per call so that the element-wise ops run on
contiguous blocks (LSTM ``o, i, f, g``; GRU input projection ``h, z, r``); the permutation is an
``index_select`` under autograd, so gradients come back in Keras order. On the CPU, in float32
and float64, every cell with any named activation runs compiled loops instead
(:mod:`rnnkit.kernels.cpu_ext`: brgemm step products, steps split between threads by hidden
units; the LSTM in Keras' gate order); the Python loops remain for other devices and for a
machine without a C++ compiler. The LSTM without layer norm computes its input projection inside its
Function, so that one product gives dW and dU. bfloat16 and float16 calls project their input in
that dtype (oneDNN's half-precision products; in float32 on a device without fast products in
that dtype, :func:`~rnnkit.kernels.products.fast_products`) and keep the recurrence's state in
float32, every other tensor cast at the boundary (differentiably) and the results cast back;
the compiled loops run a bfloat16 call's recurrent products in bfloat16 (float32 accumulation)
where the CPU has them (:func:`_vnni`), and the LSTM's input projection in its loop from the
bfloat16 rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rnnkit.kernels import cpu_ext
from rnnkit.kernels.activations import ACTIVATIONS
from rnnkit.kernels.products import ONEDNN_LINEAR, fast_products, keras_linear, nt, onednn, tn
from rnnkit.kernels.spec import LAYER_NORM_EPS, RecurrenceSpec, RecurrentWeights

_EPS = LAYER_NORM_EPS
_HALF = (torch.bfloat16, torch.float16)  # the recurrence's state in float32 (see run)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward


# ----------------------------------------------------------------------------- matrix products
class _Right:
    """Right-multiplication by a fixed matrix ``mat (K, N)``: ``x @ mat`` for many small ``x``."""

    def __init__(self, mat: torch.Tensor, batch: int):
        self.mat = mat
        self.fast = onednn(mat)
        if self.fast:
            w = mat.t().contiguous()  # (N, K), torch.nn.Linear layout
            try:
                w = torch.ops.mkldnn._reorder_linear_weight(w, batch)  # packed once per call
            except Exception:  # noqa: BLE001 - packing is an optimisation only
                pass
            self.w = w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return ONEDNN_LINEAR(x, self.w, None, "none", [], "")
        return x @ self.mat

    def acc_(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out += x @ mat``."""
        return out.add_(self(x)) if self.fast else out.addmm_(x, self.mat)

    def into(self, base: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = base + x @ mat``."""
        if self.fast:
            return torch.add(base, self(x), out=out)
        return torch.addmm(base, x, self.mat, out=out)

    def mm(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = x @ mat``."""
        return out.copy_(self(x)) if self.fast else torch.mm(x, self.mat, out=out)


# The compiled LSTM and GRU loops read their weights gate-blocked, (G, K, u), or the plain
# (K, G u) matrix as it comes (float32 with brgemm). Blocking is a copy per call; it pays where the
# plain matrix's gate columns have rows a multiple of 4 KB apart (u a multiple of 256), which the
# caches hold badly (133 -> 104 us a step at 256 units), in calls of more than a few steps.
# Paired, inference, plain vs blocked speed: 1 x 1 step 200 / 650 / 1500 units 1.53 / 4.25 / 3.22;
# 256 units 1 x 4 1.24, 32 x 4 1.00, 1 x 8 1.04, 32 x 8 0.97, 1 x 32 0.81, 32 x 100 0.92 (512 and
# 1024 units alike at long calls: 0.91-0.94); other widths 1 x 8 / 16 / 32 at 650 units 1.69 /
# 1.51 / 1.27, 20 x 8 / 16 / 35 1.14 / 1.04 / 1.03, 1 x 32 at 200 1.16, 32 x 8 at 384 1.09, long
# calls 0.97-1.03 (200, 128, 64, 160, 320, 384, 650 units; training 0.99-1.01); GRU 1 x 1 at 650
# 2.06, 1 x 4 at 256 1.12, longer 0.98-1.04; layer-norm LSTM 1 x 1 at 650 2.35. So: plain up to
# PLAIN_MAX_STEPS steps, or up to PLAIN_MAX_STEPS_UNALIGNED where the rows are no multiple of 4 KB
# (the LSTM's 4u floats: u no multiple of 256; the GRU's 3u: u no multiple of 1024).
PLAIN_MAX_STEPS = 4
PLAIN_MAX_STEPS_UNALIGNED = 32


def _gate_blocked(steps: int, width: int) -> bool:
    """Whether the compiled LSTM / GRU loops read gate-blocked weights for a call of ``steps``
    whose weights have ``width`` columns (G u; see above)."""
    if steps <= PLAIN_MAX_STEPS:
        return False
    return (4 * width) % 4096 == 0 or steps > PLAIN_MAX_STEPS_UNALIGNED


def _backward_weight(
    ext, mat: torch.Tensor, batch: int, steps: int, h0_grad: bool, bf16: bool = False
) -> tuple[torch.Tensor, bool]:
    """:func:`_step_weight` of ``U^T`` for a backward loop, but ``mat`` as it is (not read) where
    the loop's one product would give only ``h_0``'s gradient and nothing asked for it (the loops
    skip that step's product when ``h0_grad`` is false): a 1-step training call then neither
    copies the transposed weight nor multiplies by it (5 MB and two passes at 650 GRU units)."""
    if steps == 1 and not h0_grad:
        return mat, False  # (the layout flag as _step_weight's for float32 brgemm, or unread)
    return _step_weight(ext, mat, batch, bf16=bf16)


def _h0_grad(ctx) -> bool:
    """Whether the initial ``h`` (every Function's fourth input) needs its gradient."""
    return ctx.needs_input_grad[3]


def _step_weight(
    ext, mat: torch.Tensor, batch: int, gate_blocks: int = 1, bf16: bool = False
) -> tuple[torch.Tensor, bool]:
    """The recurrent weight ``mat (K, N)`` as the compiled loops take it: ``(weight, packed)``.

    float32 with oneDNN's brgemm kernel in this torch: the plain contiguous matrix (no packing),
    with ``gate_blocks > 1`` as ``(gate_blocks, K, N / gate_blocks)``, each gate's columns one
    contiguous block; otherwise oneDNN's packed linear weight where available, else the matrix
    for ``torch.mm``. The backward passes' ``U^T`` (a transposed view) is copied by the compiled
    transpose (``(1024, 256)``: 33 us against 105 us for ``.contiguous()``). ``bf16`` (a
    bfloat16 call, see :func:`run`): :func:`_vnni`.
    """
    if bf16:
        return _vnni(mat, gate_blocks), False
    if mat.dtype == torch.float32 and cpu_ext.has_brgemm(ext):
        if gate_blocks > 1:
            K, N = mat.shape
            mat = mat.view(K, gate_blocks, N // gate_blocks).transpose(0, 1)
        elif not mat.is_contiguous() and mat.t().is_contiguous():
            return ext.transpose(mat.t()), False
        return mat.contiguous(), False
    right = _Right(mat, batch)
    return (right.w, True) if right.fast else (right.mat, False)


def _even_width(x2: torch.Tensor) -> torch.Tensor:
    """Input rows ``x2 (N, I)`` with ``I`` made even (a zero column), as :func:`_vnni` pads the
    kernel's rows: the width of a bfloat16 product's pairs. Odd widths only copy."""
    return x2 if x2.shape[1] % 2 == 0 else F.pad(x2, (0, 1))


def _vnni(mat: torch.Tensor, gate_blocks: int = 1) -> torch.Tensor:
    """``mat (K, N)`` for the compiled loops' bfloat16 products: rounded to bfloat16, rows
    ``2k`` and ``2k + 1`` interleaved column by column (the VNNI layout of oneDNN's bfloat16
    kernels), ``(K' / 2, N, 2)`` or gate-blocked ``(gate_blocks, K' / 2, N / gate_blocks, 2)``,
    with ``K'`` = ``K`` rounded up to even (a zero row)."""
    K, N = mat.shape
    w = mat.to(torch.bfloat16)
    if K % 2:
        w = torch.cat([w, w.new_zeros(1, N)])
    w = w.reshape(-1, 2, gate_blocks, N // gate_blocks).permute(2, 0, 3, 1).contiguous()
    return w if gate_blocks > 1 else w[0]


# ----------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class _Act:
    """An activation with an in-place forward and an analytic derivative.

    ``deriv(y, x)`` returns f'(x) from the output ``y`` (and the input ``x`` when
    ``needs_input``), or ``None`` for the constant 1.
    """

    name: str
    apply_: Callable[[torch.Tensor], torch.Tensor]
    deriv: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor | None]
    needs_input: bool = False
    out_fn: Callable | None = None  # f(x, out=...) when torch has one
    deriv_out: Callable | None = None  # deriv_out(y, out): f'(x) from y into out, no temporary

    def out(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.out_fn is not None:
            return self.out_fn(x, out=out)
        return self.apply_(out.copy_(x))


# torch.tanh on float32 goes to MKL VML for contiguous tensors, which here takes milliseconds for
# a (32, 256) block (threading), and to a slow SLEEF path otherwise; sigmoid is ~20x faster, so
# tanh(x) = 2 sigmoid(2x) - 1 (same value to float rounding, absolute error ~1 ulp of 1).
# (x + x rather than 2 * x: a Python scalar multiplier costs a dtype conversion per call.)
def _tanh_(x):
    s = x.add_(x).sigmoid_()
    return s.add_(s).sub_(1.0)


def _tanh_out(x, out):
    s = torch.add(x, x, out=out).sigmoid_()
    return s.add_(s).sub_(1.0)


def _hard_sigmoid_(x):
    return x.add_(3.0).clamp_(0.0, 6.0).div_(6.0)


def _gelu_deriv(y, x):
    return 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0)))) + x * torch.exp(-0.5 * x * x) * (
        1.0 / math.sqrt(2.0 * math.pi)
    )


def _silu_deriv(y, x):
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


_ACTS: dict[str, _Act] = {
    "tanh": _Act(
        "tanh",
        _tanh_,
        lambda y, x: 1.0 - y * y,
        out_fn=_tanh_out,
        deriv_out=lambda y, out: torch.mul(y, y, out=out).neg_().add_(1.0),
    ),
    "sigmoid": _Act(
        "sigmoid",
        torch.sigmoid_,
        lambda y, x: y - y * y,
        out_fn=torch.sigmoid,
        deriv_out=lambda y, out: torch.addcmul(y, y, y, value=-1.0, out=out),
    ),
    "hard_sigmoid": _Act(
        "hard_sigmoid", _hard_sigmoid_, lambda y, x: ((y > 0) & (y < 1)).to(y.dtype) / 6.0
    ),
    "relu": _Act("relu", torch.relu_, lambda y, x: (y > 0).to(y.dtype)),
    "linear": _Act("linear", lambda x: x, lambda y, x: None),
    "elu": _Act("elu", F.elu_, lambda y, x: torch.where(y > 0, 1.0, y + 1.0)),
    "selu": _Act(
        "selu",
        torch.selu_,
        lambda y, x: torch.where(y > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA),
    ),
    "exponential": _Act("exponential", torch.exp_, lambda y, x: y.clone(), out_fn=torch.exp),
    # softsign' = 1 / (1 + |x|)^2 = (1 - |y|)^2; softplus' = sigmoid(x) = 1 - exp(-y) (torch's
    # threshold: x above 20 passes through, derivative 1)
    "softsign": _Act(
        "softsign", lambda x: x.div_(x.abs() + 1.0), lambda y, x: (1.0 - y.abs()).square_()
    ),
    "softplus": _Act(
        "softplus",
        lambda x: x.copy_(F.softplus(x)),
        lambda y, x: torch.where(y > 20.0, 1.0, torch.expm1(-y).neg_()),
    ),
    "silu": _Act("silu", lambda x: F.silu(x, inplace=True), _silu_deriv, needs_input=True),
    "gelu": _Act("gelu", lambda x: x.copy_(F.gelu(x)), _gelu_deriv, needs_input=True),
}
_ACTS["swish"] = _ACTS["silu"]
_BY_FUNCTION = {id(fn): name for name, fn in ACTIVATIONS.items()}


def _resolve(activation) -> _Act | None:
    if activation is None:
        return _ACTS["linear"]
    if isinstance(activation, str):
        return _ACTS.get(activation)
    name = _BY_FUNCTION.get(id(activation))
    return _ACTS.get(name) if name is not None else None


# ----------------------------------------------------------------------------- contract
_KNOWN_OPTIONS = {
    "mask",
    "go_backwards",
    "zero_output_for_mask",
    "input_dropout_mask",
    "recurrent_dropout_mask",
    "zoneout_mask",
    "recurrent_kernel_dropout_mask",
    "device",  # dispatch passes the inputs' device and dtype to supports()
    "dtype",
}


def unsupported_reason(spec: RecurrenceSpec, **options) -> str | None:
    """Why the fused backend cannot run this configuration exactly, or ``None`` if it can."""
    if spec.cell not in ("lstm", "gru", "simple"):
        return f"unknown cell {spec.cell!r}"
    if _resolve(spec.activation) is None:
        return f"activation {spec.activation!r} is an arbitrary callable (use 'reference')"
    if spec.cell != "simple" and _resolve(spec.recurrent_activation) is None:
        return (
            f"recurrent_activation {spec.recurrent_activation!r} is an arbitrary callable "
            "(use 'reference')"
        )
    for key, value in options.items():
        if key not in _KNOWN_OPTIONS and value is not None and value is not False:
            return f"option {key}={value!r} is not supported by the fused backend"
    dtype = options.get("dtype")
    if dtype is not None and dtype not in (torch.float32, torch.float64, *_HALF):
        return f"dtype {dtype} is not supported (float32, float64, bfloat16, float16)"
    return None


def supports(spec: RecurrenceSpec, **options) -> bool:
    """True when :func:`run` computes this configuration exactly (same numbers as reference)."""
    return unsupported_reason(spec, **options) is None


@dataclass
class _Config:
    act: _Act
    ract: _Act
    layer_norm: bool
    mode: str  # how h_t is formed: "none" (h'), "where" (mask), "lerp" (zoneout, with mask)
    save: bool  # store what the backward pass needs
    ext: object = None  # the compiled step loops (cpu_ext.ops()) when they run this call
    bf16: bool = False  # their recurrent products in bfloat16 (a bfloat16 call; see run)


def _mul(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return a.clone() if b is None else a * b


def _scale_(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return a if b is None else a.mul_(b)


def _set_h(cfg, H, t, hbuf, hp, a, valid):
    if cfg.mode == "where":
        torch.where(valid[t], hbuf, hp, out=H[t + 1])
    elif cfg.mode == "lerp":
        torch.lerp(hp, hbuf, a[t], out=H[t + 1])


# The backward pass overwrites the stored gate activations with the gate gradients (no extra
# buffer). Set True to keep them (one copy per backward), e.g. for gradcheck / retain_graph.
ALLOW_REPEATED_BACKWARD = False


def _consume(ctx, G: torch.Tensor) -> torch.Tensor:
    if ALLOW_REPEATED_BACKWARD:
        return G.clone()
    if getattr(ctx, "consumed", False):
        raise RuntimeError(
            "the fused recurrence's backward pass can run only once per forward "
            "(its buffers are reused in place); set rnnkit.kernels.fused.ALLOW_REPEATED_BACKWARD"
            " = True to allow retain_graph"
        )
    ctx.consumed = True
    return G


# The Functions return H[1:] and H[T] rather than H, so that autograd never materialises a
# zero-padded (T+1, B, u) gradient (measured: 3.3 MB of a SimpleRNN training step's 11.5 MB peak
# at the benchmark shape); the backward passes take the two gradients dY (of H[1:]) and dh_T.
def _last_state_grad(dY: torch.Tensor, dh_T: torch.Tensor) -> torch.Tensor:
    """The gradient of ``H[T]`` (last output and final state) as a new contiguous buffer."""
    return torch.add(dY[-1], dh_T).contiguous()


def _step_output_grads(dY: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``dHs[t]``: what reaches ``H[t]`` from the outputs (``dHs[0] = 0``, the initial state)."""
    return (dY.new_zeros(dY.shape[1:]), *dY.unbind(0))


# ----------------------------------------------------------------------------- compiled loops
_ACT_IDS = cpu_ext.ACTIVATION_IDS
_MODES = {"none": 0, "where": 1, "lerp": 2}


def _compiled_ops(cell: str, act: _Act, ract: _Act, device: torch.device, dtype: torch.dtype):
    """The compiled step loops (:mod:`rnnkit.kernels.cpu_ext`) when they cover this call."""
    if (
        not cpu_ext.covers(cell)
        or device.type != "cpu"
        or dtype not in (torch.float32, torch.float64)
        or act.name not in _ACT_IDS
        or ract.name not in _ACT_IDS
    ):
        return None
    return cpu_ext.ops()


# ----------------------------------------------------------------------------- LSTM
class _LSTMFunction(torch.autograd.Function):
    """Gate columns of ``xw``/``U``: ``o, i, f, g`` (u each). Returns ``(H[1:], H[T], c_T)``.

    The input projection comes either as ``xw`` (computed under autograd: the layer-norm form)
    or as ``x2, W, b_in`` with ``xw = None``; it is then computed here and the backward pass
    computes its gradients together with the recurrent ones (one product).
    """

    @staticmethod
    def forward(ctx, cfg, xw, U, h0, c0, g_h, g_c, b_c, rd, a, valid, x2=None, W=None, b_in=None):
        ext = cfg.ext
        steps = (x2.shape[0] // h0.shape[0]) if xw is None else xw.shape[0]
        # the compiled loops' weights gate-blocked or plain (_gate_blocked)
        blocks = 4 if _gate_blocked(steps, U.shape[1]) else 1
        loop_proj = ()  # (x2, W, b_in): the compiled loop projects the input itself
        width = None if x2 is None else x2.shape[1]  # the input's (before any padding)
        in_loop = ext is not None and cpu_ext.has_brgemm(ext)
        if xw is None and in_loop and (x2.dtype == torch.float32 or cfg.bf16):
            # chunk by chunk, just before the steps read it: no pass over a (T, B, 4u) buffer
            # in memory between the projection and the loop (see csrc/fused_cpu.cpp); in a
            # bfloat16 call from the bfloat16 rows and a VNNI weight (an odd width padded)
            xw = U.new_empty(steps, h0.shape[0], U.shape[1])
            b = None if b_in is None else b_in.contiguous()
            if cfg.bf16:
                x2, W = _even_width(x2.to(torch.bfloat16)), W.to(torch.bfloat16)
                w_loop = _vnni(W, blocks)
            else:
                w_loop = _step_weight(ext, W, h0.shape[0], gate_blocks=blocks)[0]
            x2 = x2.contiguous()
            loop_proj = (x2, w_loop, b)
        elif xw is None:
            with torch.no_grad():
                xw = keras_linear(x2, W, b_in).view(-1, h0.shape[0], U.shape[1])
        # the input rows as the loop read them (padded), the input kernel, a bias, the width
        ctx.proj = (x2, W, b_in is not None, width) if x2 is not None and cfg.save else None
        T, B, G4 = xw.shape
        u = G4 // 4
        save, ln, act, ract = cfg.save, cfg.layer_norm, cfg.act, cfg.ract
        n = T if save else 1
        G = xw  # (T, B, 4u) pre-activations -> activations (run() created xw for this call)
        H = xw.new_empty(T + 1, B, u)
        H[0] = h0
        C = xw.new_empty(T + 1, B, u)
        C[0] = c0
        masked = valid is not None
        CN = xw.new_empty(n, B, u) if masked else None  # c' before the mask rule
        TC = xw.new_empty(n, B, u)  # act(c') or act(LN(c'))
        P = None  # pre-activations, for the derivatives of SiLU / GELU
        if save and (act.needs_input or ract.needs_input):
            # the compiled loops keep only what they read: the candidate's columns where the
            # gates' activation needs no input (a quarter of the memory traffic)
            P = xw.new_empty(T, B, u if cfg.ext is not None and not ract.needs_input else G4)
        Hin = xw.new_empty(n, B, u) if rd is not None else None
        hbuf = xw.new_empty(B, u) if cfg.mode != "none" else None
        mU = _Right(U, B) if ext is None else None
        if ln:
            M = xw.new_empty(n, B, G4)  # h_in U before its LayerNorm
            CY = xw.new_empty(T, B, u) if save and act.needs_input and ext is None else None
            if save:  # per-step LayerNorm statistics, for the backward pass only
                MU_h, RS_h = xw.new_empty(T, B, 1), xw.new_empty(T, B, 1)
                MU_c, RS_c = xw.new_empty(T, B, 1), xw.new_empty(T, B, 1)
            direct = not save and mU is not None and mU.fast  # the product as it comes
        if ext is not None:
            ext.lstm_forward(
                G, *_step_weight(ext, U, B, gate_blocks=blocks, bf16=cfg.bf16), H, C, CN, TC, Hin,
                rd, a, valid, _ACT_IDS[act.name], _ACT_IDS[ract.name], _MODES[cfg.mode], save,
                M if (ln and save) else None,
                *((MU_h, RS_h, MU_c, RS_c) if (ln and save) else (None,) * 4),
                g_h, g_c, b_c, P, _EPS, *loop_proj,
            )  # fmt: skip
        for t in range(T if ext is None else 0):
            s = t if save else 0
            hp, cp, g = H[t], C[t], G[t]
            hin = hp if rd is None else torch.mul(hp, rd, out=Hin[s])
            if ln:
                m = mU(hin) if direct else mU.mm(hin, out=M[s])
                y, mu, rs = torch.native_layer_norm(m, (G4,), g_h, None, _EPS)
                g.add_(y)
                if save:
                    MU_h[t], RS_h[t] = mu, rs
            else:
                mU.acc_(g, hin)
            if P is not None:
                P[t] = g
            ract.apply_(g[:, : 3 * u])
            act.apply_(g[:, 3 * u :])
            o, i, f, gg = g[:, :u], g[:, u : 2 * u], g[:, 2 * u : 3 * u], g[:, 3 * u :]
            cn = CN[s] if masked else C[t + 1]
            torch.mul(f, cp, out=cn).addcmul_(i, gg)
            tc = TC[s]
            if ln:
                y, mu, rs = torch.native_layer_norm(cn, (u,), g_c, b_c, _EPS)
                if save:
                    MU_c[t], RS_c[t] = mu, rs
                if CY is not None:
                    CY[t] = y
                act.out(y, out=tc)
            else:
                act.out(cn, out=tc)
            torch.mul(o, tc, out=H[t + 1] if hbuf is None else hbuf)
            if masked:
                torch.where(valid[t], cn, cp, out=C[t + 1])
            _set_h(cfg, H, t, hbuf, hp, a, valid)
        c_T = C[T].clone()
        if save:
            ctx.save_for_backward(H)
            ctx.cfg = cfg
            ctx.bufs = (G, C, CN, TC, P, Hin, U, rd, a, valid, g_h, g_c, b_c)
            if ln:
                ctx.ln_bufs = (M, MU_h, RS_h, CY, MU_c, RS_c)
        return H[1:], H[T], c_T

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_T, dc_T):
        (H,) = ctx.saved_tensors
        cfg = ctx.cfg
        G, C, CN, TC, P, Hin, U, rd, a, valid, g_h, g_c, b_c = ctx.bufs
        G = _consume(ctx, G)
        ln, act, ract = cfg.layer_norm, cfg.act, cfg.ract
        T, B, G4 = G.shape
        u = G4 // 4
        h0g = _h0_grad(ctx)
        # Everything per step on (B, u) blocks that stay in cache: measured faster than vectorised
        # passes over (T, B, u) here. dG[t] overwrites the gate activations G[t].
        if ln:
            M, MU_h, RS_h, CY, MU_c, RS_c = ctx.ln_bufs
            if ALLOW_REPEATED_BACKWARD:
                M = M.clone()  # overwritten below with its gradient
            c_in = CY
        else:
            c_in = CN if CN is not None else C[1:]
        c_raw = CN if CN is not None else C[1:]
        vf = valid.to(G.dtype) if valid is not None else None
        ext = cfg.ext
        mUT = _Right(U.t(), B) if ext is None else None
        dh = _last_state_grad(dY, dh_T)
        dh2 = torch.empty_like(dh)
        dc = dc_T.clone(memory_format=torch.contiguous_format)
        dc2 = torch.empty_like(dc)
        d_pre_c = torch.empty_like(dh)
        mul3 = G.new_empty(B, 3, u)
        tmp = torch.empty_like(dh) if rd is not None else None
        if ln:
            dg_h = G.new_zeros(G4)
            if ext is None:  # the cell LayerNorm's output gradients, for its gamma/beta ones
                DY = torch.empty_like(TC)
            else:  # the compiled loops sum those per row
                dg_c, db_c = G.new_zeros(u), G.new_zeros(u)
        db = None  # the input bias gradient, summed by the compiled loops when they run
        h_in = Hin if rd is not None else H[:-1]  # (T, B, u)
        x2, W_in, _, width = ctx.proj if ctx.proj is not None else (None,) * 4
        if ext is not None:
            if ctx.proj is not None and ctx.proj[2]:
                db = G.new_zeros(G4)
            # the weight gradients [dW; dU], summed by the loops chunk by chunk of rows (the
            # first chunk's product written, not added: no zero fill)
            DWU = G.new_empty((0 if x2 is None else x2.shape[1]) + u, G4)
            ext.lstm_backward(
                G, *_backward_weight(ext, U.t(), B, T, h0g, bf16=cfg.bf16), H, C, CN, TC,
                dY.contiguous(), dh, dc, rd, a, valid, _ACT_IDS[act.name], _ACT_IDS[ract.name],
                *((M, MU_h, RS_h, MU_c, RS_c, g_h, g_c, b_c, dg_c, db_c, dg_h) if ln
                  else (None,) * 11),
                db, P, x2, h_in, DWU, h0_grad=h0g,
            )  # fmt: skip
        dHs = _step_output_grads(dY) if ext is None else ()
        for t in range(T - 1 if ext is None else -1, -1, -1):
            Gt, tc = G[t], TC[t]
            S, gg = Gt[:, : 3 * u], Gt[:, 3 * u :]  # sigmoid block o, i, f and candidate g
            o, i, f = S[:, :u], S[:, u : 2 * u], S[:, 2 * u :]
            Pt = None if P is None else P[t]
            dS = ract.deriv(S, None if Pt is None else Pt[:, : 3 * u])
            dgg = act.deriv(gg, None if Pt is None else Pt[:, 3 * u :])
            dtc = act.deriv(tc, None if c_in is None else c_in[t])
            dhn = dh if a is None else dh * a[t]  # gradient of the new h' (zoneout / mask)
            if ln:
                d_pre_c = DY[t]
            torch.mul(dhn, o, out=d_pre_c)
            _scale_(d_pre_c, dtc)
            if ln:
                dc.add_(
                    _layer_norm_backward(
                        d_pre_c, c_raw[t], [u], MU_c[t], RS_c[t], g_c, b_c, [True, False, False]
                    )[0]
                )
            else:
                dc.add_(d_pre_c)
            dcv = dc if vf is None else dc * vf[t]  # no gate gradient at masked steps
            torch.mul(dhn, tc, out=mul3[:, 0])
            torch.mul(dcv, gg, out=mul3[:, 1])
            torch.mul(dcv, C[t], out=mul3[:, 2])
            if valid is None:
                torch.mul(dc, f, out=dc2)
            else:
                torch.where(valid[t], dc * f, dc, out=dc2)  # the carried c passes dc through
            torch.mul(dcv, i, out=gg)
            _scale_(gg, dgg)
            if dS is None:
                S.copy_(mul3.view(B, 3 * u))
            else:
                torch.mul(dS, mul3.view(B, 3 * u), out=S)
            dc, dc2 = dc2, dc
            src = Gt
            if ln:
                # dG[t] -> dM[t] (and this step's share of dg_h); dM[t] overwrites h_in U in
                # M[t], its last use, so no extra (T, B, 4u) buffer is touched
                src, dg, _ = _layer_norm_backward(
                    Gt, M[t], [G4], MU_h[t], RS_h[t], g_h, None, [True, True, False]
                )
                dg_h.add_(dg)
                M[t].copy_(src)
            if rd is None:
                mUT.into(dHs[t], src, out=dh2)
            else:
                torch.addcmul(dHs[t], mUT.mm(src, out=tmp), rd, out=dh2)
            if a is not None:
                dh2.add_(dh).sub_(dhn)  # (1 - a) dh passes to h_{t-1} where h is kept
            dh, dh2 = dh2, dh
        if ext is None:  # from the (T B, K) rows
            h_rows, g_rows = h_in.reshape(T * B, u), (M if ln else G).view(T * B, G4)
            dW, dU = (None, tn(h_rows, b=g_rows)) if x2 is None else tn(x2, h_rows, b=g_rows)
        else:
            dW, dU = (None, DWU) if x2 is None else DWU.split([x2.shape[1], u])
            if dW is not None:  # (the padding row of a bfloat16 call's odd input width off)
                dW = dW[:width].to(W_in.dtype)
        if ctx.proj is not None and ctx.proj[2] and db is None:
            db = G.view(T * B, G4).sum(0)
        if not ln:
            dg_h = dg_c = db_c = None
        elif ext is None:
            # the cell LayerNorm's gamma/beta gradients over all steps at once (one pass)
            N = T * B
            _, dg_c, db_c = _layer_norm_backward(
                DY.view(N, u),
                c_raw.reshape(N, u),
                [u],
                MU_c.view(N, 1),
                RS_c.view(N, 1),
                g_c,
                b_c,
                [False, True, True],
            )
        dh = dh if h0g else None
        if ctx.proj is None:
            return None, G, dU, dh, dc, dg_h, dg_c, db_c, None, None, None, None, None, None
        dx2 = None
        if ctx.needs_input_grad[11] and cfg.bf16:
            dx2 = G.view(T * B, G4).to(torch.bfloat16) @ W_in.t()
        elif ctx.needs_input_grad[11]:
            dx2 = nt(G.view(T * B, G4), W_in)
        return None, None, dU, dh, dc, dg_h, dg_c, db_c, None, None, None, dx2, dW, db


# ----------------------------------------------------------------------------- GRU
class _GRUFunction(torch.autograd.Function):
    """GRU, ``reset_after=True``. Columns: ``xw`` h, z, r; ``U``/``b_rec``/``g_h`` z, r, h."""

    @staticmethod
    def forward(ctx, cfg, xw, U, h0, b_rec, g_h, rd, a, valid):
        T, B, G3 = xw.shape
        u = G3 // 3
        save, ln, act, ract = cfg.save, cfg.layer_norm, cfg.act, cfg.ract
        n = T if save else 1
        G = xw
        H = xw.new_empty(T + 1, B, u)
        H[0] = h0
        R = xw.new_empty(n, B, G3)  # recurrent projection (after LN) + recurrent bias
        ext = cfg.ext
        mU = _Right(U, B) if ext is None else None
        P = xw.new_empty(T, B, G3) if save and (act.needs_input or ract.needs_input) else None
        Hin = xw.new_empty(n, B, u) if rd is not None else None
        hbuf = xw.new_empty(B, u) if cfg.mode != "none" else None
        M = MU = RS = None
        if ln:
            M = xw.new_empty(n, B, G3)
            MU, RS = xw.new_empty(n, B, 1), xw.new_empty(n, B, 1)
        if ext is not None:
            ext.gru_forward(
                G, *_step_weight(
                    ext, U, B, gate_blocks=3 if _gate_blocked(T, G3) else 1, bf16=cfg.bf16
                ),
                H, R, b_rec, Hin, rd, a, valid,
                _ACT_IDS[act.name], _ACT_IDS[ract.name], _MODES[cfg.mode], save, M, MU, RS, g_h,
                P, _EPS,
            )  # fmt: skip
        for t in range(T if ext is None else 0):
            s = t if save else 0
            hp, g, r_t = H[t], G[t], R[s]
            hin = hp if rd is None else torch.mul(hp, rd, out=Hin[s])
            if ln:
                y, mu, rs = torch.native_layer_norm(mU.mm(hin, out=M[s]), (G3,), g_h, b_rec, _EPS)
                r_t.copy_(y)
                MU[s], RS[s] = mu, rs
            elif b_rec is not None:
                mU.into(b_rec, hin, out=r_t)
            else:
                mU.mm(hin, out=r_t)
            g[:, u:].add_(r_t[:, : 2 * u])
            if P is not None:
                P[t, :, u:] = g[:, u:]
            ract.apply_(g[:, u:])
            hh = g[:, :u].addcmul_(g[:, 2 * u :], r_t[:, 2 * u :])
            if P is not None:
                P[t, :, :u] = hh
            act.apply_(hh)
            torch.lerp(hh, hp, g[:, u : 2 * u], out=H[t + 1] if hbuf is None else hbuf)
            _set_h(cfg, H, t, hbuf, hp, a, valid)
        if save:
            ctx.save_for_backward(H)
            ctx.cfg = cfg
            ctx.bufs = (G, R, P, Hin, U, b_rec, g_h, rd, a, valid)
            if ln:
                ctx.ln_bufs = (M, MU, RS)
        return H[1:], H[T]

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_T):
        (H,) = ctx.saved_tensors
        cfg = ctx.cfg
        G, R, P, Hin, U, b_rec, g_h, rd, a, valid = ctx.bufs
        G = _consume(ctx, G)
        ln, act, ract = cfg.layer_norm, cfg.act, cfg.ract
        T, B, G3 = G.shape
        u = G3 // 3
        ext = cfg.ext
        if ext is not None:  # G becomes d xw (h, z, r), R d(recurrent projection) (z, r, h)
            dh = _last_state_grad(dY, dh_T)
            M, MU, RS = ctx.ln_bufs if ln else (None, None, None)
            if ALLOW_REPEATED_BACKWARD:
                R = R.clone()  # overwritten with its gradient
            # d(h_in U) overwrites h_in U in M (its last use; the loops sum dg_h as they go)
            DM = dg_h = None
            if ln:
                DM = M.clone() if ALLOW_REPEATED_BACKWARD else M
                dg_h = G.new_zeros(G3)
            h0g = _h0_grad(ctx)
            ext.gru_backward(
                G, *_backward_weight(ext, U.t(), B, T, h0g, bf16=cfg.bf16), H, R, dY.contiguous(),
                dh, rd, a, _ACT_IDS[act.name], _ACT_IDS[ract.name], M, MU, RS, g_h, b_rec, DM, P,
                dg_h, h0_grad=h0g,
            )  # fmt: skip
            h_in = Hin if rd is not None else H[:-1]
            dU = tn(h_in.reshape(T * B, u), b=(DM if ln else R).reshape(T * B, G3), bf16=cfg.bf16)
            db_rec = R.sum((0, 1)) if b_rec is not None else None
            return None, G, dU, dh if h0g else None, db_rec, dg_h, None, None, None
        hh, z, r = G[..., :u], G[..., u : 2 * u], G[..., 2 * u :]

        def pre(k):
            return None if P is None else P[..., k * u : (k + 1) * u]

        # dh' = a * dh;  D = [d pre_h, d pre_z, d pre_r, d rec_h] = dh * K
        K_h = _scale_(_mul(1.0 - z, act.deriv(hh, pre(0))), a)
        D = G.new_empty(T, B, 4 * u)
        D[..., :u] = K_h
        D[..., u : 2 * u] = _scale_(_mul(H[:-1] - hh, ract.deriv(z, pre(1))), a)
        D[..., 2 * u : 3 * u] = _mul(K_h * R[..., 2 * u :], ract.deriv(r, pre(2)))
        torch.mul(K_h, r, out=D[..., 3 * u :])
        Q = z.clone() if a is None else (z * a).add_(1.0 - a)  # dh_{t-1} += Q * dh_t
        del K_h, G, R, hh, z, r
        P = None  # noqa: F841
        mUT = _Right(U.t(), B)
        dHs, dh = _step_output_grads(dY), _last_state_grad(dY, dh_T)
        dh2 = torch.empty_like(dh)
        tmp = torch.empty_like(dh) if rd is not None else None
        if ln:
            M, MU, RS = ctx.ln_bufs
            DM = torch.empty_like(M)
        for t in range(T - 1, -1, -1):
            Dt = D[t]
            Dt.view(B, 4, u).mul_(dh.unsqueeze(1))
            src = Dt[:, u:]
            if ln:
                src = DM[t]
                src.copy_(
                    _layer_norm_backward(
                        Dt[:, u:], M[t], [G3], MU[t], RS[t], g_h, b_rec, [True, False, False]
                    )[0]
                )
            torch.addcmul(dHs[t], Q[t], dh, out=dh2)
            if rd is None:
                mUT.acc_(dh2, src)
            else:
                dh2.addcmul_(mUT.mm(src, out=tmp), rd)
            dh, dh2 = dh2, dh
        dR = D[..., u:]
        src_all = DM if ln else dR
        h_in = Hin if rd is not None else H[:-1]
        dU = tn(h_in.reshape(T * B, u), b=src_all.reshape(T * B, G3))
        db_rec = dR.sum((0, 1)) if b_rec is not None else None
        dg_h = ((M - MU).mul_(RS).mul_(dR)).sum((0, 1)) if ln else None
        return None, D[..., :G3], dU, dh, db_rec, dg_h, None, None, None


class _GRUResetBeforeFunction(torch.autograd.Function):
    """GRU, ``reset_after=False``. ``xw`` columns ``h, z, r``; ``U``/``g_h``: ``z, r, h``."""

    @staticmethod
    def forward(ctx, cfg, xw, U, h0, g_h, rd, a, valid):
        T, B, G3 = xw.shape
        u = G3 // 3
        save, ln, act, ract = cfg.save, cfg.layer_norm, cfg.act, cfg.ract
        n = T if save else 1
        G = xw
        H = xw.new_empty(T + 1, B, u)
        H[0] = h0
        ext = cfg.ext
        mUzr = mUh = None  # the Python loop's products
        if ext is None:
            mUzr, mUh = _Right(U[:, : 2 * u], B), _Right(U[:, 2 * u :], B)
        RH = xw.new_empty(n, B, u)  # r * h_in
        P = xw.new_empty(T, B, G3) if save and (act.needs_input or ract.needs_input) else None
        Hin = xw.new_empty(n, B, u) if rd is not None else None
        hbuf = xw.new_empty(B, u) if cfg.mode != "none" else None
        if ln:
            g_zr, g_hh = g_h[: 2 * u], g_h[2 * u :]
            Mzr, Mh = xw.new_empty(n, B, 2 * u), xw.new_empty(n, B, u)
            MU = xw.new_empty(n, 2, B, 1)  # [zr, h] statistics, each contiguous
            RS = xw.new_empty(n, 2, B, 1)
        if ext is not None:
            (w_zr, packed), (w_h, _) = (
                _step_weight(ext, U[:, : 2 * u], B, bf16=cfg.bf16),
                _step_weight(ext, U[:, 2 * u :], B, bf16=cfg.bf16),
            )
            ext.gru_rb_forward(
                G, w_zr, w_h, packed, H, RH, Hin, rd, a, valid, _ACT_IDS[act.name],
                _ACT_IDS[ract.name], _MODES[cfg.mode], save,
                *((Mzr, Mh, MU, RS, g_h) if ln else (None,) * 5), P, _EPS,
            )  # fmt: skip
        for t in range(T if ext is None else 0):
            s = t if save else 0
            hp, g = H[t], G[t]
            hin = hp if rd is None else torch.mul(hp, rd, out=Hin[s])
            if ln:
                m = mUzr.mm(hin, out=Mzr[s])
                y, MU[s, 0], RS[s, 0] = torch.native_layer_norm(m, (2 * u,), g_zr, None, _EPS)
                g[:, u:].add_(y)
            else:
                mUzr.acc_(g[:, u:], hin)
            if P is not None:
                P[t, :, u:] = g[:, u:]
            ract.apply_(g[:, u:])
            rh = torch.mul(g[:, 2 * u :], hin, out=RH[s])
            hh = g[:, :u]
            if ln:
                y, MU[s, 1], RS[s, 1] = torch.native_layer_norm(
                    mUh.mm(rh, out=Mh[s]), (u,), g_hh, None, _EPS
                )
                hh.add_(y)
            else:
                mUh.acc_(hh, rh)
            if P is not None:
                P[t, :, :u] = hh
            act.apply_(hh)
            torch.lerp(hh, hp, g[:, u : 2 * u], out=H[t + 1] if hbuf is None else hbuf)
            _set_h(cfg, H, t, hbuf, hp, a, valid)
        if save:
            ctx.save_for_backward(H)
            ctx.cfg = cfg
            ctx.bufs = (G, RH, P, Hin, U, g_h, rd, a, valid)
            if ln:
                ctx.ln_bufs = (Mzr, Mh, MU, RS)
        return H[1:], H[T]

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_T):
        (H,) = ctx.saved_tensors
        cfg = ctx.cfg
        G, RH, P, Hin, U, g_h, rd, a, valid = ctx.bufs
        G = _consume(ctx, G)
        ln, act, ract = cfg.layer_norm, cfg.act, cfg.ract
        T, B, G3 = G.shape
        u = G3 // 3
        h_in = Hin if rd is not None else H[:-1]
        ext = cfg.ext
        if ext is not None:  # G becomes d xw (h, z, r); DMzr, DMh the products' gradients
            dh = _last_state_grad(dY, dh_T)
            Mzr, Mh, MU, RS = ctx.ln_bufs if ln else (None,) * 4
            DMzr, DMh = G.new_empty(T, B, 2 * u), G.new_empty(T, B, u)
            dg_h = G.new_zeros(G3) if ln else None
            # (the candidate's product also gives the reset gate's gradient: needed at every step)
            h0g = _h0_grad(ctx)
            (wt_zr, _), (wt_h, packed) = (
                _backward_weight(ext, U[:, : 2 * u].t(), B, T, h0g, bf16=cfg.bf16),
                _step_weight(ext, U[:, 2 * u :].t(), B, bf16=cfg.bf16),
            )
            ext.gru_rb_backward(
                G, wt_zr, wt_h, packed, H, RH, dY.contiguous(), dh, Hin, rd, a,
                _ACT_IDS[act.name], _ACT_IDS[ract.name], Mzr, Mh, MU, RS, g_h, DMzr, DMh,
                dg_h, P, h0_grad=h0g,
            )  # fmt: skip
            dh = dh if h0g else None
            dU = torch.cat(
                [
                    tn(h_in.reshape(T * B, u), b=DMzr.view(T * B, 2 * u), bf16=cfg.bf16),
                    tn(RH.reshape(T * B, u), b=DMh.view(T * B, u), bf16=cfg.bf16),
                ],
                dim=1,
            )
            return None, G, dU, dh, dg_h, None, None, None
        hh, z, r = G[..., :u], G[..., u : 2 * u], G[..., 2 * u :]

        def pre(k):
            return None if P is None else P[..., k * u : (k + 1) * u]

        K_r = _mul(h_in, ract.deriv(r, pre(2)))  # d pre_r = d(r*h_in) * K_r
        Q = z.clone() if a is None else (z * a).add_(1.0 - a)
        K_z = _scale_(_mul(H[:-1] - hh, ract.deriv(z, pre(1))), a)
        hh.copy_(_scale_(_mul(1.0 - z, act.deriv(hh, pre(0))), a))
        z.copy_(K_z)
        del K_z
        P = None  # noqa: F841
        mUzrT, mUhT = _Right(U[:, : 2 * u].t(), B), _Right(U[:, 2 * u :].t(), B)
        dHs, dh = _step_output_grads(dY), _last_state_grad(dY, dh_T)
        dh2 = torch.empty_like(dh)
        drh = torch.empty_like(dh)
        dhin = torch.empty_like(dh)
        if ln:
            Mzr, Mh, MU, RS = ctx.ln_bufs
            g_zr, g_hh = g_h[: 2 * u], g_h[2 * u :]
            DMzr, DMh = torch.empty_like(Mzr), torch.empty_like(Mh)
        for t in range(T - 1, -1, -1):
            Dt = G[t]
            Dt[:, : 2 * u].view(B, 2, u).mul_(dh.unsqueeze(1))
            src_h = Dt[:, :u]
            if ln:
                src_h = DMh[t]
                src_h.copy_(
                    _layer_norm_backward(
                        Dt[:, :u],
                        Mh[t],
                        [u],
                        MU[t, 1],
                        RS[t, 1],
                        g_hh,
                        None,
                        [True, False, False],
                    )[0]
                )
            mUhT.mm(src_h, out=drh)  # d(r * h_in)
            torch.mul(drh, Dt[:, 2 * u :], out=dhin)  # Dt[:, 2u:] still holds r
            torch.mul(drh, K_r[t], out=Dt[:, 2 * u :])
            src_zr = Dt[:, u:]
            if ln:
                src_zr = DMzr[t]
                src_zr.copy_(
                    _layer_norm_backward(
                        Dt[:, u:],
                        Mzr[t],
                        [2 * u],
                        MU[t, 0],
                        RS[t, 0],
                        g_zr,
                        None,
                        [True, False, False],
                    )[0]
                )
            mUzrT.acc_(dhin, src_zr)
            torch.addcmul(dHs[t], Q[t], dh, out=dh2)
            if rd is None:
                dh2.add_(dhin)
            else:
                dh2.addcmul_(dhin, rd)
            dh, dh2 = dh2, dh
        zr_all = (DMzr if ln else G[..., u:]).reshape(T * B, 2 * u)
        h_all = (DMh if ln else G[..., :u]).reshape(T * B, u)
        dU = torch.cat(
            [
                tn(h_in.reshape(T * B, u), b=zr_all),
                tn(RH.reshape(T * B, u), b=h_all),
            ],
            dim=1,
        )
        dg_h = None
        if ln:
            dg_h = torch.cat(
                [
                    ((Mzr - MU[:, 0]).mul_(RS[:, 0]).mul_(G[..., u:])).sum((0, 1)),
                    ((Mh - MU[:, 1]).mul_(RS[:, 1]).mul_(G[..., :u])).sum((0, 1)),
                ]
            )
        return None, G, dU, dh, dg_h, None, None, None


# ----------------------------------------------------------------------------- SimpleRNN
class _SimpleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, xw, U, h0, g_h, rd, a, valid):
        T, B, u = xw.shape
        save, ln, act = cfg.save, cfg.layer_norm, cfg.act
        n = T if save else 1
        G = xw
        H = xw.new_empty(T + 1, B, u)
        H[0] = h0
        Hin = xw.new_empty(n, B, u) if rd is not None else None
        ext = cfg.ext
        mU = _Right(U, B) if ext is None else None
        # Without mask/zoneout the activation writes straight into H and G keeps the pre-activation.
        direct = cfg.mode == "none"
        P = xw.new_empty(T, B, u) if save and act.needs_input and not direct else None
        M = MU = RS = None
        if ln:
            M = xw.new_empty(n, B, u)
            MU, RS = xw.new_empty(n, B, 1), xw.new_empty(n, B, 1)
        if ext is not None:
            ext.simple_forward(
                G, *_step_weight(ext, U, B, bf16=cfg.bf16), H, Hin, rd, a, valid,
                _ACT_IDS[act.name], _MODES[cfg.mode], save, M, MU, RS, g_h, P, _EPS,
            )  # fmt: skip
        for t in range(T if ext is None else 0):
            s = t if save else 0
            hp, g = H[t], G[t]
            hin = hp if rd is None else torch.mul(hp, rd, out=Hin[s])
            if ln:
                y, MU[s], RS[s] = torch.native_layer_norm(
                    mU.mm(hin, out=M[s]), (u,), g_h, None, _EPS
                )
                g.add_(y)
            else:
                mU.acc_(g, hin)
            if direct:
                act.out(g, out=H[t + 1])
            else:
                if P is not None:
                    P[t] = g
                act.apply_(g)
                _set_h(cfg, H, t, g, hp, a, valid)
        if save:
            ctx.save_for_backward(H)
            ctx.cfg = cfg
            ctx.bufs = (G, P, Hin, U, g_h, rd, a, direct)
            if ln:
                ctx.ln_bufs = (M, MU, RS)
        return H[1:], H[T]

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dh_T):
        (H,) = ctx.saved_tensors
        G, P, Hin, U, g_h, rd, a, direct = ctx.bufs
        G = _consume(ctx, G)
        T, B, u = G.shape
        act, ln, ext = ctx.cfg.act, ctx.cfg.layer_norm, ctx.cfg.ext
        h_in = Hin if rd is not None else H[:-1]
        if ext is not None:  # G becomes d xw, M (layer norm) d(h_in U)
            dh = _last_state_grad(dY, dh_T)
            M, MU, RS = ctx.ln_bufs if ln else (None, None, None)
            if ln and ALLOW_REPEATED_BACKWARD:
                M = M.clone()  # overwritten with its gradient
            dg_h = G.new_zeros(u) if ln else None
            h0g = _h0_grad(ctx)
            ext.simple_backward(
                G, *_backward_weight(ext, U.t(), B, T, h0g, bf16=ctx.cfg.bf16), H, dY.contiguous(),
                dh, rd, a, _ACT_IDS[act.name], direct, M, MU, RS, g_h, dg_h, P, h0_grad=h0g,
            )  # fmt: skip
            dU = tn(h_in.reshape(T * B, u), b=(M if ln else G).reshape(T * B, u), bf16=ctx.cfg.bf16)
            return None, G, dU, dh if h0g else None, dg_h, None, None, None
        Y = H[1:] if direct else G  # the activations
        if act.deriv_out is not None:  # f' into G without a (T, B, u) temporary
            act.deriv_out(Y, G)
        else:
            d = act.deriv(Y, G if direct else P)  # direct: G holds the pre-activations
            if d is None:
                G.fill_(1.0)
            else:
                G.copy_(d)
            del d
        del P
        _scale_(G, a)
        Q = None if a is None else 1.0 - a
        mUT = _Right(U.t(), B)
        dHs, dh = _step_output_grads(dY), _last_state_grad(dY, dh_T)
        dh2 = torch.empty_like(dh)
        tmp = torch.empty_like(dh) if rd is not None else None
        if ctx.cfg.layer_norm:
            M, MU, RS = ctx.ln_bufs
            DM = torch.empty_like(M)
        for t in range(T - 1, -1, -1):
            src = G[t].mul_(dh)
            if ctx.cfg.layer_norm:
                src = DM[t]
                src.copy_(
                    _layer_norm_backward(
                        G[t], M[t], [u], MU[t], RS[t], g_h, None, [True, False, False]
                    )[0]
                )
            if rd is None:
                mUT.into(dHs[t], src, out=dh2)
            else:
                torch.addcmul(dHs[t], mUT.mm(src, out=tmp), rd, out=dh2)
            if Q is not None:
                dh2.addcmul_(Q[t], dh)
            dh, dh2 = dh2, dh
        src_all = DM if ctx.cfg.layer_norm else G
        dU = tn(h_in.reshape(T * B, u), b=src_all.view(T * B, u))
        dg_h = ((M - MU).mul_(RS).mul_(G)).sum((0, 1)) if ctx.cfg.layer_norm else None
        return None, G, dU, dh, dg_h, None, None, None


# ----------------------------------------------------------------------------- run
_PERMS: dict[tuple[str, int, str], torch.Tensor] = {}


def _perm(cell: str, u: int, which: str, device) -> torch.Tensor | None:
    """Column permutation from Keras gate order to the internal one (None: identity)."""
    if cell == "simple" or (cell == "gru" and which == "rec"):
        return None
    key = (cell, u, which, str(device))
    if key not in _PERMS:
        blocks = (3, 0, 1, 2) if cell == "lstm" else (2, 0, 1)  # lstm o,i,f,g; gru h,z,r
        _PERMS[key] = torch.cat([torch.arange(b * u, (b + 1) * u) for b in blocks]).to(device)
    return _PERMS[key]


def _cols(x: torch.Tensor | None, idx: torch.Tensor | None) -> torch.Tensor | None:
    if x is None or idx is None:
        return x
    return x.index_select(-1, idx)


def run(
    spec: RecurrenceSpec,
    weights: RecurrentWeights,
    inputs: torch.Tensor,
    initial_state: tuple[torch.Tensor, ...],
    *,
    mask: torch.Tensor | None = None,
    go_backwards: bool = False,
    zero_output_for_mask: bool = False,
    input_dropout_mask: torch.Tensor | None = None,
    recurrent_dropout_mask: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    recurrent_kernel_dropout_mask: torch.Tensor | None = None,
    **extra,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run one recurrence over ``inputs``; see :mod:`rnnkit.kernels.spec` for the contract."""
    reason = unsupported_reason(spec, dtype=inputs.dtype, **extra)
    if reason is not None:
        raise ValueError(f"the fused backend cannot run this configuration: {reason}")
    B, T, _ = inputs.shape
    u, cell = spec.units, spec.cell
    if T == 0 or B == 0:  # nothing to run (as the vendor backend: zeros, the initial state)
        return inputs.new_zeros(B, T, u), tuple(initial_state)
    # bfloat16 / float16: the input projection in that dtype (its products on oneDNN's half-
    # precision kernels, twice as fast as float32 here), the recurrence's state in float32 (its
    # products in bfloat16 in a bfloat16 call, below), the results cast back (before: the
    # reference's Python loop)
    low = inputs.dtype if inputs.dtype in _HALF else None
    dtype, dev = (torch.float32 if low else inputs.dtype), inputs.device
    if low:
        initial_state = tuple(s.float() for s in initial_state)
        weights = _widened(weights)
        recurrent_kernel_dropout_mask = _wide(recurrent_kernel_dropout_mask)
        zoneout_mask, recurrent_dropout_mask = _wide(zoneout_mask), _wide(recurrent_dropout_mask)
    x = inputs if input_dropout_mask is None else inputs * input_dropout_mask[:, None, :]
    x = x.transpose(0, 1)  # (T, B, I) time-major, in processing order
    if go_backwards:
        x = x.flip(0)
    x2 = x.reshape(T * B, x.shape[-1])

    act = _resolve(spec.activation)
    ract = _resolve(spec.recurrent_activation) if cell != "simple" else act
    ext = _compiled_ops(cell, act, ract, dev, dtype)
    if ext is not None and cell == "lstm":  # the compiled LSTM loops take Keras' gate order
        idx_in = idx_rec = None
    else:
        idx_in, idx_rec = _perm(cell, u, "in", dev), _perm(cell, u, "rec", dev)
    # a bfloat16 call's products in bfloat16 where the compiled loops have them (the LSTM's
    # input projection too, in its loops)
    bf16 = low == torch.bfloat16 and ext is not None and cpu_ext.has_bf16_products(ext)
    bias = weights.bias if spec.use_bias else None
    b_in = b_rec = None
    if bias is not None:
        b_in = bias[0] if bias.dim() == 2 else bias
        if cell == "gru" and bias.dim() == 2:
            b_rec = bias[1]
    U = weights.recurrent_kernel
    if recurrent_kernel_dropout_mask is not None:
        U = U * recurrent_kernel_dropout_mask
    U = _cols(U, idx_rec)
    # the input projection in the call's dtype, but in float32 where the device has no fast
    # products in that dtype (products.fast_products: float16 here, bfloat16 on AVX2 CPUs)
    if low is None:
        W, project = weights.kernel, keras_linear  # Keras' gate order
    elif not fast_products(dev, low):
        W, project, x2 = weights.kernel.float(), keras_linear, x2.float()
    else:
        W, project = weights.kernel.to(low), _half_linear
    g_h = g_c = b_c = None
    proj = (None, None, None)  # (x2, W, b_in): the LSTM computes its own input projection
    if spec.layer_norm:
        ln = getattr(weights, "layer_norm", None)
        if ln is None:
            raise ValueError(
                "spec.layer_norm=True needs weights.layer_norm (LayerNormWeights); received None"
            )
        # LN(x W; gamma) + b as one op (b is the LayerNorm's bias)
        xw = F.layer_norm(
            _projected(project, x2, W, None, idx_in),
            (W.shape[1],),
            _cols(ln.input_gamma, idx_in),
            _cols(b_in, idx_in),
            _EPS,
        )
        g_h, g_c, b_c = _cols(ln.recurrent_gamma, idx_rec), ln.cell_gamma, ln.cell_beta
    elif cell == "lstm" and (x2.dtype == dtype or bf16):
        xw, proj = None, (x2, _cols(W, idx_in), _cols(b_in, idx_in))
    else:
        xw = _projected(project, x2, W, b_in, idx_in)
    if xw is not None:
        xw = xw.view(T, B, -1)  # (T, B, G*u)

    valid = None
    if mask is not None:
        m = mask.transpose(0, 1)  # (T, B)
        if go_backwards:
            m = m.flip(0)
        valid = m[..., None].contiguous()  # (T, B, 1) bool
    a = None  # weight of the new h in h_t = (1 - a) h_{t-1} + a h'
    mode = "none"
    if zoneout_mask is not None or spec.zoneout > 0.0:
        mode = "lerp"
        if zoneout_mask is not None:
            zm = zoneout_mask.transpose(0, 1)
            zm = zm.flip(0) if go_backwards else zm
            a = torch.empty(zm.shape, dtype=dtype, device=dev)  # (T, B, u) contiguous
            torch.mul(zm, -1.0, out=a).add_(1.0)  # 1 - mask: transposed by the first pass
        else:
            a = torch.full((T, 1, 1), 1.0 - spec.zoneout, dtype=dtype, device=dev)
        if valid is not None:
            a = a * valid
        a = a.contiguous()
    elif valid is not None:
        mode = "where"
        a = valid.to(dtype)
    rd = recurrent_dropout_mask
    if rd is not None:
        rd = rd.to(dtype).contiguous()

    h0 = initial_state[0]
    diff = [xw, U, h0, g_h, g_c, b_c, b_rec, *proj, *initial_state[1:]]
    save = torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in diff
    )
    cfg = _Config(act, ract, spec.layer_norm, mode, save, ext, bf16)
    if cell == "lstm":
        out, h_T, c_T = _recurrence(
            _LSTMFunction, cfg, xw, U, h0, initial_state[1], g_h, g_c, b_c, rd, a, valid, *proj
        )
    elif cell == "gru" and spec.reset_after:
        out, h_T = _recurrence(_GRUFunction, cfg, xw, U, h0, b_rec, g_h, rd, a, valid)
    elif cell == "gru":
        out, h_T = _recurrence(_GRUResetBeforeFunction, cfg, xw, U, h0, g_h, rd, a, valid)
    else:
        out, h_T = _recurrence(_SimpleFunction, cfg, xw, U, h0, g_h, rd, a, valid)

    # out = H[1:] (T, B, u), h_T = H[T]: views of the Function's one state buffer
    if valid is not None:
        if zero_output_for_mask:
            out = out * valid.to(dtype)  # zeros at every masked step
        elif not _zeros_already(m, h0):
            out = out * (m.cumsum(0) > 0)[..., None].to(dtype)  # zeros before the first valid step
    outputs = out.transpose(0, 1)  # (B, T, u) in processing order
    final = (h_T, c_T) if cell == "lstm" else (h_T,)
    if low:
        return outputs.to(low), tuple(s.to(low) for s in final)
    return outputs, final


class _Unrecorded:
    """The context a Function's forward gets when the call records nothing (``cfg.save`` false:
    no input needs a gradient): it keeps nothing, and no graph node exists to read it."""


def _recurrence(function: type[torch.autograd.Function], cfg: _Config, *args):
    """``function``'s forward, through autograd only where the call records a backward pass:
    ``Function.apply``'s own bookkeeping costs ~10 us, a third of a 1-step SimpleRNN call."""
    if cfg.save:
        return function.apply(cfg, *args)
    if torch.is_grad_enabled():  # (nothing needs a gradient) as apply runs it: grad mode off
        with torch.no_grad():
            return function.forward(_Unrecorded(), cfg, *args)
    return function.forward(_Unrecorded(), cfg, *args)


def _projected(project, x2: torch.Tensor, W: torch.Tensor, b, idx) -> torch.Tensor:
    """``x2 W + b`` with the columns in the loops' gate order (``idx``): the weight's columns
    permuted first, or where ``x2`` has fewer rows than ``W`` the product's (a copy of a few rows
    instead of the weight: a 1-step GRU call at 650 units spent 1.3 ms of 4 permuting it)."""
    if idx is not None and x2.shape[0] < W.shape[0]:
        return _cols(project(x2, W, b), idx)
    return project(x2, _cols(W, idx), _cols(b, idx))


def _zeros_already(m: torch.Tensor, h0: torch.Tensor) -> bool:
    """Whether the outputs before each row's first valid step (``m`` (T, B) in processing order)
    are zeros as they come: the loops carry ``h0`` there, so when every row starts valid, or
    ``h0`` is a constant zero (no gradient to stop). Saves a pass over (T, B, u) and its
    backward."""
    if bool(m[0].all()):
        return True
    constant = not (torch.is_grad_enabled() and h0.requires_grad)
    return constant and not bool(h0.any())


def _wide(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def _widened(weights: RecurrentWeights) -> RecurrentWeights:
    """The float32 recurrence's parameters (differentiably: gradients return in their dtype);
    the input kernel stays as it is (the projection runs in the inputs' dtype)."""
    ln = weights.layer_norm
    return weights._replace(
        recurrent_kernel=_wide(weights.recurrent_kernel),
        bias=_wide(weights.bias),
        layer_norm=None if ln is None else type(ln)(*(_wide(p) for p in ln)),
    )


def _half_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ w + b`` in ``w``'s half-precision dtype (``b`` float32), as float32."""
    y = (x.to(w.dtype) @ w).float()
    return y if b is None else y.add_(b)  # (y is this function's own float32 copy)
