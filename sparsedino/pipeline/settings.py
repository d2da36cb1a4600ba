"""Settings of ``sparsedino reproduce`` (presets in ``sparsedino/configs/reproduce_*.yaml``).

A preset names a base training config and the overrides shared by both arms; the arms differ only in
``model.normalizer``. Evaluation and diagnostics settings are ``key=value`` overrides of the protocols'
own typed configs, so every option of ``sparsedino eval`` / ``sparsedino diagnose`` is reachable here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sparsedino.config import ConfigError

PRESETS = {
    "micro": "reproduce_micro",
    "cpu-demo": "reproduce_cpu_demo",
    "cpu-long": "reproduce_cpu_long",
    "paper": "reproduce_paper",
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
    colours: str = "random"  # random (colour carries no class cue) | class (hue pair per class, grey clutter)


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

    enabled: bool = True
    every_epochs: int = 1  # evaluate every n-th saved epoch checkpoint (and always the last)
    seg_overrides: list[str] = field(default_factory=list)  # cheaper probe for the curve points


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
class ReproduceConfig:
    """Everything ``sparsedino reproduce`` reads."""

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
    seg_datasets: list[str] = field(default_factory=lambda: ["voc"])  # voc | ade20k | cityscapes
    seg_overrides: list[str] = field(default_factory=list)  # applied over each dataset's eval preset
    diagnose: bool = True
    diagnose_overrides: list[str] = field(default_factory=list)
    curve: CurveSettings = field(default_factory=CurveSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    budget_minutes: float = 0.0  # what the preset is tuned to finish within on its target machine (0 = n/a)
    target_machine: str = ""


def validate(cfg: ReproduceConfig) -> None:
    """Check cross-field rules; raise :class:`ConfigError` naming the key."""
    from sparsedino.attention import validate_normalizer

    if len(cfg.arms) < 1:
        raise ConfigError("key 'arms': give at least one attention normaliser")
    for arm in cfg.arms:
        try:
            validate_normalizer(arm)
        except ValueError as err:
            raise ConfigError(f"key 'arms': {err}") from err
    if len(set(cfg.arms)) != len(cfg.arms):
        raise ConfigError(f"key 'arms': duplicate entries in {list(cfg.arms)}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"key 'seeds': give distinct seeds, got {list(cfg.seeds)}")
    for name in cfg.seg_datasets:
        if name not in ("voc", "ade20k", "cityscapes"):
            raise ConfigError(f"key 'seg_datasets': {name!r} is not one of voc, ade20k, cityscapes")
    if cfg.video.enabled and (cfg.video.clips < 1 or cfg.video.frames < 3 or cfg.video.max_objects < 2):
        raise ConfigError("key 'video': need clips >= 1, frames >= 3 and max_objects >= 2")
    if cfg.video.enabled and not cfg.synth.enabled and not cfg.data.davis:
        raise ConfigError("key 'data.davis': required when video.enabled and synth.enabled is false")
    if not cfg.synth.enabled:
        if not cfg.data.imagenet:
            raise ConfigError("key 'data.imagenet': required when synth.enabled is false")
        for name in cfg.seg_datasets:
            if not getattr(cfg.data, name):
                raise ConfigError(f"key 'data.{name}': required because seg_datasets lists {name!r}")
    elif cfg.synth.colours not in ("random", "class"):
        raise ConfigError(f"key 'synth.colours': {cfg.synth.colours!r} is not one of random, class")
    elif any(name != "voc" for name in cfg.seg_datasets):
        raise ConfigError("key 'seg_datasets': the embedded dataset provides only the VOC layout ('voc')")
