"""Cityscapes (fine annotations) segmentation reader: label ids mapped to the 19 train ids.

Layout (``root`` holds both folders)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     label ids 0-33

Label ids of the 19 evaluated classes map to train ids 0-18; every other id (void, rarely-used classes)
maps to 255 (ignore), as in the official cityscapesScripts ``trainId`` definition.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.data.seg_base import SegmentationDataset
from sparsedino.errors import MissingDataError

# label id -> (train id, name) for the 19 evaluated classes (cityscapesScripts labels.py)
_TRAIN_IDS = {
    7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole", 19: "traffic light",
    20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky", 24: "person", 25: "rider", 26: "car",
    27: "truck", 28: "bus", 31: "train", 32: "motorcycle", 33: "bicycle",
}  # fmt: skip
CITYSCAPES_CLASSES = tuple(_TRAIN_IDS.values())
NUM_LABEL_IDS = 34  # label ids 0..33 appear in *_labelIds.png (license plate -1 is stored as 0 there)


def cityscapes_label_map() -> np.ndarray:
    """uint8 lookup table of 256 entries: label id -> train id (0-18) or 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(_TRAIN_IDS):
        table[label_id] = train_id
    return table


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes fine: 19 train ids, everything else 255.

    Args:
        root: folder containing ``leftImg8bit`` and ``gtFine``.
        split: ``train``, ``val`` or ``test``.
        transform: joint image + mask transform (default: normalise only).
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None
    ) -> None:
        root = Path(root)
        image_dir, mask_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise MissingDataError(
                    f"Cityscapes: folder {folder} does not exist; expected leftImg8bit/<split>/<city>/ and "
                    "gtFine/<split>/<city>/"
                )
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise MissingDataError(f"Cityscapes: no *_leftImg8bit.png files under {image_dir}/<city>/")
        pairs = [
            (p, mask_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
            for p in images
        ]
        valid = range(NUM_LABEL_IDS)
        names = CITYSCAPES_CLASSES
        super().__init__(pairs, names, cityscapes_label_map(), valid, transform, name=f"Cityscapes[{split}]")
        self.root, self.split = root, split
