"""``sparsedino data synth | synth-video``: write the embedded dataset (ImageNet + VOC 2012 layouts) or the
embedded videos (DAVIS-2017 layout) to disk."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sparsedino.data.synthetic import COLOUR_MODES


def _synth_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsedino data synth",
        description="Generate the embedded dataset of textured shapes over class-independent clutter, "
        "written as an ImageNet-style folder tree (imagenet/) and a VOC 2012 tree (VOC2012/).",
    )
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
    return parser


def _video_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsedino data synth-video",
        description="Generate short clips of the embedded objects moving, rotating and occluding each other "
        "over class-free clutter, written in the DAVIS-2017 layout (JPEGImages/480p, Annotations/480p, "
        "ImageSets/2017/val.txt) for `sparsedino eval video`.",
    )
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
    return parser


def _synth_video(argv: list[str]) -> int:
    args = _video_parser().parse_args(argv)
    from sparsedino.data.synthetic_video import write_synthetic_videos

    start = time.perf_counter()
    try:
        meta = write_synthetic_videos(
            args.out, clips=args.clips, frames=args.frames, size=args.size, seed=args.seed,
            num_classes=args.num_classes, max_objects=args.max_objects, clutter=args.clutter,
            colours=args.colours, overwrite=args.overwrite,
        )  # fmt: skip
    except (ValueError, FileExistsError) as err:
        print(f"sparsedino data synth-video: {err}", file=sys.stderr)
        return 2
    objects = sum(s["objects"] for s in meta["sequences"].values())
    print(
        f"wrote {meta['clips']} clips x {meta['frames']} frames ({objects} objects, {meta['size']} px) to "
        f"{args.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


_USAGE = """usage: sparsedino data synth --out DIR [--n-train N] [--n-val N] [--size PX] [--seed S]
       sparsedino data synth-video --out DIR [--clips N] [--frames T] [--size PX] [--seed S]"""


def check_synth_options(values: Mapping[str, Any], key: Callable[[str], str]) -> None:
    """Check the embedded dataset's options against the generator's limits, before anything is written.

    Args:
        values: ``n_train``, ``n_val``, ``size``, ``num_classes``, ``max_objects``, ``clutter``, ``colours``,
            ``colour_groups``, ``same_group``, ``marker_share`` (any subset).
        key: how the user spelled an option, e.g. ``lambda k: f"synth.{k}"`` (reproduce) or ``--n-train``.

    Raises:
        ConfigError: naming the option and its allowed range.
    """
    from sparsedino.config import ConfigError
    from sparsedino.data.synthetic import COLOUR_MODES, MAX_CLASSES

    rules = {
        "n_train": (lambda v: v >= 1, ">= 1"),
        "n_val": (lambda v: v >= 1, ">= 1"),
        "size": (lambda v: v >= 16, ">= 16 pixels"),
        "num_classes": (lambda v: 2 <= v <= MAX_CLASSES, f"in [2, {MAX_CLASSES}]"),
        "max_objects": (lambda v: v >= 1, ">= 1"),
        "clutter": (lambda v: v >= 0, ">= 0"),
        "colours": (lambda v: v in COLOUR_MODES, f"one of {', '.join(COLOUR_MODES)}"),
        "same_group": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
        "marker_share": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    }
    for name, (ok, rule) in rules.items():
        if name in values and not ok(values[name]):
            raise ConfigError(f"{key(name)} must be {rule}, got {values[name]!r}")
    colours, classes = values.get("colours"), values.get("num_classes", 2)
    if colours == "shared" and not 1 <= values.get("colour_groups", 1) <= classes:
        raise ConfigError(
            f"{key('colour_groups')} must be in [1, num_classes={classes}], got {values['colour_groups']!r}"
        )
    if colours == "metamer" and classes % 2:
        raise ConfigError(
            f"{key('num_classes')} must be even with colours=metamer (classes come in pairs), got {classes}"
        )


def main(argv: Sequence[str]) -> int:
    """Entry point: ``sparsedino data synth --out DIR ...`` or ``sparsedino data synth-video --out DIR ...``."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("synth", "synth-video"):
        stream = sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr
        if stream is sys.stderr:
            print(f"sparsedino data: unknown sub-command {argv[0]!r}", file=stream)
        print(_USAGE, file=stream)
        return 0 if stream is sys.stdout else 2
    if argv[0] == "synth-video":
        return _synth_video(argv[1:])
    args = _synth_parser().parse_args(argv[1:])
    from sparsedino.errors import run_command

    return run_command("sparsedino data synth", lambda: _synth(args))


def _synth(args: argparse.Namespace) -> int:
    from sparsedino.atomic import check_output_dir
    from sparsedino.data.synthetic import write_synthetic_dataset
    from sparsedino.errors import OutputError

    check_synth_options(vars(args), _option_name)
    out = check_output_dir(args.out, "--out")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise OutputError(f"--out {str(out)!r} exists and is not empty (pass --overwrite to replace it)")
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


def _option_name(key: str) -> str:
    return "--" + key.replace("_", "-")
