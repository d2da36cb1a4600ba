"""timm model names with entmax-1.5 attention, registered when ``sparsedino`` is imported.

``timm.create_model("vit_small_patch16_224_entmax15")`` builds the same architecture as timm's
``vit_small_patch16_224`` (so its state dicts load strictly) with :class:`SparseAttention` layers. Any
``VisionTransformer`` keyword (``img_size``, ``num_classes``, ``dynamic_img_size``, ``reg_tokens``,
``drop_path_rate``, ...) passes through. There are no pretrained weights: ``pretrained=True`` raises.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from sparsedino.attention.layers import SparseAttention

__all__ = ["ENTMAX_ARCHS", "create_entmax_vit"]

# name -> VisionTransformer arguments (those of the timm model of the same name without the suffix)
ENTMAX_ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224_entmax15": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224_entmax15": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_small_patch8_224_entmax15": dict(patch_size=8, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224_entmax15": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}
# keyword arguments timm's factory passes that a bare VisionTransformer does not take
_FACTORY_ONLY = (
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
    "features_only",
    "pretrained_strict",
)


def create_entmax_vit(name: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build the registered architecture ``name`` with entmax-1.5 attention (no weights are ever loaded).

    Args:
        name: One of :data:`ENTMAX_ARCHS`.
        pretrained: Must be False: there are no released entmax weights and nothing is downloaded.
        **kwargs: ``VisionTransformer`` arguments overriding the architecture defaults; ``normalizer`` and
            ``attn_scale`` configure the attention (default "entmax15" and ``head_dim ** -0.5``).

    Returns:
        A timm ``VisionTransformer`` whose attention modules are ``SparseAttention``.
    """
    if pretrained:
        raise ValueError(
            f"{name}: no pretrained weights exist for entmax models and sparsedino never downloads weights. "
            "Build with pretrained=False and load a checkpoint (e.g. sparsedino.models.load_backbone, or "
            "model.load_state_dict of a plain timm ViT state dict: the parameter names are identical)."
        )
    if name not in ENTMAX_ARCHS:
        raise ValueError(f"unknown entmax architecture {name!r}; known: {sorted(ENTMAX_ARCHS)}")
    for key in _FACTORY_ONLY:
        kwargs.pop(key, None)
    normalizer = kwargs.pop("normalizer", "entmax15")
    scale = kwargs.pop("attn_scale", None)
    args = {**ENTMAX_ARCHS[name], **kwargs}
    args.setdefault("attn_layer", SparseAttention)
    model = VisionTransformer(**args)
    if normalizer != "entmax15" or scale is not None:
        from sparsedino.attention.layers import sparsify

        sparsify(model, normalizer, scale)
    model.pretrained_cfg = {
        "architecture": name,
        "num_classes": model.num_classes,
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "mean": IMAGENET_DEFAULT_MEAN,  # DINO's normalisation
        "std": IMAGENET_DEFAULT_STD,
        "url": "",
        "hf_hub_id": "",
    }
    model.default_cfg = model.pretrained_cfg
    return model


@register_model
def vit_tiny_patch16_224_entmax15(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 with entmax-1.5 attention."""
    return create_entmax_vit("vit_tiny_patch16_224_entmax15", pretrained, **kwargs)


@register_model
def vit_small_patch16_224_entmax15(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 with entmax-1.5 attention (DINO's ViT-S/16 architecture)."""
    return create_entmax_vit("vit_small_patch16_224_entmax15", pretrained, **kwargs)


@register_model
def vit_small_patch8_224_entmax15(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/8 with entmax-1.5 attention."""
    return create_entmax_vit("vit_small_patch8_224_entmax15", pretrained, **kwargs)


@register_model
def vit_base_patch16_224_entmax15(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 with entmax-1.5 attention."""
    return create_entmax_vit("vit_base_patch16_224_entmax15", pretrained, **kwargs)
