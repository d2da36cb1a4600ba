"""Every value a checkpoint stores is checked when it is read, naming the file and the value.

A checkpoint is user input like a config file: hand-edited, written by another tool, or damaged. A stored
``attn_scale`` of +inf or a ``num_heads`` of ``true`` (a bool is an int to Python) would otherwise build a
model that evaluates to nonsense without a word; a resume position of -5 steps or weights holding NaN
would restart a run that can only fail later, in a way that blames the wrong checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparsedino.models.formats import CheckpointError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# stored key -> (accepts the value, what is expected); None (absent) is always accepted
_METADATA_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_heads": (lambda v: _is_int(v) and v > 0, "a whole number > 0"),
    "patch_size": (lambda v: _is_int(v) and v > 0, "a whole number > 0"),
    "img_size": (lambda v: _is_int(v) and v > 0, "a whole number > 0"),
    "num_registers": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "iteration": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "attn_scale": (lambda v: _is_number(v) and math.isfinite(v) and v > 0, "null or a finite number > 0"),
    "learn_alpha": (lambda v: isinstance(v, bool), "true or false"),
    "arch": (lambda v: isinstance(v, str), "a name"),
}


def check_stored_metadata(meta: dict, shape: dict, path: Path) -> None:
    """Check the metadata stored with a backbone (training checkpoint, sidecar, header) and its agreement
    with the weights' own shape (from :func:`sparsedino.models.formats.infer_vit_shape`).

    Raises:
        CheckpointError: naming the file, the key and the stored value.
    """
    for key, (ok, expected) in _METADATA_RULES.items():
        value = meta.get(key)
        if value is not None and not ok(value):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: stored {key} {value!r} is invalid (expected {expected})"
            )
    for key in ("patch_size", "num_registers"):
        if meta.get(key) is not None and meta[key] != shape[key]:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: stored {key} {meta[key]} does not match its weights ({shape[key]}); "
                "its metadata does not describe its weights"
            )


def check_finite_tensors(tree: Any, path: Path, what: str) -> None:
    """Refuse NaN or infinity anywhere in ``tree`` (nested dicts / lists of tensors), naming the entry.

    Raises:
        CheckpointError: naming the file and the entry (``student.backbone.blocks.0.attn.qkv.weight``).
    """
    for name, tensor in _tensors(tree, what):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {name!r} holds {bad} NaN/inf value(s) of {tensor.numel()}; these "
                "weights are broken (a diverged run?): resume from an earlier checkpoint or start a new run"
            )


def _tensors(tree: Any, prefix: str):
    if torch.is_tensor(tree):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}[{i}]")


POSITION_KEYS = ("epoch", "iteration", "global_step", "skipped_images")


def check_position(obj: dict, path: Path) -> dict[str, int]:
    """The resume position of a training checkpoint, each value a whole number >= 0.

    Raises:
        CheckpointError: naming the file and the key.
    """
    position = {}
    for key in POSITION_KEYS:
        value = obj.get(key, 0)
        if not (_is_int(value) and value >= 0):
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: stored {key} {value!r} is not a whole number >= 0"
            )
        position[key] = value
    return position
