"""Gram anchoring: the loss against a direct computation, its gradient, the schedules, the crops, a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sparsedino.config import ConfigError
from sparsedino.data.multicrop import MultiCropAugmentation
from sparsedino.models import DINOHead, MultiCropWrapper, build_vit
from sparsedino.train import load_train_config, run_training
from sparsedino.train.gram import GramAnchor, gram_loss, gram_weights, resize_patches


def _direct(student, teacher, normalized=True, img_level=True, remove_neg=False, only_teacher=False):
    """The definition entry by entry in float64: mean over every (i, j) of (<s_i, s_j> - <t_i, t_j>)^2."""
    s, t = student.double(), teacher.double()
    if not img_level:
        s, t = s.reshape(1, -1, s.shape[-1]), t.reshape(1, -1, t.shape[-1])
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            for j in range(s.shape[1]):
                si, sj, ti, tj = s[b, i], s[b, j], t[b, i], t[b, j]
                gs, gt = float(si @ sj), float(ti @ tj)
                if normalized:
                    gs /= float(si.norm() * sj.norm())
                    gt /= float(ti.norm() * tj.norm())
                if remove_neg or only_teacher:
                    gt = max(gt, 0.0)
                if remove_neg:
                    gs = max(gs, 0.0)
                total, count = total + (gs - gt) ** 2, count + 1
    return total / count


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"img_level": False},
        {"normalized": False},
        {"remove_neg": True},
        {"remove_only_teacher_neg": True},
    ],
)
def test_gram_loss_equals_the_direct_computation(options):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    direct = _direct(student, teacher, options.get("normalized", True), options.get("img_level", True),
                     options.get("remove_neg", False), options.get("remove_only_teacher_neg", False))  # fmt: skip
    assert float(gram_loss(student.double(), teacher.double(), **options)) == pytest.approx(direct, rel=1e-12)
    assert float(gram_loss(student, teacher, **options)) == pytest.approx(direct, rel=1e-5)  # float32


@pytest.mark.parametrize("img_level", [True, False])
def test_gram_loss_gradient_passes_gradcheck_in_float64(img_level):
    torch.manual_seed(1)
    student = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: gram_loss(s, teacher, img_level=img_level), (student,))
    assert float(gram_loss(teacher, teacher)) == 0.0  # anchored exactly: no loss


def test_weight_schedule_starts_at_zero_and_ramps_to_the_weight():
    w = gram_weights(2.0, start_epoch=1, ramp_epochs=2, epochs=5, iters_per_epoch=3)
    assert len(w) == 15 and not w[:4].any()  # 0 before the start (and at its first iteration)
    assert (np.diff(w) >= 0).all() and w[8] == 2.0 and (w[9:] == 2.0).all()
    ramp = 2.0 * (1 - (torch.cos(torch.linspace(0, math.pi, 6, dtype=torch.float64)) + 1) / 2)
    torch.testing.assert_close(torch.from_numpy(w[3:9]), ramp)  # DINOv3's cosine from 0
    assert (gram_weights(2.0, 0, 0, 2, 3) == 2.0).all()  # no ramp: the full weight at once


def test_gram_teacher_syncs_at_the_start_then_every_n_epochs_at_most_max_updates(
    image_root, tmp_path, tiny_overrides
):
    cfg = load_train_config("dino_cpu_tiny", tiny_overrides(image_root, tmp_path, "optim.epochs=9", "gram.enabled=true",
                            "gram.start_epoch=1", "gram.update_every_epochs=2", "gram.max_updates=2"))  # fmt: skip
    teacher = build_vit("vit_pico", patch_size=8, img_size=32)
    anchor = GramAnchor(cfg, teacher, iters_per_epoch=4)
    synced = []
    for epoch in range(9):
        with torch.no_grad():
            teacher.pos_embed.fill_(epoch)  # the EMA teacher moves on every epoch
        if anchor.maybe_sync(epoch, teacher, anchor.normalizer):
            synced.append(epoch)
        assert anchor.maybe_sync(epoch, teacher, anchor.normalizer) is False  # once per epoch
    assert synced == [1, 3, 5] and anchor.updates == 2
    assert (anchor.backbone.pos_embed == 5).all() and not anchor.backbone.pos_embed.requires_grad
    state = anchor.state_dict()
    again = GramAnchor(cfg, build_vit("vit_pico", patch_size=8, img_size=32), 4)
    again.load_state_dict(state)
    assert (again.synced_epoch, again.updates, again.initialised) == (5, 2, True)
    assert torch.equal(again.backbone.pos_embed, anchor.backbone.pos_embed)


def test_patch_tokens_come_from_the_same_forward_and_teacher_features_are_resized():
    torch.manual_seed(0)
    net = MultiCropWrapper(
        build_vit("vit_pico", patch_size=8, img_size=32, num_registers=2), DINOHead(48, 16)
    ).eval()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        out, patches = net(crops, patches_of=2)
        assert torch.equal(out, net(crops))  # the DINO output is unchanged
        tokens = net.backbone.forward_features(torch.cat(crops[:2]))
        assert torch.equal(patches, tokens[:, 3:])  # after the final norm, [CLS] and registers dropped
    grid = torch.randn(2, 36, 5)
    assert resize_patches(grid, 6) is grid and resize_patches(grid, 4).shape == (2, 16, 5)
    constant = torch.ones(1, 36, 3)
    torch.testing.assert_close(resize_patches(constant, 4), torch.ones(1, 16, 3))


def test_gram_crops_are_the_global_crops_at_the_teacher_size():
    image = Image.new("RGB", (40, 40), (120, 30, 200))
    augment = MultiCropAugmentation(global_size=16, local_size=8, n_local=2, gram_size=32)
    torch.manual_seed(0)
    crops = augment(image)
    assert [c.shape[-1] for c in crops] == [16, 16, 8, 8, 32, 32]  # 2 global, 2 local, 2 Gram crops
    # a flat image: the undistorted Gram crop holds the colour itself
    torch.testing.assert_close(crops[4].mean((1, 2)), crops[4][:, 0, 0])


def test_bad_gram_settings_are_named(image_root, tmp_path, tiny_overrides):
    cases = {
        "gram.remove_neg=true": "exclude each other",
        "gram.teacher_crop_size=36": "multiple of model.patch_size",
        "gram.teacher_crop_size=16": "at least data.global_crop_size",
        "gram.start_epoch=2": "below optim.epochs",
        "gram.resize_mode=nearest": "antialiasing needs",
        "gram.teacher_normalizer=softmx": r"gram\.teacher_normalizer",
    }
    for extra, message in cases.items():
        more = ["gram.remove_only_teacher_neg=true"] if "remove_neg" in extra else []
        more += ["gram.resize_antialias=true"] if "nearest" in extra else []
        with pytest.raises(ConfigError, match=message):
            load_train_config(
                "dino_cpu_tiny", tiny_overrides(image_root, tmp_path, "gram.enabled=true", extra, *more)
            )


@pytest.mark.parametrize("teacher_size", [0, 48])
def test_a_gram_run_adds_the_weighted_loss_from_its_start_epoch(
    image_root, tmp_path, tiny_overrides, teacher_size
):
    out = tmp_path / "run"
    run_training(load_train_config("dino_cpu_tiny", tiny_overrides(
        image_root, out, "gram.enabled=true", "gram.start_epoch=1", "gram.ramp_epochs=0", "gram.weight=2.0",
        f"gram.teacher_crop_size={teacher_size}", "optim.epochs=2", "run.max_iters_per_epoch=2")))  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "gram_weight" in r]
    assert [r["gram_weight"] for r in steps] == [0.0, 0.0, 2.0, 2.0]
    assert [r["gram_loss"] is None for r in steps] == [True, True, False, False]
    assert all(r["gram_loss"] >= 0 for r in steps[2:])
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    gram = ckpt["gram_teacher"]
    assert (gram["initialised"], gram["synced_epoch"], gram["updates"]) == (True, 1, 0)
    assert set(gram["backbone"]) == {
        k.removeprefix("backbone.") for k in ckpt["teacher"] if k.startswith("backbone.")
    }
