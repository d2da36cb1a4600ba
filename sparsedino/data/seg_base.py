"""Base class of the segmentation readers (VOC, ADE20K, Cityscapes; :mod:`sparsedino.data.segmentation`
builds them by name).

A reader only lists (image, mask) file pairs and says how raw mask values map to training labels; this
class loads, validates and transforms. Every sample is checked: image and mask must have the same size and
the raw mask may only contain the dataset's own values, otherwise the error names the file and the values
(a wrong annotation folder, e.g. colour PNGs or instance ids, is caught at the first sample, not after an
hour of training on garbage).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from sparsedino.data.images import BadImageError, load_rgb
from sparsedino.data.joint_transforms import make_seg_eval_transform
from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.errors import DataError, MissingDataError


class SegmentationDataset(Dataset):
    """(image, mask) pairs with a raw-value -> label lookup table.

    Args:
        pairs: ``(image_path, mask_path)`` for every sample, in a fixed order.
        class_names: names of the ``num_classes`` training labels.
        label_map: uint8 array of 256 entries mapping raw mask values to labels (255 = ignore).
        valid_raw: the raw values the annotation format may contain; any other value is an error.
        transform: joint transform called as ``transform(tv_tensors.Image, tv_tensors.Mask)``; default:
            normalise only (original resolution).
        name: dataset name used in messages.

    ``__getitem__`` returns ``(image (3, H, W) float32 normalised, mask (H, W) int64 with 255 = ignore)``.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        label_map: np.ndarray,
        valid_raw: Sequence[int],
        transform: Callable | None = None,
        name: str = "segmentation",
    ) -> None:
        if not pairs:
            raise MissingDataError(f"{name}: no samples found")
        missing = [str(p) for pair in pairs for p in pair if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise MissingDataError(f"{name}: {len(missing)} listed files are missing: {missing[:5]}{more}")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.label_map = np.asarray(label_map, dtype=np.uint8)
        self.valid_raw = np.zeros(256, bool)
        self.valid_raw[np.asarray(list(valid_raw), dtype=np.int64)] = True
        self.transform = transform if transform is not None else make_seg_eval_transform()
        self.name = name

    def __len__(self) -> int:
        return len(self.pairs)

    def load_raw(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The RGB image and the *mapped* label array (H, W) uint8 of sample ``index``, validated."""
        image_path, mask_path = self.pairs[index]
        try:
            image = load_rgb(image_path)
        except BadImageError as err:
            raise BadImageError(f"{self.name}: {err}") from err
        try:
            with Image.open(mask_path) as handle:
                if handle.mode not in ("P", "L", "I", "I;16"):
                    raise DataError(
                        f"{self.name}: mask {mask_path} has mode {handle.mode!r}; expected a single-channel "
                        "label PNG (palette or grayscale), not a colour rendering"
                    )
                raw = np.asarray(handle)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            if isinstance(err, DataError):
                raise
            raise BadImageError(f"{self.name}: cannot read mask {mask_path}: {err}") from err
        if raw.shape != (image.height, image.width):
            raise DataError(
                f"{self.name}: image {image_path} is {image.width}x{image.height} but its mask {mask_path} "
                f"is {raw.shape[1]}x{raw.shape[0]}"
            )
        if raw.dtype != np.uint8:
            if raw.min() < 0 or raw.max() > 255:
                bad = np.unique(raw[(raw < 0) | (raw > 255)])[:10].tolist()
                raise DataError(f"{self.name}: mask {mask_path} has label values {bad} outside 0-255")
            raw = raw.astype(np.uint8)
        present = np.unique(raw)
        bad = present[~self.valid_raw[present]]
        if bad.size:
            allowed = _ranges(np.flatnonzero(self.valid_raw))
            raise DataError(
                f"{self.name}: mask {mask_path} has label values {bad.tolist()} outside the dataset's set "
                f"({allowed})"
            )
        return image, self.label_map[raw]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.load_raw(index)
        image_t, mask_t = self.transform(
            tv_tensors.Image(np.asarray(image).transpose(2, 0, 1).copy()),
            tv_tensors.Mask(torch.from_numpy(labels)),
        )
        return image_t.as_subclass(torch.Tensor), mask_t.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, num_classes={self.num_classes})"


def _ranges(values: np.ndarray) -> str:
    """``[0,1,2,3,255]`` -> ``"0-3, 255"`` for error messages."""
    parts, start = [], None
    for i, v in enumerate(values.tolist()):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(parts)
