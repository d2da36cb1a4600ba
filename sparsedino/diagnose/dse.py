"""DSE, the Dense representation Structure Estimator (Dai et al., NeurIPS 2025, arXiv 2510.17299).

A label-free estimate of how good patch features are for dense prediction, from their cluster structure.
The definition follows the authors' code (github.com/EldercatSAM/SSL-Degradation, ``estimator.py``
``compute_DSE``), with ``B`` images of ``N`` patch tokens of dimension ``d`` (L2-normalised first when
``dse.normalize``, as in the authors' command line):

* pseudo-classes by k-means: ``local_clusters`` clusters in each image, ``global_clusters`` clusters in
  each group of ``group_images`` consecutive images;
* cluster radius ``r(C) = ||X_C - mean(X_C)||_* / sqrt(max(|C| - 1, d))`` (nuclear norm of the centred
  points: the sum of their singular values), clusters of at least 2 points;
* scale ``s`` = mean distance of all B*N tokens to their overall mean;
* ``M_intra_image`` = mean over images of the mean local-cluster radius, divided by ``s``;
* ``M_intra_batch`` = mean over every global cluster (all groups) of its radius, divided by ``s``;
* ``M_inter`` = mean over groups of the mean over their tokens of the distance to the nearest centroid
  of *another* global cluster, divided by ``s``;
* ``M_dim`` = mean over patch positions of the normalised effective rank ``exp(H(sigma / sum sigma)) /
  min(B, d)`` (Roy and Vetterli) of the B tokens at that position, after shuffling the positions of each
  image independently (the authors: "to ensure i.i.d.");
* ``DSE = M_inter - (M_intra_batch + M_intra_image) / 2 + lambda * M_dim``; higher = better dense features.

From the paper and its code: the terms, their normalisation, the formula with ``lambda = 1`` (the code;
the paper's text rescales lambda across checkpoints by standard deviations, ``dse.dim_weight`` sets it),
the cluster counts 3 / 24 and 8-image groups (the authors' command line), k-means with k-means++ seeding
and 20 iterations. Our reading (options where it is a choice): k-means++ seeds with probability
proportional to the squared distance (the standard rule, as the authors' comment says; their code uses the
distance itself); centroids for ``M_inter`` are the means of the final assignment and empty clusters drop
out (the code keeps an empty cluster's previous centroid); an image whose local clusters all have one
point is skipped (the code counts it as 1.0); the features are those diagnosed here (per block, the
block's output after the final norm, images of the diagnosed split; the authors use the last block of
2,048 ImageNet training images in batches of 1,024, averaging the batches: one batch of at most
``dse.max_images`` images here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from sparsedino.diagnose.batches import ResizeCollate
from sparsedino.diagnose.settings import DSESettings

# Added inside the logarithm of the effective rank (the authors' epsilon).
ERANK_EPS = 1e-12
# k-means stops when the centroids move less than this (the authors' tol on the total shift).
KMEANS_TOL = 1e-4


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Batched k-means with k-means++ seeding: ``x`` (G, N, d) -> labels (G, N) in ``[0, k)``.

    Clusters that lose every point keep their previous centroid (they may take points again).
    """
    g, n, _ = x.shape
    k = min(k, n)
    rows = torch.arange(g)
    first = torch.randint(n, (g,), generator=gen)
    centroids = [x[rows, first]]  # (G, d) each
    dist = (x - centroids[0][:, None]).pow(2).sum(-1)  # (G, N) squared distance to the nearest seed
    for _ in range(k - 1):
        weights = dist.clamp_min(0) + 1e-30  # D^2 weighting (points on a seed: ~never drawn)
        pick = torch.multinomial(weights, 1, generator=gen).squeeze(1)
        centroids.append(x[rows, pick])
        dist = torch.minimum(dist, (x - centroids[-1][:, None]).pow(2).sum(-1))
    c = torch.stack(centroids, 1)  # (G, k, d)
    labels = torch.cdist(x, c).argmin(-1)
    for _ in range(iters):
        onehot = F.one_hot(labels, k).to(x.dtype)  # (G, N, k)
        counts = onehot.sum(1)  # (G, k)
        means = onehot.transpose(1, 2) @ x / counts.clamp_min(1)[..., None]
        new = torch.where(counts[..., None] > 0, means, c)
        shift = (new - c).pow(2).sum((1, 2)).sqrt().max()
        c, labels = new, torch.cdist(x, new).argmin(-1)
        if float(shift) < KMEANS_TOL:
            break
    return labels


