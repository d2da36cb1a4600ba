"""The ViT architecture table: one home for the widths, depths and head counts the package builds.

:mod:`sparsedino.attention.timm_models` registers its ``*_entmax15`` timm names from it, and
:mod:`sparsedino.models.vit` (``ARCHS``, ``build_vit``) builds its backbones from it.
"""

from __future__ import annotations

__all__ = ["VIT_ARCHS"]

# name -> (embed_dim, depth, num_heads). The widths/depths are DINO's / DeiT's (timm's ``vit_<name>_*``).
# ``vit_pico`` is a tiny model for CPU tests; ``vit_femto`` (narrower, one block deeper) is the CPU presets'
# model: random 32-dim patch features carry less of the pixels than 48-dim ones (epoch-0 dense probe 46 vs
# 53 mIoU on the embedded data) while trained ones reach nearly as high (64 vs 66), so the dense benchmark
# sees more of what training adds. Neither is a published architecture.
VIT_ARCHS: dict[str, dict[str, int]] = {
    "vit_femto": {"embed_dim": 32, "depth": 4, "num_heads": 2},
    "vit_pico": {"embed_dim": 48, "depth": 3, "num_heads": 3},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}
