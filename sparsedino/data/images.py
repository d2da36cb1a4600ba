"""Decoding image files to RGB: the one place every reader opens an image.

- 16-bit images (grayscale PNGs, Pillow modes ``I;16*`` and ``I``) are scaled to 8 bits (value / 257), not
  clipped: Pillow's own ``convert("RGB")`` saturates every value above 255, so a 16-bit photo would become
  white.
- A file Pillow refuses as a decompression bomb (more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) is
  an unreadable image like a truncated one: it raises :class:`BadImageError`, which readers skip under
  ``on_bad_image=skip``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from sparsedino.errors import DataError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImageError(DataError, RuntimeError):
    """An image file could not be decoded; the message names the file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of an opened image, with 16-bit intensities scaled to 8 bits instead of clipped."""
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and values.max(initial=0) > 65535:
            raise ValueError(
                f"32-bit integer image with values up to {values.max():.0f} (expected 8 or 16 bit)"
            )
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` as an RGB ``PIL.Image``.

    Raises:
        BadImageError: naming the file when it is missing, truncated, not an image, a decompression bomb or
            of an unsupported depth.
    """
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(f"cannot read image {str(path)!r}: {err}") from err
