"""Register tokens in the diagnostics: their scores against direct formulas, the runner against timm's own
tokens (registers out of the patch scores), and `sparsedino diagnose` with a DINOv2-reg4 timm file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from sparsedino.config import load_config
from sparsedino.diagnose.batches import ResizeCollate
from sparsedino.diagnose.command import main
from sparsedino.diagnose.registers import register_scores
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.diagnose.settings import DiagnoseConfig
from sparsedino.models import TokenLayout, load_backbone

from ..backbones import timm_spec, write_timm

OPTIONS = ["img_size=56", "batch_size=8", "n_images=8", "n_figure_images=2", "label_probe_iterations=10",
           "dense_probe.enabled=false"]  # fmt: skip


def test_register_scores_follow_their_definitions():
    torch.manual_seed(0)
    layout = TokenLayout((8, 8), 1, num_prefix_tokens=3, num_registers=2, has_class_token=True,
                         mean=(0.5,) * 3, std=(0.5,) * 3)  # fmt: skip
    prefix = torch.randn(2, 3, 4)  # [CLS], register 0, register 1
    patch_norms = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    attn = torch.rand(2, 2, 8, 8)
    attn[0, 0, 5] = torch.tensor([0, 0.5, 0.5, 0, 0, 0, 0, 0])  # a patch query attending registers only
    attn = attn / attn.sum(-1, keepdim=True)
    s = register_scores(prefix, patch_norms, attn, layout)
    norms = prefix[:, 1:3].norm(dim=-1)
    assert torch.allclose(s["reg.norm"], norms.mean(1))
    assert torch.allclose(
        s["reg.norm_over_patch_median"], torch.stack([norms[0].mean() / 3, norms[1].mean() / 2])
    )
    mass = [
        sum(float(attn[b, h, q, 1] + attn[b, h, q, 2]) for h in range(2) for q in range(3, 8)) / 10
        for b in (0, 1)
    ]
    assert torch.allclose(s["reg.mass_from_patches"], torch.tensor(mass))
    assert torch.allclose(s["reg.mass_from_cls"], attn[:, :, 0, 1:3].sum(-1).mean(1))
    assert torch.allclose(s["reg.mass_chance"], torch.full((2,), 2 / 8))
    rows = attn[:, :, 1:3]
    entropy = -(rows * rows.log()).sum(-1).mean((1, 2))
    assert torch.allclose(s["reg.entropy"], entropy) and torch.allclose(
        s["reg.support"], torch.full((2,), 8.0)
    )
    assert torch.allclose(s["reg.mass_on_patches"], rows[..., 3:].sum(-1).mean((1, 2)))
    assert s["per_register_norm"].shape == (2, 2)


def test_runner_keeps_registers_out_of_the_patch_scores(tmp_path, squares):
    reference, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path)
    model, _ = load_backbone(spec, attention_maps=True)
    cfg = load_config(DiagnoseConfig, None, OPTIONS)
    result = run_diagnostics(model, squares, None, cfg, progress=False)
    images, _ = ResizeCollate(56)([squares[i] for i in range(8)])
    with torch.no_grad():  # timm's own tokens (the reference model has timm's attention)
        inter = reference.forward_intermediates(images, indices=[0, 1], return_prefix_tokens=True,
                                                output_fmt="NLC", intermediates_only=True)  # fmt: skip
    assert result["data"]["num_registers"] == 4 and result["data"]["num_prefix_tokens"] == 5
    for block, (patches, prefix) in zip(("0", "1"), inter):
        scores = result["blocks"][block]
        assert patches.shape[1] == 16  # the 4 x 4 grid, registers apart
        assert scores["norm.median"] == pytest.approx(float(patches.norm(dim=-1).median()), rel=1e-5)
        assert scores["reg.norm"] == pytest.approx(float(prefix[:, 1:].norm(dim=-1).mean()), rel=1e-5)
        per_register = prefix[:, 1:].norm(dim=-1).mean(0).tolist()
        assert scores["reg.norm_per_register"] == pytest.approx(per_register, rel=1e-5)
        assert scores["reg.mass_chance"] == pytest.approx(4 / 21)
        assert 0 < scores["reg.mass_from_patches"] < 1 and 0 < scores["reg.mass_on_patches"] < 1
        assert 0 < scores["reg.entropy"] <= math.log(21) + 1e-6 and scores["reg.support"] == 21  # softmax


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from sparsedino.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, n_train=2, n_val=8, size=32, num_classes=3)
    return root


def _diagnose(spec: str, data, out, *extra) -> dict:
    assert (
        main(
            ["--checkpoint", spec, "--data", str(data), "--out", str(out), *OPTIONS, "--no-progress", *extra]
        )
        == 0
    )
    return json.loads((out / "metrics.json").read_text())


def test_cli_reports_registers_apart_from_patches(tmp_path, synthetic_root):
    _, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path)
    metrics = _diagnose(spec, synthetic_root, tmp_path / "diag")
    assert metrics["model"]["spec"] == spec and metrics["model"]["source"] == "timm"
    assert metrics["data"]["num_registers"] == 4 and metrics["data"]["image_mean"] == [0.485, 0.456, 0.406]
    for scores in metrics["blocks"].values():
        assert isinstance(scores["reg.norm"], float) and len(scores["reg.norm_per_register"]) == 4
    report = (tmp_path / "diag" / "report.md").read_text()
    scores_part, register_part = report.split("## Register tokens", 1)
    assert "register" not in scores_part.split("## Scores per block", 1)[1].lower()
    assert "registers: register norm" in register_part and "patches: median patch norm" in register_part
    assert all(f"register {r}: norm" in register_part for r in range(4))
    assert "Register tokens" in (tmp_path / "diag" / "report.html").read_text()
    assert "figures/curves_registers.png" in metrics["figures"]


def test_a_model_without_registers_says_so(tmp_path, synthetic_root):
    _, spec = write_timm("vit_small_patch14_dinov2", tmp_path)
    metrics = _diagnose(spec, synthetic_root, tmp_path / "diag")
    assert metrics["data"]["num_registers"] == 0 and metrics["blocks"]["0"]["reg.norm"] is None
    assert "The model has no register tokens." in (tmp_path / "diag" / "report.md").read_text()


def test_images_are_normalised_with_the_models_statistics(tmp_path, synthetic_root, monkeypatch):
    import sparsedino.diagnose.command as command

    model = timm.create_model("vit_small_patch16_224.augreg_in21k", pretrained=False, depth=1, embed_dim=32,
                              num_heads=2, img_size=32, num_classes=0)  # fmt: skip
    path = tmp_path / "augreg.safetensors"
    save_file(model.state_dict(), path)
    seen = []

    def spy(model, dataset, *args, **kwargs):
        image, _ = dataset[0]
        raw, _ = dataset.load_raw(0)
        pixels = torch.from_numpy(np.array(raw)).permute(2, 0, 1).float() / 255
        seen.append(torch.allclose(image, (pixels - 0.5) / 0.5, atol=1e-6))
        return real(model, dataset, *args, **kwargs)

    real = command.run_diagnostics
    monkeypatch.setattr(command, "run_diagnostics", spy)
    spec = f"timm:vit_small_patch16_224.augreg_in21k,depth=1,embed_dim=32,num_heads=2,img_size=32:{path}"
    metrics = _diagnose(spec, synthetic_root, tmp_path / "diag", "img_size=32")
    assert seen == [True] and metrics["data"]["image_mean"] == [0.5, 0.5, 0.5]


def test_a_timm_glob_is_diagnosed_over_training(tmp_path, synthetic_root):
    for epoch in (1, 2):
        _, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path, seed=epoch)
        (tmp_path / "vit_small_patch14_reg4_dinov2-timm.safetensors").rename(
            tmp_path / f"ep{epoch}.safetensors"
        )
    out = tmp_path / "diag"
    spec = timm_spec("vit_small_patch14_reg4_dinov2", tmp_path / "ep*.safetensors")
    assert (
        main(
            [
                "--checkpoint",
                spec,
                "--data",
                str(synthetic_root),
                "--out",
                str(out),
                *OPTIONS,
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "over_training.json").read_text())
    assert summary["epochs"] == [1, 2] and [p[0] for p in summary["series"]["reg.norm"]["1"]] == [1, 2]


def test_bad_specs_fail_before_any_work(tmp_path, synthetic_root, capsys):
    _, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path)
    out = tmp_path / "diag"
    base = ["--data", str(synthetic_root), "--out", str(out), *OPTIONS]
    assert main(["--checkpoint", spec.replace("depth=2", "depth=3"), *base]) == 2
    assert "missing keys (14)" in capsys.readouterr().err
    assert main(["--checkpoint", spec, *base, "img_size=50"]) == 2  # not a multiple of 14
    assert "img_size=50" in capsys.readouterr().err
    assert main(["--checkpoint", f"hf:{tmp_path}", *base]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
