r"""LSTM, GRU and SimpleRNN on NVIDIA GPUs: cuBLAS + one Triton kernel per step.

Implements the backend contract of :mod:`rnnkit.kernels.spec` for the configurations that
:func:`supports` accepts: LSTM, GRU in both forms (``reset_after=True``, Keras' default and
cuDNN's form; ``reset_after=False``, whose candidate product ``(r h_{t-1}) U_h`` needs the reset
gate first: two products and two step kernels each way) and SimpleRNN, with any activation
and recurrent activation among :data:`ACTIVATIONS`; with or without bias; optional layer
normalisation (``spec.layer_norm``), input and recurrent dropout, DropConnect on the recurrent
kernel, zoneout (training masks or the inference-time constant), masks with any padding,
``zero_output_for_mask``, ``go_backwards``, initial states; float32, bfloat16 and float16.

The recipe (issue 6):

- the input projection of all steps is one GEMM before the loop, followed (layer norm) by one
  ``F.layer_norm`` over the ``G = gates * u`` pre-activations; both under ordinary autograd;
- per step, ``r = h_{t-1} @ U`` by cuBLAS into a static buffer, then one Triton program per batch
  row for the rest (:mod:`rnnkit.kernels._triton_steps`, one kernel pair per cell): layer norm of
  ``r`` over ``G``, the gates, the cell update and layer norm of the LSTM's cell state over ``u``,
  the new ``h``;
- backward through time is written by hand (a ``torch.autograd.Function``): per step one Triton
  kernel for the gate math and the two layer norms, then ``dR_t @ U^T`` by cuBLAS; the gradient of
  ``U`` is one GEMM over all steps at the end, the layer-norm parameters' gradients one sum;
- the forward loop and the backward loop are each captured once as a CUDA graph over static
  buffers, so a training step replays two graphs instead of launching ~4T kernels from Python.
  Sequences of different lengths share the buffers (sized for the longest) and each length is
  captured once (an engine per cell configuration and batch size: the :data:`MAX_ENGINES` most
  recently used are kept, and per slot the graphs of :data:`MAX_GRAPHS` lengths);
- a padded step keeps the state (``h``, ``c``); zoneout mixes ``h_{t-1}`` into ``h_t``, and so
  does the GRU's update gate. These let part of ``d h_t`` bypass the step's gates: the backward
  step passes that part straight to ``d h_{t-1}`` (a ``carry`` buffer), next to the ``dR_t U^T``
  product. The outputs are the
  states times the mask of outputs that show a state (``zero_output_for_mask`` or not), under
  ordinary autograd.

Layer-norm LSTM (haste's ``LayerNormLSTM``, gate order i, f, g, o; as in
:mod:`rnnkit.kernels.steps`, epsilon :data:`~rnnkit.kernels.spec.LAYER_NORM_EPS`):

.. math::
    z = \mathrm{LN}(x W; \gamma_x) + \mathrm{LN}(h_{t-1} U; \gamma_h) + b, \quad
    c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g), \quad
    h_t = \sigma(o) \tanh(\mathrm{LN}(c_t; \gamma_c, \beta_c))

In bfloat16 and float16, inputs, weights, ``h`` and the GEMM operands are in that dtype (cuBLAS
accumulates in float32); the gate math, the cell state and everything saved for the backward
pass are float32.

Nothing here imports Triton or touches CUDA until a GPU call is made.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from rnnkit.kernels.activations import ACTIVATIONS as LIBRARY_ACTIVATIONS
from rnnkit.kernels.reference import input_projection
from rnnkit.kernels.spec import (
    GATES,
    LAYER_NORM_EPS,
    BackendUnavailable,
    RecurrenceSpec,
    RecurrentWeights,
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Activation names the step kernels implement (their codes: _triton_steps.ACTIVATION_CODES).
ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear", "softsign", "elu", "softplus",
               "selu", "exponential", "silu", "swish", "gelu")  # fmt: skip
# the library functions of rnnkit.kernels.activations, by identity
_CALLABLES = {id(fn): name for name, fn in LIBRARY_ACTIVATIONS.items() if name in ACTIVATIONS}
# An engine (one cell configuration and batch size) holds its slots' buffers (about
# 10 x B x T x G values for the longest T seen; 190 MiB for an LSTM at 64 x 100, 512 units,
# float32) and a pair of graphs per sequence length.
MAX_ENGINES = 8
MAX_GRAPHS = 64  # per slot: the sequence lengths whose captured graphs are kept
# cuBLAS picks very slow float32 kernels (TF32 off) for the per-step products at 5-19 rows: on an
# H100, 52 us for (16, 128) @ (128, 128) and for the LSTM's (16, 512) @ (512, 128)^T, 31 us at
# 256 units, against 5-10 us at 20 rows (docs/gpu-notes.md, "Small batches"). The products'
# operands get PAD_ROWS rows there (zero rows the step kernels never touch).
PAD_ROWS = 20
_BROKEN: list[str] = []  # why Triton failed on this machine, once it has


def activation_name(activation) -> str | None:
    """The name of ``activation`` if the step kernels implement it, else ``None``."""
    if isinstance(activation, str):
        return activation if activation in ACTIVATIONS else None
    return _CALLABLES.get(id(activation))


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (without importing it; looked up once per process)."""
    return importlib.util.find_spec("triton") is not None


