"""The alpha schedule: entmax's alpha moved from softmax (alpha = 1) to the target over the first epochs.

Switching a trained softmax network to entmax-1.5 changes every attention map at once. With
``model.alpha_warmup_epochs = E`` the attention of student and teacher instead uses alpha-entmax with

    alpha(t) = start + (target - start) * r(t / T),   T = E x iterations per epoch,

at iteration ``t`` (``r(u) = u``, "linear", or ``(1 - cos(pi u)) / 2``, "cosine"), and the target
normaliser itself from iteration ``T`` on. The value is a function of the global step alone, so a resumed
run continues the schedule exactly. Kernels (``sparsedino/attention/dispatch.py``): alpha = 1 is softmax
(SDPA), an intermediate alpha runs alpha-entmax by bisection (``entmax_bisect``), and alpha = 1.5 the exact
fused entmax-1.5 kernels.

Why linear by default: the schedule's only job is to avoid the jump, and a linear ramp spends equal
iterations at every alpha; sparsity appears gradually (alpha-entmax is close to softmax just above 1) so
no part of the range needs more time. ``cosine`` spends more iterations near both ends.
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn as nn

from sparsedino.attention import Normalizer, SparseAttention, parse_normalizer

SHAPES = ("linear", "cosine")


def alpha_schedule(
    start: float, target: float, warmup_epochs: int, iters_per_epoch: int, shape: str = "linear"
) -> np.ndarray:
    """The alpha of each warmup iteration (length ``warmup_epochs * iters_per_epoch``; empty without one).

    Args:
        start: alpha at iteration 0 (1 = softmax).
        target: alpha reached at the end of the warmup (and used from then on).
        warmup_epochs: epochs of the ramp.
        iters_per_epoch: iterations per epoch.
        shape: ``"linear"`` or ``"cosine"``.

    Returns:
        float64 array: ``start`` at index 0, rising monotonically towards ``target`` (not included).
    """
    if shape not in SHAPES:
        raise ValueError(f"alpha schedule shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    n = warmup_epochs * iters_per_epoch
    u = np.arange(n, dtype=np.float64) / max(n, 1)
    ramp = u if shape == "linear" else (1.0 - np.cos(math.pi * u)) / 2.0
    return start + (target - start) * ramp


class AlphaSchedule:
    """The normaliser of every attention layer at each global step (``model.alpha_warmup_*``).

    Args:
        cfg: the training config (``model.normalizer`` is the target).
        iters_per_epoch: iterations per epoch of the run.
    """

    def __init__(self, cfg, iters_per_epoch: int) -> None:
        m = cfg.model
        self.target = parse_normalizer(m.normalizer)
        self.alphas = alpha_schedule(
            m.alpha_warmup_start,
            self.target.alpha,
            m.alpha_warmup_epochs,
            iters_per_epoch,
            m.alpha_warmup_shape,
        )

    def normalizer_at(self, step: int) -> Normalizer:
        """The normaliser used at global step ``step`` (the target once the warmup is over)."""
        if step >= len(self.alphas):
            return self.target
        return parse_normalizer(float(self.alphas[step]))  # 1.0 -> softmax, 1.5 -> entmax15, else bisect

    def apply(self, step: int, *models: nn.Module) -> Normalizer:
        """Set the normaliser of every :class:`SparseAttention` in ``models`` for ``step``; returns it."""
        spec = self.normalizer_at(step)
        for model in models:
            set_normalizer(model, spec)
        return spec


def set_normalizer(model: nn.Module, spec: Normalizer) -> None:
    """Set the normaliser of every :class:`SparseAttention` of ``model`` (a cheap attribute change)."""
    for module in model.modules():
        if isinstance(module, SparseAttention) and module.normalizer != spec.name:
            module.normalizer = spec
