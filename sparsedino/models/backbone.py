"""``load_backbone``: the backbone a spec names (our checkpoint, a timm model, a transformers folder), ready.

Every command that reads a backbone (``diagnose``, ``eval knn|linear|seg|video``, ``export``) parses the
user's value once with :func:`sparsedino.models.spec.parse_backbone_spec` and passes the spec here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch.nn as nn

from sparsedino.attention import Normalizer, normalizer_name, sparsify, validate_normalizer
from sparsedino.models.checkpoint import BackboneInfo, load_checkpoint_backbone
from sparsedino.models.formats import CheckpointError
from sparsedino.models.hf_backbone import load_hf_backbone
from sparsedino.models.spec import BackboneSpec, parse_backbone_spec
from sparsedino.models.timm_backbone import load_timm_backbone

__all__ = ["load_backbone"]


def load_backbone(
    spec: str | Path | BackboneSpec,
    normalizer: str | float | Normalizer | None = None,
    arch: str | None = None,
    which: str = "teacher",
    img_size: int | None = None,
    attention_maps: bool = False,
) -> tuple[nn.Module, BackboneInfo]:
    """Load the backbone ``spec`` names, in eval mode.

    Args:
        spec: a :class:`BackboneSpec` or its spelling (``FILE``, ``timm:NAME[,k=v...]:FILE``,
            ``hf:FOLDER``); a ``Path`` is always a checkpoint file.
        normalizer: attention normaliser. Checkpoint files: None = the stored one (see
            :func:`load_checkpoint_backbone`). timm / transformers models: None keeps their own attention
            (softmax); a normaliser converts it with :func:`sparsedino.attention.sparsify`.
        arch: expected architecture of a checkpoint file (a timm name or a folder names its own: error).
        which: ``"teacher"`` or ``"student"`` network of a training checkpoint (ignored otherwise).
        img_size: position-embedding grid of a checkpoint file or timm model (``set_input_size``);
            transformers models interpolate for any size and ignore it.
        attention_maps: the caller records attention maps with ``collect_attention``: a timm or
            transformers model is converted even without a normaliser (to softmax, same outputs).

    Returns:
        ``(model, info)``; ``info.spec`` is the canonical spelling.

    Raises:
        CheckpointError: one line naming the spec and the problem.
    """
    spec = parse_backbone_spec(spec)
    if spec.kind == "checkpoint":
        return load_checkpoint_backbone(
            spec.path, normalizer=normalizer, arch=arch, which=which, img_size=img_size
        )
    if arch is not None:
        raise CheckpointError(
            f"--arch {arch!r} is for checkpoint files; {spec} names its architecture itself"
        )
    if normalizer is not None:
        validate_normalizer(normalizer)  # a caller's argument: ValueError, not the file's fault
    model, info = load_timm_backbone(spec) if spec.kind == "timm" else load_hf_backbone(spec)
    if img_size is not None and spec.kind == "timm" and hasattr(model, "set_input_size"):
        model.set_input_size(img_size=img_size)
    if normalizer is not None or attention_maps:
        target = normalizer if normalizer is not None else "softmax"
        try:
            sparsify(model, target)
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{spec}: its attention cannot be converted to {normalizer_name(target)} (needed for "
                f"{'the attention maps' if normalizer is None else '--normalizer'}): {err}"
            ) from err
        info = dataclasses.replace(info, normalizer=normalizer_name(target))
    return model, info
