"""Vision Transformers built on timm's ``VisionTransformer`` with a pluggable attention normaliser.

Every ViT the package builds is a plain timm model (same parameter names, same state dict as
``timm.create_model("vit_small_patch16_224")``) whose attention modules were swapped in place for
:class:`sparsedino.attention.SparseAttention`; entmax-1.5 adds no parameters, so softmax and entmax
checkpoints are interchangeable and load into stock timm models.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from sparsedino.attention import Normalizer, sparsify, validate_normalizer
from sparsedino.attention.archs import VIT_ARCHS
from sparsedino.attention.layers import enable_learned_alpha

# Architecture table: name -> (embed_dim, depth, num_heads); its one home is sparsedino.attention.archs.
ARCHS: dict[str, dict[str, int]] = VIT_ARCHS


# How position embeddings follow the input size: DINO's bicubic resize (what DINO checkpoints were trained
# and evaluated with) or timm's antialiased one. ViTs built here default to DINO's.
POS_EMBED_MODES = ("dino", "timm")
# DINO's offset on the target grid: the scale factor is (size + 0.1) / old size, so that the floor in
# F.interpolate's output size cannot fall one short (facebookresearch/dino issue #8).
DINO_GRID_OFFSET = 0.1


@register_notrace_function  # torch.fx keeps it as a leaf (shape-dependent), like timm's own resampler
def dino_resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """DINO's ``interpolate_pos_encoding``: bicubic resize of the patch position grid with a 0.1 offset.

    Args:
        pos_embed: (1, P + gh * gw, C) position embeddings, the first ``num_prefix_tokens`` for [CLS].
        new_grid: (h, w) patch grid of the input.
        old_grid: (gh, gw) patch grid ``pos_embed`` is laid out for.
        num_prefix_tokens: leading entries that are not on the grid (kept as they are).

    Returns:
        (1, P + h * w, C); ``pos_embed`` itself when the grid is unchanged.
    """
    (h, w), (gh, gw) = new_grid, old_grid
    if (h, w) == (gh, gw):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, gh, gw, dim).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    scale = ((h + DINO_GRID_OFFSET) / gh, (w + DINO_GRID_OFFSET) / gw)
    grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, dim)  # (1, h*w, C)
    return torch.cat([prefix, grid], dim=1)


class DinoVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` (same modules, same state dict) with DINO's position interpolation.

    Inputs of another size than ``img_size`` (local crops, evaluation windows) get their position
    embeddings from :func:`dino_resample_pos_embed`, as DINO's own ViT computes them, instead of timm's
    antialiased resize (which gives [CLS] outputs differing by ~1e-2 from DINO's at 96 px).
    """

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic_img_size or self.pos_embed is None:
            return super()._pos_embed(x)
        B, H, W, C = x.shape  # (B, h, w, C) patch tokens
        pos_embed = dino_resample_pos_embed(
            self.pos_embed,
            (H, W),
            tuple(self.patch_embed.grid_size),
            0 if self.no_embed_class else self.num_prefix_tokens,
        )
        x = x.view(B, -1, C)
        to_cat = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:  # registers (and [CLS]) get no position embedding
            x = x + pos_embed
            x = torch.cat([*to_cat, x], dim=1) if to_cat else x
        else:
            x = torch.cat([*to_cat, x], dim=1) if to_cat else x
            x = x + pos_embed
        return self.pos_drop(x)


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
    normalizer: str | float | Normalizer = "entmax15",
    drop_path_rate: float = 0.0,
    num_registers: int = 0,
    dynamic_img_size: bool = True,
    attn_scale: float | None = None,
    pos_embed_mode: str = "dino",
    learn_alpha: bool = False,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """Build a timm ``VisionTransformer`` backbone whose attention uses ``normalizer``.

    Args:
        arch: one of :data:`ARCHS` (``vit_femto``, ``vit_pico``, ``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``).
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
        pos_embed_mode: ``"dino"`` (default): DINO's position-embedding interpolation for other input sizes
            (:class:`DinoVisionTransformer`) and DINO's [CLS] initialisation (truncated normal, std 0.02);
            ``"timm"``: timm's antialiased resize and [CLS] std 1e-6.
        learn_alpha: learn the entmax alpha of every head (parameters ``blocks.*.attn.alpha``, starting at
            ``normalizer``'s alpha, used clamped into (1, 2]); needs an entmax ``normalizer``.
        **timm_kwargs: forwarded to ``VisionTransformer`` (they override the ``arch`` table, e.g.
            ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``init_values``).

    Returns:
        A ``VisionTransformer`` with ``num_classes=0`` (forward returns the normed [CLS] embedding),
        LayerNorm eps 1e-6, qkv bias, and ``SparseAttention`` attention modules.
    """
    validate_normalizer(normalizer)
    if num_registers < 0:
        raise ValueError(f"num_registers must be >= 0, got {num_registers}")
    if pos_embed_mode not in POS_EMBED_MODES:
        raise ValueError(
            f"pos_embed_mode must be one of {', '.join(POS_EMBED_MODES)}, got {pos_embed_mode!r}"
        )
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
    if pos_embed_mode == "timm":
        model = VisionTransformer(**kwargs)
    else:
        model = DinoVisionTransformer(**kwargs)
        if model.cls_token is not None:
            trunc_normal_(model.cls_token, std=0.02)  # DINO's init (timm: normal, std 1e-6)
    sparsify(model, normalizer, scale=attn_scale)
    if learn_alpha:
        enable_learned_alpha(model)
    return model
