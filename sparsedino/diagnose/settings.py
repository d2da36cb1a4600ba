"""Options of ``sparsedino diagnose`` (defaults < YAML < ``key=value`` overrides, see ``sparsedino.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsedino.config import ConfigError, check_device, load_config


@dataclass
class DenseProbeSettings:
    """Per-block linear segmentation probe (``sparsedino.eval.segmentation.train_seg_probe``)."""

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

    layers: list[int] = field(default_factory=list)  # block indices (negative from the end); empty = all
    split: str = "val"  # dataset split to diagnose
    dataset: str = "voc"  # voc | ade20k | cityscapes (layout of --data)
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


DATASETS = ("voc", "ade20k", "cityscapes")


def validate(cfg: DiagnoseConfig) -> None:
    """Check choices and ranges of every option; raise :class:`ConfigError` naming the key."""

    def need(ok: bool, key: str, rule: str, value) -> None:
        if not ok:
            raise ConfigError(f"key {key!r} {rule}, got {value!r}")

    need(cfg.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}", cfg.dataset)
    check_device(cfg.device, "device")
    for key in ("n_images", "img_size", "batch_size", "patches_per_image", "label_probe_iterations"):
        need(getattr(cfg, key) > 0, key, "must be > 0", getattr(cfg, key))
    for key in ("n_figure_images", "label_probe_weight_decay"):
        need(getattr(cfg, key) >= 0, key, "must be >= 0", getattr(cfg, key))
    for key in ("fg_threshold", "cls_mass_keep"):
        need(0 < getattr(cfg, key) <= 1, key, "must be in (0, 1]", getattr(cfg, key))
    need(
        cfg.outlier_ratio > 1,
        "outlier_ratio",
        "must be > 1 (a multiple of the median norm)",
        cfg.outlier_ratio,
    )
    probe = cfg.dense_probe
    for key in ("iterations", "lr", "batch_size", "max_images"):
        need(getattr(probe, key) > 0, f"dense_probe.{key}", "must be > 0", getattr(probe, key))
    for key in ("weight_decay", "warmup_iters"):
        need(getattr(probe, key) >= 0, f"dense_probe.{key}", "must be >= 0", getattr(probe, key))
    need(
        0 < probe.train_fraction < 1, "dense_probe.train_fraction", "must be in (0, 1)", probe.train_fraction
    )
    dse = cfg.dse
    for key in ("max_images", "local_clusters", "global_clusters", "group_images", "kmeans_iters"):
        need(getattr(dse, key) > 0, f"dse.{key}", "must be > 0", getattr(dse, key))
    need(dse.dim_weight >= 0, "dse.dim_weight", "must be >= 0", dse.dim_weight)


def load_diagnose_config(path: str | None = None, overrides=()) -> DiagnoseConfig:
    """Defaults < YAML/preset < ``key=value`` overrides, then :func:`validate`."""
    cfg = load_config(DiagnoseConfig, path, overrides)
    validate(cfg)
    return cfg
