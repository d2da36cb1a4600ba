"""Fixtures for the model tests."""

from __future__ import annotations

import pytest
import timm
import torch


def _pico_timm(seed: int = 0, **kwargs) -> torch.nn.Module:
    """A stock timm ViT of vit_pico's shape (48 dim, 3 blocks, 3 heads, patch 8, 32 px), eval mode."""
    torch.manual_seed(seed)
    shape = dict(num_classes=0, img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3)
    return timm.create_model("vit_small_patch16_224", **shape, **kwargs).eval()


@pytest.fixture
def pico_timm():
    """Builder of a stock timm ViT with vit_pico's shape: ``pico_timm(seed=0, **timm_kwargs)``."""
    return _pico_timm
