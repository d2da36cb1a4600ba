"""The embedded dataset: synthetic scenes of textured shapes, written in the ImageNet and VOC 2012 layouts.

Every class is a (shape, texture) pair, and shapes and textures are each shared by several classes, so
neither cue alone identifies a class: a probe has to combine them. Objects (1-3 per image) are placed at
random positions, scales and rotations over a cluttered background (random blobs and lines) that is
drawn independently of the class, so the background carries no label
information by construction. That makes "a background patch knows the image class" (semantic diffusion)
measurable: any class information found in background patches came from token interaction.

Object colours come in five modes (all but ``random`` keep the clutter grey, so hue is never a
background cue):

* ``random`` (default): both colours of every object drawn at random; a model has to recognise shape and
  texture. Tiny CPU runs learn nothing from it.
* ``class``: every class has its own hue pair (jittered per object). Colour identifies the class in every
  patch, so even random-weight features read it: a dense probe is saturated at initialisation.
* ``marker`` (the ``cpu-demo`` / ``cpu-long`` data): the object's body is textured in two random grey
  levels (its class's texture and shape), and only the ``marker_share`` of its pixels nearest its centre
  carry the class's hue pair. A patch of the body can only be labelled from context (its object's marker,
  its shape and texture), which is what training adds to the features; the marker makes the class easy
  for DINO to learn at image level.
* ``shared``: classes ``k`` and ``k + colour_groups`` share a hue pair; shape and texture separate them.
* ``metamer``: pairs of classes whose colour pairs have the same mean (a light/dark shade of a hue vs two
  hues around it), so only the composition of a patch's colours separates them.

``same_group`` (shared, metamer) draws all objects of an image from one colour group with that
probability. The measured floors, ceilings and learning speed of each mode are in docs/embedded_data.md.

Generation is deterministic per ``(seed, split, index)`` (each image has its own random stream), so the
result does not depend on the order or the number of worker processes.

Layout written under ``out`` (the same layouts as the real datasets, so one set of readers serves both)::

    out/meta.json                                   classes, counts, seed, size
    out/imagenet/{train,val}/<NN_shape_texture>/<id>.png      image-level label = class of the largest object
    out/VOC2012/JPEGImages/<id>.jpg
    out/VOC2012/SegmentationClass/<id>.png          palette PNG: 0 background, k = class k, 255 ignore band
    out/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    out/VOC2012/classes.txt                         one class name per line (line i = label i)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sparsedino.atomic import atomic_directory
from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.data.palettes import class_colours, jittered_class_colours, object_colours, voc_palette
from sparsedino.data.synthetic_classes import (
    COLOUR_MODES,
    MAX_CLASSES,
    class_names,
    class_pairs,
)

__all__ = ["COLOUR_MODES", "MAX_CLASSES", "class_colours", "class_names", "class_pairs", "make_scene", "scene_rng",
           "voc_palette", "write_synthetic_dataset"]  # fmt: skip


@dataclass(frozen=True)
class Scene:
    """A generated image: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8, ``label`` (largest object)."""

    image: np.ndarray
    mask: np.ndarray
    label: int


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-radius shape in object-local coordinates (u, v), rotation already applied."""
    rho = np.hypot(u, v)
    if shape == "disc":
        return rho <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":  # equilateral, three half-planes at inradius 0.65 (area close to the others)
        inside = np.ones_like(u, dtype=bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= -(u * np.cos(angle) + v * np.sin(angle)) <= 0.65
        return inside
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if shape == "star":  # five points
        return rho <= 0.7 + 0.4 * np.cos(5 * np.arctan2(v, u))
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, u: np.ndarray, v: np.ndarray, period: float, phase: float) -> np.ndarray:
    """Which pixels take the second colour; ``u, v`` in pixels (object-local, rotated)."""
    if texture == "stripes":
        return np.sin(2 * np.pi * (u / period + phase)) > 0
    if texture == "checker":
        return (np.floor(u / period + phase) + np.floor(v / period + phase)) % 2 == 0
    if texture == "dots":
        du = (u / period + phase) % 1.0 - 0.5
        dv = (v / period + phase) % 1.0 - 0.5
        return np.hypot(du, dv) < 0.3
    if texture == "solid":
        return np.zeros_like(u, dtype=bool)
    raise ValueError(f"unknown texture {texture!r}")


