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


def per_image_norm_scores(
    norms: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-image norm scores of one block.

    Args:
        norms: (B, N) patch-token norms; fg / valid: (B, N) bool foreground / labelled patches
            (see ``masks.patch_foreground``; background = valid and not fg).

    Returns:
        ``max_over_median``: (B,) largest patch norm divided by the image's median patch norm;
        ``fg_over_bg``: (B,) mean norm of foreground patches / mean norm of background patches (NaN for an
        image without foreground or without background patches).
    """
    median = norms.median(dim=1).values.clamp_min(1e-12)
    bg = valid & ~fg
    fg = fg & valid
    mean_fg = (norms * fg).sum(1) / fg.sum(1).clamp_min(1)
    mean_bg = (norms * bg).sum(1) / bg.sum(1).clamp_min(1)
    ratio = torch.where(fg.any(1) & bg.any(1), mean_fg / mean_bg.clamp_min(1e-12), float("nan"))
    return {"max_over_median": norms.max(dim=1).values / median, "fg_over_bg": ratio}
