"""Colours of the embedded dataset: the PASCAL VOC label palette and the object colour schemes.

``colours="random"`` objects take :func:`distinct_colours` (no class information); ``colours="class"``
objects take their class's pair from :func:`class_colours`, jittered per object.
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