def cluster_radii(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Radius ``||X_C - mean||_* / sqrt(max(|C| - 1, d))`` of each cluster with >= 2 points, flattened.

    Args:
        x: (G, N, d) points; labels: (G, N) cluster of each point in ``[0, k)``.

    Returns:
        (M,) radii (float64) of the clusters, over all G groups, that hold at least two points; the
        nuclear norm is the sum of the singular values of the centred points.
    """
    d = x.shape[-1]
    radii = []
    for g in range(x.shape[0]):
        for c in range(k):
            points = x[g][labels[g] == c].double()  # (|C|, d)
            if points.shape[0] >= 2:
                nuclear = torch.linalg.svdvals(points - points.mean(0)).sum()
                radii.append(nuclear / math.sqrt(max(points.shape[0] - 1, d)))
    return torch.stack(radii) if radii else torch.zeros(0, dtype=torch.float64)


def nearest_other_centroid(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per group, the mean over its points of the distance to the nearest centroid of another cluster.

    Args:
        x: (G, N, d); labels: (G, N).

    Returns:
        (G,) (NaN for a group with fewer than two non-empty clusters).
    """
    onehot = F.one_hot(labels, k).to(x.dtype)
    counts = onehot.sum(1)  # (G, k)
    centroids = onehot.transpose(1, 2) @ x / counts.clamp_min(1)[..., None]  # (G, k, d)
    dist = torch.cdist(x, centroids)  # (G, N, k)
    excluded = (onehot > 0) | (counts[:, None, :] == 0)  # own cluster and empty clusters
    nearest = dist.masked_fill(excluded, float("inf")).amin(-1)  # (G, N)
    return torch.where(nearest.isfinite(), nearest, torch.nan).mean(-1)


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """``exp(H(p)) / min(n, d)`` with ``p = sigma / sum sigma`` of the singular values of (..., n, d) ``x``."""
    sigma = torch.linalg.svdvals(x.double())  # (..., min(n, d))
    p = sigma / sigma.sum(-1, keepdim=True).clamp_min(1e-300) + ERANK_EPS
    return torch.exp(-(p * p.log()).sum(-1)) / min(x.shape[-2], x.shape[-1])


def dse_from_clusters(
    x: torch.Tensor,
    local_labels: torch.Tensor,
    group_labels: list[torch.Tensor],
    perm: torch.Tensor,
    settings: DSESettings,
) -> dict[str, float]:
    """The DSE terms of features ``x`` (B, N, d) for given cluster assignments (the formula itself).

    Args:
        x: patch features (already normalised when ``settings.normalize``).
        local_labels: (B, N) cluster of each patch within its image (``settings.local_clusters``).
        group_labels: per group of ``settings.group_images`` consecutive images, (1, n_g * N) labels.
        perm: (B, N) the shuffled position order of each image (for ``M_dim``).
        settings: the cluster counts and ``dim_weight``.

    Returns:
        ``{"dse.score", "dse.inter", "dse.intra_image", "dse.intra_batch", "dse.dim"}``.
    """
    b, d = x.shape[0], x.shape[-1]
    scale = float((x - x.reshape(-1, d).mean(0)).norm(dim=-1).mean())
    per_image = []
    for i in range(b):  # mean radius of the image's clusters (images without a 2-point cluster skipped)
        radii = cluster_radii(x[i : i + 1], local_labels[i : i + 1], settings.local_clusters)
        if radii.numel():
            per_image.append(float(radii.mean()))
    batch_radii, inter = [], []
    for g, labels in enumerate(group_labels):
        points = x[g * settings.group_images : (g + 1) * settings.group_images].reshape(1, -1, d)
        batch_radii.append(cluster_radii(points, labels, settings.global_clusters))
        inter.append(float(nearest_other_centroid(points, labels, settings.global_clusters)[0]))
    shuffled = x[torch.arange(b)[:, None], perm].transpose(0, 1)  # (N, B, d): position n of every image
    m_dim = float(effective_rank(shuffled).mean())
    m_intra_image = (sum(per_image) / len(per_image) if per_image else math.nan) / scale
    radii = torch.cat(batch_radii)
    m_intra_batch = (float(radii.mean()) if radii.numel() else math.nan) / scale
    m_inter = float(torch.tensor(inter, dtype=torch.float64).nanmean()) / scale
    return {
        "dse.score": m_inter - (m_intra_batch + m_intra_image) / 2 + settings.dim_weight * m_dim,
        "dse.inter": m_inter,
        "dse.intra_image": m_intra_image,
        "dse.intra_batch": m_intra_batch,
        "dse.dim": m_dim,
    }


@torch.no_grad()
def dse_scores(features: torch.Tensor, settings: DSESettings) -> dict[str, float | None]:
    """DSE of patch features (B, N, d): cluster them (seeded by ``settings.seed``) and apply the formula.

    Returns:
        The terms of :func:`dse_from_clusters`; all None with fewer than 2 images (no rank, no groups).
    """
    if features.shape[0] < 2:
        return dict.fromkeys(("dse.score", "dse.inter", "dse.intra_image", "dse.intra_batch", "dse.dim"))
    x = features.float()
    if settings.normalize:
        x = F.normalize(x, dim=-1)
    gen = torch.Generator().manual_seed(settings.seed)
    b, n, d = x.shape
    local = kmeans(x, settings.local_clusters, settings.kmeans_iters, gen)
    groups = [x[s : s + settings.group_images].reshape(1, -1, d) for s in range(0, b, settings.group_images)]
    group_labels = [kmeans(points, settings.global_clusters, settings.kmeans_iters, gen) for points in groups]
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(b)])
    return dse_from_clusters(x, local, group_labels, perm, settings)


@torch.no_grad()
def block_features(
    model: torch.nn.Module, dataset: Dataset, n_images: int, img_size: int, batch_size: int, block: int = -1
) -> torch.Tensor:
    """Patch tokens of one block after the final norm (as the diagnostics use them), float16 on the CPU.

    Args:
        model: a timm ViT; dataset: items ``(image, mask)`` (the masks are not used);
        n_images: the first ``n_images`` images; img_size: their side after resizing; block: block index.

    Returns:
        (n_images, patches, dim).
    """
    device = next(model.parameters()).device
    model = model.eval()
    loader = DataLoader(Subset(dataset, range(min(n_images, len(dataset)))), batch_size=batch_size,
                        collate_fn=ResizeCollate(img_size))  # fmt: skip
    feats = []
    for images, _ in loader:
        (patches,) = model.forward_intermediates(
            images.to(device), indices=[block % len(model.blocks)], norm=False, output_fmt="NLC",
            intermediates_only=True, stop_early=True,
        )  # fmt: skip
        feats.append(model.norm(patches).half().cpu())  # (B, M, C): LayerNorm acts per token
    return torch.cat(feats)
