"""The video section of the ``sparsedino reproduce`` report: J&F per arm and the propagated masks.

Reads what the video stages (``video.py``) measured: a table of J&F (mean ± std over seeds per arm, the
final teacher and the epoch-0 floor, next to the oracle and constant-feature references), the difference
of the first two arms, and a figure of each arm's propagated masks on the first clip.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from sparsedino.config import config_to_dict
from sparsedino.data.davis import DavisDataset
from sparsedino.data.palettes import voc_palette
from sparsedino.diagnose.figures import save_figure
from sparsedino.diagnose.report import fmt
from sparsedino.pipeline.statistics import format_mean_std, summarise_values
from sparsedino.pipeline.video import SCORES


def video_section(plan, results: dict[str, dict], out: Path) -> tuple[list, dict]:
    """Report blocks (J&F table, difference, figure) and the JSON summary; empty when the stage is off."""
    if plan.video is None or not any(f"video/{rid}" in results for rid in plan.run_ids):
        return [], {}
    summary: dict = {"settings": config_to_dict(plan.video), "unit": "%", "arms": {}}
    rows = []
    reference = results.get("video/reference", {})
    for key, label in (("oracle", "oracle features (hard patch-level ground truth)"),
                       ("constant", "constant features (first-frame spatial prior): floor")):  # fmt: skip
        if key in reference:
            rows.append([label, *(fmt(100 * reference[key][s]) for s in SCORES)])
            summary[key] = {s: 100 * reference[key][s] for s in SCORES}
    for when in ("final", "epoch0"):
        for arm in dict.fromkeys(plan.arm_of.values()):
            runs = [results.get(f"video/{r}", {}).get(when) for r in plan.run_ids if plan.arm_of[r] == arm]
            stats = {s: summarise_values([100 * r[s] for r in runs if r]) for s in SCORES}
            if stats["J&F-Mean"]["n"]:
                rows.append(
                    [
                        f"{arm} ({'final' if when == 'final' else 'epoch 0'})",
                        *map(format_mean_std, stats.values()),
                    ]
                )
                summary["arms"].setdefault(arm, {})[when] = stats
    vcfg = plan.video
    doc = [
        ("h", 2, "Video label propagation (DINO's DAVIS-2017 protocol, J&F in %)"),
        ("p", f"Nothing trained: the first frame's mask is carried forward by nearest neighbours between "
              f"patch features of the last block (T={vcfg.temperature}, top-{vcfg.topk}, first + "
              f"{vcfg.n_last_frames} previous frames, window {vcfg.size_mask_neighborhood} patches, short "
              f"side {vcfg.short_side} px). J: region IoU; F: boundary F-measure (tolerance 0.008 of the "
              f"diagonal); first and last frames not scored. Data: {vcfg.data_root}."),
        ("table", ["features", *SCORES], rows),
    ]  # fmt: skip
    arms = list(summary["arms"])
    if len(arms) >= 2 and all("final" in summary["arms"][a] for a in arms[:2]):
        a, b = (summary["arms"][x]["final"]["J&F-Mean"]["mean"] for x in arms[:2])
        doc.append(("p", f"Difference {arms[1]} - {arms[0]} (final J&F-Mean): {b - a:+.2f} points."))
    figure = _propagation_figure(plan, results, out)
    if figure is not None:
        doc.append(("img", str(figure.relative_to(out)), figure.stem.replace("_", " ")))
        summary["figures"] = [str(figure.relative_to(out))]
    return doc, summary


def _propagation_figure(plan, results: dict[str, dict], out: Path, columns: int = 6) -> Path | None:
    """Frames of the first clip with the ground truth and each arm's (first seed's) propagated masks."""
    first_runs: dict[str, str] = {}
    for rid in plan.run_ids:
        masks = results.get(f"video/{rid}", {}).get("final", {}).get("masks_dir")
        if masks:
            first_runs.setdefault(plan.arm_of[rid], masks)
    if not first_runs:
        return None
    dataset = DavisDataset(plan.video.data_root, plan.video.split, plan.video.resolution, plan.video.year,
                           max_sequences=1)  # fmt: skip
    seq = dataset[0]
    frames = np.unique(np.linspace(0, len(seq) - 1, min(columns, len(seq))).round().astype(int))
    palette = np.array(voc_palette(), np.uint8).reshape(-1, 3)
    rows = [("frame", None), ("ground truth", None), *((f"{arm}", Path(d)) for arm, d in first_runs.items())]
    fig, axes = plt.subplots(
        len(rows), len(frames), figsize=(1.6 * len(frames), 1.7 * len(rows)), squeeze=False
    )
    for col, t in enumerate(frames):
        rgb = dataset.load_frame(seq, int(t))
        for row, (label, folder) in enumerate(rows):
            ax = axes[row, col]
            if label == "frame":
                ax.imshow(rgb)
            else:
                ids = dataset.load_mask(seq, int(t)) if folder is None else np.asarray(
                    Image.open(folder / seq.name / f"{seq.frame_id(int(t))}.png"))  # fmt: skip
                shown = np.where(
                    ids[..., None] > 0, 0.3 * rgb + 0.7 * palette[ids], 0.5 * rgb
                )  # dim background
                ax.imshow(shown.astype(np.uint8))
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={t}" + (" (given)" if t == 0 else ""), fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"propagated masks, {seq.name}", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.08)
    path = save_figure(fig, out / "figures" / "video_propagation.png")
    plt.close(fig)
    return path
