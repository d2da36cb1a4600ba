"""Backbone specs: every spelling parses to one typed value, bad ones are one line naming the problem, and
the token layout (patch size, prefix tokens, registers, image statistics) is read from the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sparsedino.models import BackboneSpec, CheckpointError, build_vit, parse_backbone_spec, token_layout

from ..backbones import tiny_timm


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"not read by the parser")
    return path


def test_each_spelling_parses_to_its_kind_and_back(tmp_path, weights):
    assert parse_backbone_spec("ckpt.pth") == BackboneSpec("checkpoint", Path("ckpt.pth"))
    assert parse_backbone_spec(Path("timm:odd.pth")).kind == "checkpoint"  # a Path is always a file
    spec = parse_backbone_spec(
        f"timm:vit_small_patch14_reg4_dinov2,depth=2,init_values=1e-5,flag=true:{weights}"
    )
    assert spec.kind == "timm" and spec.timm_name == "vit_small_patch14_reg4_dinov2" and spec.path == weights
    assert spec.timm_kwargs == (("depth", 2), ("init_values", 1e-5), ("flag", True))
    assert parse_backbone_spec(str(spec)) == spec and parse_backbone_spec(spec) is spec
    tagged = parse_backbone_spec(f"timm:vit_small_patch16_dinov3.lvd1689m:{weights}")
    assert tagged.timm_name == "vit_small_patch16_dinov3.lvd1689m" and tagged.timm_kwargs == ()
    colon = tmp_path / "a:b"
    colon.mkdir()
    (colon / "w.pth").write_bytes(b"x")
    assert parse_backbone_spec(f"timm:vit_small_patch16_224:{colon}/w.pth").path == colon / "w.pth"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov2_with_registers"}))
    hf = parse_backbone_spec(f"hf:{folder}")
    assert hf == BackboneSpec("hf", folder) and parse_backbone_spec(str(hf)) == hf


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("timm:vit_smal_patch14_reg4_dinov2:{w}", "closest: vit_small_patch14_reg4_dinov2"),
        ("timm:vit_small_patch14_dinov2.nope:{w}", "known: vit_small_patch14_dinov2.lvd142m"),
        ("timm:vit_small_patch14_dinov2", "needs its weights file"),
        ("timm:vit_small_patch14_dinov2:{w}.missing.pth", "does not exist"),
        ("timm:vit_small_patch14_dinov2:{w}.npz", "must end with"),
        ("timm:vit_small_patch14_dinov2,pretrained=true:{w}", "'pretrained' is not allowed"),
        ("timm:vit_small_patch14_dinov2,checkpoint_path=x:{w}", "'checkpoint_path' is not allowed"),
        ("timm:vit_small_patch14_dinov2,depth:{w}", "not a key=value"),
        ("hf:{tmp}/nowhere", "is not a folder"),
        ("hf:{tmp}/empty", "has no config.json"),
        ("hf:{tmp}/bert", "model type 'bert' is not a ViT-like encoder"),
        ("hf:{tmp}/broken", "is not valid JSON"),
        ("{tmp}/bert", "write hf:"),
    ],
)
def test_bad_specs_are_one_line_naming_the_problem(tmp_path, weights, text, expected):
    for name, config in (("empty", None), ("bert", '{"model_type": "bert"}'), ("broken", "{")):
        (tmp_path / name).mkdir()
        if config is not None:
            (tmp_path / name / "config.json").write_text(config)
    text = text.format(w=weights, tmp=tmp_path)
    with pytest.raises(CheckpointError) as err:
        parse_backbone_spec(text, "--checkpoint")
    message = str(err.value)
    assert expected in message and "\n" not in message and message.startswith("--checkpoint")


def test_layout_of_our_vits_timm_families_and_other_statistics():
    ours = token_layout(build_vit("vit_pico", patch_size=8, img_size=32, num_registers=2))
    assert (ours.patch_size, ours.depth, ours.num_prefix_tokens, ours.num_registers) == ((8, 8), 3, 3, 2)
    assert ours.has_class_token and ours.imagenet_stats and ours.register_slice == slice(1, 3)
    reg4 = token_layout(tiny_timm("vit_small_patch14_reg4_dinov2"))
    assert (reg4.patch_size, reg4.num_prefix_tokens, reg4.num_registers, reg4.has_class_token) == (
        (14, 14),
        5,
        4,
        True,
    )
    dinov3 = tiny_timm("vit_small_patch16_dinov3")  # timm Eva: no has_class_token / num_reg_tokens attributes
    layout = token_layout(dinov3)
    assert (layout.patch_size, layout.num_prefix_tokens, layout.num_registers) == ((16, 16), 5, 4)
    assert layout.has_class_token and (layout.mean, layout.std) == (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
    )
    no_cls = timm.create_model("vit_medium_patch16_rope_reg1_gap_256", pretrained=False, depth=1, embed_dim=64,
                               num_heads=2, img_size=32)  # fmt: skip
    layout = token_layout(no_cls)
    assert not layout.has_class_token and layout.num_prefix_tokens == layout.num_registers == 1
    siglip = token_layout(timm.create_model("vit_small_patch16_224.augreg_in21k", pretrained=False, depth=1))
    assert siglip.mean == (0.5, 0.5, 0.5) and not siglip.imagenet_stats
    with pytest.raises(TypeError, match="ResNet is not a ViT backbone"):
        token_layout(timm.create_model("resnet18", pretrained=False))


def test_a_vit_without_prefix_tokens_has_an_empty_register_slice():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1, class_token=False,
                              global_pool="avg", img_size=32)  # fmt: skip
    layout = token_layout(model)
    assert layout.num_prefix_tokens == 0 and not layout.has_class_token
    assert torch.arange(5)[layout.register_slice].numel() == 0
