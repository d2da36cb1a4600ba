"""``token_layout``: what the evaluation protocols and diagnostics read from a backbone, in one place.

Every ViT the commands take (our checkpoints, timm models, the transformers adapter of
:mod:`sparsedino.models.hf_backbone`) lays out its tokens as ``[CLS]?, other prefix tokens, patches``:
timm's ``VisionTransformer`` and ``Eva`` (DINOv3) and transformers' DINOv2 / DINOv3 put the register tokens
right after [CLS]; DeiT puts its distillation token there. Patch tokens are the tokens after the prefix,
so register tokens are never counted as patches.

The image statistics come from the model: timm's ``pretrained_cfg`` (the mean / std its weights were
trained with), which the transformers adapter fills from the folder; our own ViTs have none and use
ImageNet's, as DINO does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["TokenLayout", "token_layout"]


@dataclass(frozen=True)
class TokenLayout:
    """Token layout and input statistics of a ViT backbone.

    Attributes:
        patch_size: (height, width) of a patch in pixels.
        depth: number of blocks.
        num_prefix_tokens: leading tokens that are not patches ([CLS], registers, a distillation token).
        num_registers: register tokens among them (the last ``num_registers`` prefix tokens).
        has_class_token: whether the first prefix token is a [CLS] token.
        mean, std: RGB statistics (0-1 scale) the input images are normalised with.
    """

    patch_size: tuple[int, int]
    depth: int
    num_prefix_tokens: int
    num_registers: int
    has_class_token: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def imagenet_stats(self) -> bool:
        """Whether the inputs are normalised with ImageNet's mean and std (DINO's, most timm ViTs')."""
        return (self.mean, self.std) == (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))

    @property
    def register_slice(self) -> slice:
        """Where the registers sit in the token sequence (empty without registers)."""
        return slice(self.num_prefix_tokens - self.num_registers, self.num_prefix_tokens)


def _num_registers(model: nn.Module) -> int:
    count = getattr(model, "num_reg_tokens", None)  # timm VisionTransformer and our adapter
    if count is not None:
        return int(count)
    reg = getattr(model, "reg_token", None)  # timm Eva (DINOv3, EVA-02): (1, R, C) parameter
    return int(reg.shape[1]) if reg is not None else 0


def token_layout(model: nn.Module) -> TokenLayout:
    """Read the token layout and input statistics of a timm-style ViT.

    Args:
        model: a module with ``blocks``, ``patch_embed.patch_size`` and ``num_prefix_tokens`` (timm's
            ``VisionTransformer``, ``Eva``, :class:`sparsedino.models.hf_backbone.HFBackbone`).

    Returns:
        The model's :class:`TokenLayout`.

    Raises:
        TypeError: naming the model's type when it lacks those attributes (not a ViT).
    """
    missing = [name for name in ("blocks", "patch_embed", "num_prefix_tokens") if not hasattr(model, name)]
    if missing or not hasattr(model.patch_embed, "patch_size"):
        raise TypeError(
            f"{type(model).__name__} is not a ViT backbone: it has no {', '.join(missing) or 'patch_embed.patch_size'}"
        )
    patch = model.patch_embed.patch_size
    patch = (int(patch), int(patch)) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    has_cls = getattr(model, "has_class_token", None)
    if has_cls is None:  # timm Eva has no flag; its cls_token is None without [CLS]
        has_cls = getattr(model, "cls_token", None) is not None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return TokenLayout(
        patch_size=patch,
        depth=len(model.blocks),
        num_prefix_tokens=int(model.num_prefix_tokens),
        num_registers=_num_registers(model),
        has_class_token=bool(has_cls),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD)),
    )
