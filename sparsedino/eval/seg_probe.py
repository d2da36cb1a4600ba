"""The linear segmentation probe on frozen features: BatchNorm + 1x1 conv, trained and scored on tensors.

:func:`train_seg_probe` works on precomputed features (N, h, w, C) and masks (N, H, W), or on batches drawn
by a callback; the protocol (:mod:`sparsedino.eval.segmentation`), its sliding-window evaluation
(:mod:`sparsedino.eval.sliding`), the oracle probe and the per-block dense probes of the diagnostics all
train this head. Its logits are bilinearly upsampled to the mask resolution and trained with cross-entropy
(ignore 255), AdamW, linear warmup then linear decay (mmseg's schedule).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.eval.features import FeatureSet
from sparsedino.eval.miou import ConfusionMatrix


class LinearSegHead(nn.Module):
    """BatchNorm2d then a 1x1 conv: (B, C, h, w) -> (B, num_classes, h, w) logits at patch resolution."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)  # mmseg's decode-head init
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def probe_inputs(cls: torch.Tensor, patches: torch.Tensor, with_cls: bool) -> torch.Tensor:
    """Concatenate blocks (and optionally [CLS]) along channels: the probe's input.

    Args:
        cls: (N, L, C) [CLS] of the selected blocks.
        patches: (N, L, h, w, C) patch tokens of the same blocks.
        with_cls: append each block's [CLS] to every patch token of that block.

    Returns:
        (N, h, w, D) with D = L * C (or 2 * L * C with [CLS]); block order kept, [CLS] after patches.
    """
    n, layers, h, w, c = patches.shape
    parts = [patches.permute(0, 2, 3, 1, 4).reshape(n, h, w, layers * c)]
    if with_cls:
        parts.append(cls.reshape(n, 1, 1, layers * c).expand(n, h, w, layers * c))
    return torch.cat(parts, dim=-1)


def features_to_inputs(fs: FeatureSet, layers: Sequence[int] | None, with_cls: bool) -> torch.Tensor:
    """:func:`probe_inputs` for some blocks of a :class:`FeatureSet` (``layers`` None = all extracted)."""
    if fs.patches is None:
        raise ValueError("this FeatureSet has no patch tokens (extract with with_patches=True)")
    idx = list(range(len(fs.layers))) if layers is None else [fs.layer(b) for b in layers]
    return probe_inputs(fs.cls[:, idx], fs.patches[:, idx], with_cls)


def warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    """LR factor: linear 0 -> 1 over ``warmup`` steps, then 1 -> 0 at ``total`` (mmseg poly, power 1)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))


@dataclass
class SegProbeResult:
    """Outcome of a probe: final val metrics (if evaluated), the training history and the trained head."""

    miou: float
    per_class_iou: list[float]
    metrics: dict
    history: list[dict] = field(default_factory=list)
    head: nn.Module | None = None
    iters_per_s: float = math.nan


def _upsampled_logits(head: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, D) features -> (B, K, H, W) logits bilinearly upsampled to the mask size."""
    logits = head(x.permute(0, 3, 1, 2).float())  # (B, K, h, w)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate_cached(
    head: nn.Module, feats: torch.Tensor, masks: torch.Tensor, num_classes: int, batch_size: int = 16
) -> dict:
    """mIoU of ``head`` on precomputed features (N, h, w, D) against masks (N, H, W) (whole set)."""
    head.eval()
    device = next(head.parameters()).device
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for start in range(0, feats.shape[0], batch_size):
        x = feats[start : start + batch_size].to(device)
        target = masks[start : start + batch_size]
        pred = _upsampled_logits(head, x, tuple(target.shape[-2:])).argmax(1)
        cm.update(pred.cpu(), target)
    return cm.compute()


def _attr(cfg, name: str, default):
    return getattr(cfg, name, default) if not isinstance(cfg, dict) else cfg.get(name, default)


