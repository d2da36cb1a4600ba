"""What a transformers model folder (``hf:FOLDER``) must hold for us to read it, checked before loading.

:data:`HF_FAMILIES` is the table of model types we read (``config.json``'s ``model_type``) and where each keeps
its blocks and final norm; :func:`read_hf_config` checks a folder against it when the spec is parsed (no
transformers import), :func:`image_stats` reads its image statistics. The adapter itself is
:mod:`sparsedino.models.hf_backbone`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)

from sparsedino.models.formats import CheckpointError

__all__ = ["HF_FAMILIES", "PREPROCESSOR_FILE", "HFFamily", "image_stats", "read_hf_config"]

PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class HFFamily:
    """Where a transformers model type keeps what the adapter reads.

    Attributes:
        layers: dotted paths of the block list, first one present wins (transformers moved ViT's
            ``encoder.layer`` to ``layers``).
        norm: attribute of the final LayerNorm.
        extra_prefix: prefix tokens after [CLS] that are not registers (DeiT's distillation token).
        interpolate: pass ``interpolate_pos_encoding=True`` (learned absolute positions of a fixed grid).
        mean, std: image statistics the family's published weights were trained with (the values of their
            ``preprocessor_config.json``); transformers' image-processor class defaults differ for some
            (DINOv2's ``BitImageProcessor`` defaults to CLIP's, DeiT's to 0.5).
    """

    layers: tuple[str, ...]
    norm: str
    extra_prefix: int = 0
    interpolate: bool = False
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD


# model_type (config.json) -> family. Token order in all of them: [CLS], distillation / registers, patches.
HF_FAMILIES: dict[str, HFFamily] = {
    "vit": HFFamily(("layers", "encoder.layer"), "layernorm", interpolate=True,
                    mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD),  # google/vit-*: 0.5, 0.5
    "deit": HFFamily(("layers", "encoder.layer"), "layernorm", extra_prefix=1, interpolate=True),
    "dinov2": HFFamily(("encoder.layer",), "layernorm"),
    "dinov2_with_registers": HFFamily(("encoder.layer",), "layernorm"),
    "dinov3_vit": HFFamily(("model.layer",), "norm"),
}  # fmt: skip


def read_hf_config(folder: Path, where: str) -> dict[str, Any]:
    """``folder/config.json`` as a dict, checked to describe a model type of :data:`HF_FAMILIES`.

    Raises:
        CheckpointError: ``where`` followed by the problem (no folder, no ``config.json``, unreadable JSON,
            a model type that is not a ViT-like encoder).
    """
    if not folder.is_dir():
        raise CheckpointError(f"{where}: {str(folder)!r} is not a folder")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{where}: {str(folder)!r} has no config.json (write the model with save_pretrained(folder))"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where}: {str(path)!r} is not valid JSON ({err})") from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in HF_FAMILIES:
        raise CheckpointError(
            f"{where}: model type {model_type!r} is not a ViT-like encoder we read; supported: "
            f"{', '.join(HF_FAMILIES)}"
        )
    return config


def image_stats(folder: Path, family: HFFamily) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the folder's ``preprocessor_config.json``, else the family's.

    Raises:
        CheckpointError: the file exists but its ``image_mean`` / ``image_std`` are not 3 numbers (std > 0).
    """
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        return tuple(family.mean), tuple(family.std)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({err})") from err
    if config.get("do_normalize") is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean, std = config.get("image_mean", family.mean), config.get("image_std", family.std)
    for key, value in (("image_mean", mean), ("image_std", std)):
        if not (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(isinstance(v, (int, float)) for v in value)
        ):
            raise CheckpointError(f"{str(path)!r}: {key} must be 3 numbers, got {value!r}")
    if min(std) <= 0:
        raise CheckpointError(f"{str(path)!r}: image_std must be > 0, got {std!r}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
