"""Fixtures of the data tests: tiny dataset trees in the official layouts, built on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsedino.data.synthetic import voc_palette, write_synthetic_dataset


def save_rgb(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), "RGB").save(path, format=fmt)


def save_mask(path: Path, mask: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), "P" if palette else "L")
    if palette:
        image.putpalette(voc_palette())
    image.save(path)


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small embedded dataset (40 train / 16 val images of 32 px, 4 classes)."""
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, n_train=40, n_val=16, size=32, seed=3, num_classes=4)
    return root


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """VOC2012 tree: train (2 ids) and val (1 id) with palette PNGs; train_aug with grayscale SBD masks."""
    rng = np.random.default_rng(0)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    ids = {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]}
    for split, names in ids.items():
        for name in names:
            save_rgb(voc / "JPEGImages" / f"{name}.jpg", random_image(rng, 20, 30), "JPEG")
            mask = np.zeros((20, 30), np.uint8)
            mask[5:15, 5:20] = 15  # person
            mask[4, 5:20] = 255
            save_mask(voc / "SegmentationClass" / f"{name}.png", mask, palette=True)
            save_mask(voc / "SegmentationClassAug" / f"{name}.png", mask)
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "\n".join(ids["train"] + ids["val"]) + "\n"
    )
    return tmp_path / "VOCdevkit"


@pytest.fixture
def ade_root(tmp_path) -> Path:
    """ADEChallengeData2016 with one training image whose annotation holds 0..150."""
    rng = np.random.default_rng(1)
    root = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        save_rgb(root / "images" / split / f"ADE_{split}_00000001.jpg", random_image(rng, 16, 16), "JPEG")
        annotation = np.arange(256).reshape(16, 16).clip(0, 150)
        save_mask(root / "annotations" / split / f"ADE_{split}_00000001.png", annotation)
    return tmp_path


@pytest.fixture
def cityscapes_root(tmp_path) -> Path:
    """leftImg8bit + gtFine labelIds for one city per split."""
    rng = np.random.default_rng(2)
    root = tmp_path / "cityscapes"
    for split in ("train", "val"):
        stem = "aachen_000000_000019"
        save_rgb(
            root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", random_image(rng, 8, 16)
        )
        label_ids = np.tile(np.arange(16) + 18, (8, 1))  # ids 18..33
        label_ids[0, 0], label_ids[0, 1] = 7, 0  # road, unlabeled
        save_mask(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", label_ids)
    return root


@pytest.fixture
def writers():
    """The PNG/JPEG writers above, for tests that corrupt a fixture tree."""
    from types import SimpleNamespace

    return SimpleNamespace(save_mask=save_mask, save_rgb=save_rgb)
