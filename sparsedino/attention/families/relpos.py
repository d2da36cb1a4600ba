"""Attention with relative position biases: BEiT, timm's relpos ViTs and SAM (windowed) with a sparse normaliser.

* BEiT / BEiT v2 (``timm.models.beit.Attention``): a learned bias table per (query, key) offset over the
  patch window plus [CLS] rows, and / or the model's shared bias, added to ``scale * q k^T``; the
  ``q_bias`` / ``k_bias`` / ``v_bias`` qkv layout.
* relpos ViTs (``timm.models.vision_transformer_relpos.RelPosAttention``): ``rel_pos.get_bias()`` (bias
  table or MLP) or the model's shared bias, as timm's fused path uses.
* SAM ViT (``timm.models.vision_transformer_sam.Attention``): decomposed relative positions (a bias
  computed from the queries, MViTv2-style) or RoPE. SAM blocks with ``window_size > 0`` attend within
  non-overlapping windows (the block pads and partitions the feature map), so their maps are per window:
  (B * windows, H, w * w, w * w); the global blocks' maps are (B, H, h * w, h * w).

The bias enters the normaliser as an additive mask, as it enters SDPA in timm's fused path.
"""

from __future__ import annotations

from timm.layers import apply_rot_embed_cat
from timm.models.beit import Attention as BeitAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from timm.models.vision_transformer_sam import Attention as SamAttention
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias
from torch import Tensor

from sparsedino.attention.core import SparseCore
from sparsedino.attention.families.rope import biased_qkv

__all__ = ["SparseBeitAttention", "SparseRelPosAttention", "SparseSamAttention"]


class SparseBeitAttention(SparseCore, BeitAttention):
    """BEiT's attention (relative position bias table, shared bias) with a sparse normaliser (in place)."""

    def forward(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        qkv = (
            biased_qkv(x, self.qkv.weight, self.q_bias, self.k_bias, self.v_bias, self.qkv_bias_separate)
            .reshape(b, n, 3, self.num_heads, -1)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        bias = shared_rel_pos_bias
        if self.relative_position_bias_table is not None:
            own = self._get_rel_pos_bias()  # (1, H, N, N)
            bias = own if shared_rel_pos_bias is None else own + shared_rel_pos_bias

        x = self._attend(q, k, v, bias)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SparseRelPosAttention(SparseCore, RelPosAttention):
    """timm's ``RelPosAttention`` (``vit_relpos_*``, ``vit_srelpos_*``) with a sparse normaliser (in place)."""

    def forward(self, x: Tensor, shared_rel_pos: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos  # (1, H, N, N)

        x = self._attend(q, k, v, bias)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SparseSamAttention(SparseCore, SamAttention):
    """SAM ViT's attention (decomposed relative positions or RoPE; windowed blocks) with a sparse normaliser."""

    def forward(self, x: Tensor) -> Tensor:
        b, height, width, _ = x.shape  # a window (B * windows, w, w, C) in windowed blocks
        n = height * width
        x = x.reshape(b, n, -1)
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)  # (B * H, N, D): timm's layout
        q, k = self.q_norm(q), self.k_norm(k)
        bias: Tensor | None = None
        if self.use_rel_pos:  # from the normalised queries, as in timm
            bias = get_decomposed_rel_pos_bias(
                q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width)
            )
            bias = bias.reshape(b, self.num_heads, n, n)
        elif self.rope is not None:
            rope = self.rope.get_embed()
            q = apply_rot_embed_cat(q, rope).type_as(v)
            k = apply_rot_embed_cat(k, rope).type_as(v)

        q = q.reshape(b, self.num_heads, n, -1)  # (B, H, N, D)
        k = k.reshape(b, self.num_heads, n, -1)
        v = v.reshape(b, self.num_heads, n, -1)
        x = self._attend(q, k, v, bias)
        x = x.transpose(1, 2).reshape(b, n, -1)
        x = self.proj_drop(self.proj(x))
        return x.view(b, height, width, -1)
