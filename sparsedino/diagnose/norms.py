"""Token norms and high-norm outliers ("artifact tokens", Darcet et al. 2024).

Norms are measured on the *residual stream* at the output of a block, before the final LayerNorm
(the LayerNorm would rescale every token to about the same norm and hide the artifacts).
"""

from __future__ import annotations

import torch


def token_norms(tokens: torch.Tensor) -> torch.Tensor:
    """L2 norm of each token.

    Args:
        tokens: (B, N, C) patch tokens of one block (residual stream, no final norm).

    Returns:
        (B, N) float32 norms.
    """
    return tokens.float().norm(dim=-1)


def outlier_mask(norms: torch.Tensor, ratio: float = 4.0) -> torch.Tensor:
    """High-norm outliers, a scale-free criterion.

    A patch token is an outlier if its norm exceeds ``ratio`` times the median patch-token norm *of its own
    image at the same block*. The median is robust (a few artifacts do not move it) and the ratio does
    not depend on the model's width or on the overall scale of its activations.

    Args:
        norms: (B, N) patch-token norms.
        ratio: multiple of the per-image median above which a token is an outlier.

    Returns:
        (B, N) bool.
    """
    median = norms.median(dim=1, keepdim=True).values  # (B, 1)
    return norms > ratio * median


def norm_summary(
    norms: torch.Tensor, outliers: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor
) -> dict[str, float | None]:
    """Scalar norm statistics of one block over a set of images.

    Args:
        norms: (B, N) patch-token norms; outliers: (B, N) bool from :func:`outlier_mask`;
        fg / valid: (B, N) bool foreground / labelled patches (see ``masks.patch_foreground``).

    Returns:
        ``median`` / ``mean`` / ``p99`` / ``max`` of all norms, ``max_over_median`` (largest norm divided by
        its image median, mean over images), ``outlier_share`` (share of all patch tokens that are outliers),
        ``outlier_on_background`` (share of the labelled outliers that sit on background patches; None if no
        outlier), ``norm_fg_over_bg`` (mean norm on foreground / mean norm on background patches).
    """
    flat = norms.flatten()
    bg = valid & ~fg
    n_out = int((outliers & valid).sum())
    med = norms.median(dim=1).values.clamp_min(1e-12)
    return {
        "median": float(flat.median()),
        "mean": float(flat.mean()),
        "p99": float(torch.quantile(flat, 0.99)) if flat.numel() else float("nan"),
        "max": float(flat.max()),
        "max_over_median": float((norms.max(dim=1).values / med).mean()),
        "outlier_share": float(outliers.float().mean()),
        "outlier_on_background": float((outliers & bg).sum()) / n_out if n_out else None,
        "norm_fg_over_bg": float(norms[fg].mean() / norms[bg].mean()) if fg.any() and bg.any() else None,
    }
