"""mIoU from a confusion matrix on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from sparsedino.eval.miou import ConfusionMatrix


def test_hand_computed_ious_and_ignore():
    cm = ConfusionMatrix(3)
    target = torch.tensor([0, 0, 1, 1, 2, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 2])  # the two ignored pixels must not count
    cm.update(pred, target)
    out = cm.compute()
    # class 0: TP 1, FP 1 (from class 2), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 0, FN 1 -> 0
    assert out["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert out["pixel_acc"] == pytest.approx(3 / 5)
    assert out["num_pixels"] == 5


def test_absent_class_is_nan_and_excluded_but_false_positives_count():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0, 1], [1, 1]]))
    out = cm.compute()
    iou = out["per_class_iou"]
    assert iou[0] == 1.0 and iou[1] == pytest.approx(2 / 3)
    assert iou[2] == 0.0  # predicted but absent from the ground truth: a false positive class, IoU 0
    assert math.isnan(iou[3])  # absent from both: undefined, left out of the mean
    assert out["num_valid_classes"] == 3
    assert out["miou"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert math.isnan(out["per_class_acc"][2])  # accuracy undefined without ground-truth pixels


def test_accumulates_over_batches_not_per_image_mean():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 1]))  # image 1
    cm.update(torch.tensor([1]), torch.tensor([1]))  # image 2
    iou = cm.compute()["per_class_iou"]
    assert iou == pytest.approx([3 / 4, 1 / 2])  # class 1: TP 1, FN 1 over the whole set


def test_bad_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"target values \[7\]"):
        cm.update(torch.zeros(2), torch.tensor([0, 7]))
