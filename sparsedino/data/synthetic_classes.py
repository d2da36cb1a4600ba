"""The object classes of the embedded dataset: each class is a (shape, texture) pair, named ``NN_shape_texture``.

Shapes and textures are each shared by several classes, so neither cue alone identifies a class
(see :mod:`sparsedino.data.synthetic`).
"""

from __future__ import annotations

__all__ = ["COLOUR_MODES", "MAX_CLASSES", "SHAPES", "TEXTURES", "class_names", "class_pairs"]

SHAPES = ("disc", "square", "triangle", "cross", "ring", "star")
TEXTURES = ("stripes", "checker", "dots", "solid")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
COLOUR_MODES = ("random", "class", "shared", "marker", "metamer")
METAMER_TEXTURES = ("stripes", "checker")  # the 50/50 patterns that keep a metamer pair's mean colour


def class_pairs(num_classes: int, colours: str = "random") -> list[tuple[str, str]]:
    """The (shape, texture) pair of each object class.

    Class ``k`` gets shape ``k % 6`` and texture ``(k + k // 6) % 4``: consecutive classes differ in both,
    and once ``num_classes > 6`` every shape comes with at least two textures (and textures repeat across
    shapes), so shape alone or texture alone cannot separate the classes. With ``colours="metamer"`` the
    textures are the two 50/50 patterns: the first half of the classes (one per metamer group) stripes,
    the second half checker.
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    if colours == "metamer":
        if num_classes % 2:
            raise ValueError(
                f"colours='metamer' pairs the classes: num_classes must be even, got {num_classes}"
            )
        half = num_classes // 2
        return [(SHAPES[k % len(SHAPES)], METAMER_TEXTURES[k // half]) for k in range(num_classes)]
    return [
        (SHAPES[k % len(SHAPES)], TEXTURES[(k + k // len(SHAPES)) % len(TEXTURES)])
        for k in range(num_classes)
    ]


def class_names(num_classes: int, colours: str = "random") -> list[str]:
    """Folder-friendly class names ``NN_shape_texture``; sorting them keeps the class order."""
    pairs = class_pairs(num_classes, colours)
    return [f"{k:02d}_{shape}_{texture}" for k, (shape, texture) in enumerate(pairs)]
