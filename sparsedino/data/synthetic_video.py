"""Embedded videos: short clips of the embedded dataset's objects, written in the DAVIS-2017 layout.

Each clip shows 2..``max_objects`` objects of the embedded classes (the same shapes, textures and colour
modes as :mod:`sparsedino.data.synthetic`) over the same class-free clutter. Over the clip every object
moves (towards a point near the centre, so paths cross and objects occlude each other; bouncing off the
borders), rotates and slowly grows or shrinks, with a fixed depth order; the camera pans slowly over the
clutter. Every object is clearly visible in the first frame (its annotation is what label propagation is
given), later it may be partly or fully hidden. Masks hold object ids (1..N in creation order), not
classes, as DAVIS does; the classes are recorded in ``meta.json``.

Generation is deterministic per ``(seed, clip index)``: every clip has its own random stream.

Layout written under ``out`` (DAVIS-2017's; the frame folder keeps the name ``480p`` whatever the size,
so the same reader and defaults apply)::

    out/ImageSets/2017/val.txt                       clip names, one per line
    out/JPEGImages/480p/<clip>/00000.jpg             frames
    out/Annotations/480p/<clip>/00000.png            palette PNGs: 0 background, k = object k
    out/meta.json                                    sizes, seed, per-clip object classes
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
from sparsedino.data.palettes import jittered_class_colours, object_colours, voc_palette
from sparsedino.data.synthetic import (
    COLOUR_MODES,
    _draw_background,
    _shape_mask,
    _texture_mask,
    class_names,
    class_pairs,
)

VIDEO_STREAM = 2  # the random-stream id of clips (the image splits use 0 = train, 1 = val)
MIN_VISIBLE = 0.4  # share of each object's area that must be visible in the first frame
PAN_SPEED = 0.6  # largest camera pan, pixels per frame


@dataclass(frozen=True)
class Clip:
    """One generated video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (T, H, W) uint8 object ids (0 background).
        classes: class (0-based) of object id ``k`` at position ``k - 1``.
    """

    frames: np.ndarray
    masks: np.ndarray
    classes: tuple[int, ...]


@dataclass(frozen=True)
class _Track:
    """How one object looks and moves: pose at frame ``t`` follows from the start values and rates."""

    cls: int
    radius: float
    centres: np.ndarray  # (T, 2) y, x per frame
    theta: float  # rotation at frame 0, radians
    omega: float  # rotation per frame
    growth: float  # relative size change per frame
    colours: tuple[np.ndarray, np.ndarray]
    period: float
    phase: float
    marker: tuple[np.ndarray, np.ndarray] | None = None  # colours="marker": the class pair near the centre


def _bounce(start: np.ndarray, velocity: np.ndarray, lo: float, hi: float, frames: int) -> np.ndarray:
    """(T, 2) positions of a point moving at ``velocity`` and reflecting off ``[lo, hi]`` on both axes."""
    span = hi - lo
    raw = start[None, :] + velocity[None, :] * np.arange(frames)[:, None] - lo
    folded = np.mod(raw, 2 * span)  # a triangle wave: the path reflected at both walls
    return lo + np.where(folded > span, 2 * span - folded, folded)


def _make_track(
    rng: np.random.Generator, size: int, frames: int, num_classes: int, colours: str, colour_groups: int
) -> _Track:
    cls = int(rng.integers(0, num_classes))
    radius = rng.uniform(0.14, 0.26) * size
    lo, hi = radius * 0.6, size - radius * 0.6
    start = rng.uniform(lo, hi, 2)
    target = size / 2 + rng.uniform(-0.2, 0.2, 2) * size  # paths cross near the centre: occlusions
    velocity = (target - start) / max(frames - 1, 1) * rng.uniform(0.8, 1.6)
    pair = object_colours(rng, cls, num_classes, colours, colour_groups)
    marker = jittered_class_colours(rng, cls, num_classes) if colours == "marker" else None
    return _Track(
        cls=cls,
        radius=radius,
        centres=_bounce(start, velocity, lo, hi, frames),
        theta=rng.uniform(0, 2 * np.pi),
        omega=rng.uniform(-0.2, 0.2),
        growth=rng.uniform(-0.015, 0.015),
        colours=(pair[0], pair[1]),
        period=rng.uniform(4.0, 7.0) * size / 64,
        phase=rng.uniform(0, 1),
        marker=marker,
    )


def _pose(track: _Track, t: int, yy: np.ndarray, xx: np.ndarray, shape: str) -> tuple[np.ndarray, ...]:
    """Object-local coordinates (pixels) and the inside mask of ``track`` at frame ``t``."""
    cy, cx = track.centres[t]
    theta = track.theta + track.omega * t
    radius = track.radius * (1.0 + track.growth) ** t
    du, dv = xx - cx, yy - cy
    u = du * np.cos(theta) + dv * np.sin(theta)
    v = -du * np.sin(theta) + dv * np.cos(theta)
    return u, v, _shape_mask(shape, u / radius, v / radius)


def _render(tracks, order, pairs, t, canvas, yy, xx, marker_share=0.3) -> tuple[np.ndarray, np.ndarray]:
    """Draw the objects of frame ``t`` back to front over ``canvas``: (image float32, object-id mask)."""
    image = canvas.copy()
    mask = np.zeros(canvas.shape[:2], np.uint8)
    for index in order:  # back to front: later objects occlude earlier ones
        track = tracks[index]
        shape, texture = pairs[track.cls]
        u, v, inside = _pose(track, t, yy, xx, shape)
        alt = _texture_mask(texture, u, v, track.period, track.phase)
        image[inside] = track.colours[0]
        image[inside & alt] = track.colours[1]
        if track.marker is not None and inside.any():  # the class colour near the object's centre
            dist = np.hypot(u, v)
            core = inside & (dist <= np.quantile(dist[inside], marker_share))
            image[core] = track.marker[0]
            image[core & alt] = track.marker[1]
        mask[inside] = index + 1
    return image, mask


def _check(frames: int, size: int, max_objects: int, clutter: float, colours: str) -> None:
    if frames < 3 or size < 16 or max_objects < 2 or clutter < 0:
        raise ValueError(
            f"need frames >= 3, size >= 16, max_objects >= 2 and clutter >= 0; got frames={frames}, "
            f"size={size}, max_objects={max_objects}, clutter={clutter}"
        )
    if colours not in COLOUR_MODES:
        raise ValueError(f"colours must be one of {', '.join(COLOUR_MODES)}, got {colours!r}")


def make_clip(
    rng: np.random.Generator,
    frames: int = 12,
    size: int = 64,
    num_classes: int = 10,
    max_objects: int = 3,
    clutter: float = 1.0,
    colours: str = "random",
    colour_groups: int = 5,
    marker_share: float = 0.3,
) -> Clip:
    """Generate one clip (see the module docstring for what moves and how).

    Args:
        rng: the clip's random stream (determines everything).
        frames: number of frames (at least 3: the benchmark scores frames 1..T-2).
        size: side of the square frames in pixels.
        num_classes: object classes to draw from (as in the embedded image dataset).
        max_objects: objects per clip are drawn uniformly from 2..max_objects.
        clutter: background clutter multiplier (0 = plain noisy background).
        colours: object colour mode (see :mod:`sparsedino.data.synthetic`).
        colour_groups: ``colours="shared"``: classes per colour pair.
        marker_share: ``colours="marker"``: share of each object's pixels painted in its class colour.

    Returns:
        The clip's frames, object-id masks and object classes.

    Raises:
        ValueError: for out-of-range arguments.
    """
    _check(frames, size, max_objects, clutter, colours)
    pairs = class_pairs(num_classes, colours)
    margin = int(np.ceil(PAN_SPEED * frames)) + 1
    big = size + 2 * margin  # the clutter is drawn larger than the frame and panned over
    yy_big, xx_big = np.mgrid[0:big, 0:big].astype(np.float32) + 0.5
    background = _draw_background(rng, big, yy_big, xx_big, clutter, grey=colours != "random")
    pan = rng.uniform(-PAN_SPEED, PAN_SPEED, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    num_objects = int(rng.integers(2, max_objects + 1))
    for _ in range(100):  # redraw until every object is clearly visible in the first frame
        tracks = [
            _make_track(rng, size, frames, num_classes, colours, colour_groups) for _ in range(num_objects)
        ]
        order = rng.permutation(num_objects)
        _, first = _render(tracks, order, pairs, 0, np.zeros((size, size, 3), np.float32), yy, xx)
        full = [_pose(tr, 0, yy, xx, pairs[tr.cls][0])[2].sum() for tr in tracks]
        if all(np.count_nonzero(first == k + 1) >= MIN_VISIBLE * full[k] for k in range(num_objects)):
            break
    else:  # pragma: no cover - the visibility test passes within a few draws
        raise RuntimeError("could not place objects visibly in the first frame")
    out_frames = np.empty((frames, size, size, 3), np.uint8)
    out_masks = np.empty((frames, size, size), np.uint8)
    for t in range(frames):
        oy, ox = (margin + np.round(pan * t)).astype(int)
        canvas = background[oy : oy + size, ox : ox + size]
        image, mask = _render(tracks, order, pairs, t, canvas, yy, xx, marker_share)
        image += rng.normal(0, 3, image.shape).astype(np.float32)  # fresh sensor noise every frame
        out_frames[t] = np.clip(image, 0, 255).astype(np.uint8)
        out_masks[t] = mask
    return Clip(out_frames, out_masks, tuple(tr.cls for tr in tracks))


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The independent random stream of clip ``index`` (order-independent)."""
    return np.random.default_rng([seed, VIDEO_STREAM, index])


