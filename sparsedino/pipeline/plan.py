"""The reproduce plan: which stages run, with which resolved configs, in which order.

Every config (training per arm and seed, each protocol, the diagnostics) is resolved and validated while
the plan is built, so a wrong key, path or value fails in seconds, before any training starts.

Stages, in order::

    data                      embedded dataset (skipped when real data paths are given)
    train/base-s<seed>        adapt only: the base run whose checkpoint every arm continues (pipeline/adapt.py)
    train/<arm>-s<seed>       DINO pre-training (resumes from its own checkpoint when killed)
    eval/<arm>-s<seed>        k-NN, linear probe, seg probes with and without [CLS] on the final teacher
    curve/<arm>-s<seed>       k-NN and seg mIoU on the periodic epoch checkpoints
    diagnose/<arm>-s<seed>    semantic-diffusion diagnostics of the final teacher
    video/...                 DINO video label propagation, J&F (see pipeline/video.py; when enabled)
    (the comparison report is rendered after the stages, from their results)
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsedino.config import ConfigError, config_to_dict, load_config, resolve_config_path
from sparsedino.diagnose.settings import load_diagnose_config
from sparsedino.errors import MissingDataError
from sparsedino.eval.settings import load_protocol_config
from sparsedino.pipeline.settings import PRESETS, ReproduceConfig, resolve_arm, validate
from sparsedino.pipeline.video import build_video_config, check_video_plan
from sparsedino.train import load_train_config
from sparsedino.train.checkpointing import LATEST, SUMMARY


@dataclass
class RunPlan:
    """Resolved configs for one reproduce run (one entry per arm and seed where it applies)."""

    cfg: Any  # ReproduceConfig
    out: Path
    data_root: Path | None  # embedded dataset folder, None with real data
    imagenet_root: Path
    seg_roots: dict[str, Path]
    train: dict[str, Any] = field(default_factory=dict)  # run id -> TrainConfig (an adapt base run first)
    overrides: dict[str, list[str]] = field(default_factory=dict)  # run id -> its overrides of train_preset
    base: list[str] = field(
        default_factory=list
    )  # adapt: the base run (trained here, continued by every arm)
    init_source: Path | None = None  # adapt: the checkpoint every arm starts from
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
        """The arms' runs (what the comparison compares; an adapt base run is not one of them)."""
        return [rid for rid in self.train if rid not in self.base]

    @property
    def evaluated_ids(self) -> list[str]:
        """Every trained run, an adapt base run first (evaluated and given curves like the arms)."""
        return list(self.train)


def run_id(arm: str, seed: int) -> str:
    """``entmax15-s0``: the folder name of one training run."""
    return f"{resolve_arm(arm)[0]}-s{seed}"


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
    """Resolve every stage's config under ``out``; raises ConfigError / MissingDataError on bad input."""
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
    continued: list[str] = []
    if cfg.adapt.enabled:
        plan.init_source = _plan_adapt_base(plan)
        continued = [*cfg.adapt.overrides, f"init.checkpoint={plan.init_source}"]
    for arm in cfg.arms:
        name, arm_overrides = resolve_arm(arm)
        for seed in cfg.seeds:
            rid = f"{name}-s{seed}"
            plan.arm_of[rid], plan.seed_of[rid] = name, seed
            _plan_run(plan, rid, seed, [*continued, *arm_overrides])
    root = f"data_root={imagenet_root}"
    plan.knn = _section("knn_overrides", load_protocol_config, "knn", "eval_knn", [root, *cfg.knn_overrides])
    plan.linear = _section(
        "linear_overrides", load_protocol_config, "linear", "eval_linear", [root, *cfg.linear_overrides]
    )
    for name in cfg.seg_datasets:
        plan.seg[name] = _section(
            "seg_overrides",
            load_protocol_config,
            "seg",
            f"eval_seg_{name}",
            [f"data_root={seg_roots[name]}", *cfg.seg_overrides],
        )
    first = cfg.seg_datasets[0]
    plan.curve_seg = _section(
        "curve.seg_overrides",
        load_protocol_config,
        "seg",
        f"eval_seg_{first}",
        [f"data_root={seg_roots[first]}", *cfg.seg_overrides, *cfg.curve.seg_overrides],
    )
    plan.diagnose = _section("diagnose_overrides", load_diagnose_config, None, list(cfg.diagnose_overrides))
    plan.video = build_video_config(cfg, out)
    check_video_plan(plan)
    return plan


