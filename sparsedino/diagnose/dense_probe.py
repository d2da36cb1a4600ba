"""Dense linear probe per block, with and without [CLS] concatenated to every patch token.

Reuses the project's segmentation probe (``sparsedino.eval.seg_probe``: :func:`probe_inputs`,
:func:`train_seg_probe`) on the patch features the runner kept (same block output as the other scores:
final norm applied when ``final_norm``). The diagnosed images are split deterministically by the label
probe's rule (``diffusion.split_images``, here without labels): image i trains the probe if ``i`` falls in
the first ``train_fraction`` of each consecutive group (alternating for 0.5), the others evaluate it; mIoU is computed
from one confusion matrix over all evaluation pixels (background is a class; 255 ignored).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsedino.diagnose.diffusion import split_images
from sparsedino.diagnose.settings import DenseProbeSettings
from sparsedino.eval.seg_probe import probe_inputs, train_seg_probe


def split_indices(n: int, train_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic interleaved split of ``range(n)`` into train / val indices (both non-empty if n >= 2)."""
    train = split_images(torch.zeros(n, dtype=torch.long), train_fraction)  # (n,) bool, one stratum
    if n >= 2 and train.all():
        train[-1] = False
    idx = torch.arange(n)
    return idx[train], idx[~train]


def dense_probe_scores(
    feats: torch.Tensor,
    cls: torch.Tensor | None,
    masks: torch.Tensor,
    dataset: Any,
    settings: DenseProbeSettings,
    device: str | torch.device = "cpu",
) -> dict[str, float | None]:
    """Train and evaluate the linear segmentation probe on one block's features.

    Args:
        feats: (N, h, w, C) patch features; cls: (N, C) [CLS] tokens or None (model without [CLS]);
        masks: (N, H, W) int64 masks at the image resolution (255 = ignore);
        dataset: provides ``num_classes``; settings: iterations, lr, batch size, split;
        device: where the probe trains.

    Returns:
        ``probe.miou`` (patches only) and ``probe.miou_with_cls`` (patches + [CLS]; None without [CLS]),
        in [0, 1].
    """
    num_classes = int(dataset.num_classes)
    tr, va = split_indices(len(feats), settings.train_fraction)
    if len(tr) == 0 or len(va) == 0:
        return {"probe.miou": None, "probe.miou_with_cls": None}
    cfg = {
        "iters": settings.iterations, "batch_size": settings.batch_size, "lr": settings.lr,
        "weight_decay": settings.weight_decay, "eval_every": 0, "seed": settings.seed,
        "warmup_iters": min(settings.warmup_iters, settings.iterations // 10),  # short probes: at most 10 %
    }  # fmt: skip
    out: dict[str, float | None] = {"probe.miou": None, "probe.miou_with_cls": None}
    patches = feats.float()[:, None]  # (N, 1, h, w, C): one block
    cls_ = cls.float()[:, None] if cls is not None else None  # (N, 1, C)
    for key, concat in (("probe.miou", False), ("probe.miou_with_cls", True)):
        if concat and cls_ is None:
            continue
        x = probe_inputs(cls_ if cls_ is not None else patches[:, :, 0, 0], patches, with_cls=concat)
        result = train_seg_probe(
            x[tr], masks[tr], x[va], masks[va], num_classes, cfg, device=device, progress=False
        )
        out[key] = None if math.isnan(result.miou) else float(result.miou)
    return out
