"""``sparsedino diagnose``: semantic-diffusion diagnostics of one checkpoint, of several checkpoints of a
run (scores against the epoch), or a side-by-side comparison of two result folders.

    sparsedino diagnose --checkpoint FILE --data DIR --out DIR [--layers 0 5 11] [--config YAML] [key=value ...]
    sparsedino diagnose --checkpoint 'run/checkpoint*.pth' --data DIR --out DIR     # over training
    sparsedino diagnose --checkpoint timm:vit_small_patch14_reg4_dinov2:w.pth --data DIR --out DIR
    sparsedino diagnose --checkpoint hf:dinov2-small-folder --data DIR --out DIR
    sparsedino diagnose --compare DIR_A DIR_B --out DIR                              # e.g. softmax vs entmax

``--checkpoint`` takes every backbone spec (:mod:`sparsedino.models.spec`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from sparsedino.atomic import check_output_dir, staged_directory
from sparsedino.commands import Command, dispatch
from sparsedino.config import save_config
from sparsedino.data.joint_transforms import make_seg_eval_transform
from sparsedino.data.segmentation import build_seg_dataset
from sparsedino.diagnose.over_training import assign_epochs, resolve_backbones, write_over_training
from sparsedino.diagnose.report import fmt, write_compare, write_run
from sparsedino.diagnose.runner import run_diagnostics, validate_model
from sparsedino.diagnose.scores import SCORES
from sparsedino.diagnose.settings import load_diagnose_config
from sparsedino.errors import DataError, MissingDataError
from sparsedino.eval.command import normalizer_option
from sparsedino.models import load_backbone, token_layout
from sparsedino.models.spec import SPEC_HELP
from sparsedino.runlock import RunLock


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino diagnose``."""
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="SPEC",
        help=f"{SPEC_HELP}; checkpoint files may be folders or globs; several = diagnostics over training",
    )
    p.add_argument(
        "--data", metavar="DIR", help="segmentation dataset root (VOC layout by default, see dataset=)"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument(
        "--layers",
        nargs="+",
        type=int,
        metavar="I",
        help="block indices (negative from the end); default all",
    )
    p.add_argument("--config", metavar="YAML", help="options file or preset (see DiagnoseConfig)")
    p.add_argument("--normalizer", help="attention normaliser to run the model with (default: as stored)")
    p.add_argument("--arch", help="expected architecture (default: stored or inferred)")
    p.add_argument(
        "--which", default="teacher", choices=("teacher", "student"), help="network of a training checkpoint"
    )
    p.add_argument(
        "--compare", nargs=2, metavar=("DIR_A", "DIR_B"), help="side-by-side report of two result folders"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. n_images=128")


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
_SINGLE_VALUE = {"--out", "--data", "--config", "--normalizer", "--arch", "--which"}


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from the options, wherever they appear.

    ``--checkpoint`` and ``--layers`` take several values, so argparse alone would swallow an override
    written after them (``--layers 0 5 n_images=8``). A token is an override if it looks like
    ``dotted.key=value`` and is not the value of a single-valued option (``--out a=b`` stays a path).
    """
    options, overrides = [], []
    for i, token in enumerate(argv):
        if _OVERRIDE.match(token) and not (i and argv[i - 1] in _SINGLE_VALUE):
            overrides.append(token)
        else:
            options.append(token)
    return options, overrides


def _model_info(info) -> dict:
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info or {})


def _print_summary(metrics: dict) -> None:
    keys = [
        "attn.zero_share",
        "attn.distance_px",
        "norm.outlier_share",
        "align.cls_attn_iou",
        "align.pca_iou",
        "diffusion.acc_bg",
        "diffusion.diffusion_index",
        "probe.miou",
        "probe.miou_with_cls",
    ]
    keys = [k for k in keys if any(k in values for values in metrics["blocks"].values())]
    print("block  " + "  ".join(f"{SCORES[k][1][:18]:>18}" for k in keys))
    for b, values in sorted(metrics["blocks"].items(), key=lambda kv: int(kv[0])):
        print(f"{b:>5}  " + "  ".join(f"{fmt(values.get(k)):>18}" for k in keys))


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """The options, with the ``key=value`` overrides taken out first (see :func:`split_overrides`)."""
    options, overrides = split_overrides(list(argv))
    args = parser.parse_args(options)
    if not args.compare and (not args.checkpoint or not args.data):
        parser.error("--checkpoint and --data are required (or use --compare DIR_A DIR_B)")
    args.overrides = [*overrides, *args.overrides]
    return args


def _diagnose(args: argparse.Namespace) -> int:
    """Check every input, then write the outputs into a folder beside ``--out``, swapped in only when all
    are complete (under ``--out``'s lock): a failed run leaves nothing behind, nor a half-updated ``--out``."""
    out = check_output_dir(args.out, "--out")
    if args.compare:
        with RunLock(out, "--out"), staged_directory(out) as stage:
            write_compare(args.compare[0], args.compare[1], stage)
        print(f"comparison written to {out / 'report.html'}")
        return 0
    layers = [f"layers=[{','.join(map(str, args.layers))}]"] if args.layers else []
    cfg = load_diagnose_config(args.config, list(args.overrides) + layers)
    normalizer = normalizer_option(args.normalizer)
    if not Path(args.data).is_dir():
        raise MissingDataError(f"--data {args.data}: no such folder")
    specs = resolve_backbones(args.checkpoint)
    dataset = build_seg_dataset(cfg.dataset, args.data, cfg.split)
    if len(dataset) == 0:
        raise DataError(f"--data {args.data}: split {cfg.split!r} has no images")
    dataset.load_raw(0)  # a wrong annotation folder fails here, not after the first batch
    loaded = []
    options = {"normalizer": normalizer, "arch": args.arch, "which": args.which, "attention_maps": True}
    for spec in specs:  # read every backbone first: a bad file fails before any long work
        model, info = load_backbone(spec, **options)
        validate_model(model, cfg)
        loaded.append((spec.path, info.epoch, info.sha256))
        del model
    by_spec = {spec.path: spec for spec in specs}
    with RunLock(out, "--out"), staged_directory(out) as stage:
        _run_all(args, cfg, options, by_spec, dataset, loaded, stage)
    print(f"report written to {out / 'report.html'}")
    return 0


def _run_all(
    args: argparse.Namespace, cfg, options: dict, by_spec: dict, dataset, loaded: list, out: Path
) -> None:
    """Diagnose each backbone of ``loaded`` (``(path, epoch, sha256)``; ``by_spec`` maps each path to its
    spec, loaded with ``options``) into ``out``."""
    save_config(cfg, out / "config.yaml")
    single = len(loaded) == 1
    runs = [(None, loaded[0][0])] if single else assign_epochs(loaded)
    done = []
    for epoch, path in runs:
        model, info = load_backbone(by_spec[path], **options)
        layout = token_layout(model)
        dataset.transform = make_seg_eval_transform(
            mean=layout.mean, std=layout.std
        )  # the model's statistics
        run_dir = out if single else out / f"epoch_{epoch:04d}"
        print(
            f"diagnosing {by_spec[path]} ({info.arch}, {info.normalizer}"
            + ("" if single else f", epoch {epoch}")
            + ")"
        )
        result = run_diagnostics(model, dataset, cfg.layers, cfg, progress=not args.no_progress)
        metrics = write_run(
            result, run_dir, _model_info(info) | {"epoch": epoch if epoch is not None else info.epoch}
        )
        _print_summary(metrics)
        done.append((epoch, metrics, run_dir.name))
    if not single:
        write_over_training(done, out)


CLI = Command(
    add_arguments,
    _diagnose,
    description="Per-block semantic-diffusion diagnostics of a ViT: token norms, attention statistics, "
    "foreground alignment, background label probe, dense probes, figures and reports.",
    parse=parse_args,
)


def main(argv: Sequence[str]) -> int:
    """Run the command; returns the exit code (2 for bad input, with a message naming the culprit)."""
    return dispatch(CLI, argv, "sparsedino diagnose")
