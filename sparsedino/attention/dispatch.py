"""Which kernels run: the one dispatch table of the attention op (read top to bottom, first match wins).

**Path of** ``attention(q, k, v, normalizer, ...)`` (:func:`attention_path`, called by :mod:`.ops`):

=============  ==============================================  ==============================================
path           when                                            forward / backward
=============  ==============================================  ==============================================
"sdpa"         softmax (:attr:`.Normalizer.is_softmax`; before    ``F.scaled_dot_product_attention`` / autograd
               the autocast casts, SDPA does its own)
"materialise"  ``dropout_p > 0``                               :func:`.ops.attention_probs` + dropout, then
                                                               ``P @ V`` / autograd through the normaliser's
                                                               autograd function (:mod:`.entmax`)
"adasplash"    no mask and :func:`.backends.adasplash_usable`  adasplash's Triton kernels (forward and
               (CUDA, ``1 < alpha <= 2``, head dims, dtypes)   backward)
"fused"        otherwise                                       :class:`.chunked.SparseAttentionFunction`:
                                                               whole or tiled (``chunk_size``); rows below
=============  ==============================================  ==============================================

**Row kernels per normaliser** inside the fused op (:func:`normalize_scores` / :func:`normalizer_backward`;
gradient formulas in :mod:`.gradients`, one copy each):

=============  ==========================================  ===========================================
kind           forward (no autograd)                       backward (from the probabilities)
=============  ==========================================  ===========================================
"entmax15"     :func:`.entmax.entmax15_forward`            :func:`.entmax.entmax15_backward`
               (tiled + native: thresholds kept, backward  (backend as the forward's)
               rebuilds P with :func:`.entmax.entmax15_recompute`)
"sparsemax"    :func:`.alpha_entmax.sparsemax` (sort)      :func:`.gradients.entmax_grad`, alpha = 2
"bisect"       :func:`.alpha_entmax.entmax_bisect`         :func:`.gradients.entmax_grad`
"softmax"      ``torch.softmax``                           :func:`.gradients.softmax_grad`
=============  ==========================================  ===========================================

**entmax-1.5 backend** (:func:`.compiled.entmax15_backend`, the same choice forward and backward):

============  =====================================================  ========================================
backend       when                                                   kernels
============  =====================================================  ========================================
"native"      CPU float32/float64, policy allows native code, C      :mod:`.native` (``csrc/entmax15.c``)
              kernels built (backward: normalised dim last)
"eager"       CPU, large, several rows, no C kernels                 :func:`.entmax._entmax15_block` over
                                                                     cache-sized row blocks
"compiled"    otherwise (e.g. CUDA without adasplash)                :func:`.entmax._entmax15_newton` + sort
                                                                     fallback, ``torch.compile`` by policy
============  =====================================================  ========================================
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsedino.attention import backends
from sparsedino.attention.entmax import entmax15_backward, entmax15_forward
from sparsedino.attention.gradients import compute_dtype, entmax_grad, softmax_grad
from sparsedino.attention.normalizers import Normalizer, normalize, parse_normalizer

__all__ = ["attention_path", "normalize_scores", "normalizer_backward"]


def attention_path(
    q: Tensor, k: Tensor, v: Tensor, spec: Normalizer, attn_mask: Tensor | None, dropout_p: float
) -> str:
    """The path of one attention call: "sdpa", "materialise", "adasplash" or "fused" (first table).

    The op asks for "sdpa" first on its raw inputs, the rest on the autocast-cast ones.
    """
    if spec.is_softmax:
        return "sdpa"
    if dropout_p > 0.0:
        return "materialise"
    if attn_mask is None and backends.adasplash_usable(q, k, v, spec):
        return "adasplash"
    return "fused"


def normalize_scores(
    scores: Tensor,
    normalizer: str | Normalizer,
    scale: float,
    bias: Tensor | None,
    thresholds: Tensor | None = None,
) -> Tensor:
    """Probabilities of ``scores * scale + bias`` along the last dim, without autograd (attention op).

    ``scores`` is a temporary the caller owns (overwritten). ``thresholds``: see ``entmax15_forward``.
    """
    spec = parse_normalizer(normalizer)
    if spec.kind == "entmax15":
        return entmax15_forward(scores, -1, scale, bias, inplace=True, thresholds=thresholds)
    scores = scores * scale if bias is None else scores * scale + bias
    with torch.no_grad():
        return normalize(scores, spec)


def normalizer_backward(
    p: Tensor,
    grad: Tensor,
    normalizer: str | Normalizer,
    dim: int = -1,
    scale: float = 1.0,
    inplace: bool = False,
) -> Tensor:
    """Gradient w.r.t. the scores (times ``scale``) from the probabilities ``p`` only (attention op).

    Computed in float32 (float64 stays float64), returned in ``grad``'s dtype. ``inplace=True`` allows
    overwriting ``grad`` (a temporary the caller owns).
    """
    spec = parse_normalizer(normalizer)
    if spec.kind == "entmax15":
        return entmax15_backward(p, grad, dim, scale, inplace=inplace)
    out_dtype = grad.dtype
    compute = compute_dtype(grad)
    p, grad = p.to(compute), grad.to(compute)
    if spec.is_softmax:
        return softmax_grad(p, grad, dim, scale).to(out_dtype)
    # alpha-entmax (sparsemax at alpha = 2)
    return entmax_grad(p, grad, spec.alpha, dim, scale).to(out_dtype)
