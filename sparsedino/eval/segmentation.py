"""Linear segmentation probe on frozen patch tokens (DINOv2's "linear" protocol, in plain PyTorch).

The head is BatchNorm then a 1x1 convolution at patch resolution; its logits are bilinearly upsampled to
the mask resolution and trained with cross-entropy (ignore 255), AdamW (lr 1e-3, wd 1e-4), linear warmup
then linear decay. Options cover the paper's questions: which blocks (one or several concatenated) and
whether [CLS] is concatenated to every patch token (the complementarity test).

Two levels:

- :func:`~sparsedino.eval.seg_probe.train_seg_probe` works on precomputed features (N, h, w, C) and masks
  (N, H, W); it is what the diagnostics reuse for per-block probes (see ``eval/seg_probe.py``).
- :func:`run_seg_probe` runs the whole protocol from a backbone and two datasets: the train split is
  encoded once (fixed resize + centre crop, "augmentation: none, features cached") or re-encoded every
  step with random scale/crop/flip (``train_mode="augment"``, slower, said in the output); val images are
  evaluated at full resolution, with a sliding window when larger than the crop (see ``eval/sliding.py``).
  Training views are at the evaluation's scale in both modes (:func:`train_scale`), as in mmseg / DINOv2.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from sparsedino.config import resolve_device
from sparsedino.data.joint_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    make_seg_eval_transform,
    make_seg_fixed_transform,
    make_seg_train_transform,
)
from sparsedino.eval.features import extract_for_protocol, forward_tokens, resolve_layers
from sparsedino.eval.seg_probe import features_to_inputs, probe_inputs, train_seg_probe
from sparsedino.eval.sliding import sliding_window_miou
from sparsedino.models.layout import token_layout


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
    return make_seg_eval_transform(cfg.eval_short_side or None, mean=mean, std=std)


def run_seg_probe(
    model: nn.Module, dataset_train: Dataset, dataset_val: Dataset, layers: Sequence[int], with_cls: bool, cfg
) -> dict:
    """The full linear segmentation protocol from a frozen backbone; returns a JSON-ready dict.

    Args:
        model: a timm ViT with ``dynamic_img_size=True`` (eval windows differ from the training size).
        dataset_train: a :class:`sparsedino.data.seg_base.SegmentationDataset` (its transform is
            replaced by the protocol's: fixed or augmenting, see ``cfg.train_mode``).
        dataset_val: same reader type for evaluation (full images; its transform is replaced by the eval
            transform: optional short-side resize, image only).
        layers: blocks to probe (negative = from the end); several are concatenated.
        with_cls: concatenate [CLS] to every patch token.
        cfg: :class:`sparsedino.eval.settings.SegConfig`.
    """
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
