"""Sparse attention as one autograd op, optionally over tiles of queries with recomputation in backward.

Forward, per tile ``i`` = (a range of batch elements, a block of query rows; everything when
``chunk_size == 0``)::

    S_i = scale * Q_i K^T + bias_i        (B, H, C, M), float32 (float64 for float64 inputs)
    P_i = normalizer(S_i)                 exact entmax / sparsemax
    O_i = P_i V                           (B, H, C, Dv)

Backward, per tile (``P`` saved when unchunked; recomputed from q, k when tiled)::

    dV  += P_i^T dO_i
    dP_i = dO_i V^T
    dS_i = normalizer_backward(P_i, dP_i) * scale
    dQ_i = dS_i K,   dK += dS_i^T Q_i

Unchunked, ``P V`` and the backward run as sparse kernels over each row's support when the attention is
sparse enough (:func:`.dispatch.sparse_kernels_pay`; BLAS otherwise), and the op keeps q, k, v and P for
backward (the scores S are never kept); tiled, it keeps q, k, v, the mask and, for entmax-1.5 on the
native kernels, each row's threshold, so that backward rebuilds P_i with one pass over S_i instead of
solving again. The (B, H, N, M) buffers (and the tiles' scratch) come
from :mod:`sparsedino.attention.workspace`, so repeated calls do not re-fault fresh memory.

Why tiles span batch elements before splitting query rows: a matrix product over few query rows is slow
on CPU, and slicing the batch dimension keeps every operand contiguous. Rows are split only when one
batch element's probabilities exceed the tile budget (long sequences).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsedino.attention import native, workspace
from sparsedino.attention.dispatch import (
    normalize_scores,
    normalizer_backward,
    probs_matmul,
    sparse_kernels_pay,
)
from sparsedino.attention.entmax import entmax15_recompute, thresholds_supported
from sparsedino.attention.precision import compute_dtype

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


def _scores_into(q_i: Tensor, k: Tensor, out: Tensor) -> Tensor:
    """``out = q_i k^T`` in ``out``'s dtype (float32 / float64): bfloat16 / float16 inputs are upcast, as
    which keys get exactly zero weight depends on the scores (they are not rounded to the input dtype)."""
    q_i, k = q_i.to(out.dtype), k.to(out.dtype)
    return torch.matmul(q_i, k.transpose(-2, -1), out=out)


def _part(buf: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A contiguous tensor of ``shape`` on the front of a scratch buffer (tiles at the edges are smaller)."""
    numel = 1
    for d in shape:
        numel *= d
    return buf.view(-1)[:numel].view(shape)


