"""Reading checkpoint files safely and recognising their layout.

Formats understood:
- our training checkpoints (``student`` / ``teacher`` with ``backbone.`` / ``head.`` prefixes, a plain
  ``sparsedino`` metadata dict);
- official DINO full checkpoints (``teacher``, ``student`` with ``module.`` prefixes, ``args`` as a
  pickled ``argparse.Namespace``) and official DINO backbone files (a bare state dict);
- timm ViT state dicts (bare, or under ``model`` / ``state_dict``) in ``.pth`` or ``.safetensors``,
  including our own exports (metadata in the safetensors header or a ``.json`` sidecar).

Nothing is ever unpickled beyond tensors, plain containers and ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sparsedino.errors import UserError
from sparsedino.models.embedded import file_metadata

SIDECAR_SUFFIX = ".json"
# What torch's weights-only unpickler says when a pickle names a class or function outside the allow-list
# (as opposed to bytes that are not a pickle at all).
_UNSAFE_MARKERS = ("GLOBAL", "Unsupported global", "unsupported global", "Unsupported class")


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, truncated, unsafe or does not hold what was asked for."""


def sha256_hex(path: Path) -> str:
    """The file's SHA-256, 64 hex digits (provenance of an initialisation source)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (a cache key for features computed from it)."""
    return sha256_hex(path)[:16]


def read_checkpoint(path: str | Path) -> tuple[Any, dict]:
    """Load a ``.pth``/``.pt``/``.safetensors`` file without executing pickled code.

    Returns:
        ``(obj, header_metadata)``: the loaded object and, for safetensors, the header metadata dict.

    Raises:
        CheckpointError: naming the file when it is missing, truncated, not a checkpoint, or contains
            pickled objects other than tensors, containers and ``argparse.Namespace``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                meta = dict(handle.metadata() or {})
                return {key: handle.get_tensor(key) for key in handle.keys()}, meta  # noqa: SIM118
        except Exception as err:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a readable safetensors file (truncated or corrupt?): {err}"
            ) from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(str(err))
        if any(marker in str(err) for marker in _UNSAFE_MARKERS):
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it contains pickled objects outside the allow-list "
                f"(tensors, containers, argparse.Namespace), which could run arbitrary code ({detail})"
            ) from err
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read: not a PyTorch checkpoint (corrupt, truncated or "
            f"another format; {detail})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as err:
        # KeyError / IndexError: torch's legacy-format reader meeting bytes that are not a checkpoint
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read (truncated or not a PyTorch checkpoint): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}"
        ) from err
    return obj, {}


def _unpickler_detail(message: str) -> str:
    """The informative line of torch's weights-only error (its first lines are a generic preamble)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if any(marker in line for marker in _UNSAFE_MARKERS) or line.startswith("Unsupported"):
            return line
    return lines[-1] if lines else "unreadable pickle"


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _args_to_dict(args: Any) -> dict:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    return dict(args) if isinstance(args, dict) else {}


def extract_backbone(obj: Any, header: dict, which: str, path: Path) -> tuple[dict, dict]:
    """Find the backbone state dict (timm key names) and the metadata inside a loaded checkpoint.

    Returns:
        ``(state_dict, meta)`` where ``meta`` may hold ``source``, ``arch``, ``patch_size``,
        ``normalizer``, ``num_registers``, ``epoch``.

    Raises:
        CheckpointError: when no backbone weights can be found.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    meta: dict[str, Any] = {}
    if header:
        meta.update(json.loads(header["sparsedino"]) if "sparsedino" in header else {})
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    sidecar_meta = None
    if sidecar.is_file():
        try:
            sidecar_meta = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"metadata sidecar {str(sidecar)!r} is not valid JSON: {err}") from err
        if not isinstance(sidecar_meta, dict):
            raise CheckpointError(f"metadata sidecar {str(sidecar)!r} is not a JSON object")
    recorded, problem = file_metadata(obj, sidecar_meta, sidecar, path)  # (an export records both)
    if problem:
        raise CheckpointError(problem)
    meta.update(recorded)
    if isinstance(obj, dict) and which in obj and isinstance(obj[which], dict):
        ours = obj.get("sparsedino")
        meta["source"] = "sparsedino" if isinstance(ours, dict) else "dino"
        if isinstance(ours, dict):
            meta.update(ours)
        else:  # official DINO: args is an argparse.Namespace (or a dict)
            args = _args_to_dict(obj.get("args"))
            if isinstance(args.get("arch"), str):
                meta["arch"] = args["arch"].replace("deit_", "vit_")
            if isinstance(args.get("patch_size"), int):
                meta["patch_size"] = args["patch_size"]
        if isinstance(obj.get("epoch"), int):
            meta.setdefault("epoch", obj["epoch"])
        state = obj[which]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        backbone = _strip(state, "backbone.")
        if not backbone:
            raise CheckpointError(f"checkpoint {str(path)!r}: '{which}' holds no 'backbone.*' weights")
        return backbone, meta
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "teacher_backbone"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is neither a training checkpoint (with '{which}') nor a state dict "
            f"of tensors; found {keys}"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    for prefix in ("teacher.backbone.", "backbone.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            state = _strip(state, prefix)
            break
    meta.setdefault("source", "state_dict")
    return state, meta


def infer_vit_shape(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Infer ``embed_dim``, ``depth``, ``patch_size``, ``num_registers``, ``img_size``, ``mlp_ratio``,
    ``no_embed_class`` and ``init_values`` (layer scale) from the tensors of a timm ViT state dict.

    Raises:
        CheckpointError: when the keys of a ViT are missing.
    """
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight"):
        if key not in state:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a ViT state dict: missing key {key!r} "
                f"(first keys: {list(state)[:6]})"
            )
    proj, pos = state["patch_embed.proj.weight"], state["pos_embed"]  # (D, 3, p, p), (1, N, D)
    if proj.dim() != 4 or min(proj.shape) < 1 or pos.dim() != 3 or pos.shape[-1] != proj.shape[0]:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: patch_embed.proj.weight {tuple(proj.shape)} and pos_embed "
            f"{tuple(pos.shape)} are not the (D, 3, p, p) and (1, N, D) tensors of a ViT"
        )
    embed_dim, patch_size = proj.shape[0], proj.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    num_registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    n_pos = state["pos_embed"].shape[1]
    has_cls = "cls_token" in state
    # pos_embed either covers [CLS] + registers + patches, or only the patches (timm no_embed_class).
    prefix = int(has_cls) + num_registers
    if math.isqrt(n_pos) ** 2 == n_pos and (prefix == 0 or math.isqrt(n_pos - prefix) ** 2 != n_pos - prefix):
        no_embed_class, n_patches = True, n_pos
    else:
        no_embed_class, n_patches = False, n_pos - prefix
    if n_patches < 1:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: pos_embed of length {n_pos} holds no patch positions "
            f"(only {'[CLS] and ' if has_cls else ''}{num_registers} register(s))"
        )
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: pos_embed of length {n_pos} does not fit a square patch grid"
        )
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "patch_size": patch_size,
        "num_registers": num_registers,
        "img_size": side * patch_size,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "no_embed_class": no_embed_class,
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None,
        "class_token": has_cls,
    }
