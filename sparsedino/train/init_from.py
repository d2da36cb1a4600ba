"""Start a new run from trained weights: ``init.checkpoint`` (ours, official DINO full or backbone-only, timm).

A run with ``init.checkpoint`` set is a *new* run (its own output folder, its own optimiser, schedules and
epoch counter from 0) whose student and teacher start from the file's weights instead of random ones:

* the backbone from :func:`sparsedino.models.load_backbone` (every format it reads; from a full checkpoint
  the network ``init.which``, the teacher by default: the EMA model that DINO releases and evaluates), into
  both networks, so that student and teacher start equal as in any DINO run;
* the DINO head (and the loss centre) where the file is a training checkpoint holding one and
  ``init.head`` is true; otherwise the head is freshly initialised (seeded by ``run.seed``);
* the attention normaliser of the config (``model.normalizer``), whatever the file was trained with:
  entmax adds no parameters, so a softmax checkpoint loads into an entmax model unchanged.

A file whose architecture differs from the config is refused in one line naming the tensors and their
shapes. The source is recorded as path + SHA-256 + kind in the resolved config (``init.sha256``,
``init.kind``) and in every checkpoint's ``sparsedino.init``; a resumed run continues its own checkpoint and
never reads the source again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sparsedino.config import ConfigError
from sparsedino.models import load_backbone
from sparsedino.models.formats import CheckpointError, read_checkpoint, sha256_hex

_SHOWN = 4  # mismatches named in the error line


def _layout_error(source: dict, target: dict, optional: set[str]) -> str | None:
    """One phrase naming the keys whose presence or shape differs between the file and the model."""
    shapes = [
        f"{k} {tuple(source[k].shape)} in the file vs {tuple(target[k].shape)} here"
        for k in target
        if k in source and tuple(source[k].shape) != tuple(target[k].shape)
    ]
    missing = [k for k in target if k not in source and k not in optional]
    extra = [k for k in source if k not in target]
    parts = []
    for label, items in (
        ("shape mismatch", shapes),
        ("missing in the file", missing),
        ("not in the model", extra),
    ):
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            parts.append(f"{label}: {', '.join(items[:_SHOWN])}{more}")
    return "; ".join(parts) or None


def _check_layout(source: dict, target: dict, optional: set[str], what: str, path: Path, cfg: Any) -> None:
    problem = _layout_error(source, target, optional)
    if problem:
        m = cfg.model
        raise CheckpointError(
            f"init.checkpoint {str(path)!r}: its {what} does not fit the configured model (model.arch={m.arch}, "
            f"patch_size={m.patch_size}, img_size={m.img_size}, num_registers={m.num_registers}"
            + (
                f", out_dim={m.out_dim}, hidden_dim={m.hidden_dim}, bottleneck_dim={m.bottleneck_dim}"
                if what == "head"
                else ""
            )
            + f"): {problem}"
        )


def read_head(path: Path, which: str) -> tuple[dict | None, torch.Tensor | None]:
    """The DINO head state (``mlp.*``, ``last_layer.weight_g/v``) and the loss centre of a training checkpoint.

    Returns:
        ``(head, center)``; ``(None, None)`` for files without a head (backbone files, timm, exports).
    """
    obj, _ = read_checkpoint(path)
    if not (isinstance(obj, dict) and isinstance(obj.get(which), dict)):
        return None, None
    state = {k.removeprefix("module."): v for k, v in obj[which].items()}
    head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    center = obj.get("dino_loss", {}).get("center") if isinstance(obj.get("dino_loss"), dict) else None
    return (head or None), (center if torch.is_tensor(center) else None)


@torch.no_grad()
def initialise_networks(cfg: Any, nets: Any, loss_fn: torch.nn.Module) -> dict[str, Any]:
    """Load ``cfg.init.checkpoint`` into student and teacher (and the loss centre); return its record.

    Args:
        cfg: the training config (``init`` section set).
        nets: :class:`~sparsedino.train.build.Networks` (student and teacher built, on their device).
        loss_fn: the DINO loss, whose ``center`` is taken from the file when its head is.

    Returns:
        ``{"checkpoint", "sha256", "kind", "which", "head", "source_epoch"}`` (JSON-ready).

    Raises:
        CheckpointError: missing or unreadable file, a SHA-256 or kind other than the one configured, or an
            architecture that differs from the config (naming the tensors and shapes).
    """
    init, path = cfg.init, Path(cfg.init.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"init.checkpoint {str(path)!r} does not exist")
    digest = sha256_hex(path)
    if init.sha256 and init.sha256.lower() != digest:
        raise CheckpointError(
            f"init.checkpoint {str(path)!r} has SHA-256 {digest}, not init.sha256 {init.sha256}"
        )
    learn_alpha = cfg.model.learn_alpha  # keep the file's learned alphas when the model learns them too
    model, info = load_backbone(
        path, normalizer=None if learn_alpha else cfg.model.normalizer, which=init.which
    )
    if init.kind and init.kind != info.source:
        raise CheckpointError(
            f"init.checkpoint {str(path)!r} is a {info.source!r} file, not init.kind {init.kind!r}"
        )
    source, target = model.state_dict(), nets.student.backbone.state_dict()
    fresh_alphas = {k for k in target if k.endswith(".attn.alpha")} if learn_alpha else set()
    _check_layout(source, target, fresh_alphas, "backbone", path, cfg)
    state = {**{k: target[k] for k in fresh_alphas if k not in source}, **source}  # (alphas start at init)
    head, center = read_head(path, init.which) if init.head else (None, None)
    if head is not None:
        _check_layout(head, nets.student.head.state_dict(), set(), "head", path, cfg)
    for net in (nets.student, nets.teacher):
        net.backbone.load_state_dict(state)
        if head is not None:
            net.head.load_state_dict(head)
    if head is not None and center is not None and center.shape == loss_fn.center.shape:
        loss_fn.center.copy_(center)
    return {
        "checkpoint": str(path),
        "sha256": digest,
        "kind": info.source,
        "which": init.which,
        "head": head is not None,
        "source_epoch": info.epoch,
    }


def with_init_record(cfg: Any, record: dict[str, Any]) -> Any:
    """``cfg`` with ``init.sha256`` / ``init.kind`` filled from a record (what the resolved config stores).

    Raises:
        ConfigError: the config names another source than the run recorded (a resumed run keeps its own).
    """
    init = cfg.init
    if init.checkpoint != record["checkpoint"] or (init.sha256 and init.sha256.lower() != record["sha256"]):
        raise ConfigError(
            f"key 'init': the run was initialised from {record['checkpoint']!r} (SHA-256 {record['sha256']}), "
            f"the config names {init.checkpoint!r}; use a new run.output_dir for another source"
        )
    out = OmegaConf.merge(cfg, {"init": {"sha256": record["sha256"], "kind": record["kind"]}})
    OmegaConf.set_readonly(out, True)
    return out
