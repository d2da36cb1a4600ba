"""Exact sparse normalisers: entmax-1.5, alpha-entmax (bisection) and sparsemax.

All three map scores ``x`` to probabilities along ``dim`` that can be exactly zero.

* ``entmax15``: ``p_i = max(x_i / 2 - tau, 0) ** 2`` with ``tau`` such that ``sum(p) == 1``. Solved without a
  sort on the common path: a few Newton steps on ``h(tau) = ||max(z - tau, 0)||_2 - 1`` (``z = x / 2``)
  starting from the lower bound ``max(z) - 1``. ``h`` is convex and decreasing, so the iterates increase
  monotonically towards the root and never overshoot: the candidate support ``{z > tau}`` always contains the
  true support. On that support ``tau`` has a closed form (a quadratic); a row is accepted when the closed-form
  ``tau`` reproduces exactly the support it was computed on (a KKT check). The rare rows that fail the check
  are solved exactly by sorting.
* ``entmax_bisect``: any ``alpha > 1`` (float or tensor broadcastable to ``x``, e.g. one per head),
  differentiable in ``x`` and ``alpha`` (in :mod:`sparsedino.attention.alpha_entmax`, re-exported here).
* ``sparsemax``: Euclidean projection onto the simplex, sort based (likewise).

Masking convention (all three): entries equal to ``-inf`` get exactly 0; a row that is entirely ``-inf`` gets
all zeros (never NaN), which is what a fully masked attention row should contribute. A row holding ``+inf``
(or NaN) gives NaN everywhere, as softmax does: a score that overflowed is reported, not turned into a
plausible distribution (so NaN checks downstream, e.g. the training loss, stop the run). float16 / bfloat16
inputs are computed in float32 and returned in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsedino.attention import compiled, native
from sparsedino.attention.alpha_entmax import entmax_bisect, sparsemax  # (re-exported: one import path)
from sparsedino.attention.gradients import TINY
from sparsedino.attention.precision import compute_dtype

__all__ = [
    "entmax15",
    "entmax15_backward",
    "entmax15_forward",
    "entmax15_recompute",
    "entmax_bisect",
    "sparsemax",
    "thresholds_supported",
]

# Newton steps before the closed form: enough for > 99% of attention rows at every scale we measured (the
# rest are fixed by the exact fallback); each step is one pass over the scores.
NEWTON_STEPS = 4
# Elements per row block in the eager CPU path (fits in L2 cache and below malloc's mmap threshold).
_EAGER_BLOCK = 1 << 15


# --------------------------------------------------------------------------------------------------------------
# entmax-1.5 forward: sort-free solver (compiled when possible) + exact sort fallback for the rows it rejects
# --------------------------------------------------------------------------------------------------------------
def _entmax15_newton(
    x: Tensor, dim: int, steps: int, scale: float = 1.0, bias: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Sort-free entmax-1.5 of ``x * scale + bias`` along ``dim`` (scale and mask fused into the passes).

    Returns:
        ``(p, ok, all_ok)``: probabilities in ``x``'s dtype, a bool tensor (``x`` shape with ``dim`` kept as 1)
        telling which rows passed the exactness check, and its conjunction.
    """
    z = x * (0.5 * scale) if bias is None else (x * scale + bias) * 0.5
    m = z.amax(dim, keepdim=True)
    finite = m != float("-inf")  # False only for fully masked rows (NaN rows stay NaN)
    z = z - torch.where(finite, m, torch.zeros_like(m))  # row max is now 0, so tau* lies in [-1, -1/sqrt(n)]
    tau = torch.full_like(m, -1.0)
    for _ in range(steps):
        # Newton on h(tau) = ||(z - tau)_+||_2 - 1: nearly linear in tau, so few steps are needed.
        d = (z - tau).clamp_min(0.0)
        s1 = d.sum(dim, keepdim=True)
        norm = (d * d).sum(dim, keepdim=True).sqrt()
        tau = tau + (norm - 1.0) * norm / s1.clamp_min(TINY)
    # Support statistics at the last tau: count, sum and sum of squares of z over {z > tau}.
    support = z > tau
    zs = torch.where(support, z, torch.zeros_like(z))
    cnt = support.sum(dim, keepdim=True, dtype=z.dtype)
    s1 = zs.sum(dim, keepdim=True)
    s2 = (zs * zs).sum(dim, keepdim=True)
    # Closed form on the support: cnt * tau^2 - 2 * tau * s1 + s2 - 1 = 0, smaller root.
    mean = s1 / cnt
    delta = (1.0 - s2 + s1 * mean) / cnt
    tau = mean - delta.clamp_min(0.0).sqrt()
    d = (z - tau).clamp_min(0.0)
    p = torch.where(finite, d * d, torch.zeros_like(d))
    undefined = (m == float("inf")) | m.isnan()  # +inf or NaN in the row (amax propagates NaN)
    p = torch.where(undefined, torch.full_like(p, float("nan")), p)  # the whole row NaN, as softmax
    # KKT check: the closed-form tau must keep exactly the support it was computed on.
    same_support = (z > tau).sum(dim, keepdim=True, dtype=z.dtype) == cnt
    ok = (same_support & (delta >= 0.0)) | ~finite | undefined
    return p, ok, ok.all()


