"""Gradients of the normalisers from their outputs only: one copy of each formula, shared by the autograd
functions of :mod:`sparsedino.attention.entmax` and the attention op's backward.

With ``p`` the probabilities and ``g`` the gradient w.r.t. them, the gradient w.r.t. the scores is

* softmax: ``p * g - p * sum(p * g)``;
* alpha-entmax (sparsemax at ``alpha = 2``): ``s * g - s * sum(s * g) / sum(s)`` with ``s = p ** (2 - alpha)``
  on the support (``p > 0``) and 0 elsewhere; at ``alpha = 2``, ``s`` is the support indicator;
* entmax-1.5 (``s = sqrt(p)``): the same formula, computed by the row kernels of
  :mod:`sparsedino.attention.entmax` (tensor ops) and :mod:`sparsedino.attention.native` (C).

``TINY`` guards every division by a sum that can be 0 (an empty support, a fully masked row); the C kernels
receive it as ``SPARSEDINO_TINY``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TINY", "entmax_grad", "entmax_support_weights", "softmax_grad"]

TINY = 1e-30


def softmax_grad(p: Tensor, grad: Tensor, dim: int, scale: float = 1.0) -> Tensor:
    """Softmax backward (times ``scale``) in ``p``'s dtype."""
    gp = grad * p
    return (gp - p * gp.sum(dim, keepdim=True)) * scale


def entmax_support_weights(p: Tensor, alpha: float | Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``s = p ** (2 - alpha)`` on the support (0 elsewhere) and ``sum(s)`` along ``dim`` (at least TINY)."""
    s = torch.where(p > 0, p.clamp_min(TINY).pow(2.0 - alpha), torch.zeros_like(p))
    return s, s.sum(dim, keepdim=True).clamp_min(TINY)


def entmax_grad(
    p: Tensor, grad: Tensor, alpha: float | Tensor, dim: int, scale: float = 1.0, weights=None
) -> Tensor:
    """alpha-entmax backward (times ``scale``) from the probabilities ``p``, in their dtype.

    ``weights``: :func:`entmax_support_weights` already computed by the caller (else computed here).
    """
    s, sum_s = entmax_support_weights(p, alpha, dim) if weights is None else weights
    sg = s * grad
    ds = sg - s * sg.sum(dim, keepdim=True) / sum_s
    return ds * scale if scale != 1.0 else ds
