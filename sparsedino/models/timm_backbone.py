"""``timm:NAME:FILE`` backbones: ``timm.create_model(NAME, pretrained=False)`` loaded strictly from FILE.

The file may be in timm's layout (what ``model.state_dict()`` writes, e.g. ``sparsedino export``) or in the
layout of the original release that timm converts when it loads pretrained weights (official DINOv2 files
with ``register_tokens`` and ``w12`` / ``w3`` MLPs, DINOv3 files with ``storage_tokens`` and ``ls1.gamma``):
then the model module's own ``checkpoint_filter_fn`` converts it, as ``timm.create_model(...,
pretrained=True)`` would. Either way every tensor of the model must come from the file with its exact
shape: the filter may rename, split or drop tensors, not resample a patch embedding or a position grid of
another size (that would be another model; name it with ``img_size=`` / ``patch_size=``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.models import get_arch_name, model_entrypoint

from sparsedino.models.checkpoint import BackboneInfo
from sparsedino.models.formats import CheckpointError, fingerprint, read_checkpoint
from sparsedino.models.layout import token_layout
from sparsedino.models.spec import BackboneSpec

__all__ = ["create_timm_model", "fit_timm_state", "load_timm_backbone"]

# Backbone defaults: no classifier (the protocols read tokens) and inputs of any size (evaluation windows,
# video frames); a spec's own arguments override them.
BACKBONE_KWARGS = {"num_classes": 0, "dynamic_img_size": True}
_WRAPPERS = ("model", "state_dict", "model_ema", "module")  # containers timm's own loader unwraps
_SHOWN = 5  # keys listed per kind of difference in an error message


def create_timm_model(spec: BackboneSpec) -> nn.Module:
    """Build the spec's timm model with random weights (``pretrained=False``: nothing is downloaded).

    Raises:
        CheckpointError: the model does not take the spec's arguments, or is not a ViT (no patch
            embedding, blocks and prefix tokens for the protocols to read).
    """
    given = dict(spec.timm_kwargs)
    kwargs = {**BACKBONE_KWARGS, **given}
    try:
        try:
            model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        except TypeError as err:
            if "dynamic_img_size" in given or "dynamic_img_size" not in str(err):
                raise
            kwargs.pop("dynamic_img_size")  # a family without it (fixed input size)
            model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise CheckpointError(
            f"{spec}: timm cannot build {spec.timm_name!r} with {given or 'its defaults'} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'})"
        ) from err
    try:
        token_layout(model)
    except TypeError as err:
        raise CheckpointError(f"{spec}: {err}; the commands read ViT tokens") from err
    return model


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file (bare, or under ``model`` / ``state_dict`` / ...)."""
    for _ in range(2):
        if isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            obj = inner if inner is not None else obj
    if not (isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())):
        found = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"weights file {str(path)!r} holds no state dict of tensors (found {found})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _differences(state: dict, expected: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, "key: file (shape) vs model (shape)") of a state dict."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, shapes


def _describe(diffs: tuple[list[str], list[str], list[str]]) -> str:
    parts = []
    for label, items in zip(("missing keys", "unexpected keys", "shapes differ"), diffs):
        if items:
            more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
            parts.append(f"{label} ({len(items)}): {'; '.join(items[:_SHOWN])}{more}")
    return ", ".join(parts)


def filter_fn_of(name: str) -> Callable | None:
    """The ``checkpoint_filter_fn`` of the timm module defining model ``name`` (None if it has none)."""
    module = importlib.import_module(model_entrypoint(get_arch_name(name)).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _resampled(raw: dict, converted: dict, model: nn.Module) -> list[str]:
    """Tensors the filter resized rather than renamed (timm resamples these for pretrained weights)."""
    out = []
    key = "patch_embed.proj.weight"
    if key in raw and key in converted and raw[key].shape != converted[key].shape:
        out.append(f"{key}: file {tuple(raw[key].shape)} vs model {tuple(converted[key].shape)}")
    key = "pos_embed"
    if key in raw and key in converted and raw[key].dim() == 3 and converted[key].dim() == 3:
        folded = raw[key].shape[1] - converted[key].shape[1]  # [CLS]'s position folded into the token
        if not 0 <= folded <= int(getattr(model, "num_prefix_tokens", 0)):
            out.append(f"{key}: file {tuple(raw[key].shape)} vs model {tuple(converted[key].shape)}")
    return out


def fit_timm_state(model: nn.Module, state: dict[str, torch.Tensor], spec: BackboneSpec) -> dict:
    """The file's tensors in the model's layout, every one present with the model's shape.

    Tries the file as it is (timm's layout), then through the model's ``checkpoint_filter_fn`` when key
    names differ (an original layout).

    Raises:
        CheckpointError: naming the missing and unexpected keys and the shapes that differ (of the
            closer of the two layouts), or the tensors the filter would have resampled.
    """
    expected = model.state_dict()
    if not any(k.startswith("head.") for k in expected):  # a classifier the backbone does not have
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    diffs = _differences(state, expected)
    if not any(diffs):
        return state
    filter_fn = filter_fn_of(spec.timm_name)
    if filter_fn is not None and (diffs[0] or diffs[1]):
        try:
            converted = filter_fn(dict(state), model)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError):
            converted = None  # not the original layout the filter expects either
        if converted is not None:
            resized = _resampled(state, converted, model)
            if resized:
                raise CheckpointError(
                    f"weights {str(spec.path)!r} do not fit timm model {spec.timm_name!r} ({spec}): "
                    f"{'; '.join(resized)}; name the model they were trained as (e.g. img_size=, patch_size=)"
                )
            converted_diffs = _differences(converted, expected)
            if not any(converted_diffs):
                return converted
            if sum(map(len, converted_diffs)) < sum(map(len, diffs)):
                diffs = converted_diffs
    raise CheckpointError(
        f"weights {str(spec.path)!r} do not fit timm model {spec.timm_name!r} ({spec}): {_describe(diffs)}"
    )


def load_timm_backbone(spec: BackboneSpec) -> tuple[nn.Module, BackboneInfo]:
    """Build ``spec``'s timm model and load its weights file strictly (see the module docstring).

    Returns:
        ``(model, info)``: the model in eval mode (timm's own attention modules) and its
        :class:`BackboneInfo` (``source="timm"``, ``arch`` = the timm name, normaliser ``softmax``).

    Raises:
        CheckpointError: unreadable file, model arguments timm rejects, or weights that do not fit.
    """
    model = create_timm_model(spec)
    obj, _ = read_checkpoint(spec.path)
    state = fit_timm_state(model, _unwrap(obj, spec.path), spec)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in state.items()}, strict=True)
    model.eval()
    layout = token_layout(model)
    return model, BackboneInfo(
        source="timm",
        arch=str(spec.timm_name),
        patch_size=layout.patch_size[0],
        embed_dim=int(getattr(model, "embed_dim", getattr(model, "num_features", 0))),
        depth=layout.depth,
        num_heads=int(getattr(model.blocks[0].attn, "num_heads", 0)),
        num_registers=layout.num_registers,
        normalizer="softmax",
        epoch=None,
        path=str(spec.path),
        sha256=fingerprint(spec.path),
        spec=str(spec),
    )
