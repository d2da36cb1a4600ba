"""Typed configs of the evaluation protocols (load with :func:`sparsedino.config.load_config`).

Defaults follow DINO (k-NN, linear) and DINOv2's "linear" segmentation protocol; the shipped presets
``configs/eval_*.yaml`` set the paper-scale values. Every field can be overridden as ``key=value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sparsedino.config import ConfigError, check_device, load_config
from sparsedino.data.segmentation import SEG_DATASETS
from sparsedino.eval.features import STORAGE_DTYPES
from sparsedino.eval.video_checks import validate_video_config

TRAIN_MODES = (
    "cached",
    "augment",
)  # probe inputs: features cached once, or backbone re-run on augmented views


@dataclass
class FeatureSettings:
    """How frozen features are extracted.

    Attributes:
        batch_size: images per forward pass.
        num_workers: data-loader worker processes.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: storage dtype of cached features: ``float32``, ``float16`` or ``bfloat16``.
        cache_dir: folder of the feature cache ("" = no cache). Keyed by weights, data, layers and norm.
    """

    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: str = ""


@dataclass
class KnnConfig:
    """DINO's weighted k-NN on last-block [CLS] features (after the final norm, L2-normalised)."""

    data_root: str = ""  # ImageNet-style root holding train/<class>/ and val/<class>/
    train_split: str = "train"
    val_split: str = "val"
    resize: int = 256  # eval views: Resize(resize) + CenterCrop(crop), bicubic
    crop: int = 224
    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07
    chunk_size: int = 256  # test samples per similarity block (bounds memory)
    features: FeatureSettings = field(default_factory=FeatureSettings)


@dataclass
class LinearConfig:
    """DINO linear probe: one linear head per (lr, n_last_blocks, avgpool), all trained on the same batches.

    ``train_mode`` chooses the protocol, and the results say which one produced a number:

    - ``cached`` (fast grid): train features are computed once without augmentation (Resize + CenterCrop);
      a wide lr grid costs one backbone pass. Not DINO's protocol, nor DINOv2's (both augment).
    - ``augment`` (DINO's protocol, preset ``eval_linear_dino``): the frozen backbone re-runs every epoch on
      RandomResizedCrop + horizontal-flip views of the train images.
    """

    data_root: str = ""
    train_mode: str = "cached"
    train_split: str = "train"
    val_split: str = "val"
    resize: int = 256
    crop: int = 224
    lrs: list[float] = field(
        default_factory=lambda: [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1]
    )
    n_last_blocks: list[int] = field(default_factory=lambda: [1, 4])
    avgpool: list[bool] = field(default_factory=lambda: [False, True])
    epochs: int = 10
    batch_size: int = 256  # lr is scaled by batch_size / 256 (DINO)
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    features: FeatureSettings = field(default_factory=FeatureSettings)


@dataclass
class SegConfig:
    """DINOv2 "linear" segmentation probe: BatchNorm + 1x1 conv on frozen patch tokens.

    Attributes:
        dataset: one of :data:`~sparsedino.data.segmentation.SEG_DATASETS` (``voc`` also reads the embedded
            dataset).
        data_root: dataset root in its official layout.
        layers: blocks whose patch tokens are concatenated (negative = from the end).
        with_cls: concatenate the block's [CLS] token to every patch token (the complementarity test).
        norm: apply the final LayerNorm to the tokens of every block used.
        crop_size: training crop side (the paper protocol: 512).
        train_mode: ``cached`` (fixed resize + centre crop, features computed once, no augmentation) or
            ``augment`` (random scale 0.5-2, crop, flip every iteration; re-runs the frozen backbone).
        eval_short_side: resize the val image's short side to this before inference (0 = keep).
        eval_stride: sliding-window stride when the val image is larger than the crop (paper: 341).
        iters: optimisation steps (paper: 40,000); batch_size: crops per step (paper: 16).
        lr, weight_decay, warmup_iters: AdamW with linear warmup then linear decay to 0.
        eval_every: evaluate on val every this many iterations (0 = only at the end).
    """

    dataset: str = "voc"
    data_root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    layers: list[int] = field(default_factory=lambda: [-1])
    with_cls: bool = False
    norm: bool = True
    crop_size: int = 512
    train_mode: str = "cached"
    eval_short_side: int = 512
    eval_stride: int = 341
    iters: int = 40000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 1500
    eval_every: int = 0
    max_train_images: int = 0  # 0 = all; cap for quick runs
    max_val_images: int = 0
    seed: int = 0
    features: FeatureSettings = field(default_factory=lambda: FeatureSettings(batch_size=16))


