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

from sparsedino.attention.normalizers import normalize_scores, normalizer_backward

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
    scores = torch.matmul(q_i, k.transpose(-2, -1)).to(compute)  # (B, H, C, M); scale and bias fused below
    return normalize_scores(scores, name, scale, bias_i)


class SparseAttentionFunction(torch.autograd.Function):
    """``(q, k, v, bias, name, scale, chunk_size) -> out``; gradients for q, k and v (not the mask)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, name, scale, chunk_size):  # type: ignore[override]
        if bias is not None and bias.dim() < 4:
            bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        # One copy each now instead of one per matmul (timm's q/k/v are strided views of the qkv output);
        # saving them costs what keeping the views alive would.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
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
        grad_out = grad_out.contiguous()  # e.g. expanded by a .sum(): strided bmm would copy per batch
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        if probs is not None:  # one block, probabilities saved: no accumulators needed
            dq, dk, dv = _block_grads(q, k, v, probs, grad_out, ctx.name, ctx.scale, need_q, need_k, need_v)
            return dq, dk, dv, None, None, None, None
        b, h, m, d = k.shape
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_q else None
        # contiguous accumulators so each block's contribution is added in place by one baddbmm
        dk = torch.zeros(b * h, m, d, dtype=k.dtype, device=k.device) if need_k else None
        dv = torch.zeros(b * h, m, v.shape[-1], dtype=v.dtype, device=v.device) if need_v else None
        for start, end in ctx.blocks:  # chunked: recompute each block's probabilities
            q_i = q[:, :, start:end]
            do_i = grad_out[:, :, start:end]
            p = _block_probs(q_i, k, _bias_rows(bias, start, end), ctx.name, ctx.scale).to(v.dtype)
            c = end - start
            if need_v:  # dV += P_i^T dO_i
                dv.baddbmm_(p.reshape(b * h, c, m).transpose(1, 2), do_i.reshape(b * h, c, -1))
            if not (need_q or need_k):
                continue
            ds = normalizer_backward(
                p, torch.matmul(do_i, v.transpose(-2, -1)), ctx.name, scale=ctx.scale, inplace=True
            )
            del p
            ds = ds.to(q.dtype)
            if need_q:
                dq[:, :, start:end] = torch.matmul(ds, k)
            if need_k:  # dK += dS_i^T Q_i
                dk.baddbmm_(ds.reshape(b * h, c, m).transpose(1, 2), q_i.reshape(b * h, c, d))
        dk = dk.view(k.shape) if need_k else None
        dv = dv.view(b, h, m, -1) if need_v else None
        return dq, dk, dv, None, None, None, None


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