def _draw_background(
    rng: np.random.Generator,
    size: int,
    yy: np.ndarray,
    xx: np.ndarray,
    clutter: float = 1.0,
    grey: bool = False,
) -> np.ndarray:
    """Clutter independent of the class: a base colour, noise, random ellipses and thick lines.

    With ``grey`` every clutter colour is a grey level (``colours="class"`` mode, where hue is the class cue).
    """

    def colour() -> np.ndarray:
        return np.full(3, rng.uniform(0, 255)) if grey else rng.uniform(0, 255, 3)

    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = colour()
    num_ellipses = round(clutter * float(rng.integers(3, 8)))
    for _ in range(num_ellipses):  # ellipses: smaller than objects, solid random colours
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(0.03, 0.12, 2) * size
        theta = rng.uniform(0, np.pi)
        du, dv = xx - cx, yy - cy
        u = du * np.cos(theta) + dv * np.sin(theta)
        v = -du * np.sin(theta) + dv * np.cos(theta)
        canvas[(u / rx) ** 2 + (v / ry) ** 2 <= 1.0] = colour()
    num_lines = round(clutter * float(rng.integers(1, 4)))
    for _ in range(num_lines):  # lines: distance to a random line below a random half-width
        cy, cx = rng.uniform(0, size, 2)
        theta = rng.uniform(0, np.pi)
        dist = np.abs((xx - cx) * np.sin(theta) - (yy - cy) * np.cos(theta))
        canvas[dist <= rng.uniform(0.5, 1.5) * size / 64] = colour()
    canvas += rng.normal(0, 6, canvas.shape).astype(np.float32)
    return canvas


