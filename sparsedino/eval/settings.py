"""Typed configs of the evaluation protocols (load with :func:`sparsedino.config.load_config`).

Defaults follow DINO (k-NN, linear) and DINOv2's "linear" segmentation protocol; the shipped presets
``configs/eval_*.yaml`` set the paper-scale values. Every field can be overridden as ``key=value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    """DINO linear probe, trained as a DINOv2-style grid in one pass over cached features.

    Every (lr, n_last_blocks, avgpool) combination gets its own linear head; all heads see the same
    batches. Features are cached without augmentation (reported as such in the results).
    """

    data_root: str = ""
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
        dataset: ``voc`` (also the embedded dataset), ``ade20k`` or ``cityscapes``.
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
