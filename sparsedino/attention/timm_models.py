"""timm model names with entmax-1.5 attention, registered when ``sparsedino`` is imported.

``timm.create_model("vit_small_patch16_224_entmax15")`` builds the same architecture as timm's
``vit_small_patch16_224`` (so its state dicts load strictly) with :class:`SparseAttention` layers, through
timm's own ``build_model_with_cfg``, exactly as timm builds its ViTs. So everything a timm ViT offers works:
any ``VisionTransformer`` keyword (``img_size``, ``num_classes``, ``dynamic_img_size``, ``reg_tokens``,
``drop_path_rate``, ``device``, ...), ``features_only=True`` with ``out_indices`` / ``feature_cls`` (a
``FeatureGetterNet`` over ``forward_intermediates``, default: the last 3 blocks), the registered pretrained
cfgs (``timm.get_pretrained_cfg_value(name, "input_size")``, ``timm.data.resolve_data_config``), meta-device
construction, torch.fx and TorchScript. There are no pretrained weights: ``pretrained=True`` raises.
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from sparsedino.attention.archs import VIT_ARCHS
from sparsedino.attention.convert import sparsify
from sparsedino.attention.layers import SparseAttention
from sparsedino.attention.normalizers import parse_normalizer

__all__ = ["ENTMAX_ARCHS", "create_entmax_vit"]

# registered name -> (architecture in VIT_ARCHS, patch size)
_REGISTERED = {
    "vit_tiny_patch16_224_entmax15": ("vit_tiny", 16),
    "vit_small_patch16_224_entmax15": ("vit_small", 16),
    "vit_small_patch8_224_entmax15": ("vit_small", 8),
    "vit_base_patch16_224_entmax15": ("vit_base", 16),
}
# name -> VisionTransformer arguments (those of the timm model of the same name without the suffix)
ENTMAX_ARCHS: dict[str, dict[str, Any]] = {
    name: dict(patch_size=patch, **VIT_ARCHS[arch]) for name, (arch, patch) in _REGISTERED.items()
}


def _cfg() -> dict[str, Any]:
    """Pretrained cfg with the keys timm's ViT cfgs have; no weight source (no url / hf_hub_id / file)."""
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,  # DINO's evaluation crop (resize 256, centre crop 224)
        "crop_mode": "center",
        "interpolation": "bicubic",
        "fixed_input_size": True,  # as timm's ViTs: the position embedding is built for img_size
        "mean": IMAGENET_DEFAULT_MEAN,  # DINO's normalisation
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "description": "ViT with exact entmax-1.5 attention (sparsedino); no pretrained weights exist",
    }


# read by timm's register_model below: registers each name's pretrained cfg (tagless, without weights)
default_cfgs = generate_default_cfgs({name: _cfg() for name in ENTMAX_ARCHS})


def create_entmax_vit(name: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build the registered architecture ``name`` with entmax-1.5 attention (no weights are ever loaded).

    Args:
        name: One of :data:`ENTMAX_ARCHS`.
        pretrained: Must be False: there are no released entmax weights and nothing is downloaded.
        **kwargs: ``VisionTransformer`` arguments overriding the architecture defaults, timm factory arguments
            (``features_only``, ``out_indices``, ``feature_cls``, ``pretrained_cfg_overlay``, ...), and
            ``normalizer`` / ``attn_scale`` for the attention (default "entmax15" and ``head_dim ** -0.5``).

    Returns:
        A timm ``VisionTransformer`` whose attention modules are ``SparseAttention`` (a ``FeatureGetterNet``
        around one with ``features_only=True``).
    """
    if pretrained:
        raise ValueError(
            f"{name}: no pretrained weights exist for entmax models and sparsedino never downloads weights. "
            "Build with pretrained=False and load a checkpoint (e.g. sparsedino.models.load_backbone, or "
            "model.load_state_dict of a plain timm ViT state dict: the parameter names are identical)."
        )
    if name not in ENTMAX_ARCHS:
        raise ValueError(f"unknown entmax architecture {name!r}; known: {sorted(ENTMAX_ARCHS)}")
    spec = parse_normalizer(kwargs.pop("normalizer", "entmax15"))  # validated before building
    scale = kwargs.pop("attn_scale", None)
    out_indices = kwargs.pop("out_indices", 3)  # timm's ViT default for features_only: the last 3 blocks
    args = {**ENTMAX_ARCHS[name], **kwargs}
    args.setdefault("attn_layer", SparseAttention)
    model = build_model_with_cfg(
        VisionTransformer,
        name,
        pretrained=False,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **args,
    )
    if spec.name != "entmax15" or scale is not None:
        sparsify(model, spec, scale)
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
