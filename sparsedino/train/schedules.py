"""Per-iteration schedules (lr, weight decay, teacher momentum) and optimiser parameter groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch.nn as nn

if TYPE_CHECKING:
    from sparsedino.train.settings import TrainConfig


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Linear warmup from ``warmup_start`` to ``base`` over ``warmup_epochs``, then cosine to ``final``.

    Returns:
        Array of length ``epochs * iters_per_epoch``: the value at every iteration.
    """
    warmup_iters = min(warmup_epochs, epochs) * iters_per_epoch  # a warmup longer than the run is cut
    warmup = np.linspace(warmup_start, base, warmup_iters, endpoint=False) if warmup_iters else np.array([])
    steps = np.arange(epochs * iters_per_epoch - warmup_iters)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate((warmup, cosine))


def param_groups(model: nn.Module) -> list[dict]:
    """Split trainable parameters: weight decay on matrices, none on biases and 1-D params (norms).

    The second group carries ``weight_decay=0.0`` and is marked ``no_decay`` so schedules skip it.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim <= 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]


@dataclass
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    iters_per_epoch: int


def make_schedules(cfg: TrainConfig, iters_per_epoch: int, world_size: int) -> Schedules:
    """lr (scaled by global batch / 256, warmup + cosine), weight decay and teacher momentum (cosine)."""
    o = cfg.optim
    global_batch = o.batch_size_per_gpu * world_size
    return Schedules(
        lr=cosine_schedule(o.lr * global_batch / 256.0, o.min_lr, o.epochs, iters_per_epoch, o.warmup_epochs),
        wd=cosine_schedule(o.weight_decay, o.weight_decay_end, o.epochs, iters_per_epoch),
        momentum=cosine_schedule(o.momentum_teacher, 1.0, o.epochs, iters_per_epoch),
        iters_per_epoch=iters_per_epoch,
    )
