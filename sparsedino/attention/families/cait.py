"""CaiT's attention modules with a sparse normaliser: talking-heads self-attention and class attention.

* ``TalkingHeadAttn`` (the self-attention blocks): scores ``scale * q k^T`` are mixed across heads by
  ``proj_l`` before the normaliser and the probabilities by ``proj_w`` after it (Shazeer et al. 2020), so
  its probabilities are always materialised (B, H, N, N). :func:`~sparsedino.attention.collect_attention`
  records the normaliser's output (rows sum to 1, exact zeros); hooks on ``attn_drop`` see, as in timm,
  the head-mixed weights after ``proj_w``, which are neither normalised nor sparse.
* ``ClassAttn`` (the class-attention blocks): only the [CLS] token queries, its maps are (B, H, 1, N).
"""

from __future__ import annotations

import torch
from timm.models.cait import ClassAttn, TalkingHeadAttn
from torch import Tensor

from sparsedino.attention.core import SparseCore, score_map

__all__ = ["SparseClassAttn", "SparseTalkingHeadAttn"]


class SparseTalkingHeadAttn(SparseCore, TalkingHeadAttn):
    """CaiT's ``TalkingHeadAttn`` with a sparse normaliser (converted in place; always materialised)."""

    def extra_repr(self) -> str:
        return super().extra_repr() + ", talking_heads=True"

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        scores = q @ k.transpose(-2, -1)  # (B, H, N, N)
        scores = self.proj_l(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # mixed across heads
        probs = score_map(scores, self._normalizer)
        if not torch.jit.is_scripting():  # TorchScript has no recorders
            self._record(probs)
        attn = self.proj_w(probs.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SparseClassAttn(SparseCore, ClassAttn):
    """CaiT's ``ClassAttn`` ([CLS] queries all tokens) with a sparse normaliser (converted in place)."""

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        head_dim = c // self.num_heads
        q = self.q(x[:, 0]).unsqueeze(1).reshape(b, 1, self.num_heads, head_dim).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, self.num_heads, head_dim).permute(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, self.num_heads, head_dim).permute(0, 2, 1, 3)

        x_cls = self._attend(q, k, v)  # (B, H, 1, D)
        x_cls = x_cls.transpose(1, 2).reshape(b, 1, c)
        return self.proj_drop(self.proj(x_cls))
