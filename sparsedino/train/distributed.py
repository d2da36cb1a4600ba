"""Process-group setup: torchrun, Slurm, or a single process with no launcher.

- ``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``.
- Under Slurm (``srun``, one task per GPU) without torchrun, ``SLURM_PROCID`` / ``SLURM_NTASKS`` /
  ``SLURM_LOCALID`` are used; ``MASTER_ADDR`` must be exported by the job script (first node) and
  ``MASTER_PORT`` defaults to 29500.
- Otherwise: one process, no process group.

Backend: NCCL on CUDA, gloo on CPU. Every collective has a timeout, so if one rank dies the others
raise instead of hanging forever (and torchrun also tears the group down when a worker fails).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from sparsedino.config import resolve_device


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def launcher_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun or Slurm variables, or None for a single process."""
    if _env_int("WORLD_SIZE") is not None and _env_int("RANK") is not None:
        return _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK") or 0  # type: ignore[return-value]
    ntasks = _env_int("SLURM_NTASKS")
    if ntasks is not None and ntasks > 1 and _env_int("SLURM_PROCID") is not None:
        if not os.environ.get("MASTER_ADDR"):
            raise RuntimeError(
                "running under Slurm with SLURM_NTASKS > 1 but MASTER_ADDR is not set; export it in the job "
                "script, e.g. MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)"
            )
        os.environ.setdefault("MASTER_PORT", "29500")
        return _env_int("SLURM_PROCID"), ntasks, _env_int("SLURM_LOCALID") or 0  # type: ignore[return-value]
    return None


def pick_device(requested: str, local_rank: int) -> torch.device:
    """``auto`` -> the local rank's GPU when CUDA is available, else CPU."""
    if resolve_device(requested) == torch.device("cuda"):  # "cuda", or "auto" with CUDA available
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but CUDA is not available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the process group described by the environment (see module docstring)."""
    env = launcher_env()
    if env is None:
        return DistInfo(device=pick_device(device, 0))
    rank, world_size, local_rank = env
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (a one-element list without a process group)."""
    if dist.is_available() and dist.is_initialized():
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]
