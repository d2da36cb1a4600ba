"""What the comparison could have seen: the instrument's calibration and the paired statistics over seeds.

Reads the results of the control stages (``controls.py``) and of the final evaluations, and returns
(a) a JSON-ready dict for ``results.json`` and (b) report sections. All mIoU values here are in percent.

* **Instrument**: the dense probe's floor (epoch-0 weights), the trained score and the ceiling (oracle
  features) per arm; the positive control (diffusion injected into a trained teacher: does mIoU fall and
  background-patch label accuracy rise with the amount, and how many mIoU points does one unit of the
  diffusion index cost?); the negative control (the same checkpoint under other probe seeds).
* **Paired comparison**: every arm against the first (baseline) arm, seed by seed, with the mean
  difference, its confidence interval and the minimum detectable difference (``statistics.py``).
"""

from __future__ import annotations

from itertools import pairwise

from sparsedino.diagnose.report import Doc
from sparsedino.pipeline.metrics import run_metrics
from sparsedino.pipeline.plan import RunPlan
from sparsedino.pipeline.statistics import format_mean_std, paired_comparison, summarise_values

DENSE_METRIC_SUFFIX = " mIoU (%)"


def _fit_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs (None with fewer than 2 distinct xs)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def positive_control_summary(points: list[dict], probe_noise: float | None = None) -> dict:
    """Whether the injection moved the scores the expected way, and the mIoU cost per unit of diffusion.

    Args:
        points: ``{"amount", "miou" (0-1), "acc_bg", "diffusion_index"}`` per injected amount, amount 0 first.
        probe_noise: range of mIoU (points) over probe seeds on the same checkpoint.

    Returns:
        ``miou_falls`` / ``acc_bg_rises`` (strictly monotone in the amount), ``responds`` (both),
        ``largest_drop`` (mIoU at l = 0 minus at the largest l) and whether it exceeds the probe noise, and
        ``miou_drop_per_index``: minus the least-squares slope of mIoU (points) on the diffusion index.
    """
    ordered = sorted(points, key=lambda p: p["amount"])
    miou = [100.0 * p["miou"] for p in ordered]
    acc = [p.get("acc_bg") for p in ordered]
    index = [p.get("diffusion_index") for p in ordered]
    falls = all(b < a for a, b in pairwise(miou))
    rises = None not in acc and all(b > a for a, b in pairwise(acc))
    slope = None
    if None not in index:
        slope = _fit_slope([float(i) for i in index], miou)
    noise = probe_noise if probe_noise is not None else 0.0
    return {
        "miou_falls": falls,
        "acc_bg_rises": rises,
        "responds": bool(falls and rises),
        # the largest injection's drop, against the probe's own noise (range of mIoU over probe seeds)
        "largest_drop": miou[0] - miou[-1],
        "drop_exceeds_probe_noise": miou[0] - miou[-1] > noise,
        "miou_drop_per_index": -slope if slope is not None else None,
    }


def summarise(plan: RunPlan, results: dict[str, dict]) -> dict:
    """The instrument and paired-comparison numbers of a reproduce run (JSON-ready)."""
    seg_key = plan.cfg.seg_datasets[0]  # the dense benchmark: the first dataset's probe
    arms = list(dict.fromkeys(plan.arm_of.values()))
    floor, trained = {}, {}
    for arm in arms:
        rids = [r for r in plan.run_ids if plan.arm_of[r] == arm]
        floor[arm] = summarise_values(
            [100.0 * results[f"floor/{r}"]["miou"] for r in rids if f"floor/{r}" in results]
        )
        trained[arm] = summarise_values(
            [100.0 * results[f"eval/{r}"]["seg"][seg_key]["miou"] for r in rids if f"eval/{r}" in results]
        )
    oracle = results.get("oracle", {}).get("miou")
    controls = {}
    for name, value in results.items():
        if name.startswith("control/"):
            rid = name.split("/", 1)[1]
            noise = [100.0 * p["miou"] for p in value["probe_noise"]]
            controls[rid] = {
                "source": value["source"],
                "injection": value["injection"],
                **positive_control_summary(value["injection"], max(noise) - min(noise)),
                "probe_noise": {"values": noise, "range": max(noise) - min(noise), **summarise_values(noise)},
            }
    return {
        "dataset": seg_key,
        "oracle_miou": 100.0 * oracle if oracle is not None else None,
        "floor": floor,
        "trained": trained,
        "controls": controls,
        "runs": [[plan.arm_of[rid], plan.seed_of[rid]] for rid in plan.run_ids],
        "per_seed": _per_seed_metrics(plan, results),
        "paired": paired_differences(plan, results),
    }


