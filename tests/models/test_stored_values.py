"""Issue 24: every value a checkpoint stores is checked when it is read (metadata, tensor shapes, the
resume position, finite weights), with an error naming the file and the value."""

from __future__ import annotations

import pytest
import torch

from sparsedino.models import CheckpointError, build_vit, load_backbone
from sparsedino.models.stored import check_finite_tensors, check_position


def _backbone_checkpoint(path, **meta):
    backbone = build_vit("vit_pico", patch_size=8, img_size=32, normalizer="entmax15")
    stored = {"arch": "vit_pico", "patch_size": 8, "normalizer": "entmax15", **meta}
    torch.save({"teacher": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "sparsedino": stored},
               path)  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("attn_scale", float("inf")),
        ("attn_scale", float("nan")),
        ("attn_scale", 0.0),
        ("attn_scale", -0.5),
        ("attn_scale", True),
        ("attn_scale", "0.5"),
        ("num_heads", True),  # a bool is an int to Python: this built a 1-head model
        ("num_heads", 0),
        ("num_heads", -3),
        ("num_heads", 1.5),
        ("patch_size", 0),
        ("patch_size", 16),  # contradicts the 8-px patch weights
        ("num_registers", -1),
        ("epoch", -1),
        ("learn_alpha", "yes"),
    ],
)
def test_stored_metadata_is_checked_naming_the_key(tmp_path, key, value):
    path = _backbone_checkpoint(tmp_path / "ckpt.pth", **{key: value})
    with pytest.raises(CheckpointError, match=rf"ckpt\.pth.*stored {key} "):
        load_backbone(path)


def test_valid_stored_metadata_still_loads(tmp_path):
    path = _backbone_checkpoint(tmp_path / "ckpt.pth", attn_scale=0.25, num_heads=3, epoch=0, num_registers=0)
    model, info = load_backbone(path)
    assert info.num_heads == 3 and all(block.attn.scale == 0.25 for block in model.blocks)


def test_pos_embed_without_patch_positions_is_refused(tmp_path):
    state = build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax").state_dict()
    state["pos_embed"] = state["pos_embed"][:, :1]  # only the [CLS] position
    torch.save(state, tmp_path / "cls_only.pth")
    with pytest.raises(CheckpointError, match="holds no patch positions"):
        load_backbone(tmp_path / "cls_only.pth")


def test_zero_patch_size_weights_are_refused(tmp_path):
    state = build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax").state_dict()
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][..., :0, :0]
    torch.save(state, tmp_path / "p0.pth")
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight"):
        load_backbone(tmp_path / "p0.pth")


@pytest.mark.parametrize(
    ("key", "value"), [("global_step", -5), ("epoch", -1), ("iteration", 1.5), ("skipped_images", True)]
)
def test_a_resume_position_must_be_a_whole_number_at_least_zero(key, value, tmp_path):
    with pytest.raises(CheckpointError, match=rf"cannot resume.*stored {key}"):
        check_position({"epoch": 2, "iteration": 0, "global_step": 10, key: value}, tmp_path / "c.pth")
    assert check_position({"epoch": 2, "global_step": 10}, tmp_path / "c.pth") == {
        "epoch": 2, "iteration": 0, "global_step": 10, "skipped_images": 0}  # fmt: skip


def test_non_finite_optimizer_state_is_named(tmp_path):
    state = {"state": {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}}
    with pytest.raises(CheckpointError, match=r"'optimizer\.state\.0\.exp_avg' holds 1 NaN/inf"):
        check_finite_tensors(state, tmp_path / "c.pth", "optimizer")
