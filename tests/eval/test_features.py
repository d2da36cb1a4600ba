"""Frozen features: [CLS] / patch tokens of chosen blocks, norm switch, registers, disk cache."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from sparsedino.eval.features import extract_features


def _loader(n: int = 6, size: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.arange(n)), batch_size=4
    )


def test_shapes_and_cls_matches_timm(tiny_vit):
    fs = extract_features(tiny_vit, _loader(), layers=(0, -1), norm=True, progress=False)
    assert (
        fs.cls.shape == (6, 2, 24) and fs.patches.shape == (6, 2, 4, 4, 24) and fs.pooled.shape == (6, 2, 24)
    )
    assert fs.layers == (0, 2) and fs.norm and torch.equal(fs.labels, torch.arange(6))
    images = torch.cat([x for x, _ in _loader()])
    with torch.no_grad():
        tokens = tiny_vit.forward_features(images)  # final norm applied: the last block's [CLS] and patches
    assert torch.allclose(fs.cls[:, 1], tokens[:, 0], atol=1e-5)
    assert torch.allclose(fs.patches[:, 1].reshape(6, 16, 24), tokens[:, 1:], atol=1e-5)
    assert torch.allclose(fs.pooled[:, 1], tokens[:, 1:].mean(1), atol=1e-5)
    assert fs.layer(-1) == 1 and fs.layer(0) == 0


def test_norm_switch_changes_tokens(tiny_vit):
    raw = extract_features(tiny_vit, _loader(), layers=(-1,), norm=False, with_patches=False, progress=False)
    normed = extract_features(
        tiny_vit, _loader(), layers=(-1,), norm=True, with_patches=False, progress=False
    )
    assert raw.patches is None and not raw.norm and "no final norm" in raw.meta["norm"]
    assert not torch.allclose(raw.cls, normed.cls)
    assert torch.allclose(tiny_vit.norm(raw.cls), normed.cls, atol=1e-5)


def test_register_tokens_are_skipped(vit_factory):
    model = vit_factory(reg_tokens=2)
    fs = extract_features(model, _loader(), layers=(-1,), progress=False)
    images = torch.cat([x for x, _ in _loader()])
    with torch.no_grad():
        tokens = model.forward_features(images)  # [CLS], 2 registers, 16 patches
    assert fs.patches.shape == (6, 1, 4, 4, 24) and fs.meta["num_registers"] == 2
    assert torch.allclose(fs.cls[:, 0], tokens[:, 0], atol=1e-5)
    assert torch.allclose(fs.patches[:, 0].reshape(6, 16, 24), tokens[:, 3:], atol=1e-5)


def test_cache_hit_is_identical_and_changed_key_misses(tiny_vit, vit_factory, tmp_path):
    path = tmp_path / "cache" / "feats.safetensors"
    first = extract_features(tiny_vit, _loader(), layers=(-1,), cache_path=path, progress=False)
    assert first.meta["cache"]["status"] == "miss" and path.is_file()
    again = extract_features(tiny_vit, _loader(), layers=(-1,), cache_path=path, progress=False)
    assert again.meta["cache"]["status"] == "hit"
    for name in ("cls", "patches", "pooled", "labels"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert again.layers == first.layers and again.norm == first.norm
    other_layers = extract_features(tiny_vit, _loader(), layers=(0,), cache_path=path, progress=False)
    assert other_layers.meta["cache"]["status"] == "miss"
    other_model = extract_features(
        vit_factory(seed=1), _loader(), layers=(0,), cache_path=path, progress=False
    )
    assert other_model.meta["cache"]["status"] == "miss"
    other_data = extract_features(
        vit_factory(seed=1), _loader(n=5), layers=(0,), cache_path=path, progress=False
    )
    assert other_data.meta["cache"]["status"] == "miss" and other_data.cls.shape[0] == 5
    shifted = DataLoader(TensorDataset(torch.randn(5, 3, 32, 32), torch.arange(5)), batch_size=4)
    same_size_other_images = extract_features(
        vit_factory(seed=1), shifted, layers=(0,), cache_path=path, progress=False
    )
    assert same_size_other_images.meta["cache"]["status"] == "miss"
    assert not list(path.parent.glob("*.tmp"))  # atomic writes leave no temporary files


def test_model_without_class_token_uses_mean_of_patches():
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=24,
        depth=2,
        num_heads=2,
        num_classes=0,
        class_token=False,
        global_pool="avg",
        dynamic_img_size=True,
    ).eval()
    fs = extract_features(model, _loader(), layers=(-1,), progress=False)
    assert fs.meta["cls_source"] == "mean_of_patches"
    assert torch.allclose(fs.cls[:, 0], fs.patches[:, 0].mean((1, 2)), atol=1e-5)


def test_corrupt_cache_file_is_a_miss_and_is_replaced(tiny_vit, tmp_path):
    path = tmp_path / "feats.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    fs = extract_features(tiny_vit, _loader(), layers=(-1,), cache_path=path, progress=False)
    assert fs.meta["cache"]["status"] == "miss"
    again = extract_features(tiny_vit, _loader(), layers=(-1,), cache_path=path, progress=False)
    assert again.meta["cache"]["status"] == "hit" and torch.equal(again.patches, fs.patches)
