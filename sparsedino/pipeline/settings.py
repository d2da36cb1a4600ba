"""Settings of ``sparsedino reproduce`` (presets in ``sparsedino/configs/reproduce_*.yaml``).

A preset names a base training config and the overrides shared by both arms; the arms differ only in
``model.normalizer``. Evaluation and diagnostics settings are ``key=value`` overrides of the protocols'
own typed configs, so every option of ``sparsedino eval`` / ``sparsedino diagnose`` is reachable here.

Each dataclass states the ranges and choices of its keys in its ``RULES`` table
(:func:`sparsedino.options.check_section` checks them, naming the dotted key); :func:`validate` then checks
what a table cannot say (an arm's name, a key against another, the embedded data's generator limits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from sparsedino.attention import normalizer_name
from sparsedino.config import ConfigError, config_to_dict
from sparsedino.data.command import check_synth_options, check_video_options
from sparsedino.data.segmentation import SEG_DATASETS
from sparsedino.diagnose.injection import SOURCES
from sparsedino.options import NON_NEGATIVE, Check, ListOf, OneOf, Range, Rules, check_section

AMOUNT = Range(0, 1, open_low=True)  # a diffusion amount l of the positive control

PRESETS = {
    "micro": "reproduce_micro",
    "cpu-demo": "reproduce_cpu_demo",
    "cpu-long": "reproduce_cpu_long",
    "cpu-adapt": "reproduce_cpu_adapt",
    "paper": "reproduce_paper",
    "paper-adapt": "reproduce_paper_adapt",
}


@dataclass
class SynthSettings:
    """The embedded dataset (``sparsedino data synth``); used when ``enabled``."""

    enabled: bool = True
    n_train: int = 2000
    n_val: int = 400
    size: int = 64
    seed: int = 0
    num_classes: int = 10
    max_objects: int = 3  # objects per image: 1..max_objects
    clutter: float = 1.0  # background clutter density (0 = plain background)
    colours: str = "random"  # random | class | shared | marker | metamer (see sparsedino/data/synthetic.py)
    colour_groups: int = 5  # colours="shared": classes k and k + colour_groups share a colour pair
    same_group: float = 0.0  # shared/metamer: chance that all objects of an image come from one colour group
    marker_share: float = 0.3  # colours="marker": share of each object's pixels in its class colour


@dataclass
class DataPaths:
    """Real datasets in their official layouts (used when the embedded dataset is off)."""

    imagenet: str = ""  # root with train/<wnid>/ and val/<wnid>/
    voc: str = ""  # folder holding VOC2012/ (or VOC2012 itself)
    ade20k: str = ""  # folder holding ADEChallengeData2016/
    cityscapes: str = ""  # folder holding leftImg8bit/ and gtFine/
    davis: str = ""  # DAVIS-2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017), when video.enabled


@dataclass
class CurveSettings:
    """Scores against the training epoch, from the periodic checkpoints of each run."""

    RULES: ClassVar[Rules] = {"every_epochs": Range(1, integer=True)}
    enabled: bool = True
    every_epochs: int = 1  # evaluate the epoch checkpoints at multiples of n (plus epoch 0 and the last)
    seg_overrides: list[str] = field(default_factory=list)  # cheaper probe for the curve points
    dse: bool = False  # also the label-free DSE of the last block (diagnose_overrides' dse.* settings), and
    # its rank correlation with the curve's mIoU over every curve point (pipeline/ranks.py)


@dataclass
class ControlSettings:
    """Calibration of the dense benchmark: floor, ceiling, positive and negative controls (controls.py)."""

    RULES: ClassVar[Rules] = {
        "inject": Check(
            lambda amounts: all(AMOUNT.accepts(a) for a in amounts), "a list of amounts in (0, 1]"
        ),
        "inject_source": OneOf(SOURCES),
    }
    enabled: bool = True
    floor: bool = True  # the final seg probe on each run's epoch-0 (random) weights
    oracle: bool = True  # the same probe on ground-truth patch features (the ceiling)
    arm: str = ""  # arm whose trained teacher gets the injection and probe-noise controls ("" = first arm)
    seeds: list[int] = field(default_factory=list)  # seeds of that arm to control ([] = the first seed)
    inject: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  # diffusion amounts l (0 is added)
    inject_source: str = "mean"  # mean | cls: the global token mixed into every patch token (see README)
    probe_seeds: list[int] = field(default_factory=lambda: [1])  # extra seg-probe seeds (probe noise)


@dataclass
class StatisticsSettings:
    """Paired comparison over seeds (``statistics.py``)."""

    RULES: ClassVar[Rules] = {
        "confidence": Range(0.5, 1, open_low=True, open_high=True),
        "power": Range(0.5, 1, open_high=True),
    }
    confidence: float = 0.95  # two-sided confidence interval of the mean paired difference
    power: float = 0.8  # power of the minimum detectable difference


@dataclass
class VideoSettings:
    """DINO's video label propagation (``sparsedino eval video``) on every run; clips from the embedded
    data (``synth``'s classes and colours) or ``data.davis``."""

    enabled: bool = False
    clips: int = 8
    frames: int = 12
    size: int = 64  # frame side of the embedded clips
    seed: int = 0
    max_objects: int = 3  # objects per clip: 2..max_objects
    overrides: list[str] = field(default_factory=list)  # VideoConfig key=value, e.g. short_side=128


@dataclass
class AdaptSettings:
    """Start every arm from one trained checkpoint instead of random weights (``cpu-adapt``, ``paper-adapt``).

    The source is ``base_checkpoint`` when given (e.g. an official DINO ViT-S/16 checkpoint), otherwise one
    base run trained here first (``train/base-s<base_seed>``: ``train_overrides`` + ``base_overrides``, the
    normaliser of ``base_arm``). Each arm and seed then trains ``train_overrides`` + ``overrides`` with
    ``init.checkpoint`` = that source, so every arm continues the same weights.
    """

    enabled: bool = False
    base_checkpoint: str = ""  # a trained checkpoint every arm starts from ("" = train the base run here)
    base_arm: str = "softmax"  # the base run's arm (normaliser) when it is trained here
    base_seed: int = 0  # the base run's seed (one base run: all seeds of all arms start from it)
    base_overrides: list[str] = field(default_factory=list)  # training overrides of the base run only
    overrides: list[str] = field(default_factory=list)  # training overrides of the continued runs only


@dataclass
class ReproduceConfig:
    """Everything ``sparsedino reproduce`` reads."""

    RULES: ClassVar[Rules] = {
        "arms": ListOf("arms (attention normalisers or arm variants)"),
        "seeds": Check(lambda seeds: len(seeds) > 0 and len(set(seeds)) == len(seeds), "distinct seeds"),
        "seg_datasets": ListOf("segmentation datasets", OneOf(SEG_DATASETS)),
        "train_processes": Range(1, integer=True),
        "budget_minutes": NON_NEGATIVE,
    }
    name: str = "cpu-demo"
    description: str = ""
    arms: list[str] = field(default_factory=lambda: ["softmax", "entmax15"])
    seeds: list[int] = field(default_factory=lambda: [0])
    synth: SynthSettings = field(default_factory=SynthSettings)
    data: DataPaths = field(default_factory=DataPaths)
    train_preset: str = "dino_cpu_tiny"
    train_overrides: list[str] = field(default_factory=list)
    knn_overrides: list[str] = field(default_factory=list)
    linear_overrides: list[str] = field(default_factory=list)
    seg_datasets: list[str] = field(
        default_factory=lambda: ["voc"]
    )  # of SEG_DATASETS: voc | ade20k | cityscapes
    seg_overrides: list[str] = field(default_factory=list)  # applied over each dataset's eval preset
    diagnose: bool = True
    diagnose_overrides: list[str] = field(default_factory=list)
    curve: CurveSettings = field(default_factory=CurveSettings)
    controls: ControlSettings = field(default_factory=ControlSettings)
    statistics: StatisticsSettings = field(default_factory=StatisticsSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    adapt: AdaptSettings = field(default_factory=AdaptSettings)
    # Processes the training recipe is stated for (global batch = optim.batch_size_per_gpu x this). Above 1,
    # `reproduce` (one process) trains nothing itself: it needs each run finished by torchrun first, and says
    # how; set 1 to train in one process on purpose (a smaller global batch, recorded in the report).
    train_processes: int = 1
    budget_minutes: float = 0.0  # what the preset is tuned to finish within on its target machine (0 = n/a)
    target_machine: str = ""


# Arms beyond "one attention normaliser": name -> (normaliser, training overrides). Any other arm name is an
# attention normaliser spelling (softmax, entmax15, entmax-1.5, 1.5, sparsemax, entmax1.25, ...).
ARM_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "softmax-reg4": ("softmax", ["model.num_registers=4"]),  # Darcet et al.'s fix for attention artifacts
    "entmax15-reg4": ("entmax15", ["model.num_registers=4"]),
    # beyond the paper: alpha learned per head from 1.5, clamped into (1, 2] (Correia et al. 2019)
    "entmax-learned-alpha": ("entmax15", ["model.learn_alpha=true"]),
    # DINOv3's fix for dense degradation: Gram anchoring (train/gram.py; gram.* in train_overrides tune it)
    "softmax-gram": ("softmax", ["gram.enabled=true"]),
    "entmax15-gram": ("entmax15", ["gram.enabled=true"]),
}
# Any arm followed by "-warmup<E>" (e.g. entmax15-warmup3) moves alpha from softmax to the arm's over its
# first E epochs (model.alpha_warmup_epochs, train/alpha_schedule.py).
_WARMUP = re.compile(r"^(?P<arm>.+)-warmup(?P<epochs>\d+)$")


def resolve_arm(arm: str) -> tuple[str, list[str]]:
    """The canonical name of an arm and the training overrides that define it.

    Raises:
        ConfigError: naming the arm when it is neither a variant nor a valid normaliser.
    """
    warmup = _WARMUP.match(arm)
    if warmup:
        name, overrides = resolve_arm(warmup["arm"])
        epochs = int(warmup["epochs"])
        return f"{name}-warmup{epochs}", [*overrides, f"model.alpha_warmup_epochs={epochs}"]
    if arm in ARM_VARIANTS:
        normalizer, extra = ARM_VARIANTS[arm]
        return arm, [f"model.normalizer={normalizer}", *extra]
    try:
        name = normalizer_name(arm)
    except ValueError as err:
        raise ConfigError(
            f"key 'arms': {arm!r} is neither an attention normaliser ({err}) nor one of the arm variants "
            f"{', '.join(ARM_VARIANTS)} (any of them may end in -warmup<epochs>)"
        ) from err
    return name, [f"model.normalizer={name}"]


# Training keys the pipeline sets per run: a train_overrides entry for one would be overwritten silently.
OWNED_TRAIN_KEYS = {
    "run.output_dir": "the pipeline trains each run in OUT/train/<arm>-s<seed>",
    "run.seed": "set the seeds with seeds=[...]",
    "data.path": "set data.imagenet (with synth.enabled=false) or the synth.* settings",
    "model.normalizer": "set the normalisers with arms=[...]",
}


def _check_train_overrides(cfg: ReproduceConfig) -> None:
    for item in cfg.train_overrides:
        key = item.partition("=")[0].strip()
        if key in OWNED_TRAIN_KEYS:
            raise ConfigError(
                f"key 'train_overrides': {item!r} sets {key}, which the pipeline sets for every run "
                f"({OWNED_TRAIN_KEYS[key]})"
            )


def validate(cfg: ReproduceConfig) -> None:
    """Check the ``RULES`` tables, then the rules across keys; raise :class:`ConfigError` naming the key."""
    check_section(cfg, ReproduceConfig)
    _check_train_overrides(cfg)
    names = [resolve_arm(arm)[0] for arm in cfg.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"key 'arms': duplicate entries in {list(cfg.arms)}")
    _validate_controls(cfg, names)
    if cfg.adapt.enabled:
        try:
            resolve_arm(cfg.adapt.base_arm)
        except ConfigError as err:
            raise ConfigError(f"key 'adapt.base_arm': {err}") from err
        if not cfg.adapt.base_checkpoint and cfg.train_processes > 1:
            raise ConfigError(
                f"key 'adapt.base_checkpoint': give the checkpoint every arm continues (the {cfg.name!r} recipe "
                f"trains with {cfg.train_processes} processes, so no base run is trained here)"
            )
    if cfg.video.enabled:
        _validate_clips(cfg.video)
    if cfg.video.enabled and not cfg.synth.enabled and not cfg.data.davis:
        raise ConfigError("key 'data.davis': required when video.enabled and synth.enabled is false")
    if not cfg.synth.enabled:
        if not cfg.data.imagenet:
            raise ConfigError("key 'data.imagenet': required when synth.enabled is false")
        for name in cfg.seg_datasets:
            if not getattr(cfg.data, name):
                raise ConfigError(f"key 'data.{name}': required because seg_datasets lists {name!r}")
    else:
        _validate_synth(cfg.synth)
        if any(name != "voc" for name in cfg.seg_datasets):
            raise ConfigError("key 'seg_datasets': the embedded dataset provides only the VOC layout ('voc')")


def _validate_synth(synth: SynthSettings) -> None:
    """The embedded dataset's settings, checked before the data stage (the generator's limits)."""
    check_synth_options(config_to_dict(synth), lambda key: f"key 'synth.{key}'")


def _validate_clips(video: VideoSettings) -> None:
    """The embedded clips' settings (``sparsedino data synth-video``'s limits)."""
    values = {k: v for k, v in config_to_dict(video).items() if k not in ("enabled", "overrides")}
    check_video_options(values, lambda key: f"key 'video.{key}'")


def _validate_controls(cfg: ReproduceConfig, arm_names: list[str]) -> None:
    """The controlled arm and seeds are among the plan's."""
    controls = cfg.controls
    if controls.arm and resolve_arm(controls.arm)[0] not in arm_names:
        raise ConfigError(f"key 'controls.arm': {controls.arm!r} is not one of the arms {list(cfg.arms)}")
    for seed in controls.seeds:
        if seed not in cfg.seeds:
            raise ConfigError(f"key 'controls.seeds': seed {seed} is not one of the seeds {list(cfg.seeds)}")
