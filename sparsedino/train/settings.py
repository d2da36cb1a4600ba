"""Typed settings of ``sparsedino train`` (defaults = DINO ViT-S/16; presets in ``sparsedino/configs``).

Loaded with :func:`sparsedino.config.load_config`: defaults < YAML < ``key=value`` overrides; unknown
keys and wrong types are rejected by OmegaConf. Each section's dataclass states the ranges and choices of
its keys in its ``RULES`` table (:func:`sparsedino.options.check_section` checks them, naming the dotted
key); :func:`validate` then checks what a table cannot say (the normaliser, a key against another, the
devices of this machine), before any work starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING, OmegaConf

from sparsedino.attention.adaptive import initial_alpha
from sparsedino.attention.archs import VIT_ARCHS
from sparsedino.config import ConfigError, check_device, check_normalizer, load_config, resolve_device
from sparsedino.options import NON_NEGATIVE, POSITIVE, Check, OneOf, Range, Rules, check_section
from sparsedino.train.alpha_schedule import SHAPES

# Longer than any published DINO schedule (800 epochs) by far; beyond it the per-iteration schedules
# alone would fill the memory, so a larger value is a typo.
MAX_EPOCHS = 10_000
PROBABILITY = Range(0, 1)
RESIZE_MODES = ("bicubic", "bilinear", "nearest", "area")  # torch.nn.functional.interpolate modes
ANTIALIAS_MODES = ("bicubic", "bilinear")  # the modes interpolate antialiases


def _is_crop_scale(value) -> bool:
    return len(value) == 2 and 0 < value[0] <= value[1] <= 1


def _is_blur_radius(value) -> bool:
    return len(value) == 2 and 0 < value[0] <= value[1]


def _is_sha256(value: str) -> bool:
    return not value or (len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()))


CROP_SCALE = Check(_is_crop_scale, "[min, max] with 0 < min <= max <= 1")


@dataclass
class ModelSettings:
    """Backbone and DINO head."""

    RULES: ClassVar[Rules] = {
        "arch": OneOf(tuple(VIT_ARCHS)),
        "patch_size": POSITIVE,
        "img_size": POSITIVE,
        "attn_scale": Check(
            lambda v: v is None or POSITIVE.accepts(v), "null (head_dim ** -0.5) or a finite number > 0"
        ),
        "num_registers": NON_NEGATIVE,
        "alpha_warmup_epochs": NON_NEGATIVE,
        "alpha_warmup_shape": OneOf(SHAPES),
        "drop_path_rate": Range(0, 1, open_high=True),
        "out_dim": POSITIVE,
        "hidden_dim": POSITIVE,
        "bottleneck_dim": POSITIVE,
        "head_layers": POSITIVE,
    }
    arch: str = "vit_small"  # a name of attention.archs.VIT_ARCHS (vit_femto, vit_pico, ... vit_large)
    patch_size: int = 16
    img_size: int = 224  # position-embedding grid (other sizes are interpolated)
    normalizer: str = "entmax15"  # softmax | entmax15 | sparsemax | entmax<alpha> e.g. entmax1.25 (canonical
    # name once loaded: entmax-1.5 / 1.5 -> entmax15)
    attn_scale: float | None = None  # None = head_dim ** -0.5 (entmax sparsity depends on it)
    num_registers: int = 0  # register tokens (Darcet et al.), the natural baseline
    learn_alpha: bool = False  # entmax alpha learned per head, from the normaliser's (needs an entmax one)
    # alpha schedule (train/alpha_schedule.py): per iteration from alpha_warmup_start (1 = softmax) to the
    # normaliser's alpha over the first alpha_warmup_epochs epochs; 0 = the normaliser from the first step
    alpha_warmup_epochs: int = 0
    alpha_warmup_start: float = 1.0
    alpha_warmup_shape: str = "linear"  # linear | cosine (in alpha, per iteration)
    drop_path_rate: float = 0.1  # student only
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    use_bn_in_head: bool = False


@dataclass
class DataSettings:
    """Training images and the multi-crop augmentation."""

    RULES: ClassVar[Rules] = {
        "on_bad_image": OneOf(("error", "skip")),
        "num_workers": NON_NEGATIVE,
        "global_crops_number": Range(2, integer=True, note="the teacher views are compared pairwise"),
        "global_crop_size": POSITIVE,
        "global_crops_scale": CROP_SCALE,
        "local_crops_number": NON_NEGATIVE,
        "local_crop_size": POSITIVE,
        "local_crops_scale": CROP_SCALE,
        "color_jitter": NON_NEGATIVE,
        "grayscale_prob": PROBABILITY,
        "blur_radius": Check(_is_blur_radius, "[min, max] with 0 < min <= max"),
        "solarize_prob": PROBABILITY,
    }
    path: str = MISSING  # dataset root holding <split>/<class>/*.jpg
    split: str = "train"
    on_bad_image: str = "error"  # error | skip (skipped files are counted and logged)
    num_workers: int = 8
    global_crops_number: int = 2
    global_crop_size: int = 224
    global_crops_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crops_number: int = 8
    local_crop_size: int = 96
    local_crops_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    # photometric augmentation (DINO's values; gentler ones suit tiny crops of small datasets)
    color_jitter: float = 1.0  # multiplier of jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1)
    grayscale_prob: float = 0.2
    blur_radius: list[float] = field(default_factory=lambda: [0.1, 2.0])  # (min, max) px
    solarize_prob: float = 0.2  # second global crop only


@dataclass
class OptimSettings:
    """Optimisation and the DINO schedules (lr is for a global batch of 256, scaled linearly)."""

    RULES: ClassVar[Rules] = {
        "epochs": Range(1, MAX_EPOCHS, integer=True, note="more is not a schedule"),
        "batch_size_per_gpu": POSITIVE,
        "optimizer": OneOf(("adamw", "sgd")),
        "lr": POSITIVE,
        "min_lr": NON_NEGATIVE,
        "warmup_epochs": NON_NEGATIVE,
        "weight_decay": NON_NEGATIVE,
        "weight_decay_end": NON_NEGATIVE,
        "clip_grad": NON_NEGATIVE,
        "clip_mode": OneOf(("per_param", "global")),
        "freeze_last_layer": NON_NEGATIVE,
        "momentum_teacher": PROBABILITY,
        "teacher_temp": POSITIVE,
        "warmup_teacher_temp": POSITIVE,
        "warmup_teacher_temp_epochs": NON_NEGATIVE,
        "student_temp": POSITIVE,
        "center_momentum": PROBABILITY,
    }
    epochs: int = 100
    batch_size_per_gpu: int = 64
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # 0 disables clipping
    clip_mode: str = "per_param"  # per_param (DINO) | global
    freeze_last_layer: int = 1  # epochs with the head's last layer frozen
    momentum_teacher: float = 0.996
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9


@dataclass
class RunSettings:
    """Where outputs go, devices, precision, checkpoints."""

    RULES: ClassVar[Rules] = {
        "device": OneOf(("auto", "cpu", "cuda")),
        "precision": OneOf(("auto", "fp32", "bf16", "fp16")),
        "checkpoint_every_iters": NON_NEGATIVE,
        "checkpoint_every_epochs": NON_NEGATIVE,
        "log_every": NON_NEGATIVE,
        "max_iters_per_epoch": NON_NEGATIVE,
        "dist_timeout_s": POSITIVE,
    }
    output_dir: str = "runs/dino"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    checkpoint_every_iters: int = 0  # 0 = only at epoch ends
    checkpoint_every_epochs: int = (
        0  # also keep checkpoint_epoch{E:04d}.pth (weights only, E=0: init); 0 = off
    )
    log_every: int = 10
    max_iters_per_epoch: int = 0  # > 0 caps iterations per epoch (smoke runs)
    resume: bool = True  # continue from output_dir/checkpoint.pth when it exists
    dist_timeout_s: int = 1800  # collective timeout: a dead rank makes the others fail, not hang
    progress: bool = True  # tqdm bar


@dataclass
class InitSettings:
    """Start a new run from trained weights instead of random ones (train/init_from.py)."""

    RULES: ClassVar[Rules] = {
        "which": OneOf(("teacher", "student")),
        "sha256": Check(_is_sha256, "empty or 64 hex digits (a SHA-256)"),
        "kind": OneOf(("", "sparsedino", "dino", "export", "state_dict")),
    }
    checkpoint: str = (
        ""  # "" = random init; ours, official DINO full or backbone-only, timm (.pth/.safetensors)
    )
    which: str = "teacher"  # teacher | student: the network of a full checkpoint both networks start from
    head: bool = True  # also the DINO head and centre where the checkpoint has them (else a fresh head)
    # Recorded in the resolved config and in checkpoints once read; given by the user, they are checked.
    sha256: str = ""  # "" or the file's expected SHA-256 (64 hex digits)
    kind: str = ""  # "" or the expected kind: sparsedino | dino | export | state_dict


@dataclass
class GramSettings:
    """Gram anchoring (DINOv3, Simeoni et al. 2025; train/gram.py). Defaults are DINOv3's refinement recipe
    (configs/train/dinov3_vit7b16_gram_anchor.yaml) with its 1,000-iteration epochs read as our epochs."""

    RULES: ClassVar[Rules] = {
        "weight": NON_NEGATIVE,
        "start_epoch": NON_NEGATIVE,
        "ramp_epochs": NON_NEGATIVE,
        "update_every_epochs": NON_NEGATIVE,
        "teacher_crop_size": NON_NEGATIVE,
        "resize_mode": OneOf(RESIZE_MODES),
    }
    enabled: bool = False
    weight: float = 2.0  # final loss weight (DINOv3 refinement: 2.0; its default config: 1.0)
    start_epoch: int = 0  # weight 0 before; the Gram teacher is the EMA teacher at this epoch
    ramp_epochs: int = 1  # cosine ramp of the weight from 0 (DINOv3: 1 epoch of 1,000 iterations)
    update_every_epochs: int = 10  # re-sync the Gram teacher from the EMA teacher (DINOv3: every 10,000 it.)
    max_updates: int = 3  # re-syncs after the first snapshot (DINOv3: 3); -1 = unlimited
    normalized: bool = True  # L2-normalise the patch features (DINOv3: true)
    img_level: bool = True  # Gram matrix per image (DINOv3 refinement: true; false = over the local batch)
    remove_neg: bool = False  # zero negative similarities of both (DINOv3: false)
    remove_only_teacher_neg: bool = False  # zero the Gram teacher's negative similarities (DINOv3: false)
    teacher_crop_size: int = 0  # 0 = the student's global crops; > 0: the same crops at this size for the
    # Gram teacher, its features resized to the student's grid (DINOv3: 512 for 256-px global crops)
    teacher_no_distortions: bool = True  # those crops without colour/blur distortions (DINOv3: true)
    resize_mode: str = "bicubic"  # bicubic | bilinear | nearest | area (DINOv3: bicubic)
    resize_antialias: bool = False  # (DINOv3: false)
    teacher_normalizer: str = ""  # "" = the EMA teacher's attention at the snapshot; or a spelling


@dataclass
class LogSettings:
    """Metric sinks (metrics.jsonl is always written)."""

    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "sparsedino"
    wandb_run_name: str = ""


@dataclass
class TrainConfig:
    """Everything ``sparsedino train`` reads."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    run: RunSettings = field(default_factory=RunSettings)
    log: LogSettings = field(default_factory=LogSettings)
    init: InitSettings = field(default_factory=InitSettings)
    gram: GramSettings = field(default_factory=GramSettings)