def unsupported_reason(
    spec: RecurrenceSpec,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    **_options: object,
) -> str | None:
    """Why :func:`run` cannot compute this call exactly, or ``None`` when it can."""
    reason = _device_reason(device, dtype)
    if reason is not None:
        return reason
    if spec.cell not in GATES:
        return f"unknown cell {spec.cell!r}"
    activations = [("activation", spec.activation)]
    if spec.cell != "simple":
        activations.append(("recurrent_activation", spec.recurrent_activation))
    for name, value in activations:
        if activation_name(value) is None:
            return f"{name} must be one of {list(ACTIVATIONS)} (received {value!r})"
    if dtype is not None and dtype not in DTYPES:
        return f"dtype must be float32, bfloat16 or float16 (received {dtype})"
    return None


def _device_reason(device: torch.device | str | None, dtype: torch.dtype | None) -> str | None:
    """Why this device (with Triton on this machine) cannot run the kernels, or ``None``."""
    if device is None:  # a caller that cannot say where the inputs live gets no GPU kernel
        return "the triton backend needs the inputs' device (device=...)"
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "the triton backend needs a CUDA device"
    if not triton_available():
        return "the triton backend needs Triton installed"
    if _BROKEN:
        return f"Triton failed on this machine: {_BROKEN[0]}"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 7:  # Triton compiles for Volta (7.0) and newer
        return f"Triton needs a GPU of compute capability 7.0 or newer (this one: {major}.{minor})"
    if dtype == torch.bfloat16 and major < 8:
        return f"bfloat16 needs compute capability 8.0 or newer (this GPU: {major}.{minor})"
    return None


