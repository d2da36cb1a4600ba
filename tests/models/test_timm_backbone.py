"""``timm:NAME:FILE`` backbones: the loaded model reproduces the saved one exactly, whether the file is in
timm's layout or the original release's (converted by timm's own filter), and a file that does not fit is
one line naming the keys and shapes."""

from __future__ import annotations

import json

import entmax
import pytest
import torch

from sparsedino.attention import SparseAttention, collect_attention
from sparsedino.models import CheckpointError, load_backbone

from ..backbones import TIMM_TINY, timm_spec, write_timm


def _inputs(name: str) -> torch.Tensor:
    size = TIMM_TINY[name]["img_size"]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(TIMM_TINY))
@pytest.mark.parametrize(("layout", "suffix"), [("timm", ".safetensors"), ("original", ".pth")])
def test_loading_reproduces_the_models_own_outputs(tmp_path, name, layout, suffix):
    reference, spec = write_timm(name, tmp_path, layout, suffix)
    model, info = load_backbone(spec)
    x = _inputs(name)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), reference.forward_features(x))
        ours = model.forward_intermediates(
            x, indices=[0, 1], return_prefix_tokens=True, intermediates_only=True
        )
        theirs = reference.forward_intermediates(
            x, indices=[0, 1], return_prefix_tokens=True, intermediates_only=True
        )
    assert all(torch.equal(a, b) for pair_a, pair_b in zip(ours, theirs) for a, b in zip(pair_a, pair_b))
    assert (info.source, info.arch, info.normalizer, info.depth, info.embed_dim) == (
        "timm",
        name,
        "softmax",
        2,
        64,
    )
    assert info.num_registers == (0 if name == "vit_small_patch14_dinov2" else 4)
    assert info.spec == spec and len(info.sha256) == 16
    assert model.dynamic_img_size  # the protocols' windows and frames vary in size


def test_a_normaliser_converts_the_attention(tmp_path):
    reference, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path)
    x = _inputs("vit_small_patch14_reg4_dinov2")
    softmax, info = load_backbone(spec, normalizer="softmax")
    assert info.normalizer == "softmax" and any(isinstance(m, SparseAttention) for m in softmax.modules())
    sparse_model, info = load_backbone(spec, normalizer="entmax-1.5")
    assert info.normalizer == "entmax15"
    with torch.no_grad():
        torch.testing.assert_close(
            softmax.forward_features(x), reference.forward_features(x), rtol=1e-5, atol=1e-5
        )
        for model in (sparse_model, softmax):  # random weights attend almost uniformly: sharpen the scores
            model.blocks[0].attn.qkv.weight.mul_(5)
        with collect_attention(sparse_model) as sparse, collect_attention(softmax) as dense:
            sparse_model(x), softmax(x)
    assert len(sparse) == len(dense) == 2  # both blocks, (B, H, N, N) with N = 5 prefix + 16 patches
    assert sparse[0].shape == (2, 2, 21, 21) and (sparse[0] == 0).any() and not (dense[0] == 0).any()
    # the same scores through the entmax package: log softmax = scores - a per-row constant
    torch.testing.assert_close(
        sparse[0], entmax.entmax15(dense[0].double().log(), dim=-1).float(), atol=1e-5, rtol=0
    )
    maps, _ = load_backbone(spec, attention_maps=True)  # maps need our attention modules, softmax kept
    assert all(m.normalizer == "softmax" for m in maps.modules() if isinstance(m, SparseAttention))


def test_a_classifier_head_in_the_file_is_dropped(tmp_path):
    from safetensors.torch import load_file, save_file

    reference, spec = write_timm("vit_small_patch14_dinov2", tmp_path)
    path = spec.rsplit(":", 1)[1]
    state = load_file(path)
    state |= {"head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    save_file(state, path)
    model, _ = load_backbone(spec)
    x = _inputs("vit_small_patch14_dinov2")
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), reference.forward_features(x))


def test_weights_that_do_not_fit_name_keys_and_shapes(tmp_path):
    _, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path)
    path = spec.rsplit(":", 1)[1]
    with pytest.raises(CheckpointError) as err:  # registers in the file, none in the model
        load_backbone(timm_spec("vit_small_patch14_dinov2", path))
    assert "unexpected keys (1): reg_token" in str(err.value)
    assert "pos_embed: file (1, 16, 64) vs model (1, 17, 64)" in str(err.value)
    deeper = spec.replace("depth=2", "depth=3")
    with pytest.raises(CheckpointError, match=r"missing keys \(14\): blocks\.2\.norm1\.weight"):
        load_backbone(deeper)
    wider = spec.replace("embed_dim=64", "embed_dim=128")
    with pytest.raises(
        CheckpointError, match=r"shapes differ .*cls_token: file \(1, 1, 64\) vs model \(1, 1, 128\)"
    ):
        load_backbone(wider)


def test_the_filter_may_rename_but_not_resample(tmp_path):
    _, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path, "original", ".pth")
    with pytest.raises(CheckpointError) as err:  # timm would interpolate the 4x4 grid to 8x8
        load_backbone(spec.replace("img_size=56", "img_size=112"))
    assert "pos_embed: file (1, 17, 64) vs model (1, 64, 64)" in str(err.value) and "img_size=" in str(
        err.value
    )


def test_model_arguments_and_families_timm_rejects(tmp_path):
    _, spec = write_timm("vit_small_patch14_reg4_dinov2", tmp_path)
    path = spec.rsplit(":", 1)[1]
    with pytest.raises(CheckpointError, match="unexpected keyword argument 'bogus'"):
        load_backbone(spec.replace("depth=2", "depth=2,bogus=1"))
    with pytest.raises(CheckpointError, match="ResNet is not a ViT backbone"):
        load_backbone(f"timm:resnet18:{path}")
    with pytest.raises(CheckpointError, match="for checkpoint files"):
        load_backbone(spec, arch="vit_small")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_backbone(f"timm:vit_small_patch14_dinov2:{garbage}")


def test_export_writes_timm_layout_and_says_how_to_read_it_back(tmp_path, capsys):
    from safetensors import safe_open

    from sparsedino.config import ConfigError
    from sparsedino.models.export import export_backbone, main

    reference, spec = write_timm("vit_small_patch16_dinov3", tmp_path, "original", ".pth")
    out = tmp_path / "export.safetensors"
    assert main([spec, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().rsplit("--checkpoint ", 1)[1]
    assert printed == spec.rsplit(":", 1)[0] + f":{out}"
    with safe_open(str(out), framework="pt") as handle:  # timm's own key names, our metadata
        keys, meta = set(handle.keys()), json.loads(handle.metadata()["sparsedino"])
    assert "reg_token" in keys and "storage_tokens" not in keys and "blocks.0.gamma_1" in keys
    assert meta["timm_model"] == "vit_small_patch16_dinov3" and meta["timm_kwargs"]["embed_dim"] == 64
    assert meta["exported_from"] == spec
    model, _ = load_backbone(printed)
    x = _inputs("vit_small_patch16_dinov3")
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), reference.forward_features(x))
    with pytest.raises(
        CheckpointError, match="read it as --checkpoint timm:vit_small_patch16_dinov3,depth=2"
    ):
        load_backbone(out)  # a bare FILE means our architectures: the error gives the spec instead
    with pytest.raises(ConfigError, match="--format dino"):
        export_backbone(spec, tmp_path / "dino.pth", fmt="dino")
