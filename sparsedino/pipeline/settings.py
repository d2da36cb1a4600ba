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


@dataclass
class CurveSettings:
    """Scores against the training epoch, from the periodic checkpoints of each run."""

    enabled: bool = True
    every_epochs: int = 1  # evaluate every n-th saved epoch checkpoint (and always the last)
    seg_overrides: list[str] = field(default_factory=list)  # cheaper probe for the curve points


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
    # Processes the training recipe is stated for (global batch = optim.batch_size_per_gpu x this). Above 1,
    # `reproduce` (one process) trains nothing itself: it needs each run finished by torchrun first, and says
    # how; set 1 to train in one process on purpose (a smaller global batch, recorded in the report).
    train_processes: int = 1
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
    if cfg.train_processes < 1:
        raise ConfigError(f"key 'train_processes' must be >= 1, got {cfg.train_processes}")
    if cfg.curve.every_epochs < 1:
        raise ConfigError(f"key 'curve.every_epochs' must be >= 1, got {cfg.curve.every_epochs}")
    if cfg.budget_minutes < 0:
        raise ConfigError(f"key 'budget_minutes' must be >= 0, got {cfg.budget_minutes}")
    for name in cfg.seg_datasets:
        if name not in ("voc", "ade20k", "cityscapes"):
            raise ConfigError(f"key 'seg_datasets': {name!r} is not one of voc, ade20k, cityscapes")
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
    from sparsedino.config import config_to_dict
    from sparsedino.data.command import check_synth_options

    check_synth_options(config_to_dict(synth), lambda key: f"key 'synth.{key}'")
