"""Semantic-diffusion diagnostics for any timm ViT.

One file per diagnostic; each score is a pure function on tensors whose docstring states the exact
definition (which tokens, which block output, whether the final norm is applied). ``runner.py`` computes
them all per block in one pass over a segmentation dataset; ``report.py`` writes ``metrics.json``,
``report.md`` and a self-contained ``report.html``; ``command.py`` is ``sparsedino diagnose``.
See ``docs/diagnostics.md`` for the definitions in one place.

Names are imported lazily, so ``sparsedino diagnose --help`` does not pay for torch and matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DiagnoseConfig": "settings",
    "run_diagnostics": "runner",
    "write_run": "report",
    "write_compare": "report",
    "token_norms": "norms",
    "outlier_mask": "norms",
    "per_image_norm_scores": "norms",
    "attention_entropy": "attention_stats",
    "support_size": "attention_stats",
    "zero_share": "attention_stats",
    "mean_attention_distance": "attention_stats",
    "cls_patch_attention": "attention_stats",
    "cls_foreground_mass": "attention_stats",
    "cls_attention_mask": "alignment",
    "foreground_iou": "alignment",
    "pca_foreground_mask": "alignment",
    "pca_project": "pca",
    "pca_rgb": "pca",
    "cls_cosine": "diffusion",
    "linear_probe_accuracy": "diffusion",
    "patch_label_probe": "diffusion",
    "patch_foreground": "masks",
    "image_labels": "masks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sparsedino.diagnose.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sparsedino.diagnose' has no attribute {name!r}")
