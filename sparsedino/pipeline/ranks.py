"""How well the label-free DSE ranks checkpoints like the labelled dense probe: rank correlations.

Over every curve point of every run that has one (``curve.dse``), the DSE of the checkpoint's last block
is compared with the curve probe's mIoU of the same checkpoint by Spearman's rho (Pearson correlation of
the ranks, ties at their mean rank) and Kendall's tau-b (concordant minus discordant pairs, corrected
for ties). +1: DSE orders the checkpoints exactly as the probe does; 0: no relation; -1: reversed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sparsedino.diagnose.report import Doc
from sparsedino.pipeline.plan import RunPlan


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (None with fewer than 3 pairs or a constant variable)."""
    if len(x) != len(y):
        raise ValueError(f"paired values needed: {len(x)} vs {len(y)}")
    return _pearson(average_ranks(x), average_ranks(y)) if len(x) >= 3 else None


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (None with fewer than 3 pairs or a constant variable)."""
    if len(x) != len(y):
        raise ValueError(f"paired values needed: {len(x)} vs {len(y)}")
    n = len(x)
    if n < 3:
        return None
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue  # tied in both: in neither correction term
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom > 0 else None


def dse_points(plan: RunPlan, results: dict[str, dict]) -> list[dict]:
    """``{"run", "epoch", "dse", "miou"}`` (mIoU in %) of every curve point with a DSE score."""
    out = []
    for rid in plan.evaluated_ids:
        for p in results.get(f"curve/{rid}", {}).get("points", []):
            score = (p.get("dse") or {}).get("dse.score")
            if score is not None:
                out.append({"run": rid, "epoch": p["epoch"], "dse": score, "miou": 100.0 * p["seg_miou"]})
    return out


def dse_rank_summary(plan: RunPlan, results: dict[str, dict]) -> dict | None:
    """Spearman and Kendall of DSE against the curve mIoU: over all points, and over the arms' points only."""
    points = dse_points(plan, results)
    if not points:
        return None

    def corr(subset: list[dict]) -> dict:
        x, y = [p["dse"] for p in subset], [p["miou"] for p in subset]
        return {"n": len(subset), "spearman": spearman(x, y), "kendall": kendall_tau_b(x, y)}

    arms = [p for p in points if p["run"] not in plan.base]
    return {"all": corr(points), "arms": corr(arms), "points": points}


def dse_rank_doc(summary: dict | None) -> Doc:
    """Report section of :func:`dse_rank_summary` (empty without DSE curve points)."""
    if summary is None:
        return []

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.3f}"

    rows = [[label, str(c["n"]), num(c["spearman"]), num(c["kendall"])]
            for label, c in (("every curve checkpoint", summary["all"]), ("the arms' checkpoints", summary["arms"]))
            if c["n"]]  # fmt: skip
    point_rows = [
        [p["run"], str(p["epoch"]), f"{p['dse']:.4f}", f"{p['miou']:.2f}"] for p in summary["points"]
    ]
    return [
        ("h", 2, "Label-free DSE against the labelled dense probe"),
        (
            "p",
            "DSE (Dai et al. 2025) of each curve checkpoint's last block, computed without labels, against "
            "the curve probe's mIoU of the same checkpoint: rank correlations (+1 = the same order).",
        ),
        ("table", ["checkpoints", "n", "Spearman rho", "Kendall tau-b"], rows),
        ("table", ["run", "epoch", "DSE", "curve mIoU (%)"], point_rows),
    ]
