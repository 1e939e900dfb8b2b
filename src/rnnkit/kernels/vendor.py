r"""The vendor backend: ``torch.nn.LSTM / GRU / RNN`` kernels (oneDNN on CPU, cuDNN on GPU).

Implements the :mod:`rnnkit.kernels.spec` contract wherever the vendor kernel computes exactly
the same function: default activations (LSTM/GRU ``tanh`` + ``sigmoid``; SimpleRNN ``tanh`` or
``relu``), with or without bias, GRU ``reset_after=True`` only, no recurrent dropout, layer norm
or zoneout (input dropout is applied to the inputs first, recurrent-kernel DropConnect to the
recurrent kernel). Any mask works:

::

    processing order (go_backwards flips time first)      mask  1 0 1 1 0
    1. compact each row's valid steps to the front          x    a . b c .   ->  a b c . .
    2. run the compacted rows (lengths = valid counts)      y    A B C 0 0
       (CUDA: packed sequences; CPU: dense calls per length, _run_by_length)
    3. gather back: step t takes compact output             cs   1 1 2 3 3   (cumsum of mask)
       cs[t] - 1 (forward fill), zeros where cs[t] == 0     out  A A B C C
       (or where mask[t] is False, zero_output_for_mask)

Rows of length 0 run one throw-away step (packing rejects length 0); their final state is then
replaced by the initial state and their outputs are zeros. Weights are derived from the Keras
layout on each call (differentiably), so gradients land on the Keras parameters; on the CPU they
are handed over as contiguous matrices (the compiled transpose of :mod:`rnnkit.kernels.cpu_ext`
where it is built), since torch's kernels copy strided weights in the forward and again in the
backward pass (measured, PTB-small's LSTM layer: 10% of a training step):

- LSTM ``i, f, c, o`` is torch's ``i, f, g, o``: ``w_ih = kernel.T``, ``w_hh = recurrent_kernel.T``,
  ``b_ih = bias``, ``b_hh = 0``;
- GRU ``z, r, h`` is reordered to torch's ``r, z, n``; bias rows ``(2, 3u)`` are ``b_ih, b_hh``.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.kernels import cpu_ext
from rnnkit.kernels.spec import RecurrenceSpec, RecurrentWeights

_VF = torch._VF

_TANH = ("tanh", torch.tanh)
_SIGMOID = ("sigmoid", torch.sigmoid)
_RELU = ("relu", torch.relu)


def _is(fn, names) -> bool:
    return any(fn is n or (isinstance(fn, str) and fn == n) for n in names)


def unsupported_reason(
    spec: RecurrenceSpec,
    *,
    recurrent_dropout_mask: torch.Tensor | None = None,
    zoneout_mask: torch.Tensor | None = None,
    **_options,
) -> str | None:
    """Why the vendor kernel cannot run this call exactly, or ``None`` when it can."""
    if getattr(spec, "layer_norm", False):
        return "layer_norm is not available in torch.nn kernels"
    if getattr(spec, "zoneout", 0.0) > 0.0 or zoneout_mask is not None:
        return "zoneout is not available in torch.nn kernels"
    if spec.cell in ("lstm", "gru"):
        if not _is(spec.activation, _TANH):
            return f"activation must be 'tanh' (received {spec.activation!r})"
        if not _is(spec.recurrent_activation, _SIGMOID):
            return (
                f"recurrent_activation must be 'sigmoid' (received {spec.recurrent_activation!r})"
            )
        if spec.cell == "gru" and not spec.reset_after:
            return "GRU with reset_after=False has no vendor kernel"
    elif spec.cell == "simple":
        if not (_is(spec.activation, _TANH) or _is(spec.activation, _RELU)):
            return f"SimpleRNN activation must be 'tanh' or 'relu' (received {spec.activation!r})"
    else:
        return f"unknown cell {spec.cell!r}"
    if recurrent_dropout_mask is not None:
        return "recurrent dropout is not available in torch.nn kernels"
    return None


def supports(spec: RecurrenceSpec, **options) -> bool:
    """Whether :func:`run` computes exactly what the reference does for this call."""
    return unsupported_reason(spec, **options) is None


def _gru_reorder(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Keras ``z, r, h`` blocks -> torch ``r, z, n``."""
    z, r, h = w.chunk(3, dim=dim)
    return torch.cat([r, z, h], dim=dim)


class _Transpose(torch.autograd.Function):
    """``w (K, N) -> w^T (N, K)`` contiguous, and the gradient back the same way (compiled)."""

    @staticmethod
    def forward(ctx, w, ops):
        ctx.ops = ops
        return ops.transpose(w)

    @staticmethod
    def backward(ctx, grad):
        return ctx.ops.transpose(grad), None


