"""Vision Transformers built on timm's ``VisionTransformer`` with a pluggable attention normaliser.

Every ViT the package builds is a plain timm model (same parameter names, same state dict as
``timm.create_model("vit_small_patch16_224")``) whose attention modules were swapped in place for
:class:`sparsedino.attention.SparseAttention`; entmax-1.5 adds no parameters, so softmax and entmax
checkpoints are interchangeable and load into stock timm models.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

# Architecture table: name -> (embed_dim, depth, num_heads). The widths/depths are DINO's / DeiT's.
# ``vit_pico`` is a tiny model for CPU tests and demos (not a published architecture).
ARCHS: dict[str, dict[str, int]] = {
    "vit_pico": {"embed_dim": 48, "depth": 3, "num_heads": 3},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def arch_spec(arch: str) -> dict[str, int]:
    """Return ``{"embed_dim", "depth", "num_heads"}`` of a named architecture.

    Raises:
        ValueError: naming the unknown architecture and listing the known ones.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    return dict(ARCHS[arch])


def arch_from_shape(embed_dim: int, depth: int) -> str | None:
    """Name of the table architecture with this width and depth, or None."""
    for name, spec in ARCHS.items():
        if spec["embed_dim"] == embed_dim and spec["depth"] == depth:
            return name
    return None


def build_vit(
    arch: str = "vit_small",
    patch_size: int = 16,
    img_size: int = 224,
    normalizer: str | float = "entmax15",
    drop_path_rate: float = 0.0,
    num_registers: int = 0,
    dynamic_img_size: bool = True,
    attn_scale: float | None = None,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """Build a timm ``VisionTransformer`` backbone whose attention uses ``normalizer``.

    Args:
        arch: one of :data:`ARCHS` (``vit_pico``, ``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``).
        patch_size: patch side in pixels.
        img_size: side of the images the position embeddings are laid out for; with
            ``dynamic_img_size`` other sizes (e.g. 96 px local crops) interpolate them.
        normalizer: attention normaliser, ``"softmax"``, ``"entmax15"``, ``"sparsemax"`` or a float alpha.
        drop_path_rate: stochastic depth rate (DINO: 0.1 for the student, 0 for the teacher).
        num_registers: register tokens (Darcet et al.); they sit after [CLS] and get no position
            embedding (timm's ``no_embed_class`` layout used by its ``*_reg4`` models).
        dynamic_img_size: accept any input size (needed for multi-crop).
        attn_scale: attention logit scale; None = ``head_dim ** -0.5``. Entmax is not scale invariant,
            so this sets how sparse the attention is.
        **timm_kwargs: forwarded to ``VisionTransformer`` (they override the ``arch`` table, e.g.
            ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``init_values``).

    Returns:
        A ``VisionTransformer`` with ``num_classes=0`` (forward returns the normed [CLS] embedding),
        LayerNorm eps 1e-6, qkv bias, and ``SparseAttention`` attention modules.
    """
    from sparsedino.attention import sparsify, validate_normalizer

    validate_normalizer(normalizer)
    if num_registers < 0:
        raise ValueError(f"num_registers must be >= 0, got {num_registers}")
    kwargs: dict[str, Any] = arch_spec(arch)
    kwargs.update(
        img_size=img_size,
        patch_size=patch_size,
        num_classes=0,
        mlp_ratio=4.0,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path_rate,
        dynamic_img_size=dynamic_img_size,
        reg_tokens=num_registers,
        no_embed_class=num_registers > 0,
    )
    kwargs.update(timm_kwargs)
    model = VisionTransformer(**kwargs)
    return sparsify(model, normalizer, scale=attn_scale)
