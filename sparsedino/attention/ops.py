"""``attention(q, k, v, normalizer=...)``: scaled dot-product attention with a sparse normaliser.

Paths, chosen once per call by :func:`sparsedino.attention.dispatch.attention_path` (the table there):

* ``"softmax"`` -> ``F.scaled_dot_product_attention`` (fused, never materialises probabilities).
* dropout on the probabilities (training) -> the plain autograd composition (probabilities materialised).
* sparse normaliser, CUDA, ``adasplash`` installed and inputs within its constraints -> adasplash kernel.
* sparse normaliser otherwise -> :class:`~sparsedino.attention.chunked.SparseAttentionFunction`: scores,
  probabilities and output per block of queries; backward from the saved probabilities (one block) or by
  recomputing them block by block (``chunk_size``), which bounds memory for long sequences.

Precision (:mod:`sparsedino.attention.precision`): under autocast the sparse paths do what SDPA does (q,
k, v cast to the autocast dtype), then compute the scores ``q k^T`` and the normaliser (forward and
backward) in float32, with autocast off: which keys get exactly zero weight depends on the threshold, so
the scores are not rounded to bfloat16 / float16 first. The probabilities enter the matrix products in
the input dtype, as in flash attention.

The normaliser is parsed once, by the public functions here; everything they call takes the
:class:`~sparsedino.attention.normalizers.Normalizer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsedino.attention import backends
from sparsedino.attention.chunked import SparseAttentionFunction
from sparsedino.attention.dispatch import attention_path
from sparsedino.attention.normalizers import Normalizer, normalize, parse_normalizer
from sparsedino.attention.precision import autocast_inputs, compute_dtype

__all__ = [
    "AUTO_CHUNK_BYTES",
    "attention",
    "attention_probs",
    "auto_chunk_size",
    "batch_per_tile",
    "block_rows",
    "mask_to_bias",
    "masked_scores",
]

# Above this many bytes of (B, H, N, N) float32 probabilities, ``chunk_size=None`` switches to the chunked
# path (e.g. ViT-S at 448 px, batch 64: 6 * 64 * 785^2 * 4 B = 946 MB per layer would be kept for backward).
AUTO_CHUNK_BYTES = 512 * 2**20
# Target size of one block's scores when chunking (a few such blocks are live at once in backward).
BLOCK_BYTES = 8 * 2**20


def mask_to_bias(attn_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """SDPA mask convention -> additive bias: bool True = attend (False -> -inf), float masks are added."""
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device)
        return bias.masked_fill_(~attn_mask, float("-inf"))
    if not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool or floating point, got dtype {attn_mask.dtype}")
    return attn_mask.to(dtype)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects q, k, v of shape (batch, heads, tokens, head_dim), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2] or q.shape[:2] != k.shape[:2]:
        raise ValueError(f"incompatible q/k/v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if attn_mask is not None:
        target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        try:
            torch.broadcast_shapes(tuple(attn_mask.shape), target)
        except RuntimeError:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (B, H, N, M) = {target}"
            ) from None


def auto_chunk_size(q: Tensor, k: Tensor) -> int:
    """Query block size used by ``chunk_size=None``: 0 (no chunking) unless the probabilities are big."""
    b, h, n, _ = q.shape
    m = k.shape[2]
    if b * h * n * m * 4 <= AUTO_CHUNK_BYTES:
        return 0
    return block_rows(q, k)


def block_rows(q: Tensor, k: Tensor) -> int:
    """Query rows per tile so that one batch element's float32 scores take at most about ``BLOCK_BYTES``."""
    _, h, n, _ = q.shape
    rows = max(16, BLOCK_BYTES // (h * k.shape[2] * 4))
    blocks = math.ceil(n / rows)
    return math.ceil(n / blocks)  # near-equal blocks: at most two block shapes


def batch_per_tile(q: Tensor, k: Tensor, rows: int) -> int:
    """Batch elements per tile of ``rows`` query rows, so one tile's float32 scores fit ``BLOCK_BYTES``."""
    h, m = q.shape[1], k.shape[2]
    return max(1, BLOCK_BYTES // (h * max(rows, 1) * m * 4))


def attention_probs(
    q: Tensor,
    k: Tensor,
    normalizer: str | float | Normalizer = "entmax15",
    scale: float | None = None,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Materialised attention probabilities (B, H, N, M) (differentiable), for maps and dropout.

    Scores and normaliser in float32 (float64 for float64 inputs); returned in the (autocast) input dtype.
    """
    spec = parse_normalizer(normalizer)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    (q, k), precision = autocast_inputs(q, k)
    with precision:
        return _probs(q, k, spec, scale, attn_mask)


def _probs(q: Tensor, k: Tensor, spec: Normalizer, scale: float, attn_mask: Tensor | None) -> Tensor:
    """:func:`attention_probs` of q, k already cast for autocast (with autocast off)."""
    compute = compute_dtype(q)
    return normalize(masked_scores(q.to(compute), k.to(compute), scale, attn_mask), spec).to(q.dtype)


def masked_scores(q: Tensor, k: Tensor, scale: float, attn_mask: Tensor | None) -> Tensor:
    """Scores ``scale * q k^T`` (B, H, N, M) with ``attn_mask`` applied (bool False -> -inf, float added).

    TorchScript-compatible (shared with :mod:`sparsedino.attention.scripted`).
    """
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)  # (B, H, N, M)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    return scores


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalizer: str | float | Normalizer = "entmax15",
    scale: float | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Multi-head attention with a (sparse) normaliser.

    Args:
        q: Queries (B, H, N, D).
        k: Keys (B, H, M, D).
        v: Values (B, H, M, Dv).
        normalizer: A :class:`~sparsedino.attention.normalizers.Normalizer` or any spelling it parses
            ("softmax", "entmax15", "entmax-1.5", "1.5", "sparsemax", "entmax<alpha>", an alpha >= 1).
        scale: Score scale, default ``D ** -0.5``. Entmax is not scale invariant: this sets the sparsity.
        attn_mask: Bool (True = attend) or additive float mask broadcastable to (B, H, N, M), like SDPA.
            Fully masked rows give zero output with sparse normalisers (NaN-free), as SDPA's softmax does not.
        dropout_p: Dropout on the probabilities; pass 0 at eval time (like SDPA, this function has no
            training flag).
        chunk_size: Query rows per tile of the memory-bounded path (probabilities recomputed in backward;
            a tile also spans as many batch elements as fit ``BLOCK_BYTES``). ``None``: automatic (tile
            only when the probabilities exceed ``AUTO_CHUNK_BYTES``); ``0``: never.

    Returns:
        Output (B, H, N, Dv).
    """
    spec = parse_normalizer(normalizer)
    _check_inputs(q, k, v, attn_mask)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 0):
        raise ValueError(f"chunk_size must be None or an int >= 0, got {chunk_size!r}")
    path = attention_path(q, k, v, spec, attn_mask, dropout_p)  # the one decision of this call
    if path == "sdpa":  # before the casts: SDPA does its own
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if dropout_p > 0.0 and chunk_size:
        raise ValueError("the chunked attention path does not support dropout_p > 0 (use chunk_size=0)")
    (q, k, v), precision = autocast_inputs(q, k, v)
    with precision:
        if path == "materialise":
            return torch.matmul(F.dropout(_probs(q, k, spec, scale, attn_mask), p=dropout_p), v)
        if path == "adasplash":
            return backends.adasplash_attention(q, k, v, spec, scale)
        return _fused(q, k, v, spec, scale, attn_mask, chunk_size)


def _fused(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: Normalizer,
    scale: float,
    attn_mask: Tensor | None,
    chunk_size: int | None,
) -> Tensor:
    """The "fused" path: :class:`~sparsedino.attention.chunked.SparseAttentionFunction`, whole or tiled."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(q, k)
    bias = mask_to_bias(attn_mask, compute_dtype(q))
    batch = batch_per_tile(q, k, chunk_size) if chunk_size else 0
    recorded = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return SparseAttentionFunction.apply(q, k, v, bias, spec, scale, chunk_size, batch, recorded)