def _nan_where_posinf(x: Tensor, dim: int) -> Tensor | None:
    """Rows (``dim`` kept) of ``x`` holding ``+inf``, or None when there is none (one pass over ``x``)."""
    top = x.max()
    if not (bool(torch.isposinf(top)) or bool(top.isnan())):  # the common case: a single reduction
        return None
    rows = torch.isposinf(x).any(dim, keepdim=True)  # (a NaN anywhere hides +inf from max: look per row)
    return rows if bool(rows.any()) else None


def _entmax15_block(x: Tensor, scale: float) -> Tensor:
    """Exact entmax-1.5 of a 2-D block ``x * scale`` along its rows with as few tensor ops as possible.

    The eager CPU path runs this on cache-sized blocks, where each op's fixed cost outweighs its arithmetic:
    the same algorithm as :func:`_entmax15_newton`, written with one reused buffer, in-place ops, no
    ``where``: Newton steps from ``tau = -1``; the closed form on the support of the last iterate from the
    sums of ``d = (z - tau)_+`` (for the shift ``u`` of ``tau``: ``c u^2 - 2 S1 u + S2 - 1 = 0``); the KKT
    check; the sort for the rows it rejects.
    """
    z = x * (0.5 * scale)
    m = z.amax(-1, keepdim=True)
    z -= m.masked_fill(m == float("-inf"), 0.0)  # row max 0; fully masked rows stay -inf (-> p = 0)
    tau = torch.full_like(m, -1.0)
    d = torch.empty_like(z)
    for _ in range(NEWTON_STEPS):
        torch.sub(z, tau, out=d).clamp_min_(0.0)
        s1 = d.sum(-1, keepdim=True)
        norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        tau = tau + (norm - 1.0) * norm / s1.clamp_min(TINY)
    torch.sub(z, tau, out=d).clamp_min_(0.0)
    cnt = (d > 0).sum(-1, keepdim=True, dtype=z.dtype)
    s1 = d.sum(-1, keepdim=True)
    s2 = torch.linalg.vector_norm(d, dim=-1, keepdim=True).square_()
    disc = s1 * s1 - cnt * (s2 - 1.0)
    tau = tau + (s1 - disc.clamp_min(0.0).sqrt()) / cnt.clamp_min(1.0)
    torch.sub(z, tau, out=d).clamp_min_(0.0)
    ok = ((d > 0).sum(-1, keepdim=True, dtype=z.dtype) == cnt) & (disc >= 0)
    ok |= m.isnan() | (m == float("-inf"))
    p = d.square_()
    if not bool(ok.all()):  # rare rows (near-ties at the threshold): exact sort, only those rows
        rows = ~ok.squeeze(-1)
        p[rows] = _entmax15_sort(x[rows] * (0.5 * scale))
    return p


