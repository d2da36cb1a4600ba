"""`sparsedino diagnose` on a DINOv3 timm state dict and on transformers DINOv2 folders (random weights, saved
here): registers reported apart from patches, against the models' own tokens.

Recording their maps needs ``sparsify`` to convert timm's ``EvaAttention`` and transformers' attention.
"""

from __future__ import annotations

import json

import pytest
import torch

from sparsedino.config import load_config
from sparsedino.diagnose.batches import ResizeCollate
from sparsedino.diagnose.command import main
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.diagnose.settings import DiagnoseConfig
from sparsedino.models import load_backbone
from sparsedino.models.hf_backbone import HFBackbone
from sparsedino.models.hf_config import HF_FAMILIES

from ..backbones import write_hf, write_timm

transformers = pytest.importorskip("transformers")


def _hf_model(kind: str) -> HFBackbone:
    from ..backbones import hf_config

    return HFBackbone(
        transformers.AutoModel.from_config(hf_config(kind)), HF_FAMILIES[kind], (0.5,) * 3, (0.5,) * 3
    )


OPTIONS = [
    "batch_size=8",
    "n_images=8",
    "n_figure_images=2",
    "label_probe_iterations=10",
    "dense_probe.enabled=false",
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from sparsedino.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, n_train=2, n_val=8, size=32, num_classes=3)
    return root


def _check_cli(spec: str, data, out, img_size: int, registers: int) -> dict:
    argv = ["--checkpoint", spec, "--data", str(data), "--out", str(out), f"img_size={img_size}", *OPTIONS]
    assert main([*argv, "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["spec"] == spec and metrics["data"]["num_registers"] == registers
    report = (out / "report.md").read_text()
    assert "## Register tokens" in report
    for scores in metrics["blocks"].values():
        if registers:
            assert (
                0 < scores["reg.mass_from_patches"] < 1 and len(scores["reg.norm_per_register"]) == registers
            )
            assert all(f"register {r}: norm" in report for r in range(registers))
        else:
            assert scores["reg.norm"] is None and "The model has no register tokens." in report
    return metrics


def test_dinov3_timm_state_dict(tmp_path, synthetic_root, squares):
    reference, spec = write_timm("vit_small_patch16_dinov3", tmp_path, "original", ".pth")
    _check_cli(spec, synthetic_root, tmp_path / "diag", 64, 4)
    model, _ = load_backbone(spec, attention_maps=True)
    result = run_diagnostics(model, squares, None, load_config(DiagnoseConfig, None, ["img_size=64", *OPTIONS]),
                             progress=False)  # fmt: skip
    images, _ = ResizeCollate(64)([squares[i] for i in range(8)])
    with torch.no_grad():
        inter = reference.forward_intermediates(images, indices=[0, 1], return_prefix_tokens=True,
                                                output_fmt="NLC", intermediates_only=True)  # fmt: skip
    for block, (patches, prefix) in zip(("0", "1"), inter):
        scores = result["blocks"][block]
        assert scores["norm.median"] == pytest.approx(float(patches.norm(dim=-1).median()), rel=1e-4)
        assert scores["reg.norm"] == pytest.approx(float(prefix[:, 1:].norm(dim=-1).mean()), rel=1e-4)


@pytest.mark.parametrize(("kind", "registers"), [("dinov2_with_registers", 4), ("dinov2", 0)])
def test_transformers_dinov2_folder(tmp_path, synthetic_root, squares, kind, registers):
    reference, spec = write_hf(kind, tmp_path / "hf")
    _check_cli(spec, synthetic_root, tmp_path / "diag", 56, registers)
    model, _ = load_backbone(spec, attention_maps=True)
    result = run_diagnostics(model, squares, None, load_config(DiagnoseConfig, None, ["img_size=56", *OPTIONS]),
                             progress=False)  # fmt: skip
    images, _ = ResizeCollate(56)([squares[i] for i in range(8)])
    with torch.no_grad():
        hidden = reference(pixel_values=images, output_hidden_states=True).hidden_states
    prefix = 1 + registers
    for block in ("0", "1"):
        tokens = hidden[int(block) + 1]
        scores = result["blocks"][block]
        assert scores["norm.median"] == pytest.approx(
            float(tokens[:, prefix:].norm(dim=-1).median()), rel=1e-4
        )
        if registers:
            assert scores["reg.norm"] == pytest.approx(
                float(tokens[:, 1:prefix].norm(dim=-1).mean()), rel=1e-4
            )
