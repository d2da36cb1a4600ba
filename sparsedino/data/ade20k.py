"""ADE20K (SceneParsing, ``ADEChallengeData2016``) segmentation reader: 150 classes, label 0 ignored.

Layout (``root`` may be ``ADEChallengeData2016`` or its parent)::

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png     grayscale, 0 = other, 1-150 classes

As in mmseg's ``reduce_zero_label``: raw 0 -> 255 (ignore) and raw k -> k - 1, giving labels 0-149.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.data.seg_base import SegmentationDataset
from sparsedino.errors import DataError, MissingDataError

ADE20K_NUM_CLASSES = 150
_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def _ade_class_names() -> list[str]:
    # The 150 SceneParsing names (objectInfo150), first name of each entry.
    names = [
        "wall",
        "building",
        "sky",
        "floor",
        "tree",
        "ceiling",
        "road",
        "bed",
        "windowpane",
        "grass",
        "cabinet",
        "sidewalk",
        "person",
        "earth",
        "door",
        "table",
        "mountain",
        "plant",
        "curtain",
        "chair",
        "car",
        "water",
        "painting",
        "sofa",
        "shelf",
        "house",
        "sea",
        "mirror",
        "rug",
        "field",
        "armchair",
        "seat",
        "fence",
        "desk",
        "rock",
        "wardrobe",
        "lamp",
        "bathtub",
        "railing",
        "cushion",
        "base",
        "box",
        "column",
        "signboard",
        "chest_of_drawers",
        "counter",
        "sand",
        "sink",
        "skyscraper",
        "fireplace",
        "refrigerator",
        "grandstand",
        "path",
        "stairs",
        "runway",
        "case",
        "pool_table",
        "pillow",
        "screen_door",
        "stairway",
        "river",
        "bridge",
        "bookcase",
        "blind",
        "coffee_table",
        "toilet",
        "flower",
        "book",
        "hill",
        "bench",
        "countertop",
        "stove",
        "palm",
        "kitchen_island",
        "computer",
        "swivel_chair",
        "boat",
        "bar",
        "arcade_machine",
        "hovel",
        "bus",
        "towel",
        "light",
        "truck",
        "tower",
        "chandelier",
        "awning",
        "streetlight",
        "booth",
        "television_receiver",
        "airplane",
        "dirt_track",
        "apparel",
        "pole",
        "land",
        "bannister",
        "escalator",
        "ottoman",
        "bottle",
        "buffet",
        "poster",
        "stage",
        "van",
        "ship",
        "fountain",
        "conveyer_belt",
        "canopy",
        "washer",
        "plaything",
        "swimming_pool",
        "stool",
        "barrel",
        "basket",
        "waterfall",
        "tent",
        "bag",
        "minibike",
        "cradle",
        "oven",
        "ball",
        "food",
        "step",
        "tank",
        "trade_name",
        "microwave",
        "pot",
        "animal",
        "bicycle",
        "lake",
        "dishwasher",
        "screen",
        "blanket",
        "sculpture",
        "hood",
        "sconce",
        "vase",
        "traffic_light",
        "tray",
        "ashcan",
        "fan",
        "pier",
        "crt_screen",
        "plate",
        "monitor",
        "bulletin_board",
        "shower",
        "radiator",
        "glass",
        "clock",
        "flag",
    ]
    assert len(names) == ADE20K_NUM_CLASSES
    return names


class ADE20KSegmentation(SegmentationDataset):
    """ADE20K SceneParsing: 150 labels (raw 0 ignored, others shifted down by one), 255 = ignore.

    Args:
        root: ``ADEChallengeData2016`` or a folder containing it.
        split: ``train`` / ``training`` or ``val`` / ``validation``.
        transform: joint image + mask transform (default: normalise only).
    """

    def __init__(
        self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None
    ) -> None:
        root = Path(root)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        if split not in _SPLITS:
            raise DataError(f"ADE20K: unknown split {split!r}; expected one of {sorted(_SPLITS)}")
        image_dir, mask_dir = root / "images" / _SPLITS[split], root / "annotations" / _SPLITS[split]
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise MissingDataError(
                    f"ADE20K: folder {folder} does not exist; expected "
                    "ADEChallengeData2016/{images,annotations}/{training,validation}"
                )
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise MissingDataError(f"ADE20K: no images in {image_dir}")
        pairs = [(p, mask_dir / f"{p.stem}.png") for p in images]
        label_map = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # reduce_zero_label: 0 -> 255, k -> k - 1
        label_map[1 : ADE20K_NUM_CLASSES + 1] = np.arange(ADE20K_NUM_CLASSES)
        valid = range(ADE20K_NUM_CLASSES + 1)
        super().__init__(pairs, _ade_class_names(), label_map, valid, transform, name=f"ADE20K[{split}]")
        self.root, self.split = root, split