def _per_seed_metrics(plan: RunPlan, results: dict[str, dict]) -> dict[str, dict[str, dict[int, float]]]:
    """metric -> arm -> seed -> value (percent) for the final evaluations and the floors."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for rid in plan.run_ids:
        arm, seed = plan.arm_of[rid], plan.seed_of[rid]
        values = run_metrics(results[f"eval/{rid}"]) if f"eval/{rid}" in results else {}
        if f"floor/{rid}" in results:
            values["epoch-0 floor" + DENSE_METRIC_SUFFIX] = 100.0 * results[f"floor/{rid}"]["miou"]
        for metric, value in values.items():
            table.setdefault(metric, {}).setdefault(arm, {})[seed] = value
    return table


def paired_differences(plan: RunPlan, results: dict[str, dict]) -> dict:
    """metric -> arm -> :func:`paired_comparison` against the first arm, over the seeds both have."""
    stats = plan.cfg.statistics
    baseline = next(iter(dict.fromkeys(plan.arm_of.values())))
    out: dict[str, dict] = {}
    for metric, by_arm in _per_seed_metrics(plan, results).items():
        base = by_arm.get(baseline, {})
        for arm, values in by_arm.items():
            seeds = sorted(set(base) & set(values))
            if arm == baseline or not seeds:
                continue
            comparison = paired_comparison(
                [base[s] for s in seeds], [values[s] for s in seeds], stats.confidence, stats.power
            )
            out.setdefault(metric, {})[arm] = {"baseline": baseline, "seeds": seeds, **comparison}
    return out


def instrument_doc(summary: dict) -> Doc:
    """Report section: floor, trained, ceiling, and the positive and negative controls."""
    oracle = summary["oracle_miou"]
    rows = []
    for arm, floor in summary["floor"].items():
        trained = summary["trained"].get(arm, {"mean": None})
        gain = (
            f"{trained['mean'] - floor['mean']:+.2f}"
            if trained["mean"] is not None and floor["mean"] is not None
            else "n/a"
        )
        rows.append([arm, format_mean_std(floor, with_n=False), format_mean_std(trained, with_n=False), gain])
    doc: Doc = [
        ("h", 2, "The instrument: can the dense probe see a difference?"),
        ("p", f"Linear segmentation probe on {summary['dataset']}, mIoU (%), mean ± std over seeds. Floor: "
              "the same probe on the epoch-0 (random) weights; ceiling: the same probe on ground-truth "
              "patch features (per-patch class histograms)."
              + (f" Ceiling (oracle): {oracle:.2f}." if oracle is not None else "")),
        ("table", ["arm", "floor (epoch 0)", "trained", "trained - floor"], rows),
    ]  # fmt: skip
    return doc + controls_doc(summary)


def controls_doc(summary: dict) -> Doc:
    """Report section: the positive control (injected diffusion) and the negative one (probe noise)."""
    doc: Doc = []
    for rid, control in summary["controls"].items():
        source = "[CLS] token" if control["source"] == "cls" else "mean patch token"
        doc.append(("p", f"Positive control on {rid}: every last-block patch token mixed with the {source}, "
                         "x <- (1 - l) x + l g, at evaluation time."))  # fmt: skip
        video = all("video_jf" in p for p in control["injection"])
        doc.append((
            "table",
            ["l", "mIoU (%)", "background-patch label acc.", "chance", "diffusion index",
             *(["video J&F (%)"] if video else [])],
            [[f"{p['amount']:g}", f"{100 * p['miou']:.2f}", _num(p.get("acc_bg")), _num(p.get("chance_bg")),
              _num(p.get("diffusion_index")), *([f"{100 * p['video_jf']:.2f}"] if video else [])]
             for p in control["injection"]],
        ))  # fmt: skip
        drop = control["miou_drop_per_index"]
        noise = control["probe_noise"]
        verdict = "responds as expected" if control["responds"] else "does NOT respond as expected"
        doc.append(("p", f"The instrument {verdict}: mIoU {'falls' if control['miou_falls'] else 'does not fall'} "
                         f"monotonically with l, and background-patch label accuracy "
                         f"{'rises' if control['acc_bg_rises'] else 'does not rise'} monotonically with l. The largest injection costs {control['largest_drop']:.2f} mIoU points, "
                         f"{'more' if control['drop_exceeds_probe_noise'] else 'NOT more'} than the probe noise "
                         f"(range {noise['range']:.2f})"
                         + (f"; one unit of diffusion index costs {drop:.1f} mIoU points (least-squares slope)." if drop is not None else ".")))  # fmt: skip
        doc.append(("p", f"Negative control (probe noise) on {rid}: probe seeds give mIoU "
                         f"{', '.join(f'{v:.2f}' for v in noise['values'])} (range {noise['range']:.2f})."))  # fmt: skip
    return doc


def paired_doc(summary: dict, confidence: float, power: float) -> Doc:
    """Report section: per-seed paired differences, their interval and the detection limit."""
    rows = []
    for metric, by_arm in summary["paired"].items():
        for arm, c in by_arm.items():
            ci = f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]" if c["ci_low"] is not None else "n/a (1 seed)"
            rows.append([
                metric, f"{arm} - {c['baseline']}", ", ".join(f"{d:+.2f}" for d in c["differences"]),
                f"{c['mean']:+.2f}", ci, _num(c["mdd"], ".2f"),
                "n/a" if c["significant"] is None else ("yes" if c["significant"] else "no"),
            ])  # fmt: skip
    per_seed = summary["per_seed"]
    columns = [tuple(run) for run in summary["runs"]]
    seed_rows = [[metric, *(_num(by_arm.get(arm, {}).get(seed), ".2f") for arm, seed in columns)]
                 for metric, by_arm in per_seed.items()]  # fmt: skip
    doc: Doc = [
        ("h", 2, "Per-seed values"),
        ("table", ["metric", *(f"{arm} s{seed}" for arm, seed in columns)], seed_rows),
        ("h", 2, "Paired comparison over seeds"),
        ("p", f"Each seed trains every arm from the same initialisation; differences are per seed. "
              f"{int(100 * confidence)}% confidence interval of the mean difference (Student t) and minimum "
              f"detectable difference (MDD: the smallest true difference found with {int(100 * power)}% power "
              f"at the {100 - int(100 * confidence)}% level)."),
        ("table", ["metric", "arms", "per-seed differences", "mean", f"{int(100 * confidence)}% CI", "MDD",
                   "CI excludes 0"], rows),
    ]  # fmt: skip
    return doc


def _num(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)
