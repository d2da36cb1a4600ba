"""Exact sparsemax and alpha-entmax by bisection (any ``alpha > 1``), with their autograd functions.

Same conventions as :mod:`sparsedino.attention.entmax` (``-inf`` -> 0, all-``-inf`` rows -> zeros, ``+inf`` /
NaN rows -> NaN; float16 / bfloat16 computed in float32). Both backwards are the one alpha-entmax formula of
:mod:`sparsedino.attention.gradients`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsedino.attention.gradients import TINY, entmax_grad, entmax_support_weights
from sparsedino.attention.precision import compute_dtype

__all__ = ["BISECT_STEPS", "entmax_bisect", "sparsemax"]

# Bisection steps of alpha-entmax: enough for float32/float64 resolution of the threshold.
BISECT_STEPS = 50


# --------------------------------------------------------------------------------------------------------------
# sparsemax
# --------------------------------------------------------------------------------------------------------------
def _sparsemax_forward(x: Tensor) -> Tensor:
    """Exact sparsemax along the last dim by sorting."""
    m = x.amax(-1, keepdim=True)
    finite = m > float("-inf")
    z = x - torch.where(finite, m, torch.zeros_like(m))
    zs, _ = torch.sort(z, dim=-1, descending=True)
    valid = zs > float("-inf")
    zs0 = torch.where(valid, zs, torch.zeros_like(zs))
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    taus = (zs0.cumsum(-1) - 1.0) / k
    support = ((taus < zs) & valid).sum(-1, keepdim=True).clamp_min(1)
    tau = taus.gather(-1, support - 1)
    p = (z - tau).clamp_min(0.0)
    p = torch.where(finite, p, torch.zeros_like(p))
    undefined = (m == float("inf")) | m.isnan()
    return torch.where(undefined, torch.full_like(p, float("nan")), p)  # +inf / NaN row: NaN, as softmax


class _SparsemaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        ct = compute_dtype(x)
        p = _sparsemax_forward(x.to(ct).movedim(dim, -1)).movedim(-1, dim).to(x.dtype)
        ctx.dim = dim
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        ct = compute_dtype(grad)
        return entmax_grad(p.to(ct), grad.to(ct), 2.0, ctx.dim).to(grad.dtype), None


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Exact sparsemax (Euclidean projection onto the probability simplex) along ``dim``.

    Args:
        x: Scores. ``-inf`` entries get exactly 0; an all ``-inf`` row gives all zeros; a row holding ``+inf``
            or NaN gives NaN (as softmax).
        dim: Dimension to normalise over.

    Returns:
        Probabilities, same shape and dtype as ``x``.
    """
    return _SparsemaxFunction.apply(x, dim)


# --------------------------------------------------------------------------------------------------------------
# alpha-entmax by bisection
# --------------------------------------------------------------------------------------------------------------
def _bisect_forward(x: Tensor, alpha: Tensor, dim: int, n_iter: int, tiny: float = TINY) -> Tensor:
    """p = max((alpha - 1) x - tau, 0) ** (1 / (alpha - 1)) with tau found by bisection, rows renormalised.

    (``tiny`` is an argument so that TorchScript, which cannot read module globals, compiles this too.)
    """
    am1 = alpha - 1.0
    xs = x * am1
    m = xs.amax(dim, keepdim=True)
    finite = m > float("-inf")
    xs = xs - torch.where(finite, m, torch.zeros_like(m))  # row max 0: tau in [-1, -(1/n)^(alpha-1)]
    n = x.shape[dim]
    lo = torch.full_like(m, -1.0)
    hi = -((1.0 / n) ** am1) * torch.ones_like(m)
    power = 1.0 / am1
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        mass = (xs - mid).clamp_min(0.0).pow(power).sum(dim, keepdim=True)
        above = mass >= 1.0  # tau too small -> move the lower end up
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    p = (xs - 0.5 * (lo + hi)).clamp_min(0.0).pow(power)
    p = p / p.sum(dim, keepdim=True).clamp_min(tiny)
    p = torch.where(finite, p, torch.zeros_like(p))
    undefined = (m == float("inf")) | m.isnan()
    return torch.where(undefined, torch.full_like(p, float("nan")), p)  # +inf / NaN row: NaN, as softmax


class _EntmaxBisectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, dim: int, n_iter: int) -> Tensor:  # type: ignore[override]
        ct = compute_dtype(x)
        xc, ac = x.to(ct), alpha.to(ct)
        p = _bisect_forward(xc, ac, dim, n_iter)
        ctx.dim = dim
        ctx.alpha_dtype = alpha.dtype
        ctx.save_for_backward(xc if alpha.requires_grad else None, ac, p)
        return p.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xc, alpha, p = ctx.saved_tensors
        dim = ctx.dim
        g = grad.to(p.dtype)
        pos = p > 0
        s, sum_s = weights = entmax_support_weights(p, alpha, dim)
        dx = entmax_grad(p, g, alpha, dim, weights=weights)
        dalpha = None
        if ctx.needs_input_grad[1]:
            # dp_i / d alpha = (-p_i log p_i + s_i (x_i - tau')) / (alpha - 1),
            # tau' = (sum s x - sum p log p) / sum s (keeps the sum at 1).
            plogp = torch.where(pos, p * p.clamp_min(TINY).log(), torch.zeros_like(p))
            sx = torch.where(pos, s * xc, torch.zeros_like(p))
            tau_d = (sx.sum(dim, keepdim=True) - plogp.sum(dim, keepdim=True)) / sum_s
            dp_da = (-plogp + sx - s * tau_d) / (alpha - 1.0)
            dalpha = (g * dp_da).sum(dim, keepdim=True).sum_to_size(alpha.shape).to(ctx.alpha_dtype)
        return dx.to(grad.dtype), dalpha, None, None


def entmax_bisect(
    x: Tensor, alpha: float | Tensor = 1.5, dim: int = -1, n_iter: int = BISECT_STEPS
) -> Tensor:
    """alpha-entmax along ``dim`` by bisection on the threshold, for any ``alpha > 1``.

    Args:
        x: Scores. ``-inf`` entries get exactly 0; an all ``-inf`` row gives all zeros; a row holding ``+inf``
            or NaN gives NaN (as softmax).
        alpha: A float, or a tensor broadcastable to ``x`` (e.g. one value per head, shape (1, H, 1, 1));
            differentiable when it requires grad. ``alpha -> 1`` approaches softmax, ``alpha = 2`` is sparsemax.
        dim: Dimension to normalise over.
        n_iter: Bisection steps (50 reaches float32/float64 resolution of the threshold).

    Returns:
        Probabilities, same shape and dtype as ``x``.
    """
    if not torch.is_tensor(alpha):
        if not float(alpha) > 1.0:
            raise ValueError(f"entmax_bisect needs alpha > 1, got alpha={alpha!r}")
        alpha_t = torch.tensor(float(alpha), dtype=compute_dtype(x), device=x.device)
    else:
        alpha_t = alpha
        if not alpha_t.is_meta and bool((alpha_t.detach() <= 1.0).any()):
            raise ValueError(
                f"entmax_bisect needs alpha > 1 everywhere, got min alpha={alpha_t.min().item()}"
            )
    # Give alpha x's number of dims so it broadcasts with the reduced (keepdim) rows.
    if alpha_t.dim() < x.dim():
        alpha_t = alpha_t.reshape((1,) * (x.dim() - alpha_t.dim()) + tuple(alpha_t.shape))
    return _EntmaxBisectFunction.apply(x, alpha_t, dim, n_iter)
