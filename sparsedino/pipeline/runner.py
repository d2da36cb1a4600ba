"""Stage bodies of ``sparsedino reproduce``: data, training, evaluation, curves, diagnostics.

Each function takes the resolved :class:`~sparsedino.pipeline.plan.RunPlan` and returns the list of
:class:`~sparsedino.pipeline.stages.Stage` it contributes; the stage functions return JSON-ready dicts
that the comparison report reads back from the stage markers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from omegaconf import OmegaConf

from sparsedino.atomic import atomic_write_json
from sparsedino.config import config_to_dict, save_config
from sparsedino.data.segmentation import build_seg_dataset
from sparsedino.data.synthetic import write_synthetic_dataset
from sparsedino.diagnose.dse import block_features, dse_scores
from sparsedino.diagnose.report import write_run
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.eval.command import run_protocol
from sparsedino.models import load_backbone
from sparsedino.pipeline.alphas import checkpoint_alphas
from sparsedino.pipeline.plan import RunPlan, finished_training
from sparsedino.pipeline.stages import Stage
from sparsedino.train import run_training
from sparsedino.train.checkpointing import EPOCH_SNAPSHOT_GLOB, LATEST, snapshot_epoch


def data_stages(plan: RunPlan) -> list[Stage]:
    """The embedded dataset, written once under ``OUT/data`` (nothing with real data)."""
    if plan.data_root is None:
        return []
    synth = plan.cfg.synth

    def run(stage_dir: Path) -> dict:
        meta = write_synthetic_dataset(
            plan.data_root, n_train=synth.n_train, n_val=synth.n_val, size=synth.size,
            seed=synth.seed, num_classes=synth.num_classes, max_objects=synth.max_objects,
            clutter=synth.clutter, colours=synth.colours, colour_groups=synth.colour_groups,
            same_group=synth.same_group, marker_share=synth.marker_share, overwrite=True,
        )  # fmt: skip
        return {"root": str(plan.data_root), "meta": meta}

    settings = config_to_dict(synth)
    return [Stage("data", run, settings, estimate_s=0.01 * (synth.n_train + synth.n_val))]


def train_stages(plan: RunPlan) -> list[Stage]:
    """One DINO run per (arm, seed); a killed run resumes from its own latest checkpoint."""
    stages = []
    for rid, train_cfg in plan.train.items():

        def run(stage_dir: Path, train_cfg=train_cfg) -> dict:
            # a run finished elsewhere (torchrun) is read, not resumed in this process
            out = Path(train_cfg.run.output_dir)
            if finished_training(train_cfg) is None:
                out = Path(run_training(train_cfg))
            result = {"output_dir": str(out), **_training_summary(out)}
            if train_cfg.model.learn_alpha:
                result["learned_alpha"] = checkpoint_alphas(out / LATEST)
            return result

        settings = {k: v for k, v in config_to_dict(train_cfg).items() if k != "run"}
        settings["seed"] = train_cfg.run.seed
        _drop_unused_added_keys(settings)  # runs finished before these keys existed stay valid
        epochs = train_cfg.optim.epochs
        deps = [*_data_dep(plan), *(f"train/{b}" for b in plan.base if b != rid)]  # adapt: after the base run
        stages.append(Stage(f"train/{rid}", run, settings, estimate_s=25.0 * epochs, depends_on=deps))
    return stages


def eval_stages(plan: RunPlan) -> list[Stage]:
    """k-NN, linear probe and seg probes (without and with [CLS]) on each run's final teacher."""
    stages = []
    for rid in plan.evaluated_ids:

        def run(stage_dir: Path, rid=rid) -> dict:
            model, _ = load_final(plan, rid)
            result = {
                "knn": run_protocol("knn", model, plan.knn),
                "linear": run_protocol("linear", model, plan.linear),
                "seg": {},
            }
            for name, seg_cfg in plan.seg.items():
                for with_cls in (False, True):
                    cfg = with_changes(seg_cfg, with_cls=with_cls)
                    key = f"{name}+cls" if with_cls else name
                    result["seg"][key] = run_protocol("seg", model, cfg)
            write_result(stage_dir / "results.json", result)
            return _eval_summary(result)

        settings = {"knn": config_to_dict(plan.knn), "linear": config_to_dict(plan.linear),
                    "seg": {n: config_to_dict(c) for n, c in plan.seg.items()}}  # fmt: skip
        stages.append(Stage(f"eval/{rid}", run, settings, estimate_s=60.0, depends_on=[f"train/{rid}"]))
    return stages


def curve_stages(plan: RunPlan) -> list[Stage]:
    """k-NN top-1 and seg mIoU of the epoch checkpoints at multiples of ``every_epochs`` (dense curves)."""
    if not plan.cfg.curve.enabled:
        return []
    dse_images = _dse_images(plan) if plan.cfg.curve.dse else None
    stages = []
    for rid in plan.evaluated_ids:

        def run(stage_dir: Path, rid=rid) -> dict:
            points = []
            for epoch, path in _epoch_checkpoints(plan, rid):
                model, _ = load_backbone(path)
                knn = run_protocol("knn", model, plan.knn)
                seg = run_protocol("seg", model, plan.curve_seg)
                points.append({"epoch": epoch, "knn_top1": _knn_top1(knn), "seg_miou": seg["miou"]})
                if dse_images is not None:  # the label-free score of the same checkpoint (last block)
                    points[-1]["dse"] = model_dse(model, dse_images(), plan.diagnose)
            return {"points": points}

        settings = {"every_epochs": plan.cfg.curve.every_epochs, "knn": config_to_dict(plan.knn),
                    "seg": config_to_dict(plan.curve_seg)}  # fmt: skip
        if dse_images is not None:
            settings["dse"] = config_to_dict(plan.diagnose)
        stages.append(Stage(f"curve/{rid}", run, settings, estimate_s=60.0, depends_on=[f"train/{rid}"]))
    return stages


