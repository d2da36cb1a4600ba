"""Stages that calibrate the dense benchmark: floor, ceiling, positive and negative controls.

A comparison of two arms is worth only what its instrument could have detected. These stages measure
that instrument with the *same* linear segmentation probe as the final evaluation:

    oracle                    ceiling: ground-truth patch features (``eval/oracle.py``)
    floor/<arm>-s<seed>       floor: the run's epoch-0 (random initialisation) weights
    control/<arm>-s<seed>     on a trained teacher (the ``controls.arm`` arm):
                              - positive control: semantic diffusion injected at evaluation time
                                (``diagnose/injection.py``), l = 0 and each ``controls.inject`` amount;
                                dense mIoU should fall and the background-patch label accuracy rise with l;
                              - negative control: the same checkpoint probed again with other probe seeds
                                (the probe's own noise).
"""

from __future__ import annotations

from pathlib import Path

from sparsedino.config import config_to_dict, resolve_device
from sparsedino.data.segmentation import build_seg_dataset
from sparsedino.diagnose.injection import inject_diffusion
from sparsedino.diagnose.runner import run_diagnostics
from sparsedino.eval.command import run_protocol
from sparsedino.eval.oracle import run_oracle_seg_probe
from sparsedino.eval.video import BackboneFeatures, build_davis, run_video
from sparsedino.models import load_backbone
from sparsedino.pipeline.plan import RunPlan
from sparsedino.pipeline.runner import load_final, with_changes, write_result
from sparsedino.pipeline.settings import resolve_arm
from sparsedino.pipeline.stages import Stage
from sparsedino.train.checkpointing import epoch_snapshot_name


def control_stages(plan: RunPlan) -> list[Stage]:
    """Every calibration stage the plan's ``controls`` section asks for (none when disabled)."""
    controls = plan.cfg.controls
    if not controls.enabled:
        return []
    return [*_oracle_stage(plan), *_floor_stages(plan), *_injection_stages(plan)]


def _first_seg(plan: RunPlan):
    name = plan.cfg.seg_datasets[0]
    return name, plan.seg[name]


def _oracle_stage(plan: RunPlan) -> list[Stage]:
    if not plan.cfg.controls.oracle:
        return []
    name, seg_cfg = _first_seg(plan)

    def run(stage_dir: Path) -> dict:
        train = build_seg_dataset(name, plan.seg_roots[name], seg_cfg.train_split)
        val = build_seg_dataset(name, plan.seg_roots[name], seg_cfg.val_split)
        patch = next(iter(plan.train.values())).model.patch_size
        result = run_oracle_seg_probe(train, val, patch, seg_cfg)
        write_result(stage_dir / "results.json", result)
        return {"dataset": name, "miou": result["miou"], "per_class_iou": result["per_class_iou"]}

    deps = ["data"] if plan.data_root is not None else []
    return [Stage("oracle", run, {"seg": config_to_dict(seg_cfg)}, estimate_s=20.0, depends_on=deps)]


def _floor_stages(plan: RunPlan) -> list[Stage]:
    """The final seg probe (without [CLS]) on each run's epoch-0 checkpoint."""
    if not plan.cfg.controls.floor:
        return []
    _, seg_cfg = _first_seg(plan)
    stages = []
    # adapt: only the base run starts from random weights (an arm's epoch 0 is the base's checkpoint)
    for rid in plan.base or plan.train:
        train_cfg = plan.train[rid]

        def run(stage_dir: Path, rid=rid, train_cfg=train_cfg) -> dict:
            path = Path(train_cfg.run.output_dir) / epoch_snapshot_name(0)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: the floor needs the initialisation snapshot, written when "
                    "run.checkpoint_every_epochs > 0"
                )
            model, _ = load_backbone(path)
            result = run_protocol("seg", model, seg_cfg)
            write_result(stage_dir / "results.json", result)
            return {"epoch": 0, "miou": result["miou"]}

        stages.append(
            Stage(f"floor/{rid}", run, {"seg": config_to_dict(seg_cfg)}, estimate_s=20.0,
                  depends_on=[f"train/{rid}"])
        )  # fmt: skip
    return stages


def control_runs(plan: RunPlan) -> list[str]:
    """The run ids whose trained teachers get the positive and negative controls."""
    controls = plan.cfg.controls
    arm = resolve_arm(controls.arm or plan.cfg.arms[0])[0]
    seeds = list(controls.seeds) or [plan.cfg.seeds[0]]
    return [rid for rid in plan.run_ids if plan.arm_of[rid] == arm and plan.seed_of[rid] in seeds]


def _injection_stages(plan: RunPlan) -> list[Stage]:
    controls = plan.cfg.controls
    _, seg_cfg = _first_seg(plan)
    diag_cfg = with_changes(plan.diagnose, layers=[-1], n_figure_images=0, dense_probe={"enabled": False})
    amounts = [0.0, *controls.inject]
    stages = []
    for rid in control_runs(plan):

        def run(stage_dir: Path, rid=rid) -> dict:
            model, _ = load_final(plan, rid)
            name = plan.cfg.seg_datasets[0]
            dataset = build_seg_dataset(name, plan.seg_roots[name], diag_cfg.split)
            points = []
            for amount in amounts:
                with inject_diffusion(model, amount, source=controls.inject_source):
                    seg = run_protocol("seg", model, seg_cfg)
                    diag = run_diagnostics(model, dataset, cfg=diag_cfg, progress=False)
                    video = _video_jf(plan, model)
                last = diag["blocks"][max(diag["blocks"], key=int)]
                points.append({
                    "amount": amount,
                    "miou": seg["miou"],
                    "acc_bg": last.get("diffusion.acc_bg"),
                    "chance_bg": last.get("diffusion.chance_bg"),
                    "diffusion_index": last.get("diffusion.diffusion_index"),
                    **({"video_jf": video} if video is not None else {}),
                })  # fmt: skip
            probe_noise = [{"probe_seed": seg_cfg.seed, "miou": points[0]["miou"]}]
            for seed in controls.probe_seeds:
                seg = run_protocol("seg", model, with_changes(seg_cfg, seed=seed))
                probe_noise.append({"probe_seed": seed, "miou": seg["miou"]})
            result = {"source": controls.inject_source, "injection": points, "probe_noise": probe_noise}
            write_result(stage_dir / "results.json", result)
            return result

        settings = {"seg": config_to_dict(seg_cfg), "diagnose": config_to_dict(diag_cfg),
                    "amounts": amounts, "source": controls.inject_source,
                    "probe_seeds": list(controls.probe_seeds),
                    "video": config_to_dict(plan.video) if plan.video is not None else None}  # fmt: skip
        stages.append(
            Stage(f"control/{rid}", run, settings, estimate_s=30.0 * (len(amounts) + len(controls.probe_seeds)),
                  depends_on=[f"train/{rid}", *(["video/data"] if plan.video is not None and plan.data_root else [])])
        )  # fmt: skip
    return stages


def _video_jf(plan: RunPlan, model) -> float | None:
    """J&F-Mean (0-1) of DINO's video label propagation with ``model`` (None when the video stage is off)."""
    if plan.video is None:
        return None
    vcfg = plan.video
    extractor = BackboneFeatures(model, vcfg.layer, vcfg.norm, resolve_device(vcfg.device))
    return run_video(build_davis(vcfg), extractor, vcfg, progress=False)["J&F-Mean"]
