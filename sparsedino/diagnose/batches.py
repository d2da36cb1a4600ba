"""Batches of the diagnostics: (image, mask) items checked and resized to one square size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ResizeCollate", "resize_pair"]


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize an image (3, H, W) bilinearly and its mask (H, W) by nearest neighbour to size x size."""
    img = F.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    msk = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")
    return img[0], msk[0, 0].long()


class ResizeCollate:
    """DataLoader collate: check each (image (3, H, W), mask (H, W)) item and resize both to ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        for img, msk in items:
            if img.ndim != 3 or msk.ndim != 2 or tuple(img.shape[1:]) != tuple(msk.shape):
                raise ValueError(
                    f"dataset items must be (image (3, H, W), mask (H, W)); got image {tuple(img.shape)} "
                    f"and mask {tuple(msk.shape)}"
                )
        pairs = [resize_pair(torch.as_tensor(img), torch.as_tensor(msk), self.size) for img, msk in items]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
