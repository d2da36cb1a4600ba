"""``load_checkpoint_backbone``: any ViT checkpoint file users have -> a ready timm model with our attention.

Reads our training checkpoints and exports, official DINO backbone files and full checkpoints, and timm
ViT state dicts (``.pth`` or ``.safetensors``). Architecture, patch size and registers are read from the
stored metadata or inferred from tensor shapes. ``sparsedino.models.load_backbone`` calls it for the
``FILE`` spelling of a backbone spec (see :mod:`sparsedino.models.spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from sparsedino.attention import normalizer_name, validate_normalizer
from sparsedino.models.formats import (
    CheckpointError,
    extract_backbone,
    fingerprint,
    infer_vit_shape,
    read_checkpoint,
)
from sparsedino.models.stored import check_stored_metadata
from sparsedino.models.vit import ARCHS, arch_from_shape, build_vit

__all__ = ["BackboneInfo", "CheckpointError", "load_checkpoint_backbone"]


@dataclass
class BackboneInfo:
    """What :func:`sparsedino.models.load_backbone` found in a checkpoint, a timm file or a folder.

    Attributes:
        source: ``"sparsedino"`` (our training checkpoint), ``"dino"`` (official full checkpoint),
            ``"export"`` (``sparsedino export``), ``"state_dict"`` (a bare timm / DINO backbone file),
            ``"timm"`` (a ``timm:NAME:FILE`` spec) or ``"transformers"`` (an ``hf:FOLDER`` spec).
        arch: architecture name (``vit_small`` ...), ``"custom"``, the timm name or the transformers
            model type.
        patch_size, embed_dim, depth, num_heads, num_registers: the ViT's shape.
        normalizer: attention normaliser the model was built with.
        epoch: training epoch stored in the checkpoint, or None.
        path: the file (or folder) read.
        sha256: first 16 hex digits of the file's SHA-256 (cache key).
        spec: the backbone spec in its canonical spelling (parses back to the same backbone).
    """

    source: str
    arch: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_registers: int
    normalizer: str
    epoch: int | None
    path: str
    sha256: str
    spec: str = ""


def _num_heads(arch: str | None, embed_dim: int, stored: int | None) -> int:
    if stored:
        return int(stored)
    if arch in ARCHS and ARCHS[arch]["embed_dim"] == embed_dim:
        return ARCHS[arch]["num_heads"]
    for spec in ARCHS.values():
        if spec["embed_dim"] == embed_dim:
            return spec["num_heads"]
    return max(embed_dim // 64, 1)  # the ViT convention: 64-dim heads


def load_checkpoint_backbone(
    path: str | Path,
    normalizer: str | float | None = None,
    arch: str | None = None,
    which: str = "teacher",
    img_size: int | None = None,
) -> tuple[VisionTransformer, BackboneInfo]:
    """Load a ViT backbone from any supported checkpoint file.

    Args:
        path: ``.pth`` / ``.pt`` / ``.safetensors`` file.
        normalizer: attention normaliser to build with; None = the one stored in the checkpoint, or
            ``"softmax"`` for foreign files (official DINO, timm). A checkpoint with learned per-head
            alphas (``blocks.*.attn.alpha``) is rebuilt with them when None; a given normaliser replaces
            them (the alphas are then not loaded).
        arch: expected architecture; None = stored or inferred from shapes. A mismatch is an error.
        which: ``"teacher"`` or ``"student"`` for training checkpoints (ignored for bare state dicts).
        img_size: image size the position embeddings are laid out for; None = as stored.

    Returns:
        ``(model, info)``: the timm ``VisionTransformer`` in eval mode and a :class:`BackboneInfo`.

    Raises:
        CheckpointError: naming the file and the problem (missing, truncated, unsafe pickle, not a
            ViT, missing keys, shape mismatch).
    """
    path = Path(path)
    if normalizer is not None:
        validate_normalizer(normalizer)  # a caller's argument: ValueError, not the file's fault
    if arch is not None and arch not in ARCHS:
        raise CheckpointError(f"unknown arch {arch!r} requested; expected one of {', '.join(ARCHS)}")
    obj, header = read_checkpoint(path)
    try:  # a malformed file (wrong containers, odd tensor ranks) trips the parsing in many ways
        state, meta = extract_backbone(obj, header, which, path)
        if str(meta.get("spec", "")).startswith("timm:"):  # an export of a timm:NAME:FILE spec
            model = meta["spec"].split(":", 2)[1]  # NAME[,key=value...]
            raise CheckpointError(
                f"{str(path)!r} holds a timm model: read it as --checkpoint timm:{model}:{path}"
            )
        shape = infer_vit_shape(state, path)
    except CheckpointError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        detail = str(err).splitlines()[0] if str(err) else "no details"
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not hold a readable ViT ({type(err).__name__}: {detail})"
        ) from err
    return _build_backbone(path, state, meta, shape, normalizer, arch, img_size)


def _build_backbone(
    path: Path, state: dict, meta: dict, shape: dict, normalizer, arch: str | None, img_size: int | None
) -> tuple[VisionTransformer, BackboneInfo]:
    """Check the file's weights and metadata against each other, then build and load the ViT."""
    _check_finite(state, path)
    check_stored_metadata(meta, shape, path)
    inferred_arch = arch_from_shape(shape["embed_dim"], shape["depth"])
    stored_arch = meta.get("arch") if meta.get("arch") in ARCHS else None
    if stored_arch is not None and stored_arch != inferred_arch:
        spec = ARCHS[stored_arch]
        raise CheckpointError(
            f"checkpoint {str(path)!r} says arch {stored_arch!r} (width {spec['embed_dim']}, depth "
            f"{spec['depth']}) but its tensors are width {shape['embed_dim']}, depth {shape['depth']}"
            + (f" ({inferred_arch})" if inferred_arch else "")
            + ": its metadata does not describe its weights"
        )
    if arch is not None:
        spec = ARCHS[arch]
        if (spec["embed_dim"], spec["depth"]) != (shape["embed_dim"], shape["depth"]):
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a ViT with width {shape['embed_dim']} and depth "
                f"{shape['depth']} (shape mismatch), not the requested {arch!r} "
                f"(width {spec['embed_dim']}, depth {spec['depth']})"
            )
    arch_name = arch or stored_arch or inferred_arch or "custom"
    num_heads = _num_heads(arch_name, shape["embed_dim"], meta.get("num_heads"))
    if not (isinstance(num_heads, int) and num_heads > 0 and shape["embed_dim"] % num_heads == 0):
        raise CheckpointError(
            f"checkpoint {str(path)!r}: {num_heads!r} heads do not divide width {shape['embed_dim']}"
        )
    learn_alpha = any(key.endswith(".attn.alpha") for key in state)
    if normalizer is None:
        normalizer = _stored_normalizer(meta, path)
    elif learn_alpha:  # the caller's normaliser replaces the learned alphas
        state, learn_alpha = {k: v for k, v in state.items() if not k.endswith(".attn.alpha")}, False
    scale = meta.get("attn_scale")
    timm_kwargs = {
        "embed_dim": shape["embed_dim"],
        "depth": shape["depth"],
        "num_heads": num_heads,
        "mlp_ratio": shape["mlp_ratio"],
        "no_embed_class": shape["no_embed_class"],
        "class_token": shape["class_token"],
    }
    if shape["init_values"] is not None:
        timm_kwargs["init_values"] = shape["init_values"]
    if not shape["class_token"]:
        timm_kwargs["global_pool"] = "avg"
    model = build_vit(
        arch=arch_name if arch_name in ARCHS else "vit_small",
        patch_size=shape["patch_size"],
        img_size=shape["img_size"],
        normalizer=normalizer,
        num_registers=shape["num_registers"],
        attn_scale=scale,
        learn_alpha=learn_alpha,
        **timm_kwargs,
    )
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    state.pop("head.weight", None), state.pop("head.bias", None)  # classifier heads of timm models
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit a {arch_name} ViT: {err}") from err
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match a {arch_name} ViT: missing keys {missing[:6]}, "
            f"unexpected keys {unexpected[:6]}"
        )
    if img_size is not None and img_size != shape["img_size"]:
        model.set_input_size(img_size=img_size)
    model.eval()
    info = BackboneInfo(
        source=str(meta.get("source", "state_dict")),
        arch=arch_name,
        patch_size=int(shape["patch_size"]),
        embed_dim=int(shape["embed_dim"]),
        depth=int(shape["depth"]),
        num_heads=int(num_heads),
        num_registers=int(shape["num_registers"]),
        normalizer=normalizer_name(normalizer),
        epoch=int(meta["epoch"]) if isinstance(meta.get("epoch"), int) else None,
        path=str(path),
        sha256=fingerprint(path),
        spec=str(path),
    )
    return model, info


def _stored_normalizer(meta: dict, path: Path) -> str | float:
    """The attention normaliser recorded in the file (softmax for foreign files), checked."""
    value = meta.get("normalizer", "softmax")
    try:
        validate_normalizer(value)
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: stored normalizer {value!r} is invalid ({err})"
        ) from err
    return value


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity: they would evaluate to a meaningless 0 % report."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"checkpoint {str(path)!r}: tensor {name!r} holds {bad} NaN/inf value(s) of {tensor.numel()}; "
                "the weights are broken (a diverged run?)"
            )


def load_state_dict_checked(module: torch.nn.Module, state: dict, what: str, path: Path) -> None:
    """``module.load_state_dict(state)`` whose errors name the file and the part (e.g. ``student``)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: {what} does not fit the model: {err}") from err