# Device types offered fp16 autocast + GradScaler. CPU autocast and torch.amp.GradScaler("cpu") run the
# same code path, so the tests add "cpu" to exercise it; for users fp16 is a CUDA mode.
FP16_DEVICES: tuple[str, ...] = ("cuda",)


def check_fp16_device(device_type: str) -> None:
    """Refuse ``run.precision=fp16`` on a device type outside :data:`FP16_DEVICES`."""
    if device_type not in FP16_DEVICES:
        raise ConfigError("key 'run.precision': fp16 needs a CUDA device; use fp32 or bf16 on CPU")


def canonical(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``model.normalizer`` in its canonical spelling (``cfg`` itself when it already is), so
    that checkpoints, the written config and resume checks all see one spelling per normaliser."""
    name = check_normalizer(cfg.model.normalizer, "model.normalizer").name
    if name == cfg.model.normalizer:
        return cfg
    out = OmegaConf.merge(cfg, {"model": {"normalizer": name}})
    OmegaConf.set_readonly(out, True)
    return out  # type: ignore[return-value]


def validate(cfg: TrainConfig) -> None:
    """Check the ``RULES`` tables, then the rules across keys; raise :class:`ConfigError` naming the key."""
    check_section(cfg, TrainConfig)
    check_device(cfg.run.device, "run.device")
    if cfg.run.precision == "fp16":
        check_fp16_device(resolve_device(cfg.run.device).type)  # (a missing CUDA device: rejected above)
    check_normalizer(cfg.model.normalizer, "model.normalizer")
    if cfg.model.learn_alpha:
        try:
            initial_alpha(cfg.model.normalizer)
        except ValueError as err:
            raise ConfigError(f"key 'model.learn_alpha': true with model.normalizer: {err}") from err
    for key in ("global_crop_size", "local_crop_size"):
        size = getattr(cfg.data, key)
        if size % cfg.model.patch_size:
            raise ConfigError(f"key 'data.{key}' ({size}) must be a multiple of model.patch_size")
    _validate_adaptation(cfg)
    if cfg.log.wandb:
        try:
            import wandb  # noqa: F401  (optional dependency: checked only with log.wandb)
        except ImportError as err:
            raise ConfigError(
                "key 'log.wandb' is true but wandb is not installed (pip install wandb)"
            ) from err


def _validate_adaptation(cfg: TrainConfig) -> None:
    """The alpha schedule, the initialisation source and Gram anchoring (cross-field rules)."""
    m, g = cfg.model, cfg.gram
    if m.alpha_warmup_epochs > 0:
        target = check_normalizer(m.normalizer, "model.normalizer")
        if target.is_softmax or m.learn_alpha:
            why = "model.learn_alpha is true" if m.learn_alpha else "model.normalizer is softmax"
            raise ConfigError(f"key 'model.alpha_warmup_epochs' needs a fixed entmax target alpha ({why})")
        if not 1.0 <= m.alpha_warmup_start < target.alpha:
            raise ConfigError(
                f"key 'model.alpha_warmup_start' must be in [1, {target.alpha:g}) (the target alpha of "
                f"{target.name}), got {m.alpha_warmup_start}"
            )
        if m.alpha_warmup_epochs > cfg.optim.epochs:
            raise ConfigError(
                f"key 'model.alpha_warmup_epochs' ({m.alpha_warmup_epochs}) exceeds optim.epochs "
                f"({cfg.optim.epochs}): the target alpha would never be reached"
            )
    if (cfg.init.sha256 or cfg.init.kind) and not cfg.init.checkpoint:
        raise ConfigError("keys 'init.sha256' / 'init.kind' describe init.checkpoint, which is empty")
    if not g.enabled:
        return
    if g.start_epoch >= cfg.optim.epochs:
        raise ConfigError(
            f"key 'gram.start_epoch' ({g.start_epoch}) must be below optim.epochs ({cfg.optim.epochs})"
        )
    if g.max_updates < -1:
        raise ConfigError(f"key 'gram.max_updates' must be >= -1 (-1 = unlimited), got {g.max_updates}")
    if g.remove_neg and g.remove_only_teacher_neg:
        raise ConfigError("keys 'gram.remove_neg' and 'gram.remove_only_teacher_neg' exclude each other")
    size = g.teacher_crop_size
    if size and (size < cfg.data.global_crop_size or size % m.patch_size):
        raise ConfigError(
            f"key 'gram.teacher_crop_size' ({size}) must be 0 or a multiple of model.patch_size that is at "
            f"least data.global_crop_size ({cfg.data.global_crop_size})"
        )
    if g.resize_antialias and g.resize_mode not in ANTIALIAS_MODES:
        raise ConfigError("key 'gram.resize_antialias': antialiasing needs resize_mode bicubic or bilinear")
    if g.teacher_normalizer:
        check_normalizer(g.teacher_normalizer, "gram.teacher_normalizer")


def load_train_config(path: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """``load_config(TrainConfig, path, overrides)`` plus range/choice checks (errors name the key).

    ``model.normalizer`` comes back in its canonical spelling (``entmax-1.5`` -> ``entmax15``).
    """
    cfg = load_config(TrainConfig, path, overrides)
    validate(cfg)
    return canonical(cfg)
