"""Resumable stages for long pipelines.

A stage is a named unit of work with its own output folder. When it finishes, a ``stage.json`` marker is
written atomically holding its result and a fingerprint of its settings. Re-running the pipeline skips a
stage whose marker exists with the same fingerprint; a stage that was killed has no marker and runs again
(stages that are themselves resumable, such as training, pick up from their last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsedino.atomic import atomic_write_json

MARKER = "stage.json"


def fingerprint(settings: Any) -> str:
    """A short stable hash of JSON-serialisable settings (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Stage:
    """One unit of pipeline work.

    Attributes:
        name: unique name, also the sub-folder of the run directory holding the stage's outputs.
        run: function called as ``run(stage_dir) -> dict`` (the result, JSON-serialisable).
        settings: what determines the result; a change invalidates a finished stage.
        estimate_s: rough expected duration in seconds (for the time-left estimate).
    """

    name: str
    run: Callable[[Path], dict]
    settings: Any = None
    estimate_s: float = 60.0
    depends_on: list[str] = field(default_factory=list)


class StageRunner:
    """Runs stages in order, skipping the finished ones, and reports progress with a time-left estimate.

    Args:
        root: the run directory; each stage writes to ``root / stage.name``.
        log: function receiving one human-readable line per event (print by default).
    """

    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.log = log
        self.results: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}  # wall time each stage took when it ran (earlier runs included)

    def marker_path(self, stage: Stage) -> Path:
        return self.root / stage.name / MARKER

    def is_done(self, stage: Stage) -> bool:
        """True when the stage finished earlier with the same settings."""
        path = self.marker_path(stage)
        if not path.is_file():
            return False
        try:
            marker = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return marker.get("fingerprint") == fingerprint(stage.settings)

    def load_result(self, stage: Stage) -> dict:
        marker = json.loads(self.marker_path(stage).read_text())
        self.seconds[stage.name] = float(marker.get("seconds", float("nan")))
        return marker["result"]

    def run_all(self, stages: list[Stage]) -> dict[str, dict]:
        """Run (or skip) every stage in order and return their results by name."""
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        remaining = sum(s.estimate_s for s in stages if not self.is_done(s))
        spent = estimated = 0.0  # measured vs estimated seconds of the stages run so far: rescales the ETA
        for index, stage in enumerate(stages, start=1):
            missing = [d for d in stage.depends_on if d not in self.results]
            if missing:
                raise RuntimeError(f"stage {stage.name!r} needs {missing} to run first")
            prefix = f"[{index}/{len(stages)}] {stage.name}"
            if self.is_done(stage):
                self.results[stage.name] = self.load_result(stage)
                self.log(f"{prefix}: done earlier, skipped")
                continue
            # measured/estimated ratio so far, damped by a 2-minute prior so one short stage cannot skew it
            speed = (spent + 120.0) / (estimated + 120.0)
            self.log(f"{prefix}: running (about {_fmt_seconds(remaining * speed)} of work left)")
            start = time.perf_counter()
            stage_dir = self.root / stage.name
            stage_dir.mkdir(parents=True, exist_ok=True)
            result = stage.run(stage_dir)
            elapsed = time.perf_counter() - start
            atomic_write_json(
                self.marker_path(stage),
                {
                    "stage": stage.name,
                    "fingerprint": fingerprint(stage.settings),
                    "seconds": round(elapsed, 2),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "result": result,
                },
            )
            self.results[stage.name] = result
            self.seconds[stage.name] = round(elapsed, 2)
            remaining = max(0.0, remaining - stage.estimate_s)
            spent, estimated = spent + elapsed, estimated + stage.estimate_s
            self.log(f"{prefix}: finished in {_fmt_seconds(elapsed)}")
        return self.results


def _fmt_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