def train_seg_probe(
    train_feats: torch.Tensor | None,
    train_masks: torch.Tensor | None,
    val_feats: torch.Tensor | None,
    val_masks: torch.Tensor | None,
    num_classes: int,
    cfg,
    batch_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    eval_fn: Callable[[nn.Module], dict] | None = None,
    in_dim: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SegProbeResult:
    """Train a :class:`LinearSegHead` on frozen features and evaluate it.

    Args:
        train_feats: (N, h, w, D) float features (from :func:`probe_inputs`), or None with ``batch_fn``.
        train_masks: (N, H, W) integer masks (255 = ignore; uint8 or int64) aligned with ``train_feats``.
        val_feats: (M, h', w', D) features or None (then ``eval_fn``, or no evaluation).
        val_masks: (M, H', W') masks.
        num_classes: number of labels.
        cfg: any object/dict with ``iters``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup_iters``,
            ``eval_every``, ``seed`` (e.g. :class:`sparsedino.eval.settings.SegConfig`).
        batch_fn: ``step -> (feats (B, h, w, D), masks (B, H, W))`` replacing sampling from ``train_feats``
            (used for per-step augmentation through the backbone).
        eval_fn: ``head -> metrics dict`` replacing evaluation on ``val_feats`` (sliding window).
        in_dim: feature dimension D when ``train_feats`` is None.
        device: where the head trains.
        progress: show a tqdm bar.

    Returns:
        :class:`SegProbeResult` (``miou`` NaN when no evaluation was possible).
    """
    iters, batch_size = int(_attr(cfg, "iters", 1000)), int(_attr(cfg, "batch_size", 16))
    warmup, eval_every = int(_attr(cfg, "warmup_iters", 0)), int(_attr(cfg, "eval_every", 0))
    generator = torch.Generator().manual_seed(int(_attr(cfg, "seed", 0)))
    if batch_fn is None:
        if train_feats is None or train_masks is None:
            raise ValueError("train_seg_probe needs train_feats and train_masks, or a batch_fn")
        if train_feats.shape[0] != train_masks.shape[0]:
            raise ValueError(f"{train_feats.shape[0]} feature maps but {train_masks.shape[0]} masks")
        order: list[int] = []

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:  # epoch-wise shuffling
            while len(order) < batch_size:
                order.extend(torch.randperm(train_feats.shape[0], generator=generator).tolist())
            idx = [order.pop(0) for _ in range(min(batch_size, train_feats.shape[0]))]
            return train_feats[idx], train_masks[idx]

        in_dim = train_feats.shape[-1]
    if in_dim is None:
        raise ValueError("in_dim is required when train_feats is None")
    if eval_fn is None and val_feats is not None and val_masks is not None:

        def eval_fn(head: nn.Module) -> dict:
            return evaluate_cached(head, val_feats, val_masks, num_classes, batch_size)

    torch.manual_seed(int(_attr(cfg, "seed", 0)))
    head = LinearSegHead(in_dim, num_classes).to(device)
    optimizer = torch.optim.AdamW(
        head.parameters(),
        lr=float(_attr(cfg, "lr", 1e-3)),
        weight_decay=float(_attr(cfg, "weight_decay", 1e-4)),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_linear_decay(s, warmup, iters))
    history: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(iters), desc="seg probe", unit="it", disable=not progress)
    for step in bar:
        head.train()
        x, target = batch_fn(step)
        x, target = x.to(device), target.to(device).long()
        if not (target != IGNORE_INDEX).any():  # nothing to learn from (CE would be NaN)
            scheduler.step()
            continue
        loss = F.cross_entropy(
            _upsampled_logits(head, x, tuple(target.shape[-2:])), target, ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == iters - 1:
            history.append({"iter": step + 1, "loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_fn is not None and eval_every > 0 and (step + 1) % eval_every == 0 and step + 1 < iters:
            history.append({"iter": step + 1, "val_miou": eval_fn(head)["miou"]})
    iters_per_s = iters / max(time.perf_counter() - start, 1e-9)
    if eval_fn is None:
        return SegProbeResult(math.nan, [], {}, history, head, iters_per_s)
    metrics = eval_fn(head)
    history.append({"iter": iters, "val_miou": metrics["miou"]})
    return SegProbeResult(metrics["miou"], metrics["per_class_iou"], metrics, history, head, iters_per_s)
