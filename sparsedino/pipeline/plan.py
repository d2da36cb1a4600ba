"""The reproduce plan: which stages run, with which resolved configs, in which order.

Every config (training per arm and seed, each protocol, the diagnostics) is resolved and validated while
the plan is built, so a wrong key, path or value fails in seconds, before any training starts.

Stages, in order::

    data                      embedded dataset (skipped when real data paths are given)
    train/<arm>-s<seed>       DINO pre-training (resumes from its own checkpoint when killed)
    eval/<arm>-s<seed>        k-NN, linear probe, seg probes with and without [CLS] on the final teacher
    curve/<arm>-s<seed>       k-NN and seg mIoU on the periodic epoch checkpoints
    diagnose/<arm>-s<seed>    semantic-diffusion diagnostics of the final teacher
    video/...                 DINO video label propagation, J&F (see pipeline/video.py; when enabled)
    (the comparison report is rendered after the stages, from their results)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsedino.config import ConfigError, config_to_dict, load_config, resolve_config_path
from sparsedino.pipeline.settings import PRESETS, ReproduceConfig, resolve_arm, validate
from sparsedino.pipeline.video import build_video_config


@dataclass
class RunPlan:
    """Resolved configs for one reproduce run (one entry per arm and seed where it applies)."""

    cfg: Any  # ReproduceConfig
    out: Path
    data_root: Path | None  # embedded dataset folder, None with real data
    imagenet_root: Path
    seg_roots: dict[str, Path]
    train: dict[str, Any] = field(default_factory=dict)  # run id -> TrainConfig
    arm_of: dict[str, str] = field(default_factory=dict)  # run id -> canonical arm name
    seed_of: dict[str, int] = field(default_factory=dict)  # run id -> training seed
    knn: Any = None
    linear: Any = None
    seg: dict[str, Any] = field(default_factory=dict)  # dataset -> SegConfig (with_cls set per probe)
    curve_seg: Any = None
    diagnose: Any = None
    video: Any = None  # VideoConfig, None when the video stage is off

    @property
    def run_ids(self) -> list[str]:
        return list(self.train)


def run_id(arm: str, seed: int) -> str:
    """``entmax15-s0``: the folder name of one training run."""
    return f"{resolve_arm(arm)[0]}-s{seed}"


def arm_of_run(plan: RunPlan, rid: str) -> str:
    """The canonical arm name of a run id."""
    return plan.arm_of[rid]


def load_reproduce_config(preset: str, overrides: list[str]) -> ReproduceConfig:
    """Resolve ``--preset`` (a name from :data:`PRESETS` or a YAML path) and overrides, then validate."""
    name = PRESETS.get(preset, preset)
    try:
        path = resolve_config_path(name)
    except ConfigError as err:
        raise ConfigError(
            f"--preset {preset!r}: not one of {', '.join(PRESETS)} nor a YAML file ({err})"
        ) from err
    cfg = load_config(ReproduceConfig, path, overrides)
    validate(cfg)
    return cfg


def build_plan(cfg: ReproduceConfig, out: Path) -> RunPlan:
    """Resolve every stage's config under ``out``; raises ConfigError/FileNotFoundError on bad input."""
    from sparsedino.diagnose.settings import DiagnoseConfig
    from sparsedino.eval.settings import KnnConfig, LinearConfig, SegConfig
    from sparsedino.train import load_train_config

    out = Path(out)
    if cfg.synth.enabled:
        data_root = out / "data"
        imagenet_root = data_root / "imagenet"
        seg_roots = {"voc": data_root}
    else:
        data_root = None
        imagenet_root = _existing_dir(cfg.data.imagenet, "data.imagenet")
        seg_roots = {
            name: _existing_dir(getattr(cfg.data, name), f"data.{name}") for name in cfg.seg_datasets
        }
    plan = RunPlan(cfg=cfg, out=out, data_root=data_root, imagenet_root=imagenet_root, seg_roots=seg_roots)
    for arm in cfg.arms:
        name, arm_overrides = resolve_arm(arm)
        for seed in cfg.seeds:
            rid = f"{name}-s{seed}"
            plan.arm_of[rid], plan.seed_of[rid] = name, seed
            try:
                plan.train[rid] = load_train_config(
                    cfg.train_preset,
                    [
                        *cfg.train_overrides,
                        *arm_overrides,
                        f"run.seed={seed}",
                        f"data.path={imagenet_root}",
                        f"run.output_dir={out / 'train' / rid}",
                    ],
                )
            except ConfigError as err:
                raise ConfigError(f"train_preset {cfg.train_preset!r} with train_overrides: {err}") from err
    root = f"data_root={imagenet_root}"
    plan.knn = load_config(KnnConfig, "eval_knn", [root, *cfg.knn_overrides])
    plan.linear = load_config(LinearConfig, "eval_linear", [root, *cfg.linear_overrides])
    for name in cfg.seg_datasets:
        plan.seg[name] = load_config(
            SegConfig, f"eval_seg_{name}", [f"data_root={seg_roots[name]}", *cfg.seg_overrides]
        )
    first = cfg.seg_datasets[0]
    plan.curve_seg = load_config(
        SegConfig,
        f"eval_seg_{first}",
        [f"data_root={seg_roots[first]}", *cfg.seg_overrides, *cfg.curve.seg_overrides],
    )
    plan.diagnose = load_config(DiagnoseConfig, None, list(cfg.diagnose_overrides))
    plan.video = build_video_config(cfg, out)
    return plan


def describe(plan: RunPlan) -> dict:
    """A JSON-ready summary of the plan (what ``--dry-run`` prints and the report records)."""
    cfg = plan.cfg
    return {
        "preset": cfg.name,
        "description": cfg.description,
        "out": str(plan.out),
        "data": "embedded synthetic dataset" if cfg.synth.enabled else config_to_dict(cfg.data),
        "runs": {rid: config_to_dict(t) for rid, t in plan.train.items()},
        "knn": config_to_dict(plan.knn),
        "linear": config_to_dict(plan.linear),
        "seg": {name: config_to_dict(s) for name, s in plan.seg.items()},
        "curve": {**config_to_dict(cfg.curve), "seg": config_to_dict(plan.curve_seg)},
        "diagnose": config_to_dict(plan.diagnose) if cfg.diagnose else None,
        "video": config_to_dict(plan.video) if plan.video is not None else None,
        "budget_minutes": cfg.budget_minutes,
        "target_machine": cfg.target_machine,
    }


def _existing_dir(value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"key {key!r}: folder {value!r} does not exist")
    return path
