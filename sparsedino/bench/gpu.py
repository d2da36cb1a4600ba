"""``sparsedino bench gpu --out FILE``: the first thing to run on a GPU (one GPU, under 8 minutes).

Checks, in one process plus three short training processes:

1. ``attention``: fwd+bwd time and peak memory of SDPA (flash) and of our entmax-1.5 paths (adasplash,
   compiled tensor ops, eager tensor ops) at (B, H, N, D) = (128, 6, 197, 64), (512, 6, 37, 64),
   (16, 6, 785, 64) in bfloat16, with ratios to SDPA;
2. ``exactness``: every path's output and q/k/v gradients against float64 attention, in float32, bfloat16
   and float16 (SDPA's flash kernel: bfloat16 / float16 only);
3. ``dino_step``: one ViT-S/16 DINO training step (2 x 224 + 10 x 96 crops, batch 64, bf16 autocast),
   softmax vs entmax-1.5;
4. ``dino_run``: 100 real DINO iterations of ViT-S/16 on the embedded data (bf16), finite losses, and a
   run killed mid-epoch and restarted that ends like the uninterrupted one.

Any inexact or non-finite result, and any path that cannot run, is a failure: it is printed naming the
check and path, the JSON gets ``"ok": false`` and the exit code is 1. ``--dry-run`` (implied by
``--device cpu``) runs the same checks at tiny sizes in seconds, as the test-suite does.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from sparsedino.atomic import atomic_write_json, check_output_dir, check_output_file
from sparsedino.bench.attention import environment
from sparsedino.bench.device import gpu_environment
from sparsedino.bench.gpu_attention import PATHS, exactness, forced, time_path
from sparsedino.bench.gpu_run import RunPlan, dino_restart_run
from sparsedino.bench.train import make_step
from sparsedino.commands import Command, dispatch
from sparsedino.config import ConfigError
from sparsedino.options import check_unique, split_list

SECTIONS = ("attention", "exactness", "dino_step", "dino_run")
_TINY_MODEL = ("model.arch=vit_pico", "model.patch_size=8", "model.img_size=32", "model.out_dim=64",
               "model.hidden_dim=64", "model.bottleneck_dim=32")  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """Sizes of every check (full on a GPU; tiny for ``--dry-run``)."""

    shapes: tuple[tuple[int, int, int, int], ...]
    repeats: int
    warmup: int
    exact_dtypes: tuple[torch.dtype, ...]
    step: SimpleNamespace  # what bench.train.make_step reads
    step_repeats: int
    run: RunPlan


FULL = Plan(
    shapes=((128, 6, 197, 64), (512, 6, 37, 64), (16, 6, 785, 64)),
    repeats=10,
    warmup=3,
    exact_dtypes=(torch.float32, torch.bfloat16, torch.float16),
    step=SimpleNamespace(
        arch="vit_small", patch_size=16, out_dim=65536, global_size=224, local_size=96, n_local=10, batch=64
    ),
    step_repeats=5,
    run=RunPlan(
        preset="dino_vits16_entmax15",
        overrides=(
            "optim.epochs=2",
            "run.max_iters_per_epoch=50",
            "optim.batch_size_per_gpu=32",
            "optim.warmup_epochs=1",
            "run.precision=bf16",
            "data.num_workers=8",
            "run.checkpoint_every_iters=10",
            "run.checkpoint_every_epochs=0",
            "run.log_every=1",
            "run.progress=false",
            "log.tensorboard=false",
        ),
        images=1600,
        image_size=64,
        iterations=100,
        kill_at=70,
        loss_tolerance=1e-3,
        weight_tolerance=1e-2,
        timeout_s=600,
    ),
)
SMOKE = Plan(
    shapes=((4, 2, 37, 16), (2, 2, 197, 16)),
    repeats=2,
    warmup=1,
    exact_dtypes=(torch.float32, torch.bfloat16),
    step=SimpleNamespace(
        arch="vit_pico", patch_size=8, out_dim=64, global_size=32, local_size=16, n_local=2, batch=2
    ),
    step_repeats=2,
    run=RunPlan(
        preset="dino_cpu_tiny",
        overrides=(
            *_TINY_MODEL,
            "data.global_crop_size=32",
            "data.local_crop_size=16",
            "data.local_crops_number=2",
            "optim.batch_size_per_gpu=4",
            "optim.epochs=2",
            "run.max_iters_per_epoch=3",
            "optim.warmup_epochs=0",
            "run.precision=bf16",
            "data.num_workers=0",
            "run.checkpoint_every_iters=1",
            "run.checkpoint_every_epochs=0",
            "run.log_every=1",
            "run.progress=false",
            "log.tensorboard=false",
        ),
        images=16,
        image_size=32,
        iterations=6,
        kill_at=4,
        loss_tolerance=0.0,
        weight_tolerance=0.0,
        timeout_s=300,
    ),
)


class Checks:
    """Runs the sections, collecting results and failures (a crash in one check fails only that check)."""

    def __init__(self, plan: Plan, device: torch.device, smoke: bool) -> None:
        self.plan, self.device, self.smoke = plan, device, smoke
        self.result: dict[str, Any] = {"attention": [], "exactness": []}
        self.failures: list[dict[str, str]] = []

    def fail(self, check: str, message: str) -> None:
        self.failures.append({"check": check, "message": message})

    def guarded(self, check: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:  # any crash is a failure of this check, reported with its cause
            self.fail(check, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)[-1500:]}")
            return None

    def unavailable(self, path: str) -> str | None:
        """Why ``path`` is skipped in smoke mode (adasplash needs CUDA); full mode skips nothing."""
        if self.smoke and path == "adasplash" and self.device.type != "cuda":
            return "needs CUDA"
        return None

    def attention(self, bar) -> None:
        for shape in self.plan.shapes:
            rows = []
            for path in PATHS:
                row: dict[str, Any] = {"shape": list(shape), "dtype": "bfloat16", "path": path}
                row["skipped"] = self.unavailable(path)
                if row["skipped"] is None:
                    timed = self.guarded(
                        f"attention/{path}/{shape}", lambda p=path, s=shape: self._time(p, s)
                    )
                    row.update(timed or {"failed": True})
                rows.append(row)
                bar.update(1)
            base = rows[0].get("fwd_bwd_ms")
            for row in rows:
                if base and "fwd_bwd_ms" in row:
                    row["ratio_vs_sdpa"] = row["fwd_bwd_ms"] / base
                    row["peak_ratio_vs_sdpa"] = row["peak_mb"] / max(rows[0]["peak_mb"], 1e-9)
            self.result["attention"].extend(rows)

    def _time(self, path: str, shape) -> dict[str, Any]:
        p = self.plan
        with forced(path, self.device) as fn:
            return time_path(fn, shape, torch.bfloat16, self.device, p.repeats, p.warmup)

    def exactness(self, bar) -> None:
        for shape in self.plan.shapes:
            for dtype in self.plan.exact_dtypes:
                for path in PATHS:
                    bar.update(1)
                    name = f"exactness/{path}/{str(dtype).removeprefix('torch.')}/{tuple(shape)}"
                    row: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                                           "path": path, "skipped": self.unavailable(path)}  # fmt: skip
                    if path == "sdpa" and dtype == torch.float32 and self.device.type == "cuda":
                        row["skipped"] = "flash attention has no float32 kernel"
                    if row["skipped"] is None:
                        row.update(
                            self.guarded(name, lambda p=path, d=dtype, s=shape: self._exact(p, s, d)) or {}
                        )
                        if row.get("ok") is False:
                            self.fail(name, f"relative errors out {row['out_err']:.3g}, grads "
                                      f"{[f'{e:.3g}' for e in row['grad_err']]}, finite {row['finite']}; "
                                      f"tolerance {row['tolerance']:g}")  # fmt: skip
                    self.result["exactness"].append(row)

    def _exact(self, path: str, shape, dtype) -> dict[str, Any]:
        with forced(path, self.device) as fn:
            return exactness(path, fn, shape, dtype, self.device)

    def dino_step(self, bar) -> None:
        rows = []
        for normalizer in ("softmax", "entmax15"):
            step = self.guarded(
                f"dino_step/{normalizer}",
                lambda n=normalizer: make_step(n, self.plan.step, str(self.device), "bf16"),
            )
            if step is None:
                continue
            runs = [self.guarded(f"dino_step/{normalizer}", step) for _ in range(1 + self.plan.step_repeats)]
            if None in runs:
                continue
            times, losses = zip(*runs[1:])  # the first step warms up (allocations, compilation)
            if not all(math.isfinite(x) for x in losses):
                self.fail(f"dino_step/{normalizer}", f"non-finite loss {losses}")
            rows.append({"normalizer": normalizer, "median_step_s": sorted(times)[len(times) // 2],
                         "min_step_s": min(times), "losses": list(losses)})  # fmt: skip
            bar.update(1)
        if len(rows) == 2:
            rows[1]["ratio_vs_softmax"] = rows[1]["median_step_s"] / rows[0]["median_step_s"]
        self.result["dino_step"] = {"setup": {**vars(self.plan.step), "precision": "bf16"}, "rows": rows}

    def dino_run(self, bar, workdir: Path) -> None:
        record, failures = self.guarded(
            "dino_run", lambda: dino_restart_run(self.plan.run, workdir, self.device.type)
        ) or ({}, [])
        for message in failures:
            self.fail(message.split(":")[0], message)
        self.result["dino_run"] = record
        bar.update(1)


def _print_summary(result: dict[str, Any]) -> None:
    print("| shape | path | fwd+bwd ms | x SDPA | peak MB | x SDPA |\n|---|---|---|---|---|---|")
    for r in result.get("attention", []):
        if "fwd_bwd_ms" in r:
            print(f"| {tuple(r['shape'])} | {r['path']} | {r['fwd_bwd_ms']:.2f} | {r.get('ratio_vs_sdpa', 0):.2f} "
                  f"| {r['peak_mb']:.1f} | {r.get('peak_ratio_vs_sdpa', 0):.2f} |")  # fmt: skip
        else:
            print(f"| {tuple(r['shape'])} | {r['path']} | {r.get('skipped') or 'FAILED'} | | | |")
    for r in result.get("dino_step", {}).get("rows", []):
        print(f"DINO step {r['normalizer']}: {r['median_step_s']:.3f} s (median)"
              + (f", {r['ratio_vs_softmax']:.2f}x softmax" if "ratio_vs_softmax" in r else ""))  # fmt: skip
    run = result.get("dino_run", {})
    if "max_weight_diff" in run:
        print(f"DINO run: {run['iterations']} iterations, final loss {run['final_loss']:.4f}, restart at step "
              f"{run['kill_at_step']}: weights differ by {run['max_weight_diff']:.3g} (relative)")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino bench gpu``."""
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (implies --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="every check at tiny sizes (seconds)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma separated, of {SECTIONS}")
    parser.add_argument("--workdir", type=Path, default=None, help="where the DINO runs go (default: temp)")


