"""The dtypes the sparse attention paths compute in, and how they meet autocast.

* :func:`compute_dtype`: every normaliser, its gradient and the attention op's scores compute in float32
  (float64 stays float64): which keys get exactly zero weight depends on the threshold, so the scores are
  not rounded to bfloat16 / float16 first.
* :func:`autocast_dtype` / :func:`autocast_inputs`: under autocast the sparse paths do what SDPA does (q, k,
  v cast to the autocast dtype), then run with autocast off (the casts below are then explicit).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

__all__ = ["autocast_dtype", "autocast_inputs", "compute_dtype"]


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype every normaliser, its gradient and the attention op's scores compute in: float64 stays
    float64, anything else (float32, bfloat16, float16) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def autocast_dtype(t: Tensor) -> torch.dtype | None:
    """The dtype autocast casts attention inputs on ``t``'s device to, or None when autocast is off there."""
    device = t.device.type
    if device == "meta" or not torch.is_autocast_enabled(device):  # meta: shape-only init, no autocast
        return None
    return torch.get_autocast_dtype(device)


def autocast_inputs(*tensors: Tensor) -> tuple[list[Tensor], contextlib.AbstractContextManager]:
    """Under autocast: the tensors in the autocast dtype and a context that turns autocast off (else as is)."""
    dtype = autocast_dtype(tensors[0])
    if dtype is None:
        return list(tensors), contextlib.nullcontext()
    return [t.to(dtype) for t in tensors], torch.autocast(tensors[0].device.type, enabled=False)