def _transposed(w: torch.Tensor) -> torch.Tensor:
    """``w^T`` for torch's kernels: a view on CUDA (the flat weight buffer is one copy anyway),
    a contiguous matrix on the CPU (compiled for float32 / float64, torch's copy otherwise)."""
    if w.device.type != "cpu":
        return w.t()
    ops = cpu_ext.ops()
    if ops is None or w.dtype not in (torch.float32, torch.float64):  # (compiled for those)
        return w.t().contiguous()
    if not (torch.is_grad_enabled() and w.requires_grad):  # nothing to record: no Function
        return ops.transpose(w)  # (its bookkeeping, ~9 us a matrix, is a batch-1 step's 6%)
    return _Transpose.apply(w, ops)


def torch_params(
    spec: RecurrenceSpec,
    weights: RecurrentWeights,
    recurrent_kernel_dropout_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """``[w_ih (G*u, I), w_hh (G*u, u), b_ih, b_hh]`` in torch layout (no biases without bias)."""
    kernel, rec, bias = weights.kernel, weights.recurrent_kernel, weights.bias
    if recurrent_kernel_dropout_mask is not None:
        rec = rec * recurrent_kernel_dropout_mask  # DropConnect: fixed for the sequence
    if spec.cell == "gru":
        params = [_gru_reorder(_transposed(kernel), 0), _gru_reorder(_transposed(rec), 0)]
        if bias is not None:
            if bias.dim() == 2:
                b = _gru_reorder(bias, 1)
                params += [b[0], b[1]]
            else:
                params += [_gru_reorder(bias, 0), torch.zeros_like(bias)]
        return params
    params = [_transposed(kernel), _transposed(rec)]
    if bias is not None:
        params += [bias, torch.zeros_like(bias)]
    return params


def _kernel_fn(spec: RecurrenceSpec):
    if spec.cell == "lstm":
        return _VF.lstm
    if spec.cell == "gru":
        return _VF.gru
    return _VF.rnn_relu if _is(spec.activation, _RELU) else _VF.rnn_tanh


def _flat_views(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """``params`` copied into one contiguous buffer (differentiably), returned as views of it in
    the order and shapes cuDNN expects (``w_ih, w_hh, b_ih, b_hh`` back to back, as
    ``torch.nn.LSTM.flatten_parameters`` leaves them)."""
    flat = torch.cat([p.reshape(-1) for p in params])
    pieces = flat.split([p.numel() for p in params])
    return [v.view(p.shape) for v, p in zip(pieces, params, strict=True)]


def _call(spec, params, x, state, batch_sizes=None, training=False):
    """Run the vendor kernel; ``state`` is a tuple of ``(B, u)``; returns ``(y, final_state)``."""
    fn = _kernel_fn(spec)
    has_bias = len(params) == 4
    if spec.cell == "lstm":
        hx = (state[0].unsqueeze(0), state[1].unsqueeze(0))
    else:
        hx = state[0].unsqueeze(0)

    def call(params):
        if batch_sizes is None:
            return fn(x, hx, params, has_bias, 1, 0.0, training, False, True)
        return fn(x, batch_sizes, hx, params, has_bias, 1, 0.0, training, False)

    if x.is_cuda:
        # cuDNN reads its weights from one flat buffer. Given the Keras-layout views, it would
        # copy them into one on every call, again in the backward pass, and warn each time;
        # handed views of a buffer laid out as cuDNN's own, it uses that buffer as it is.
        res = call(_flat_views(params))
    else:
        res = call(params)
    y = res[0]
    final = tuple(s.squeeze(0) for s in res[1:])
    return y, final


def _run_by_length(spec, params, compact, counts, initial_state, training):
    """Right-padded sequences on the dense kernel, one call per distinct length (CPU).

    torch runs packed sequences on the CPU without oneDNN, several times slower than dense
    input. Rows sorted by length, longest first, are processed in time segments between
    consecutive distinct lengths; each segment is one dense call over the rows still running
    (a prefix of the sorted batch), which then hand their state to the next segment::

        lengths 5 3 3 1      segment [0,1): rows 0-3   [1,3): rows 0-2   [3,5): row 0
                             row 3 ends after [0,1), rows 1-2 after [1,3), row 0 after [3,5)

    Returns ``(y (B, T, u), final_state)`` like the packed path: zeros past each row's length;
    rows of length 0 keep their initial state.
    """
    batch, steps = compact.shape[0], compact.shape[1]
    order = torch.argsort(counts, descending=True, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch, device=order.device)
    sorted_counts = counts.index_select(0, order).tolist()
    x = compact.index_select(0, order)
    state = tuple(s.index_select(0, order) for s in initial_state)
    bounds = sorted({c for c in sorted_counts if c > 0})
    finished: list[tuple[torch.Tensor, ...]] = []  # final states of stopped rows, shortest first
    active = sum(c > 0 for c in sorted_counts)
    finished.append(tuple(s[active:] for s in state))  # length-0 rows: the initial state
    state = tuple(s[:active] for s in state)
    segments, start = [], 0
    for end in bounds:
        y, state = _call(spec, params, x[:active, start:end], state, training=training)
        segments.append(torch.nn.functional.pad(y, (0, 0, 0, 0, 0, batch - active)))
        still = sum(c > end for c in sorted_counts)
        finished.append(tuple(s[still:] for s in state))
        state = tuple(s[:still] for s in state)
        active, start = still, end
    y = torch.cat(segments, dim=1) if segments else compact.new_zeros(batch, 0, spec.units)
    y = torch.nn.functional.pad(y, (0, 0, 0, steps - y.shape[1]))  # (B, T, u) sorted rows
    final = tuple(torch.cat(parts[::-1], dim=0) for parts in zip(*finished, strict=True))
    return y.index_select(0, inverse), tuple(s.index_select(0, inverse) for s in final)


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
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run one recurrence with the vendor kernel; see :mod:`rnnkit.kernels.spec`.

    Raises:
        ValueError: when :func:`unsupported_reason` gives a reason.
    """
    reason = unsupported_reason(
        spec, recurrent_dropout_mask=recurrent_dropout_mask, zoneout_mask=zoneout_mask
    )
    if reason is not None:
        raise ValueError(f"backend 'vendor' cannot run this configuration: {reason}")
    initial_state = tuple(initial_state)
    batch, steps = inputs.shape[0], inputs.shape[1]
    if steps == 0 or batch == 0:
        return inputs.new_zeros(batch, steps, spec.units), initial_state
    if input_dropout_mask is not None:
        inputs = inputs * input_dropout_mask[:, None, :]
    params = torch_params(spec, weights, recurrent_kernel_dropout_mask)
    # Differentiating through the kernel needs its training-mode workspace (cuDNN).
    training = torch.is_grad_enabled()
    if go_backwards:
        inputs = inputs.flip(1)
        if mask is not None:
            mask = mask.flip(1)
    if mask is not None and bool(mask.all()):
        mask = None
    if mask is None:
        return _call(spec, params, inputs, initial_state, training=training)

    counts = mask.sum(dim=1)  # (B,)
    cs = mask.cumsum(dim=1)  # (B, T) valid steps so far, inclusive
    # Right-padded (no valid step after a padded one): the inputs are compact already.
    right_padded = not bool((mask[:, 1:] & ~mask[:, :-1]).any())
    if right_padded:
        compact = inputs
    else:
        # Stable sort puts each row's valid steps first, in their original order.
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
        compact = inputs.gather(1, order[:, :, None].expand(-1, -1, inputs.shape[2]))
    if inputs.device.type == "cpu":
        y, final = _run_by_length(spec, params, compact, counts, initial_state, training)
    else:
        lengths = counts.clamp(min=1).cpu()
        packed = pack_padded_sequence(compact, lengths, batch_first=True, enforce_sorted=False)
        sorted_idx, unsorted_idx = packed.sorted_indices, packed.unsorted_indices
        hx = tuple(s.index_select(0, sorted_idx) for s in initial_state)
        y_data, final = _call(spec, params, packed.data, hx, packed.batch_sizes, training)
        final = tuple(s.index_select(0, unsorted_idx) for s in final)
        y_packed = packed._replace(data=y_data)
        y, _ = pad_packed_sequence(y_packed, batch_first=True, total_length=steps)  # (B, T, u)

    empty = counts == 0
    if bool(empty.any()):
        final = tuple(
            torch.where(empty[:, None], s0, s) for s0, s in zip(initial_state, final, strict=True)
        )
    src = (cs - 1).clamp(min=0)  # compact index of the last valid step <= t
    out = y.gather(1, src[:, :, None].expand(-1, -1, y.shape[2]))
    keep = mask if zero_output_for_mask else cs > 0
    out = torch.where(keep[:, :, None], out, out.new_zeros(()))
    return out, final
