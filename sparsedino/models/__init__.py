"""ViT backbones (timm + sparse attention), the DINO head, and checkpoint formats.

Public API: :func:`build_vit`, :func:`load_backbone`, :class:`BackboneInfo`, :class:`DINOHead`,
:class:`MultiCropWrapper`, :data:`ARCHS`.
"""

from sparsedino.models.checkpoint import BackboneInfo, load_backbone
from sparsedino.models.formats import CheckpointError, read_checkpoint
from sparsedino.models.head import DINOHead, MultiCropWrapper
from sparsedino.models.vit import ARCHS, arch_spec, build_vit

__all__ = [
    "ARCHS",
    "BackboneInfo",
    "CheckpointError",
    "DINOHead",
    "MultiCropWrapper",
    "arch_spec",
    "build_vit",
    "load_backbone",
    "read_checkpoint",
]
