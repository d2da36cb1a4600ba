"""Linear segmentation probe: an oracle feature extractor is segmented, random features are not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsedino.data.segmentation import build_seg_dataset
from sparsedino.eval.seg_probe import LinearSegHead, probe_inputs, train_seg_probe
from sparsedino.eval.segmentation import run_seg_probe
from sparsedino.eval.settings import SegConfig
from sparsedino.eval.sliding import sliding_window_logits, window_starts

NUM_LABELS = 5  # background + 4 classes of the fixture dataset
FAST = {"iters": 150, "batch_size": 8, "lr": 3e-2, "weight_decay": 1e-4, "warmup_iters": 10, "seed": 0}


def _masks(root, split: str) -> torch.Tensor:
    ds = build_seg_dataset("voc", root, split)
    return torch.stack([torch.from_numpy(ds.load_raw(i)[1].astype(np.int64)) for i in range(len(ds))])


def _oracle_features(masks: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Features that encode the true classes of each patch: the fraction of its pixels per class."""
    onehot = F.one_hot(torch.where(masks == 255, NUM_LABELS, masks), NUM_LABELS + 1)[..., :NUM_LABELS]
    fractions = F.avg_pool2d(onehot.permute(0, 3, 1, 2).float(), patch)  # (N, K, h, w)
    return fractions.permute(0, 2, 3, 1)  # (N, h, w, K)


def test_oracle_features_are_segmented(synth_root):
    train, val = _masks(synth_root, "train"), _masks(synth_root, "val")
    result = train_seg_probe(
        _oracle_features(train), train, _oracle_features(val), val, NUM_LABELS, FAST, progress=False
    )
    assert result.miou > 0.9
    assert len(result.per_class_iou) == NUM_LABELS and result.history[-1]["val_miou"] == result.miou
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]


def test_random_features_stay_near_chance(synth_root):
    train, val = _masks(synth_root, "train"), _masks(synth_root, "val")
    g = torch.Generator().manual_seed(0)
    result = train_seg_probe(
        torch.randn(len(train), 8, 8, 16, generator=g),
        train,
        torch.randn(len(val), 8, 8, 16, generator=g),
        val,
        NUM_LABELS,
        FAST,
        progress=False,
    )
    assert result.miou < 0.3  # at best "everything is background": IoU ~ background share / 5 classes


def test_probe_inputs_concatenate_blocks_then_cls():
    cls = torch.arange(2 * 2 * 3.0).reshape(2, 2, 3)
    patches = torch.randn(2, 2, 4, 5, 3)
    x = probe_inputs(cls, patches, with_cls=True)
    assert x.shape == (2, 4, 5, 12)
    assert torch.equal(x[1, 2, 3, :3], patches[1, 0, 2, 3]) and torch.equal(
        x[1, 2, 3, 3:6], patches[1, 1, 2, 3]
    )
    assert torch.equal(x[1, 2, 3, 6:], cls[1].flatten())  # the same [CLS] at every position
    assert probe_inputs(cls, patches, with_cls=False).shape == (2, 4, 5, 6)


def test_window_starts_cover_the_image():
    assert window_starts(100, 512, 341) == [0]
    assert window_starts(1000, 512, 341) == [0, 341, 488]  # last window ends at the border
    assert window_starts(512, 512, 341) == [0]


def test_sliding_window_equals_single_pass_for_a_local_head(tiny_vit):
    # with a model whose features ignore context (no blocks run), windowing must not change the logits
    torch.manual_seed(0)
    head = LinearSegHead(24, 3).eval()
    torch.nn.init.normal_(head.conv.weight)
    image = torch.randn(3, 48, 64)
    model = tiny_vit
    model.blocks = torch.nn.Sequential(*[torch.nn.Identity() for _ in model.blocks])  # local features...
    model.pos_embed.data.zero_()  # ...and position-independent, so windows see exactly the same tokens
    full = sliding_window_logits(model, head, image, [2], False, False, 3, crop=64, stride=64)
    windows = sliding_window_logits(model, head, image, [2], False, False, 3, crop=32, stride=16)
    assert full.shape == windows.shape == (3, 48, 64)
    # equal up to bilinear-upsampling effects at window borders (a misplaced window would scramble them)
    assert (full - windows).abs().mean() < 0.1 * full.abs().mean()
    assert (full.argmax(0) == windows.argmax(0)).float().mean() > 0.95


@pytest.mark.parametrize("mode", ["cached", "augment"])
def test_run_seg_probe_end_to_end(synth_root, tiny_vit, mode):
    cfg = SegConfig(
        crop_size=32,
        iters=6,
        batch_size=4,
        warmup_iters=2,
        eval_short_side=0,
        train_mode=mode,
        layers=[-2, -1],
        with_cls=True,
        max_val_images=6,
    )
    train, val = build_seg_dataset("voc", synth_root, "train"), build_seg_dataset("voc", synth_root, "val")
    result = run_seg_probe(tiny_vit, train, val, cfg.layers, cfg.with_cls, cfg)
    assert 0.0 <= result["miou"] <= 1.0 and result["layers"] == [1, 2] and result["with_cls"]
    assert next(iter(result["per_class_iou"])) == "background" and len(result["per_class_iou"]) == NUM_LABELS
    assert ("none, features cached" in result["augmentation"]) == (mode == "cached")
    assert result["num_val_images"] == 6


def test_batched_small_images_score_like_one_by_one(synth_root, tiny_vit):
    from sparsedino.eval.sliding import sliding_window_miou

    torch.manual_seed(0)
    head = LinearSegHead(24, NUM_LABELS).eval()
    torch.nn.init.normal_(head.conv.weight)
    val = build_seg_dataset("voc", synth_root, "val")
    args = (tiny_vit, head, val, [2], True, False, NUM_LABELS, 32, 32)
    batched = sliding_window_miou(*args, progress=False, batch_size=5)
    single = sliding_window_miou(*args, progress=False, batch_size=1)
    assert (
        batched["num_pixels"]
        == single["num_pixels"]
        == 16 * 32 * 32 - sum(int((val[i][1] == 255).sum()) for i in range(len(val)))
    )
    assert batched["per_class_iou"] == pytest.approx(single["per_class_iou"], nan_ok=True, abs=1e-6)


def test_run_seg_probe_slides_over_images_larger_than_the_crop(synth_root, tiny_vit):
    cfg = SegConfig(
        crop_size=16,
        eval_stride=8,
        iters=3,
        batch_size=4,
        warmup_iters=1,
        eval_short_side=0,
        max_val_images=3,
        max_train_images=8,
    )
    train, val = build_seg_dataset("voc", synth_root, "train"), build_seg_dataset("voc", synth_root, "val")
    result = run_seg_probe(tiny_vit, train, val, [-1], False, cfg)
    unignored = sum(int((val[i][1] != 255).sum()) for i in range(3))
    assert result["metrics"]["num_pixels"] == unignored  # every val pixel scored once, at full resolution
    assert result["train_resolution"] == 16 and result["num_train_images"] == 8
