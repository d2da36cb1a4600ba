"""Gram anchoring (DINOv3, Simeoni et al. 2025): keep the patch-similarity structure of an earlier teacher.

DINOv3's fix for dense degradation in long runs (``dinov3/loss/gram_loss.py``, ``train/ssl_meta_arch.py``),
added to the DINO loss as ``total = dino + w(t) * gram``:

* **Gram teacher**: a frozen copy of the EMA teacher's backbone, taken at ``gram.start_epoch`` and re-synced
  from the EMA teacher every ``gram.update_every_epochs`` epochs, at most ``gram.max_updates`` times.
* **Features**: the student's patch tokens of its global crops (after the final norm, as DINOv3's
  ``patch_pre_head``) and the Gram teacher's patch tokens of the same crops, optionally at a higher
  resolution (``gram.teacher_crop_size``) and then resized to the student's grid.
* **Loss**: with L2-normalised features ``X`` (``gram.normalized``), the Gram matrices ``X X^T`` per image
  (``gram.img_level``; else over the local batch) of student and teacher, and their mean squared difference.
  ``gram.remove_neg`` zeroes negative similarities of both, ``gram.remove_only_teacher_neg`` those of the
  teacher. (In DINOv3's code the second option also masks the student where the teacher was negative, but
  that mask is computed after the teacher's negatives were cleared, so it never applies: only the teacher's
  are removed, which is what this option does.)
* **Weight**: 0 before ``gram.start_epoch``, then a cosine ramp to ``gram.weight`` over ``gram.ramp_epochs``
  (DINOv3's ``linear_warmup_cosine_decay`` with start = peak = 0), then constant.

Every choice is a key of :class:`~sparsedino.train.settings.GramSettings`, DINOv3's values the defaults.
The Gram teacher's weights and sync state are saved in each checkpoint, so a resumed run is bit-identical.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsedino.attention import Normalizer, parse_normalizer
from sparsedino.train.alpha_schedule import set_normalizer


def gram_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    normalized: bool = True,
    img_level: bool = True,
    remove_neg: bool = False,
    remove_only_teacher_neg: bool = False,
) -> torch.Tensor:
    """Mean squared difference of the Gram matrices of student and teacher patch features.

    Args:
        student: (B, P, D) patch features (differentiable).
        teacher: (B, P, D) target features (treated as constants by the caller).
        normalized: L2-normalise each feature first (cosine similarities).
        img_level: one (P, P) Gram matrix per image; False: one (B*P, B*P) matrix over the batch.
        remove_neg: set negative similarities of both matrices to 0.
        remove_only_teacher_neg: set negative similarities of the teacher's matrix to 0.

    Returns:
        Scalar loss in float32 (float64 for float64 inputs).
    """
    if remove_neg and remove_only_teacher_neg:
        raise ValueError("remove_neg and remove_only_teacher_neg exclude each other")
    dtype = torch.promote_types(student.dtype, torch.float32)  # float32 under autocast (DINOv3), float64 kept
    s, t = student.to(dtype), teacher.to(dtype)
    if normalized:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    if not img_level:
        s, t = s.flatten(0, 1), t.flatten(0, 1)  # (B*P, D)
    student_sim = s @ s.transpose(-1, -2)  # (B, P, P) or (B*P, B*P)
    teacher_sim = t @ t.transpose(-1, -2)
    zero = student_sim.new_zeros(())
    if remove_neg or remove_only_teacher_neg:
        teacher_sim = torch.where(teacher_sim < 0, zero, teacher_sim)
    if remove_neg:
        student_sim = torch.where(student_sim < 0, zero, student_sim)
    return F.mse_loss(student_sim, teacher_sim)


def gram_weights(
    weight: float, start_epoch: int, ramp_epochs: int, epochs: int, iters_per_epoch: int
) -> np.ndarray:
    """The Gram loss weight of every iteration: 0, a cosine ramp to ``weight``, then ``weight``."""
    n = epochs * iters_per_epoch
    out = np.zeros(n)
    first, ramp = start_epoch * iters_per_epoch, ramp_epochs * iters_per_epoch
    if ramp:
        rise = weight * (1.0 - (np.cos(np.linspace(0.0, math.pi, ramp)) + 1.0) / 2.0)  # 0 -> weight
        out[first : first + ramp] = rise[: max(n - first, 0)]
    out[first + ramp :] = weight
    return out


def patch_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A timm ViT's patch tokens after its final norm: (B, P, D) (prefix tokens dropped)."""
    return backbone.forward_features(images)[:, backbone.num_prefix_tokens :]