def run(args: argparse.Namespace) -> int:
    """Check the options, run the sections, write the JSON; exit code 1 when a check failed."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise ConfigError(f"--device must be cuda, cuda:N or cpu (the dry run), got {args.device!r}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.device != "cpu" and int(args.device.partition(":")[2] or 0) >= count:
        raise ConfigError(
            f"--device {args.device}, but this machine has {count} CUDA device(s); --device cpu runs the dry run"
        )
    device = torch.device(args.device)
    sections = split_list(args.sections, "--sections")
    if unknown := sorted(set(sections) - set(SECTIONS)):
        raise ConfigError(f"--sections: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    check_unique(sections, "--sections")
    check_output_file(args.out, "--out")
    if args.workdir is not None:
        check_output_dir(args.workdir, "--workdir")
    smoke = args.dry_run or device.type == "cpu"
    plan = SMOKE if smoke else FULL
    checks = Checks(plan, device, smoke)
    env = {**environment(device), **gpu_environment(device)}
    print(f"# GPU check ({'dry run' if smoke else 'full'}) on {env.get('gpu', device)}  torch {env['torch']}")
    n_paths = len(PATHS) * len(plan.shapes)
    total = {
        "attention": n_paths,
        "exactness": n_paths * len(plan.exact_dtypes),
        "dino_step": 2,
        "dino_run": 1,
    }
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=sum(total[s] for s in sections)) as bar:
        for section in sections:
            start = time.perf_counter()
            bar.set_description(section)
            if section == "dino_run":
                checks.dino_run(bar, args.workdir or Path(tmp))
            else:
                getattr(checks, section)(bar)
            seconds[section] = round(time.perf_counter() - start, 1)
    result = {"benchmark": "gpu", "mode": "dry-run" if smoke else "full", "ok": not checks.failures,
              "failures": checks.failures, "environment": env, "seconds": seconds, **checks.result}  # fmt: skip
    atomic_write_json(args.out, result)
    _print_summary(result)
    for failure in checks.failures:
        print(f"FAILED {failure['check']}: {failure['message']}")
    print(f"{'FAILED' if checks.failures else 'OK'}: wrote {args.out} ({sum(seconds.values()):.0f} s)")
    return 1 if checks.failures else 0


CLI = Command(add_arguments, run, description=__doc__.splitlines()[0])


def main(argv: Sequence[str]) -> int:
    """``sparsedino bench gpu --out FILE [options]``."""
    return dispatch(CLI, argv, "sparsedino bench gpu")
