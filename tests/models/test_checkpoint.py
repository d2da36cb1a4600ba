"""load_backbone on every format users have, and its refusals (truncated, malicious, mismatched)."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from sparsedino.models import CheckpointError, DINOHead, MultiCropWrapper, build_vit, load_backbone


def _same_outputs(a, b, size=32):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_official_dino_backbone_file_loads_as_softmax_timm_vit(tmp_path, pico_timm):
    ref = pico_timm()
    state = ref.state_dict()
    assert state["pos_embed"].shape == (1, 17, 48)  # DINO layout: [CLS] has a position embedding
    torch.save(state, tmp_path / "dino_backbone.pth")
    model, info = load_backbone(tmp_path / "dino_backbone.pth")
    assert (info.source, info.arch, info.patch_size, info.normalizer) == (
        "state_dict",
        "vit_pico",
        8,
        "softmax",
    )
    assert info.num_registers == 0 and info.epoch is None and len(info.sha256) == 16
    assert not model.training
    _same_outputs(model, ref)


def test_official_full_checkpoint_with_namespace_args_loads_teacher_or_student(tmp_path):
    torch.manual_seed(0)
    student = MultiCropWrapper(
        build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax"), DINOHead(48, 64)
    )
    teacher = MultiCropWrapper(
        build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax"), DINOHead(48, 64)
    )
    args = argparse.Namespace(
        arch="vit_pico", patch_size=8, out_dim=64, lr=5e-4, global_crops_scale=(0.4, 1.0)
    )
    ckpt = {
        "student": {f"module.{k}": v for k, v in student.state_dict().items()},  # DDP prefix, as DINO saves
        "teacher": teacher.state_dict(),
        "optimizer": {},
        "epoch": 100,
        "args": args,
        "dino_loss": {"center": torch.zeros(1, 64)},
    }
    assert "head.last_layer.weight_g" in ckpt["teacher"]
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    model, info = load_backbone(tmp_path / "checkpoint.pth")
    assert (info.source, info.arch, info.epoch, info.normalizer) == ("dino", "vit_pico", 100, "softmax")
    _same_outputs(model, teacher.backbone.eval())
    model, _ = load_backbone(tmp_path / "checkpoint.pth", which="student", normalizer="entmax15")
    assert all(m.normalizer == "entmax15" for m in model.modules() if hasattr(m, "normalizer"))
    student.backbone.eval()
    for block in student.backbone.blocks:
        block.attn.normalizer = "entmax15"
    _same_outputs(model, student.backbone)


def test_timm_safetensors_with_registers_loads(tmp_path):
    ref = build_vit("vit_pico", patch_size=8, img_size=32, num_registers=4, normalizer="softmax").eval()
    save_file(ref.state_dict(), tmp_path / "reg.safetensors")
    model, info = load_backbone(tmp_path / "reg.safetensors")
    assert info.num_registers == 4 and info.arch == "vit_pico"
    _same_outputs(model, ref)


def test_truncated_checkpoint_error_names_file(tmp_path, pico_timm):
    torch.save(pico_timm().state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated"):
        load_backbone(tmp_path / "cut.pth")
    save_file(pico_timm().state_dict(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        load_backbone(tmp_path / "cut.safetensors")


def test_missing_and_non_vit_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.pth"):
        load_backbone(tmp_path / "nothere.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "linear.pth")
    with pytest.raises(CheckpointError, match=r"linear\.pth.*not a ViT"):
        load_backbone(tmp_path / "linear.pth")


def test_requested_arch_mismatch_is_an_error(tmp_path, pico_timm):
    torch.save(pico_timm().state_dict(), tmp_path / "pico.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_backbone(tmp_path / "pico.pth", arch="vit_small")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path, pico_timm):
    marker = tmp_path / "pwned"
    state = pico_timm().state_dict()
    state["evil"] = _Exploit(marker)
    with open(tmp_path / "evil.pth", "wb") as handle:
        torch.save(state, handle, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing"):
        load_backbone(tmp_path / "evil.pth")
    assert not marker.exists()
