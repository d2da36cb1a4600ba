"""Which kernels run: the one dispatch table of the attention op (read top to bottom, first match wins).

**Path of** ``attention(q, k, v, normalizer, ...)`` (:func:`attention_path`, called once per call by
:mod:`.ops`, on the inputs as given; the op then runs that path and no other):

=============  ==============================================  ==============================================
path           when                                            forward / backward
=============  ==============================================  ==============================================
"sdpa"         softmax (:attr:`.Normalizer.is_softmax`)        ``F.scaled_dot_product_attention`` / autograd
               (SDPA gets the inputs as given: its own casts)
"materialise"  ``dropout_p > 0``, or a float ``attn_mask``     :func:`.ops.attention_probs` + dropout, then
               needing a gradient (a learned position bias:    ``P @ V`` / autograd through the normaliser's
               the fused op gives q, k, v gradients only)      autograd function (:mod:`.entmax`)
"adasplash"    no mask and :func:`.backends.adasplash_usable`  adasplash's Triton kernels (forward and
               (CUDA, ``1 < alpha <= 2``, head dims, dtypes:   backward)
               those autocast will cast the inputs to)
"fused"        otherwise                                       :class:`.chunked.SparseAttentionFunction`:
                                                               whole or tiled (``chunk_size``); rows below
=============  ==============================================  ==============================================

A sparse attention *module* makes its own choice first (:meth:`.core.SparseCore._attend`, compiled by
TorchScript, so it reads what its normaliser setter stored from :attr:`.Normalizer.is_softmax`):
probabilities it must keep or show (unfused mode, attention dropout while training, a learned alpha, a
recorder or hooks) -> :func:`.core.attention_map`; softmax -> SDPA with timm's arguments (timm's output
bit for bit); otherwise the op above (:func:`.core.sparse_attention`), which then never sees softmax.

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

**Sparse products** inside the unchunked fused op (the probabilities and ``dS`` are zero off the support):

===================  ==============================================  =====================================
kernel               when                                            what
===================  ==============================================  =====================================
sparse ``P @ V``     :func:`sparse_kernels_pay` for P, V with        :func:`.native.sparse_matmul` (forward;
                     ``short_rows=True``                             ``dS @ K`` of a dense backward too)
sparse backward      entmax-1.5, and :func:`sparse_kernels_pay` for  :func:`.native.sparse_attention_backward`:
                     P, Q, K, V, dO                                  dP, dS, dQ, dK, dV on the support only
dense                otherwise                                       ``torch.matmul`` (BLAS)
===================  ==============================================  =====================================

:func:`sparse_kernels_pay`: CPU, one float32/float64 dtype, native kernels allowed and built, and at most
:data:`SPARSE_MAX_DENSITY` of the probabilities nonzero (or, for ``P @ V``, at most
:data:`SPARSE_SHORT_ROWS` keys: a GEMM over few keys is slow). The sparse kernels skip exact zeros, so a
``0 * inf`` gives no NaN there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsedino.attention import backends, compiled, native
from sparsedino.attention.entmax import entmax15_backward, entmax15_forward
from sparsedino.attention.gradients import entmax_grad, softmax_grad
from sparsedino.attention.normalizers import Normalizer, normalize
from sparsedino.attention.precision import autocast_dtype, compute_dtype

__all__ = ["attention_path", "normalize_scores", "normalizer_backward", "probs_matmul", "sparse_kernels_pay"]

# The sparse kernels pay below this share of nonzero probabilities (2-core AVX2 VM, float32, head dim 64:
# forward + backward broke even with BLAS near density 0.35 at 197 keys; 0.82 was 1.10x slower at 37),
# and sparse P @ V alone at any density over this few keys (3x faster than the GEMM at 37 keys).
SPARSE_MAX_DENSITY = 0.3
SPARSE_SHORT_ROWS = 64
# Rows sampled to estimate the density (evenly spaced over batch, heads and queries).
_DENSITY_SAMPLE_ROWS = 64


def attention_path(
    q: Tensor, k: Tensor, v: Tensor, spec: Normalizer, attn_mask: Tensor | None, dropout_p: float
) -> str:
    """The path of one attention call: "sdpa", "materialise", "adasplash" or "fused" (first table).

    Asked once per call on the inputs as the op receives them (before its autocast casts: the adasplash
    check is given the dtype they will be cast to).
    """
    if spec.is_softmax:
        return "sdpa"
    if dropout_p > 0.0 or _mask_needs_grad(attn_mask):
        return "materialise"
    if attn_mask is None and backends.adasplash_usable(q, k, v, spec, autocast_dtype(q)):
        return "adasplash"
    return "fused"


def _mask_needs_grad(attn_mask: Tensor | None) -> bool:
    return attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled()


def normalize_scores(
    scores: Tensor,
    spec: Normalizer,
    scale: float,
    bias: Tensor | None,
    thresholds: Tensor | None = None,
) -> Tensor:
    """Probabilities of ``scores * scale + bias`` along the last dim, without autograd (attention op).

    ``scores`` is a temporary the caller owns (overwritten). ``thresholds``: see ``entmax15_forward``.
    """
    if spec.kind == "entmax15":
        return entmax15_forward(scores, -1, scale, bias, inplace=True, thresholds=thresholds)
    scores = scores * scale if bias is None else scores * scale + bias
    with torch.no_grad():
        return normalize(scores, spec)


def normalizer_backward(
    p: Tensor,
    grad: Tensor,
    spec: Normalizer,
    dim: int = -1,
    scale: float = 1.0,
    inplace: bool = False,
) -> Tensor:
    """Gradient w.r.t. the scores (times ``scale``) from the probabilities ``p`` only (attention op).

    Computed in float32 (float64 stays float64), returned in ``grad``'s dtype. ``inplace=True`` allows
    overwriting ``grad`` (a temporary the caller owns).
    """
    if spec.kind == "entmax15":
        return entmax15_backward(p, grad, dim, scale, inplace=inplace)
    out_dtype = grad.dtype
    compute = compute_dtype(grad)
    p, grad = p.to(compute), grad.to(compute)
    if spec.is_softmax:
        return softmax_grad(p, grad, dim, scale).to(out_dtype)
    # alpha-entmax (sparsemax at alpha = 2)
    return entmax_grad(p, grad, spec.alpha, dim, scale).to(out_dtype)


def _sparse_enough(p: Tensor) -> bool:
    """Whether a sample of ``p``'s rows has at most :data:`SPARSE_MAX_DENSITY` nonzeros."""
    rows = p.reshape(-1, p.shape[-1])
    sample = rows[:: max(1, rows.shape[0] // _DENSITY_SAMPLE_ROWS)]
    return bool(torch.count_nonzero(sample) <= SPARSE_MAX_DENSITY * sample.numel())


def sparse_kernels_pay(p: Tensor, *others: Tensor, short_rows: bool = False) -> bool:
    """Whether the native sparse kernels should take ``p`` (probabilities or ``dS``, ``(..., N, M)``) and the
    dense operands ``others`` (third table); ``short_rows``: any density over few keys (``P @ V`` only)."""
    return (
        p.device.type == "cpu"
        and p.dtype in (torch.float32, torch.float64)
        and all(t.device.type == "cpu" and t.dtype == p.dtype for t in others)
        and p.dim() >= 2
        and p.numel() > 0
        and compiled.native_allowed()
        and native.available()
        and ((short_rows and p.shape[-1] <= SPARSE_SHORT_ROWS) or _sparse_enough(p))
    )


def probs_matmul(p: Tensor, v: Tensor, out: Tensor | None = None) -> Tensor:
    """``p @ v`` for attention probabilities (or ``dS``) ``(..., N, M)`` and ``(..., M, Dv)`` (third table).

    ``out``: written in place (it may be a strided view, e.g. a tile of a larger output) and returned.
    """
    if p.shape[:-2] == v.shape[:-2] and sparse_kernels_pay(p, v, short_rows=True):
        result = native.sparse_matmul(p.contiguous(), v.contiguous())
        return result if out is None else out.copy_(result)
    if out is None:
        return torch.matmul(p, v)
    if out.is_contiguous():
        return torch.matmul(p, v, out=out)
    return out.copy_(torch.matmul(p, v))
