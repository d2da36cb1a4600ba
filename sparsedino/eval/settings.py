"""Typed configs of the evaluation protocols, loaded and checked by :func:`load_protocol_config`.

Defaults follow DINO (k-NN, linear) and DINOv2's "linear" segmentation protocol; the shipped presets
``configs/eval_*.yaml`` set the paper-scale values. Every field can be overridden as ``key=value``.

Each dataclass states the ranges and choices of its keys in its ``RULES`` table
(:func:`sparsedino.options.check_section` checks them, naming the key); :data:`CHECKS` holds what a table
cannot say (a key against another, a device this machine lacks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sparsedino.config import ConfigError, check_device, load_config
from sparsedino.data.segmentation import SEG_DATASETS
from sparsedino.eval.features import STORAGE_DTYPES
from sparsedino.options import NON_NEGATIVE, POSITIVE, Check, ListOf, OneOf, Range, Rules, check_section

# probe inputs: features cached once, or the backbone re-run on augmented views
TRAIN_MODES = ("cached", "augment")
MAX_SIDE = 8192  # pixels (frames) or patches (the window radius): beyond any video a ViT is run on
MAX_COUNT = 2**31 - 1  # counts (frames, patches, sequences): no meaningful value needs more than 32 bits
MAX_THREADS = 1024


def _davis_name(value: str) -> bool:
    """A folder or file name inside the DAVIS root: not empty, no separator, not ``.`` / ``..``."""
    return 0 < len(value) <= 255 and "/" not in value and "\\" not in value and value not in (".", "..")


DAVIS_NAME = Check(_davis_name, "a folder or list name of the DAVIS layout")


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

    RULES: ClassVar[Rules] = {
        "batch_size": POSITIVE,
        "num_workers": NON_NEGATIVE,
        "dtype": OneOf(tuple(STORAGE_DTYPES)),
    }
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    dtype: str = "float32"
    cache_dir: str = ""


@dataclass
class KnnConfig:
    """DINO's weighted k-NN on last-block [CLS] features (after the final norm, L2-normalised)."""

    RULES: ClassVar[Rules] = {
        "resize": POSITIVE,
        "crop": POSITIVE,
        "ks": ListOf("k", POSITIVE),
        "temperature": POSITIVE,
        "chunk_size": POSITIVE,
    }
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

    RULES: ClassVar[Rules] = {
        "train_mode": OneOf(TRAIN_MODES),
        "resize": POSITIVE,
        "crop": POSITIVE,
        "lrs": ListOf("lr", POSITIVE),
        "n_last_blocks": ListOf("block counts", POSITIVE),
        "avgpool": ListOf("true / false"),
        "epochs": POSITIVE,
        "batch_size": POSITIVE,
        "momentum": Range(0, 1, open_high=True),
        "weight_decay": NON_NEGATIVE,
    }
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

    RULES: ClassVar[Rules] = {
        "dataset": OneOf(SEG_DATASETS),
        "train_mode": OneOf(TRAIN_MODES),
        "layers": ListOf("block indices"),
        "crop_size": POSITIVE,
        "eval_stride": POSITIVE,
        "iters": POSITIVE,
        "batch_size": POSITIVE,
        "lr": POSITIVE,
        "eval_short_side": NON_NEGATIVE,
        "weight_decay": NON_NEGATIVE,
        "warmup_iters": NON_NEGATIVE,
        "eval_every": NON_NEGATIVE,
        "max_train_images": NON_NEGATIVE,
        "max_val_images": NON_NEGATIVE,
    }
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

    RULES: ClassVar[Rules] = {
        "short_side": Range(1, MAX_SIDE, integer=True, note="pixels"),
        "size_multiple": Range(1, MAX_SIDE, integer=True, note="pixels"),
        "layer": Range(-MAX_COUNT, MAX_COUNT, integer=True, note="a block index"),
        "temperature": POSITIVE,
        "topk": Range(1, MAX_COUNT, integer=True),
        "n_last_frames": Range(0, MAX_COUNT, integer=True),
        "size_mask_neighborhood": Range(0, MAX_SIDE, integer=True, note="patches, 0 = no window"),
        "max_sequences": Range(0, MAX_COUNT, integer=True, note="0 = all"),
        "batch_size": Range(1, MAX_COUNT, integer=True),
        "query_chunk": Range(1, MAX_COUNT, integer=True),
        "num_threads": Range(0, MAX_THREADS, integer=True, note="0 = torch's default"),
        "split": DAVIS_NAME,
        "year": DAVIS_NAME,
        "resolution": DAVIS_NAME,
    }
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


def _check_features(cfg: Any) -> None:
    check_device(cfg.features.device, "features.device")


def _check_seg(cfg: SegConfig) -> None:
    """Training views use the evaluation's scale, so it cannot be smaller than a training crop."""
    if cfg.eval_short_side and cfg.eval_short_side < cfg.crop_size:
        raise ConfigError(
            f"key 'eval_short_side' must be 0 (original size) or >= crop_size ({cfg.crop_size}): training "
            f"views use the same scale, got {cfg.eval_short_side!r}"
        )


def _check_video(cfg: VideoConfig) -> None:
    check_device(cfg.device, "device")


PROTOCOLS = {"knn": KnnConfig, "linear": LinearConfig, "seg": SegConfig, "video": VideoConfig}
# schema -> the checks after its RULES tables, in order
CHECKS: dict[type, tuple[Callable[[Any], None], ...]] = {
    KnnConfig: (_check_features,),
    LinearConfig: (_check_features,),
    SegConfig: (_check_seg, _check_features),
    VideoConfig: (_check_video,),
}


def check_protocol_config(cfg: Any, schema: type) -> None:
    """Check a loaded protocol config: its ``RULES`` tables, then its :data:`CHECKS`.

    Raises:
        ConfigError: naming the key, for a value outside its range or choices, or a CUDA device this
            machine does not have.
    """
    check_section(cfg, schema)
    for check in CHECKS[schema]:
        check(cfg)


def load_protocol_config(protocol: str, path: str | None = None, overrides: Sequence[str] = ()) -> Any:
    """Load (defaults < YAML/preset < overrides) and check the config of ``protocol`` (see PROTOCOLS).

    Raises:
        ConfigError: naming the key, for an unknown key, a wrong type, a value outside its range or choices,
            or a CUDA device this machine does not have.
    """
    schema = PROTOCOLS[protocol]
    cfg = load_config(schema, path, overrides)
    check_protocol_config(cfg, schema)
    return cfg
