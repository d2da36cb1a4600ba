"""Issue 12.1: the segmentation probe trains and is evaluated at the same scale, for every seg preset.

Reference: mmsegmentation's dataset configs, which DINOv2's linear segmentation protocol uses
(configs/_base_/datasets/pascal_voc12.py, ade20k.py, cityscapes.py): ``img_scale`` is (2048, 512) for VOC
and ADE20K and (2048, 1024) for Cityscapes, both for the training resize (times a random ratio 0.5-2.0)
and for the test resize. So the short side of training views (at ratio 1) equals the evaluation's.
"""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from sparsedino.data.joint_transforms import RandomShortSideScale
from sparsedino.eval.segmentation import eval_view_transform, train_view_transform
from sparsedino.eval.settings import load_protocol_config

MMSEG_SHORT_SIDE = {"voc": 512, "ade20k": 512, "cityscapes": 1024}  # img_scale[1] of each mmseg config
H, W, STRIPE = 600, 1200, 60  # a landscape image whose mask holds a 60-px wide vertical stripe


def _pair() -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    mask = torch.zeros(H, W, dtype=torch.long)
    mask[:, W // 2 - STRIPE // 2 : W // 2 + STRIPE // 2] = 1
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


@pytest.mark.parametrize("dataset", sorted(MMSEG_SHORT_SIDE))
def test_cached_train_views_are_at_the_evaluation_scale(dataset):
    cfg = load_protocol_config("seg", f"eval_seg_{dataset}", ["train_mode=cached"])
    train, _ = train_view_transform(cfg)
    _, mask = train(*_pair())
    train_scale = int((mask[mask.shape[0] // 2] == 1).sum()) / STRIPE  # stripe width after / before
    image, _ = eval_view_transform(cfg)(*_pair())
    eval_scale = min(image.shape[-2:]) / min(H, W)
    assert eval_scale == pytest.approx(MMSEG_SHORT_SIDE[dataset] / min(H, W))
    assert train_scale / eval_scale == pytest.approx(1.0, abs=0.02)  # rounding of a 60-px stripe


@pytest.mark.parametrize("dataset", sorted(MMSEG_SHORT_SIDE))
def test_augmented_train_views_scale_around_the_evaluation_short_side(dataset):
    cfg = load_protocol_config("seg", f"eval_seg_{dataset}", ["train_mode=augment"])
    train, _ = train_view_transform(cfg)
    (scale,) = [t for t in train.transforms if isinstance(t, RandomShortSideScale)]
    assert scale.base_size == MMSEG_SHORT_SIDE[dataset] and tuple(scale.ratio_range) == (0.5, 2.0)