@dataclass
class VideoConfig:
    """DINO's video object segmentation by label propagation on DAVIS-2017 (nothing is trained).

    Defaults are those of facebookresearch/dino ``eval_video_segmentation.py``; see
    :mod:`sparsedino.eval.video` for the procedure and :mod:`sparsedino.eval.davis_metrics` for J and F.

    Attributes:
        data_root: DAVIS root holding ``JPEGImages``, ``Annotations`` and ``ImageSets``.
        split, year, resolution: the list ``ImageSets/<year>/<split>.txt`` and the frame folder name.
        short_side: frames are resized to this short side (DINO: 480) ...
        size_multiple: ... and the long side is floored to a multiple of this (DINO: 64).
        layer: block whose patch tokens are used (-1 = last); norm: apply the final norm (DINO: yes).
        temperature: affinity ``exp(cos / temperature)``; topk: context patches kept per target patch.
        n_last_frames: previous frames in the context besides the first frame.
        size_mask_neighborhood: spatial window radius in patches (0 = no restriction).
        max_sequences: evaluate only the first n listed sequences (0 = all).
        save_masks: write the predicted masks (DAVIS results layout) under ``OUT/masks``.
        batch_size: frames per forward pass; device: ``auto``, ``cpu``, ``cuda``...
        query_chunk: target patches per affinity block (bounds memory at high resolution).
        num_threads: CPU threads while propagating (0 = torch's default). Small clips run best on one:
            their many small operations gain nothing from a second thread, and on a busy machine
            (more runnable processes than cores) idle-waiting threads made them up to 60x slower.
    """

    data_root: str = ""
    split: str = "val"
    year: str = "2017"
    resolution: str = "480p"
    short_side: int = 480
    size_multiple: int = 64
    layer: int = -1
    norm: bool = True
    temperature: float = 0.1
    topk: int = 5
    n_last_frames: int = 7
    size_mask_neighborhood: int = 12
    max_sequences: int = 0
    save_masks: bool = True
    batch_size: int = 8
    device: str = "auto"
    query_chunk: int = 4096
    num_threads: int = 0


# ---- validation: every protocol setting checked at load time, naming the key ---------------------------
def _need(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"key {key!r} {rule}, got {value!r}")


def _positive(cfg: Any, keys: Sequence[str]) -> None:
    for key in keys:
        _need(getattr(cfg, key) > 0, key, "must be > 0", getattr(cfg, key))


def _non_negative(cfg: Any, keys: Sequence[str]) -> None:
    for key in keys:
        _need(getattr(cfg, key) >= 0, key, "must be >= 0", getattr(cfg, key))


def _one_of(value: Any, choices: Sequence[str], key: str) -> None:
    _need(value in choices, key, f"must be one of {', '.join(choices)}", value)


def validate_features(f: FeatureSettings) -> None:
    _need(f.batch_size > 0, "features.batch_size", "must be > 0", f.batch_size)
    _need(f.num_workers >= 0, "features.num_workers", "must be >= 0", f.num_workers)
    _one_of(f.dtype, tuple(STORAGE_DTYPES), "features.dtype")
    check_device(f.device, "features.device")


def validate_knn(cfg: KnnConfig) -> None:
    _positive(cfg, ("resize", "crop", "temperature", "chunk_size"))
    _need(
        len(cfg.ks) > 0 and all(k > 0 for k in cfg.ks),
        "ks",
        "must be a non-empty list of k > 0",
        list(cfg.ks),
    )
    validate_features(cfg.features)


def validate_linear(cfg: LinearConfig) -> None:
    _one_of(cfg.train_mode, TRAIN_MODES, "train_mode")
    _positive(cfg, ("resize", "crop", "epochs", "batch_size"))
    _non_negative(cfg, ("weight_decay",))
    _need(0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)", cfg.momentum)
    _need(
        len(cfg.lrs) > 0 and all(lr > 0 for lr in cfg.lrs),
        "lrs",
        "must be a non-empty list of lr > 0",
        list(cfg.lrs),
    )
    _need(
        len(cfg.n_last_blocks) > 0 and all(n > 0 for n in cfg.n_last_blocks),
        "n_last_blocks",
        "must be a non-empty list of block counts > 0",
        list(cfg.n_last_blocks),
    )
    _need(len(cfg.avgpool) > 0, "avgpool", "must list at least one of true / false", list(cfg.avgpool))
    validate_features(cfg.features)


def validate_seg(cfg: SegConfig) -> None:
    _one_of(cfg.dataset, SEG_DATASETS, "dataset")
    _one_of(cfg.train_mode, TRAIN_MODES, "train_mode")
    _need(len(cfg.layers) > 0, "layers", "must list at least one block", list(cfg.layers))
    _positive(cfg, ("crop_size", "eval_stride", "iters", "batch_size", "lr"))
    _non_negative(
        cfg,
        (
            "eval_short_side",
            "weight_decay",
            "warmup_iters",
            "eval_every",
            "max_train_images",
            "max_val_images",
        ),
    )
    _need(
        cfg.eval_short_side == 0 or cfg.eval_short_side >= cfg.crop_size,
        "eval_short_side",
        f"must be 0 (original size) or >= crop_size ({cfg.crop_size}): training views use the same scale",
        cfg.eval_short_side,
    )
    validate_features(cfg.features)


def validate_video(cfg: VideoConfig) -> None:
    validate_video_config(cfg)


_VALIDATORS = {KnnConfig: validate_knn, LinearConfig: validate_linear, SegConfig: validate_seg,
               VideoConfig: validate_video}  # fmt: skip
PROTOCOLS = {"knn": KnnConfig, "linear": LinearConfig, "seg": SegConfig, "video": VideoConfig}


def load_protocol_config(protocol: str, path: str | None = None, overrides: Sequence[str] = ()) -> Any:
    """Load (defaults < YAML/preset < overrides) and validate the config of ``protocol`` (see PROTOCOLS).

    Raises:
        ConfigError: naming the key, for an unknown key, a wrong type, a value outside its range or choices,
            or a CUDA device this machine does not have.
    """
    schema = PROTOCOLS[protocol]
    cfg = load_config(schema, path, overrides)
    _VALIDATORS[schema](cfg)
    return cfg
