"""Colours of the embedded dataset: the PASCAL VOC label palette and the object colour schemes.

:func:`object_colours` is the one table of what each ``colours`` mode paints an object's body with (see
``sparsedino/data/synthetic.py`` for what the modes are for).
"""

from __future__ import annotations

import numpy as np


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (768 ints): label i -> RGB, 255 -> (224, 224, 192)."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def distinct_colours(rng: np.random.Generator, min_dist: float = 110.0) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours far enough apart for a texture to be visible."""
    first = rng.uniform(0, 255, 3)
    for _ in range(20):
        second = rng.uniform(0, 255, 3)
        if np.linalg.norm(first - second) >= min_dist:
            break
    return first, second


def distinct_greys(rng: np.random.Generator, min_dist: float = 70.0) -> tuple[np.ndarray, np.ndarray]:
    """Two grey levels far enough apart for a texture to be visible (no hue: no class information)."""
    first = rng.uniform(0, 255)
    for _ in range(20):
        second = rng.uniform(0, 255)
        if abs(first - second) >= min_dist:
            break
    return np.full(3, first), np.full(3, second)


def hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) as RGB in [0, 255]."""
    channel = np.array([5.0, 3.0, 1.0])  # the standard closed form: k = (n + 6 h) mod 6 for n = 5, 3, 1
    k = (channel + hue * 6.0) % 6.0
    return 255.0 * value * (1.0 - saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def class_colours(num_classes: int) -> np.ndarray:
    """The fixed colour pair of each class in ``colours="class"`` mode: ``(num_classes, 2, 3)`` RGB.

    Hues are evenly spaced; the second colour of class ``k`` is the hue half-way to the next class at a
    lower brightness, so every pair is unique and both colours are saturated (the clutter is grey).
    """
    pairs = np.empty((num_classes, 2, 3), np.float32)
    for k in range(num_classes):
        hue = k / num_classes
        pairs[k, 0] = hsv_to_rgb(hue, 0.9, 0.95)
        pairs[k, 1] = hsv_to_rgb((hue + 0.5 / num_classes) % 1.0, 0.8, 0.45)
    return pairs


def jittered_class_colours(rng: np.random.Generator, cls: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """The class's colour pair with a small per-object jitter (so colours are a cue, not a constant)."""
    first, second = class_colours(num_classes)[cls] + rng.normal(0.0, 10.0, (2, 3))
    return first, second


def metamer_colours(num_groups: int) -> np.ndarray:
    """Colour pairs whose 50/50 mixtures are identical within a group: ``(num_groups, 2, 2, 3)`` RGB.

    Group ``g`` has a base colour ``c`` (hue ``g / num_groups`` at half chroma around mid grey). Its first
    member is ``(c + d, c - d)`` with ``d`` along the grey axis (a light and a dark shade of the hue), its
    second member ``(c + e, c - e)`` with ``e`` a chroma offset perpendicular to the base hue (two other
    hues). A stripe or checker pattern of either pair averages to ``c``: the members differ only in how
    the colours are composed, which no linear function of the patch's mean colour can see.
    """
    grey = np.ones(3) / np.sqrt(3.0)
    # an orthonormal basis of the chroma plane (perpendicular to grey)
    a = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
    b = np.cross(grey, a)
    out = np.empty((num_groups, 2, 2, 3), np.float32)
    for g in range(num_groups):
        angle = 2 * np.pi * g / num_groups
        hue = np.cos(angle) * a + np.sin(angle) * b
        across = -np.sin(angle) * a + np.cos(angle) * b  # chroma direction perpendicular to the hue
        base = 128.0 + 50.0 * hue
        for member, offset in enumerate((75.0 * grey, 75.0 * across)):
            out[g, member] = (base + offset, base - offset)
    return out


def object_colours(
    rng: np.random.Generator, cls: int, num_classes: int, colours: str, colour_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """The two colours of an object body of class ``cls`` in mode ``colours``.

    Returns:
        ``random``: two random RGB colours; ``class``: the class's hue pair (jittered); ``shared``: the
        pair of the class's colour group (``cls % colour_groups``); ``metamer``: the class's metamer pair,
        one jitter for both so their mean moves as a whole; ``marker``: two random grey levels (the
        class colour is painted on the marker separately).
    """
    if colours == "marker":
        return distinct_greys(rng)
    if colours == "class":
        return jittered_class_colours(rng, cls, num_classes)
    if colours == "shared":
        return jittered_class_colours(rng, cls % colour_groups, colour_groups)
    if colours == "metamer":
        groups = num_classes // 2
        pair = metamer_colours(groups)[cls % groups, cls // groups]
        jitter = rng.normal(0.0, 6.0, 3)
        return pair[0] + jitter, pair[1] + jitter
    return distinct_colours(rng)
