"""``sparsify`` any timm ViT in place, list what it converted, and ``collect_attention`` maps.

Which timm attention module becomes which sparse module is one table, :data:`SPARSE_TYPES` (attention
pools, converted only when asked, in :data:`SPARSE_POOL_TYPES`). A converted module computes the same
scores as the timm module (RoPE, relative position biases, windows, qk-norm, bias layouts) and normalises
them with the chosen normaliser; with ``"softmax"`` it gives back timm's outputs (bit for bit where timm
runs SDPA, the default). Parameters are reused, never copied, and the state dict is unchanged:

* timm's ``Attention`` is replaced by a :class:`~sparsedino.attention.SparseAttention` sharing its
  submodules (the class timm builds with ``attn_layer=SparseAttention``);
* every other type is converted in place: the module object stays, its class becomes a subclass of its
  own with the sparse ``forward`` (:mod:`sparsedino.attention.families`), so timm's methods on it
  (``set_window_size``, ``reset_parameters``, ...) and hooks on it keep working.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from timm.layers import Attention, AttentionPoolLatent, AttentionRope
from timm.layers.attention_pool import AttentionPoolPrr
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn, TalkingHeadAttn
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from timm.models.vision_transformer_sam import Attention as SamAttention
from torch import Tensor, nn

from sparsedino.attention import hf_detect
from sparsedino.attention.core import SparseCore
from sparsedino.attention.families import (
    SparseAttentionPoolLatent,
    SparseAttentionPoolPrr,
    SparseAttentionRope,
    SparseBeitAttention,
    SparseClassAttn,
    SparseEvaAttention,
    SparseRelPosAttention,
    SparseSamAttention,
    SparseTalkingHeadAttn,
)
from sparsedino.attention.layers import SparseAttention
from sparsedino.attention.normalizers import Normalizer, check_scale, parse_normalizer

__all__ = [
    "SPARSE_POOL_TYPES",
    "SPARSE_TYPES",
    "ConvertedModule",
    "collect_attention",
    "converted_modules",
    "sparsify",
]

# timm attention type (matched exactly: a subclass may compute other scores) -> its sparse type
SPARSE_TYPES: dict[type[nn.Module], type[SparseCore]] = {
    Attention: SparseAttention,  # ViT, DeiT, DINO(v2), registers, SigLIP, CLIP, FlexiViT, NaFlexViT, hybrids
    AttentionRope: SparseAttentionRope,  # RoPE-ViT (vit_*_rope_224), Perception Encoder
    EvaAttention: SparseEvaAttention,  # EVA, EVA-02, DINOv3, timm's RoPE ViTs (vit_*_rope_reg*_gap_*)
    BeitAttention: SparseBeitAttention,  # BEiT, BEiT v2
    RelPosAttention: SparseRelPosAttention,  # vit_relpos_*, vit_srelpos_*
    SamAttention: SparseSamAttention,  # SAM ViT (samvit_*), windowed and global blocks
    TalkingHeadAttn: SparseTalkingHeadAttn,  # CaiT self-attention blocks
    ClassAttn: SparseClassAttn,  # CaiT (and XCiT) class-attention blocks
}
# attention pooling heads, converted with sparsify(..., pools=True)
SPARSE_POOL_TYPES: dict[type[nn.Module], type[SparseCore]] = {
    AttentionPoolLatent: SparseAttentionPoolLatent,  # SigLIP, global_pool="map", PE, EVA attn_pool
    AttentionPoolPrr: SparseAttentionPoolPrr,
}
_TIMM_TYPE = {sparse: timm for timm, sparse in {**SPARSE_TYPES, **SPARSE_POOL_TYPES}.items()}
_KNOWN = tuple(_TIMM_TYPE.values())


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _looks_like_attention(name: str, module: nn.Module) -> bool:
    """timm's attention modules carry ``fused_attn``; older ones are an ``attn`` child with a ``qkv``; a
    subclass of a supported type may compute other scores."""
    return (
        hasattr(module, "fused_attn")
        or (name == "attn" and hasattr(module, "qkv"))
        or isinstance(module, _KNOWN)
    )


def _conversions(model: nn.Module, pools: bool) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, child name, child) for every module to convert; TypeError before anything is changed."""
    found = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, SparseCore):
                continue
            if type(child) in SPARSE_TYPES or (pools and type(child) in SPARSE_POOL_TYPES):
                found.append((parent, child_name, child))
            elif type(child) not in SPARSE_POOL_TYPES and _looks_like_attention(child_name, child):
                path = f"{parent_name}.{child_name}" if parent_name else child_name
                supported = ", ".join(_qualname(t) for t in SPARSE_TYPES)
                raise TypeError(
                    f"sparsify: cannot convert attention module {path!r} of type {_qualname(type(child))} "
                    f"(supported: {supported}; attention pools with pools=True)"
                )
    return found


