"""alpha-entmax with a learnable alpha per head (Correia, Niculae, Martins 2019, "Adaptively Sparse Transformers").

Each attention head ``h`` normalises its scores with its own ``alpha_h`` in ``(1, 2]`` (``alpha -> 1``:
softmax, ``1.5``: entmax-1.5, ``2``: sparsemax), learned with the rest of the network:

* :func:`entmax_adaptive`: alpha-entmax along the last dim of (B, H, N, M) scores with a per-head alpha,
  differentiable in the scores and in alpha (the closed form of the paper's appendix, computed from the
  probabilities alone, so backward keeps no scores).
* :func:`bounded_alpha`: the map from the stored parameter to the alpha used, a clamp into
  ``[ALPHA_MIN, ALPHA_MAX]`` (see its docstring for why a clamp and not a reparametrisation).
* :func:`adaptive_attention_probs`: materialised attention probabilities (B, H, N, M) with a learned alpha.
* :func:`initial_alpha`, :func:`alpha_parameter`, :func:`used_alphas`: the per-head parameter, its start
  and the alphas it stands for. Putting it on a model's layers and reading it back
  (:func:`~sparsedino.attention.layers.enable_learned_alpha`, :func:`~sparsedino.attention.layers.learned_alphas`)
  is layer code, in :mod:`sparsedino.attention.layers`: this module knows no layer.

Masking and precision follow :mod:`sparsedino.attention.entmax`: ``-inf`` scores get exactly 0, a fully
masked row gives zeros (no NaN), a row holding ``+inf`` or NaN gives NaN; computed in float32 (float64 for
float64 inputs) and returned in the input dtype.
"""

from __future__ import annotations

import torch
from timm.layers import register_notrace_function
from torch import Tensor, nn

from sparsedino.attention.alpha_entmax import BISECT_STEPS, _bisect_forward
from sparsedino.attention.gradients import TINY as _TINY
from sparsedino.attention.gradients import entmax_grad, entmax_support_weights
from sparsedino.attention.normalizers import Normalizer, parse_normalizer
from sparsedino.attention.ops import masked_scores
from sparsedino.attention.precision import autocast_inputs, compute_dtype

__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "adaptive_attention_probs",
    "alpha_parameter",
    "bounded_alpha",
    "entmax_adaptive",
    "initial_alpha",
    "used_alphas",
]

# The learned alpha lives in [ALPHA_MIN, ALPHA_MAX], inside (1, 2]. Below ~1.01 alpha-entmax is softmax to
# float32 precision while its alpha gradient carries a 1 / (alpha - 1)^2 factor (noise, not signal);
# above 2 the mapping is no longer the sparse family the paper studies (sparsemax is its sparsest member).
ALPHA_MIN = 1.01
ALPHA_MAX = 2.0
# Newton steps on the threshold before rows that have not converged are solved by bisection.
NEWTON_STEPS = 8
# Accepted |sum(p) - 1| before renormalisation, per unit of the exponent 1 / (alpha - 1): p = d^(1/(alpha-1))
# amplifies the rounding of d by that exponent (Newton itself has converged by then: the measured failures at
# a fixed tolerance did not change between 6 and 12 steps, only with alpha).
_MASS_TOL = {torch.float32: 1e-6, torch.float64: 1e-14}


def _per_head(alpha: Tensor, x: Tensor) -> Tensor:
    """``alpha`` shaped to broadcast with the rows of ``x``: (H,) -> (1, H, 1, 1) for (B, H, N, M) scores."""
    if alpha.dim() == 1 and x.dim() >= 3 and alpha.shape[0] == x.shape[-3] and alpha.shape[0] != 1:
        return alpha.reshape(alpha.shape[0], *([1] * 2))  # (H, 1, 1): broadcasts over (..., H, N, M)
    return alpha


def _newton_forward(x: Tensor, alpha: Tensor, steps: int = NEWTON_STEPS) -> Tensor:
    """alpha-entmax of ``x`` (compute dtype) along the last dim: Newton on the threshold, bisection fallback.

    With ``z = (alpha - 1) x`` (row max moved to 0), ``d = (z - tau)_+`` and ``q = 1 / (alpha - 1)``, the
    threshold solves ``||d||_q = 1``. That q-norm is convex and decreasing in ``tau`` and nearly linear (as
    entmax-1.5's 2-norm), so Newton from the lower bound ``tau = -1`` rises monotonically to the root in a
    few steps, each one pass with one ``pow``; bisection needs ~50 such passes. Rows whose mass is not 1 to
    the dtype's precision after ``steps`` are solved again by bisection, so the result is exact either way.

    Returns:
        Probabilities (rows renormalised), zeros for fully masked rows, NaN for rows holding +inf or NaN.
    """
    am1 = alpha - 1.0
    z = x * am1
    m = z.amax(-1, keepdim=True)
    finite = m > float("-inf")
    z = z - torch.where(finite, m, torch.zeros_like(m))  # row max 0: tau in [-1, 0)
    q = 1.0 / am1
    tau = torch.full_like(m, -1.0)
    for _ in range(steps):
        d = (z - tau).clamp_min(0.0)
        dq1 = torch.where(d > 0, d.pow(q - 1.0), torch.zeros_like(d))  # d^(q-1), 0 off the support
        s_q1 = dq1.sum(-1, keepdim=True)
        norm = (dq1 * d).sum(-1, keepdim=True).pow(am1)  # ||d||_q
        tau = tau + (norm - 1.0) * norm.pow(q - 1.0) / s_q1.clamp_min(_TINY)
    p = (z - tau).clamp_min(0.0).pow(q)
    mass = p.sum(-1, keepdim=True)
    p = p / mass.clamp_min(_TINY)
    undefined = (m == float("inf")) | m.isnan()
    ok = ((mass - 1.0).abs() <= _MASS_TOL[x.dtype] * q) | ~finite | undefined
    p = torch.where(finite, p, torch.zeros_like(p))
    p = torch.where(undefined, torch.full_like(p, float("nan")), p)  # +inf / NaN row: NaN, as softmax
    if not bool(ok.all()):  # rare slow rows: bisection, only those rows
        rows = ~ok.squeeze(-1)
        p[rows] = _bisect_forward(x[rows], alpha.expand_as(m)[rows], -1, BISECT_STEPS)
    return p


