"""Fixtures for the training tests: a tiny ImageNet-style folder and a tiny DINO config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_OVERRIDES = [
    "model.arch=vit_pico",
    "model.patch_size=8",
    "model.img_size=32",
    "model.out_dim=64",
    "model.hidden_dim=64",
    "model.bottleneck_dim=32",
    "model.drop_path_rate=0.0",
    "data.num_workers=0",
    "data.global_crop_size=32",
    "data.local_crop_size=16",
    "data.local_crops_number=2",
    "optim.batch_size_per_gpu=8",
    "optim.epochs=2",
    "optim.warmup_epochs=0",
    "optim.freeze_last_layer=0",
    "run.device=cpu",
    "run.precision=fp32",
    "run.progress=false",
    "run.log_every=1",
    "log.tensorboard=false",
]


def write_image_folder(
    root: Path, n_classes: int = 4, per_class: int = 8, size: int = 40, seed: int = 0
) -> Path:
    """Write ``root/train/class{c}/{i}.png``: noisy images whose dominant colour depends on the class."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3))
            base[..., c % 3] = 200
            base[: size // 2, :, (c + 1) % 3] = 120 * (c // 3)
            img = (base + rng.normal(0, 40, (size, size, 3))).clip(0, 255).astype("uint8")
            Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """32 images (4 classes x 8) of 40 px."""
    return write_image_folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture()
def tiny_overrides():
    """``tiny_overrides(data_root, out_dir, *extra)`` -> overrides of a seconds-long DINO run."""

    def make(data: Path, out: Path, *extra: str) -> list[str]:
        return [*TINY_OVERRIDES, f"data.path={data}", f"run.output_dir={out}", *extra]

    return make


@pytest.fixture()
def make_images():
    """``make_images(root, **kw)`` writes an image folder (see :func:`write_image_folder`)."""
    return write_image_folder
