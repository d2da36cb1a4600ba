"""Checks of ``eval video`` settings against their ranges, the DAVIS tree and the backbone, before any work.

Three stages, each as early as its inputs exist: :func:`validate_video_config` when the config is loaded
(the ranges of ``VideoConfig.RULES``, the device), :func:`check_sequences` when the tree is listed (every
frame's size from its header, every annotation read: ids and sizes), :func:`check_fits_backbone` when the
backbone is known (the block index, frames at least one patch after resizing). A bad second sequence therefore fails before the first
one is segmented.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from sparsedino.config import ConfigError
from sparsedino.data.davis import DavisDataset, DavisError
from sparsedino.eval.settings import VideoConfig, check_protocol_config


def validate_video_config(cfg: Any) -> None:
    """Reject values the protocol cannot run with (a :class:`~sparsedino.eval.settings.VideoConfig`): the
    ``RULES`` table of ``VideoConfig`` and the device.

    Raises:
        ConfigError: naming the key, its value and the allowed range.
    """
    check_protocol_config(cfg, VideoConfig)


def frame_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """DINO's frame size: short side -> ``short_side``, long side scaled and floored to ``multiple``.

    A square frame counts as landscape (its width is the floored side), as in the reference code.

    Raises:
        ValueError: if the floored side becomes 0.
    """
    if height > width:
        size = (int(short_side * height / width) // multiple * multiple, short_side)
    else:
        size = (short_side, int(short_side * width / height) // multiple * multiple)
    if min(size) <= 0:
        raise ValueError(
            f"a {width}x{height} frame at short_side={short_side}, size_multiple={multiple} has no pixels left"
        )
    return size


def check_sequences(dataset: DavisDataset) -> dict[str, tuple[int, int]]:
    """Check every sequence before any is segmented: at least 3 frames, all of the first frame's size
    (read from the file headers), and an annotation for each that is readable, of that size and holds only
    the first frame's object ids.

    Returns:
        ``{sequence: (height, width)}`` of the frames.

    Raises:
        DavisError: naming the sequence and the file.
    """
    sizes = {}
    for seq in dataset:
        if len(seq) < 3:
            raise DavisError(f"DAVIS: sequence {seq.name!r} has {len(seq)} frames; scoring needs at least 3")
        missing = [str(seq.frames[t]) for t, a in enumerate(seq.annotations) if a is None]
        if missing:
            raise DavisError(
                f"DAVIS: sequence {seq.name!r}: no annotation for frame(s) {missing[:3]} (every frame is scored)"
            )
        first = _header_size(seq.name, seq.frames[0])
        for t, frame in enumerate(seq.frames):
            size = first if t == 0 else _header_size(seq.name, frame)
            if size != first:
                raise DavisError(
                    f"DAVIS: sequence {seq.name!r}: frame {frame} is {size[1]}x{size[0]}, the first frame is "
                    f"{first[1]}x{first[0]}"
                )
            dataset.load_mask(seq, t, size=first)  # readable, the frame's size, no new object ids
        sizes[seq.name] = first
    return sizes


def first_frame_sizes(dataset: DavisDataset) -> dict[str, tuple[int, int]]:
    """``{sequence: (height, width)}`` of each sequence's first frame, from its header."""
    return {seq.name: _header_size(seq.name, seq.frames[0]) for seq in dataset}


def _header_size(sequence: str, path) -> tuple[int, int]:
    """(height, width) of an image from its header (nothing decoded)."""
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (OSError, Image.DecompressionBombError) as err:
        raise DavisError(f"DAVIS: sequence {sequence!r}: cannot read frame {path}: {err}") from err


def check_fits_backbone(cfg: Any, sizes: dict[str, tuple[int, int]], patch_size: int, depth: int) -> None:
    """The settings that depend on the backbone: the block index, and frames of at least one patch.

    Args:
        cfg: the video config.
        sizes: ``{sequence: (height, width)}``, e.g. from :func:`first_frame_sizes`.
        patch_size, depth: the backbone's.

    Raises:
        ConfigError: naming the key, the model's depth or patch size and the sequence.
    """
    if not -depth <= cfg.layer < depth:
        raise ConfigError(f"key 'layer': block {cfg.layer} out of range for a model with {depth} blocks")
    for name, (height, width) in sizes.items():
        try:
            size = frame_size(height, width, cfg.short_side, cfg.size_multiple)
        except ValueError as err:
            raise ConfigError(
                f"keys 'short_side' / 'size_multiple' do not fit sequence {name!r}: {err}"
            ) from err
        if min(size) < patch_size:
            raise ConfigError(
                f"keys 'short_side' / 'size_multiple': the frames of sequence {name!r} ({width}x{height}) become "
                f"{size[1]}x{size[0]} px, smaller than one {patch_size}-px patch"
            )
