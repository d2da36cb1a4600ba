"""Ground-truth foreground on the patch grid, and image-level labels, from segmentation masks.

Convention used by every diagnostic: a pixel is *foreground* if its class is not 0 (background) and not
the ignore index (255); ignored pixels count neither way. A patch is foreground if at least
``threshold`` (default 50 %) of its *labelled* pixels are foreground; a patch with no labelled pixel is
"unlabelled" and is excluded from every score. A *pure background* patch (the label probe's) has only
background pixels: no object pixel and no ignored one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def patch_foreground(
    masks: torch.Tensor, grid: tuple[int, int], threshold: float = 0.5, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Downsample pixel masks to the patch grid.

    Args:
        masks: (B, H, W) int64 class ids; 0 = background, ``ignore_index`` = unlabelled. H and W must be
            multiples of the grid size (the runner resizes images and masks to ``img_size``).
        grid: (h, w) patch grid.
        threshold: a patch is foreground if its foreground share among labelled pixels is >= threshold.
        ignore_index: label of unlabelled pixels.

    Returns:
        fg: (B, h, w) bool, foreground patches.
        valid: (B, h, w) bool, patches with at least one labelled pixel.
        fg_share: (B, h, w) float, foreground share among labelled pixels (0 where not valid).
    """
    H, W = masks.shape[-2:]
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"mask size {H}x{W} is not a multiple of the patch grid {h}x{w}")
    labelled = (masks != ignore_index).float()  # (B, H, W)
    fore = ((masks != 0) & (masks != ignore_index)).float()
    kernel = (H // h, W // w)
    n_lab = F.avg_pool2d(labelled[:, None], kernel)[:, 0]  # (B, h, w) share of labelled pixels
    n_fg = F.avg_pool2d(fore[:, None], kernel)[:, 0]
    valid = n_lab > 0
    fg_share = torch.where(valid, n_fg / n_lab.clamp_min(1e-12), torch.zeros_like(n_fg))
    fg = valid & (fg_share >= threshold)
    return fg, valid, fg_share


def pure_background(
    masks: torch.Tensor, grid: tuple[int, int], ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Patches whose every pixel is labelled background (0): no object pixel and no ignored pixel.

    VOC draws its 255 band around every object, so a patch touching the band may hold part of an object
    boundary; it is excluded (unlike :func:`patch_foreground`'s ``valid & fg_share == 0``).

    Args:
        masks: (B, H, W) int64 class ids; H, W multiples of the grid.
        grid: (h, w) patch grid.

    Returns:
        (B, h, w) bool.
    """
    H, W = masks.shape[-2:]
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"mask size {H}x{W} is not a multiple of the patch grid {h}x{w}")
    not_background = (masks != 0).float()  # objects and ignored pixels alike
    return F.max_pool2d(not_background[:, None], (H // h, W // w))[:, 0] == 0


def image_labels(masks: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Image-level label: the most frequent foreground class of each mask (-1 if there is none).

    Args:
        masks: (B, H, W) int64 class ids.

    Returns:
        (B,) int64 labels in [1, num_classes) or -1 for images without foreground pixels.
    """
    labels = []
    for mask in masks:
        m = mask[(mask != 0) & (mask != ignore_index)]
        labels.append(int(torch.bincount(m).argmax()) if m.numel() else -1)
    return torch.tensor(labels, dtype=torch.long)
