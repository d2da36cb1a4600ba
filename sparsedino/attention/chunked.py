"""Sparse attention as one autograd op, optionally over blocks of queries with recomputation in backward.

Forward, per tile ``i`` = (a range of batch elements, a block of query rows; everything when
``chunk_size == 0``)::

    S_i = scale * Q_i K^T + bias_i        (B, H, C, M)
    P_i = normalizer(S_i)                 exact entmax / sparsemax
    O_i = P_i V                           (B, H, C, Dv)

Backward, per block (``P_i`` saved when unchunked, recomputed from q, k, v when chunked)::

    dV  += P_i^T dO_i
    dP_i = dO_i V^T
    dS_i = normalizer_backward(P_i, dP_i) * scale
    dQ_i = dS_i K,   dK += dS_i^T Q_i

Unchunked, the op keeps q, k, v and P for backward (the scores S are never kept); chunked, it keeps only
q, k, v (and the mask), so the extra memory is a few tile temporaries instead of (B, H, N, M).

Why tiles span batch elements before splitting query rows: a matrix product over few query rows is slow
on CPU (measured: 53-row blocks made ViT-S/16 at 448 px 2.6x slower than one block), and slicing the
batch dimension keeps every operand contiguous. Rows are split only when one batch element's
probabilities exceed the tile budget (long sequences).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparsedino.attention.normalizers import normalize_scores, normalizer_backward

__all__ = ["SparseAttentionFunction"]


def _tiles(b: int, n: int, rows: int, batch: int) -> list[tuple[int, int, int, int]]:
    """``(b0, b1, r0, r1)`` tiles covering batch ``0:b`` and query rows ``0:n``."""
    rows = n if rows <= 0 else rows
    batch = b if rows <= 0 or batch <= 0 else batch
    return [
        (b0, min(b0 + batch, b), r0, min(r0 + rows, n))
        for b0 in range(0, b, batch)
        for r0 in range(0, n, rows)
    ]


def _bias_tile(bias: Tensor | None, b0: int, b1: int, r0: int, r1: int) -> Tensor | None:
    """The part of a 4-D bias broadcastable to (B, H, N, M) that a tile needs (size-1 dims stay as is)."""
    if bias is None:
        return None
    if bias.shape[0] != 1:
        bias = bias[b0:b1]
    if bias.shape[-2] != 1:
        bias = bias[..., r0:r1, :]
    return bias


class _Scratch:
    """Reusable buffers for the tiles of one call.

    Why: a fresh multi-megabyte tensor per tile is a fresh mapping whose pages fault on first touch; on the
    virtual machines measured here that made every tile's matmul and copy about twice as slow. Tiles of one
    call reuse one buffer per role instead.
    """

    def __init__(self) -> None:
        self._flat: dict[str, Tensor] = {}

    def get(self, role: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = math.prod(shape)
        flat = self._flat.get(role)
        if flat is None or flat.numel() < numel:
            flat = self._flat[role] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat[:numel].view(shape)


def _matmul_into(a: Tensor, b: Tensor, dst: Tensor) -> None:
    """``dst[...] = a @ b``, written in place when ``dst`` is contiguous (no temporary)."""
    if dst.is_contiguous():
        torch.matmul(a, b, out=dst)
    else:
        dst.copy_(torch.matmul(a, b))


def _block_probs(
    q_i: Tensor, k: Tensor, bias_i: Tensor | None, name: str, scale: float, scratch: _Scratch | None = None
) -> Tensor:
    """Probabilities of one query block, float32 (float64 for float64 inputs).

    The scores are computed in that dtype too (bfloat16 / float16 inputs are upcast first): which keys get
    exactly zero weight depends on them, so they are not rounded to the input dtype.
    """
    compute = torch.float64 if q_i.dtype == torch.float64 else torch.float32
    q_i, k = q_i.to(compute), k.to(compute)
    if scratch is not None:
        scores = scratch.get("scores", (*q_i.shape[:3], k.shape[-2]), q_i)  # (B_t, H, C, M)
        torch.matmul(q_i, k.transpose(-2, -1), out=scores)
        return normalize_scores(scores, name, scale, bias_i)
    scores = torch.matmul(q_i, k.transpose(-2, -1))  # (B, H, C, M); scale and bias fused below
    return normalize_scores(scores, name, scale, bias_i)


class SparseAttentionFunction(torch.autograd.Function):
    """``(q, k, v, bias, name, scale, chunk_size, batch_per_tile) -> out``; gradients for q, k, v (not the mask).

    ``chunk_size`` query rows and ``batch_per_tile`` batch elements make one tile (0 rows = no tiling).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, name, scale, chunk_size, batch_per_tile=1):  # type: ignore[override]
        if bias is not None and bias.dim() < 4:
            bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        # One copy each now instead of one per matmul (timm's q/k/v are strided views of the qkv output);
        # saving them costs what keeping the views alive would.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        tiles = _tiles(q.shape[0], q.shape[2], chunk_size, batch_per_tile)
        probs = None
        if len(tiles) == 1:
            probs = _block_probs(q, k, bias, name, scale).to(v.dtype)  # (B, H, N, M), kept for backward
            out = torch.matmul(probs, v)
        else:
            out = q.new_empty(q.shape[:3] + v.shape[-1:])
            scratch = _Scratch()
            for b0, b1, r0, r1 in tiles:
                bias_t = _bias_tile(bias, b0, b1, r0, r1)
                p = _block_probs(q[b0:b1, :, r0:r1], k[b0:b1], bias_t, name, scale, scratch)
                _matmul_into(p.to(v.dtype), v[b0:b1], out[b0:b1, :, r0:r1])
        ctx.name, ctx.scale, ctx.tiles = name, scale, tiles
        ctx.save_for_backward(q, k, v, bias, probs)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias, probs = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # e.g. expanded by a .sum(): strided bmm would copy per batch
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        if probs is not None:  # one block, probabilities saved: no accumulators needed
            dq, dk, dv = _block_grads(q, k, v, probs, grad_out, ctx.name, ctx.scale, need_q, need_k, need_v)
            return dq, dk, dv, None, None, None, None, None
        dq = torch.empty_like(q) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        dv = torch.zeros_like(v) if need_v else None
        scratch = _Scratch()
        for b0, b1, r0, r1 in ctx.tiles:  # chunked: recompute each tile's probabilities
            q_t, k_t, v_t = q[b0:b1, :, r0:r1], k[b0:b1], v[b0:b1]
            do_t = grad_out[b0:b1, :, r0:r1]
            bias_t = _bias_tile(bias, b0, b1, r0, r1)
            p = _block_probs(q_t, k_t, bias_t, ctx.name, ctx.scale, scratch).to(v.dtype)
            if need_v:  # dV += P_t^T dO_t
                dv[b0:b1].add_(torch.matmul(p.transpose(-2, -1), do_t))
            if not (need_q or need_k):
                continue
            dp = scratch.get("dp", p.shape, p) if p.dtype == v.dtype else None
            dp = torch.matmul(do_t, v_t.transpose(-2, -1), out=dp)
            ds = normalizer_backward(p, dp, ctx.name, scale=ctx.scale, inplace=True)
            del p
            ds = ds.to(q.dtype)
            if need_q:
                _matmul_into(ds, k_t, dq[b0:b1, :, r0:r1])
            if need_k:  # dK += dS_t^T Q_t
                dk[b0:b1].add_(torch.matmul(ds.transpose(-2, -1), q_t))
        return dq, dk, dv, None, None, None, None, None


def _block_grads(q_i, k, v, p, do_i, name, scale, need_q, need_k, need_v):
    """Gradients of one query block: (dQ_i, dK contribution, dV contribution), None where not needed."""
    dv = torch.matmul(p.transpose(-2, -1), do_i) if need_v else None  # (B, H, M, Dv)
    if not (need_q or need_k):
        return None, None, dv
    dp = torch.matmul(do_i, v.transpose(-2, -1))  # (B, H, C, M)
    ds = normalizer_backward(p, dp, name, scale=scale, inplace=True).to(q_i.dtype)
    del dp
    dq = torch.matmul(ds, k) if need_q else None  # (B, H, C, D)
    dk = torch.matmul(ds.transpose(-2, -1), q_i) if need_k else None  # (B, H, M, D)
    return dq, dk, dv
