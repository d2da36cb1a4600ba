"""Exactness of entmax15 / entmax_bisect / sparsemax against the reference `entmax` package."""

import entmax as ref
import pytest
import torch

from sparsedino.attention import entmax as entmax_module
from sparsedino.attention import entmax15, entmax_bisect, sparsemax

SCALES = [1e-4, 1e-2, 1.0, 3.0, 30.0, 1e4]


def _rows(n_rows: int, n: int, scale: float) -> torch.Tensor:
    return torch.randn(n_rows, n) * scale


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("n", [1, 2, 7, 197, 1000])
def test_entmax15_matches_reference_values_and_grads(scale, n):
    x = _rows(64, n, scale).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    p, pr = entmax15(x), ref.entmax15(xr)
    assert (p - pr).abs().max() <= 1e-5
    g = torch.randn_like(p)
    p.backward(g)
    pr.backward(g)
    assert (x.grad - xr.grad).abs().max() <= 1e-5 * max(1.0, g.abs().max().item())


def test_entmax15_long_rows_8192():
    for scale in (0.01, 1.0, 100.0):
        x = _rows(4, 8192, scale)
        assert (entmax15(x) - ref.entmax15(x)).abs().max() <= 1e-5


def test_entmax15_ties_and_constant_rows():
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 2.0, -5.0, -5.0], [0.0] * 4, [3.0, 3.0, 3.0, 3.0]])
    p = entmax15(x)
    assert (p - ref.entmax15(x)).abs().max() <= 1e-6
    assert torch.allclose(p[3], torch.full((4,), 0.25))
    # many exact ties with random magnitudes
    x = torch.randint(-3, 3, (256, 50)).float() * 0.7
    assert (entmax15(x) - ref.entmax15(x)).abs().max() <= 1e-5


def test_entmax15_fallback_rows_are_exact():
    # Force the sort fallback on every row by allowing zero Newton steps: results must not change.
    x = _rows(128, 60, 0.5)
    saved = entmax_module.NEWTON_STEPS
    try:
        entmax_module.NEWTON_STEPS = 0
        p0 = entmax15(x)
    finally:
        entmax_module.NEWTON_STEPS = saved
    assert (p0 - ref.entmax15(x)).abs().max() <= 1e-5


def test_entmax15_masks_give_exact_zeros_and_fully_masked_rows_zero():
    x = torch.randn(6, 20) * 3
    mask = torch.rand(6, 20) < 0.5
    mask[:, 0] = False
    xm = x.masked_fill(mask, float("-inf"))
    xm[5] = float("-inf")  # a fully masked row
    p = entmax15(xm)
    assert torch.isfinite(p).all()
    assert (p[mask] == 0).all()
    assert (p[5] == 0).all()
    assert torch.allclose(p[:5].sum(-1), torch.ones(5), atol=1e-6)
    assert (p[:5] - ref.entmax15(xm[:5])).abs().max() <= 1e-6
    xg = xm.clone().requires_grad_()
    entmax15(xg).backward(torch.randn(6, 20))
    assert torch.isfinite(xg.grad).all() and (xg.grad[5] == 0).all()


