"""Names, titles and one-line definitions of every per-block score (metrics.json keys, report, curves).

The full definitions are in the docstrings of the functions computing them and in docs/diagnostics.md.
"""

from __future__ import annotations

# key -> (group, title, one-line definition)
SCORES: dict[str, tuple[str, str, str]] = {
    "norm.median": (
        "norms",
        "median patch norm",
        "median L2 norm of patch tokens (residual stream, no final norm)",
    ),
    "norm.p99": ("norms", "99th pct patch norm", "99th percentile of patch-token norms"),
    "norm.max_over_median": (
        "norms",
        "max / median norm",
        "largest patch norm over its image median, mean over images",
    ),
    "norm.outlier_share": (
        "norms",
        "outlier share",
        "share of patch tokens with norm > outlier_ratio x image median",
    ),
    "norm.outlier_on_background": (
        "norms",
        "outliers on background",
        "share of labelled outliers on background patches",
    ),
    "norm.fg_over_bg": (
        "norms",
        "fg / bg norm",
        "mean norm of foreground over background patches, mean over images",
    ),
    "attn.entropy": (
        "attention",
        "entropy (nats)",
        "Shannon entropy of patch queries' attention rows over all keys",
    ),
    "attn.zero_share": (
        "attention",
        "exact zeros",
        "share of exactly-zero probabilities in patch queries' rows",
    ),
    "attn.support": ("attention", "support size", "number of keys with non-zero probability per patch query"),
    "attn.distance_px": (
        "attention",
        "mean attention distance (px)",
        "attention-weighted distance between patch centres, patch keys renormalised",
    ),
    "attn.cls_fg_mass": (
        "attention",
        "[CLS] mass on foreground",
        "share of [CLS]->patch attention (head mean) on foreground patches",
    ),
    "attn.cls_fg_chance": (
        "attention",
        "foreground share (chance)",
        "share of labelled patches that are foreground (uniform attention level)",
    ),
    "align.cls_attn_iou": (
        "alignment",
        "IoU [CLS]-attn 60% mask, head-mean map",
        "IoU with GT of the patches holding 60% of the head-averaged [CLS] attention",
    ),
    "align.cls_attn_iou_heads": (
        "alignment",
        "IoU [CLS]-attn 60% mask, mean of heads",
        "IoU with GT of each head's 60%-mass [CLS]-attention mask (DINO's figures), mean over heads",
    ),
    "align.pca_iou": (
        "alignment",
        "IoU PCA-1 (border-prior sign)",
        "IoU with GT of the positive side of the 1st PCA component, sign by border prior",
    ),
    "align.pca_iou_oracle": (
        "alignment",
        "IoU PCA-1 (oracle sign)",
        "max over both signs of the PCA-1 foreground IoU",
    ),
    "diffusion.acc_bg": (
        "diffusion",
        "label acc. from bg patch",
        "image-label accuracy of a linear probe on single pure-background patches",
    ),
    "diffusion.acc_fg": (
        "diffusion",
        "label acc. from fg patch",
        "image-label accuracy of a linear probe on single foreground patches",
    ),
    "diffusion.acc_cls": (
        "diffusion",
        "label acc. from [CLS]",
        "image-label accuracy of a linear probe on the [CLS] token",
    ),
    "diffusion.chance_bg": (
        "diffusion",
        "chance (bg)",
        "accuracy of predicting the most frequent training label (bg test set)",
    ),
    "diffusion.diffusion_index": (
        "diffusion",
        "diffusion index",
        "(acc_bg - chance_bg) / (acc_fg - chance_fg)",
    ),
    "diffusion.cos_fg": (
        "diffusion",
        "cos(patch, [CLS]) fg",
        "mean cosine of foreground patch tokens to [CLS]",
    ),
    "diffusion.cos_bg": (
        "diffusion",
        "cos(patch, [CLS]) bg",
        "mean cosine of background patch tokens to [CLS]",
    ),
    "probe.miou": ("dense probe", "linear seg mIoU", "mIoU of a linear probe on patch tokens"),
    "probe.miou_with_cls": (
        "dense probe",
        "linear seg mIoU + [CLS]",
        "mIoU of a linear probe on patch tokens concatenated with [CLS]",
    ),
    # register tokens (registers.py): only for models that have them, reported in their own section
    "reg.norm": ("registers", "register norm", "mean L2 norm of the register tokens (residual stream)"),
    "reg.norm_over_patch_median": (
        "registers",
        "register / median patch norm",
        "mean register norm over the image's median patch norm, mean over images",
    ),
    "reg.mass_from_patches": (
        "registers",
        "patch attention on registers",
        "attention mass patch queries put on all register keys (head and query mean)",
    ),
    "reg.mass_chance": ("registers", "registers' share of keys", "registers / all keys (uniform attention)"),
    "reg.mass_from_cls": (
        "registers",
        "[CLS] attention on registers",
        "attention mass the [CLS] query puts on all register keys (head mean)",
    ),
    "reg.entropy": (
        "registers",
        "register entropy (nats)",
        "Shannon entropy of the registers' attention rows",
    ),
    "reg.support": ("registers", "register support", "number of keys with non-zero probability per register"),
    "reg.mass_on_patches": (
        "registers",
        "register attention on patches",
        "share of the registers' attention on patch keys (the rest is on [CLS] and registers)",
    ),
    "dse.score": (
        "dense structure (DSE)",
        "DSE",
        "M_inter - (M_intra_batch + M_intra_image) / 2 + lambda M_dim (Dai et al. 2025), label-free",
    ),
    "dse.inter": (
        "dense structure (DSE)",
        "DSE M_inter",
        "mean distance to the nearest other k-means centroid / scale",
    ),
    "dse.intra_image": (
        "dense structure (DSE)",
        "DSE M_intra (image)",
        "mean radius of per-image k-means clusters / scale",
    ),
    "dse.intra_batch": (
        "dense structure (DSE)",
        "DSE M_intra (batch)",
        "mean radius of 8-image k-means clusters / scale",
    ),
    "dse.dim": (
        "dense structure (DSE)",
        "DSE M_dim",
        "normalised effective rank of tokens at one (shuffled) position",
    ),
}

GROUPS: list[str] = list(dict.fromkeys(group for group, _, _ in SCORES.values()))


def scalar_scores(block_metrics: dict) -> dict[str, float]:
    """The known scalar scores present (not None) in one block's metrics, in :data:`SCORES` order."""
    return {k: block_metrics[k] for k in SCORES if isinstance(block_metrics.get(k), (int, float))}
