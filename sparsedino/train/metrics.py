"""Metric sinks of a training run (main rank only): JSON lines, TensorBoard, optional W&B."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sparsedino.atomic import atomic_write_text

log = logging.getLogger(__name__)


class MetricLogger:
    """Append records to ``metrics.jsonl`` and mirror scalars to TensorBoard / W&B when enabled.

    Args:
        output_dir: run folder.
        enabled: False on non-main ranks (every method is then a no-op).
        tensorboard: write event files under ``output_dir/tensorboard``.
        wandb: log to Weights & Biases (the import is guarded; validated at config time).
        wandb_project, wandb_run_name, config: passed to ``wandb.init``.
    """

    def __init__(
        self,
        output_dir: Path,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "sparsedino",
        wandb_run_name: str = "",
        config: dict | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy (loads tensorboard): only when enabled

            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module  # optional dependency: only with log.wandb
            except ImportError:
                log.warning("log.wandb=true but wandb is not installed; W&B logging is off")
            else:
                self._wandb = wandb_module.init(
                    project=wandb_project, name=wandb_run_name or None, config=config, dir=str(output_dir)
                )

    def log(self, record: dict[str, Any], step: int) -> None:
        """Append one JSON line and send its numeric values to TensorBoard / W&B under ``train/``."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:  # append-only log, one line per record
            handle.write(json.dumps(record, allow_nan=True) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def truncate_jsonl(path: Path, global_step: int) -> None:
    """On resume, drop records logged after the checkpoint's step (they will be logged again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill -9
            continue
        if record.get("step", 0) <= global_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
