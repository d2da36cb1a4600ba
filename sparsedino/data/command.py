"""``sparsedino data synth``: write the embedded dataset (ImageNet + VOC 2012 layouts) to disk."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


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
        choices=("random", "class"),
        default="random",
        help="object colours: random (no class cue, default) or class (a hue pair per class, grey clutter)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    return parser


def check_synth_options(values: Mapping[str, Any], key: Callable[[str], str]) -> None:
    """Check the embedded dataset's options against the generator's limits, before anything is written.

    Args:
        values: ``n_train``, ``n_val``, ``size``, ``num_classes``, ``max_objects``, ``clutter``, ``colours``.
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
    }
    for name, (ok, rule) in rules.items():
        if name in values and not ok(values[name]):
            raise ConfigError(f"{key(name)} must be {rule}, got {values[name]!r}")


def main(argv: Sequence[str]) -> int:
    """Entry point: ``sparsedino data synth --out DIR [--n-train N --n-val N --size PX --seed S]``."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "synth":
        stream = sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr
        if stream is sys.stderr:
            print(f"sparsedino data: unknown sub-command {argv[0]!r}", file=stream)
        print(
            "usage: sparsedino data synth --out DIR [--n-train N] [--n-val N] [--size PX] [--seed S]",
            file=stream,
        )
        return 0 if stream is sys.stdout else 2
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
