"""Foreground alignment of [CLS] attention and of the first PCA component with the ground truth.

Everything is on the patch grid: ground-truth foreground from ``masks.patch_foreground`` (>= 50 % of a
patch's labelled pixels foreground), unlabelled patches excluded.
"""

from __future__ import annotations

import torch

from sparsedino.attention.gradients import TINY
from sparsedino.diagnose.pca import pca_project


def cls_attention_mask(cls_attn: torch.Tensor, keep: float = 0.6) -> torch.Tensor:
    """DINO's attention mask: the smallest set of highest-attention patches holding ``keep`` of the mass.

    Patches are sorted by attention (descending); the threshold t is the attention of the last patch needed
    for the running mass to reach ``keep``, and every patch with attention >= t is kept (ties are kept
    together, so a map that is flat on a region keeps the whole region). The kept set holds at least
    ``keep`` of the [CLS] -> patch attention (DINO's visualisation uses 0.6 per head; we apply it to the
    head-mean map).

    Args:
        cls_attn: (..., M) non-negative attention over M patches (normalised or not).
        keep: share of the mass to keep, in (0, 1].

    Returns:
        (..., M) bool mask.
    """
    a = cls_attn.float()
    a = a / a.sum(-1, keepdim=True).clamp_min(TINY)
    vals = a.sort(dim=-1, descending=True).values
    before = vals.cumsum(-1) - vals  # mass of the patches ranked strictly before
    n_kept = (before < keep).sum(-1, keepdim=True).clamp_min(1)  # (..., 1) patches needed
    threshold = vals.gather(-1, n_kept - 1)  # attention of the last patch needed
    return a >= threshold


def foreground_iou(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image IoU (Jaccard) between a predicted and the ground-truth foreground, on labelled patches.

    ``IoU = |pred & gt| / |pred | gt|`` counted over patches where ``valid``; NaN when the union is empty
    (no foreground in the ground truth nor in the prediction), excluded from means.

    Args:
        pred, gt: (B, M) bool; valid: (B, M) bool or None (all labelled).

    Returns:
        (B,) float IoU.
    """
    if valid is None:
        valid = torch.ones_like(gt, dtype=torch.bool)
    inter = (pred & gt & valid).sum(-1).float()
    union = ((pred | gt) & valid).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))


def border_mask(grid: tuple[int, int]) -> torch.Tensor:
    """(h*w,) bool, True on the outermost ring of patches."""
    h, w = grid
    m = torch.zeros(h, w, dtype=torch.bool)
    m[0], m[-1], m[:, 0], m[:, -1] = True, True, True, True
    return m.flatten()


def pca_foreground_mask(patches: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground from the first principal component of one image's patch features, sign resolved.

    The PCA is fitted on the image's own h*w patch features (centred); the patches with a positive score on
    the first component form one side, the rest the other. The side taken as foreground is chosen without
    labels by a border prior: the side covering the smaller share of the image's border ring of patches
    (objects rarely fill the border); on a tie, the smaller side.

    Args:
        patches: (h*w, C) patch features of one image; grid: (h, w).

    Returns:
        mask: (h*w,) bool predicted foreground; other: (h*w,) bool the opposite side (``~mask``), so callers
        can also report the sign-oracle IoU ``max(IoU(mask), IoU(other))``.
    """
    scores, _ = pca_project(patches, k=1)
    pos = scores[:, 0] > 0
    border = border_mask(grid).to(pos.device)
    share_pos = (pos & border).float().sum() / border.sum()
    share_neg = (~pos & border).float().sum() / border.sum()
    if share_pos < share_neg or (share_pos == share_neg and pos.sum() <= (~pos).sum()):
        return pos, ~pos
    return ~pos, pos
