"""Segmentation metrics from a confusion matrix accumulated over the whole evaluation set.

Conventions (those of mmseg, which produced the DINOv2 and paper numbers):

- pixels whose target is ``ignore_index`` are skipped;
- IoU of class c = TP / (TP + FP + FN), from the totals over all images (not averaged per image);
- a class absent from both the ground truth and the predictions has an undefined IoU: it is reported as
  NaN and left out of the mean (``nanmean``); ``num_valid_classes`` says how many classes were averaged;
- a class absent from the ground truth but predicted somewhere gets IoU 0 (its false positives count);
- per-class accuracy TP / (TP + FN) is NaN for classes absent from the ground truth.
"""

from __future__ import annotations

import math

import torch

from sparsedino.data.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulate a (num_classes, num_classes) confusion matrix (rows = target, columns = prediction).

    Args:
        num_classes: number of labels (predictions and targets in ``[0, num_classes)``).
        ignore_index: target value to skip.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` integer tensors of the same shape (any), e.g. (B, H, W).

        Raises:
            ValueError: for mismatched shapes or targets outside ``[0, num_classes)`` other than ignore.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            bad = torch.unique(target[(target < 0) | (target >= self.num_classes)])[:10].tolist()
            raise ValueError(
                f"target values {bad} outside [0, {self.num_classes}) and != {self.ignore_index}"
            )
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"prediction values outside [0, {self.num_classes})")
        counts = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict:
        """Metrics as plain Python values (JSON-ready; NaN for undefined classes).

        Returns:
            ``miou``, ``per_class_iou`` (list), ``pixel_acc``, ``mean_acc``, ``per_class_acc`` (list),
            ``num_valid_classes`` and ``num_pixels``.
        """
        m = self.matrix.double()
        tp = m.diag()
        gt = m.sum(1)  # TP + FN
        predicted = m.sum(0)  # TP + FP
        union = gt + predicted - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = m.sum()
        return {
            "miou": _nanmean(iou),
            "per_class_iou": iou.tolist(),
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_acc": _nanmean(acc),
            "per_class_acc": acc.tolist(),
            "num_valid_classes": int((~iou.isnan()).sum()),
            "num_pixels": int(total),
        }


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else math.nan
