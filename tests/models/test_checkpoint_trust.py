"""Issue 12.10 (checkpoints): broken weights and metadata that contradicts the tensors are refused;
exports name a timm model only when timm has it."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from sparsedino.models import CheckpointError, load_backbone
from sparsedino.models.export import export_backbone
from sparsedino.models.vit import build_vit


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, pico_timm):
    state = pico_timm().state_dict()
    state["blocks.2.attn.proj.weight"][3, 1] = float("nan")
    torch.save(state, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.2\.attn\.proj\.weight.*NaN"):
        load_backbone(tmp_path / "diverged.pth")


def test_stored_arch_contradicting_the_tensors_is_refused(tmp_path):
    tiny = build_vit("vit_tiny", patch_size=16, img_size=32, normalizer="softmax")  # width 192, depth 12
    torch.save(tiny.state_dict(), tmp_path / "w.pth")
    (tmp_path / "w.pth.json").write_text(json.dumps({"arch": "vit_pico", "normalizer": "softmax"}))
    with pytest.raises(CheckpointError, match=r"says arch 'vit_pico'.*width 192, depth 12 \(vit_tiny\)"):
        load_backbone(tmp_path / "w.pth")


@pytest.mark.parametrize(("arch", "expected"), [("vit_pico", None), ("vit_tiny", "vit_tiny_patch16_224")])
def test_export_names_only_timm_models_that_exist(tmp_path, arch, expected):
    model = build_vit(arch, patch_size=16, img_size=32, normalizer="softmax")
    torch.save(model.state_dict(), tmp_path / "in.pth")
    export_backbone(tmp_path / "in.pth", tmp_path / "out.pth")
    name = json.loads((tmp_path / "out.pth.json").read_text())["timm_model"]
    assert name == expected  # timm has no vit_pico: no made-up name
    assert name is None or timm.is_model(name)
