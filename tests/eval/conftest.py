"""Fixtures of the eval tests: a tiny timm ViT and a small embedded dataset."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from sparsedino.data.synthetic import write_synthetic_dataset


def make_tiny_vit(reg_tokens: int = 0, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=24,
        depth=3,
        num_heads=2,
        num_classes=0,
        reg_tokens=reg_tokens,
        dynamic_img_size=True,
    ).eval()


@pytest.fixture
def tiny_vit() -> VisionTransformer:
    return make_tiny_vit()


@pytest.fixture
def vit_factory():
    return make_tiny_vit


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """40 train / 16 val images of 32 px with 4 classes."""
    root = tmp_path_factory.mktemp("synth_eval") / "data"
    write_synthetic_dataset(root, n_train=40, n_val=16, size=32, seed=5, num_classes=4)
    return root
