"""The softmax-vs-entmax comparison report of ``sparsedino reproduce``.

Writes ``results.json`` (every measured number, per run and aggregated per arm), ``report.md`` and a
self-contained ``report.html`` (figures embedded), plus ``figures/*.png``. Numbers are what the stages
measured; the paper's numbers appear only in their own, labelled table.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sparsedino.atomic import atomic_write_json
from sparsedino.data.segmentation import SEG_TITLES
from sparsedino.diagnose.figures import save_figure
from sparsedino.diagnose.report import Doc, fmt, load_metrics, write_compare, write_documents
from sparsedino.diagnose.scores import SCORES
from sparsedino.pipeline.adapt import adapt_doc, adapt_summary
from sparsedino.pipeline.alphas import learned_alpha_doc
from sparsedino.pipeline.evidence import controls_doc, instrument_doc, paired_doc, summarise
from sparsedino.pipeline.metrics import aggregate
from sparsedino.pipeline.plan import RunPlan, describe
from sparsedino.pipeline.ranks import dse_rank_doc, dse_rank_summary
from sparsedino.pipeline.statistics import format_mean_std, summarise_values
from sparsedino.pipeline.video_report import video_section

# The paper's DINO ViT-S/16 (200 epochs, ImageNet-1k) linear-probe mIoU per dataset, for orientation only.
PAPER_MIOU = {
    "softmax": {"voc": 42.80, "ade20k": 19.85, "cityscapes": 36.79},
    "entmax15": {"voc": 48.78, "ade20k": 21.97, "cityscapes": 37.87},
}
DIAG_KEYS = ["probe.miou", "probe.miou_with_cls", "diffusion.acc_bg", "diffusion.acc_fg", "diffusion.chance_bg",
             "diffusion.cos_bg", "diffusion.cos_fg", "attn.zero_share", "attn.support", "attn.distance_px",
             "align.cls_attn_iou", "align.pca_iou", "norm.outlier_share"]  # fmt: skip


def _curve_figure(plan: RunPlan, results: dict[str, dict], out: Path) -> Path | None:
    series = {rid: results.get(f"curve/{rid}", {}).get("points", []) for rid in plan.evaluated_ids}
    if not any(series.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colours = {arm: f"C{i}" for i, arm in enumerate(dict.fromkeys(plan.arm_of.values()))}
    colours.update({rid: "0.5" for rid in plan.base})  # an adapt base run: grey (its arms continue from it)
    offset = max((plan.train[rid].optim.epochs for rid in plan.base), default=0)  # arms continue the base
    for rid, points in series.items():
        if not points:
            continue
        epochs = [p["epoch"] + (0 if rid in plan.base else offset) for p in points]
        colour = colours[plan.arm_of.get(rid, rid)]
        axes[0].plot(epochs, [p["knn_top1"] for p in points], "o-", color=colour, label=rid)
        axes[1].plot(epochs, [100 * p["seg_miou"] for p in points], "o-", color=colour, label=rid)
    oracle = results.get("oracle", {}).get("miou")
    if oracle is not None:  # the ceiling (trained with the final probe's settings)
        axes[1].axhline(100 * oracle, ls="--", color="k", lw=1, label="oracle features (ceiling)")
    axes[0].set(title="k-NN top-1 vs epoch", xlabel="epoch (0 = initialisation)", ylabel="%")
    axes[1].set(title="linear seg mIoU vs epoch", xlabel="epoch (0 = initialisation)", ylabel="%")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "figures" / "curves_over_training.png")


def _loss_figure(plan: RunPlan, results: dict[str, dict], out: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    drawn = False
    for i, rid in enumerate(plan.run_ids):
        epochs = results.get(f"train/{rid}", {}).get("epochs", [])
        if epochs:
            ax.plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], "o-", color=f"C{i}", label=rid)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(title="DINO training loss (epoch mean)", xlabel="epoch", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "figures" / "training_loss.png")


def _diagnostics(plan: RunPlan, results: dict[str, dict], out: Path) -> tuple[Doc, dict]:
    """Last-block diagnostic scores side by side, plus the per-block comparison report of two runs."""
    dirs = {rid: results[f"diagnose/{rid}"]["dir"] for rid in plan.run_ids if f"diagnose/{rid}" in results}
    if not dirs:
        return [], {}
    metrics = {rid: load_metrics(d) for rid, d in dirs.items()}
    last = {rid: m["blocks"][max(m["blocks"], key=int)] for rid, m in metrics.items()}
    rows = [[SCORES[k][1], *(fmt(last[r].get(k)) for r in dirs)] for k in DIAG_KEYS if k in SCORES]
    doc: Doc = [("h", 2, "Diagnostics (last block)"), ("table", ["score", *dirs], rows)]
    firsts = list(dict.fromkeys(dirs))  # one run per arm: the first seed
    by_arm: dict[str, str] = {}
    for rid in firsts:
        by_arm.setdefault(plan.arm_of[rid], rid)
    if len(by_arm) >= 2:
        a, b = list(by_arm.values())[:2]
        compare_dir = out / "diagnose_compare"
        write_compare(dirs[a], dirs[b], compare_dir)
        doc.append(("p", f"Per-block comparison of {a} and {b}: diagnose_compare/report.html"))
        for png in sorted((compare_dir / "figures").glob("*.png")):
            doc.append(("img", str(png.relative_to(out)), png.stem.replace("_", " ")))
    return doc, {rid: last[rid] for rid in dirs}


def write_report(
    plan: RunPlan,
    results: dict[str, dict],
    out: Path,
    elapsed_s: float | None = None,
    stage_seconds: dict[str, float] | None = None,
) -> dict:
    """Render ``results.json``, ``report.md`` and ``report.html`` under ``out`` and return the results dict.

    Args:
        plan: the resolved run plan.
        results: each stage's result by stage name.
        out: the run folder.
        elapsed_s: wall time of this invocation (small when earlier runs did most stages).
        stage_seconds: wall time of each stage when it ran, whichever invocation ran it; their sum is what
            the results cost end to end.
    """
    out = Path(out)
    stage_seconds = dict(stage_seconds or {})
    total_s = round(sum(stage_seconds.values()), 1) if stage_seconds else None
    arms = aggregate(plan, results)
    metric_names = list(dict.fromkeys(m for arm in arms.values() for m in arm["metrics"]))
    doc: Doc = [
        ("h", 1, f"sparsedino reproduce: {' vs '.join(arms) or 'no finished runs'} ({plan.cfg.name})"),
        ("p", plan.cfg.description or ""),
        ("p", f"Measured on {platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}), "
              f"{time.strftime('%Y-%m-%d')}; seeds {list(plan.cfg.seeds)}; mean ± std over seeds."
              + (f" Stages took {total_s / 60:.1f} min in total." if total_s is not None else "")),
        ("h", 2, "Results"),
        ("table", ["arm", *metric_names],
         [[arm, *(format_mean_std(a["metrics"].get(m, summarise_values([]))) for m in metric_names)] for arm, a in arms.items()]),
    ]  # fmt: skip
    evidence = summarise(plan, results)
    calibrated = any(f["n"] for f in evidence["floor"].values()) or evidence["oracle_miou"] is not None
    adapt = adapt_summary(plan, results, evidence) if plan.init_source is not None else None
    if adapt is not None:  # every arm continues one checkpoint: floor, base, start and trained levels
        doc += adapt_doc(adapt) + controls_doc(evidence)
    elif calibrated or evidence["controls"]:
        doc += instrument_doc(evidence)
    if evidence["paired"]:
        doc += paired_doc(evidence, plan.cfg.statistics.confidence, plan.cfg.statistics.power)
    doc += [
        ("h", 2, "The paper's numbers (DINO ViT-S/16, 200 epochs, ImageNet-1k; not measured here)"),
        ("table", ["arm", *(f"{SEG_TITLES[name]} mIoU" for name in next(iter(PAPER_MIOU.values())))],
         [[arm, *map(str, row.values())] for arm, row in PAPER_MIOU.items()]),
    ]  # fmt: skip
    figures = [_loss_figure(plan, results, out), _curve_figure(plan, results, out)]
    doc.append(("h", 2, "Training and dense quality over training"))
    doc += [("img", str(p.relative_to(out)), p.stem.replace("_", " ")) for p in figures if p is not None]
    diag_doc, diag_last = _diagnostics(plan, results, out)
    doc += diag_doc
    alpha_doc, alphas = learned_alpha_doc(results, plan.run_ids)
    doc += alpha_doc
    video_doc, video = video_section(plan, results, out)
    doc += video_doc
    dse_ranks = dse_rank_summary(plan, results)
    doc += dse_rank_doc(dse_ranks)
    report = {
        "preset": plan.cfg.name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "node": platform.node(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "elapsed_s": elapsed_s,
        "stages_total_s": total_s,
        "stage_seconds": stage_seconds,
        "arms": arms,
        "evidence": evidence,
        "adapt": adapt,
        "dse_ranks": dse_ranks,
        "runs": {key: value for key, value in results.items()},
        "diagnostics_last_block": diag_last,
        "video": video,
        "learned_alpha": alphas,
        "plan": describe(plan),
        "figures": [str(p.relative_to(out)) for p in figures if p is not None] + video.get("figures", []),
    }
    atomic_write_json(out / "results.json", report)
    write_documents(doc, out, f"sparsedino reproduce ({plan.cfg.name})")
    return report