def supports(spec: RecurrenceSpec, device: torch.device | str | None = None, **options) -> bool:
    """Whether :func:`run` computes exactly what the reference does for this call on ``device``.

    ``options`` are :func:`run`'s keyword arguments (``mask``, ``zoneout_mask``, ...; every one
    of them is supported) and optionally ``dtype``.
    """
    return unsupported_reason(spec, device, **options) is None


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Slot:
    """Static buffers for one recurrence in flight, and its captured graphs.

    The buffers hold :attr:`capacity` steps; a call of ``T <= capacity`` steps uses their first
    ``T`` steps, so sequences of varying length share one set of buffers. Each length has its own
    pair of graphs (the :data:`MAX_GRAPHS` most recently used are kept): a length is captured
    once. A longer sequence reallocates the buffers and drops the graphs.
    """

    def __init__(self, engine: _Engine, steps: int) -> None:
        self.engine = engine
        self.busy = False
        self.capacity = 0
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]] = {}
        self.reserve(steps)

    def reserve(self, steps: int) -> None:
        """Make room for ``steps`` steps (growing drops the captured graphs)."""
        if steps <= self.capacity:
            return
        self.graphs.clear()
        self._allocate(steps)
        self.capacity = steps

    def _allocate(self, T: int) -> None:
        e = self.engine
        B, u, G = e.batch, e.units, e.gates * e.units
        lstm, rb = e.cell == "lstm", e.cell == "gru_rb"
        dev, dt, f32 = e.device, e.dtype, torch.float32
        P = e.rows  # the products' operands and results: B rows, then zero rows up to P

        def buf(*shape, dtype=f32):
            # NaN poison: a value nothing wrote shows up in every check.
            return torch.full(shape, float("nan"), device=dev, dtype=dtype)

        def padded(*shape, dtype=dt):
            # (..., P, width): rows B.. stay zero (the kernels run over the first B rows only).
            out = buf(*shape, dtype=dtype)
            out[..., B:, :] = 0
            return out

        # Inputs, copied in by each call.
        self.xn = buf(B, T, G, dtype=dt)  # (B, T, G) normalised input projection (+ bias)
        self.U = buf(u, G, dtype=dt)
        # Rows: gamma_h, beta_h (LSTM; GRU: the recurrent bias), gamma_c, beta_c (first u; LSTM).
        self.ln = buf(4, G)
        self.rdm = buf(B, u) if e.rdrop else self.ln  # recurrent dropout mask
        self.dout = buf(B, T, u, dtype=dt)
        self.dhT = buf(B, u, dtype=dt)
        self.dcT = buf(B, u) if lstm else self.ln
        # Forward state and what the backward pass needs.
        self.H = padded(T + 1, P, u)  # H[0] = h0, H[t + 1] = h_t
        self.Hin = padded(T + 1, P, u) if e.rdrop else self.H  # GEMM operands h * mask
        self.C = buf(T + 1, B, u) if lstm else None  # C[0] = c0, C[t + 1] = c_t
        self.R = padded(P, 2 * u if rb else G)  # h_{t-1} @ U (GRU_rb: U_zr), this step
        if rb:  # the reset-before GRU's candidate product: its operand r h_in and its result
            self.RH = padded(T, P, u)
            self.R2 = padded(P, u)
        # LSTM: i, f, g, o; GRU: z, r, n, r_h; SimpleRNN: the activation's output.
        self.act = buf(T, B, u if e.cell == "simple" else 4 * u)
        self.valid = buf(T, B) if e.masked else self.ln  # 1 = real step, 0 = padding
        self.zm = buf(T, B, u) if e.zoneout_mode == 1 else self.ln  # zoneout: 1 keeps h_{t-1}
        self.carry = buf(B, u) if e.carry else self.ln  # d h that bypasses a step's gates
        # Saved by the layer norms (without them the kernels get placeholders: _ln_rows).
        self.rhat = buf(T, B, G) if e.layer_norm else None
        self.rstd = (buf(T, B, 2) if rb else buf(T, B)) if e.layer_norm else None
        self.chat = buf(T, B, u) if e.layer_norm and lstm else None
        self.cstd = buf(T, B) if e.layer_norm and lstm else None
        # Backward outputs and work buffers.
        self.dR = padded(T, P, G)  # d(h_{t-1} @ U), time-major for the final dU GEMM
        # d xn: for the LSTM and SimpleRNN without the recurrent layer norm it equals dR
        # (z = xn + r), so dR serves as both (its first B rows).
        shared = not e.cell.startswith("gru") and not e.layer_norm
        self.dz = self.dR.transpose(0, 1) if shared else buf(B, T, G, dtype=dt)
        self.dH = padded(P, u)  # d h_{t-1} through the recurrence
        self.dC = buf(B, u) if lstm else None
        self.dU = buf(u, G, dtype=dt)
        if rb:  # d(RH U_h), d RH
            self.dR2 = padded(T, P, u)
            self.dRH = padded(P, u)
        self.acc = buf(2, B, G)  # per-row sums over time: dgamma_h, dbeta_h (GRU: d b_rec)
        self.acc_c = buf(2, B, u) if lstm else None  # dgamma_c, dbeta_c
        self.dln = buf(4, G)

    def _at(self, buffer: torch.Tensor, t: int) -> torch.Tensor:
        """Step ``t`` of a per-step buffer (or the placeholder of an unused one)."""
        return buffer[t] if buffer is not self.ln else buffer

    def _ln_rows(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``t``'s saved recurrent layer norm (rhat, 1/std), or placeholders without it."""
        if self.engine.layer_norm:
            return self.rhat[t], self.rstd[t]
        return self.R, self.R

    def _ln_saved(self, t: int) -> tuple[torch.Tensor, ...]:
        """The LSTM's: both layer norms' saved rows; without them the cell state is read from C."""
        if self.engine.layer_norm:
            return self.rhat[t], self.rstd[t], self.chat[t], self.cstd[t]
        return self.R, self.R, self.C[t + 1], self.dcT

    # One step's kernel launch per cell (grid: one program per batch row).
    def _launch(self, kernel: str, *args, gates_only: bool = False) -> None:
        from rnnkit.kernels import _triton_steps  # imports Triton: only once a GPU call runs

        e = self.engine
        if gates_only:  # the reset-before GRU's gate kernels: no state, no activation of n
            flags = {"LAYER_NORM": e.layer_norm, "RACT": e.flags["RACT"]}
        else:
            flags = {"LAYER_NORM": e.layer_norm, "RDROP": e.rdrop, **e.flags}
        getattr(_triton_steps, kernel)[(e.batch,)](
            *args, U=e.units, BLOCK=e.block, **flags, num_warps=e.num_warps
        )

    def _lstm_forward(self, t: int) -> None:
        e, u = self.engine, self.engine.units
        self._launch(
            "lstm_forward_step", self.xn[:, t], self.xn.stride(0),
            self.R, self.C[t], self.C[t + 1], self.H[t + 1], self.Hin[t + 1], self.rdm,
            self.act[t], *self._ln_saved(t),
            self.ln[0], self.ln[1], self.ln[2, :u], self.ln[3, :u],
            self.H[t], self._at(self.valid, t), self._at(self.zm, t), e.zoneout_rate, e.eps,
        )  # fmt: skip

    def _lstm_backward(self, t: int) -> None:
        e, u = self.engine, self.engine.units
        self._launch(
            "lstm_backward_step", self.dout[:, t], self.dout.stride(0),
            self.dH, self.rdm, self.dC, self.act[t], self.C[t], *self._ln_saved(t),
            self.ln[0], self.ln[2, :u], self.ln[3, :u],
            self.dz[:, t], self.dz.stride(0), self.dR[t],
            self.acc[0], self.acc[1], self.acc_c[0], self.acc_c[1],
            self.carry, self._at(self.valid, t), self._at(self.zm, t), e.zoneout_rate,
        )  # fmt: skip

    def _gru_forward(self, t: int) -> None:
        e = self.engine
        self._launch(
            "gru_forward_step", self.xn[:, t], self.xn.stride(0), self.R, self.H[t],
            self.H[t + 1], self.Hin[t + 1], self.rdm, self.act[t], *self._ln_rows(t),
            self.ln[0], self.ln[1],
            self._at(self.valid, t), self._at(self.zm, t), e.zoneout_rate, e.eps,
        )  # fmt: skip

    def _gru_backward(self, t: int) -> None:
        e = self.engine
        self._launch(
            "gru_backward_step", self.dout[:, t], self.dout.stride(0), self.dH, self.rdm,
            self.act[t], self.H[t], *self._ln_rows(t), self.ln[0],
            self.dz[:, t], self.dz.stride(0), self.dR[t], self.acc[0], self.acc[1],
            self.carry, self._at(self.valid, t), self._at(self.zm, t), e.zoneout_rate,
        )  # fmt: skip

    def _gru_rb_forward(self, t: int) -> None:
        e, u = self.engine, self.engine.units
        rhat, rstd = self._ln_rows(t)
        self._launch(
            "gru_rb_gates_step", self.xn[:, t], self.xn.stride(0), self.R, self.Hin[t],
            self.RH[t], self.act[t], rhat, rstd, self.ln[0], e.eps, gates_only=True,
        )  # fmt: skip
        torch.mm(self.RH[t], self.U[:, 2 * u :], out=self.R2)
        self._launch(
            "gru_rb_state_step", self.xn[:, t], self.xn.stride(0), self.R2, self.H[t],
            self.H[t + 1], self.Hin[t + 1], self.rdm, self.act[t], rhat, rstd, self.ln[0],
            self._at(self.valid, t), self._at(self.zm, t), e.zoneout_rate, e.eps,
        )  # fmt: skip

    def _gru_rb_backward(self, t: int) -> None:
        e, u = self.engine, self.engine.units
        rhat, rstd = self._ln_rows(t)
        self._launch(
            "gru_rb_state_backward_step", self.dout[:, t], self.dout.stride(0), self.dH,
            self.rdm, self.act[t], self.H[t], rhat, rstd, self.ln[0],
            self.dz[:, t], self.dz.stride(0), self.dR2[t], self.acc[0],
            self.carry, self._at(self.valid, t), self._at(self.zm, t), e.zoneout_rate,
        )  # fmt: skip
        torch.mm(self.dR2[t], self.U[:, 2 * u :].t(), out=self.dRH)
        self._launch(
            "gru_rb_gates_backward_step", self.dRH, self.Hin[t], self.act[t], rhat, rstd,
            self.ln[0], self.dz[:, t], self.dz.stride(0), self.dR[t], self.acc[0], self.dH,
            gates_only=True,
        )  # fmt: skip

    def _simple_forward(self, t: int) -> None:
        e = self.engine
        self._launch(
            "simple_forward_step", self.xn[:, t], self.xn.stride(0), self.R, self.H[t],
            self.H[t + 1], self.Hin[t + 1], self.rdm, self.act[t], *self._ln_rows(t),
            self.ln[0], self._at(self.valid, t), self._at(self.zm, t), e.zoneout_rate, e.eps,
        )  # fmt: skip

    def _simple_backward(self, t: int) -> None:
        e = self.engine
        self._launch(
            "simple_backward_step", self.dout[:, t], self.dout.stride(0), self.dH, self.rdm,
            self.act[t], *self._ln_rows(t), self.ln[0], self.dz[:, t], self.dz.stride(0),
            self.dR[t], self.acc[0], self.carry, self._at(self.valid, t), self._at(self.zm, t),
            e.zoneout_rate,
        )  # fmt: skip

    # The two loops over T steps; both are captured as graphs unless the engine runs eagerly.
    def forward_loop(self, T: int) -> None:
        e = self.engine
        step = getattr(self, f"_{e.cell}_forward")
        U = self.U[:, : 2 * e.units] if e.cell == "gru_rb" else self.U  # GRU_rb: U_zr first
        for t in range(T):
            torch.mm(self.Hin[t], U, out=self.R)  # (B, G)
            step(t)

    def backward_loop(self, T: int) -> None:
        e = self.engine
        u, G = e.units, e.gates * e.units
        # d h_T joins the last step's output gradient (it does not pass the dropout mask).
        self.dout[:, T - 1].add_(self.dhT)
        self.dH.zero_()
        self.acc.zero_()
        if e.carry:
            self.carry.zero_()
        if e.cell == "lstm":
            self.dC.copy_(self.dcT)
            self.acc_c.zero_()
        step = getattr(self, f"_{e.cell}_backward")
        rb = e.cell == "gru_rb"
        Ut = self.U[:, : 2 * u].t() if rb else self.U.t()
        for t in range(T - 1, -1, -1):
            step(t)
            if rb:  # d h_in_{t-1}: the step wrote d RH * r, the z, r product adds to it
                self.dH.addmm_(self.dR[t][:, : 2 * u], Ut)
            else:
                torch.mm(self.dR[t], Ut, out=self.dH)  # d h_in_{t-1}
        # Weight gradient: one GEMM over all steps, sum_t h_in_{t-1}^T dR_t.
        TB = T * e.rows
        h_in = self.Hin[:T].reshape(TB, u).t()
        if rb:  # U_zr from h_in and dR_zr, U_h from RH and dR2
            self.dU[:, : 2 * u].copy_(h_in @ self.dR[:T].reshape(TB, G)[:, : 2 * u])
            self.dU[:, 2 * u :].copy_(self.RH[:T].reshape(TB, u).t() @ self.dR2[:T].reshape(TB, u))
        else:
            torch.mm(h_in, self.dR[:T].reshape(TB, G), out=self.dU)
        if e.layer_norm or e.cell.startswith("gru"):
            torch.sum(self.acc, dim=1, out=self.dln[:2])
        if e.layer_norm and e.cell == "lstm":
            torch.sum(self.acc_c, dim=1, out=self.dln[2:, :u])

    def run_forward(self, T: int) -> None:
        if self.engine.use_graphs:
            self._graphs(T)[0].replay()
        else:
            self.forward_loop(T)

    def run_backward(self, T: int) -> None:
        if self.engine.use_graphs:
            self.graphs[T][1].replay()  # captured by this forward (the slot was busy since)
        else:
            self.backward_loop(T)

    def _graphs(self, T: int) -> tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]:
        """The graphs of a T-step call: the captured pair, most recently used last."""
        pair = self.graphs.pop(T, None)
        if pair is None:
            pair = self._capture(T)
            while len(self.graphs) >= MAX_GRAPHS:
                del self.graphs[next(iter(self.graphs))]
        self.graphs[T] = pair
        return pair

    def _capture(self, T: int) -> tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph]:
        dev = self.engine.device
        # Warm up on a side stream (compiles the Triton kernels, creates cuBLAS handles).
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            self.forward_loop(T)
            self.backward_loop(T)
        torch.cuda.current_stream(dev).wait_stream(side)
        fwd, bwd = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(fwd):
            self.forward_loop(T)
        with torch.cuda.graph(bwd):
            self.backward_loop(T)
        return fwd, bwd