def _rowwise_blocks(fn, x: Tensor, dim: int, *others: Tensor, inplace: bool = False) -> Tensor:
    """Apply a row-wise ``fn(x_rows, *other_rows)`` to blocks of about ``_EAGER_BLOCK`` elements.

    Used by the eager CPU path: there every op of the solver allocates a full-size temporary; on blocks small
    enough for the cache (and below malloc's mmap threshold) they stay cached and are recycled. ``inplace``
    writes each block's result over its input rows (a temporary the caller owns; rows are independent).
    """
    x2 = x.movedim(dim, -1)
    shape = x2.shape
    x2 = x2.reshape(-1, shape[-1])
    o2 = [o.movedim(dim, -1).reshape(-1, shape[-1]) for o in others]
    inplace = inplace and x2.data_ptr() == x.data_ptr() and x.movedim(dim, -1).is_contiguous()
    out = x2 if inplace else torch.empty_like(x2)
    step = max(1, _EAGER_BLOCK // max(1, shape[-1]))
    for r in range(0, x2.shape[0], step):
        res = fn(x2[r : r + step], *(o[r : r + step] for o in o2))
        if res.data_ptr() != out[r : r + step].data_ptr():  # fn may have written in place already
            out[r : r + step] = res
    return out.reshape(shape).movedim(-1, dim)


def _entmax15_sort(z: Tensor) -> Tensor:
    """Exact entmax-1.5 of ``z = x / 2`` along the last dim by sorting (used for the few rejected rows)."""
    m = z.amax(-1, keepdim=True)
    z = z - torch.where(m > float("-inf"), m, torch.zeros_like(m))  # all -inf rows stay -inf (no NaN)
    zs, _ = torch.sort(z, dim=-1, descending=True)
    valid = zs > float("-inf")
    zs0 = torch.where(valid, zs, torch.zeros_like(zs))
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    mean = zs0.cumsum(-1) / k
    mean_sq = (zs0 * zs0).cumsum(-1) / k
    delta = (1.0 - k * (mean_sq - mean * mean)) / k
    taus = mean - delta.clamp_min(0.0).sqrt()
    support = ((taus <= zs) & valid).sum(-1, keepdim=True).clamp_min(1)
    tau = taus.gather(-1, support - 1)
    p = (z - tau).clamp_min(0.0) ** 2
    return torch.where(valid.any(-1, keepdim=True), p, torch.zeros_like(p))


def thresholds_supported(x: Tensor, scale: float) -> bool:
    """Whether :func:`entmax15_forward` can store per-row thresholds for ``x`` (the native CPU kernels)."""
    return compiled.entmax15_backend(x, -1, scale, _EAGER_BLOCK) == "native"


def _scaled(x: Tensor, scale: float, bias: Tensor | None, inplace: bool) -> tuple[Tensor, float]:
    """``x * scale + bias`` (in place when ``x`` is a temporary the caller owns) and the scale left to apply."""
    if bias is None:
        return x, scale
    if inplace:
        return x.mul_(scale).add_(bias), 1.0
    return torch.add(x * scale, bias), 1.0


def entmax15_forward(
    x: Tensor,
    dim: int = -1,
    scale: float = 1.0,
    bias: Tensor | None = None,
    inplace: bool = False,
    thresholds: Tensor | None = None,
) -> Tensor:
    """Exact entmax-1.5 of ``x * scale + bias`` (no autograd), in ``x``'s dtype (float32 or float64).

    ``bias`` (broadcastable to ``x``, e.g. an additive ``-inf`` attention mask) and ``scale`` are applied
    inside the fused passes, so attention scores need no extra full-size temporaries. ``inplace=True`` lets
    the kernels overwrite ``x`` (a temporary the caller owns) with the probabilities. ``thresholds`` (a
    contiguous tensor of ``x.shape[:-1] + (2,)``, only when :func:`thresholds_supported`, ``dim`` last)
    receives each row's threshold for :func:`entmax15_recompute`.
    """
    backend = compiled.entmax15_backend(x, dim, scale, _EAGER_BLOCK)
    native_path = backend == "native"
    if backend != "compiled":
        inplace = inplace and x.movedim(dim, -1).is_contiguous()
        x, scale = _scaled(x, scale, bias, inplace)
        inplace = inplace or bias is not None  # x is now a temporary of ours either way
        posinf = _nan_where_posinf(x, dim)  # before x may be overwritten; the fused paths treat NaN rows only
        if not native_path:
            p = _rowwise_blocks(lambda xb: _entmax15_block(xb, scale), x, dim, inplace=inplace)
        else:
            x_last = x.movedim(dim, -1).contiguous()
            p = native.entmax15_rows(x_last, scale, NEWTON_STEPS, inplace=inplace, thresholds=thresholds)
            p = p.movedim(-1, dim)
        return p if posinf is None else p.masked_fill_(posinf, float("nan"))
    p, ok, all_ok = compiled.call("entmax15_newton", _entmax15_newton, x, dim, NEWTON_STEPS, scale, bias)
    if not x.is_meta and not bool(
        all_ok
    ):  # meta tensors (shape-only init, e.g. timm/accelerate) have no rows
        # Rare rows (near-ties at the threshold): solve exactly by sorting, only those rows.
        xs = x * scale if bias is None else x * scale + bias
        p_last = p.movedim(dim, -1)
        rows = ~ok.movedim(dim, -1).squeeze(-1)
        p_last[rows] = _entmax15_sort(xs.movedim(dim, -1)[rows] * 0.5)
        p = p_last.movedim(-1, dim)
    return p


def _entmax15_grad_block(p: Tensor, grad: Tensor, scale: float, inplace: bool) -> Tensor:
    """:func:`_entmax15_grad` of a 2-D block in few tensor ops (``inplace``: the result overwrites ``grad``)."""
    g = p.sqrt()
    q = torch.matmul(g.unsqueeze(-2), grad.unsqueeze(-1)).squeeze(-1)  # sum(g * grad) per row, no temporary
    q /= g.sum(-1, keepdim=True).clamp_min(TINY)
    out = grad.sub_(q) if inplace else grad - q
    out.mul_(g)
    return out.mul_(scale) if scale != 1.0 else out


def entmax15_recompute(x: Tensor, scale: float, bias: Tensor | None, thresholds: Tensor) -> Tensor:
    """The probabilities of :func:`entmax15_forward` from the scores ``x`` (last dim, overwritten) and the
    thresholds it stored: one pass instead of a solve, bit-identical to the forward."""
    x, scale = _scaled(x, scale, bias, inplace=True)
    posinf = _nan_where_posinf(x, -1)
    p = native.entmax15_recompute_rows(x, scale, thresholds)
    return p if posinf is None else p.masked_fill_(posinf, float("nan"))


def _entmax15_grad(p: Tensor, grad: Tensor, dim: int, scale: float) -> Tensor:
    """Backward of entmax-1.5 from its output: with g = sqrt(p), dz = g * dp - g * sum(g * dp) / sum(g)."""
    g = p.sqrt()
    gd = g * grad
    q = gd.sum(dim, keepdim=True) / g.sum(dim, keepdim=True).clamp_min(TINY)
    return (gd - g * q) * scale


def entmax15_backward(
    p: Tensor, grad: Tensor, dim: int = -1, scale: float = 1.0, inplace: bool = False
) -> Tensor:
    """Gradient of entmax-1.5 w.r.t. its input (times ``scale``), from its output ``p`` and ``grad``.

    Computed in float32 (float64 stays float64) and returned in ``grad``'s dtype; ``inplace=True`` lets
    the native CPU kernel overwrite ``grad`` (a temporary the caller owns).
    """
    ct = compute_dtype(grad)
    p, grad_c = p.to(ct), grad.to(ct)
    backend = compiled.entmax15_backend(p, dim, 1.0, _EAGER_BLOCK, last_dim_only=True)
    if backend == "native":
        inplace = inplace and grad_c.is_contiguous() and grad_c.data_ptr() == grad.data_ptr()
        out = native.entmax15_grad_rows(p.contiguous(), grad_c.contiguous(), float(scale), inplace=inplace)
    elif backend == "eager":
        inplace = (inplace or grad_c.data_ptr() != grad.data_ptr()) and grad_c.movedim(
            dim, -1
        ).is_contiguous()
        out = _rowwise_blocks(
            lambda gb, pb: _entmax15_grad_block(pb, gb, float(scale), inplace),
            grad_c,
            dim,
            p,
            inplace=inplace,
        )
    else:
        out = compiled.call("entmax15_grad", _entmax15_grad, p, grad_c, dim, float(scale))
    return out.to(grad.dtype)


class _Entmax15Function(torch.autograd.Function):
    """entmax-1.5 with a backward that needs only the output (no scores kept)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        p = entmax15_forward(x.to(compute_dtype(x)), dim).to(x.dtype)
        ctx.dim = dim
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        return entmax15_backward(p, grad, ctx.dim), None


def entmax15(x: Tensor, dim: int = -1) -> Tensor:
    """Exact entmax-1.5 along ``dim``.

    Args:
        x: Scores, any shape and floating dtype. ``-inf`` entries (masked) get exactly 0; a row that is entirely
            ``-inf`` gives all zeros, never NaN; a row holding ``+inf`` or NaN gives NaN (as softmax).
        dim: Dimension to normalise over.

    Returns:
        Probabilities, same shape and dtype as ``x`` (float16 / bfloat16 are computed in float32).
    """
    return _Entmax15Function.apply(x, dim)
