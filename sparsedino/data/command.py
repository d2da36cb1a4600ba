"""``sparsedino data synth | synth-video``: write the embedded dataset (ImageNet + VOC 2012 layouts) or the
embedded videos (DAVIS-2017 layout) to disk."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sparsedino.atomic import check_replaceable_dir
from sparsedino.commands import Command, Group, dispatch
from sparsedino.config import ConfigError
from sparsedino.data.synthetic import COLOUR_MODES, MAX_CLASSES, write_synthetic_dataset
from sparsedino.data.synthetic_video import write_synthetic_videos
from sparsedino.errors import OutputError
from sparsedino.options import MAX_SEED, OneOf, Range, check_options, option_name


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino data synth``."""
    parser.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    parser.add_argument("--n-train", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--n-val", type=int, default=1000, help="validation images (default 1000)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--num-classes", type=int, default=10, help="object classes, 2-24 (default 10)")
    parser.add_argument("--max-objects", type=int, default=3, help="objects per image: 1..N (default 3)")
    parser.add_argument(
        "--clutter", type=float, default=1.0, help="background clutter multiplier (default 1)"
    )
    parser.add_argument(
        "--colours",
        choices=COLOUR_MODES,
        default="random",
        help="object colours: random (no class cue, default), class (a hue pair per class), shared (a pair "
        "per group of classes), marker (class colour near the centre only) or metamer (pairs of classes "
        "whose colour pairs have the same mean); all but random keep the clutter grey",
    )
    parser.add_argument(
        "--colour-groups", type=int, default=5, help="colours=shared: number of colour pairs (default 5)"
    )
    parser.add_argument(
        "--same-group",
        type=float,
        default=0.0,
        help="shared/metamer: chance that all objects of an image come from one colour group (default 0)",
    )
    parser.add_argument(
        "--marker-share", type=float, default=0.3, help="colours=marker: class-coloured share of an object"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino data synth-video``."""
    parser.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    parser.add_argument("--clips", type=int, default=8, help="number of clips (default 8)")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip, >= 3 (default 12)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--num-classes", type=int, default=10, help="object classes, 2-24 (default 10)")
    parser.add_argument("--max-objects", type=int, default=3, help="objects per clip: 2..N (default 3)")
    parser.add_argument(
        "--clutter", type=float, default=1.0, help="background clutter multiplier (default 1)"
    )
    parser.add_argument(
        "--colours", choices=COLOUR_MODES, default="random", help="object colours (see `data synth --help`)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")


MAX_IMAGES = 10_000_000  # images of a split / clips of the video set: beyond any embedded dataset
MAX_SIZE = 4096  # pixels per side
MAX_CLUTTER = 100.0  # x the default number of background shapes
MAX_IMAGE_OBJECTS = 32
MAX_VIDEO_OBJECTS = 8  # more cannot all be placed visibly in the first frame of a clip


SYNTH_RULES: dict[str, Range | OneOf] = {
    "n_train": Range(1, MAX_IMAGES, integer=True),
    "n_val": Range(1, MAX_IMAGES, integer=True),
    "size": Range(16, MAX_SIZE, integer=True),
    "seed": Range(0, MAX_SEED, integer=True),
    "num_classes": Range(2, MAX_CLASSES, integer=True),
    "max_objects": Range(1, MAX_IMAGE_OBJECTS, integer=True),
    "clutter": Range(0, MAX_CLUTTER),
    "colours": OneOf(COLOUR_MODES),
    "colour_groups": Range(1, MAX_CLASSES, integer=True),
    "same_group": Range(0, 1),
    "marker_share": Range(0, 1, open_low=True),
}
VIDEO_RULES: dict[str, Range | OneOf] = {
    **SYNTH_RULES,
    "clips": Range(1, MAX_IMAGES, integer=True),
    "frames": Range(3, 10_000, integer=True),
    "max_objects": Range(2, MAX_VIDEO_OBJECTS, integer=True),
}


def check_synth_options(values: Mapping[str, Any], key: Callable[[str], str]) -> None:
    """Check the embedded dataset's options against the generator's limits, before anything is written.

    Args:
        values: ``n_train``, ``n_val``, ``size``, ``seed``, ``num_classes``, ``max_objects``, ``clutter``,
            ``colours``, ``colour_groups``, ``same_group``, ``marker_share`` (any subset).
        key: how the user spelled an option, e.g. ``lambda k: f"key 'synth.{k}'"`` (reproduce) or
            :func:`~sparsedino.options.option_name` (``--n-train``).

    Raises:
        ConfigError: naming the option and its allowed range.
    """
    check_options(values, SYNTH_RULES, key)
    _check_colours(values, key)


def _check_colours(values: Mapping[str, Any], key: Callable[[str], str]) -> None:
    """The colour mode's constraints on the number of classes (shared: groups; metamer: pairs)."""
    colours, classes = values.get("colours"), values.get("num_classes", 2)
    if colours == "shared" and not 1 <= values.get("colour_groups", 1) <= classes:
        raise ConfigError(
            f"{key('colour_groups')} must be in [1, num_classes={classes}], got {values['colour_groups']!r}"
        )
    if colours == "metamer" and classes % 2:
        raise ConfigError(
            f"{key('num_classes')} must be even with colours=metamer (classes come in pairs), got {classes}"
        )


def check_video_options(values: Mapping[str, Any], key: Callable[[str], str]) -> None:
    """Check the embedded clips' options (``clips``, ``frames``, ``size``, ``seed``, ``max_objects`` and
    those shared with :func:`check_synth_options`), naming the option.

    Raises:
        ConfigError: naming the option and its allowed range.
    """
    check_options(values, VIDEO_RULES, key)
    _check_colours(values, key)


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` can be built beside and swapped in, and is empty unless ``--overwrite``."""
    out = check_replaceable_dir(args.out, "--out")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise OutputError(f"--out {str(out)!r} exists and is not empty (pass --overwrite to replace it)")


def run_synth(args: argparse.Namespace) -> int:
    """Check the options and ``--out``, then write the dataset."""
    check_synth_options(vars(args), option_name)
    _check_out(args)
    start = time.perf_counter()
    meta = write_synthetic_dataset(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        size=args.size,
        seed=args.seed,
        num_classes=args.num_classes,
        max_objects=args.max_objects,
        clutter=args.clutter,
        colours=args.colours,
        colour_groups=args.colour_groups,
        same_group=args.same_group,
        marker_share=args.marker_share,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - start
    total = meta["n_train"] + meta["n_val"]
    print(
        f"wrote {total} images ({meta['num_classes']} classes, {meta['size']} px) to {args.out} in "
        f"{seconds:.1f} s ({total / seconds:.0f} images/s)"
    )
    return 0


def run_synth_video(args: argparse.Namespace) -> int:
    """Check the options and ``--out``, then write the clips."""
    check_video_options(vars(args), option_name)
    _check_out(args)
    start = time.perf_counter()
    meta = write_synthetic_videos(
        args.out, clips=args.clips, frames=args.frames, size=args.size, seed=args.seed,
        num_classes=args.num_classes, max_objects=args.max_objects, clutter=args.clutter,
        colours=args.colours, overwrite=args.overwrite,
    )  # fmt: skip
    objects = sum(s["objects"] for s in meta["sequences"].values())
    print(
        f"wrote {meta['clips']} clips x {meta['frames']} frames ({objects} objects, {meta['size']} px) to "
        f"{args.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


USAGE = """usage: sparsedino data synth --out DIR [--n-train N] [--n-val N] [--size PX] [--seed S]
       sparsedino data synth-video --out DIR [--clips N] [--frames T] [--size PX] [--seed S]"""


CLI = Group(
    "sub-command",
    USAGE,
    {
        "synth": Command(
            add_synth_arguments,
            run_synth,
            description="Generate the embedded dataset of textured shapes over class-independent clutter, "
            "written as an ImageNet-style folder tree (imagenet/) and a VOC 2012 tree (VOC2012/).",
        ),
        "synth-video": Command(
            add_video_arguments,
            run_synth_video,
            description="Generate short clips of the embedded objects moving, rotating and occluding each "
            "other over class-free clutter, written in the DAVIS-2017 layout (JPEGImages/480p, "
            "Annotations/480p, ImageSets/2017/val.txt) for `sparsedino eval video`.",
        ),
    },
)


def main(argv: Sequence[str]) -> int:
    """``sparsedino data synth --out DIR ...`` or ``sparsedino data synth-video --out DIR ...``."""
    return dispatch(CLI, argv, "sparsedino data")
