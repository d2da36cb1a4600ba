"""PASCAL VOC 2012 segmentation reader (also reads the embedded dataset, written in the same layout).

Layout (``root`` may be the ``VOC2012`` folder itself or a folder containing it, e.g. ``VOCdevkit``)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png          palette PNGs: 0 background, 1-20 classes, 255 void border
    VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOC2012/SegmentationClassAug/<id>.png       optional SBD "aug" masks (grayscale PNGs, same values)
    VOC2012/ImageSets/Segmentation/train_aug.txt    optional, the 10,582-image SBD train list
    VOC2012/classes.txt                         optional: one class name per line (the embedded dataset
                                                writes it); without it the 21 VOC classes are used
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.data.lists import read_lines
from sparsedino.data.seg_base import SegmentationDataset
from sparsedino.errors import DataError, MissingDataError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def find_voc_root(root: str | os.PathLike) -> Path:
    """The ``VOC2012`` folder given itself or a parent (``VOCdevkit``, the embedded dataset root)."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise MissingDataError(
        f"VOC: no JPEGImages folder in {root}, {root / 'VOC2012'} or {root / 'VOCdevkit/VOC2012'}; "
        "expected the VOC 2012 layout (VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation})"
    )


class VOCSegmentation(SegmentationDataset):
    """VOC 2012 semantic segmentation: 21 labels (0 = background), 255 = ignore.

    Args:
        root: the ``VOC2012`` folder or a parent of it.
        split: a list name in ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``, ``train_aug``).
            ``train_aug`` reads its masks from ``SegmentationClassAug``.
        transform: joint image + mask transform (default: normalise only).
        mask_dir: override the mask folder name.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        mask_dir: str | None = None,
    ) -> None:
        voc = find_voc_root(root)
        list_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            lists = sorted(p.stem for p in (voc / "ImageSets" / "Segmentation").glob("*.txt"))
            raise MissingDataError(f"VOC: split list {list_file} does not exist (available splits: {lists})")
        if mask_dir is None:
            mask_dir = "SegmentationClassAug" if split.endswith("aug") else "SegmentationClass"
        if not (voc / mask_dir).is_dir():
            raise MissingDataError(f"VOC: mask folder {voc / mask_dir} does not exist (split {split!r})")
        ids = [line.split()[0] for line in read_lines(list_file, "VOC")]
        pairs = [(voc / "JPEGImages" / f"{i}.jpg", voc / mask_dir / f"{i}.png") for i in ids]
        names_file = voc / "classes.txt"
        names = read_lines(names_file, "VOC") if names_file.is_file() else VOC_CLASSES
        if not 2 <= len(names) <= 255:
            raise DataError(f"VOC: {names_file} must list between 2 and 255 class names, got {len(names)}")
        label_map = np.arange(256, dtype=np.uint8)  # VOC masks already hold training labels
        valid = [*range(len(names)), IGNORE_INDEX]
        super().__init__(pairs, names, label_map, valid, transform, name=f"VOC[{split}]")
        self.root, self.split = voc, split
