"""ImageNet-style image folders: ``root/<split>/<class>/*.{jpg,jpeg,png,...}``.

Problems are reported, never hidden: a missing or empty folder raises an error naming the path, an
unreadable class folder (or sub-folder) is an error rather than a class silently left out, and an
unreadable image either raises (``on_bad_image="error"``) or is skipped and counted
(``on_bad_image="skip"``; see :attr:`ImageNetFolder.num_skipped` and the warning it logs).

Class folders may be links (e.g. a subset of ImageNet linked class by class), but a class folder that is
(a link to) the image folder itself or one of its parents -- a loop that would make one class of every
image -- and two classes that are the same folder or nested are refused. Links to folders inside a class
folder are not followed.
"""

from __future__ import annotations

import itertools
import logging
import os
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


def check_class_folders(folder: Path, classes: list[str]) -> None:
    """Refuse class folders that loop back to ``folder`` (or a parent of it), or that are the same folder
    as another class or nested in it (their images would be counted twice).

    Raises:
        DataError: naming the class folder(s) and where they lead.
    """
    root = folder.resolve()
    targets = {}
    for name in classes:
        target = (folder / name).resolve()
        if target == root or target in root.parents:
            raise DataError(
                f"class folder {str(folder / name)!r} leads to {str(target)!r}, which holds the image folder "
                f"{str(folder)!r} itself (a link loop: that class would hold every image); remove the link"
            )
        targets[name] = target
    by_target = sorted(targets.items(), key=lambda item: item[1].parts)  # a folder right before its insides
    for (a, ta), (b, tb) in itertools.pairwise(by_target):
        if tb == ta or ta in tb.parents:
            raise DataError(
                f"class folders {a!r} and {b!r} of {str(folder)!r} are the same folder or nested "
                f"({str(ta)!r}, {str(tb)!r}); their images would be counted twice"
            )


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, links to folders not followed), sorted.

    Raises:
        DataError: a folder cannot be read (permissions): its images would otherwise be left out silently.
    """

    def fail(err: OSError) -> None:
        raise DataError(
            f"cannot read folder {str(err.filename or folder)!r} ({err.strerror or err}); its images would be "
            "left out: fix its permissions"
        ) from err

    files = []
    for parent, _, names in os.walk(folder, onerror=fail):
        files += [
            Path(parent) / n
            for n in names
            if Path(n).suffix.lower() in IMG_EXTENSIONS and (Path(parent) / n).is_file()
        ]
    return sorted(files)


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
        check_class_folders(self.folder, self.classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for name in self.classes:
            files = image_files(self.folder / name)
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
