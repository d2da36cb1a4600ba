"""Rotary-position attention: timm's ``AttentionRope`` and ``EvaAttention`` with a sparse normaliser.

* ``AttentionRope`` (``timm.layers``): RoPE-ViT (``vit_*_rope_*``), Perception Encoder (``vit_pe_*``);
  fused or separate q/k/v projections, grouped-query attention (``num_kv_heads``), qk-norm, gate.
* ``EvaAttention`` (``timm.models.eva``): EVA / EVA-02, DINOv3 (``vit_*_dinov3``), timm's SBB RoPE ViTs
  (``vit_*_rope_reg*_gap_*``); the BEiT-style bias layout (``q_bias``, a zero non-persistent ``k_bias``,
  ``v_bias``), separate projections without a key bias, ``scale_norm``, gate.

Both rotate queries and keys after the prefix tokens ([CLS], registers) with the ``rope`` tensor their
block passes in, exactly as timm does; the scores are then ``scale * q k^T`` (+ ``attn_mask``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import AttentionRope, apply_rot_embed_cat
from timm.models.eva import EvaAttention
from torch import Tensor

from sparsedino.attention.core import SparseCore

__all__ = ["SparseAttentionRope", "SparseEvaAttention", "biased_qkv", "rotate_after_prefix"]


def rotate_after_prefix(
    q: Tensor, k: Tensor, v: Tensor, rope: Tensor, num_prefix: int, half: bool
) -> tuple[Tensor, Tensor]:
    """Rotary embedding on the tokens after the ``num_prefix`` prefix tokens of q, k (B, H, N, D)."""
    q = torch.cat([q[:, :, :num_prefix, :], apply_rot_embed_cat(q[:, :, num_prefix:, :], rope, half=half)], 2)
    k = torch.cat([k[:, :, :num_prefix, :], apply_rot_embed_cat(k[:, :, num_prefix:, :], rope, half=half)], 2)
    return q.type_as(v), k.type_as(v)


def biased_qkv(
    x: Tensor,
    weight: Tensor,
    q_bias: Tensor | None,
    k_bias: Tensor | None,
    v_bias: Tensor | None,
    separate: bool,
) -> Tensor:
    """The fused qkv projection (B, N, 3 * attn_dim) with BEiT's ``q_bias`` / ``k_bias`` / ``v_bias`` layout.

    ``weight`` is the bias-free ``qkv`` Linear's; ``separate`` adds the bias after the product (timm's
    ``qkv_bias_separate``) instead of inside ``F.linear``.
    """
    if q_bias is None or k_bias is None or v_bias is None:
        return F.linear(x, weight)
    bias = torch.cat((q_bias, k_bias, v_bias))
    if separate:
        return F.linear(x, weight) + bias
    return F.linear(x, weight, bias)


class SparseAttentionRope(SparseCore, AttentionRope):
    """timm ``AttentionRope`` with a sparse normaliser (converted in place by ``sparsify``)."""

    def forward(
        self,
        x: Tensor,
        rope: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        else:
            q = self.q_proj(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate_after_prefix(
                q, k, v, rope, self.num_prefix_tokens, getattr(self, "rotate_half", False)
            )
        if self.num_kv_groups > 1:  # grouped-query attention: head h reads kv head h // groups, as in timm
            k = k.repeat_interleave(self.num_kv_groups, dim=1)
            v = v.repeat_interleave(self.num_kv_groups, dim=1)

        x = self._attend(q, k, v, attn_mask, is_causal)
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)  # (B, N, H * D)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class SparseEvaAttention(SparseCore, EvaAttention):
    """timm ``EvaAttention`` (EVA, EVA-02, DINOv3, SBB RoPE ViTs) with a sparse normaliser (converted in place)."""

    def _biased_qkv(self, x: Tensor) -> Tensor:
        return biased_qkv(x, self.qkv.weight, self.q_bias, self.k_bias, self.v_bias, self.qkv_bias_separate)

    def forward(
        self,
        x: Tensor,
        rope: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        b, n, c = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            qkv = self._biased_qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        else:
            q = self.q_proj(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
            k = self.k_proj(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
            v = self.v_proj(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rotate_after_prefix(
                q, k, v, rope, self.num_prefix_tokens, getattr(self, "rotate_half", False)
            )

        x = self._attend(q, k, v, attn_mask, is_causal)
        x = x.transpose(1, 2).reshape(b, n, c)  # (B, N, C), as timm's EvaAttention
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
