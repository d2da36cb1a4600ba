"""Training checkpoints in the official DINO layout, written atomically, resumable mid-epoch.

Layout (``torch.load(weights_only=True)`` reads it; no pickled classes):
    student / teacher: ``backbone.*`` and ``head.*`` (head last layer as ``weight_g`` / ``weight_v``)
    optimizer, fp16_scaler (or None), dino_loss: {"center": (1, out_dim)}
    epoch: epochs completed; iteration: iterations done in the current epoch (0 at epoch ends)
    global_step, skipped_images; args: the resolved config as plain dicts
    sparsedino: metadata for :func:`sparsedino.models.load_backbone` (arch, normalizer in use, ...) and
        ``init``: the source of an initialised run (path, sha256, kind) or None
    gram_teacher: the Gram teacher's weights and sync state (runs with ``gram.enabled``)
    rng: one dict of RNG states per rank
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsedino.atomic import atomic_torch_save
from sparsedino.attention import normalizer_name
from sparsedino.config import ConfigError, config_to_dict
from sparsedino.models.checkpoint import load_state_dict_checked
from sparsedino.models.formats import CheckpointError, read_checkpoint
from sparsedino.models.stored import check_finite_tensors, check_position

log = logging.getLogger(__name__)

LATEST = "checkpoint.pth"
SUMMARY = "train_summary.json"  # written when a run has finished its last epoch
FORMAT_VERSION = 1


EPOCH_SNAPSHOT_GLOB = "checkpoint_epoch*.pth"
_EPOCH_SNAPSHOT = re.compile(r"checkpoint_epoch(\d+)\.pth$")


def epoch_snapshot_name(epoch: int) -> str:
    """File name of the weights-only snapshot after ``epoch`` completed epochs."""
    return f"checkpoint_epoch{epoch:04d}.pth"


def snapshot_epoch(name: str) -> int | None:
    """The epoch of a snapshot file name (as :func:`epoch_snapshot_name` writes it), None for other names."""
    match = _EPOCH_SNAPSHOT.search(name)
    return int(match.group(1)) if match else None


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain data."""
    np_state = np.random.get_state()  # noqa: NPY002  (third-party code may use the legacy global RNG)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_metadata(cfg: Any, epoch: int, iteration: int) -> dict[str, Any]:
    """What :func:`sparsedino.models.load_backbone` needs to rebuild the backbone."""
    m = cfg.model  # (normalizer: canonical already when loaded by load_train_config; kept for callers' cfgs)
    return {
        "format_version": FORMAT_VERSION,
        "arch": m.arch,
        "patch_size": m.patch_size,
        "img_size": m.img_size,
        "normalizer": normalizer_name(m.normalizer),
        "attn_scale": m.attn_scale,
        "num_registers": m.num_registers,
        "learn_alpha": m.learn_alpha,
        "out_dim": m.out_dim,
        "epoch": epoch,
        "iteration": iteration,
    }


@dataclass
class TrainState:
    """The mutable objects a checkpoint captures."""

    student: torch.nn.Module  # unwrapped (no DDP)
    teacher: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    dino_loss: torch.nn.Module
    gram: Any = None  # GramAnchor of runs with gram.enabled


def save_checkpoint(
    path: Path,
    state: TrainState,
    cfg: Any,
    epoch: int,
    iteration: int,
    global_step: int,
    rngs: list,
    skipped_images: int = 0,
    meta: dict | None = None,
) -> None:
    """Write a full, resumable checkpoint atomically (``meta`` updates the ``sparsedino`` metadata)."""
    extra = {"gram_teacher": state.gram.state_dict()} if state.gram is not None else {}
    atomic_torch_save(
        {
            "student": state.student.state_dict(),
            "teacher": state.teacher.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "fp16_scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "dino_loss": state.dino_loss.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "global_step": global_step,
            "skipped_images": skipped_images,
            "args": config_to_dict(cfg),
            "sparsedino": {**model_metadata(cfg, epoch, iteration), **(meta or {})},
            "rng": rngs,
            **extra,
        },
        path,
    )


def save_snapshot(path: Path, state: TrainState, cfg: Any, epoch: int, meta: dict | None = None) -> None:
    """Weights-only snapshot (student + teacher + metadata) for per-epoch evaluation curves."""
    atomic_torch_save(
        {
            "student": state.student.state_dict(),
            "teacher": state.teacher.state_dict(),
            "epoch": epoch,
            "args": config_to_dict(cfg),
            "sparsedino": {**model_metadata(cfg, epoch, 0), **(meta or {})},
        },
        path,
    )