def resize_patches(
    patches: torch.Tensor, side: int, mode: str = "bicubic", antialias: bool = False
) -> torch.Tensor:
    """(B, n*n, D) patch features on a square grid -> (B, side*side, D), as DINOv3 resizes its Gram targets."""
    n = math.isqrt(patches.shape[1])
    if n * n != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patches do not form a square grid")
    if n == side:
        return patches
    grid = patches.transpose(-2, -1).unflatten(-1, (n, n))  # (B, D, n, n)
    align = False if mode in ("bicubic", "bilinear") else None
    grid = F.interpolate(grid, size=(side, side), mode=mode, align_corners=align, antialias=antialias)
    return grid.flatten(-2, -1).transpose(-2, -1)  # (B, side*side, D)


class GramAnchor:
    """The Gram teacher, its sync schedule and the weighted loss of one run (``cfg.gram``).

    Args:
        cfg: the training config (``gram.enabled`` true).
        teacher_backbone: the EMA teacher's backbone (copied, then frozen).
        iters_per_epoch: iterations per epoch of the run.
    """

    def __init__(self, cfg: Any, teacher_backbone: nn.Module, iters_per_epoch: int) -> None:
        self.settings, g = cfg.gram, cfg.gram
        self.student_side = cfg.data.global_crop_size // cfg.model.patch_size
        self.weights = gram_weights(g.weight, g.start_epoch, g.ramp_epochs, cfg.optim.epochs, iters_per_epoch)
        self.backbone = copy.deepcopy(teacher_backbone).eval().requires_grad_(False)
        self.initialised, self.synced_epoch, self.updates = False, -1, 0
        self.normalizer: Normalizer = parse_normalizer(cfg.model.normalizer)  # the Gram teacher's attention

    def weight(self, step: int) -> float:
        """The loss weight at global step ``step`` (0 = the Gram term is not computed)."""
        return float(self.weights[min(step, len(self.weights) - 1)])

    def due(self, epoch: int) -> bool:
        """Whether the Gram teacher is (re-)synced at the start of ``epoch``."""
        g = self.settings
        if epoch == self.synced_epoch or epoch < g.start_epoch:
            return False
        if not self.initialised:
            return True  # the first snapshot (at start_epoch)
        since = epoch - g.start_epoch
        more = g.max_updates < 0 or self.updates < g.max_updates
        return g.update_every_epochs > 0 and since % g.update_every_epochs == 0 and more

    @torch.no_grad()
    def maybe_sync(self, epoch: int, teacher_backbone: nn.Module, teacher_normalizer: Normalizer) -> bool:
        """At the start of ``epoch``: copy the EMA teacher into the Gram teacher when a sync is due.

        Args:
            epoch: the epoch about to start.
            teacher_backbone: the EMA teacher's backbone.
            teacher_normalizer: the attention the teacher has at this step (the alpha schedule's value),
                used by the Gram teacher unless ``gram.teacher_normalizer`` names one.

        Returns:
            Whether it synced.
        """
        if not self.due(epoch):
            return False
        for mine, theirs in zip(self.backbone.state_dict().values(), teacher_backbone.state_dict().values()):
            mine.copy_(theirs)
        self.updates += int(self.initialised)
        self.initialised, self.synced_epoch = True, epoch
        self.normalizer = parse_normalizer(self.settings.teacher_normalizer or teacher_normalizer)
        set_normalizer(self.backbone, self.normalizer)
        return True

    def loss(self, student_patches: torch.Tensor, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """The (unweighted) Gram loss of the student's global-crop patches against the Gram teacher.

        Args:
            student_patches: (n_global * B, P, D) student patch tokens of the global crops.
            crops: the Gram teacher's crops, one (B, 3, S, S) tensor per global crop, in the same order.
        """
        if not self.initialised:
            raise RuntimeError("the Gram teacher is used before its first snapshot (gram.start_epoch)")
        g = self.settings
        with torch.no_grad():
            target = patch_tokens(self.backbone, torch.cat(list(crops)))  # (n_global * B, P_t, D)
            target = resize_patches(target, self.student_side, g.resize_mode, g.resize_antialias)
        return gram_loss(
            student_patches, target, g.normalized, g.img_level, g.remove_neg, g.remove_only_teacher_neg
        )

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: the Gram teacher's weights and where its sync schedule stands."""
        return {
            "backbone": self.backbone.state_dict(),
            "initialised": self.initialised,
            "synced_epoch": self.synced_epoch,
            "updates": self.updates,
            "normalizer": self.normalizer.name,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (raises RuntimeError / KeyError on a mismatch; the caller names the file)."""
        self.backbone.load_state_dict(state["backbone"])
        self.initialised, self.synced_epoch = bool(state["initialised"]), int(state["synced_epoch"])
        self.updates, self.normalizer = int(state["updates"]), parse_normalizer(state["normalizer"])
        set_normalizer(self.backbone, self.normalizer)
