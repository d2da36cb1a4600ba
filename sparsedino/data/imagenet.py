"""ImageNet-style image folders: ``root/<split>/<class>/*.{jpg,jpeg,png,...}``.

Problems are reported, never hidden: a missing or empty folder raises an error naming the path, and an
unreadable image either raises (``on_bad_image="error"``) or is skipped and counted
(``on_bad_image="skip"``; see :attr:`ImageNetFolder.num_skipped` and the warning it logs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from sparsedino.data.images import BadImageError, load_rgb
from sparsedino.errors import DataError, MissingDataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BAD_IMAGE_POLICIES = ("error", "skip")

log = logging.getLogger(__name__)


class ImageNetFolder(Dataset):
    """Labelled images in ``root/<split>/<class>/<image>``; classes are the sorted sub-folder names.

    Args:
        root: dataset root holding the ``split`` folder (or the split folder itself when ``split=None``).
        split: sub-folder name (``"train"``, ``"val"``) or None.
        transform: applied to the RGB ``PIL.Image``; its result is returned.
        on_bad_image: ``"error"`` raises :class:`BadImageError` naming the file; ``"skip"`` returns the
            next readable image instead and counts the skipped file (a warning is logged each time).

    Raises:
        MissingDataError: the split folder does not exist (a ``FileNotFoundError``).
        DataError: no class folders or no image files (a ``ValueError``).
        ValueError: an unknown ``on_bad_image`` policy.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        on_bad_image: str = "error",
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.root = Path(root)
        self.split = split
        self.folder = self.root / split if split else self.root
        self.transform = transform
        self.on_bad_image = on_bad_image
        if not self.folder.is_dir():
            raise MissingDataError(
                f"image folder {str(self.folder)!r} does not exist (expected {self.root}/<split>/<class>/*.jpg)"
            )
        self.classes = sorted(
            p.name for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not self.classes:
            raise DataError(f"image folder {str(self.folder)!r} has no class sub-folders")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            files = sorted(
                p
                for p in (self.folder / name).rglob("*")
                if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
            )
            self.samples += [(str(p), self.class_to_idx[name]) for p in files]
        if not self.samples:
            raise DataError(
                f"image folder {str(self.folder)!r} has {len(self.classes)} class folders but no images "
                f"with extensions {', '.join(IMG_EXTENSIONS)}"
            )
        self.targets = [label for _, label in self.samples]
        self._skipped: set[str] = set()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # DataLoader workers started with "spawn" (macOS, Windows) pickle the dataset; locks don't pickle.
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def num_skipped(self) -> int:
        """Unreadable files skipped so far in this process (each counted once)."""
        return len(self._skipped)

    @property
    def skipped_files(self) -> list[str]:
        """Paths of the unreadable files skipped so far in this process."""
        return sorted(self._skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """Decode sample ``index`` as RGB, raising :class:`BadImageError` naming the file on failure."""
        return load_rgb(self.samples[index][0])

    def fetch(self, index: int) -> tuple[Any, int, list[str]]:
        """Like ``__getitem__`` but also return the unreadable files skipped to produce this sample.

        Training loops use it to count skipped images across data-loader worker processes.
        """
        skipped: list[str] = []
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                image = self.load_image(i)
            except BadImageError as err:
                if self.on_bad_image == "error":
                    raise
                skipped.append(self.samples[i][0])
                with self._lock:
                    if self.samples[i][0] not in self._skipped:
                        self._skipped.add(self.samples[i][0])
                        log.warning(
                            "skipping unreadable image (%d skipped so far): %s", len(self._skipped), err
                        )
                continue
            label = self.samples[i][1]
            return (self.transform(image) if self.transform is not None else image), label, skipped
        raise BadImageError(
            f"no readable image in {str(self.folder)!r}: all {len(self.samples)} files failed"
        )

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label, _ = self.fetch(index)
        return image, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(folder={str(self.folder)!r}, classes={len(self.classes)}, "
            f"images={len(self.samples)}, on_bad_image={self.on_bad_image!r})"
        )
