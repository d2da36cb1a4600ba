"""Issue 12.2: DINO backbones interpolate position embeddings as DINO does, and start [CLS] as DINO does.

Reference: facebookresearch/dino, vision_transformer.py. ``VisionTransformer.interpolate_pos_encoding``
resizes the (sqrt N x sqrt N) grid of patch position embeddings with ``nn.functional.interpolate(...,
scale_factor=((h0 + 0.1) / sqrt N, (w0 + 0.1) / sqrt N), mode="bicubic")`` (align_corners False, no
antialiasing), h0 / w0 the input's patch grid, and returns the table unchanged for the training grid; the
[CLS] position entry is kept. ``__init__`` draws ``cls_token`` and ``pos_embed`` with ``trunc_normal_(std=.02)``.
The reference below is re-derived from that description.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparsedino.models import load_backbone
from sparsedino.models.vit import build_vit
from sparsedino.train.build import build_network
from sparsedino.train.settings import TrainConfig


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, h0: int, w0: int) -> torch.Tensor:
    """DINO's formula: [CLS] entry kept, patch grid resized bicubically with the +0.1 offset."""
    n = pos_embed.shape[1] - 1
    if n == h0 * w0 and h0 == w0:
        return pos_embed
    side, dim = math.sqrt(n), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode="bicubic")
    assert grid.shape[-2:] == (h0, w0)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def position_table(model, h0: int, w0: int) -> torch.Tensor:
    """The position embeddings the model adds for an input of h0 x w0 patches (zero patch tokens in)."""
    tokens = model._pos_embed(torch.zeros(1, h0, w0, model.embed_dim))  # (1, 1 + h0*w0, C)
    return tokens - torch.cat([model.cls_token, torch.zeros(1, h0 * w0, model.embed_dim)], dim=1)


@pytest.mark.parametrize("pixels", [96, 512, 224, (224, 96)])
def test_position_embeddings_follow_dino_interpolate_pos_encoding(pixels):
    torch.manual_seed(0)
    model = build_vit("vit_small", patch_size=16, img_size=224, normalizer="softmax", depth=1).eval()
    h, w = (pixels, pixels) if isinstance(pixels, int) else pixels
    expected = dino_interpolate_pos_encoding(model.pos_embed.detach(), h // 16, w // 16)
    with torch.no_grad():
        torch.testing.assert_close(position_table(model, h // 16, w // 16), expected, atol=1e-6, rtol=0)


def test_cls_outputs_of_loaded_dino_weights_match_dino_at_96_px(tmp_path):
    """Official-style weights (a bare state dict) evaluated at 96 px: [CLS] equals DINO's computation."""
    torch.manual_seed(1)
    source = build_vit("vit_small", patch_size=16, img_size=224, normalizer="softmax", depth=2)
    torch.save(source.state_dict(), tmp_path / "dino_backbone.pth")
    model, _ = load_backbone(tmp_path / "dino_backbone.pth")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        # DINO's forward up to the blocks: patch tokens, [CLS] prepended, its interpolated positions added
        tokens = model.patch_embed(x)  # (B, 6, 6, C) with timm's dynamic size
        tokens = torch.cat([model.cls_token.expand(2, -1, -1), tokens.flatten(1, 2)], dim=1)
        tokens = tokens + dino_interpolate_pos_encoding(model.pos_embed, 6, 6)
        for block in model.blocks:
            tokens = block(tokens)
        expected = model.norm(tokens)[:, 0]
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_training_backbones_start_cls_token_as_dino():
    torch.manual_seed(0)
    network = build_network(TrainConfig(), drop_path_rate=0.0)  # ViT-S/16, DINO's default recipe
    std = float(network.backbone.cls_token.detach().std())
    assert 0.015 < std < 0.025  # trunc_normal_(std=.02) over 384 values (timm's own init: std 1e-6)
    x = torch.randn(1, 3, 96, 96)  # a local crop goes through DINO's interpolation too
    with torch.no_grad():
        expected = dino_interpolate_pos_encoding(network.backbone.pos_embed, 6, 6)
        torch.testing.assert_close(position_table(network.backbone, 6, 6), expected, atol=1e-6, rtol=0)
    assert network.backbone(x).shape == (1, 384)
