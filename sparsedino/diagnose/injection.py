"""Semantic diffusion injected at evaluation time: the positive control of the dense benchmark.

A benchmark that is meant to see semantic diffusion should react when diffusion is added on purpose.
:func:`inject_diffusion` mixes every patch token of one block's output with a global token of the same
image,

    x_patch <- (1 - l) * x_patch + l * g,    g = the [CLS] token ("cls") or the mean patch token ("mean"),

so patch tokens carry image-level content in proportion to ``l`` while the [CLS] and register tokens are
left as they are. Everything downstream of the block (the final norm, the probes, the diagnostics) sees
the mixed tokens. ``l = 0`` leaves the model's outputs bit-identical, ``l = 1`` makes every patch token
equal to ``g``. Expected response of a sound instrument: dense mIoU falls and background patches predict
the image label more often (the diffusion index rises) as ``l`` grows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sparsedino.eval.features import FEATURE_EDIT_ATTR

SOURCES = ("cls", "mean")


def mix_tokens(tokens: torch.Tensor, num_prefix: int, amount: float, source: str) -> torch.Tensor:
    """Mix the patch tokens of ``tokens`` (B, P + M, C) with a global token; prefix tokens unchanged.

    Args:
        tokens: a block's output, prefix tokens ([CLS], registers) first.
        num_prefix: number of prefix tokens P.
        amount: mixing weight ``l`` in [0, 1].
        source: ``"cls"`` (the first prefix token) or ``"mean"`` (the mean of the M patch tokens).

    Returns:
        A new (B, P + M, C) tensor. ``torch.lerp`` is exact at both ends, so ``amount`` 0 returns the
        patch tokens bit for bit and ``amount`` 1 returns copies of the source token.
    """
    patches = tokens[:, num_prefix:]  # (B, M, C)
    if source == "cls":
        if num_prefix < 1:
            raise ValueError("source 'cls' needs a model with a [CLS] token; use source='mean'")
        target = tokens[:, :1]  # (B, 1, C)
    else:
        target = patches.mean(1, keepdim=True)  # (B, 1, C)
    mixed = torch.lerp(patches, target.expand_as(patches), amount)
    return torch.cat([tokens[:, :num_prefix], mixed], dim=1)


@contextmanager
def inject_diffusion(model: nn.Module, amount: float, source: str = "cls", block: int = -1) -> Iterator[None]:
    """Within the ``with`` block, mix ``block``'s patch-token outputs of ``model`` with a global token.

    Args:
        model: a timm ``VisionTransformer`` (``blocks``, ``num_prefix_tokens``).
        amount: mixing weight ``l`` in [0, 1].
        source: ``"cls"`` or ``"mean"`` (see :func:`mix_tokens`).
        block: index into ``model.blocks`` (negative from the end); the probes read this block's output.

    Raises:
        ValueError: for an amount outside [0, 1], an unknown source, a block out of range, or ``cls``
            on a model without a class token.
    """
    amount = float(amount)
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"injection amount must be in [0, 1], got {amount}")
    if source not in SOURCES:
        raise ValueError(f"injection source must be one of {', '.join(SOURCES)}, got {source!r}")
    depth = len(model.blocks)
    if not -depth <= block < depth:
        raise ValueError(f"block {block} out of range for a model with {depth} blocks")
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    if source == "cls" and not getattr(model, "has_class_token", True):
        raise ValueError("source 'cls' needs a model with a [CLS] token; use source='mean'")

    def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        return mix_tokens(output, num_prefix, amount, source)

    handle = model.blocks[block].register_forward_hook(hook)
    previous = getattr(model, FEATURE_EDIT_ATTR, None)
    # the feature cache keys on this, so injected features never collide with clean ones
    setattr(model, FEATURE_EDIT_ATTR, f"inject {source} l={amount!r} at block {block % depth}")
    try:
        yield
    finally:
        handle.remove()
        setattr(model, FEATURE_EDIT_ATTR, previous)