def sparsify(
    model: nn.Module,
    normalizer: str | float | Normalizer = "entmax15",
    scale: float | None = None,
    *,
    pools: bool = False,
) -> nn.Module:
    """Switch every attention of a timm ViT to ``normalizer``, in place; the state dict is unchanged.

    Converts the types in :data:`SPARSE_TYPES` (and, with ``pools=True``, :data:`SPARSE_POOL_TYPES`);
    modules converted before are re-set (pools included, whatever ``pools`` says), so
    ``sparsify(model, "softmax")`` gives back the original function. :func:`converted_modules` lists what
    was converted. Nothing is changed when an error is raised.

    Args:
        model: A timm model (or any module containing timm attention modules), a ``features_only``
            wrapper included.
        normalizer: Target normaliser (any spelling :func:`~sparsedino.attention.parse_normalizer` takes).
        scale: New score scale for every converted layer (a finite number > 0); None keeps each layer's.
            Entmax is not scale invariant: the scale sets how sparse the attention is.
        pools: Also convert attention pooling heads (``AttentionPoolLatent``, ``AttentionPoolPrr``), the
            classifier read-out of SigLIP / ``global_pool="map"`` models; by default they keep softmax.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: bad normaliser or scale, or no convertible attention module in ``model``.
        TypeError: an attention module of a type that cannot be converted (naming its path and type, e.g.
            timm's ``DiffAttention`` or ``ParallelScalingBlock``).
    """
    spec = parse_normalizer(normalizer)
    scale = check_scale(scale)
    if hf_detect.contains_transformers_model(model):  # a transformers model, or a module holding one
        from sparsedino.attention import hf  # optional dependency (transformers), already imported here

        return hf.sparsify_transformers(model, spec, scale)
    targets = _conversions(model, pools)
    existing = [m for m in model.modules() if isinstance(m, SparseCore)]
    if not targets and not existing:
        raise ValueError(f"sparsify: no timm Attention module found in {type(model).__name__}")
    for module in existing:
        module.normalizer = spec
        if scale is not None:
            module.scale = scale
    converted: dict[int, nn.Module] = {}  # a module shared by two parents is converted once
    for parent, name, child in targets:
        if id(child) not in converted:
            table = SPARSE_TYPES if type(child) in SPARSE_TYPES else SPARSE_POOL_TYPES
            converted[id(child)] = table[type(child)].from_timm(child, spec, scale)
        setattr(parent, name, converted[id(child)])
    return model


@dataclass(frozen=True)
class ConvertedModule:
    """One sparse attention module of a model, as :func:`converted_modules` lists it.

    Attributes:
        path: Module path, e.g. ``"blocks.0.attn"``.
        timm_type: The timm class whose scores it computes, e.g. ``"timm.models.eva.EvaAttention"``.
        sparse_type: Its class, e.g. ``"sparsedino.attention.families.rope.SparseEvaAttention"``.
        normalizer: Canonical normaliser name.
        scale: Score scale.
    """

    path: str
    timm_type: str
    sparse_type: str
    normalizer: str
    scale: float


def converted_modules(model: nn.Module) -> list[ConvertedModule]:
    """Every sparse attention module of ``model`` in module order: which modules ``sparsify`` touched."""
    rows = []
    for path, module in model.named_modules():
        if isinstance(module, SparseCore):
            timm_type = next(_TIMM_TYPE[c] for c in type(module).__mro__ if c in _TIMM_TYPE)
            rows.append(
                ConvertedModule(
                    path,
                    _qualname(timm_type),
                    _qualname(type(module)),
                    module.normalizer,
                    float(module.scale),
                )
            )
    return rows


@contextlib.contextmanager
def collect_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record the attention probabilities of every sparse attention module in ``model``.

    Inside the context each module materialises its probabilities and appends them, detached, float32, in
    forward order::

        with collect_attention(model) as maps:
            model(x)
        assert len(maps) == len(converted_modules(model))  # one per module call

    Shapes: (B, H, N, N) for self-attention (N includes [CLS] and register tokens); SAM's windowed blocks
    (B * windows, H, w * w, w * w) (one map per window, padding tokens included), its global blocks
    (B, H, h * w, h * w); class attention (CaiT) (B, H, 1, N); attention pools (B, H, latents, N).

    Raises:
        ValueError: the model has no sparse attention module (call ``sparsify(model, "softmax")`` first to
            keep softmax and still record maps).
    """
    if hf_detect.contains_transformers_model(model):  # a transformers model, or a module holding one
        from sparsedino.attention import hf  # optional dependency (transformers), already imported here

        with hf.collect_transformers_attention(model) as maps:
            yield maps
        return
    layers = [m for m in model.modules() if isinstance(m, SparseCore)]
    if not layers:
        raise ValueError(
            f"collect_attention: {type(model).__name__} has no sparse attention module; convert it with "
            "sparsedino.attention.sparsify(model, normalizer) first (normalizer='softmax' keeps softmax)"
        )
    maps: list[Tensor] = []
    previous = [m._recorder for m in layers]
    for m in layers:
        m._recorder = maps
    try:
        yield maps
    finally:
        for m, prev in zip(layers, previous):
            m._recorder = prev