class _EntmaxAdaptiveFunction(torch.autograd.Function):
    """alpha-entmax along the last dim; backward from the probabilities only (no scores saved)."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor) -> Tensor:  # type: ignore[override]
        ct = compute_dtype(x)
        a = alpha.to(ct)
        p = _newton_forward(x.to(ct), a)  # (..., N, M), compute dtype
        ctx.alpha_shape, ctx.alpha_dtype = alpha.shape, alpha.dtype
        ctx.save_for_backward(p, a)
        return p.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None]:  # type: ignore[override]
        p, alpha = ctx.saved_tensors
        g = grad.to(p.dtype)
        pos = p > 0
        # Scores: dp_i/dx_j = s_i (delta_ij - s_j / sum s) with s = p^(2 - alpha) on the support.
        s, sum_s = entmax_support_weights(p, alpha, -1)
        dx = entmax_grad(p, g, alpha, -1, weights=(s, sum_s))
        dalpha = None
        if ctx.needs_input_grad[1]:
            # Correia et al. 2019, appendix: with a = alpha - 1 and u = s / sum s,
            # dp_i/dalpha = (p_i - u_i) / a^2 - (p_i log p_i - u_i sum_j p_j log p_j) / a.
            # (Their form uses the scores through s_i x_i; on the support s_i x_i = p_i / a + s_i tau / a,
            # and the tau term cancels, so the probabilities suffice.)
            a = alpha - 1.0
            u = s / sum_s
            plogp = torch.where(pos, p * p.clamp_min(_TINY).log(), torch.zeros_like(p))
            dp_da = (p - u) / (a * a) - (plogp - u * plogp.sum(-1, keepdim=True)) / a
            dp_da = torch.where(pos, dp_da, torch.zeros_like(dp_da))  # 0 off the support (and in NaN rows)
            dalpha = (g * dp_da).sum(-1, keepdim=True)  # (..., N, 1): one term per row
            dalpha = dalpha.sum_to_size(alpha.shape).reshape(ctx.alpha_shape).to(ctx.alpha_dtype)
        return dx.to(grad.dtype), dalpha


def entmax_adaptive(x: Tensor, alpha: Tensor) -> Tensor:
    """alpha-entmax of ``x`` along its last dim with a per-head (or per-row) alpha, differentiable in both.

    Args:
        x: Scores, e.g. attention logits (B, H, N, M). ``-inf`` entries get exactly 0; an all ``-inf`` row
            gives all zeros; a row holding ``+inf`` or NaN gives NaN (as softmax).
        alpha: Values in ``(1, 2]``: shape (H,) (one per head of (B, H, N, M) scores) or any shape that
            broadcasts to ``x.shape[:-1] + (1,)`` such as (1, H, 1, 1). A Python float is accepted too.

    Returns:
        Probabilities, same shape and dtype as ``x`` (float16 / bfloat16 are computed in float32).

    Raises:
        ValueError: ``alpha`` outside ``(1, 2]`` or not broadcastable to the rows of ``x``.
    """
    if not torch.is_tensor(alpha):
        alpha = torch.tensor(float(alpha), dtype=compute_dtype(x), device=x.device)
    alpha_b = _per_head(alpha, x)
    rows = (*x.shape[:-1], 1)
    try:
        fits = torch.broadcast_shapes(tuple(alpha_b.shape), rows) == rows
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"entmax_adaptive: alpha of shape {tuple(alpha.shape)} does not broadcast to the rows {rows} of "
            "the scores (give one value per head, shape (H,) or (1, H, 1, 1))"
        )
    if not alpha.is_meta:
        lo, hi = float(alpha.detach().min()), float(alpha.detach().max())
        if not (lo > 1.0 and hi <= 2.0):
            raise ValueError(f"entmax_adaptive needs alpha in (1, 2], got values in [{lo:.6g}, {hi:.6g}]")
    return _EntmaxAdaptiveFunction.apply(x, alpha_b)


def _entmax_adaptive_unchecked(x: Tensor, alpha: Tensor) -> Tensor:
    """:func:`entmax_adaptive` for an alpha known to be in range (no host sync on its values)."""
    return _EntmaxAdaptiveFunction.apply(x, _per_head(alpha, x))


class _BoundedAlpha(torch.autograd.Function):
    """Clamp into [lo, hi] whose gradient also flows where it would bring an outside value back in."""

    @staticmethod
    def forward(ctx, raw: Tensor, lo: float, hi: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(raw)
        ctx.lo, ctx.hi = lo, hi
        return raw.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (raw,) = ctx.saved_tensors
        # Gradient descent moves raw by -grad: let it through inside, and outside only towards the range.
        keep = (
            ((raw >= ctx.lo) & (raw <= ctx.hi))
            | ((raw > ctx.hi) & (grad > 0))
            | ((raw < ctx.lo) & (grad < 0))
        )
        return torch.where(keep, grad, torch.zeros_like(grad)), None, None


@register_notrace_function  # a torch.fx leaf: an autograd.Function cannot take proxies
def bounded_alpha(raw: Tensor) -> Tensor:
    """The alpha a learned parameter stands for: ``raw`` clamped into ``[ALPHA_MIN, ALPHA_MAX]``.

    Why a clamp and not a reparametrisation such as ``1 + sigmoid(theta)``: inside the range the map is the
    identity, so the stored parameter *is* alpha (init exactly 1.5, readable in the state dict), its
    gradient is the paper's closed form unchanged, and the optimiser's step size means the same at every
    alpha; a sigmoid squashes the gradient near both ends and reaches sparsemax (alpha = 2) only in the
    limit. A plain clamp has zero gradient outside the range, which would strand a parameter that one
    large step pushed out; here the gradient still flows when descending it moves the parameter back
    towards the range (and only then), so the clamp acts like a projection without touching the optimiser.

    Args:
        raw: The stored parameter, any shape (e.g. (H,)).

    Returns:
        Alpha in ``[ALPHA_MIN, ALPHA_MAX]``, same shape and dtype.
    """
    return _BoundedAlpha.apply(raw, ALPHA_MIN, ALPHA_MAX)


@register_notrace_function  # a torch.fx leaf (graph node ``*attn.adaptive_attention_probs``), as attention_map
def adaptive_attention_probs(
    q: Tensor, k: Tensor, alpha: Tensor, scale: float, attn_mask: Tensor | None = None
) -> Tensor:
    """Attention probabilities (B, H, N, M) of alpha-entmax with one alpha per head (differentiable).

    Args:
        q: Queries (B, H, N, D).
        k: Keys (B, H, M, D).
        alpha: Per-head alpha (H,) in ``(1, 2]``, not checked (e.g. :func:`bounded_alpha` of a parameter).
        scale: Score scale.
        attn_mask: Bool (True = attend) or additive float mask broadcastable to (B, H, N, M).

    Returns:
        Probabilities (B, H, N, M) in the (autocast) input dtype; scores and normaliser in float32
        (float64 for float64 inputs), as :func:`~sparsedino.attention.ops.attention_probs`.
    """
    (q, k), precision = autocast_inputs(q, k)
    compute = compute_dtype(q)
    with precision:
        scores = masked_scores(q.to(compute), k.to(compute), scale, attn_mask)  # (B, H, N, M)
        return _entmax_adaptive_unchecked(scores, alpha).to(q.dtype)


def initial_alpha(normalizer: str | float | Normalizer) -> float:
    """The alpha a learned-alpha layer with ``normalizer`` starts from (1.5 for "entmax15").

    Also the check of a user's setting (``model.learn_alpha`` with ``model.normalizer``), hence any spelling.

    Raises:
        ValueError: ``normalizer`` is not an entmax normaliser with alpha in ``[ALPHA_MIN, ALPHA_MAX]``
            (softmax, alpha = 1, is outside the learnable range: it has no sparse family to start from).
    """
    spec = parse_normalizer(normalizer)
    if not ALPHA_MIN <= spec.alpha <= ALPHA_MAX:
        raise ValueError(
            f"a learned alpha needs an entmax normaliser with alpha in [{ALPHA_MIN}, {ALPHA_MAX}] to start "
            f"from (e.g. 'entmax15'), got {spec.name!r}"
        )
    return spec.alpha


def alpha_parameter(
    num_heads: int,
    spec: Normalizer,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Parameter:
    """A per-head alpha parameter (H,) initialised at ``spec``'s alpha (1.5 for entmax-1.5).

    Raises:
        ValueError: see :func:`initial_alpha`.
    """
    init = initial_alpha(spec)
    dtype = dtype if dtype is not None and dtype.is_floating_point else torch.float32
    return nn.Parameter(torch.full((num_heads,), init, device=device, dtype=dtype))


def used_alphas(raw: Tensor) -> list[float]:
    """The alphas a stored parameter (H,) stands for (:func:`bounded_alpha`), as floats to 6 decimals."""
    with torch.no_grad():
        return [round(float(a), 6) for a in bounded_alpha(raw.detach().float())]
