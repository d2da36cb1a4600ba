"""Weighted k-NN classification on frozen [CLS] features, as in DINO.

Protocol: [CLS] of the last block after the final norm, L2-normalised; cosine similarity to every training
feature; the k nearest neighbours vote for their class with weight exp(sim / T) (T = 0.07); top-1 and
top-5 accuracy for k in {10, 20, 100, 200} (k = 20 is DINO's headline number). The test set is processed in
chunks, so memory stays at chunk_size x num_train similarities. A class that received no vote never counts
as a top-5 hit (with fewer than 5 voted classes, DINO's code could count zero-vote ties by index order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from sparsedino.eval.features import extract_for_protocol


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    T: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
    progress: bool = False,
) -> dict:
    """Weighted k-NN accuracy of ``test_feats`` against ``train_feats``.

    Args:
        train_feats: (N_train, C) features (normalised here).
        train_labels: (N_train,) int labels.
        test_feats: (N_test, C) features.
        test_labels: (N_test,) int labels.
        ks: neighbour counts; a k larger than N_train is clipped to N_train (the result says so).
        T: temperature of the vote weights exp(sim / T).
        num_classes: number of classes (default: max label + 1).
        chunk_size: test samples per similarity block.
        progress: show a tqdm bar over chunks.

    Returns:
        ``{"k=20": {"k": 20, "top1": %, "top5": %}, ...}`` (accuracies in percent), plus ``"T"``,
        ``"num_train"``, ``"num_test"``.
    """
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    train_labels, test_labels = train_labels.long(), test_labels.long()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    ks_eff = sorted({min(int(k), train.shape[0]) for k in ks})
    kmax = ks_eff[-1]
    top5_n = min(5, num_classes)
    correct1 = dict.fromkeys(ks_eff, 0)
    correct5 = dict.fromkeys(ks_eff, 0)
    starts = range(0, test.shape[0], chunk_size)
    for start in tqdm(starts, desc="k-NN", unit="chunk", disable=not progress):
        sims = test[start : start + chunk_size] @ train.T  # (B, N_train)
        labels = test_labels[start : start + chunk_size]
        top_sims, top_idx = sims.topk(kmax, dim=1)  # (B, kmax), sorted descending
        neighbour_labels = train_labels[top_idx]
        weights = (top_sims / T).exp()
        for k in ks_eff:
            votes = torch.zeros(labels.shape[0], num_classes)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])  # (B, num_classes)
            top_votes, ranked = votes.topk(top5_n, dim=1)
            # a class no neighbour voted for is never "in the top 5", whatever the tie order of zeros
            hits = (ranked == labels[:, None]) & (top_votes > 0)
            correct1[k] += int(hits[:, 0].sum())
            correct5[k] += int(hits.any(1).sum())
    n = test.shape[0]
    result: dict = {"T": T, "num_train": train.shape[0], "num_test": n}
    for k_req in ks:
        k = min(int(k_req), train.shape[0])
        entry = {"k": k, "top1": 100.0 * correct1[k] / n, "top5": 100.0 * correct5[k] / n}
        if k != k_req:
            entry["clipped_from"] = int(k_req)
        result[f"k={k_req}"] = entry
    return result


def run_knn(model: torch.nn.Module, train_ds: Dataset, val_ds: Dataset, cfg) -> dict:
    """Extract last-block normed [CLS] features of both splits (cached if configured) and run k-NN.

    Args:
        model: a timm ViT (frozen; put in eval mode here).
        train_ds: labelled dataset returning ``(image tensor, label)`` (e.g. ``ImageNetFolder``).
        val_ds: same for the evaluation split.
        cfg: a :class:`sparsedino.eval.settings.KnnConfig`.

    Returns:
        A plain dict: protocol description, the k-NN results and feature-extraction timings.
    """
    train = extract_for_protocol(model, train_ds, cfg.features, layers=(-1,), norm=True, tag="train")
    val = extract_for_protocol(model, val_ds, cfg.features, layers=(-1,), norm=True, tag="val")
    num_classes = len(getattr(train_ds, "classes", [])) or None
    result = knn_classify(
        train.cls[:, -1],
        train.labels,
        val.cls[:, -1],
        val.labels,
        ks=tuple(cfg.ks),
        T=cfg.temperature,
        num_classes=num_classes,
        chunk_size=cfg.chunk_size,
        progress=True,
    )
    return {
        "protocol": "knn",
        "features": "[CLS] of the last block after the final norm, L2-normalised; cosine similarity",
        "results": result,
        "headline": {"k": 20, "top1": result.get("k=20", {}).get("top1")},
        "extraction": {
            split: {**(fs.meta.get("timing") or {}), "cache": fs.meta["cache"]["status"]}
            for split, fs in (("train", train), ("val", val))
        },
    }
