"""Joint image + mask transforms for segmentation, built on torchvision transforms v2.

Images are ``tv_tensors.Image`` and masks ``tv_tensors.Mask``: v2 resizes masks with nearest-neighbour
interpolation, pads them with the ignore value and leaves them out of colour/normalisation ops, so one
pipeline transforms both consistently. The train pipeline follows mmseg's (DINOv2's) segmentation recipe:
resize so the short side is ``base_size`` times a random ratio in ``ratio_range``, random crop (padded with
ignore where the image is smaller), horizontal flip, normalise.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from sparsedino.data.labels import IGNORE_INDEX

# DINO's input normalisation, ImageNet's mean and std: timm's constants are their one home.
IMAGENET_MEAN = IMAGENET_DEFAULT_MEAN
IMAGENET_STD = IMAGENET_DEFAULT_STD


def _short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    scale = short / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class RandomShortSideScale(v2.Transform):
    """Resize image and mask together so the short side is ``base_size * U(ratio_range)`` (aspect kept).

    Args:
        base_size: short side at ratio 1.
        ratio_range: (low, high) of the uniform random ratio.
    """

    def __init__(self, base_size: int, ratio_range: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        self.base_size = base_size
        self.ratio_range = ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        short = max(1, round(self.base_size * random.uniform(*self.ratio_range)))
        return {"size": list(_short_side_size(height, width, short))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)

    # torchvision < 0.21 calls the private names
    _get_params = make_params
    _transform = transform


class ResizeImageOnly(v2.Transform):
    """Resize the image so its short side is ``short_side``; the mask keeps its original resolution.

    Used at evaluation: predictions are upsampled back to the original mask, as in mmseg, so the metric is
    computed on the dataset's own labels and not on resampled ones.
    """

    def __init__(self, short_side: int) -> None:
        super().__init__()
        self.short_side = short_side

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) or not isinstance(inpt, (tv_tensors.Image, torch.Tensor)):
            return inpt
        height, width = inpt.shape[-2:]
        return F.resize(inpt, list(_short_side_size(height, width, self.short_side)), antialias=True)

    _transform = transform  # torchvision < 0.21 calls the private name


def _to_float_normalised(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean, std),
    ]


def make_seg_train_transform(
    crop_size: int = 512,
    base_size: int | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> v2.Compose:
    """The mmseg/DINOv2 train pipeline: random short-side scale, random crop (ignore-padded), flip, normalise.

    Args:
        crop_size: side of the square training crop.
        base_size: short side at scale ratio 1 (default ``crop_size``).
        ratio_range: random scale ratio range.
        hflip: random horizontal flip with p = 0.5.
        mean: normalisation mean (RGB, 0-1 scale).
        std: normalisation std.
        ignore_index: mask value used for padding.
    """
    ops: list[v2.Transform] = [v2.ToImage(), RandomShortSideScale(base_size or crop_size, ratio_range)]
    ops.append(
        v2.RandomCrop(
            crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
        )
    )
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops + _to_float_normalised(mean, std))


def make_seg_fixed_transform(
    size: int,
    short_side: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Deterministic train view for feature caching: resize the short side, centre crop ``size``.

    Args:
        size: side of the square crop.
        short_side: short side after the resize (default ``size``); pass the evaluation scale so the probe
            trains and is evaluated at the same scale. Must be >= ``size``.

    Image and mask are transformed together (mask nearest), so cached features line up with cached masks.
    """
    short_side = short_side or size
    if short_side < size:
        raise ValueError(
            f"short_side {short_side} must be >= the crop size {size} (no padding in a cached view)"
        )
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(short_side, antialias=True),
            v2.CenterCrop(size),
            *_to_float_normalised(mean, std),
        ]
    )


def make_seg_eval_transform(
    short_side: int | None = None, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Evaluation: optionally resize the image's short side (mask untouched), normalise.

    Args:
        short_side: target short side of the image, or None to keep the original resolution.
    """
    ops: list[v2.Transform] = [v2.ToImage()]
    if short_side is not None:
        ops.append(ResizeImageOnly(short_side))
    return v2.Compose(ops + _to_float_normalised(mean, std))


def make_classification_transform(
    train: bool,
    crop: int = 224,
    resize: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """DINO's classification views: train RandomResizedCrop + flip; eval Resize + CenterCrop ``crop``.

    As in DINO's ``eval_linear.py``: the train crop uses torchvision's default (bilinear) interpolation,
    the eval resize is bicubic.

    Args:
        train: random (train) or deterministic (eval / feature caching) pipeline.
        crop: output side.
        resize: short side before the centre crop (eval only).
    """
    if train:
        ops: list[v2.Transform] = [
            v2.ToImage(),
            v2.RandomResizedCrop(crop, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        ops = [
            v2.ToImage(),
            v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(crop),
        ]
    return v2.Compose(ops + _to_float_normalised(mean, std))
