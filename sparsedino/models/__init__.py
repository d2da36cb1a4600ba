"""ViT backbones (timm + sparse attention), the DINO head, and checkpoint formats.

Public API: :func:`build_vit`, :func:`load_backbone` (any backbone spec), :func:`parse_backbone_spec`,
:class:`BackboneSpec`, :class:`BackboneInfo`, :func:`token_layout`, :class:`TokenLayout`, :class:`DINOHead`,
:class:`MultiCropWrapper`, :data:`ARCHS`.
"""

from sparsedino.models.backbone import load_backbone
from sparsedino.models.checkpoint import BackboneInfo, load_checkpoint_backbone
from sparsedino.models.formats import CheckpointError, read_checkpoint
from sparsedino.models.head import DINOHead, MultiCropWrapper
from sparsedino.models.layout import TokenLayout, token_layout
from sparsedino.models.spec import SPEC_HELP, BackboneSpec, parse_backbone_spec
from sparsedino.models.vit import ARCHS, arch_spec, build_vit

__all__ = [
    "ARCHS",
    "SPEC_HELP",
    "BackboneInfo",
    "BackboneSpec",
    "CheckpointError",
    "DINOHead",
    "MultiCropWrapper",
    "TokenLayout",
    "arch_spec",
    "build_vit",
    "load_backbone",
    "load_checkpoint_backbone",
    "parse_backbone_spec",
    "read_checkpoint",
    "token_layout",
]
