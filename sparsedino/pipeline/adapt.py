"""Continuing one trained checkpoint in every arm (``adapt.enabled``): the start stages and their report.

With ``adapt`` on, every arm and seed starts from the same checkpoint (``plan.init_source``: the base run
``train/base-s<seed>`` or ``adapt.base_checkpoint``), so the comparison is of what each arm does *from*
trained weights. The instrument then has four levels on the same probe:

    floor                     the base run's epoch-0 (random) weights (controls.py, ``floor/base-s<seed>``)
    base                      the base checkpoint itself (``eval/base-s<seed>``)
    start/<normaliser>        the base checkpoint with an arm's attention at step 0 (what switching the
                              normaliser does before any training; softmax for ``-warmup`` arms); the same
                              weights for every seed and arm with that attention, so one stage each
    trained                   each arm after continuing (``eval/<arm>-s<seed>``)

and the ceiling (oracle features). Paired differences are against the first arm (continued softmax).
"""

from __future__ import annotations

from pathlib import Path

from sparsedino.attention import Normalizer
from sparsedino.config import config_to_dict
from sparsedino.diagnose.report import Doc
from sparsedino.eval.command import run_protocol
from sparsedino.models import load_backbone
from sparsedino.pipeline.plan import RunPlan
from sparsedino.pipeline.runner import write_result
from sparsedino.pipeline.stages import Stage
from sparsedino.pipeline.statistics import format_mean_std, summarise_values
from sparsedino.train.alpha_schedule import AlphaSchedule


def _first_run(plan: RunPlan, arm: str) -> str:
    return next(rid for rid in plan.run_ids if plan.arm_of[rid] == arm)


def start_normalizer(train_cfg) -> Normalizer:
    """The attention an initialised run has at step 0 (the alpha schedule's start, else the normaliser)."""
    return AlphaSchedule(train_cfg, iters_per_epoch=1).normalizer_at(0)


def start_stages(plan: RunPlan) -> list[Stage]:
    """``start/<normaliser>``: the final seg probe (without [CLS]) on the base checkpoint with each step-0 attention."""
    if plan.init_source is None:
        return []
    name = plan.cfg.seg_datasets[0]
    seg_cfg, source = plan.seg[name], plan.init_source
    stages, normalizers = [], {}
    for arm in dict.fromkeys(plan.arm_of.values()):  # one probe per distinct step-0 attention
        normalizers.setdefault(start_normalizer(plan.train[_first_run(plan, arm)]), arm)
    for normalizer, arm in normalizers.items():
        which = plan.train[_first_run(plan, arm)].init.which

        def run(stage_dir: Path, normalizer=normalizer, which=which) -> dict:
            model, _ = load_backbone(source, normalizer=normalizer, which=which)
            result = run_protocol("seg", model, seg_cfg)
            write_result(stage_dir / "results.json", result)
            return {"normalizer": normalizer.name, "miou": result["miou"]}

        settings = {
            "seg": config_to_dict(seg_cfg),
            "source": str(source),
            "normalizer": normalizer.name,
            "which": which,
        }
        deps = [f"train/{b}" for b in plan.base]
        stages.append(Stage(f"start/{normalizer.name}", run, settings, estimate_s=20.0, depends_on=deps))
    return stages


def adapt_summary(plan: RunPlan, results: dict[str, dict], evidence: dict) -> dict:
    """Floor, base, each arm's start and trained mIoU (%), and each arm's change from the base (JSON-ready)."""
    key = evidence["dataset"]
    base = {
        "runs": plan.base,
        "floor": summarise_values([100 * results[f"floor/{r}"]["miou"] for r in plan.base if f"floor/{r}" in results]),
        "trained": summarise_values([100 * results[f"eval/{r}"]["seg"][key]["miou"] for r in plan.base if f"eval/{r}" in results]),
    }  # fmt: skip
    arms = {}
    for arm, trained in evidence["trained"].items():
        start = results.get(f"start/{start_normalizer(plan.train[_first_run(plan, arm)]).name}")
        base_value = base["trained"]["mean"]
        gain = (
            trained["mean"] - base_value if trained["mean"] is not None and base_value is not None else None
        )
        arms[arm] = {
            "start": 100 * start["miou"] if start else None,
            "start_normalizer": start["normalizer"] if start else None,
            "trained": trained,
            "trained_minus_base": gain,
            "epochs": plan.train[_first_run(plan, arm)].optim.epochs,
        }
    return {
        "source": str(plan.init_source),
        "base": base,
        "arms": arms,
        "oracle_miou": evidence["oracle_miou"],
    }


def adapt_doc(summary: dict) -> Doc:
    """Report section: the levels of the instrument when every arm continues one checkpoint."""

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    base = summary["base"]
    rows = [
        [arm, f"{num(a['start'])} ({a['start_normalizer']})", format_mean_std(a["trained"], with_n=False),
         "n/a" if a["trained_minus_base"] is None else f"{a['trained_minus_base']:+.2f}"]
        for arm, a in summary["arms"].items()
    ]  # fmt: skip
    where = f"the base run {', '.join(base['runs'])}" if base["runs"] else "the given checkpoint"
    epochs = sorted({a["epochs"] for a in summary["arms"].values()})
    levels = (f"Floor (the base run's random initialisation): {format_mean_std(base['floor'], with_n=False)}; base "
              f"checkpoint: {format_mean_std(base['trained'], with_n=False)}"
              + (f"; ceiling (oracle features): {summary['oracle_miou']:.2f}." if summary["oracle_miou"] is not None else "."))  # fmt: skip
    return [
        ("h", 2, "The instrument: one trained checkpoint continued in every arm"),
        (
            "p",
            f"Every arm and seed starts from {where} ({summary['source']}) and trains "
            f"{'/'.join(map(str, epochs))} more epochs. Linear segmentation probe, mIoU (%), mean ± std over "
            f"seeds. {levels} Start: the base checkpoint with the arm's attention at step 0, before any "
            "training (the shock of switching the normaliser).",
        ),
        ("table", ["arm", "start (attention at step 0)", "continued", "continued - base"], rows),
    ]
