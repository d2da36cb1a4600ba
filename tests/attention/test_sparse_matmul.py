"""The sparse probabilities-times-values kernel (P @ V and dS @ K in the fused op) against dense matmul."""

import shutil

import entmax as ref
import pytest
import torch

from sparsedino.attention import attention, dispatch, native, set_compile

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler"
)


@pytest.fixture(autouse=True)
def native_paths():
    """The suite runs eagerly (tests/conftest.py); these tests are about the native kernels."""
    set_compile(True)
    yield
    set_compile(None)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records which sparse kernels run ("P @ V", "backward"), in order, while still running them."""
    calls = []
    real_matmul, real_backward = native.sparse_matmul, native.sparse_attention_backward
    monkeypatch.setattr(native, "sparse_matmul", lambda p, v: calls.append("P @ V") or real_matmul(p, v))
    monkeypatch.setattr(
        native, "sparse_attention_backward", lambda *a: calls.append("backward") or real_backward(*a)
    )
    return calls


def _sparse_rows(shape, density, dtype, gen, signed=False):
    x = torch.rand(shape, generator=gen, dtype=dtype)
    if signed:
        x = x - 0.5
    return torch.where(
        torch.rand(shape, generator=gen, dtype=dtype) < density, x, torch.zeros((), dtype=dtype)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "dv", [64, 16, 5, 33]
)  # every slice width of the kernel: 4 vectors, 1 vector, scalars
@pytest.mark.parametrize("openmp", [True, False])
def test_sparse_matmul_equals_dense(monkeypatch, dtype, dv, openmp):
    """Any density (all-zero rows and blocks included), keys not a multiple of the vector width, signed
    values (dS in backward), both the OpenMP and the thread-pool builds."""
    assert native.available(), native.build_error()
    if openmp and not native._openmp:
        pytest.skip("the C compiler has no OpenMP")
    monkeypatch.setattr(native, "_openmp", openmp)
    monkeypatch.setattr(native, "MAX_THREADS", 2)
    gen = torch.Generator().manual_seed(dv)
    for n, m, density, signed in ((37, 37, 0.2, False), (50, 197, 0.05, True), (9, 70, 1.0, False)):
        p = _sparse_rows((3, 2, n, m), density, dtype, gen, signed)
        p[0, 0, 1] = 0.0  # an all-zero row
        p[1, 1, :, :8] = -0.0  # negative zeros are zeros
        v = torch.randn(3, 2, m, dv, generator=gen, dtype=dtype)
        out = native.sparse_matmul(p, v)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert out.shape == (3, 2, n, dv) and out.dtype == dtype
        assert torch.allclose(out, p @ v, atol=tol, rtol=tol)
        assert (out[0, 0, 1] == 0).all()


def test_sparse_matmul_skips_zeros_and_keeps_nans():
    """A zero weight on an infinite value contributes nothing; a NaN probability still propagates."""
    p = torch.tensor([[[[0.5, 0.0, 0.5], [float("nan"), 0.0, 0.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [float("inf"), 1.0], [3.0, 4.0]]]])
    out = native.sparse_matmul(p, v)
    assert out[0, 0, 0].tolist() == [2.0, 3.0]
    assert out[0, 0, 1].isnan().all()


def test_probs_matmul_picks_the_sparse_kernel_only_where_it_pays(monkeypatch):
    """Dispatch table: sparse for few nonzeros or short rows, BLAS for dense long rows, other dtypes/devices."""
    calls = []
    real = native.sparse_matmul
    monkeypatch.setattr(native, "sparse_matmul", lambda p, v: calls.append(p.shape) or real(p, v))
    gen = torch.Generator().manual_seed(0)
    sparse = _sparse_rows((2, 2, 100, 200), 0.05, torch.float32, gen)
    dense = _sparse_rows((2, 2, 100, 200), 0.9, torch.float32, gen)
    short = _sparse_rows((2, 2, 30, 40), 0.9, torch.float32, gen)
    v, v_short = torch.randn(2, 2, 200, 16, generator=gen), torch.randn(2, 2, 40, 16, generator=gen)
    for p, vv, expect in ((sparse, v, True), (dense, v, False), (short, v_short, True)):
        calls.clear()
        out = dispatch.probs_matmul(p, vv)
        assert bool(calls) == expect
        assert torch.allclose(out, p @ vv, atol=1e-5)
    assert not dispatch.sparse_kernels_pay(short, v_short)  # the backward takes dense short rows to BLAS
    assert dispatch.sparse_kernels_pay(sparse, v)
    calls.clear()
    dispatch.probs_matmul(sparse.bfloat16(), v.bfloat16())  # no bfloat16 kernel: BLAS
    assert not calls


@pytest.mark.parametrize("n", [37, 197])
def test_attention_with_the_sparse_product_matches_the_reference(kernel_calls, n):
    """End to end: the fused op's output (sparse P @ V) and gradients (sparse backward) against entmax's oracle."""
    calls = kernel_calls
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, normalizer="entmax15")
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    expect = ref.entmax15(qr @ kr.transpose(-2, -1) * 16**-0.5, dim=-1) @ vr
    expect_grads = torch.autograd.grad(expect, (qr, kr, vr), g.double())
    assert (out.double() - expect).abs().max() < 1e-5
    for got, want in zip(grads, expect_grads):
        assert (got.double() - want).abs().max() < 1e-4
    assert calls == ["P @ V", "backward"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("openmp", [True, False])
def test_sparse_backward_equals_the_dense_formulas(monkeypatch, dtype, openmp):
    """dQ, dK, dV of the support-only backward against autograd through the dense product, with head dims
    off the vector width, an all-masked row (zero probabilities) and both thread-splitting builds."""
    if openmp and not native._openmp:
        pytest.skip("the C compiler has no OpenMP")
    monkeypatch.setattr(native, "_openmp", openmp)
    monkeypatch.setattr(native, "MAX_THREADS", 2)
    gen = torch.Generator().manual_seed(1)
    b, h, n, m, d, e = 2, 3, 41, 70, 12, 9
    q, k = (
        torch.randn(b, h, n, d, generator=gen, dtype=dtype),
        torch.randn(b, h, m, d, generator=gen, dtype=dtype),
    )
    v, g = (
        torch.randn(b, h, m, e, generator=gen, dtype=dtype),
        torch.randn(b, h, n, e, generator=gen, dtype=dtype),
    )
    scale = d**-0.5
    p = ref.entmax15(q @ k.transpose(-2, -1) * scale, dim=-1)
    keep = torch.ones(b, h, n, 1, dtype=dtype)
    keep[0, 1, 3] = 0.0  # a row without support (its gradients are zero)
    p = p * keep
    dq, dk, dv = native.sparse_attention_backward(p, q, k, v, g, scale)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    pr = ref.entmax15(qr @ kr.transpose(-2, -1) * scale, dim=-1)
    pr = pr * keep
    want = torch.autograd.grad(pr @ vr, (qr, kr, vr), g)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for got, exp in zip((dq, dk, dv), want):
        assert torch.allclose(got, exp, atol=tol, rtol=tol)


def test_masked_attention_through_the_sparse_kernels_matches_the_reference(kernel_calls):
    """An additive -inf key mask (padding) and a fully masked query row: outputs and gradients as the oracle's."""
    calls = kernel_calls
    gen = torch.Generator().manual_seed(3)
    q, k, v = (3 * torch.randn(2, 2, 30, 8, generator=gen) for _ in range(3))  # peaky: sparse rows
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = torch.zeros(2, 1, 30, 30)
    mask[0, :, :, 20:] = float("-inf")  # padded keys of the first image
    mask[1, :, 5, :] = float("-inf")  # one query that may attend nothing
    out = attention(q, k, v, normalizer="entmax15", attn_mask=mask)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_mask, keep = mask.double().clone(), torch.ones(2, 1, 30, 1, dtype=torch.float64)
    ref_mask[1, :, 5], keep[1, :, 5] = 0.0, 0.0  # the reference cannot take an all -inf row: zero it after
    p = ref.entmax15(qr @ kr.transpose(-2, -1) * 8**-0.5 + ref_mask, dim=-1) * keep
    expect = p @ vr
    expect_grads = torch.autograd.grad(expect, (qr, kr, vr), g.double())
    assert (out.double() - expect).abs().max() < 1e-5 and (out[1, :, 5] == 0).all()
    for got, want in zip(grads, expect_grads):
        assert (got.double() - want).abs().max() < 1e-4
    assert calls == ["P @ V", "backward"]  # 30 keys: P @ V sparse at any density


@pytest.mark.parametrize("chunk", [7, 40])
def test_tiled_attention_through_the_sparse_kernels_matches_the_untiled_op(kernel_calls, chunk):
    """Query rows split over tiles (dK, dV summed over them, chunk 7) or whole batch elements per tile (40)."""
    calls = kernel_calls
    gen = torch.Generator().manual_seed(4)
    q, k, v = (3 * torch.randn(3, 2, 40, 8, generator=gen) for _ in range(3))
    g = torch.randn(3, 2, 40, 8, generator=gen)
    results = []
    for chunk_size in (0, chunk):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*leaves, normalizer="entmax15", chunk_size=chunk_size)
        results.append((out, *torch.autograd.grad(out, leaves, g)))
    for full, tiled in zip(*results):
        assert (full - tiled).abs().max() <= 1e-5
    assert calls.count("backward") > 1 and "P @ V" in calls  # the tiles went through the sparse kernels