def _ignore_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` px of a label change (VOC-style void border around every object)."""
    band = np.zeros(mask.shape, bool)
    band[1:, :] |= mask[1:, :] != mask[:-1, :]
    band[:-1, :] |= mask[1:, :] != mask[:-1, :]
    band[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    band[:, :-1] |= mask[:, 1:] != mask[:, :-1]
    for _ in range(width - 1):  # grow the 2-px-wide edge by one pixel per step
        grown = band.copy()
        grown[1:] |= band[:-1]
        grown[:-1] |= band[1:]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def make_scene(
    rng: np.random.Generator,
    size: int = 64,
    num_classes: int = 10,
    border: int | None = None,
    max_objects: int = 3,
    clutter: float = 1.0,
    colours: str = "random",
    colour_groups: int = 5,
    same_group: float = 0.0,
    marker_share: float = 0.3,
) -> Scene:
    """Draw one scene: 1-3 textured objects over class-independent clutter.

    Args:
        rng: the random stream of this image (determines everything).
        size: side of the square image in pixels.
        num_classes: number of object classes (labels 1..num_classes in the mask).
        border: width of the ignore band in pixels (default ``max(1, size // 64)``).
        max_objects: objects per image are drawn uniformly from 1..max_objects.
        clutter: multiplier of the number of background ellipses and lines (0 = plain noisy background).
        colours: ``"random"`` (object colours carry no class information) or ``"class"`` (a fixed,
            jittered hue pair per class over grey clutter); see the module docstring.

    Returns:
        The image, its mask (0 background, k+1 object class k, 255 ignore band) and the image-level label
        (the class, 0-based, of the object with the most visible pixels).
    """
    if colours not in COLOUR_MODES:
        raise ValueError(f"colours must be one of {', '.join(COLOUR_MODES)}, got {colours!r}")
    pairs = class_pairs(num_classes, colours)
    if colours == "metamer":
        colour_groups = num_classes // 2  # class k and k + groups share a mean colour
    border = max(1, size // 64) if border is None else border
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image = _draw_background(rng, size, yy, xx, clutter, grey=colours != "random")
    mask = np.zeros((size, size), np.uint8)
    num_objects = int(rng.integers(1, max_objects + 1))
    classes = _draw_classes(
        rng, num_objects, num_classes, colour_groups if colours == "shared" else 0, same_group
    )
    for cls in classes:
        shape, texture = pairs[int(cls)]
        radius = rng.uniform(0.14, 0.3) * size
        cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
        theta = rng.uniform(0, 2 * np.pi)
        du, dv = xx - cx, yy - cy
        u = du * np.cos(theta) + dv * np.sin(theta)  # object-local coordinates, pixels
        v = -du * np.sin(theta) + dv * np.cos(theta)
        inside = _shape_mask(shape, u / radius, v / radius)
        first, second = object_colours(rng, int(cls), num_classes, colours, colour_groups)
        period = rng.uniform(4.0, 7.0) * size / 64
        alt = _texture_mask(texture, u, v, period, rng.uniform(0, 1))
        image[inside] = first
        image[inside & alt] = second
        if colours == "marker" and inside.any():  # the class colour only near the object's centre
            dist = np.hypot(du, dv)
            marker = inside & (dist <= np.quantile(dist[inside], marker_share))
            core, rim = jittered_class_colours(rng, int(cls), num_classes)  # the class's own hue pair
            image[marker] = core
            image[marker & alt] = rim
        mask[inside] = cls + 1
    areas = np.bincount(mask.ravel(), minlength=num_classes + 1)[1:]
    label = int(np.argmax(areas))
    mask[_ignore_band(mask, border)] = IGNORE_INDEX
    return Scene(np.clip(image, 0, 255).astype(np.uint8), mask, label)


def _draw_classes(
    rng: np.random.Generator, count: int, num_classes: int, colour_groups: int, same_group: float
) -> np.ndarray:
    """Object classes of one scene; with probability ``same_group`` all from one colour group."""
    if colour_groups and count > 1 and rng.uniform() < same_group:
        group = int(rng.integers(0, colour_groups))
        members = np.arange(group, num_classes, colour_groups)
        return rng.choice(members, count)
    return rng.integers(0, num_classes, count)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The independent random stream of image ``index`` of ``split`` (order- and worker-independent)."""
    split_id = {"train": 0, "val": 1}[split]
    return np.random.default_rng([seed, split_id, index])


def _write_split(
    tmp: Path, split: str, count: int, seed: int, names: list[str], palette: list[int], scene_kwargs: dict
) -> tuple[list[str], list[int]]:
    ids, labels = [], []
    for index in tqdm(range(count), desc=f"synth {split}", unit="img", leave=False):
        scene = make_scene(scene_rng(seed, split, index), num_classes=len(names), **scene_kwargs)
        image_id = f"synth_{split}_{index:06d}"
        rgb = Image.fromarray(scene.image, "RGB")
        rgb.save(tmp / "VOC2012" / "JPEGImages" / f"{image_id}.jpg", quality=95)
        rgb.save(tmp / "imagenet" / split / names[scene.label] / f"{image_id}.png")
        seg = Image.fromarray(scene.mask, "P")
        seg.putpalette(palette)
        seg.save(tmp / "VOC2012" / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
        labels.append(scene.label)
    return ids, labels


def write_synthetic_dataset(
    out: str | os.PathLike,
    n_train: int = 4000,
    n_val: int = 1000,
    size: int = 64,
    seed: int = 0,
    num_classes: int = 10,
    border: int | None = None,
    max_objects: int = 3,
    clutter: float = 1.0,
    colours: str = "random",
    colour_groups: int = 5,
    same_group: float = 0.0,
    marker_share: float = 0.3,
    overwrite: bool = False,
) -> dict:
    """Generate the embedded dataset and write it under ``out`` (see the module docstring for the layout).

    Everything is written into a hidden sibling folder that is renamed onto ``out`` at the end, so an
    interrupted run never leaves a half dataset behind.

    Args:
        out: destination folder; must not exist (or be empty) unless ``overwrite``.
        n_train: number of training images.
        n_val: number of validation images.
        size: image side in pixels.
        seed: generation seed; the same seed gives byte-identical masks and PNG images.
        num_classes: number of object classes (2..24).
        border: ignore-band width in pixels (default ``max(1, size // 64)``).
        max_objects: at most this many objects per image (at least 1).
        clutter: background clutter multiplier (1 = default, 0 = none): a difficulty knob.
        colours: ``"random"`` (default) or ``"class"`` (colour identifies the class; see the module docstring).
        overwrite: replace an existing non-empty ``out``.

    Returns:
        The metadata written to ``out/meta.json``.
    """
    out = Path(out)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if max_objects < 1 or clutter < 0:
        raise ValueError(f"max_objects must be >= 1 and clutter >= 0, got {max_objects} and {clutter}")
    if colours not in COLOUR_MODES:
        raise ValueError(f"colours must be one of {', '.join(COLOUR_MODES)}, got {colours!r}")
    if colours == "shared" and not 1 <= colour_groups <= num_classes:
        raise ValueError(f"colour_groups must be in [1, num_classes={num_classes}], got {colour_groups}")
    if not 0.0 <= same_group <= 1.0 or not 0.0 < marker_share <= 1.0:
        raise ValueError(
            f"same_group must be in [0, 1] and marker_share in (0, 1], got {same_group}, {marker_share}"
        )
    scene_kwargs = {
        "size": size,
        "border": border,
        "max_objects": max_objects,
        "clutter": clutter,
        "colours": colours,
        "colour_groups": colour_groups,
        "same_group": same_group,
        "marker_share": marker_share,
    }
    names = class_names(num_classes, colours)  # validates num_classes
    with atomic_directory(out, overwrite, what="out") as tmp:  # swapped in whole, only when complete
        voc = tmp / "VOC2012"
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (voc / sub).mkdir(parents=True)
        for split in ("train", "val"):
            for name in names:
                (tmp / "imagenet" / split / name).mkdir(parents=True)
        palette = voc_palette()
        counts: dict[str, list[int]] = {}
        split_ids: dict[str, list[str]] = {}
        for split, count in (("train", n_train), ("val", n_val)):
            ids, labels = _write_split(tmp, split, count, seed, names, palette, scene_kwargs)
            split_ids[split] = ids
            counts[split] = np.bincount(labels, minlength=num_classes).tolist()
            (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (voc / "ImageSets/Segmentation/trainval.txt").write_text(
            "\n".join(split_ids["train"] + split_ids["val"]) + "\n"
        )
        (voc / "classes.txt").write_text("\n".join(["background", *names]) + "\n")
        meta = {
            "format": "sparsedino-synthetic-v1",
            "seed": seed,
            "size": size,
            "num_classes": num_classes,
            "classes": names,
            "voc_classes": ["background", *names],
            "n_train": n_train,
            "n_val": n_val,
            "images_per_class": counts,
            "ignore_index": IGNORE_INDEX,
            "border": max(1, size // 64) if border is None else border,
            "max_objects": max_objects,
            "clutter": clutter,
            "colours": colours,
            "colour_groups": colour_groups,
            "same_group": same_group,
            "marker_share": marker_share,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