def diagnose_stages(plan: RunPlan) -> list[Stage]:
    """The semantic-diffusion diagnostics of each run's final teacher, on the first seg dataset's val split."""
    if not plan.cfg.diagnose:
        return []
    first = plan.cfg.seg_datasets[0]
    stages = []
    for rid in plan.run_ids:

        def run(stage_dir: Path, rid=rid) -> dict:
            model, info = load_final(plan, rid)
            dataset = build_seg_dataset(first, plan.seg_roots[first], plan.diagnose.split)
            result = run_diagnostics(model, dataset, cfg=plan.diagnose, progress=True)
            write_run(result, stage_dir, model_info={"run": rid, **dataclasses.asdict(info)})
            save_config(plan.diagnose, stage_dir / "config.yaml")
            return {"dir": str(stage_dir)}

        settings = config_to_dict(plan.diagnose)
        stages.append(Stage(f"diagnose/{rid}", run, settings, estimate_s=45.0, depends_on=[f"train/{rid}"]))
    return stages


def _drop_unused_added_keys(settings: dict) -> None:
    """Remove training keys added after runs were recorded, where they hold their no-op default."""
    model = settings["model"]
    for key, off in (("learn_alpha", False), ("alpha_warmup_epochs", 0)):
        if model.get(key) == off:
            model.pop(key, None)
    if not model.get("alpha_warmup_epochs"):
        model.pop("alpha_warmup_start", None), model.pop("alpha_warmup_shape", None)
    if not settings.get("init", {}).get("checkpoint"):
        settings.pop("init", None)
    if not settings.get("gram", {}).get("enabled"):
        settings.pop("gram", None)


def _dse_images(plan: RunPlan):
    """A loader of the diagnosed split (its images; DSE reads no label) for the curves' DSE points."""
    first = plan.cfg.seg_datasets[0]
    return lambda: build_seg_dataset(first, plan.seg_roots[first], plan.diagnose.split)


def model_dse(model, dataset, diag_cfg) -> dict:
    """DSE of the last block of ``model`` on ``dataset`` (``diag_cfg``: image size, batch, ``dse.*``)."""
    feats = block_features(model, dataset, diag_cfg.dse.max_images, diag_cfg.img_size, diag_cfg.batch_size)
    return dse_scores(feats, diag_cfg.dse)


def _data_dep(plan: RunPlan) -> list[str]:
    return ["data"] if plan.data_root is not None else []


def load_final(plan: RunPlan, rid: str):
    """The final teacher of run ``rid`` and its :class:`~sparsedino.models.BackboneInfo`."""
    return load_backbone(Path(plan.train[rid].run.output_dir) / LATEST)


def _epoch_checkpoints(plan: RunPlan, rid: str) -> list[tuple[int, Path]]:
    folder = Path(plan.train[rid].run.output_dir)
    found = sorted(
        (epoch, p) for p in folder.glob(EPOCH_SNAPSHOT_GLOB) if (epoch := snapshot_epoch(p.name)) is not None
    )
    every = max(1, plan.cfg.curve.every_epochs)
    init = [(e, p) for e, p in found if e == 0]  # the initialisation: where every curve starts ...
    if plan.train[rid].init.checkpoint:  # ... unless it is another run's checkpoint (adapt: start stages)
        init = []
    trained = [(e, p) for e, p in found if e > 0]
    return init + [(e, p) for i, (e, p) in enumerate(trained) if e % every == 0 or i == len(trained) - 1]


def with_changes(cfg, **changes):
    """A copy of a read-only OmegaConf config with some top-level keys changed."""
    copy = OmegaConf.merge(cfg, changes)
    OmegaConf.set_readonly(copy, True)
    return copy


def _knn_top1(knn: dict) -> float:
    """Top-1 of DINO's headline k (20), or of the first k evaluated."""
    entries = {k: v for k, v in knn["results"].items() if k.startswith("k=") and isinstance(v, dict)}
    entry = entries.get("k=20") or next(iter(entries.values()))
    return entry["top1"]


def _eval_summary(result: dict) -> dict:
    summary = {
        "knn_top1": _knn_top1(result["knn"]),
        "linear_top1": result["linear"]["best"]["top1"],
        "seg": {},
    }
    for key, seg in result["seg"].items():
        summary["seg"][key] = {"miou": seg["miou"], "per_class_iou": seg.get("per_class_iou")}
    return summary


def _training_summary(out: Path) -> dict:
    """Per-epoch mean loss and throughput read back from the run's ``metrics.jsonl``."""
    path = out / "metrics.jsonl"
    records = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )
    by_epoch: dict[int, list[dict]] = {}
    for record in records:
        if "loss" in record and "epoch" in record:
            by_epoch.setdefault(int(record["epoch"]), []).append(record)
    epochs = [
        {
            "epoch": epoch,
            "loss": sum(r["loss"] for r in rows) / len(rows),
            "images_per_s": sum(r.get("images_per_s", 0.0) for r in rows) / len(rows),
        }
        for epoch, rows in sorted(by_epoch.items())
    ]
    return {"epochs": epochs}


def write_result(path: Path, obj) -> None:
    """A stage's full result as JSON (dataclasses as dicts, paths as strings, anything else as its repr)."""
    atomic_write_json(path, json.loads(json.dumps(obj, default=_json_default)))


def _json_default(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
