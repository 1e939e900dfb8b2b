"""Triton kernels for one time step (forward and backward) of the LSTM, the GRU (both forms;
``reset_after=False`` has two kernels each way, at the end of this module) and the SimpleRNN,
used by :mod:`triton_rnn`.

One program handles one batch row: it reads the row's ``G = gates * u`` recurrent projection,
does the optional layer normalisation over ``G``, the gate math (and for the LSTM the optional
layer normalisation of the new cell state over ``u``), zoneout of ``h``, the mask (a padded step
keeps the previous state), and writes the new state plus what the backward step needs. The
pieces every cell shares (zoneout and mask blending, the state store, the incoming ``d h``, the
fraction of ``h_t`` that is ``h_{t-1}``) are jit helpers. All gate math is float32 whatever the
storage dtype.

Activations are compile-time codes (:data:`ACTIVATION_CODES`). The forward step saves each
activation's output for the backward step, which takes the derivative from it (it determines
the derivative for the monotone functions), except for SiLU and GELU (codes from
:data:`FIRST_INPUT_CODE` on), whose derivative needs the input: for them the forward step saves
the pre-activation and the backward step recomputes the output (:func:`_saved`, :func:`_out`).

This module imports Triton only when it is installed; on a machine without it the kernels are
plain (never called) functions, so collecting doctests or importing :mod:`rnnkit` never needs it.
"""

try:
    import triton
    import triton.language as tl

    _jit = triton.jit
except ImportError:  # CPU machines: nothing here is ever launched
    triton = None

    class _NoTriton:
        constexpr = object

    tl = _NoTriton()

    def _jit(fn):
        return fn


ACTIVATION_CODES = {
    "tanh": 0,
    "sigmoid": 1,
    "hard_sigmoid": 2,
    "relu": 3,
    "linear": 4,
    "softsign": 5,
    "elu": 6,
    "softplus": 7,
    "selu": 8,
    "exponential": 9,
    "silu": 10,
    "swish": 10,
    "gelu": 11,
}
FIRST_INPUT_CODE = 10  # codes from here on: the derivative needs the input (SiLU, GELU)


@_jit
def _tanh(x):
    # tanh(x) = 2 sigmoid(2x) - 1: one exp, no overflow for large |x|.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@_jit
def _act(x, CODE: tl.constexpr):
    """The activation with code ``CODE`` (rnnkit.kernels.activations' definitions)."""
    y = x  # linear (4)
    if CODE == 0:
        y = _tanh(x)
    if CODE == 1:
        y = tl.sigmoid(x)
    if CODE == 2:  # Keras 3: relu6(x + 3) / 6
        y = tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    if CODE == 3:
        y = tl.maximum(x, 0.0)
    if CODE == 5:
        y = x / (1.0 + tl.abs(x))
    if CODE == 6:
        y = tl.where(x > 0.0, x, tl.exp(tl.minimum(x, 0.0)) - 1.0)
    if CODE == 7:  # torch's softplus: linear above 20
        y = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
    if CODE == 8:  # torch's selu constants (a jit function reads no Python globals)
        y = 1.0507009873554805 * tl.where(
            x > 0.0, x, 1.6732632423543772 * (tl.exp(tl.minimum(x, 0.0)) - 1.0)
        )
    if CODE == 9:
        y = tl.exp(x)
    if CODE == 10:
        y = x * tl.sigmoid(x)
    if CODE == 11:  # exact GELU: x Phi(x)
        y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    return y


@_jit
def _dact(y, CODE: tl.constexpr):
    """The derivative of activation ``CODE`` from the saved value ``y``: its output, or its input
    for SiLU and GELU."""
    d = y * 0.0 + 1.0  # linear (4)
    if CODE == 0:
        d = 1.0 - y * y
    if CODE == 1:
        d = y * (1.0 - y)
    if CODE == 2:
        d = tl.where((y > 0.0) & (y < 1.0), 1.0 / 6.0, 0.0)
    if CODE == 3:
        d = tl.where(y > 0.0, 1.0, 0.0)
    if CODE == 5:
        d = (1.0 - tl.abs(y)) * (1.0 - tl.abs(y))
    if CODE == 6:
        d = tl.where(y > 0.0, 1.0, y + 1.0)
    if CODE == 7:
        d = 1.0 - tl.exp(-y)
    if CODE == 8:  # scale, or y + scale * alpha
        d = tl.where(y > 0.0, 1.0507009873554805, y + 1.7580993408473766)
    if CODE == 9:
        d = y
    if CODE == 10:  # y is the input x: sigma(x) (1 + x (1 - sigma(x)))
        s = tl.sigmoid(y)
        d = s * (1.0 + y * (1.0 - s))
    if CODE == 11:  # y is the input x: Phi(x) + x phi(x)
        d = (
            0.5 * (1.0 + tl.erf(y * 0.7071067811865476))
            + y * tl.exp(-0.5 * y * y) * 0.3989422804014327
        )
    return d


@_jit
def _saved(x, y, CODE: tl.constexpr):
    """What the forward step saves of an activation with input ``x`` and output ``y``."""
    if CODE >= 10:  # FIRST_INPUT_CODE
        y = x
    return y


@_jit
def _out(v, CODE: tl.constexpr):
    """The activation's output from its saved value ``v`` (:func:`_saved`)."""
    if CODE >= 10:  # FIRST_INPUT_CODE
        v = _act(v, CODE)
    return v


@_jit
def _keep_previous(h, h_prev, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED: tl.constexpr,
                   ZONEOUT: tl.constexpr):  # fmt: skip
    """``h_t`` after zoneout (``h_{t-1}`` mixed in) and the mask (padded rows keep ``h_{t-1}``)."""
    if ZONEOUT == 1:
        keep = tl.load(zm_ptr + urow, mask=m, other=0.0)
        h = keep * h_prev + (1.0 - keep) * h
    if ZONEOUT == 2:
        h = zoneout * h_prev + (1.0 - zoneout) * h
    if MASKED:
        h = tl.where(tl.load(valid_ptr + b) > 0.5, h, h_prev)
    return h


@_jit
def _store_state(h, h_ptr, hin_ptr, rdm_ptr, urow, m, RDROP: tl.constexpr):
    """Write ``h_t`` and, with recurrent dropout, the next product's operand ``h_t * mask``."""
    tl.store(h_ptr + urow, h.to(h_ptr.dtype.element_ty), mask=m)
    if RDROP:
        h = h * tl.load(rdm_ptr + urow, mask=m, other=0.0)
        tl.store(hin_ptr + urow, h.to(hin_ptr.dtype.element_ty), mask=m)