def _bmm_acc(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` for 4-D (batch, heads, ., .) operands, without a temporary (``acc`` contiguous)."""
    acc.view(-1, *acc.shape[-2:]).baddbmm_(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))


class SparseAttentionFunction(torch.autograd.Function):
    """``(q, k, v, bias, spec, scale, chunk_size, batch_per_tile, recorded) -> out``; grads for q, k, v.

    ``spec`` is the :class:`~sparsedino.attention.normalizers.Normalizer`. ``chunk_size`` query rows and ``batch_per_tile`` batch elements make one tile (0 rows = no tiling).
    ``recorded``: whether autograd records the call (grad mode on and an input needing a gradient; the
    forward itself cannot tell): only then are the probabilities kept for backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, spec, scale, chunk_size, batch_per_tile=1, recorded=True):  # type: ignore[override]
        if bias is not None and bias.dim() < 4:
            bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        # One copy each now instead of one per matmul (timm's q/k/v are strided views of the qkv output);
        # saving them costs what keeping the views alive would.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, h, n, _ = q.shape
        m, compute = k.shape[2], compute_dtype(q)
        tiles = _tiles(b, n, chunk_size, batch_per_tile)
        ctx.spec, ctx.scale, ctx.tiles, ctx.lease, ctx.thresholds = spec, scale, tiles, (0, 0), False
        if len(tiles) == 1:
            buf, lease = workspace.take((b, h, n, m), compute, q.device)
            probs = normalize_scores(_scores_into(q, k, buf), spec, scale, bias)  # (B, H, N, M)
            if probs.dtype != v.dtype:
                probs = probs.to(v.dtype)
            out = probs_matmul(probs, v)  # sparse kernel when P has few nonzeros
            if probs.data_ptr() == buf.data_ptr() and recorded:
                ctx.lease = lease  # kept for backward, given back there
            else:
                workspace.give(buf, lease)
            # An attribute, not a saved tensor: a pooled buffer is rewritten once given back, which the
            # lease detects (a retained graph then recomputes) where autograd's version check would raise.
            ctx.probs = probs if recorded else None
            ctx.save_for_backward(q, k, v, bias, None)
            return out
        out = q.new_empty(q.shape[:3] + v.shape[-1:])
        rows = max(r1 - r0 for _, _, r0, r1 in tiles)
        batch = max(b1 - b0 for b0, b1, _, _ in tiles)
        scratch, lease = workspace.take((batch, h, rows, m), compute, q.device)
        thresholds = None
        if spec.kind == "entmax15" and thresholds_supported(scratch, scale):
            thresholds = torch.empty((b, h, n, 2), dtype=compute, device=q.device)  # per row (off, tau)
        for b0, b1, r0, r1 in tiles:
            s = _scores_into(q[b0:b1, :, r0:r1], k[b0:b1], _part(scratch, (b1 - b0, h, r1 - r0, m)))
            thr = None if thresholds is None else s.new_empty((*s.shape[:-1], 2))
            p = normalize_scores(s, spec, scale, _bias_tile(bias, b0, b1, r0, r1), thr)
            if thr is not None:
                thresholds[b0:b1, :, r0:r1] = thr
            probs_matmul(p.to(v.dtype), v[b0:b1], out=out[b0:b1, :, r0:r1])
        workspace.give(scratch, lease)
        ctx.thresholds = thresholds is not None
        ctx.save_for_backward(q, k, v, bias, thresholds)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias, thresholds = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # e.g. expanded by a .sum(): strided bmm would copy per batch
        need = ctx.needs_input_grad[:3]
        if len(ctx.tiles) == 1:
            probs = ctx.probs
            if not workspace.valid(probs, ctx.lease):  # retain_graph: the buffer was reused since
                buf = torch.empty(probs.shape, dtype=compute_dtype(q), device=q.device)
                probs = normalize_scores(_scores_into(q, k, buf), ctx.spec, ctx.scale, bias).to(v.dtype)
            grads = _unchunked_grads(q, k, v, probs, grad_out, ctx.spec, ctx.scale, need)
            workspace.give(probs, ctx.lease)
            return (*grads, None, None, None, None, None, None)
        return (*_tiled_grads(ctx, q, k, v, bias, thresholds, grad_out, need), *(None,) * 6)


def _unchunked_grads(q, k, v, p, grad_out, spec, scale, need):
    """(dQ, dK, dV) from the saved probabilities, None where not needed."""
    need_q, need_k, need_v = need
    if (need_q or need_k) and spec.kind == "entmax15" and sparse_kernels_pay(p, q, k, v, grad_out):
        grads = native.sparse_attention_backward(p, q, k, v, grad_out, scale)  # on the support only
        return tuple(g if n else None for g, n in zip(grads, need))
    dv = torch.matmul(p.transpose(-2, -1), grad_out) if need_v else None  # (B, H, M, Dv)
    if not (need_q or need_k):
        return None, None, dv
    dp, lease = workspace.take(p.shape, v.dtype, v.device)
    torch.matmul(grad_out, v.transpose(-2, -1), out=dp)  # (B, H, N, M)
    ds = normalizer_backward(p, dp, spec, scale=scale, inplace=True).to(q.dtype)
    dq = probs_matmul(ds, k) if need_q else None  # (B, H, N, D); dS is zero outside the support
    dk = torch.matmul(ds.transpose(-2, -1), q) if need_k else None  # (B, H, M, D)
    del ds
    workspace.give(dp, lease)
    return dq, dk, dv


def _tiled_grads(ctx, q, k, v, bias, thresholds, grad_out, need):
    """(dQ, dK, dV) tile by tile, recomputing each tile's probabilities."""
    need_q, need_k, need_v = need
    h = q.shape[1]
    m, compute = k.shape[2], compute_dtype(q)
    dq = torch.empty_like(q) if need_q else None
    dk = torch.zeros_like(k) if need_k else None
    dv = torch.zeros_like(v) if need_v else None
    rows = max(r1 - r0 for _, _, r0, r1 in ctx.tiles)
    batch = max(b1 - b0 for b0, b1, _, _ in ctx.tiles)
    scratch, lease = workspace.take((batch, h, rows, m), compute, q.device)
    dp_buf, dp_lease = workspace.take((batch, h, rows, m), v.dtype, v.device)
    for b0, b1, r0, r1 in ctx.tiles:
        q_t, do_t = q[b0:b1, :, r0:r1], grad_out[b0:b1, :, r0:r1]
        bias_t = _bias_tile(bias, b0, b1, r0, r1)
        s = _scores_into(q_t, k[b0:b1], _part(scratch, (b1 - b0, h, r1 - r0, m)))
        if ctx.thresholds:  # one pass from the stored thresholds instead of a solve
            p = entmax15_recompute(s, ctx.scale, bias_t, thresholds[b0:b1, :, r0:r1].contiguous())
        else:
            p = normalize_scores(s, ctx.spec, ctx.scale, bias_t)
        p = p.to(v.dtype)
        if ctx.spec.kind == "entmax15" and sparse_kernels_pay(p, q, k, v, grad_out):
            # dP, dS, dQ, dK, dV over the tile's support only
            dq_t, dk_t, dv_t = native.sparse_attention_backward(
                p, q_t.contiguous(), k[b0:b1], v[b0:b1], do_t.contiguous(), ctx.scale
            )
            if need_q:
                dq[b0:b1, :, r0:r1] = dq_t
            if need_k:
                dk[b0:b1] += dk_t
            if need_v:
                dv[b0:b1] += dv_t
            continue
        if need_v:  # dV += P_t^T dO_t
            _bmm_acc(dv[b0:b1], p.transpose(-2, -1), do_t)
        if not (need_q or need_k):
            continue
        dp = torch.matmul(do_t, v[b0:b1].transpose(-2, -1), out=_part(dp_buf, (b1 - b0, h, r1 - r0, m)))
        ds = normalizer_backward(p, dp, ctx.spec, scale=ctx.scale, inplace=True).to(q.dtype)
        if need_q:
            probs_matmul(ds, k[b0:b1], out=dq[b0:b1, :, r0:r1])
        if need_k:  # dK += dS_t^T Q_t
            _bmm_acc(dk[b0:b1], ds.transpose(-2, -1), q_t)
    workspace.give(scratch, lease)
    workspace.give(dp_buf, dp_lease)
    return dq, dk, dv
