"""Options of ``sparsedino diagnose`` (defaults < YAML < ``key=value`` overrides, see ``sparsedino.config``).

Each dataclass states the ranges and choices of its keys in its ``RULES`` table
(:func:`sparsedino.options.check_section` checks them, naming the dotted key); the device is checked
against this machine after the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from sparsedino.config import check_device, load_config
from sparsedino.data.segmentation import SEG_DATASETS
from sparsedino.options import NON_NEGATIVE, POSITIVE, OneOf, Range, Rules, check_section

SHARE = Range(0, 1, open_low=True)  # a share of patches or of attention mass: (0, 1]


@dataclass
class DenseProbeSettings:
    """Per-block linear segmentation probe (``sparsedino.eval.seg_probe.train_seg_probe``)."""

    RULES: ClassVar[Rules] = {
        "iterations": POSITIVE,
        "lr": POSITIVE,
        "batch_size": POSITIVE,
        "max_images": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "warmup_iters": NON_NEGATIVE,
        "train_fraction": Range(0, 1, open_low=True, open_high=True),
    }
    enabled: bool = True
    iterations: int = 300  # optimiser steps of each probe (one probe per block and per with/without [CLS])
    lr: float = 1e-3  # AdamW, linear warmup then linear decay (the eval probe's schedule)
    weight_decay: float = 1e-4
    warmup_iters: int = 30  # capped at 10 % of the iterations
    batch_size: int = 16
    seed: int = 0
    max_images: int = 256  # features of at most the first max_images images are kept (float16, every block)
    train_fraction: float = 0.5  # share of the probe's images that train it, the rest evaluates it


@dataclass
class DSESettings:
    """DSE, the label-free dense-quality estimate of Dai et al. 2025 (``dse.py``); defaults are the authors'."""

    RULES: ClassVar[Rules] = {
        "max_images": POSITIVE,
        "local_clusters": POSITIVE,
        "global_clusters": POSITIVE,
        "group_images": POSITIVE,
        "kmeans_iters": POSITIVE,
        "dim_weight": NON_NEGATIVE,
    }
    enabled: bool = True
    max_images: int = 256  # patch features of at most the first max_images diagnosed images (float16)
    local_clusters: int = 3  # k-means clusters per image (authors: 3)
    global_clusters: int = 24  # k-means clusters per group of images (authors: 24)
    group_images: int = 8  # images per group for M_inter and M_intra_batch (authors: 8)
    normalize: bool = True  # L2-normalise the patch features first (authors' command: --normalize)
    kmeans_iters: int = 20  # k-means iterations (authors: 20, stopping early when the centroids settle)
    dim_weight: float = 1.0  # lambda on M_dim (authors' code: 1)
    seed: int = 0  # k-means seeding and the position shuffle


@dataclass
class DiagnoseConfig:
    """Every option of the diagnostics; each is written to ``metrics.json`` with the results."""

    RULES: ClassVar[Rules] = {
        "dataset": OneOf(SEG_DATASETS),
        "n_images": POSITIVE,
        "img_size": POSITIVE,
        "batch_size": POSITIVE,
        "patches_per_image": POSITIVE,
        "label_probe_iterations": POSITIVE,
        "n_figure_images": NON_NEGATIVE,
        "label_probe_weight_decay": NON_NEGATIVE,
        "fg_threshold": SHARE,
        "cls_mass_keep": SHARE,
        "outlier_ratio": Range(1, open_low=True, note="a multiple of the median norm"),
    }
    layers: list[int] = field(default_factory=list)  # block indices (negative from the end); empty = all
    split: str = "val"  # dataset split to diagnose
    dataset: str = "voc"  # one of SEG_DATASETS: voc | ade20k | cityscapes (layout of --data)
    n_images: int = 64  # images diagnosed (the first n of the split, in file order)
    img_size: int = 224  # images and masks are resized to img_size x img_size (masks: nearest)
    batch_size: int = 16
    device: str = "auto"  # auto | cpu | cuda
    final_norm: bool = True  # apply the backbone's final LayerNorm to per-block features (DINO convention)
    fg_threshold: float = 0.5  # a patch is foreground if >= this share of its labelled pixels is foreground
    outlier_ratio: float = 4.0  # high-norm outlier: norm > outlier_ratio x median patch norm of its image
    cls_mass_keep: float = 0.6  # [CLS]-attention foreground map keeps this share of the attention mass
    patches_per_image: int = 4  # background (and foreground) patches sampled per image for the label probe
    label_probe_iterations: int = 200  # L-BFGS iterations of the patch -> image-label logistic regression
    label_probe_weight_decay: float = 1e-3
    seed: int = 0
    n_figure_images: int = 4  # images whose maps (attention, PCA, norms) are drawn
    dense_probe: DenseProbeSettings = field(default_factory=DenseProbeSettings)
    dse: DSESettings = field(default_factory=DSESettings)


def validate(cfg: DiagnoseConfig) -> None:
    """Check choices and ranges of every option (the ``RULES`` tables), then the device.

    Raises:
        ConfigError: naming the key, for a value outside its range or choices, or a CUDA device this
            machine does not have.
    """
    check_section(cfg, DiagnoseConfig)
    check_device(cfg.device, "device")


def load_diagnose_config(path: str | None = None, overrides: Sequence[str] = ()) -> DiagnoseConfig:
    """Defaults < YAML/preset < ``key=value`` overrides, then :func:`validate`."""
    cfg = load_config(DiagnoseConfig, path, overrides)
    validate(cfg)
    return cfg
