"""The TorchScript path of :class:`~sparsedino.attention.SparseAttention`: plain tensor ops, no autograd.Function.

``torch.jit.script`` cannot compile a ``torch.autograd.Function`` (our fused attention op and the
normalisers' output-only backward) nor the Python dispatch around them (native kernels, torch.compile,
adasplash). timm takes the same route for its own autograd-Function layers: its memory-efficient
activations (``timm.layers.activations_me``) are replaced by plain-op versions when a model is scripted.
Here the replacement is chosen inside the code that TorchScript compiles (``torch.jit.is_scripting()``
branches), so any model scripts, whether or not it was built under ``timm.set_scriptable(True)``.

* Forward: the same exact solvers as the eager fallbacks (entmax-1.5 and sparsemax by sorting, other alphas by
  bisection), on the scores detached.
* Backward: through a surrogate with the exact alpha-entmax Jacobian ``J = diag(s) - s s^T / sum(s)``,
  ``s = p ** (2 - alpha)`` on the support (zero elsewhere): ``p + (J x - stop_grad(J x))`` has the value ``p``
  and the gradient ``J^T g``.

The probabilities (B, H, N, M) are always materialised and every row is sorted: slower than the eager path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsedino.attention.alpha_entmax import BISECT_STEPS, _bisect_forward, _sparsemax_forward
from sparsedino.attention.entmax import _entmax15_sort
from sparsedino.attention.gradients import TINY
from sparsedino.attention.normalizers import canonical_alpha
from sparsedino.attention.ops import masked_scores
from sparsedino.attention.precision import compute_dtype

__all__ = ["attention_probs", "probs"]


def probs(scores: Tensor, alpha: float, tiny: float = TINY, steps: int = BISECT_STEPS) -> Tensor:
    """alpha-entmax of ``scores`` along the last dim (1 = softmax); exact values, exact gradient w.r.t. scores.

    (``tiny`` and ``steps`` are arguments because TorchScript cannot read module globals.)
    """
    if alpha == 1.0:
        return torch.softmax(scores, -1)
    x = scores.detach().to(compute_dtype(scores))
    if alpha == 1.5:
        p = _entmax15_sort(x * 0.5)
    elif alpha == 2.0:
        p = _sparsemax_forward(x)
    else:
        p = _bisect_forward(x, torch.tensor(alpha, dtype=x.dtype, device=x.device), -1, steps, tiny)
    p = p.to(scores.dtype)
    if not scores.requires_grad:
        return p
    support = p > 0
    s = torch.where(support, p.clamp_min(tiny).pow(2.0 - alpha), torch.zeros_like(p))
    x_s = torch.where(support, scores, torch.zeros_like(scores))  # masked -inf entries stay out (0 * inf)
    sx = s * x_s
    jx = sx - s * sx.sum(-1, keepdim=True) / s.sum(-1, keepdim=True).clamp_min(tiny)
    return p + (jx - jx.detach())


def attention_probs(q: Tensor, k: Tensor, normalizer: str, scale: float, attn_mask: Tensor | None) -> Tensor:
    """Probabilities (B, H, N, M) for the canonical ``normalizer`` name, as :func:`~sparsedino.attention.ops.attention_probs`."""
    return probs(masked_scores(q, k, scale, attn_mask), canonical_alpha(normalizer))
