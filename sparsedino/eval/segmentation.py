"""Linear segmentation probe on frozen patch tokens (DINOv2's "linear" protocol, in plain PyTorch).

The head is BatchNorm then a 1x1 convolution at patch resolution; its logits are bilinearly upsampled to
the mask resolution and trained with cross-entropy (ignore 255), AdamW (lr 1e-3, wd 1e-4), linear warmup
then linear decay. Options cover the paper's questions: which blocks (one or several concatenated) and
whether [CLS] is concatenated to every patch token (the complementarity test).

Two levels:

- :func:`train_seg_probe` works on precomputed features (N, h, w, C) and masks (N, H, W); it is what the
  diagnostics reuse for per-block probes.
- :func:`run_seg_probe` runs the whole protocol from a backbone and two datasets: the train split is
  encoded once (fixed resize + centre crop, "augmentation: none, features cached") or re-encoded every
  step with random scale/crop/flip (``train_mode="augment"``, slower, said in the output); val images are
  evaluated at full resolution, with a sliding window when larger than the crop (see ``eval/sliding.py``).
  Training views are at the evaluation's scale in both modes (:func:`train_scale`), as in mmseg / DINOv2.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from sparsedino.config import resolve_device
from sparsedino.data.joint_transforms import IMAGENET_MEAN, IMAGENET_STD
from sparsedino.data.labels import IGNORE_INDEX
from sparsedino.eval.features import FeatureSet, forward_tokens, resolve_layers
from sparsedino.eval.miou import ConfusionMatrix
from sparsedino.models.layout import token_layout


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


def _subset(dataset: Dataset, limit: int) -> Dataset:
    return Subset(dataset, range(min(limit, len(dataset)))) if limit and limit < len(dataset) else dataset


def _with_transform(dataset: Dataset, transform) -> Dataset:
    """A shallow copy of a reader with another transform (the original is left untouched)."""
    clone = copy.copy(dataset)
    clone.transform = transform
    return clone


def train_scale(cfg) -> int:
    """Short side the training views are scaled to (ratio 1): the evaluation's, as in mmseg / DINOv2.

    ``eval_short_side`` when set, else ``crop_size``; in ``augment`` mode it is the base of the random
    0.5-2.0 scale, in ``cached`` mode the fixed resize before the centre crop.
    """
    return int(cfg.eval_short_side or cfg.crop_size)


def train_view_transform(cfg, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """The joint transform of the probe's training views (see :func:`train_scale`) and its description;
    images are normalised with ``mean`` / ``std`` (the backbone's)."""
    from sparsedino.data.joint_transforms import make_seg_fixed_transform, make_seg_train_transform

    crop, base = int(cfg.crop_size), train_scale(cfg)
    if cfg.train_mode == "cached":
        return (
            make_seg_fixed_transform(crop, short_side=base, mean=mean, std=std),
            f"none, features cached (resize short side to {base}, centre crop {crop})",
        )
    if cfg.train_mode == "augment":
        return (
            make_seg_train_transform(crop, base_size=base, mean=mean, std=std),
            f"random scale 0.5-2.0 of short side {base}, random {crop} crop, flip every iteration "
            "(backbone re-run per step)",
        )
    raise ValueError(f"train_mode must be 'cached' or 'augment', got {cfg.train_mode!r}")


def eval_view_transform(cfg, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """The evaluation transform: the image's short side resized to ``eval_short_side`` (0 = kept)."""
    from sparsedino.data.joint_transforms import make_seg_eval_transform

    return make_seg_eval_transform(cfg.eval_short_side or None, mean=mean, std=std)


def run_seg_probe(
    model: nn.Module, dataset_train: Dataset, dataset_val: Dataset, layers: Sequence[int], with_cls: bool, cfg
) -> dict:
    """The full linear segmentation protocol from a frozen backbone; returns a JSON-ready dict.

    Args:
        model: a timm ViT with ``dynamic_img_size=True`` (eval windows differ from the training size).
        dataset_train: a :class:`sparsedino.data.segmentation.SegmentationDataset` (its transform is
            replaced by the protocol's: fixed or augmenting, see ``cfg.train_mode``).
        dataset_val: same reader type for evaluation (full images; its transform is replaced by the eval
            transform: optional short-side resize, image only).
        layers: blocks to probe (negative = from the end); several are concatenated.
        with_cls: concatenate [CLS] to every patch token.
        cfg: :class:`sparsedino.eval.settings.SegConfig`.
    """
    from sparsedino.eval.features import extract_for_protocol
    from sparsedino.eval.sliding import sliding_window_miou

    if not getattr(model, "dynamic_img_size", False):
        raise ValueError(
            "run_seg_probe needs a ViT built with dynamic_img_size=True (val windows vary in size)"
        )
    device = resolve_device(cfg.features.device)
    model.eval().to(device)
    abs_layers = resolve_layers(model, layers)
    num_classes = dataset_train.num_classes
    crop, norm = int(cfg.crop_size), bool(cfg.norm)
    layout = token_layout(model)
    patch = layout.patch_size[0]
    if crop % patch:
        raise ValueError(f"crop_size {crop} must be a multiple of the patch size {patch}")
    val_ds = _subset(
        _with_transform(dataset_val, eval_view_transform(cfg, layout.mean, layout.std)), cfg.max_val_images
    )
    train_transform, augmentation = train_view_transform(cfg, layout.mean, layout.std)
    train_ds = _subset(_with_transform(dataset_train, train_transform), cfg.max_train_images)
    feature_timing = None
    if cfg.train_mode == "cached":
        fs = extract_for_protocol(
            model, train_ds, cfg.features, abs_layers, norm, tag="seg-train", with_patches=True
        )
        feature_timing = {**(fs.meta.get("timing") or {}), "cache": fs.meta["cache"]["status"]}
        train_feats, train_masks = features_to_inputs(fs, None, with_cls), fs.labels
        batch_fn, in_dim = None, None
    else:
        batch_fn = _online_batches(model, train_ds, abs_layers, norm, with_cls, cfg, device)
        train_feats = train_masks = None
        in_dim = model.embed_dim * len(abs_layers) * (2 if with_cls else 1)

    def eval_fn(head: nn.Module) -> dict:
        return sliding_window_miou(
            model, head, val_ds, abs_layers, norm, with_cls, num_classes, crop, cfg.eval_stride, device
        )

    result = train_seg_probe(
        train_feats,
        train_masks,
        None,
        None,
        num_classes,
        cfg,
        batch_fn=batch_fn,
        eval_fn=eval_fn,
        in_dim=in_dim,
        device=device,
    )
    names = list(getattr(dataset_train, "class_names", range(num_classes)))
    return {
        "protocol": "linear_seg",
        "dataset": cfg.dataset,
        "layers": list(abs_layers),
        "with_cls": bool(with_cls),
        "norm": "final LayerNorm applied to every block" if norm else "raw block outputs (no final norm)",
        "augmentation": augmentation,
        "train_resolution": crop,
        "train_short_side": train_scale(cfg),
        "eval": f"full images (short side {cfg.eval_short_side or 'original'}), sliding window {crop}/"
        f"stride {cfg.eval_stride} where larger than the crop, single scale",
        "optimizer": f"AdamW lr {cfg.lr} wd {cfg.weight_decay}, {cfg.warmup_iters} warmup, linear decay, "
        f"{cfg.iters} iters x batch {cfg.batch_size}",
        "miou": result.miou,
        "per_class_iou": dict(zip(map(str, names), result.per_class_iou)),
        "metrics": {k: v for k, v in result.metrics.items() if k not in ("per_class_iou", "per_class_acc")},
        "history": result.history,
        "speed": {"feature_extraction": feature_timing, "probe_iters_per_s": round(result.iters_per_s, 2)},
        "num_train_images": len(train_ds),
        "num_val_images": len(val_ds),
    }


def _online_batches(model, dataset, layers, norm, with_cls, cfg, device) -> Callable:
    """``step -> (feats, masks)`` drawing augmented crops and re-running the frozen backbone."""
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= cfg.batch_size,
        num_workers=cfg.features.num_workers,
        generator=generator,
    )
    state = {"it": iter(loader)}

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            images, masks = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            images, masks = next(state["it"])
        with torch.no_grad():  # frozen backbone; the features feed a trained head, so no inference_mode
            cls, patches, _ = forward_tokens(model, images.to(device), layers, norm)
        return probe_inputs(cls, patches, with_cls), masks

    return batch_fn
