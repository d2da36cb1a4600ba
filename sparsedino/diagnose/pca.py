"""PCA of patch features: the first components as a foreground map or as RGB (DINO / DINOv2 figures)."""

from __future__ import annotations

import torch

from sparsedino.attention.gradients import TINY


def pca_project(feats: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Project features on their first ``k`` principal components.

    Args:
        feats: (M, C) features (e.g. the h*w patch tokens of one image).
        k: number of components.

    Returns:
        scores: (M, k) coordinates of the centred features on the components (each column has mean 0);
        explained: (k,) share of the total variance explained by each component.
        The sign of each component is arbitrary (SVD convention); callers must resolve it.
    """
    x = feats.float()
    x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # vh (min(M, C), C)
    k = min(k, vh.shape[0])
    var = s.square()
    return x @ vh[:k].T, var[:k] / var.sum().clamp_min(TINY)


def pca_rgb(feats: torch.Tensor, grid: tuple[int, int], fit_on: torch.Tensor | None = None) -> torch.Tensor:
    """First three principal components of patch features as an RGB image.

    The PCA is fitted on ``fit_on`` (defaults to ``feats``), each channel is min-max scaled to [0, 1] over
    the patches shown. Components are fixed to point towards their largest-magnitude score so that the
    colours do not flip between runs.

    Args:
        feats: (h*w, C) patch features of one image; grid: (h, w).
        fit_on: optional (M, C) features to fit the components on (e.g. several images).

    Returns:
        (h, w, 3) float in [0, 1].
    """
    ref = (feats if fit_on is None else fit_on).float()
    mean = ref.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(ref - mean, full_matrices=False)
    comps = vh[:3]  # (3, C)
    scores = (feats.float() - mean) @ comps.T  # (hw, 3)
    flip = scores.gather(0, scores.abs().argmax(0, keepdim=True)).sign()  # (1, 3)
    scores = scores * torch.where(flip == 0, torch.ones_like(flip), flip)
    if scores.shape[1] < 3:  # fewer than 3 components (tiny inputs): pad with zeros
        scores = torch.cat([scores, scores.new_zeros(scores.shape[0], 3 - scores.shape[1])], 1)
    lo, hi = scores.min(0).values, scores.max(0).values
    rgb = (scores - lo) / (hi - lo).clamp_min(1e-12)
    return rgb.reshape(*grid, 3)
