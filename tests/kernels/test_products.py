"""The CPU matrix products (kernels/products.py): oneDNN's GEMM, the same numbers as torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnkit.kernels import products


def _onednn_calls(monkeypatch, min_macs: int = 0) -> list:
    """The left operands' shapes of oneDNN's products made from now on (none without oneDNN),
    oneDNN taking products from ``min_macs`` multiply-adds (0: every product of 2 rows or more,
    so that these tests' small shapes exercise its path)."""
    monkeypatch.setattr(products, "ONEDNN_MIN_MACS", min_macs)
    calls = []
    if products.ONEDNN_LINEAR is not None:
        op = products.ONEDNN_LINEAR
        monkeypatch.setattr(
            products, "ONEDNN_LINEAR", lambda *a: calls.append(tuple(a[0].shape)) or op(*a)
        )
    return calls


def test_weight_gradient_products_accept_strided_operands():
    """tn gets column blocks of the gate buffer (GRU Python loops): same numbers as a.t() @ b."""
    a = torch.randn(700, 24)
    buf = torch.randn(700, 4 * 16)
    for b in (buf[:, 16:], buf[:, :48], buf):  # strided rows, and contiguous
        torch.testing.assert_close(products.tn(a, b=b), a.t() @ b, rtol=1e-4, atol=1e-4)
    x, h = torch.randn(700, 8), torch.randn(700, 24)
    dW, dU = products.tn(x, h, b=buf[:, 16:])
    torch.testing.assert_close(dW, x.t() @ buf[:, 16:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dU, h.t() @ buf[:, 16:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(700,), (4, 35)])
def test_linear_equals_f_linear_forward_and_backward(lead, bias, monkeypatch):
    # torch.nn.Linear's layout (the language model's decoder, weight tied to the embedding)
    calls = _onednn_calls(monkeypatch)  # forward (x) and dx (dy) at least
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 24, generator=g, requires_grad=True)
    w = (torch.randn(300, 24, generator=g) * 0.2).requires_grad_(True)
    b = torch.randn(300, generator=g, requires_grad=True) if bias else None
    dy = torch.randn(*lead, 300, generator=g)
    ins = [x, w] + ([b] if bias else [])
    y = products.linear(x, w, b)
    grads = torch.autograd.grad(y, ins, dy)
    y_ref = F.linear(x, w, b)
    grads_ref = torch.autograd.grad(y_ref, ins, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if products.ONEDNN_LINEAR is not None:  # (dw: tn, oneDNN or brgemm as the width decides)
        rows = x.numel() // 24
        assert calls[:2] == [(rows, 24), (rows, 300)]


def test_linear_of_no_rows():
    # an empty batch of real positions (a loss over padding only): zeros, and zero gradients
    w = torch.randn(30, 24, requires_grad=True)
    b = torch.zeros(30, requires_grad=True)
    y = products.linear(torch.zeros(2, 0, 24), w, b)
    assert y.shape == (2, 0, 30)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_linear_elsewhere_is_f_linear():
    # float64 (and other devices): torch's own product, bit for bit
    x = torch.randn(5, 6, dtype=torch.float64)
    w = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    y = products.linear(x, w, None)
    assert torch.equal(y, F.linear(x, w))
    assert type(y.grad_fn).__name__ == type(F.linear(x, w).grad_fn).__name__


def test_linear_gradients_are_the_products(monkeypatch):
    # dx = dy w, dw = dy^T x, db = column sums of dy
    if products.ONEDNN_LINEAR is None:
        pytest.skip("torch has no oneDNN linear here")
    monkeypatch.setattr(products, "ONEDNN_MIN_MACS", 0)  # (these shapes are below it)
    x = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = products.linear(x, w, b)
    dy = torch.randn(6, 4)
    dx, dw, db = torch.autograd.grad(y, [x, w, b], dy)
    torch.testing.assert_close(dx, dy @ w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dw, dy.t() @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db, dy.sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 37])
@pytest.mark.parametrize("bias", [True, False])
def test_keras_linear_equals_torch_forward_and_backward(rows, bias, monkeypatch):
    # x @ w + b for Keras' (K, N) kernel: oneDNN from 2 rows (handed w's transposed view, no
    # copy), torch's matrix-vector product for a single row
    calls = _onednn_calls(monkeypatch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 40, generator=g, requires_grad=True)
    w = (torch.randn(40, 96, generator=g) * 0.2).requires_grad_(True)
    b = torch.randn(96, generator=g, requires_grad=True) if bias else None
    dy = torch.randn(rows, 96, generator=g)
    ins = [x, w] + ([b] if bias else [])
    got = torch.autograd.grad(products.keras_linear(x, w, b), ins, dy)
    want = torch.autograd.grad(x @ w + (b if bias else 0), ins, dy)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    y = products.keras_linear(x, w, b)
    torch.testing.assert_close(y, x @ w + (b if bias else 0), rtol=1e-4, atol=1e-4)
    if products.ONEDNN_LINEAR is not None:
        assert ((rows, 40) in calls) == (rows > 1)


@pytest.mark.parametrize("rows", [1, 5])
def test_nt_equals_torch(rows, monkeypatch):
    # a @ b^T (the input gradient of a projection): oneDNN from 2 rows, torch for a single one
    calls = _onednn_calls(monkeypatch)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(rows, 96, generator=g), torch.randn(40, 96, generator=g)
    torch.testing.assert_close(products.nt(a, b), a @ b.t(), rtol=1e-4, atol=1e-4)
    if products.ONEDNN_LINEAR is not None:
        assert bool(calls) == (rows > 1)


@pytest.mark.parametrize("rows", [1, 3])
def test_tn_of_a_single_row_is_torchs_outer_product(rows, monkeypatch):
    # a^T @ b (a weight gradient): one row is an outer product, torch's own (oneDNN's linear was
    # 4x slower on it); from 2 rows oneDNN (here: the compiled weight-gradient op turned off)
    monkeypatch.setattr(products.cpu_ext, "weight_grads_max_cols", lambda ops: 0)
    calls = _onednn_calls(monkeypatch)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(rows, 40, generator=g), torch.randn(rows, 96, generator=g)
    torch.testing.assert_close(products.tn(a, b=b), a.t() @ b, rtol=1e-4, atol=1e-4)
    if products.ONEDNN_LINEAR is not None:
        assert bool(calls) == (rows > 1)


def test_small_products_are_torchs_own(monkeypatch):
    # below ONEDNN_MIN_MACS multiply-adds oneDNN's per-call setup costs more than the product:
    # torch's own computes it (same numbers); from the threshold on, oneDNN's
    calls = _onednn_calls(monkeypatch, min_macs=products.ONEDNN_MIN_MACS)
    g = torch.Generator().manual_seed(4)
    small, inner, cols = 32, 8, 64  # 16K multiply-adds
    x = torch.randn(small, inner, generator=g)
    w = torch.randn(inner, cols, generator=g)
    b = torch.randn(cols, generator=g)
    torch.testing.assert_close(products.keras_linear(x, w, b), x @ w + b)
    torch.testing.assert_close(products.nt(x, w.t()), x @ w)
    torch.testing.assert_close(products.linear(x, w.t(), b), F.linear(x, w.t(), b))
    assert calls == []
    if products.ONEDNN_LINEAR is None:
        return
    rows = -(-products.ONEDNN_MIN_MACS // (inner * cols))  # the fewest rows at the threshold
    big = torch.randn(rows, inner, generator=g)
    torch.testing.assert_close(products.keras_linear(big, w, b), big @ w + b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(products.nt(big, w.t()), big @ w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        products.linear(big, w.t(), b), F.linear(big, w.t(), b), rtol=1e-4, atol=1e-4
    )
    assert calls == [(rows, inner)] * 3
