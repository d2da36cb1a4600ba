"""The ceiling of the linear segmentation probe: features that encode the true class of every patch.

The oracle "backbone" sees the ground truth: each patch's feature is the histogram of its labelled pixels
over the classes (fractions summing to 1; a patch with only ignore pixels is all zeros). The same probe as
:func:`sparsedino.eval.segmentation.run_seg_probe` (BatchNorm + 1x1 conv at patch resolution, logits
bilinearly upsampled, the same optimiser and schedule) is trained on these features and evaluated at the
same resolutions. What it cannot reach is lost to patch resolution and upsampling, not to the features:
so it is the best score any backbone with this patch size can get from this protocol, the ceiling a
benchmark needs next to its floor (random weights).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from sparsedino.data.joint_transforms import make_seg_fixed_transform
from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.eval.miou import ConfusionMatrix
from sparsedino.eval.seg_probe import train_seg_probe


def patch_label_histograms(masks: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """Per-patch class fractions of label masks.

    Args:
        masks: (N, H, W) integer labels (``IGNORE_INDEX`` = unlabelled); H and W multiples of ``patch``.
        patch: patch side in pixels.
        num_classes: number of labels K.

    Returns:
        (N, H / patch, W / patch, K) float: the share of each class among the patch's labelled pixels.
    """
    n, height, width = masks.shape
    if height % patch or width % patch:
        raise ValueError(f"mask size {height}x{width} is not a multiple of the patch size {patch}")
    masks = masks.long()
    valid = masks != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, masks, 0), num_classes).float() * valid[..., None]  # (N, H, W, K)
    counts = onehot.reshape(n, height // patch, patch, width // patch, patch, num_classes).sum((2, 4))
    return counts / counts.sum(-1, keepdim=True).clamp_min(1.0)


def _eval_view_mask(mask: torch.Tensor, short_side: int | None, patch: int) -> tuple[torch.Tensor, tuple]:
    """The mask at the resolution the probe sees a val image (short side resized), padded to whole patches.

    Returns:
        The padded (H', W') mask and the size before padding.
    """
    height, width = mask.shape
    if short_side:
        scale = short_side / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    pad_h, pad_w = (-mask.shape[0]) % patch, (-mask.shape[1]) % patch
    return F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_INDEX), tuple(mask.shape)


@torch.no_grad()
def _evaluate(head: nn.Module, dataset: Dataset, cfg, patch: int, num_classes: int) -> dict:
    head.eval()
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for index in tqdm(range(len(dataset)), desc="oracle eval", unit="img", leave=False):
        _, raw = dataset.load_raw(index)
        mask = torch.from_numpy(raw).long()  # (H, W) at the original resolution
        view, (height, width) = _eval_view_mask(mask, cfg.eval_short_side or None, patch)
        feats = patch_label_histograms(view[None], patch, num_classes)  # (1, h, w, K)
        logits = head(feats.permute(0, 3, 1, 2))  # (1, K, h, w)
        # as the sliding-window eval: to pixels of the padded view, crop the padding, then to the mask size
        logits = F.interpolate(logits, size=tuple(view.shape), mode="bilinear", align_corners=False)
        logits = logits[..., :height, :width]
        logits = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1), mask[None])
    return cm.compute()


class _FirstItems:
    """The first ``count`` samples of a segmentation reader (``load_raw`` and ``len`` only)."""

    def __init__(self, dataset, count: int) -> None:
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def load_raw(self, index: int):
        return self.dataset.load_raw(index)


def run_oracle_seg_probe(dataset_train: Dataset, dataset_val: Dataset, patch_size: int, cfg) -> dict:
    """Train and evaluate the linear seg probe on oracle features; a JSON-ready dict like ``run_seg_probe``.

    Args:
        dataset_train: a segmentation reader (its transform is replaced by the probe's fixed train view).
        dataset_val: a segmentation reader (only its masks are read).
        patch_size: the patch size of the backbones the oracle is the ceiling for.
        cfg: :class:`sparsedino.eval.settings.SegConfig` (crop size, eval resolution, optimiser).
    """
    crop = int(cfg.crop_size)
    if crop % patch_size:
        raise ValueError(f"crop_size {crop} must be a multiple of the patch size {patch_size}")
    num_classes = dataset_train.num_classes
    train_view = copy.copy(dataset_train)
    train_view.transform = make_seg_fixed_transform(crop)
    count = min(len(train_view), cfg.max_train_images or len(train_view))
    masks = torch.stack([train_view[i][1] for i in range(count)])  # (N, crop, crop)
    val_count = min(len(dataset_val), cfg.max_val_images or len(dataset_val))
    val = _FirstItems(dataset_val, val_count)

    result = train_seg_probe(
        patch_label_histograms(masks, patch_size, num_classes),
        masks,
        None,
        None,
        num_classes,
        cfg,
        eval_fn=lambda head: _evaluate(head, val, cfg, patch_size, num_classes),
        progress=False,
    )
    names = list(getattr(dataset_train, "class_names", range(num_classes)))
    return {
        "protocol": "oracle_linear_seg",
        "dataset": cfg.dataset,
        "features": f"per-patch class histograms of the ground truth ({patch_size} px patches)",
        "train_resolution": crop,
        "miou": result.miou,
        "per_class_iou": dict(zip(map(str, names), result.per_class_iou)),
        "num_train_images": count,
        "num_val_images": val_count,
    }
