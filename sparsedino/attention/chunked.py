"""Sparse attention as one autograd op, optionally over blocks of queries with recomputation in backward.

Forward, per block of queries ``i`` (all queries when ``chunk_size == 0``)::

    S_i = scale * Q_i K^T + bias_i        (B, H, C, M)
    P_i = normalizer(S_i)                 exact entmax / sparsemax
    O_i = P_i V                           (B, H, C, Dv)

Backward, per block (``P_i`` saved when unchunked, recomputed from q, k, v when chunked)::

    dV  += P_i^T dO_i
    dP_i = dO_i V^T
    dS_i = normalizer_backward(P_i, dP_i) * scale
    dQ_i = dS_i K,   dK += dS_i^T Q_i

Unchunked, the op keeps q, k, v and P for backward (the scores S are never kept); chunked, it keeps only
q, k, v (and the mask), so the extra memory is a few (B, H, C, M) block temporaries instead of (B, H, N, M).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsedino.attention.normalizers import normalize, normalizer_backward

__all__ = ["SparseAttentionFunction"]


def _blocks(n: int, chunk_size: int) -> list[tuple[int, int]]:
    step = n if chunk_size <= 0 else chunk_size
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _bias_rows(bias: Tensor | None, start: int, end: int) -> Tensor | None:
    """Rows ``start:end`` of a 4-D bias broadcastable to (B, H, N, M) (size-1 query dims stay as is)."""
    if bias is None or bias.shape[-2] == 1:
        return bias
    return bias[..., start:end, :]


def _block_probs(q_i: Tensor, k: Tensor, bias_i: Tensor | None, name: str, scale: float) -> Tensor:
    """Probabilities of one query block, float32 (float64 for float64 inputs)."""
    compute = torch.float64 if q_i.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q_i, k.transpose(-2, -1)).to(compute)
    scores.mul_(scale)
    if bias_i is not None:
        scores.add_(bias_i)
    return normalize(scores, name)


class SparseAttentionFunction(torch.autograd.Function):
    """``(q, k, v, bias, name, scale, chunk_size) -> out``; gradients for q, k and v (not the mask)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, name, scale, chunk_size):  # type: ignore[override]
        if bias is not None and bias.dim() < 4:
            bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        blocks = _blocks(q.shape[2], chunk_size)
        probs = None
        if len(blocks) == 1:
            probs = _block_probs(q, k, bias, name, scale).to(v.dtype)  # (B, H, N, M), kept for backward
            out = torch.matmul(probs, v)
        else:
            out = q.new_empty(q.shape[:3] + v.shape[-1:])
            for start, end in blocks:
                p = _block_probs(q[:, :, start:end], k, _bias_rows(bias, start, end), name, scale)
                out[:, :, start:end] = torch.matmul(p.to(v.dtype), v)
        ctx.name, ctx.scale, ctx.blocks = name, scale, blocks
        ctx.save_for_backward(q, k, v, bias, probs)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias, probs = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        dk = torch.zeros_like(k) if ctx.needs_input_grad[1] else None
        dv = torch.zeros_like(v) if ctx.needs_input_grad[2] else None
        for start, end in ctx.blocks:
            p = probs
            if p is None:  # chunked: recompute this block's probabilities
                p = _block_probs(q[:, :, start:end], k, _bias_rows(bias, start, end), ctx.name, ctx.scale)
                p = p.to(v.dtype)
            do_i = grad_out[:, :, start:end]  # (B, H, C, Dv)
            if dv is not None:
                dv.add_(torch.matmul(p.transpose(-2, -1), do_i))
            if dq is None and dk is None:
                continue
            dp = torch.matmul(do_i, v.transpose(-2, -1))  # (B, H, C, M)
            ds = normalizer_backward(p, dp, ctx.name).mul_(ctx.scale).to(q.dtype)
            if dq is not None:
                dq[:, :, start:end] = torch.matmul(ds, k)
            if dk is not None:
                dk.add_(torch.matmul(ds.transpose(-2, -1), q[:, :, start:end]))
        return dq, dk, dv, None, None, None, None
