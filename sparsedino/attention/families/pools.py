"""Attention pooling heads with a sparse normaliser; ``sparsify`` converts them only with ``pools=True``.

* ``AttentionPoolLatent`` (``timm.layers``): learned latent queries attend over all tokens (SigLIP
  ``vit_*_siglip_*``, ``global_pool='map'`` ViTs, Perception Encoder, EVA ``attn_pool``); maps
  (B, H, latent_len, N).
* ``AttentionPoolPrr`` (``timm.layers``): parameter-free self-attention over the tokens before pooling
  (q = k = v = the input split into heads); maps (B, H, N, N).

A pool is the classifier's read-out, not part of the feature extractor, so by default it keeps softmax.
timm's pools have no attention dropout; a converted pool gets an ``attn_drop = nn.Dropout(0.0)`` (no
parameters, so the state dict is unchanged) that the probabilities pass through when materialised, so
hooks on it see the maps as for the attention blocks.
"""

from __future__ import annotations

from timm.layers import AttentionPoolLatent
from timm.layers.attention_pool import AttentionPoolPrr
from torch import Tensor, nn

from sparsedino.attention.core import SparseCore
from sparsedino.attention.normalizers import Normalizer

__all__ = ["SparseAttentionPoolLatent", "SparseAttentionPoolPrr"]


def _read_out(x: Tensor, pool: str) -> Tensor:
    """A pool's output as timm reads it: the first token (``"token"``), the mean (``"avg"``) or all tokens."""
    if pool == "token":  # pooled output when there are several latents
        return x[:, 0]
    if pool == "avg":
        return x.mean(1)
    return x


class _SparsePool(SparseCore):
    def _init_sparse(self, spec: Normalizer, scale: float | None) -> None:
        super()._init_sparse(spec, scale)
        if not hasattr(self, "attn_drop"):
            self.attn_drop = nn.Dropout(0.0)  # the hook point of the maps (timm's pools apply no dropout)


class SparseAttentionPoolLatent(_SparsePool, AttentionPoolLatent):
    """timm's ``AttentionPoolLatent`` with a sparse normaliser (converted in place)."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        if self.pos_embed is not None:
            x = x + self.pos_embed.unsqueeze(0).to(x.dtype)
        q_latent = self.latent.expand(b, -1, -1)
        q = self.q(q_latent).reshape(b, self.latent_len, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # (B, H, N, D) each
        q, k = self.q_norm(q), self.k_norm(k)

        x = self._attend(q, k, v, attn_mask)  # (B, H, latent_len, D)
        x = x.transpose(1, 2).reshape(b, self.latent_len, c)
        x = self.proj_drop(self.proj(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm(x))
        return _read_out(x, self.pool)


class SparseAttentionPoolPrr(_SparsePool, AttentionPoolPrr):
    """timm's parameter-free ``AttentionPoolPrr`` with a sparse normaliser (converted in place)."""

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        x = self.pre_norm(x)
        qkv = x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        x = self._attend(qkv, qkv, qkv)
        x = x.transpose(1, 2).reshape(b, n, c)
        x = self.post_norm(x)
        return _read_out(x, self.pool)
