"""Decoding image files to RGB: the one place every reader opens an image.

Images deeper than 8 bits are scaled to 8 bits by the range of their sample type, as scikit-image's
``img_as_ubyte`` does, never clipped: Pillow's own ``convert("RGB")`` saturates every value above 255 (a
16-bit photo becomes white) and truncates floats (a float image in [0, 1] becomes black).

- 16-bit images (grayscale PNGs and TIFFs, Pillow modes ``I;16*``, and ``I`` read from a 16-bit file):
  value / 257.
- 32-bit integer TIFFs (mode ``I``): value * 255 / (2**32 - 1) when unsigned, / (2**31 - 1) when signed.
  Refused: negative values (not intensities) and images whose values all fit 16 bits (by their type
  they would be black; they are most likely 8 or 16-bit values widened, which cannot be told apart).
- 32-bit float images (mode ``F``): values in [0, 1] times 255; values outside [0, 1] or NaN are refused,
  since no scale can be inferred.
- A file Pillow refuses as a decompression bomb (more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) is
  an unreadable image like a truncated one: it raises :class:`BadImageError`, which readers skip under
  ``on_bad_image=skip``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from sparsedino.errors import DataError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_TIFF_BITS, _TIFF_SAMPLE_FORMAT = 258, 339  # TIFF tags: BitsPerSample, SampleFormat (1 uint, 2 int, 3 float)


class BadImageError(DataError, RuntimeError):
    """An image file could not be decoded; the message names the file."""


def _tiff_tag(image: Image.Image, tag: int) -> int | None:
    value = getattr(image, "tag_v2", {}).get(tag)
    if isinstance(value, tuple):
        value = value[0] if value else None
    return int(value) if value is not None else None


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    """The 8-bit intensities of a single-channel image deeper than 8 bits (see the module docstring)."""
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("32-bit float image holding NaN or infinity: only [0, 1] has a known scale")
        if values.min(initial=0) < 0 or values.max(initial=0) > 1:
            raise ValueError(
                f"32-bit float image with values in [{values.min():g}, {values.max():g}]: only [0, 1] has a "
                "known scale (convert it to 8 or 16 bits)"
            )
        return np.rint(values * 255.0).astype(np.uint8)
    bits = _tiff_tag(image, _TIFF_BITS)
    if image.mode in _SIXTEEN_BIT or (bits or 16) == 16:
        if image.mode == "I" and values.max(initial=0) > 65535:
            raise ValueError(
                f"integer image with values up to {values.max()} is not 16 bit (expected 8 or 16)"
            )
        return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    if bits != 32:
        raise ValueError(f"{bits}-bit integer images are not supported (expected 8, 16 or 32 bits)")
    if _tiff_tag(image, _TIFF_SAMPLE_FORMAT) == 2:  # signed
        if values.min(initial=0) < 0:
            raise ValueError(
                f"signed 32-bit image with negative values (down to {values.min()}): not intensities"
            )
        top = 2.0**31 - 1
    else:  # unsigned (the TIFF default): Pillow holds the samples in an int32 array, bit for bit
        values, top = values.view(np.uint32), 2.0**32 - 1
    if values.max(initial=0) <= 65535:  # scaled by its type it would be black: 8/16-bit values, widened?
        raise ValueError(
            f"32-bit integer image whose values reach only {values.max()}: scaled by its 32-bit range it would "
            "be black, and 8 or 16-bit values stored in 32 bits cannot be told apart; convert it to 8 or 16 bits"
        )
    return np.rint(values.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of an opened image, with deeper-than-8-bit intensities scaled to 8 bits, not clipped."""
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        return Image.fromarray(_grey_to_uint8(image), mode="L").convert("RGB")
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
