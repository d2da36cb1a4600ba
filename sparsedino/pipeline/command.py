"""``sparsedino reproduce``: softmax vs entmax-1.5, trained, evaluated, diagnosed and reported in one command.

Examples::

    sparsedino reproduce --out runs/demo                       # cpu-demo preset, embedded data
    sparsedino reproduce --preset cpu-long --out runs/long     # 3 seeds per arm, paired statistics
    sparsedino reproduce --preset paper --out runs/paper data.imagenet=/data/imagenet \\
        data.voc=/data/VOCdevkit data.ade20k=/data/ade data.cityscapes=/data/cityscapes --dry-run

Re-running with the same ``--out`` skips finished stages and resumes a killed training run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from sparsedino.atomic import check_output_dir, remove_stale_temps
from sparsedino.commands import Command, dispatch
from sparsedino.config import save_config
from sparsedino.pipeline.adapt import start_stages
from sparsedino.pipeline.controls import control_stages
from sparsedino.pipeline.plan import build_plan, check_training_processes, describe, load_reproduce_config
from sparsedino.pipeline.report import write_report
from sparsedino.pipeline.runner import curve_stages, data_stages, diagnose_stages, eval_stages, train_stages
from sparsedino.pipeline.settings import PRESETS
from sparsedino.pipeline.stages import StageRunner
from sparsedino.pipeline.video import video_stages
from sparsedino.runlock import RunLock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino reproduce``."""
    parser.add_argument("--preset", default="cpu-demo", help=f"one of {', '.join(PRESETS)} or a YAML file")
    parser.add_argument("--out", required=True, help="run folder (re-use it to resume)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    parser.add_argument("overrides", nargs="*", help="preset overrides key=value, e.g. seeds=[0,1]")


def run_reproduce(preset: str, out: str | Path, overrides: Sequence[str] = (), dry_run: bool = False) -> dict:
    """Build the plan (validating every config), run or skip each stage, write the report.

    Returns:
        The report dict (also written to ``OUT/results.json``), or the plan description for ``dry_run``.
    """
    cfg = load_reproduce_config(preset, list(overrides))
    out = check_output_dir(out, "--out")
    plan = build_plan(cfg, out)
    if dry_run:
        return describe(plan)
    check_training_processes(plan)  # a multi-process recipe is trained by torchrun, never silently here
    with RunLock(out, "--out"):  # one `reproduce` per folder: a second one is refused, naming this pid
        remove_stale_temps(out)  # left by a run killed mid-write; nobody else writes here now
        save_config(cfg, out / "reproduce_config.yaml")
        stages = [
            *data_stages(plan),
            *train_stages(plan),
            *eval_stages(plan),
            *curve_stages(plan),
            *diagnose_stages(plan),
            *video_stages(plan),
            *control_stages(plan),
            *start_stages(plan),
        ]
        start = time.perf_counter()
        runner = StageRunner(out, log=lambda line: print(f"[reproduce] {line}", flush=True))
        results = runner.run_all(stages)
        elapsed_s = round(time.perf_counter() - start, 1)
        return write_report(plan, results, out, elapsed_s=elapsed_s, stage_seconds=runner.seconds)


def _reproduce(args: argparse.Namespace) -> int:
    result = run_reproduce(args.preset, args.out, args.overrides, dry_run=args.dry_run)
    if args.dry_run:
        print(json.dumps(result, indent=2))
        return 0
    print(f"[reproduce] report: {Path(args.out) / 'report.html'} (also report.md, results.json)")
    return 0


CLI = Command(
    add_arguments,
    _reproduce,
    description="Train DINO with softmax and with entmax-1.5 attention under identical settings, run the "
    "k-NN, linear and segmentation probes and the diagnostics on both, and write one comparison report.",
)


def main(argv: Sequence[str]) -> int:
    """``sparsedino reproduce --out DIR [--preset NAME] [key=value ...]``."""
    return dispatch(CLI, argv, "sparsedino reproduce")