class _Engine:
    """All slots for one shape and configuration; a slot is busy from forward to backward."""

    def __init__(
        self, cell, device, batch, units, dtype, layer_norm, rdrop, use_graphs,
        act, ract, masked, zoneout_mode, zoneout_rate,
    ):  # fmt: skip
        from rnnkit.kernels._triton_steps import ACTIVATION_CODES

        self.cell, self.gates = cell, GATES["gru" if cell == "gru_rb" else cell]
        self.device, self.batch, self.units = device, batch, units
        strict_f32 = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
        self.rows = PAD_ROWS if strict_f32 and 4 < batch < PAD_ROWS else batch
        self.dtype, self.layer_norm, self.rdrop = dtype, layer_norm, rdrop
        self.use_graphs = use_graphs
        self.masked, self.zoneout_mode, self.zoneout_rate = masked, zoneout_mode, zoneout_rate
        # d h_t that bypasses the gates: padded steps, zoneout; the GRU's z h_{t-1} always.
        gru = cell.startswith("gru")
        self.carry = masked or zoneout_mode != 0 or gru
        self.flags = {"ACT": ACTIVATION_CODES[act], "MASKED": masked, "ZONEOUT": zoneout_mode}
        if cell != "simple":
            self.flags["RACT"] = ACTIVATION_CODES[ract]
        if not gru:
            self.flags["CARRY"] = self.carry
        self.eps = LAYER_NORM_EPS
        self.block = _pow2(units)
        self.num_warps = 4 if units <= 512 else 8
        self.slots: list[_Slot] = []

    def acquire(self, steps: int) -> _Slot:
        """A free slot with room for ``steps`` steps (a new one when all are in flight)."""
        for slot in self.slots:
            if not slot.busy:
                slot.reserve(steps)
                slot.busy = True
                return slot
        slot = _Slot(self, steps)
        slot.busy = True
        self.slots.append(slot)
        return slot


