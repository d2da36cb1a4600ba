"""The segmentation datasets by name: :data:`SEG_READERS` and the :func:`build_seg_dataset` factory.

:data:`SEG_DATASETS` (the table's keys) is the one list of the names: options and config keys that name a
segmentation dataset are checked against it; :data:`SEG_TITLES` is how reports name each one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sparsedino.data.ade20k import ADE20KSegmentation
from sparsedino.data.cityscapes import CityscapesSegmentation
from sparsedino.data.seg_base import SegmentationDataset
from sparsedino.data.voc import VOCSegmentation

# name -> reader; "voc" also reads the embedded dataset (written in the VOC layout)
SEG_READERS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCSegmentation,
    "ade20k": ADE20KSegmentation,
    "cityscapes": CityscapesSegmentation,
}
SEG_DATASETS: tuple[str, ...] = tuple(SEG_READERS)
# name -> the dataset's name in reports (tables, metric names)
SEG_TITLES: dict[str, str] = {"voc": "VOC 2012", "ade20k": "ADE20K", "cityscapes": "Cityscapes"}


def build_seg_dataset(
    name: str, root: str | os.PathLike, split: str, transform: Callable | None = None, **kwargs
) -> SegmentationDataset:
    """Build a segmentation reader by name.

    Args:
        name: one of :data:`SEG_DATASETS` (``"voc"`` also serves the embedded dataset).
        root: dataset root in the official layout (see each reader).
        split: ``"train"``, ``"val"`` (VOC also ``"train_aug"``, ``"trainval"``).
        transform: joint transform; default normalise only.
        **kwargs: reader-specific options.

    Raises:
        ValueError: for an unknown dataset name.
    """
    if name not in SEG_READERS:
        raise ValueError(f"unknown segmentation dataset {name!r}; expected one of {sorted(SEG_READERS)}")
    return SEG_READERS[name](root, split, transform=transform, **kwargs)
