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
        gram_size: > 0: also return each global crop at this side for a Gram teacher (DINOv3): the crop is
            taken at ``max(gram_size, global_size)`` and resized to both sides (bicubic).
        gram_no_distortions: the Gram teacher's crops skip the colour jitter, blur and solarisation (DINOv3's
            ``gram_teacher_no_distortions``); otherwise they are the distorted global crops, resized.

    Returns (when called):
        A list of ``n_global + n_local`` float tensors, ``(3, global_size, global_size)`` first, followed by
        ``n_global`` crops ``(3, gram_size, gram_size)`` when ``gram_size > 0``.
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
        gram_size: int = 0,
        gram_no_distortions: bool = True,
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
        self.gram_size, self.gram_no_distortions = gram_size, gram_no_distortions
        if gram_size > 0:  # DINOv3's order: one crop at the larger side, resized for student and Gram teacher
            big = max(gram_size, global_size)
            self.gram_base = T.Compose([crop(big, global_scale), T.RandomHorizontalFlip(p=0.5)])
            photometric = [T.RandomApply([jitter], p=0.8), T.RandomGrayscale(p=grayscale_p)]
            self.gram_distort = [
                T.Compose([*photometric, RandomGaussianBlur(1.0, **radius)]),
                T.Compose(
                    [*photometric, RandomGaussianBlur(0.1, **radius), T.RandomSolarize(128, p=solarize_p)]
                ),
            ]
            self.resize_global = T.Resize(global_size, interpolation=InterpolationMode.BICUBIC)
            self.resize_gram = T.Resize(gram_size, interpolation=InterpolationMode.BICUBIC)
            self.to_tensor = T.Compose(to_tensor)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        if self.gram_size > 0:
            return self._with_gram_crops(image)
        crops = [self.global1(image)]
        crops += [self.global2(image) for _ in range(self.n_global - 1)]
        crops += [self.local(image) for _ in range(self.n_local)]
        return crops

    def _with_gram_crops(self, image: Image.Image) -> list[torch.Tensor]:
        """Global crops, local crops, then the Gram teacher's versions of the global crops."""
        globals_, grams = [], []
        for i in range(self.n_global):
            base = self.gram_base(image)  # PIL crop at the larger side, flipped
            distort = self.gram_distort[min(i, 1)]
            if self.gram_no_distortions:
                globals_.append(self.to_tensor(distort(self.resize_global(base))))
                grams.append(self.to_tensor(self.resize_gram(base)))
            else:
                distorted = distort(base)
                globals_.append(self.to_tensor(self.resize_global(distorted)))
                grams.append(self.to_tensor(self.resize_gram(distorted)))
        return [*globals_, *(self.local(image) for _ in range(self.n_local)), *grams]