def _plan_run(plan: RunPlan, rid: str, seed: int, overrides: list[str]) -> None:
    """Resolve the training config of run ``rid`` (train_overrides, then ``overrides``, then seed and paths)."""
    cfg, out = plan.cfg, plan.out
    plan.overrides[rid] = [*cfg.train_overrides, *overrides, f"run.seed={seed}", f"data.path={plan.imagenet_root}",
                           f"run.output_dir={out / 'train' / rid}"]  # fmt: skip
    try:
        plan.train[rid] = load_train_config(cfg.train_preset, plan.overrides[rid])
    except ConfigError as err:
        raise ConfigError(f"train_preset {cfg.train_preset!r} with train_overrides: {err}") from err


def _plan_adapt_base(plan: RunPlan) -> Path:
    """The checkpoint every arm continues: ``adapt.base_checkpoint``, or the base run planned here."""
    adapt = plan.cfg.adapt
    if adapt.base_checkpoint:
        path = Path(adapt.base_checkpoint).expanduser()
        if not path.is_file():
            raise MissingDataError(
                f"key 'adapt.base_checkpoint': file {adapt.base_checkpoint!r} does not exist"
            )
        return path
    rid = f"base-s{adapt.base_seed}"
    _plan_run(plan, rid, adapt.base_seed, [*adapt.base_overrides, *resolve_arm(adapt.base_arm)[1]])
    plan.base.append(rid)
    return Path(plan.train[rid].run.output_dir) / LATEST


def _section(name: str, load: Callable[..., Any], *args: Any) -> Any:
    """``load(*args)`` with a ConfigError prefixed by the plan section the bad setting came from."""
    try:
        return load(*args)
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from err


def finished_training(train_cfg: Any) -> dict | None:
    """The summary of a run whose folder holds a finished training with ``train_cfg``'s epochs, else None."""
    path = Path(train_cfg.run.output_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("epochs") != train_cfg.optim.epochs:
        return None
    return summary


def check_training_processes(plan: RunPlan) -> None:
    """Refuse to train a multi-process recipe in this one process (a different global batch, silently).

    With ``train_processes > 1`` every run must already be finished (by torchrun) with the stated global
    batch; otherwise the error gives the torchrun command of each missing run.

    Raises:
        ConfigError: naming the runs to train first and how, or the override that accepts one process.
    """
    n = plan.cfg.train_processes
    if n <= 1:
        return
    todo, wrong = [], []
    for rid, train_cfg in plan.train.items():
        batch = train_cfg.optim.batch_size_per_gpu * n
        summary = finished_training(train_cfg)
        if summary is None:
            todo.append(rid)
        elif summary.get("global_batch") != batch:
            wrong.append(f"{rid} (global batch {summary.get('global_batch')}, not {batch})")
    if not todo and not wrong:
        return
    cfg = plan.cfg
    commands = [
        f"`torchrun --nproc_per_node={n} -m sparsedino train {cfg.train_preset} "
        + " ".join(shlex.quote(item) for item in plan.overrides[rid])
        + "`"
        for rid in todo
    ]
    per = plan.train[next(iter(plan.train))].optim.batch_size_per_gpu
    problem = (
        f"the {cfg.name!r} recipe trains with {n} processes (global batch {per * n}), but `reproduce` trains "
        "in one process and will not run a different recipe silently"
    )
    fix = []
    if todo:
        fix.append(
            f"train {', '.join(todo)} first with " + " and ".join(commands) + ", then run this command again"
        )
    if wrong:
        fix.append(f"these runs were trained with another global batch: {', '.join(wrong)}")
    raise ConfigError(
        f"{problem}; {'; '.join(fix)}; or set train_processes=1 to train in one process on purpose "
        f"(global batch {per})"
    )


def describe(plan: RunPlan) -> dict:
    """A JSON-ready summary of the plan (what ``--dry-run`` prints and the report records)."""
    cfg = plan.cfg
    return {
        "preset": cfg.name,
        "description": cfg.description,
        "out": str(plan.out),
        "data": "embedded synthetic dataset" if cfg.synth.enabled else config_to_dict(cfg.data),
        "runs": {rid: config_to_dict(t) for rid, t in plan.train.items()},
        "adapt": {"base_runs": plan.base, "init_checkpoint": str(plan.init_source)}
        if plan.init_source
        else None,
        "knn": config_to_dict(plan.knn),
        "linear": config_to_dict(plan.linear),
        "seg": {name: config_to_dict(s) for name, s in plan.seg.items()},
        "curve": {**config_to_dict(cfg.curve), "seg": config_to_dict(plan.curve_seg)},
        "diagnose": config_to_dict(plan.diagnose) if cfg.diagnose else None,
        "video": config_to_dict(plan.video) if plan.video is not None else None,
        "train_processes": cfg.train_processes,
        "budget_minutes": cfg.budget_minutes,
        "target_machine": cfg.target_machine,
    }


def _existing_dir(value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"key {key!r}: folder {value!r} does not exist")
    return path
