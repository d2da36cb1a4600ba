"""Optional GPU backend: ``adasplash`` (Triton flash-style alpha-entmax attention), used only when usable.

Conditions: the package is importable, tensors are on CUDA, the normaliser is an entmax with alpha > 1, no
attention mask, head dim one of 16, 32, 64, 128, 256 (its kernels' sizes), and the sequence length a power of two, or any length through the
``varlen`` interface (the inputs are zero-padded to the next power of two and the true lengths passed, e.g.
197 -> 256). Everything else takes the portable path. Set ``sparsedino.attention.backends.ENABLED = False``
to force the portable path. This path cannot be exercised on CPU-only machines.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsedino.attention.normalizers import normalizer_alpha

__all__ = ["ENABLED", "adasplash_attention", "adasplash_usable"]

ENABLED = True
_available: bool | None = None


def _installed() -> bool:
    global _available
    if _available is None:
        _available = importlib.util.find_spec("adasplash") is not None
    return _available


def adasplash_usable(q: Tensor, k: Tensor, v: Tensor, name: str) -> bool:
    """Whether the adasplash kernel can run these inputs (never on CPU)."""
    if not (ENABLED and q.is_cuda and name != "softmax" and _installed()):
        return False
    d = q.shape[-1]
    return d in (16, 32, 64, 128, 256) and v.shape[-1] == d and q.shape[2] == k.shape[2]


def adasplash_attention(q: Tensor, k: Tensor, v: Tensor, name: str, scale: float) -> Tensor:
    """alpha-entmax attention through adasplash; pads to a power-of-two length with ``varlen`` if needed."""
    from adasplash import adasplash

    alpha = normalizer_alpha(name)
    # adasplash applies the standard 1/sqrt(d) scale inside its kernels; fold any other scale into q.
    default = q.shape[-1] ** -0.5
    if scale != default:
        q = q * (scale / default)
    n = q.shape[2]
    padded = 1 << (n - 1).bit_length()
    if padded == n:
        return adasplash(q.contiguous(), k.contiguous(), v.contiguous(), alpha=alpha, is_causal=False)
    pad = (0, 0, 0, padded - n)
    qp, kp, vp = (F.pad(t, pad).contiguous() for t in (q, k, v))
    lengths = torch.full((q.shape[0],), n, dtype=torch.int32, device=q.device)
    out = adasplash(qp, kp, vp, alpha=alpha, is_causal=False, varlen=lengths)
    return out[:, :, :n]