@_jit
def _incoming_dh(dout_ptr, dout_stride, dhrec_ptr, rdm_ptr, b, offs, urow, m,
                 RDROP: tl.constexpr):  # fmt: skip
    """``d h_t``: the output's gradient plus the recurrent product's (through the dropout mask)."""
    dh = tl.load(dout_ptr + b * dout_stride + offs, mask=m, other=0.0).to(tl.float32)
    dhrec = tl.load(dhrec_ptr + urow, mask=m, other=0.0).to(tl.float32)
    if RDROP:
        dhrec = dhrec * tl.load(rdm_ptr + urow, mask=m, other=0.0)
    return dh + dhrec


@_jit
def _kept_fraction(like, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED: tl.constexpr,
                   ZONEOUT: tl.constexpr):  # fmt: skip
    """How much of ``h_t`` is ``h_{t-1}`` itself: the zoneout mask or rate, 1 on padded rows."""
    keep = like * 0.0
    if ZONEOUT == 1:
        keep = tl.load(zm_ptr + urow, mask=m, other=0.0)
    if ZONEOUT == 2:
        keep = keep + zoneout
    if MASKED:
        keep = tl.where(tl.load(valid_ptr + b) > 0.5, keep, 1.0)
    return keep


@_jit
def _layer_norm_row(r, m, eps, rhat_row, rstd_at, gamma_row, U: tl.constexpr):
    """LN of one row of ``U`` values, no beta: saves the normalised row and 1/std for the
    backward step and returns ``r_hat * gamma``."""
    mean = tl.sum(r, 0) / U
    r = tl.where(m, r - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(r * r, 0) / U + eps)
    r = r * rstd
    tl.store(rhat_row, r, mask=m)
    tl.store(rstd_at, rstd)
    return r * tl.load(gamma_row, mask=m, other=0.0).to(tl.float32)


@_jit
def _layer_norm_row_grad(d, m, rhat_row, rstd_at, gamma_row, dgamma_row, U: tl.constexpr):
    """The input gradient of :func:`_layer_norm_row` for the output gradient ``d``; adds
    ``d * r_hat`` to the row's gamma-gradient accumulator."""
    rhat = tl.load(rhat_row, mask=m, other=0.0)
    tl.store(dgamma_row, tl.load(dgamma_row, mask=m, other=0.0) + d * rhat, mask=m)
    d = d * tl.load(gamma_row, mask=m, other=0.0).to(tl.float32)
    mean1 = tl.sum(d, 0) / U
    mean2 = tl.sum(d * rhat, 0) / U
    return tl.load(rstd_at) * (d - mean1 - rhat * mean2)


@_jit
def _gru_update_grads(dout_ptr, dout_stride, dhrec_ptr, rdm_ptr, carry_ptr, act_ptr, h_prev_ptr,
                      valid_ptr, zm_ptr, zoneout, b, offs, urow, m, U: tl.constexpr,
                      RDROP: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
                      MASKED: tl.constexpr, ZONEOUT: tl.constexpr):  # fmt: skip
    """Both GRUs' ``h = z h_{t-1} + (1 - z) n`` backward: the gradients of z's and n's
    pre-activations (``act`` holds z, r, n as saved); writes the part of ``d h_{t-1}`` that
    bypasses the gates (``z d h``, padded steps, zoneout) to ``carry``."""
    dh = _incoming_dh(dout_ptr, dout_stride, dhrec_ptr, rdm_ptr, b, offs, urow, m, RDROP)
    dh += tl.load(carry_ptr + urow, mask=m, other=0.0)
    keep = _kept_fraction(dh, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED, ZONEOUT)
    dhn = dh * (1.0 - keep)  # d of the GRU's own new state
    arow = act_ptr + b * 4 * U
    sz = tl.load(arow + offs, mask=m, other=0.0)  # saved values (_saved)
    sn = tl.load(arow + 2 * U + offs, mask=m, other=0.0)
    z = _out(sz, RACT)
    n = _out(sn, ACT)
    h_prev = tl.load(h_prev_ptr + urow, mask=m, other=0.0).to(tl.float32)
    tl.store(carry_ptr + urow, dh * keep + dhn * z, mask=m)
    dzz = dhn * (h_prev - n) * _dact(sz, RACT)
    dzn = dhn * (1.0 - z) * _dact(sn, ACT)
    return dzz, dzn


