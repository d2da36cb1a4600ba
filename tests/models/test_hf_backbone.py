"""``hf:FOLDER`` backbones: the adapter gives transformers' own tokens through timm's interface, with the
prefix ([CLS], registers, DeiT's distillation token) split off, and image statistics from the folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sparsedino.config import ConfigError
from sparsedino.models import CheckpointError, load_backbone, token_layout
from sparsedino.models.export import export_backbone

from ..backbones import hf_config, write_hf

pytest.importorskip("transformers")

# model type -> (prefix tokens, registers, image mean without a preprocessor_config.json)
FAMILIES = {
    "vit": (1, 0, (0.5, 0.5, 0.5)),
    "deit": (2, 0, (0.485, 0.456, 0.406)),
    "dinov2": (1, 0, (0.485, 0.456, 0.406)),
    "dinov2_with_registers": (5, 4, (0.485, 0.456, 0.406)),
    "dinov3_vit": (5, 4, (0.485, 0.456, 0.406)),
}


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_adapter_reproduces_the_models_hidden_states(tmp_path, kind):
    reference, spec = write_hf(kind, tmp_path / kind)
    model, info = load_backbone(spec)
    prefix, registers, mean = FAMILIES[kind]
    layout = token_layout(model)
    assert (layout.num_prefix_tokens, layout.num_registers, layout.mean, layout.depth) == (
        prefix,
        registers,
        mean,
        2,
    )
    assert (info.source, info.arch, info.num_registers, info.spec) == ("transformers", kind, registers, spec)
    patch = layout.patch_size[0]
    x = torch.randn(2, 3, 4 * patch, 3 * patch)  # not the config's image size: positions are interpolated
    extra = {"interpolate_pos_encoding": True} if kind in ("vit", "deit") else {}
    with torch.no_grad():
        ref = reference(pixel_values=x, output_hidden_states=True, **extra)
        raw = model.forward_intermediates(x, indices=[0, -1], return_prefix_tokens=True, output_fmt="NLC",
                                          intermediates_only=True)  # fmt: skip
        normed = model.forward_intermediates(
            x, indices=2, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        final, _ = model.forward_intermediates(x, indices=[1])
        features = model.forward_features(x)
    for (patches, prefix_tokens), hidden in zip(raw, (ref.hidden_states[1], ref.hidden_states[2])):
        assert torch.equal(prefix_tokens, hidden[:, :prefix]) and torch.equal(patches, hidden[:, prefix:])
    last = ref.last_hidden_state  # transformers' final LayerNorm on the last block
    assert normed[1].shape == (2, 32, 4, 3) and torch.equal(
        normed[1].flatten(2).transpose(1, 2), last[:, prefix:]
    )
    assert torch.equal(final, last) and torch.equal(features, last)
    assert torch.equal(model(x), last[:, 0])


def test_preprocessor_config_sets_the_image_statistics(tmp_path):
    stats = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    _, spec = write_hf("dinov2", tmp_path / "m", preprocessor=stats)
    layout = token_layout(load_backbone(spec)[0])
    assert (layout.mean, layout.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)) and not layout.imagenet_stats
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2]}))
    with pytest.raises(CheckpointError, match="image_mean must be 3 numbers"):
        load_backbone(spec)


def test_folders_whose_weights_do_not_fit_are_named(tmp_path):
    _, spec = write_hf("dinov2_with_registers", tmp_path / "m")
    deeper = hf_config("dinov2_with_registers")
    deeper.num_hidden_layers = 3
    deeper.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): encoder\.layer\.2\."):
        load_backbone(spec)
    wider = hf_config("dinov2_with_registers")
    wider.mlp_ratio = 4
    wider.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"shapes differ .*mlp\.fc1\.\w+: file \(64.*\) vs model \(128"):
        load_backbone(spec)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="transformers cannot load it"):
        load_backbone(spec)


def test_export_refuses_a_transformers_folder(tmp_path):
    _, spec = write_hf("dinov2", tmp_path / "m")
    with pytest.raises(ConfigError, match="already a saved model"):
        export_backbone(spec, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_core_package_imports_without_transformers(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['transformers'] = None\n"  # importing transformers now fails
            "import sparsedino.models, sparsedino.eval.command, sparsedino.diagnose.command\n"
            "from sparsedino.models import load_backbone\n"
            f"try: load_backbone('hf:{tmp_path}')\n"
            "except Exception as err: print(type(err).__name__, err)\n")  # fmt: skip
    shutil.copy(hf_config_file(tmp_path), tmp_path / "config.json")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "CheckpointError" in out and "needs transformers installed" in out


def hf_config_file(tmp_path):
    hf_config("dinov2").save_pretrained(tmp_path / "cfg")
    return tmp_path / "cfg" / "config.json"
