"""``sparsedino export`` round trips: timm / dino formats, .pth / .safetensors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsedino.models import DINOHead, MultiCropWrapper, build_vit, load_backbone
from sparsedino.models.export import main


@pytest.fixture()
def training_checkpoint(tmp_path):
    """A checkpoint in our training layout with an entmax teacher (different from the student)."""
    torch.manual_seed(0)

    def net():
        return MultiCropWrapper(build_vit("vit_pico", patch_size=8, img_size=32), DINOHead(48, 64))

    student, teacher = net(), net()
    path = tmp_path / "checkpoint.pth"
    meta = {"arch": "vit_pico", "patch_size": 8, "normalizer": "entmax15", "num_registers": 0, "epoch": 7}
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(), "sparsedino": meta}, path)
    return path, teacher.backbone.eval()


@pytest.mark.parametrize("fmt", ["timm", "dino"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_round_trip(training_checkpoint, tmp_path, fmt, suffix, capsys, pico_timm):
    ckpt, teacher = training_checkpoint
    out = tmp_path / f"backbone{suffix}"
    assert main([str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    assert "vit_pico" in capsys.readouterr().out
    state = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert set(state) == set(teacher.state_dict())  # bare timm/DINO key names
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = teacher(x)
        # Stock timm (softmax) gets the same weights ...
        ref = pico_timm()
        ref.load_state_dict(state)
        for block in ref.blocks:  # ... and with our attention swapped in gives the teacher's outputs
            from sparsedino.attention import SparseAttention

            block.attn = SparseAttention.from_timm(block.attn, "entmax15")
        torch.testing.assert_close(ref(x), expected, atol=1e-5, rtol=1e-5)
        # Our loader restores the entmax normaliser from the metadata.
        model, info = load_backbone(out)
        assert (info.normalizer, info.arch, info.epoch, info.source) == ("entmax15", "vit_pico", 7, "export")
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    if suffix == ".pth":
        sidecar = json.loads(out.with_name(out.name + ".json").read_text())
        assert sidecar["timm_model"] is None and sidecar["format"] == fmt  # timm has no vit_pico


def test_dino_format_refuses_registers(tmp_path, capsys):
    backbone = build_vit("vit_pico", patch_size=8, img_size=32, num_registers=4)
    torch.save(backbone.state_dict(), tmp_path / "reg.pth")
    assert main([str(tmp_path / "reg.pth"), "--format", "dino", "--out", str(tmp_path / "o.pth")]) == 2
    assert "register" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def test_export_bad_suffix_is_reported(training_checkpoint, tmp_path, capsys):
    ckpt, _ = training_checkpoint
    assert main([str(ckpt), "--out", str(tmp_path / "o.bin")]) == 2
    assert "o.bin" in capsys.readouterr().err


def test_custom_attention_scale_survives_checkpoint_and_export(tmp_path):
    backbone = build_vit("vit_pico", patch_size=8, img_size=32, attn_scale=0.5)
    meta = {"arch": "vit_pico", "normalizer": "entmax15", "attn_scale": 0.5}
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "sparsedino": meta},
               tmp_path / "ckpt.pth")  # fmt: skip
    model, _ = load_backbone(tmp_path / "ckpt.pth")
    assert all(block.attn.scale == 0.5 for block in model.blocks)
    assert main([str(tmp_path / "ckpt.pth"), "--out", str(tmp_path / "b.safetensors")]) == 0
    model, _ = load_backbone(tmp_path / "b.safetensors")
    assert all(block.attn.scale == 0.5 for block in model.blocks)
