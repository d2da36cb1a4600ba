"""DAVIS-2017 reader for semi-supervised video object segmentation (also reads the embedded clips).

Layout (the official one; ``resolution`` names the frame folder, ``480p`` for the benchmark)::

    ROOT/ImageSets/2017/{train,val}.txt          one sequence name per line
    ROOT/JPEGImages/480p/<sequence>/00000.jpg    frames, sorted by file name
    ROOT/Annotations/480p/<sequence>/00000.png   palette PNGs of object ids: 0 background, 1..N objects

The first frame's annotation is required (it is what the method is given); the others are the ground
truth for scoring. Like the benchmark's reader, the number of objects of a sequence is the largest id in
its first annotation, and the value 255 (void) is read as background. Listing the dataset checks every
listed sequence's folders and first annotation, so a bad tree fails in seconds with the sequence named;
reading a frame or mask names the file when it is unreadable, of the wrong mode or size, or holds ids
the first frame does not have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sparsedino.data.lists import read_lines
from sparsedino.errors import DataError

VOID_ID = 255


class DavisError(DataError):
    """The DAVIS tree is malformed; the message names the sequence or frame file (a user error: exit 2)."""


@dataclass(frozen=True)
class DavisSequence:
    """One video: its frames and annotations (``None`` where a frame has no annotation file).

    Attributes:
        name: sequence name (its folder name).
        frames: JPEG paths in temporal order.
        annotations: PNG path per frame, ``None`` where absent.
        num_objects: largest object id in the first frame's annotation.
    """

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path | None, ...]
    num_objects: int

    def __len__(self) -> int:
        return len(self.frames)

    def frame_id(self, index: int) -> str:
        """The frame's file stem (``00000``): the name its predicted mask gets."""
        return self.frames[index].stem


class DavisDataset:
    """The sequences of one DAVIS split, validated when listed.

    Args:
        root: folder holding ``JPEGImages``, ``Annotations`` and ``ImageSets``.
        split: list name in ``ImageSets/<year>`` (``val``, ``train``).
        resolution: frame folder under ``JPEGImages`` and ``Annotations`` (``480p``).
        year: ``ImageSets`` sub-folder (``2017``).
        sequences: restrict to these names (each must be in the split list); None = all.
        max_sequences: keep only the first n listed sequences (0 = all).

    Raises:
        DavisError: a missing folder or list, an empty or unknown sequence, or an unreadable / empty
            first annotation; the message names the sequence and the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "val",
        resolution: str = "480p",
        year: str = "2017",
        sequences: list[str] | None = None,
        max_sequences: int = 0,
    ) -> None:
        self.root = Path(root)
        self.image_dir = self.root / "JPEGImages" / resolution
        self.mask_dir = self.root / "Annotations" / resolution
        list_file = self.root / "ImageSets" / year / f"{split}.txt"
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise DavisError(
                    f"DAVIS: folder {folder} does not exist; expected the DAVIS-2017 layout "
                    f"ROOT/{{JPEGImages,Annotations}}/{resolution}/<sequence>/ and ROOT/ImageSets/{year}/{split}.txt"
                )
        if not list_file.is_file():
            found = (
                sorted(p.stem for p in list_file.parent.glob("*.txt")) if list_file.parent.is_dir() else []
            )
            raise DavisError(f"DAVIS: split list {list_file} does not exist (lists found: {found})")
        names = read_lines(list_file, "DAVIS")
        if not names:
            raise DavisError(f"DAVIS: split list {list_file} names no sequence")
        if sequences:
            unknown = [s for s in sequences if s not in names]
            if unknown:
                raise DavisError(f"DAVIS: sequences {unknown} are not in {list_file}")
            names = [n for n in names if n in sequences]
        if max_sequences > 0:
            names = names[:max_sequences]
        self.split = split
        self.sequences = [self._list_sequence(name) for name in names]

    def _list_sequence(self, name: str) -> DavisSequence:
        frame_dir = self.image_dir / name
        frames = tuple(sorted(frame_dir.glob("*.jpg")))
        if not frames:
            raise DavisError(f"DAVIS: sequence {name!r} has no frames ({frame_dir}/*.jpg)")
        annotations = tuple(
            path if (path := self.mask_dir / name / f"{frame.stem}.png").is_file() else None
            for frame in frames
        )
        first = annotations[0]
        if first is None:
            raise DavisError(
                f"DAVIS: sequence {name!r} has no annotation of its first frame "
                f"({self.mask_dir / name / (frames[0].stem + '.png')})"
            )
        num_objects = int(read_annotation(first).max())
        if num_objects == 0:
            raise DavisError(
                f"DAVIS: sequence {name!r}: first annotation {first} holds no object (only id 0)"
            )
        return DavisSequence(name, frames, annotations, num_objects)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> DavisSequence:
        return self.sequences[index]

    def load_frame(self, seq: DavisSequence, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB; an unreadable file is named in the error."""
        path = seq.frames[index]
        try:
            with Image.open(path) as handle:
                return np.asarray(handle.convert("RGB"))
        except OSError as err:
            raise DavisError(f"DAVIS: sequence {seq.name!r}: cannot read frame {path}: {err}") from err

    def load_mask(
        self, seq: DavisSequence, index: int, size: tuple[int, int] | None = None
    ) -> np.ndarray | None:
        """Annotation of frame ``index`` as (H, W) uint8 object ids (void read as 0), None if absent.

        Args:
            seq: the sequence.
            index: frame index.
            size: expected (height, width), e.g. the frame's; a mismatch is an error naming both.

        Raises:
            DavisError: unreadable file, colour (non-index) PNG, wrong size, or ids above the first frame's.
        """
        path = seq.annotations[index]
        if path is None:
            return None
        mask = read_annotation(path, seq.name)
        if size is not None and mask.shape != tuple(size):
            raise DavisError(
                f"DAVIS: sequence {seq.name!r}: annotation {path} is {mask.shape[1]}x{mask.shape[0]} but its "
                f"frame is {size[1]}x{size[0]}"
            )
        if int(mask.max()) > seq.num_objects:
            extra = sorted(set(np.unique(mask).tolist()) - set(range(seq.num_objects + 1)))
            raise DavisError(
                f"DAVIS: sequence {seq.name!r}: annotation {path} holds object ids {extra} that the first frame "
                f"(ids 1-{seq.num_objects}) does not have"
            )
        return mask


def read_annotation(path: Path, sequence: str | None = None) -> np.ndarray:
    """A DAVIS annotation PNG as (H, W) uint8 object ids, with the void value 255 read as background."""
    where = f"sequence {sequence!r}: " if sequence else ""
    try:
        with Image.open(path) as handle:
            if handle.mode not in ("P", "L"):
                raise DavisError(
                    f"DAVIS: {where}annotation {path} has mode {handle.mode!r}; expected an indexed (palette) or "
                    "grayscale PNG of object ids, not a colour rendering"
                )
            mask = np.array(handle, dtype=np.uint8)
    except OSError as err:
        raise DavisError(f"DAVIS: {where}cannot read annotation {path}: {err}") from err
    mask[mask == VOID_ID] = 0
    return mask
