"""Attention statistics per block: entropy, sparsity, support, locality, [CLS] foreground mass.

All functions take the attention probabilities of one block, ``attn`` (B, H, N, N) with rows = queries,
columns = keys, N = P + h*w where the first P tokens are the prefix tokens ([CLS] then registers) and the
rest are the patches in row-major order. Statistics over *queries* use the patch queries only (the [CLS]
row is summarised separately by :func:`cls_foreground_mass`); keys are all N tokens unless stated.
"""

from __future__ import annotations

import torch

from sparsedino.attention.gradients import TINY


def attention_entropy(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Shannon entropy (nats) of each patch query's attention row over all N keys, 0 log 0 = 0.

    Args:
        attn: (B, H, N, N) probabilities; num_prefix: P.

    Returns:
        (B, H, N - P) entropies. Divide by log(N) for a resolution-free share of the maximum.
    """
    p = attn[:, :, num_prefix:].float()
    return -(torch.special.xlogy(p, p)).sum(-1)


def support_size(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Number of keys with non-zero probability (exactly ``> 0``) for each patch query.

    Returns:
        (B, H, N - P) int64 support sizes (N for softmax, fewer for entmax / sparsemax).
    """
    return (attn[:, :, num_prefix:] > 0).sum(-1)


def zero_share(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Share of exact zeros among the (patch query, key) probabilities, per image and head.

    Returns:
        (B, H) float in [0, 1]; equals ``1 - support_size / N`` averaged over queries.
    """
    return (attn[:, :, num_prefix:] == 0).float().mean(dim=(-1, -2))


def patch_distances(grid: tuple[int, int], patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every pair of patches.

    Returns:
        (h*w, h*w) float32 distances.
    """
    h, w = grid
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    ys, xs = torch.meshgrid(torch.arange(h) * ph, torch.arange(w) * pw, indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=-1).float()  # (h*w, 2)
    return torch.cdist(centres, centres)


def mean_attention_distance(
    attn: torch.Tensor, num_prefix: int, grid: tuple[int, int], patch_size: int | tuple[int, int]
) -> torch.Tensor:
    """Mean attention distance in pixels (the "attention distance" of the ViT paper, Dosovitskiy et al.).

    For a patch query q: ``d(q) = sum_k a'(q, k) * ||c_q - c_k||`` over patch keys k, with c the patch centres
    in input pixels and a' the attention of q restricted to the patch keys and renormalised to sum to 1
    (so attention parked on [CLS] or registers does not shrink the distance). Queries that put no mass at all
    on patches are NaN (excluded from means with ``nanmean``).

    Returns:
        (B, H, h*w) distances in pixels.
    """
    a = attn[:, :, num_prefix:, num_prefix:].float()  # (B, H, hw, hw) patch -> patch
    mass = a.sum(-1)  # (B, H, hw)
    dist = patch_distances(grid, patch_size).to(a.device)
    weighted = (a * dist).sum(-1)
    return torch.where(mass > 0, weighted / mass.clamp_min(TINY), torch.full_like(mass, float("nan")))


def cls_patch_attention(
    attn: torch.Tensor, num_prefix: int, cls_index: int = 0, per_head: bool = False
) -> torch.Tensor:
    """[CLS] -> patch attention, averaged over heads (or per head) and renormalised over patch keys.

    Returns:
        (B, h*w) non-negative weights summing to 1 per image, or (B, H, h*w) per head with ``per_head``
        (uniform if [CLS] puts no mass on patches).
    """
    a = attn[:, :, cls_index, num_prefix:].float()  # (B, H, hw)
    if not per_head:
        a = a.mean(1)  # (B, hw)
    total = a.sum(-1, keepdim=True)
    uniform = torch.full_like(a, 1.0 / a.shape[-1])
    return torch.where(total > 0, a / total.clamp_min(TINY), uniform)


def cls_foreground_mass(cls_attn: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Share of the [CLS] -> patch attention that lands on foreground patches.

    ``mass = sum_{k in fg} a(k) / sum_{k labelled} a(k)`` with a from :func:`cls_patch_attention`. Its chance
    level (attention spread uniformly) is the image's foreground share of labelled patches.

    Args:
        cls_attn: (B, h*w) from :func:`cls_patch_attention`; fg / valid: (B, h*w) bool.

    Returns:
        (B,) mass (NaN where the image has no labelled patch attended).
    """
    on_valid = (cls_attn * valid).sum(-1)
    on_fg = (cls_attn * (fg & valid)).sum(-1)
    return torch.where(on_valid > 0, on_fg / on_valid.clamp_min(TINY), torch.full_like(on_fg, float("nan")))