@_jit
def lstm_forward_step(
    xn_ptr,  # step t of the normalised input projection, row b at xn_ptr + b * xn_stride, (4u,)
    xn_stride,
    r_ptr,  # (B, 4u) contiguous: h_{t-1} @ U
    c_prev_ptr,  # (B, u) float32
    c_ptr,  # (B, u) float32, written
    h_ptr,  # (B, u) storage dtype, written
    hin_ptr,  # (B, u) storage dtype, written (recurrent dropout): h * mask, the next GEMM's operand
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    act_ptr,  # (B, 4u) float32, written: sigma(i), sigma(f), phi(g), sigma(o) (_saved)
    rhat_ptr,  # (B, 4u) float32, written (layer norm): normalised recurrent projection
    rstd_ptr,  # (B,) float32, written (layer norm): 1 / std of the recurrent projection
    chat_ptr,  # (B, u) float32, written (layer norm): normalised cell state
    cstd_ptr,  # (B,) float32, written (layer norm): 1 / std of the cell state
    gh_ptr,  # (4u,) gamma of the recurrent layer norm
    bh_ptr,  # (4u,) beta of the recurrent layer norm
    gc_ptr,  # (u,) gamma of the cell layer norm
    bc_ptr,  # (u,) beta of the cell layer norm
    h_prev_ptr,  # (B, u) storage dtype: h_{t-1} (zoneout, masks)
    valid_ptr,  # (B,) float32: 1 where step t is real, 0 where it is padding (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t: 1 keeps h_{t-1} (ZONEOUT == 1)
    zoneout,  # the constant zoneout rate (ZONEOUT == 2: inference)
    eps,
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    RACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
    CARRY: tl.constexpr,  # MASKED or ZONEOUT != 0: h_t may keep (part of) h_{t-1}
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    xrow = xn_ptr + b * xn_stride
    rrow = r_ptr + b * 4 * U
    arow = act_ptr + b * 4 * U
    ri = tl.load(rrow + offs, mask=m, other=0.0).to(tl.float32)
    rf = tl.load(rrow + U + offs, mask=m, other=0.0).to(tl.float32)
    rg = tl.load(rrow + 2 * U + offs, mask=m, other=0.0).to(tl.float32)
    ro = tl.load(rrow + 3 * U + offs, mask=m, other=0.0).to(tl.float32)
    xi = tl.load(xrow + offs, mask=m, other=0.0).to(tl.float32)
    xf = tl.load(xrow + U + offs, mask=m, other=0.0).to(tl.float32)
    xg = tl.load(xrow + 2 * U + offs, mask=m, other=0.0).to(tl.float32)
    xo = tl.load(xrow + 3 * U + offs, mask=m, other=0.0).to(tl.float32)
    c_prev = tl.load(c_prev_ptr + b * U + offs, mask=m, other=0.0)
    if LAYER_NORM:
        mean = (tl.sum(ri, 0) + tl.sum(rf, 0) + tl.sum(rg, 0) + tl.sum(ro, 0)) / (4 * U)
        ri = tl.where(m, ri - mean, 0.0)
        rf = tl.where(m, rf - mean, 0.0)
        rg = tl.where(m, rg - mean, 0.0)
        ro = tl.where(m, ro - mean, 0.0)
        var = (
            tl.sum(ri * ri, 0) + tl.sum(rf * rf, 0) + tl.sum(rg * rg, 0) + tl.sum(ro * ro, 0)
        ) / (4 * U)
        rstd = 1.0 / tl.sqrt(var + eps)
        ri = ri * rstd
        rf = rf * rstd
        rg = rg * rstd
        ro = ro * rstd
        hrow = rhat_ptr + b * 4 * U
        tl.store(hrow + offs, ri, mask=m)
        tl.store(hrow + U + offs, rf, mask=m)
        tl.store(hrow + 2 * U + offs, rg, mask=m)
        tl.store(hrow + 3 * U + offs, ro, mask=m)
        tl.store(rstd_ptr + b, rstd)
        ri = ri * tl.load(gh_ptr + offs, mask=m, other=0.0).to(tl.float32) + tl.load(
            bh_ptr + offs, mask=m, other=0.0
        ).to(tl.float32)
        rf = rf * tl.load(gh_ptr + U + offs, mask=m, other=0.0).to(tl.float32) + tl.load(
            bh_ptr + U + offs, mask=m, other=0.0
        ).to(tl.float32)
        rg = rg * tl.load(gh_ptr + 2 * U + offs, mask=m, other=0.0).to(tl.float32) + tl.load(
            bh_ptr + 2 * U + offs, mask=m, other=0.0
        ).to(tl.float32)
        ro = ro * tl.load(gh_ptr + 3 * U + offs, mask=m, other=0.0).to(tl.float32) + tl.load(
            bh_ptr + 3 * U + offs, mask=m, other=0.0
        ).to(tl.float32)
    xi += ri
    xf += rf
    xg += rg
    xo += ro
    i = _act(xi, RACT)
    f = _act(xf, RACT)
    g = _act(xg, ACT)
    o = _act(xo, RACT)
    c = f * c_prev + i * g
    if LAYER_NORM:
        cmean = tl.sum(tl.where(m, c, 0.0), 0) / U
        cd = tl.where(m, c - cmean, 0.0)
        cstd = 1.0 / tl.sqrt(tl.sum(cd * cd, 0) / U + eps)
        chat = cd * cstd
        tl.store(chat_ptr + b * U + offs, chat, mask=m)
        tl.store(cstd_ptr + b, cstd)
        cn = chat * tl.load(gc_ptr + offs, mask=m, other=0.0).to(tl.float32) + tl.load(
            bc_ptr + offs, mask=m, other=0.0
        ).to(tl.float32)
    else:
        cn = c
    h = o * _act(cn, ACT)
    urow = b * U + offs
    if CARRY:
        h_prev = tl.load(h_prev_ptr + urow, mask=m, other=0.0).to(tl.float32)
        h = _keep_previous(h, h_prev, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED, ZONEOUT)
    if MASKED:  # a padded step keeps the cell state too
        c = tl.where(tl.load(valid_ptr + b) > 0.5, c, c_prev)
    tl.store(c_ptr + urow, c, mask=m)
    _store_state(h, h_ptr, hin_ptr, rdm_ptr, urow, m, RDROP)
    tl.store(arow + offs, _saved(xi, i, RACT), mask=m)
    tl.store(arow + U + offs, _saved(xf, f, RACT), mask=m)
    tl.store(arow + 2 * U + offs, _saved(xg, g, ACT), mask=m)
    tl.store(arow + 3 * U + offs, _saved(xo, o, RACT), mask=m)


@_jit
def lstm_backward_step(
    dout_ptr,  # step t of d(outputs), row b at dout_ptr + b * dout_stride, (u,)
    dout_stride,
    dhrec_ptr,  # (B, u) contiguous: dR_{t+1} @ U^T (d h_t through the recurrence)
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    dc_ptr,  # (B, u) float32, read (d c_t) and overwritten (d c_{t-1})
    act_ptr,  # (B, 4u) float32 saved by the forward step
    c_prev_ptr,  # (B, u) float32: c_{t-1}
    rhat_ptr,  # (B, 4u) float32 saved (layer norm)
    rstd_ptr,  # (B,) float32 saved (layer norm)
    chat_ptr,  # (B, u) float32 saved (layer norm), else c_t
    cstd_ptr,  # (B,) float32 saved (layer norm)
    gh_ptr,  # (4u,)
    gc_ptr,  # (u,)
    bc_ptr,  # (u,)
    dz_ptr,  # d(xn) at step t, row b at dz_ptr + b * dz_stride, written
    dz_stride,
    dr_ptr,  # (B, 4u) contiguous, written: d(h_{t-1} @ U)
    dgh_ptr,  # (B, 4u) float32 accumulators over time: sum dz * rhat
    dbh_ptr,  # (B, 4u) float32: sum dz
    dgc_ptr,  # (B, u) float32: sum d(cn) * chat
    dbc_ptr,  # (B, u) float32: sum d(cn)
    carry_ptr,  # (B, u) float32: d h_t that bypasses step t+1's gates, read; d h_{t-1}'s, written
    valid_ptr,  # (B,) float32: 1 where step t is real (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t (ZONEOUT == 1)
    zoneout,  # constant zoneout rate (ZONEOUT == 2)
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    RACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
    CARRY: tl.constexpr,  # MASKED or ZONEOUT != 0: h_t may keep (part of) h_{t-1}
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    urow = b * U + offs
    arow = act_ptr + b * 4 * U
    dh = _incoming_dh(dout_ptr, dout_stride, dhrec_ptr, rdm_ptr, b, offs, urow, m, RDROP)
    # d h_t reaches h_{t-1} directly where h_t keeps h_{t-1}: padded steps and zoneout.
    if CARRY:
        dh += tl.load(carry_ptr + urow, mask=m, other=0.0)
        keep = _kept_fraction(dh, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED, ZONEOUT)
        tl.store(carry_ptr + urow, dh * keep, mask=m)
        dh = dh * (1.0 - keep)
    dc_next = tl.load(dc_ptr + urow, mask=m, other=0.0)  # d c_t from step t+1 (and d c_T)
    if MASKED:
        real = tl.load(valid_ptr + b) > 0.5
        dc_next = tl.where(real, dc_next, 0.0)  # a padded step passes d c_t on unchanged
    si = tl.load(arow + offs, mask=m, other=0.0)  # saved values (_saved)
    sf = tl.load(arow + U + offs, mask=m, other=0.0)
    sg = tl.load(arow + 2 * U + offs, mask=m, other=0.0)
    so = tl.load(arow + 3 * U + offs, mask=m, other=0.0)
    i = _out(si, RACT)
    f = _out(sf, RACT)
    g = _out(sg, ACT)
    o = _out(so, RACT)
    c_prev = tl.load(c_prev_ptr + urow, mask=m, other=0.0)
    chat = tl.load(chat_ptr + urow, mask=m, other=0.0)
    if LAYER_NORM:
        gc = tl.load(gc_ptr + offs, mask=m, other=0.0).to(tl.float32)
        cn = chat * gc + tl.load(bc_ptr + offs, mask=m, other=0.0).to(tl.float32)
    else:
        cn = chat
    tc = _act(cn, ACT)
    dzo = dh * tc * _dact(so, RACT)
    dcn = dh * o * _dact(_saved(cn, tc, ACT), ACT)
    if LAYER_NORM:
        tl.store(dgc_ptr + urow, tl.load(dgc_ptr + urow, mask=m, other=0.0) + dcn * chat, mask=m)
        tl.store(dbc_ptr + urow, tl.load(dbc_ptr + urow, mask=m, other=0.0) + dcn, mask=m)
        dchat = dcn * gc
        mean1 = tl.sum(dchat, 0) / U
        mean2 = tl.sum(dchat * chat, 0) / U
        cstd = tl.load(cstd_ptr + b)
        dc = tl.where(m, cstd * (dchat - mean1 - chat * mean2), 0.0)
    else:
        dc = dcn
    dc += dc_next
    dzi = dc * g * _dact(si, RACT)
    dzf = dc * c_prev * _dact(sf, RACT)
    dzg = dc * i * _dact(sg, ACT)
    dc_prev = dc * f
    if MASKED:
        dc_prev = tl.where(real, dc_prev, tl.load(dc_ptr + urow, mask=m, other=0.0))
    tl.store(dc_ptr + urow, dc_prev, mask=m)
    zrow = dz_ptr + b * dz_stride
    ty = dz_ptr.dtype.element_ty
    tl.store(zrow + offs, dzi.to(ty), mask=m)
    tl.store(zrow + U + offs, dzf.to(ty), mask=m)
    tl.store(zrow + 2 * U + offs, dzg.to(ty), mask=m)
    tl.store(zrow + 3 * U + offs, dzo.to(ty), mask=m)
    if LAYER_NORM:
        hrow = rhat_ptr + b * 4 * U
        ri = tl.load(hrow + offs, mask=m, other=0.0)
        rf = tl.load(hrow + U + offs, mask=m, other=0.0)
        rg = tl.load(hrow + 2 * U + offs, mask=m, other=0.0)
        ro = tl.load(hrow + 3 * U + offs, mask=m, other=0.0)
        grow = b * 4 * U + offs
        tl.store(dgh_ptr + grow, tl.load(dgh_ptr + grow, mask=m, other=0.0) + dzi * ri, mask=m)
        tl.store(dbh_ptr + grow, tl.load(dbh_ptr + grow, mask=m, other=0.0) + dzi, mask=m)
        grow += U
        tl.store(dgh_ptr + grow, tl.load(dgh_ptr + grow, mask=m, other=0.0) + dzf * rf, mask=m)
        tl.store(dbh_ptr + grow, tl.load(dbh_ptr + grow, mask=m, other=0.0) + dzf, mask=m)
        grow += U
        tl.store(dgh_ptr + grow, tl.load(dgh_ptr + grow, mask=m, other=0.0) + dzg * rg, mask=m)
        tl.store(dbh_ptr + grow, tl.load(dbh_ptr + grow, mask=m, other=0.0) + dzg, mask=m)
        grow += U
        tl.store(dgh_ptr + grow, tl.load(dgh_ptr + grow, mask=m, other=0.0) + dzo * ro, mask=m)
        tl.store(dbh_ptr + grow, tl.load(dbh_ptr + grow, mask=m, other=0.0) + dzo, mask=m)
        di = dzi * tl.load(gh_ptr + offs, mask=m, other=0.0).to(tl.float32)
        df = dzf * tl.load(gh_ptr + U + offs, mask=m, other=0.0).to(tl.float32)
        dg = dzg * tl.load(gh_ptr + 2 * U + offs, mask=m, other=0.0).to(tl.float32)
        do = dzo * tl.load(gh_ptr + 3 * U + offs, mask=m, other=0.0).to(tl.float32)
        mean1 = (tl.sum(di, 0) + tl.sum(df, 0) + tl.sum(dg, 0) + tl.sum(do, 0)) / (4 * U)
        mean2 = (
            tl.sum(di * ri, 0) + tl.sum(df * rf, 0) + tl.sum(dg * rg, 0) + tl.sum(do * ro, 0)
        ) / (4 * U)
        rstd = tl.load(rstd_ptr + b)
        dzi = rstd * (di - mean1 - ri * mean2)
        dzf = rstd * (df - mean1 - rf * mean2)
        dzg = rstd * (dg - mean1 - rg * mean2)
        dzo = rstd * (do - mean1 - ro * mean2)
    rrow = dr_ptr + b * 4 * U
    ty = dr_ptr.dtype.element_ty
    tl.store(rrow + offs, dzi.to(ty), mask=m)
    tl.store(rrow + U + offs, dzf.to(ty), mask=m)
    tl.store(rrow + 2 * U + offs, dzg.to(ty), mask=m)
    tl.store(rrow + 3 * U + offs, dzo.to(ty), mask=m)


@_jit
def gru_forward_step(
    xn_ptr,  # step t of the input projection (+ input bias), row b at xn_ptr + b * xn_stride, (3u,)
    xn_stride,
    r_ptr,  # (B, 3u) contiguous: h_in_{t-1} @ U
    h_prev_ptr,  # (B, u) storage dtype: h_{t-1}
    h_ptr,  # (B, u) storage dtype, written: h_t
    hin_ptr,  # (B, u) storage dtype, written (recurrent dropout): h_t * mask
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    act_ptr,  # (B, 4u) float32, written: z, r, n (_saved) and the recurrent candidate term r_h
    rhat_ptr,  # (B, 3u) float32, written (layer norm): normalised recurrent projection
    rstd_ptr,  # (B,) float32, written (layer norm)
    gh_ptr,  # (3u,) gamma of the recurrent layer norm
    brec_ptr,  # (3u,) recurrent bias (zeros without one)
    valid_ptr,  # (B,) float32: 1 where step t is real (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t (ZONEOUT == 1)
    zoneout,  # constant zoneout rate (ZONEOUT == 2)
    eps,
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    RACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
):
    """GRU, ``reset_after=True`` (Keras z, r, h order):
    ``z = σ(x_z + r_z)``, ``r = σ(x_r + r_r)``, ``n = φ(x_h + r (r_h))``,
    ``h = z h_{t-1} + (1 - z) n``, where ``[r_z, r_r, r_h] = LN(h_in U; γ_h) + b_rec``."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    xrow = xn_ptr + b * xn_stride
    rrow = r_ptr + b * 3 * U
    rz = tl.load(rrow + offs, mask=m, other=0.0).to(tl.float32)
    rr = tl.load(rrow + U + offs, mask=m, other=0.0).to(tl.float32)
    rh = tl.load(rrow + 2 * U + offs, mask=m, other=0.0).to(tl.float32)
    if LAYER_NORM:
        mean = (tl.sum(rz, 0) + tl.sum(rr, 0) + tl.sum(rh, 0)) / (3 * U)
        rz = tl.where(m, rz - mean, 0.0)
        rr = tl.where(m, rr - mean, 0.0)
        rh = tl.where(m, rh - mean, 0.0)
        var = (tl.sum(rz * rz, 0) + tl.sum(rr * rr, 0) + tl.sum(rh * rh, 0)) / (3 * U)
        rstd = 1.0 / tl.sqrt(var + eps)
        rz = rz * rstd
        rr = rr * rstd
        rh = rh * rstd
        hrow = rhat_ptr + b * 3 * U
        tl.store(hrow + offs, rz, mask=m)
        tl.store(hrow + U + offs, rr, mask=m)
        tl.store(hrow + 2 * U + offs, rh, mask=m)
        tl.store(rstd_ptr + b, rstd)
        rz = rz * tl.load(gh_ptr + offs, mask=m, other=0.0).to(tl.float32)
        rr = rr * tl.load(gh_ptr + U + offs, mask=m, other=0.0).to(tl.float32)
        rh = rh * tl.load(gh_ptr + 2 * U + offs, mask=m, other=0.0).to(tl.float32)
    rz += tl.load(brec_ptr + offs, mask=m, other=0.0).to(tl.float32)
    rr += tl.load(brec_ptr + U + offs, mask=m, other=0.0).to(tl.float32)
    rh += tl.load(brec_ptr + 2 * U + offs, mask=m, other=0.0).to(tl.float32)
    xz = tl.load(xrow + offs, mask=m, other=0.0).to(tl.float32) + rz
    xr = tl.load(xrow + U + offs, mask=m, other=0.0).to(tl.float32) + rr
    z = _act(xz, RACT)
    r = _act(xr, RACT)
    xh = tl.load(xrow + 2 * U + offs, mask=m, other=0.0).to(tl.float32) + r * rh
    n = _act(xh, ACT)
    urow = b * U + offs
    h_prev = tl.load(h_prev_ptr + urow, mask=m, other=0.0).to(tl.float32)
    h = z * h_prev + (1.0 - z) * n
    h = _keep_previous(h, h_prev, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED, ZONEOUT)
    _store_state(h, h_ptr, hin_ptr, rdm_ptr, urow, m, RDROP)
    arow = act_ptr + b * 4 * U
    tl.store(arow + offs, _saved(xz, z, RACT), mask=m)
    tl.store(arow + U + offs, _saved(xr, r, RACT), mask=m)
    tl.store(arow + 2 * U + offs, _saved(xh, n, ACT), mask=m)
    tl.store(arow + 3 * U + offs, rh, mask=m)


@_jit
def gru_backward_step(
    dout_ptr,  # step t of d(outputs), row b at dout_ptr + b * dout_stride, (u,)
    dout_stride,
    dhrec_ptr,  # (B, u) contiguous: dR_{t+1} @ U^T
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    act_ptr,  # (B, 4u) float32 saved: z, r, n, r_h
    h_prev_ptr,  # (B, u) storage dtype: h_{t-1}
    rhat_ptr,  # (B, 3u) float32 saved (layer norm)
    rstd_ptr,  # (B,) float32 saved (layer norm)
    gh_ptr,  # (3u,)
    dz_ptr,  # d(xn) at step t, row b at dz_ptr + b * dz_stride, written
    dz_stride,
    dr_ptr,  # (B, 3u) contiguous, written: d(h_in_{t-1} @ U)
    dgh_ptr,  # (B, 3u) float32 accumulators over time: sum d(rec) * rhat
    dbr_ptr,  # (B, 3u) float32: sum d(rec) (the recurrent bias' gradient)
    carry_ptr,  # (B, u) float32: d h_t that bypasses step t+1's gates, read; d h_{t-1}'s, written
    valid_ptr,  # (B,) float32 (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t (ZONEOUT == 1)
    zoneout,  # constant zoneout rate (ZONEOUT == 2)
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    RACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    urow = b * U + offs
    dzz, dzn = _gru_update_grads(dout_ptr, dout_stride, dhrec_ptr, rdm_ptr, carry_ptr, act_ptr,
                                 h_prev_ptr, valid_ptr, zm_ptr, zoneout, b, offs, urow, m, U,
                                 RDROP, ACT, RACT, MASKED, ZONEOUT)  # fmt: skip
    arow = act_ptr + b * 4 * U
    sr = tl.load(arow + U + offs, mask=m, other=0.0)
    rh = tl.load(arow + 3 * U + offs, mask=m, other=0.0)
    r = _out(sr, RACT)
    dzr = dzn * rh * _dact(sr, RACT)
    zrow = dz_ptr + b * dz_stride
    ty = dz_ptr.dtype.element_ty
    tl.store(zrow + offs, dzz.to(ty), mask=m)
    tl.store(zrow + U + offs, dzr.to(ty), mask=m)
    tl.store(zrow + 2 * U + offs, dzn.to(ty), mask=m)
    drh = dzn * r  # d of the recurrent candidate term; d r_z = dzz, d r_r = dzr
    grow = b * 3 * U + offs
    tl.store(dbr_ptr + grow, tl.load(dbr_ptr + grow, mask=m, other=0.0) + dzz, mask=m)
    tl.store(dbr_ptr + grow + U, tl.load(dbr_ptr + grow + U, mask=m, other=0.0) + dzr, mask=m)
    tl.store(
        dbr_ptr + grow + 2 * U, tl.load(dbr_ptr + grow + 2 * U, mask=m, other=0.0) + drh, mask=m
    )
    if LAYER_NORM:
        hrow = rhat_ptr + b * 3 * U
        hz = tl.load(hrow + offs, mask=m, other=0.0)
        hr = tl.load(hrow + U + offs, mask=m, other=0.0)
        hh = tl.load(hrow + 2 * U + offs, mask=m, other=0.0)
        tl.store(dgh_ptr + grow, tl.load(dgh_ptr + grow, mask=m, other=0.0) + dzz * hz, mask=m)
        tl.store(
            dgh_ptr + grow + U, tl.load(dgh_ptr + grow + U, mask=m, other=0.0) + dzr * hr, mask=m
        )
        tl.store(
            dgh_ptr + grow + 2 * U,
            tl.load(dgh_ptr + grow + 2 * U, mask=m, other=0.0) + drh * hh,
            mask=m,
        )
        dz_ = dzz * tl.load(gh_ptr + offs, mask=m, other=0.0).to(tl.float32)
        dr_ = dzr * tl.load(gh_ptr + U + offs, mask=m, other=0.0).to(tl.float32)
        dh_ = drh * tl.load(gh_ptr + 2 * U + offs, mask=m, other=0.0).to(tl.float32)
        mean1 = (tl.sum(dz_, 0) + tl.sum(dr_, 0) + tl.sum(dh_, 0)) / (3 * U)
        mean2 = (tl.sum(dz_ * hz, 0) + tl.sum(dr_ * hr, 0) + tl.sum(dh_ * hh, 0)) / (3 * U)
        rstd = tl.load(rstd_ptr + b)
        dzz = rstd * (dz_ - mean1 - hz * mean2)
        dzr = rstd * (dr_ - mean1 - hr * mean2)
        drh = rstd * (dh_ - mean1 - hh * mean2)
    rrow = dr_ptr + b * 3 * U
    ty = dr_ptr.dtype.element_ty
    tl.store(rrow + offs, dzz.to(ty), mask=m)
    tl.store(rrow + U + offs, dzr.to(ty), mask=m)
    tl.store(rrow + 2 * U + offs, drh.to(ty), mask=m)


@_jit
def simple_forward_step(
    xn_ptr,  # step t of the input projection (+ bias), row b at xn_ptr + b * xn_stride, (u,)
    xn_stride,
    r_ptr,  # (B, u) contiguous: h_in_{t-1} @ U
    h_prev_ptr,  # (B, u) storage dtype: h_{t-1} (zoneout, masks)
    h_ptr,  # (B, u) storage dtype, written: h_t
    hin_ptr,  # (B, u) storage dtype, written (recurrent dropout): h_t * mask
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    act_ptr,  # (B, u) float32, written: the activation's output y (_saved)
    rhat_ptr,  # (B, u) float32, written (layer norm)
    rstd_ptr,  # (B,) float32, written (layer norm)
    gh_ptr,  # (u,) gamma of the recurrent layer norm
    valid_ptr,  # (B,) float32: 1 where step t is real (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t (ZONEOUT == 1)
    zoneout,  # constant zoneout rate (ZONEOUT == 2)
    eps,
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
    CARRY: tl.constexpr,
):
    """SimpleRNN: ``h = φ(x W + b + LN(h_in U; γ_h))``."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    r = tl.load(r_ptr + b * U + offs, mask=m, other=0.0).to(tl.float32)
    if LAYER_NORM:
        r = _layer_norm_row(r, m, eps, rhat_ptr + b * U + offs, rstd_ptr + b, gh_ptr + offs, U)
    x = tl.load(xn_ptr + b * xn_stride + offs, mask=m, other=0.0).to(tl.float32) + r
    y = _act(x, ACT)
    tl.store(act_ptr + b * U + offs, _saved(x, y, ACT), mask=m)
    h = y
    urow = b * U + offs
    if CARRY:
        h_prev = tl.load(h_prev_ptr + urow, mask=m, other=0.0).to(tl.float32)
        h = _keep_previous(h, h_prev, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED, ZONEOUT)
    _store_state(h, h_ptr, hin_ptr, rdm_ptr, urow, m, RDROP)


@_jit
def simple_backward_step(
    dout_ptr,  # step t of d(outputs), row b at dout_ptr + b * dout_stride, (u,)
    dout_stride,
    dhrec_ptr,  # (B, u) contiguous: dR_{t+1} @ U^T
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    act_ptr,  # (B, u) float32 saved: y (_saved)
    rhat_ptr,  # (B, u) float32 saved (layer norm)
    rstd_ptr,  # (B,) float32 saved (layer norm)
    gh_ptr,  # (u,)
    dz_ptr,  # d(xn) at step t, row b at dz_ptr + b * dz_stride, written
    dz_stride,
    dr_ptr,  # (B, u) contiguous, written: d(h_in_{t-1} @ U)
    dgh_ptr,  # (B, u) float32 accumulator over time: sum d(rec) * rhat
    carry_ptr,  # (B, u) float32: d h_t that bypasses step t+1, read; d h_{t-1}'s, written
    valid_ptr,  # (B,) float32 (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t (ZONEOUT == 1)
    zoneout,  # constant zoneout rate (ZONEOUT == 2)
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
    CARRY: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    urow = b * U + offs
    dh = _incoming_dh(dout_ptr, dout_stride, dhrec_ptr, rdm_ptr, b, offs, urow, m, RDROP)
    if CARRY:
        dh += tl.load(carry_ptr + urow, mask=m, other=0.0)
        keep = _kept_fraction(dh, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED, ZONEOUT)
        tl.store(carry_ptr + urow, dh * keep, mask=m)
        dh = dh * (1.0 - keep)
    d = dh * _dact(tl.load(act_ptr + urow, mask=m, other=0.0), ACT)
    ty = dz_ptr.dtype.element_ty
    tl.store(dz_ptr + b * dz_stride + offs, d.to(ty), mask=m)
    if LAYER_NORM:
        d = _layer_norm_row_grad(d, m, rhat_ptr + urow, rstd_ptr + b, gh_ptr + offs,
                                 dgh_ptr + urow, U)  # fmt: skip
    tl.store(dr_ptr + urow, d.to(dr_ptr.dtype.element_ty), mask=m)


# GRU with reset_after=False (Keras' original form): the reset gate scales h_{t-1} *before* the
# candidate's recurrent product, so a step has two products and two kernels each way:
#   forward:  R = h_in U_zr -> gru_rb_gates_step (z, r, RH = r h_in) -> R2 = RH U_h
#             -> gru_rb_state_step (n, h);
#   backward: gru_rb_state_backward_step (d z, d n, dR2) -> dRH = dR2 U_h^T
#             -> gru_rb_gates_backward_step (d r, dR_zr, d h_in = dRH r) -> d h_in += dR_zr U_zr^T.
# Layer norm: LN over the 2u columns of h_in U_zr (gamma_h[:2u]) and over the u columns of
# RH U_h (gamma_h[2u:]); rstd keeps both per row.


@_jit
def gru_rb_gates_step(
    xn_ptr,  # step t of the input projection (+ bias), row b at xn_ptr + b * xn_stride, (3u,)
    xn_stride,
    r_ptr,  # (B, 2u) contiguous: h_in_{t-1} @ U_zr
    hin_ptr,  # (B, u) storage dtype: h_in_{t-1}
    rh_ptr,  # (B, u) storage dtype, written: r * h_in_{t-1}, the candidate product's operand
    act_ptr,  # (B, 4u) float32, written: z, r (_saved) in columns [0, 2u)
    rhat_ptr,  # (B, 3u) float32, written (layer norm): columns [0, 2u)
    rstd_ptr,  # (B, 2) float32, written (layer norm): column 0
    gh_ptr,  # (3u,) gamma of the recurrent layer norms
    eps,
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RACT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    rrow = r_ptr + b * 2 * U
    rz = tl.load(rrow + offs, mask=m, other=0.0).to(tl.float32)
    rr = tl.load(rrow + U + offs, mask=m, other=0.0).to(tl.float32)
    if LAYER_NORM:
        mean = (tl.sum(rz, 0) + tl.sum(rr, 0)) / (2 * U)
        rz = tl.where(m, rz - mean, 0.0)
        rr = tl.where(m, rr - mean, 0.0)
        rstd = 1.0 / tl.sqrt((tl.sum(rz * rz, 0) + tl.sum(rr * rr, 0)) / (2 * U) + eps)
        rz = rz * rstd
        rr = rr * rstd
        tl.store(rhat_ptr + b * 3 * U + offs, rz, mask=m)
        tl.store(rhat_ptr + b * 3 * U + U + offs, rr, mask=m)
        tl.store(rstd_ptr + b * 2, rstd)
        rz = rz * tl.load(gh_ptr + offs, mask=m, other=0.0).to(tl.float32)
        rr = rr * tl.load(gh_ptr + U + offs, mask=m, other=0.0).to(tl.float32)
    xrow = xn_ptr + b * xn_stride
    xz = tl.load(xrow + offs, mask=m, other=0.0).to(tl.float32) + rz
    xr = tl.load(xrow + U + offs, mask=m, other=0.0).to(tl.float32) + rr
    z = _act(xz, RACT)
    r = _act(xr, RACT)
    urow = b * U + offs
    h_in = tl.load(hin_ptr + urow, mask=m, other=0.0).to(tl.float32)
    tl.store(rh_ptr + urow, (r * h_in).to(rh_ptr.dtype.element_ty), mask=m)
    arow = act_ptr + b * 4 * U
    tl.store(arow + offs, _saved(xz, z, RACT), mask=m)
    tl.store(arow + U + offs, _saved(xr, r, RACT), mask=m)


@_jit
def gru_rb_state_step(
    xn_ptr,  # step t of the input projection (+ bias), row b at xn_ptr + b * xn_stride, (3u,)
    xn_stride,
    r2_ptr,  # (B, u) contiguous: RH @ U_h
    h_prev_ptr,  # (B, u) storage dtype: h_{t-1}
    h_ptr,  # (B, u) storage dtype, written: h_t
    hin_ptr,  # (B, u) storage dtype, written (recurrent dropout): h_t * mask
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    act_ptr,  # (B, 4u) float32: z read from column block 0; n (_saved) written to block 2
    rhat_ptr,  # (B, 3u) float32, written (layer norm): columns [2u, 3u)
    rstd_ptr,  # (B, 2) float32, written (layer norm): column 1
    gh_ptr,  # (3u,) gamma of the recurrent layer norms
    valid_ptr,  # (B,) float32: 1 where step t is real (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t (ZONEOUT == 1)
    zoneout,  # constant zoneout rate (ZONEOUT == 2)
    eps,
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    RACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
):
    """``n = φ(x_h + LN(RH U_h; γ_h[2u:]))``, ``h = z h_{t-1} + (1 - z) n``."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    urow = b * U + offs
    r2 = tl.load(r2_ptr + urow, mask=m, other=0.0).to(tl.float32)
    if LAYER_NORM:  # columns [2u, 3u) of rhat and gamma, rstd column 1
        r2 = _layer_norm_row(r2, m, eps, rhat_ptr + b * 3 * U + 2 * U + offs, rstd_ptr + b * 2 + 1,
                             gh_ptr + 2 * U + offs, U)  # fmt: skip
    xh = tl.load(xn_ptr + b * xn_stride + 2 * U + offs, mask=m, other=0.0).to(tl.float32) + r2
    n = _act(xh, ACT)
    arow = act_ptr + b * 4 * U
    z = _out(tl.load(arow + offs, mask=m, other=0.0), RACT)
    h_prev = tl.load(h_prev_ptr + urow, mask=m, other=0.0).to(tl.float32)
    h = z * h_prev + (1.0 - z) * n
    h = _keep_previous(h, h_prev, zm_ptr, valid_ptr, b, urow, m, zoneout, MASKED, ZONEOUT)
    _store_state(h, h_ptr, hin_ptr, rdm_ptr, urow, m, RDROP)
    tl.store(arow + 2 * U + offs, _saved(xh, n, ACT), mask=m)


@_jit
def gru_rb_state_backward_step(
    dout_ptr,  # step t of d(outputs), row b at dout_ptr + b * dout_stride, (u,)
    dout_stride,
    dhrec_ptr,  # (B, u) contiguous: d h_in_t through step t+1's products
    rdm_ptr,  # (B, u) float32 recurrent dropout mask
    act_ptr,  # (B, 4u) float32 saved: z, r, n
    h_prev_ptr,  # (B, u) storage dtype: h_{t-1}
    rhat_ptr,  # (B, 3u) float32 saved (layer norm)
    rstd_ptr,  # (B, 2) float32 saved (layer norm)
    gh_ptr,  # (3u,)
    dz_ptr,  # d(xn) at step t, row b at dz_ptr + b * dz_stride: z and h columns written
    dz_stride,
    dr2_ptr,  # (B, u) contiguous, written: d(RH @ U_h)
    dgh_ptr,  # (B, 3u) float32 accumulators over time: sum d(rec) * rhat (columns [2u, 3u))
    carry_ptr,  # (B, u) float32: d h_t that bypasses step t+1's gates, read; d h_{t-1}'s, written
    valid_ptr,  # (B,) float32 (masks)
    zm_ptr,  # (B, u) float32 zoneout mask at step t (ZONEOUT == 1)
    zoneout,  # constant zoneout rate (ZONEOUT == 2)
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RDROP: tl.constexpr,
    ACT: tl.constexpr,
    RACT: tl.constexpr,
    MASKED: tl.constexpr,
    ZONEOUT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    urow = b * U + offs
    dzz, dzn = _gru_update_grads(dout_ptr, dout_stride, dhrec_ptr, rdm_ptr, carry_ptr, act_ptr,
                                 h_prev_ptr, valid_ptr, zm_ptr, zoneout, b, offs, urow, m, U,
                                 RDROP, ACT, RACT, MASKED, ZONEOUT)  # fmt: skip
    zrow = dz_ptr + b * dz_stride
    ty = dz_ptr.dtype.element_ty
    tl.store(zrow + offs, dzz.to(ty), mask=m)
    tl.store(zrow + 2 * U + offs, dzn.to(ty), mask=m)
    d = dzn
    if LAYER_NORM:
        grow = b * 3 * U + 2 * U + offs
        d = _layer_norm_row_grad(d, m, rhat_ptr + grow, rstd_ptr + b * 2 + 1,
                                 gh_ptr + 2 * U + offs, dgh_ptr + grow, U)  # fmt: skip
    tl.store(dr2_ptr + urow, d.to(dr2_ptr.dtype.element_ty), mask=m)


@_jit
def gru_rb_gates_backward_step(
    drh_ptr,  # (B, u) contiguous: d RH = dR2 @ U_h^T
    hin_ptr,  # (B, u) storage dtype: h_in_{t-1}
    act_ptr,  # (B, 4u) float32 saved: z, r
    rhat_ptr,  # (B, 3u) float32 saved (layer norm)
    rstd_ptr,  # (B, 2) float32 saved (layer norm)
    gh_ptr,  # (3u,)
    dz_ptr,  # d(xn) at step t, row b at dz_ptr + b * dz_stride: z read, r written
    dz_stride,
    dr_ptr,  # (B, 3u) row stride 3u, written in columns [0, 2u): d(h_in @ U_zr)
    dgh_ptr,  # (B, 3u) float32 accumulators: sum d(rec) * rhat (columns [0, 2u))
    dhin_ptr,  # (B, u) contiguous, written: d h_in_{t-1} through RH (= d RH * r)
    U: tl.constexpr,
    BLOCK: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    RACT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < U
    urow = b * U + offs
    drh = tl.load(drh_ptr + urow, mask=m, other=0.0).to(tl.float32)
    h_in = tl.load(hin_ptr + urow, mask=m, other=0.0).to(tl.float32)
    sr = tl.load(act_ptr + b * 4 * U + U + offs, mask=m, other=0.0)
    r = _out(sr, RACT)
    dzr = drh * h_in * _dact(sr, RACT)
    zrow = dz_ptr + b * dz_stride
    tl.store(zrow + U + offs, dzr.to(dz_ptr.dtype.element_ty), mask=m)
    tl.store(dhin_ptr + urow, (drh * r).to(dhin_ptr.dtype.element_ty), mask=m)
    dzz = tl.load(zrow + offs, mask=m, other=0.0).to(tl.float32)
    if LAYER_NORM:
        hrow = rhat_ptr + b * 3 * U
        hz = tl.load(hrow + offs, mask=m, other=0.0)
        hr = tl.load(hrow + U + offs, mask=m, other=0.0)
        grow = b * 3 * U + offs
        tl.store(dgh_ptr + grow, tl.load(dgh_ptr + grow, mask=m, other=0.0) + dzz * hz, mask=m)
        tl.store(
            dgh_ptr + grow + U, tl.load(dgh_ptr + grow + U, mask=m, other=0.0) + dzr * hr, mask=m
        )
        dz_ = dzz * tl.load(gh_ptr + offs, mask=m, other=0.0).to(tl.float32)
        dr_ = dzr * tl.load(gh_ptr + U + offs, mask=m, other=0.0).to(tl.float32)
        mean1 = (tl.sum(dz_, 0) + tl.sum(dr_, 0)) / (2 * U)
        mean2 = (tl.sum(dz_ * hz, 0) + tl.sum(dr_ * hr, 0)) / (2 * U)
        rstd = tl.load(rstd_ptr + b * 2)
        dzz = rstd * (dz_ - mean1 - hz * mean2)
        dzr = rstd * (dr_ - mean1 - hr * mean2)
    rrow = dr_ptr + b * 3 * U
    ty = dr_ptr.dtype.element_ty
    tl.store(rrow + offs, dzz.to(ty), mask=m)
    tl.store(rrow + U + offs, dzr.to(ty), mask=m)