@pytest.mark.parametrize("fn", [sparsemax, lambda t: entmax_bisect(t, 1.3)])
def test_other_normalisers_handle_masks(fn):
    x = torch.randn(3, 9).masked_fill(torch.rand(3, 9) < 0.4, float("-inf"))
    x[:, 0] = 1.0
    x[2] = float("-inf")
    p = fn(x)
    assert torch.isfinite(p).all() and (p[x == float("-inf")] == 0).all()
    assert (p[2] == 0).all()
    assert torch.allclose(p[:2].sum(-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_are_preserved_and_computed_accurately(dtype):
    x = torch.randn(8, 33) * 2
    for fn, rfn in ((entmax15, ref.entmax15), (sparsemax, ref.sparsemax)):
        xd = x.to(dtype).requires_grad_()
        p = fn(xd)
        assert p.dtype == dtype
        expected = rfn(xd.detach().double()).to(dtype)
        tol = 1e-12 if dtype == torch.float64 else 1e-2
        assert (p.double() - expected.double()).abs().max() <= tol
        p.sum().backward()
        assert xd.grad.dtype == dtype


def test_entmax15_dim_argument():
    x = torch.randn(5, 7, 3)
    assert torch.allclose(entmax15(x, dim=1), ref.entmax15(x, dim=1), atol=1e-6)
    assert torch.allclose(sparsemax(x, dim=0), ref.sparsemax(x, dim=0), atol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_sparsemax_matches_reference(scale):
    x = (torch.randn(32, 100) * scale).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    p, pr = sparsemax(x), ref.sparsemax(xr)
    assert (p - pr).abs().max() <= 1e-5
    g = torch.randn_like(p)
    p.backward(g)
    pr.backward(g)
    assert (x.grad - xr.grad).abs().max() <= 1e-5


@pytest.mark.parametrize("alpha", [1.2, 1.5, 1.8, 2.5])
def test_entmax_bisect_matches_reference(alpha):
    x = (torch.randn(16, 40) * 2).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    p, pr = entmax_bisect(x, alpha), ref.entmax_bisect(xr, alpha)
    assert (p - pr).abs().max() <= 1e-5
    g = torch.randn_like(p)
    p.backward(g)
    pr.backward(g)
    assert (x.grad - xr.grad).abs().max() <= 1e-4


def test_entmax_bisect_alpha_15_equals_entmax15():
    x = torch.randn(20, 50) * 3
    assert (entmax_bisect(x, 1.5) - entmax15(x)).abs().max() <= 1e-5


def test_entmax_bisect_per_head_alpha_and_its_gradient():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64) * 2
    alpha = torch.tensor([1.2, 1.5, 1.9], dtype=torch.float64).reshape(1, 3, 1, 1).requires_grad_()
    p = entmax_bisect(x, alpha)
    for h, a in enumerate((1.2, 1.5, 1.9)):
        assert (p[:, h] - ref.entmax_bisect(x[:, h], a)).abs().max() <= 1e-8
    p.pow(2).sum().backward()
    assert alpha.grad.shape == alpha.shape and torch.isfinite(alpha.grad).all()
    # compare with the reference implementation's alpha gradient
    ar = alpha.detach().clone().requires_grad_()
    ref.entmax_bisect(x, ar.expand(2, 3, 5, 1)).pow(2).sum().backward()
    assert torch.allclose(alpha.grad, ar.grad, atol=1e-6)


def test_gradcheck_float64():
    x = (torch.randn(3, 6, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(entmax15, (x,))
    assert torch.autograd.gradcheck(sparsemax, (x,))
    alpha = torch.tensor([[1.3], [1.6], [2.1]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: entmax_bisect(t, a, n_iter=80), (x, alpha))


def test_entmax_bisect_rejects_alpha_le_one():
    with pytest.raises(ValueError, match="alpha"):
        entmax_bisect(torch.randn(3, 4), 1.0)


def test_large_inputs_processed_in_row_blocks_match_reference():
    # > 2 * _EAGER_BLOCK elements: the eager CPU path solves blocks of rows (results must not change)
    assert 2 * entmax_module._EAGER_BLOCK < 300 * 500
    x = (torch.randn(2, 150, 500) * 2).masked_fill(torch.rand(2, 150, 500) < 0.2, float("-inf"))
    x[0, 3] = float("-inf")
    x.requires_grad_()
    p = entmax15(x)
    keep = torch.ones(2, 150, dtype=torch.bool)
    keep[0, 3] = False
    assert (p[keep] - ref.entmax15(x.detach()[keep])).abs().max() <= 1e-5 and (p[0, 3] == 0).all()
    g = torch.randn_like(p)
    p.backward(g)
    xr = x.detach()[keep].clone().requires_grad_()
    ref.entmax15(xr).backward(g[keep])
    assert (x.grad[keep] - xr.grad).abs().max() <= 1e-5
    y = torch.randn(40, 3000)
    assert (entmax15(y, dim=0) - ref.entmax15(y, dim=0)).abs().max() <= 1e-5  # blocks along another dim


@pytest.mark.parametrize("steps", [0, 4])
def test_row_blocks_solve_exactly_when_the_newton_check_fails(monkeypatch, steps):
    # steps=0: every row fails the KKT check and goes through the exact sort (ties included)
    monkeypatch.setattr(entmax_module, "NEWTON_STEPS", steps)
    x = torch.randint(-4, 4, (200, 400)).float() * 0.75
    x[7] = float("-inf")
    x[9, 3] = float("nan")
    p = entmax15(x)
    rows = torch.ones(200, dtype=torch.bool)
    rows[[7, 9]] = False
    assert (p[rows] - ref.entmax15(x[rows])).abs().max() <= 1e-6
    assert (p[7] == 0).all() and p[9].isnan().all()
