"""The real-training part of ``sparsedino bench gpu``: DINO on the embedded data, killed and restarted.

Three ``sparsedino train`` processes on the same settings: one uninterrupted run, and one that kills itself
with SIGKILL right after writing its checkpoint at step ``kill_at`` (mid-epoch), then is started again and
resumes. Every logged loss must be finite, and the restarted run must end where the uninterrupted one does:
same logged losses and the same weights, within tolerances (0 on CPU, where training is deterministic).
On a GPU some kernels accumulate with atomics (e.g. the backward of the bicubic position-embedding
resampling for local crops), so the two processes differ by rounding from the first step; the losses
logged before the kill show that noise floor. A resume defect (data order, RNG, optimiser or schedule
state) moves the loss at the first resumed step by far more than ``loss_tolerance``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsedino.data.synthetic import write_synthetic_dataset
from sparsedino.train.checkpointing import LATEST

# A ``sparsedino train`` process that dies by SIGKILL right after the checkpoint at step argv[1] is written.
_KILLED_AFTER_SAVE = """
import os, signal, sys
from sparsedino.train import loop
kill_at = int(sys.argv[1])
save = loop.Trainer.save
def save_then_die(self, epoch, iteration):
    save(self, epoch, iteration)
    if self.global_step >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
loop.Trainer.save = save_then_die
from sparsedino.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


@dataclass(frozen=True)
class RunPlan:
    """A short DINO run: preset and overrides, images to generate, where to kill it, what to accept."""

    preset: str
    overrides: tuple[str, ...]
    images: int  # training images of the embedded dataset
    image_size: int
    iterations: int
    kill_at: int
    loss_tolerance: float  # largest absolute difference of a logged loss after the restart
    weight_tolerance: float  # largest relative difference of a weight tensor at the end
    timeout_s: int


def _train(args: list[str], timeout_s: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _weight_difference(a: Path, b: Path) -> float:
    """Largest relative difference between two checkpoints' student/teacher weights and DINO centre."""
    ca = torch.load(a / LATEST, weights_only=True, map_location="cpu")
    cb = torch.load(b / LATEST, weights_only=True, map_location="cpu")
    worst = 0.0
    for part in ("student", "teacher", "dino_loss"):
        for key, va in ca[part].items():
            if va.is_floating_point():
                diff = (va.double() - cb[part][key].double()).abs().max()
                worst = max(worst, float(diff / va.double().abs().max().clamp_min(1e-12)))
    return worst


def dino_restart_run(plan: RunPlan, workdir: Path, device: str) -> tuple[dict[str, Any], list[str]]:
    """Run the plan; returns the JSON record and the failures (each naming what failed)."""
    data = workdir / "data"
    if not (data / "imagenet").is_dir():
        write_synthetic_dataset(data, n_train=plan.images, n_val=10, size=plan.image_size, colours="class")
    runs = {"uninterrupted": workdir / "uninterrupted", "restarted": workdir / "restarted"}

    def overrides(out: Path) -> list[str]:
        return [plan.preset, f"data.path={data / 'imagenet'}", f"run.output_dir={out}", f"run.device={device}",
                *plan.overrides]  # fmt: skip

    failures: list[str] = []
    record: dict[str, Any] = {"iterations": plan.iterations, "kill_at_step": plan.kill_at}
    python = sys.executable
    steps = [
        ("uninterrupted", [python, "-m", "sparsedino", "train", *overrides(runs["uninterrupted"])]),
        (
            "killed",
            [python, "-c", _KILLED_AFTER_SAVE, str(plan.kill_at), "train", *overrides(runs["restarted"])],
        ),
        ("restarted", [python, "-m", "sparsedino", "train", *overrides(runs["restarted"])]),
    ]
    for name, cmd in steps:
        result = _train(cmd, plan.timeout_s)
        expected = -9 if name == "killed" else 0
        if result.returncode != expected:
            failures.append(
                f"dino_run/{name}: exit code {result.returncode} (expected {expected}):\n{result.stderr[-2000:]}"
            )
            return record, failures
    ref, rst = _losses(runs["uninterrupted"]), _losses(runs["restarted"])
    record["losses"] = [ref[s] for s in sorted(ref)]
    record["final_loss"] = record["losses"][-1] if record["losses"] else None
    if sorted(ref) != list(range(1, plan.iterations + 1)) or sorted(rst) != sorted(ref):
        failures.append(
            f"dino_run: logged steps {sorted(ref)} / {sorted(rst)}, expected 1..{plan.iterations}"
        )
        return record, failures
    bad = [s for s in ref if not (math.isfinite(ref[s]) and math.isfinite(rst[s]))]
    if bad:
        failures.append(f"dino_run: non-finite loss at steps {bad}")
    record["max_loss_diff_before_kill"] = max(abs(ref[s] - rst[s]) for s in ref if s <= plan.kill_at)
    record["max_loss_diff"] = max(abs(ref[s] - rst[s]) for s in ref if s > plan.kill_at)
    record["max_weight_diff"] = _weight_difference(runs["uninterrupted"], runs["restarted"])
    record["loss_tolerance"], record["weight_tolerance"] = plan.loss_tolerance, plan.weight_tolerance
    if record["max_loss_diff"] > plan.loss_tolerance or record["max_weight_diff"] > plan.weight_tolerance:
        failures.append(
            f"dino_run/restart: the restarted run differs from the uninterrupted one: losses after the restart "
            f"by {record['max_loss_diff']:.3g} (tolerance {plan.loss_tolerance:g}; before the kill "
            f"{record['max_loss_diff_before_kill']:.3g}), weights by {record['max_weight_diff']:.3g} relative "
            f"(tolerance {plan.weight_tolerance:g})"
        )
    record["ok"] = not failures
    return record, failures
