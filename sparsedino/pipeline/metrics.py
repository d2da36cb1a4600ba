"""The headline metrics of a reproduce run: each run's final evaluation, and their mean ± std per arm.

Computed here, rendered by ``report.py``; ``evidence.py`` pairs the same per-run values seed by seed.
Accuracies and mIoU are in percent.
"""

from __future__ import annotations

from sparsedino.data.segmentation import SEG_TITLES
from sparsedino.pipeline.plan import RunPlan
from sparsedino.pipeline.statistics import summarise_values


def run_metrics(ev: dict) -> dict[str, float]:
    """The headline metrics of one run's final evaluation (percentages).

    Args:
        ev: the run's ``eval/<run>`` stage result (``knn_top1``, ``linear_top1``, ``seg``: dataset key,
            ``<name>`` or ``<name>+cls``, -> ``{"miou" (0-1), ...}``).

    Returns:
        Metric name (e.g. ``"VOC 2012 mIoU + [CLS] (%)"``) -> value.
    """
    values = {"k-NN top-1 (%)": ev["knn_top1"], "linear top-1 (%)": ev["linear_top1"]}
    for key, seg in ev["seg"].items():
        name, plus = key.split("+")[0], "+cls" in key
        values[f"{SEG_TITLES[name]} mIoU{' + [CLS]' if plus else ''} (%)"] = 100.0 * seg["miou"]
    return values


def aggregate(plan: RunPlan, results: dict[str, dict]) -> dict:
    """Per-arm mean/std over seeds of every headline metric (percentages for accuracies and mIoU).

    Returns:
        Arm -> ``{"runs": [run ids evaluated], "metrics": {metric: summarise_values(...)}}``, arms in plan
        order, runs without a final evaluation left out.
    """
    arms: dict[str, dict] = {}
    for rid in plan.run_ids:
        ev = results.get(f"eval/{rid}")
        if ev is None:
            continue
        arm = arms.setdefault(plan.arm_of[rid], {"runs": [], "metrics": {}})
        arm["runs"].append(rid)
        for metric, value in run_metrics(ev).items():
            arm["metrics"].setdefault(metric, []).append(value)
    for arm in arms.values():
        arm["metrics"] = {m: summarise_values(v) for m, v in arm["metrics"].items()}
    return arms