def _canonical_normalizer(model: Any) -> Any:
    """A stored ``model`` section with its normaliser in canonical spelling (checkpoints written before
    configs were canonicalised keep the user's spelling, e.g. ``entmax-1.5``); anything else as is."""
    if not isinstance(model, dict) or "normalizer" not in model:
        return model
    try:
        return {**model, "normalizer": normalizer_name(model["normalizer"])}
    except ValueError:
        return model  # an invalid stored value: reported as a difference below


# Model keys added after the checkpoint format was fixed, with the value that reproduces older checkpoints.
ADDED_MODEL_KEYS = {
    "learn_alpha": False,
    "alpha_warmup_epochs": 0,
    "alpha_warmup_start": 1.0,
    "alpha_warmup_shape": "linear",
}
# Other compared keys added later, with the value of checkpoints written before them.
ADDED_KEYS = {"init.checkpoint": "", "gram.enabled": False}


def _check_compatible(stored: dict, cfg: Any, path: Path) -> None:
    """Resume only into the same model and batch layout (normalisers compared in canonical spelling)."""
    current = config_to_dict(cfg)
    current["model"] = _canonical_normalizer(current["model"])
    stored = {**stored, "model": _canonical_normalizer(stored.get("model", {}))}
    keys = ["model", "data.global_crops_number", "data.local_crops_number", "optim.batch_size_per_gpu",
            *ADDED_KEYS]  # fmt: skip
    for key in keys:
        section, _, leaf = key.partition(".")
        old = stored.get(section, {})
        new = current[section]
        if section == "model" and isinstance(old, dict):
            old = {**ADDED_MODEL_KEYS, **old}  # written before these keys existed: their default applies
        if leaf:
            old, new = old.get(leaf, ADDED_KEYS.get(key)), new[leaf]
        if old != new:
            raise ConfigError(
                f"cannot resume from {str(path)!r}: config {key!r} differs from the checkpoint "
                f"({old!r} there, {new!r} now); use a new run.output_dir or run.resume=false"
            )


def load_checkpoint(path: Path, state: TrainState, cfg: Any, rank: int, world_size: int) -> dict[str, Any]:
    """Restore ``state`` from ``path`` and return ``{"epoch", "iteration", "global_step"}``.

    Returns also ``skipped_images`` (unreadable files skipped so far) and ``init`` (the recorded source of
    an initialised run, or None).

    Raises:
        CheckpointError / ConfigError: naming the file and what does not match.
    """
    obj, _ = read_checkpoint(path)
    if not isinstance(obj, dict) or "optimizer" not in obj or "sparsedino" not in obj:
        raise CheckpointError(f"{str(path)!r} is not a resumable sparsedino training checkpoint")
    position = check_position(obj, path)
    for part in ("student", "teacher", "dino_loss", "optimizer", "gram_teacher"):  # before any is loaded
        check_finite_tensors(obj.get(part), path, part)
    try:
        _check_compatible(obj.get("args", {}), cfg, path)
        load_state_dict_checked(state.student, obj["student"], "student", path)
        load_state_dict_checked(state.teacher, obj["teacher"], "teacher", path)
        load_state_dict_checked(state.dino_loss, obj["dino_loss"], "dino_loss", path)
        state.optimizer.load_state_dict(obj["optimizer"])
        if state.scaler is not None and obj.get("fp16_scaler") is not None:
            state.scaler.load_state_dict(obj["fp16_scaler"])
        if state.gram is not None:
            try:
                state.gram.load_state_dict(obj["gram_teacher"])
            except RuntimeError as err:
                raise CheckpointError(
                    f"checkpoint {str(path)!r}: its Gram teacher does not fit: {err}"
                ) from err
        position["init"] = obj["sparsedino"].get("init")  # the source of an initialised run (or None)
    except (CheckpointError, ConfigError):
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as err:  # a damaged or hand-edited file
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: the checkpoint is malformed ({type(err).__name__}: {err})"
        ) from err
    rngs = obj.get("rng") or []
    if len(rngs) == world_size:
        set_rng_state(rngs[rank])
    else:
        log.warning(
            "checkpoint %s was written by %d ranks, now %d: RNG streams re-seeded (resume is not bit-exact)",
            path,
            len(rngs),
            world_size,
        )
    return position
