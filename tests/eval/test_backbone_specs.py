"""`sparsedino eval` with timm and transformers backbones: the same spec everywhere, the model's patch size,
image statistics and prefix tokens, register tokens never counted as patches."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from sparsedino.eval.command import _classification_sets, main
from sparsedino.eval.features import forward_tokens
from sparsedino.models import load_backbone, token_layout

from ..backbones import write_hf, write_timm

SEG = ["iters=3", "batch_size=4", "warmup_iters=1", "eval_short_side=0", "max_val_images=3", "max_train_images=12",
       "features.batch_size=8", "features.device=cpu"]  # fmt: skip


def _backbone(kind: str, folder):
    """(reference model, spec, patch size) of a DINOv2-reg4 / DINOv3 timm file or a transformers folder."""
    if kind == "dinov2_reg4":
        model, spec = write_timm("vit_small_patch14_reg4_dinov2", folder, "timm", ".safetensors")
        return model, spec, 14
    if kind == "dinov3":
        model, spec = write_timm("vit_small_patch16_dinov3", folder, "original", ".pth")
        return model, spec, 16
    model, spec = write_hf("dinov2_with_registers", folder / "hf")
    return model, spec, 14


@pytest.mark.parametrize("kind", ["dinov2_reg4", "dinov3", "hf_dinov2_reg4"])
def test_eval_seg_end_to_end(tmp_path, synth_root, kind, monkeypatch):
    import sparsedino.eval.segmentation as segmentation

    _, spec, patch = _backbone(kind, tmp_path)
    seen = []
    original = segmentation.eval_view_transform
    monkeypatch.setattr(
        segmentation, "eval_view_transform", lambda cfg, *stats: seen.append(stats) or original(cfg, *stats)
    )
    out = tmp_path / "out"
    argv = ["seg", "--checkpoint", spec, "--data", str(synth_root), "--out", str(out), "--with-cls",
            f"crop_size={2 * patch}", f"eval_stride={patch}", *SEG]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "linear_seg.json").read_text())
    assert result["backbone"]["spec"] == spec and result["backbone"]["num_registers"] == 4
    assert result["backbone"]["source"] == ("transformers" if kind.startswith("hf") else "timm")
    assert 0 <= result["miou"] <= 1 and len(result["per_class_iou"]) == 5
    assert seen == [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]  # the model's statistics


@pytest.mark.parametrize("kind", ["dinov2_reg4", "dinov3", "hf_dinov2_reg4"])
def test_patch_tokens_exclude_the_registers(tmp_path, kind):
    reference, spec, patch = _backbone(kind, tmp_path)
    model, _ = load_backbone(spec)
    grid = (3, 2) if kind.startswith("hf") else (4, 4)  # the timm references take their own size only
    x = torch.randn(2, 3, grid[0] * patch, grid[1] * patch)
    cls, patches, source = forward_tokens(model, x, [1], norm=True)
    with torch.no_grad():
        tokens = (
            reference(pixel_values=x).last_hidden_state
            if kind.startswith("hf")
            else reference.forward_features(x)
        )
    assert source == "cls_token" and patches.shape == (2, 1, *grid, 64 if not kind.startswith("hf") else 32)
    assert torch.allclose(cls[:, 0], tokens[:, 0]) and torch.allclose(
        patches[:, 0].flatten(1, 2), tokens[:, 5:]
    )


def test_classification_views_use_the_models_statistics(tmp_path, synth_root):
    _, spec = write_hf("vit", tmp_path / "vit")  # Google's ViT: mean = std = 0.5
    model, _ = load_backbone(spec)
    cfg = type("Cfg", (), {"data_root": str(synth_root / "imagenet"), "train_split": "train", "val_split": "val",
                           "crop": 32, "resize": 32})()  # fmt: skip
    train, _ = _classification_sets(cfg, model)
    normalize = train.transform.transforms[-1]
    assert list(normalize.mean) == [0.5, 0.5, 0.5] and list(normalize.std) == [0.5, 0.5, 0.5]
    assert token_layout(model).mean == (0.5, 0.5, 0.5)


def test_eval_video_takes_the_same_spec(tmp_path):
    from sparsedino.data.synthetic_video import write_synthetic_videos
    from sparsedino.eval.video import VIDEO_STD, BackboneFeatures

    _, spec, _ = _backbone("dinov2_reg4", tmp_path)
    root = tmp_path / "clips"
    write_synthetic_videos(root, clips=1, frames=3, size=28, seed=0, num_classes=3)
    out = tmp_path / "out"
    argv = ["video", "--checkpoint", spec, "--data", str(root), "--out", str(out), "short_side=28",
            "size_multiple=14", "device=cpu", "size_mask_neighborhood=1"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "video.json").read_text())
    assert result["backbone"]["spec"] == spec and 0 <= result["J&F-Mean"] <= 1
    model, _ = load_backbone(spec)
    assert BackboneFeatures(model).std == VIDEO_STD  # DINO's script values for an ImageNet-statistics model
    hf, _ = load_backbone(write_hf("vit", tmp_path / "vit")[1])
    assert BackboneFeatures(hf).mean == (0.5, 0.5, 0.5)


def test_a_bad_spec_is_one_line_before_any_work(tmp_path, synth_root, capsys):
    _, spec, _ = _backbone("dinov2_reg4", tmp_path)
    out = tmp_path / "out"
    base = ["seg", "--data", str(synth_root), "--out", str(out), *SEG]
    assert main([*base[:1], "--checkpoint", spec.replace("reg4_dinov2", "reg4_dinov9"), *base[1:]]) == 2
    err = capsys.readouterr().err
    assert "timm has no model 'vit_small_patch14_reg4_dinov9'; closest: vit_small_patch14_reg4_dinov2" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert main([*base[:1], "--checkpoint", spec.replace("depth=2", "depth=3"), *base[1:]]) == 2
    assert "missing keys (14): blocks.2." in capsys.readouterr().err
    assert main([*base[:1], "--checkpoint", spec, "--arch", "vit_small", *base[1:]]) == 2
    assert "for checkpoint files" in capsys.readouterr().err


def test_a_fixed_size_model_is_refused_by_seg_and_video(tmp_path, synth_root, capsys):
    # BEiT takes no dynamic_img_size: its inputs have the size it was built for
    model = timm.create_model("beit_base_patch16_224", pretrained=False, depth=1, embed_dim=32, num_heads=2,
                              img_size=32, num_classes=0)  # fmt: skip
    path = tmp_path / "beit.safetensors"
    save_file(model.state_dict(), path)
    spec = f"timm:beit_base_patch16_224,depth=1,embed_dim=32,num_heads=2,img_size=32:{path}"
    for protocol in ("seg", "video"):
        argv = [
            protocol,
            "--checkpoint",
            spec,
            "--data",
            str(synth_root),
            "--out",
            str(tmp_path / protocol),
            *SEG,
        ]
        assert main(argv if protocol == "seg" else argv[:7]) == 2
        assert "takes (32, 32) inputs only (no dynamic_img_size)" in capsys.readouterr().err
