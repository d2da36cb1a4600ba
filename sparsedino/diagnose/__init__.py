"""Semantic-diffusion diagnostics for any timm ViT.

One file per diagnostic; each score is a pure function on tensors whose docstring states the exact
definition (which tokens, which block output, whether the final norm is applied). ``steps.py`` is the
table of them (what each keeps from a batch, what it reports) that ``runner.py`` loops over, per block, in
one pass over a segmentation dataset; ``report.py`` writes ``metrics.json``,
``report.md`` and a self-contained ``report.html``; ``command.py`` is ``sparsedino diagnose``.
See ``docs/diagnostics.md`` for the definitions in one place.
"""

from sparsedino.diagnose.alignment import cls_attention_mask, foreground_iou, pca_foreground_mask
from sparsedino.diagnose.attention_stats import (
    attention_entropy,
    cls_foreground_mass,
    cls_patch_attention,
    mean_attention_distance,
    support_size,
    zero_share,
)
from sparsedino.diagnose.diffusion import cls_cosine, linear_probe_accuracy, patch_label_probe
from sparsedino.diagnose.masks import image_labels, patch_foreground
from sparsedino.diagnose.norms import outlier_mask, per_image_norm_scores, token_norms
from sparsedino.diagnose.pca import pca_project, pca_rgb
from sparsedino.diagnose.report import write_compare, write_run
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.diagnose.settings import DiagnoseConfig

__all__ = [
    "DiagnoseConfig",
    "attention_entropy",
    "cls_attention_mask",
    "cls_cosine",
    "cls_foreground_mass",
    "cls_patch_attention",
    "foreground_iou",
    "image_labels",
    "linear_probe_accuracy",
    "mean_attention_distance",
    "outlier_mask",
    "patch_foreground",
    "patch_label_probe",
    "pca_foreground_mask",
    "pca_project",
    "pca_rgb",
    "per_image_norm_scores",
    "run_diagnostics",
    "support_size",
    "token_norms",
    "write_compare",
    "write_run",
    "zero_share",
]