_ENGINES: dict[tuple, _Engine] = {}


def _engine(*key) -> _Engine:
    """The engine for this shape and configuration; the least recently used beyond
    :data:`MAX_ENGINES` are dropped (a slot still held by an autograd graph lives on)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32  # cuBLAS picks its kernels at capture time
    full = (*key, tf32)
    engine = _ENGINES.pop(full, None)
    if engine is None:
        engine = _Engine(*key)
    _ENGINES[full] = engine  # most recent last
    while len(_ENGINES) > MAX_ENGINES:
        del _ENGINES[next(iter(_ENGINES))]
    return engine


def clear_cache() -> None:
    """Drop every engine: their buffers and graphs go once no autograd graph holds a slot
    (then ``torch.cuda.empty_cache()`` returns the memory to the device)."""
    _ENGINES.clear()


def _release(slot: _Slot) -> None:
    slot.busy = False


def _raised_by_triton(err: BaseException) -> bool:
    """Whether ``err`` was raised inside Triton's own code (compiling a kernel, building its
    launcher: a missing C compiler or Python headers, an unsupported driver), not by a kernel's
    inputs or by torch (shapes, out of memory)."""
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    module = last.tb_frame.f_globals.get("__name__", "") if last is not None else ""
    return module.split(".")[0] == "triton"


class _Lease:
    """Holds a slot from forward to backward; frees it when the autograd graph is dropped."""

    def __init__(self, slot: _Slot) -> None:
        self.slot: _Slot | None = slot

    def release(self) -> None:
        if self.slot is not None:
            _release(self.slot)
            self.slot = None

    __del__ = release


class _Recurrence(torch.autograd.Function):
    """``(xn, U, h0, c0, gamma_h, beta_h, gamma_c, beta_c, rdm, valid, zm) -> (states, h_T, c_T)``.

    ``valid`` ``(T, B)`` and ``zm`` ``(T, B, u)`` are time-major, in processing order. The GRU
    has no ``c0``, ``gamma_c``, ``beta_c`` (``None``; ``c_T`` is ``None``) and its ``beta_h`` is
    the recurrent bias ``b_rec`` (``None`` without one).
    """

    @staticmethod
    def forward(ctx, xn, U, h0, c0, gh, bh, gc, bc, rdm, valid, zm, engine):
        T = xn.shape[1]
        slot = engine.acquire(T)
        lstm = engine.cell == "lstm"
        try:
            u, B = engine.units, engine.batch  # the slot's product buffers may have more rows
            slot.xn[:, :T].copy_(xn)
            slot.U.copy_(U)
            slot.H[0, :B].copy_(h0)
            if lstm:
                slot.C[0].copy_(c0)
            if engine.rdrop:
                slot.rdm.copy_(rdm)
                slot.Hin[0, :B].copy_(h0 * rdm)
            if engine.masked:
                slot.valid[:T].copy_(valid)
            if engine.zoneout_mode == 1:
                slot.zm[:T].copy_(zm)
            if engine.layer_norm:
                slot.ln[0].copy_(gh)
            if engine.layer_norm and lstm:
                slot.ln[1].copy_(bh)
                slot.ln[2, :u].copy_(gc)
                slot.ln[3, :u].copy_(bc)
            if not lstm and bh is not None:  # the GRU's recurrent bias
                slot.ln[1].copy_(bh)
            elif not lstm:
                slot.ln[1].zero_()
            try:
                slot.run_forward(T)
            except Exception as err:
                if not _raised_by_triton(err):
                    raise
                _BROKEN.append(f"{type(err).__name__}: {err}".splitlines()[0][:300])
                raise BackendUnavailable(f"Triton failed on this machine: {_BROKEN[0]}") from err
            out = slot.H[1 : T + 1, :B].transpose(0, 1).contiguous()  # (B, T, u)
            h_t = slot.H[T, :B].clone()
            c_t = slot.C[T].to(c0.dtype, copy=True) if lstm else None
        except BaseException:
            _release(slot)
            raise
        if any(ctx.needs_input_grad):
            ctx.lease = _Lease(slot)
            ctx.dtypes = (xn.dtype, U.dtype, h0.dtype, c0.dtype if lstm else None)
            ctx.has_bias, ctx.steps = bh is not None, T
        else:
            _release(slot)
        return out, h_t, c_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dh_t, dc_t):
        slot = ctx.lease.slot
        if slot is None:
            raise RuntimeError(
                "the triton RNN backward ran twice for one forward; retain_graph is not supported"
            )
        engine = slot.engine
        lstm = engine.cell == "lstm"
        u, B = engine.units, engine.batch  # the slot's product buffers may have more rows
        T = ctx.steps
        try:
            slot.dout[:, :T].copy_(dout)
            slot.dhT.copy_(dh_t)
            if lstm:
                slot.dcT.copy_(dc_t)
            slot.run_backward(T)
            x_dt, u_dt, h_dt, c_dt = ctx.dtypes
            dxn = slot.dz[:B, :T].to(x_dt, copy=True)
            dU = slot.dU.to(u_dt, copy=True)
            dH = slot.dH[:B]
            dh0 = dH * slot.rdm if engine.rdrop else dH
            if engine.carry:
                dh0 = dh0 + slot.carry
            dh0 = dh0.to(h_dt, copy=True)
            dc0 = slot.dC.to(c_dt, copy=True) if lstm else None
            grads_ln = [None] * 4
            if lstm and engine.layer_norm:
                d = slot.dln.clone()
                grads_ln = [d[0], d[1], d[2, :u], d[3, :u]]
            elif not lstm:
                d = slot.dln.clone()
                grads_ln[0] = d[0] if engine.layer_norm else None
                grads_ln[1] = d[1] if ctx.has_bias else None
        finally:
            ctx.lease.release()
        return (dxn, dU, dh0, dc0, *grads_ln, None, None, None, None)


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
    cuda_graphs: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run one LSTM, GRU or SimpleRNN recurrence on a CUDA device (the backend contract).

    Args:
        spec, weights, inputs, initial_state, ...: the backend contract (see
            :func:`supports` for what it accepts).
        cuda_graphs: replay captured CUDA graphs of the step loops (default); ``False`` launches
            every step from Python (slow; for debugging and comparison).

    Returns:
        ``(outputs (B, T, u), final states)``: ``(h_T, c_T)`` for the LSTM, ``(h_T,)``
        otherwise; ``outputs`` and ``h_T`` in the inputs' dtype.
    """
    reason = unsupported_reason(spec, inputs.device, dtype=inputs.dtype)
    if reason is not None:
        raise ValueError(f"the triton backend cannot run this call: {reason}")
    lstm = spec.cell == "lstm"
    h0, c0 = initial_state if lstm else (initial_state[0], None)
    B, T, _ = inputs.shape
    u = spec.units
    G = GATES[spec.cell] * u
    if input_dropout_mask is not None:
        inputs = inputs * input_dropout_mask[:, None, :]
    if go_backwards:  # the masks follow the inputs into processing order
        inputs = inputs.flip(1)
        mask = mask.flip(1) if mask is not None else None
        zoneout_mask = zoneout_mask.flip(1) if zoneout_mask is not None else None
    if T == 0:
        return inputs.new_zeros(B, 0, u), tuple(initial_state)
    U = weights.recurrent_kernel
    if recurrent_kernel_dropout_mask is not None:
        U = U * recurrent_kernel_dropout_mask  # DropConnect, fixed for the sequence
    xn = input_projection(spec, weights, inputs)  # LN(x W; gamma_x) + input bias: (B, T, G)
    gh = bh = gc = bc = None
    if spec.layer_norm:
        ln = weights.layer_norm
        gh = ln.recurrent_gamma
    if lstm and spec.layer_norm:
        bh = xn.new_zeros(G)  # the recurrent LayerNorm has no beta (spec.LayerNormWeights)
        gc = ln.cell_gamma if ln.cell_gamma is not None else xn.new_ones(u)
        bc = ln.cell_beta if ln.cell_beta is not None else xn.new_zeros(u)
    elif not lstm and weights.bias is not None and weights.bias.dim() == 2:
        bh = weights.bias[1]  # the GRU's recurrent bias
    device = inputs.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    rdrop = recurrent_dropout_mask is not None
    if zoneout_mask is not None:
        zoneout_mode, zoneout_rate = 1, 0.0
    elif spec.zoneout > 0.0:
        zoneout_mode, zoneout_rate = 2, float(spec.zoneout)
    else:
        zoneout_mode, zoneout_rate = 0, 0.0
    cell = "gru_rb" if spec.cell == "gru" and not spec.reset_after else spec.cell
    engine = _engine(
        cell, device, B, u, inputs.dtype, bool(spec.layer_norm), rdrop, cuda_graphs,
        activation_name(spec.activation),
        activation_name(spec.recurrent_activation) if spec.cell != "simple" else None,
        mask is not None, zoneout_mode, zoneout_rate,
    )  # fmt: skip
    rdm = recurrent_dropout_mask.float() if rdrop else None
    valid = mask.t().float() if mask is not None else None  # (T, B)
    zm = zoneout_mask.transpose(0, 1).float() if zoneout_mask is not None else None  # (T, B, u)
    states, h_t, c_t = _Recurrence.apply(xn, U, h0, c0, gh, bh, gc, bc, rdm, valid, zm, engine)
    final = (h_t, c_t) if lstm else (h_t,)
    if mask is None:
        return states, final
    # A padded step shows the state it kept, or zeros (zero_output_for_mask, and before a row's
    # first real step: the reference's outputs start from zeros, not from h0).
    shown = mask if zero_output_for_mask else mask.cumsum(1) > 0
    return states * shown[:, :, None].to(states.dtype), final