def clip_name(index: int) -> str:
    return f"synth_clip_{index:03d}"


def write_synthetic_videos(
    out: str | os.PathLike,
    clips: int = 8,
    frames: int = 12,
    size: int = 64,
    seed: int = 0,
    num_classes: int = 10,
    max_objects: int = 3,
    clutter: float = 1.0,
    colours: str = "random",
    colour_groups: int = 5,
    marker_share: float = 0.3,
    resolution: str = "480p",
    overwrite: bool = False,
) -> dict:
    """Generate ``clips`` clips and write them under ``out`` in the DAVIS-2017 layout (module docstring).

    Everything is written into a hidden sibling folder renamed onto ``out`` at the end, so an interrupted
    run leaves nothing behind.

    Args:
        out: destination folder; must not exist (or be empty) unless ``overwrite``.
        clips: number of clips (the ``val`` split).
        frames, size, num_classes, max_objects, clutter, colours, colour_groups, marker_share: see
            :func:`make_clip`.
        seed: generation seed; the same seed gives byte-identical files.
        resolution: name of the frame folder (DAVIS: ``480p``).
        overwrite: replace an existing non-empty ``out``.

    Returns:
        The metadata written to ``out/meta.json``.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    names = class_names(num_classes, colours)  # validates num_classes
    _check(frames, size, max_objects, clutter, colours)
    palette = voc_palette()
    sequences = {}
    with atomic_directory(out, overwrite) as tmp:
        for index in tqdm(range(clips), desc="synth video", unit="clip", leave=False):
            clip = make_clip(clip_rng(seed, index), frames, size, num_classes, max_objects, clutter, colours,
                             colour_groups, marker_share)  # fmt: skip
            name = clip_name(index)
            image_dir = Path(tmp) / "JPEGImages" / resolution / name
            mask_dir = Path(tmp) / "Annotations" / resolution / name
            image_dir.mkdir(parents=True)
            mask_dir.mkdir(parents=True)
            for t in range(frames):
                Image.fromarray(clip.frames[t], "RGB").save(image_dir / f"{t:05d}.jpg", quality=95)
                seg = Image.fromarray(clip.masks[t], "P")
                seg.putpalette(palette)
                seg.save(mask_dir / f"{t:05d}.png")
            sequences[name] = {"objects": len(clip.classes), "classes": [names[c] for c in clip.classes]}
        (Path(tmp) / "ImageSets" / "2017").mkdir(parents=True)
        (Path(tmp) / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
        meta = {
            "format": "sparsedino-synthetic-video-v1",
            "seed": seed,
            "clips": clips,
            "frames": frames,
            "size": size,
            "num_classes": num_classes,
            "max_objects": max_objects,
            "clutter": clutter,
            "colours": colours,
            "colour_groups": colour_groups,
            "marker_share": marker_share,
            "resolution_folder": resolution,
            "sequences": sequences,
        }
        (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
