"""Joint transforms keep image and mask aligned; masks use nearest and pad with ignore."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from sparsedino.data.joint_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    make_seg_eval_transform,
    make_seg_fixed_transform,
    make_seg_train_transform,
)


def _pair(height: int = 40, width: int = 60):
    # label = column band; the image's red channel encodes the same band, so alignment is checkable
    labels = (torch.arange(width) // 10).expand(height, width).to(torch.uint8)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0] = labels * 40
    return tv_tensors.Image(image), tv_tensors.Mask(labels)


def _red_uint8(image: torch.Tensor) -> torch.Tensor:
    return image[0] * IMAGENET_STD[0] * 255 + IMAGENET_MEAN[0] * 255


def test_train_transform_aligned_crops_with_ignore_padding():
    torch.manual_seed(0)
    transform = make_seg_train_transform(crop_size=48, ratio_range=(0.5, 2.0))
    saw_padding = False
    for _ in range(20):
        image, mask = transform(*_pair())
        assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}  # nearest: no blended labels
        saw_padding |= bool((mask == 255).any())
        valid = mask != 255
        # the red channel decodes to the mask's label except on resampled edges (antialiasing blurs them)
        decoded = (_red_uint8(image) / 40).round()
        agreement = (decoded[valid] == mask[valid].float()).float().mean()
        assert agreement > 0.85
    assert saw_padding  # a ratio-0.5 scale makes the 40 px short side smaller than the crop


def test_fixed_and_eval_transforms():
    image, mask = make_seg_fixed_transform(32)(*_pair())
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    image, mask = make_seg_eval_transform(short_side=20)(*_pair())
    assert image.shape == (3, 20, 30)
    assert mask.shape == (40, 60)  # labels stay at their original resolution for the metric
