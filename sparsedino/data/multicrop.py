"""DINO's multi-crop augmentation: 2 global views + N small local views of one image.

Per view (as in DINO): bicubic RandomResizedCrop, horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1)
with p=0.8, grayscale p=0.2, then Gaussian blur (global 1: always, global 2: p=0.1, locals: p=0.5),
solarisation on global 2 (p=0.2), tensor conversion and ImageNet normalisation. The photometric strengths
are arguments (DINO's values are the defaults) because tiny crops of small datasets need gentler ones: a
2-px blur radius erases an 8-px patch's texture, and hue jitter erases a colour cue.

All randomness comes from torch's global generator, so seeding it right before the call (as
:class:`sparsedino.train.data.MultiCropDataset` does per sample) makes the crops reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from sparsedino.data.joint_transforms import IMAGENET_MEAN, IMAGENET_STD


class RandomGaussianBlur:
    """PIL Gaussian blur with probability ``p`` and a radius drawn uniformly from ``[radius_min, radius_max]``."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return img
        radius = self.radius_min + (self.radius_max - self.radius_min) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


class MultiCropAugmentation:
    """Turn one PIL image into ``n_global`` global crops followed by ``n_local`` local crops.

    Args:
        global_size: side of the global crops (DINO: 224).
        local_size: side of the local crops (DINO: 96).
        global_scale: area range of the global RandomResizedCrop (DINO: (0.4, 1.0); 800-ep model (0.25, 1)).
        local_scale: area range of the local crops (DINO: (0.05, 0.4)).
        n_local: number of local crops (DINO: 8; 0 disables multi-crop).
        n_global: number of global crops (DINO: 2; the teacher sees only these).
        color_jitter: strength multiplier of DINO's colour jitter (brightness 0.4, contrast 0.4,
            saturation 0.2, hue 0.1, each times this; 0 disables it).
        grayscale_p: probability of converting a crop to grayscale (DINO: 0.2).
        blur_radius: (min, max) Gaussian blur radius in pixels (DINO: (0.1, 2.0) at 224 px).
        solarize_p: probability of solarising the second global crop (DINO: 0.2).
        mean, std: normalisation constants.

    Returns (when called):
        A list of ``n_global + n_local`` float tensors, ``(3, global_size, global_size)`` first.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        n_local: int = 8,
        n_global: int = 2,
        color_jitter: float = 1.0,
        grayscale_p: float = 0.2,
        blur_radius: Sequence[float] = (0.1, 2.0),
        solarize_p: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if n_global < 1:
            raise ValueError(f"n_global must be >= 1, got {n_global}")
        if color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {color_jitter}")
        for name, p in (("grayscale_p", grayscale_p), ("solarize_p", solarize_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if len(blur_radius) != 2 or not 0 < blur_radius[0] <= blur_radius[1]:
            raise ValueError(f"blur_radius must be (min, max) with 0 < min <= max, got {tuple(blur_radius)}")
        for name, scale in (("global_scale", global_scale), ("local_scale", local_scale)):
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}")
        self.n_global, self.n_local = n_global, n_local
        s = color_jitter
        jitter = T.ColorJitter(brightness=0.4 * s, contrast=0.4 * s, saturation=0.2 * s, hue=0.1 * s)
        flip_and_jitter = [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([jitter], p=0.8),
            T.RandomGrayscale(p=grayscale_p),
        ]
        radius = {"radius_min": blur_radius[0], "radius_max": blur_radius[1]}
        to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]

        def crop(size: int, scale: Sequence[float]) -> T.Transform:
            return T.RandomResizedCrop(size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC)

        self.global1 = T.Compose(
            [crop(global_size, global_scale), *flip_and_jitter, RandomGaussianBlur(1.0, **radius), *to_tensor]
        )
        self.global2 = T.Compose(
            [
                crop(global_size, global_scale),
                *flip_and_jitter,
                RandomGaussianBlur(0.1, **radius),
                T.RandomSolarize(threshold=128, p=solarize_p),
                *to_tensor,
            ]
        )
        self.local = T.Compose(
            [crop(local_size, local_scale), *flip_and_jitter, RandomGaussianBlur(0.5, **radius), *to_tensor]
        )

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global1(image)]
        crops += [self.global2(image) for _ in range(self.n_global - 1)]
        crops += [self.local(image) for _ in range(self.n_local)]
        return crops
