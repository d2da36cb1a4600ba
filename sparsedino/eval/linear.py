"""Linear probe on frozen [CLS] features: DINO's head, trained as a DINOv2-style grid in one pass.

DINO's linear evaluation concatenates the [CLS] tokens of the last 4 blocks (each after the final norm),
optionally with the average-pooled patch tokens of the last block, and trains one ``nn.Linear`` with SGD
(momentum 0.9, weight decay 0, cosine schedule, lr scaled by batch / 256). Instead of one run per learning
rate, every (lr, n_last_blocks, avgpool) combination gets its own head and all heads are trained
simultaneously on the same batches of cached features (DINOv2's recipe): one feature pass serves the whole
grid. The best head is chosen on the validation split and the full grid is reported.

Two protocols (``LinearConfig.train_mode``), named in every result:

- ``cached``: train features are computed once without augmentation, so a wide grid costs one backbone
  pass. Fast, but not DINO's protocol (nor DINOv2's: both augment).
- ``augment``: DINO's protocol (preset ``eval_linear_dino``): the frozen backbone re-runs every epoch on
  RandomResizedCrop + flip views of the train images; the heads see those features.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sparsedino.config import resolve_device
from sparsedino.data.joint_transforms import make_classification_transform
from sparsedino.eval.features import extract_for_protocol, forward_tokens, resolve_layers
from sparsedino.models.layout import token_layout


def linear_inputs(cls: torch.Tensor, pooled: torch.Tensor, n_last_blocks: int, avgpool: bool) -> torch.Tensor:
    """DINO's probe input: [CLS] of the last ``n_last_blocks`` blocks (+ avg-pooled last-block patches).

    Args:
        cls: (N, L, C) [CLS] tokens, blocks in increasing depth, L >= n_last_blocks.
        pooled: (N, L, C) averages of the patch tokens.
        n_last_blocks: how many of the last blocks' [CLS] to concatenate.
        avgpool: append the last block's average-pooled patch tokens.

    Returns:
        (N, n_last_blocks * C (+ C)) float32.
    """
    if n_last_blocks > cls.shape[1]:
        raise ValueError(f"n_last_blocks={n_last_blocks} but only {cls.shape[1]} blocks were extracted")
    parts = [cls[:, -n_last_blocks:].flatten(1)]
    if avgpool:
        parts.append(pooled[:, -1])
    return torch.cat(parts, dim=1).float()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return 100.0 * float((top[:, 0] == labels).float().mean()), 100.0 * float(
        (top == labels[:, None]).any(1).float().mean()
    )


def train_linear_grid(
    train_cls: torch.Tensor,
    train_pooled: torch.Tensor,
    train_labels: torch.Tensor,
    val_cls: torch.Tensor,
    val_pooled: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    lrs: Sequence[float],
    n_last_blocks: Sequence[int] = (1, 4),
    avgpool: Sequence[bool] = (False, True),
    epochs: int = 10,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] | None = None,
    steps_per_epoch: int | None = None,
) -> dict:
    """Train one linear head per (lr, n_last_blocks, avgpool) on the same batches; evaluate all on val.

    Args:
        train_cls, val_cls: (N, L, C) [CLS] tokens of the last L blocks (after the final norm).
        train_pooled, val_pooled: (N, L, C) average-pooled patch tokens of the same blocks.
        train_labels, val_labels: (N,) class ids.
        num_classes: number of classes.
        lrs: base learning rates; each is scaled by ``batch_size / 256``.
        n_last_blocks, avgpool: input variants (DINO ViT-S default: 4 blocks, no avgpool).
        epochs: passes over the training features.
        batch_size, momentum, weight_decay, seed: SGD settings; cosine schedule to 0 over all steps.
        device: where the heads train.
        progress: show a tqdm bar.
        epoch_batches: ``epoch -> iterable of (cls, pooled, labels)`` batches replacing the shuffled
            ``train_*`` tensors (then None): features of augmented views computed on the fly.
        steps_per_epoch: batches ``epoch_batches`` yields per epoch (for the schedule).

    Returns:
        ``{"grid": [{lr, n_last_blocks, avgpool, top1, top5}, ...], "best": {...}, "iters_per_s": ...}``
        with accuracies in percent; ``best`` maximises val top-1 (ties: first in grid order).
    """
    torch.manual_seed(seed)
    variants = list(itertools.product(n_last_blocks, avgpool))
    heads = nn.ModuleDict()
    groups, grid = [], []
    for n, pool in variants:
        dim = linear_inputs(val_cls[:1], val_pooled[:1], n, pool).shape[1]
        for lr in lrs:
            name = f"n{n}_pool{int(pool)}_lr{lr:g}".replace(".", "p")
            head = nn.Linear(dim, num_classes)
            nn.init.normal_(head.weight, std=0.01)  # DINO's LinearClassifier init
            nn.init.zeros_(head.bias)
            heads[name] = head
            groups.append({"params": head.parameters(), "lr": lr * batch_size / 256})
            grid.append({"name": name, "lr": lr, "n_last_blocks": n, "avgpool": pool})
    heads.to(device)
    optimizer = torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
    if epoch_batches is None:
        n_train = train_cls.shape[0]
        steps_per_epoch = math.ceil(n_train / batch_size)
        generator = torch.Generator().manual_seed(seed)

        def epoch_batches(epoch: int):  # shuffled batches of the cached features
            perm = torch.randperm(n_train, generator=generator)
            for step in range(steps_per_epoch):
                idx = perm[step * batch_size : (step + 1) * batch_size]
                yield train_cls[idx], train_pooled[idx], train_labels[idx]

    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"linear grid ({len(heads)} heads)", unit="it", disable=not progress)
    for epoch in range(epochs):
        for batch_cls, batch_pooled, batch_labels in epoch_batches(epoch):
            labels = batch_labels.to(device)
            loss = 0.0
            for n, pool in variants:  # one input per variant, shared by all its learning rates
                x = linear_inputs(batch_cls, batch_pooled, n, pool).to(device)
                for entry in grid:
                    if entry["n_last_blocks"] == n and entry["avgpool"] == pool:
                        loss = loss + F.cross_entropy(heads[entry["name"]](x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # heads are independent: the summed loss gives each its own gradient
            optimizer.step()
            scheduler.step()
            bar.update()
    bar.close()
    iters_per_s = total / max(time.perf_counter() - start, 1e-9)
    heads.eval()
    with torch.no_grad():
        val_labels = val_labels.to(device)
        for n, pool in variants:
            x = linear_inputs(val_cls, val_pooled, n, pool).to(device)
            for entry in grid:
                if entry["n_last_blocks"] == n and entry["avgpool"] == pool:
                    entry["top1"], entry["top5"] = _accuracy(heads[entry["name"]](x), val_labels)
    best = max(grid, key=lambda e: e["top1"])  # max keeps the first of equal values
    return {
        "grid": grid,
        "best": dict(best),
        "iters_per_s": round(iters_per_s, 2),
        "iters": total,
        "heads": heads,
    }


def run_linear(model: nn.Module, train_ds: Dataset, val_ds: Dataset, cfg) -> dict:
    """Train the grid of linear heads on frozen [CLS] (+ pooled patch) features; return a JSON-ready dict.

    ``cfg.train_mode == "cached"`` extracts the train features once (no augmentation); ``"augment"`` (DINO)
    re-runs the frozen backbone every epoch on RandomResizedCrop + flip views. Val features are always
    extracted once (Resize + CenterCrop).

    Args:
        model: a frozen timm ViT.
        train_ds, val_ds: labelled datasets ``(image tensor, label)`` (e.g. ``ImageNetFolder``) with the
            evaluation transform; ``augment`` mode swaps the train transform for the augmenting one.
        cfg: :class:`sparsedino.eval.settings.LinearConfig`.
    """
    model_depth = len(model.blocks)
    blocks = [n for n in cfg.n_last_blocks if n <= model_depth]  # a 3-block model has no "last 4"
    if not blocks:
        raise ValueError(f"n_last_blocks {list(cfg.n_last_blocks)} all exceed the model depth {model_depth}")
    layers = tuple(range(-max(blocks), 0))
    device = resolve_device(cfg.features.device)
    val = extract_for_protocol(model, val_ds, cfg.features, layers=layers, norm=True, tag="val")
    num_classes = len(getattr(train_ds, "classes", [])) or int(val.labels.max()) + 1
    extracted = {"val": val}
    if cfg.train_mode == "augment":
        train_aug = _augmented(train_ds, cfg.crop, model)
        train_args = (None, None, None)
        online = {
            "epoch_batches": _online_batches(model, train_aug, layers, cfg, device),
            "steps_per_epoch": math.ceil(len(train_aug) / cfg.batch_size),
        }
        protocol = "DINO: backbone re-run every epoch on augmented views"
        augmentation = f"RandomResizedCrop {cfg.crop} (scale 0.08-1, bilinear) + horizontal flip, every epoch"
    else:
        train = extract_for_protocol(model, train_ds, cfg.features, layers=layers, norm=True, tag="train")
        extracted = {"train": train, "val": val}
        train_args, online = (train.cls, train.pooled, train.labels), {}
        protocol = "cached grid: train features computed once, no augmentation (not DINO's protocol)"
        augmentation = "none, features cached (Resize + CenterCrop)"
    result = train_linear_grid(
        *train_args,
        val.cls,
        val.pooled,
        val.labels,
        num_classes,
        cfg.lrs,
        blocks,
        cfg.avgpool,
        cfg.epochs,
        cfg.batch_size,
        cfg.momentum,
        cfg.weight_decay,
        cfg.seed,
        device=device,
        **online,
    )
    skipped = sorted(set(cfg.n_last_blocks) - set(blocks))
    if skipped:
        result["skipped_n_last_blocks"] = skipped
    result.pop("heads")
    return {
        "protocol": "linear",
        "train_mode": cfg.train_mode,
        "protocol_variant": protocol,
        "features": "[CLS] of the last n blocks after the final norm (+ avg-pooled last-block patches)",
        "augmentation": augmentation,
        "optimizer": f"SGD momentum {cfg.momentum}, wd {cfg.weight_decay}, cosine, lr x batch/256, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}",
        "selection": "best val top-1 over the grid",
        **result,
        "extraction": {
            split: {**(fs.meta.get("timing") or {}), "cache": fs.meta["cache"]["status"]}
            for split, fs in extracted.items()
        },
    }


def _augmented(dataset: Dataset, crop: int, model: nn.Module) -> Dataset:
    """A shallow copy of a reader whose transform is DINO's linear-probe train view (the model's statistics)."""
    layout = token_layout(model)
    clone = copy.copy(dataset)
    clone.transform = make_classification_transform(train=True, crop=crop, mean=layout.mean, std=layout.std)
    return clone


def _online_batches(model: nn.Module, dataset: Dataset, layers: tuple[int, ...], cfg, device) -> Callable:
    """``epoch -> batches of (cls, pooled, labels)``: augmented views through the frozen backbone."""
    abs_layers = resolve_layers(model, layers)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.features.num_workers,
        generator=generator,
    )

    def epoch_batches(epoch: int):
        model.eval().to(device)
        for images, labels in loader:
            with torch.no_grad():
                cls, patches, _ = forward_tokens(model, images.to(device), abs_layers, norm=True)
            yield cls.float(), patches.float().mean((2, 3)), labels

    return epoch_batches
