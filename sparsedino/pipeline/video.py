"""The video stage of ``sparsedino reproduce``: DINO's label propagation (J&F) for every arm.

Stages (when ``video.enabled``)::

    video/data                embedded clips in the DAVIS layout (skipped with real data: data.davis)
    video/reference           oracle features (hard patch-level ground truth: what perfect patch matching
                              gives at this grid) and constant features (the first-frame spatial prior: the floor)
    video/<arm>-s<seed>       the final teacher and, as the epoch-0 floor, the initialisation

The report gets a J&F table (mean ± std over seeds per arm) and a figure of the propagated masks of both
arms on the first clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsedino.config import ConfigError, config_to_dict, load_config
from sparsedino.errors import MissingDataError
from sparsedino.pipeline.stages import Stage

MASKS = "masks"
SCORES = ("J&F-Mean", "J-Mean", "F-Mean")


def build_video_config(cfg, out: Path):
    """The resolved :class:`~sparsedino.eval.settings.VideoConfig` of a reproduce run (None when off)."""
    from sparsedino.eval.settings import VideoConfig
    from sparsedino.eval.video_checks import validate_video_config

    if not cfg.video.enabled:
        return None
    root = Path(out) / "video" / "data" if cfg.synth.enabled else Path(cfg.data.davis).expanduser()
    if not cfg.synth.enabled and not root.is_dir():
        raise MissingDataError(f"key 'data.davis': folder {cfg.data.davis!r} does not exist")
    try:
        video = load_config(VideoConfig, None, [f"data_root={root}", *cfg.video.overrides])
        validate_video_config(video)
    except ConfigError as err:
        raise ConfigError(f"video.overrides: {err}") from err
    return video


def check_video_plan(plan) -> None:
    """The video settings against the clips and every run's backbone, before the first stage: the DAVIS
    tree of ``data.davis`` (every sequence's files, object ids and sizes), the block index ``layer`` and
    frames of at least one patch.

    Raises:
        ConfigError / DavisError: naming ``data.davis`` or ``video.overrides`` and the culprit.
    """
    from sparsedino.data.davis import DavisError
    from sparsedino.eval.video import build_davis
    from sparsedino.eval.video_checks import check_fits_backbone, first_frame_sizes
    from sparsedino.models.vit import ARCHS

    vcfg = plan.video
    if vcfg is None:
        return
    if plan.cfg.synth.enabled:
        sizes = {"embedded clips": (plan.cfg.video.size, plan.cfg.video.size)}
    else:
        try:
            sizes = first_frame_sizes(build_davis(vcfg))
        except DavisError as err:
            raise DavisError(f"key 'data.davis': {err}") from err
    for rid, train_cfg in plan.train.items():
        depth, patch = ARCHS[train_cfg.model.arch]["depth"], train_cfg.model.patch_size
        try:
            check_fits_backbone(vcfg, sizes, patch, depth)
        except ConfigError as err:
            raise ConfigError(f"video.overrides (run {rid}, {train_cfg.model.arch}/{patch}): {err}") from err


def video_stages(plan) -> list[Stage]:
    """The clips (embedded data only), the oracle / constant-feature references and one stage per run."""
    if plan.video is None:
        return []
    from sparsedino.config import resolve_device
    from sparsedino.eval.video import (
        BackboneFeatures,
        ConstantFeatures,
        OracleFeatures,
        build_davis,
        run_video,
    )

    cfg, vcfg = plan.cfg, plan.video
    settings = {**config_to_dict(vcfg), "clips": None}  # what the clips are is part of every result's key
    stages, deps = [], []
    if cfg.synth.enabled:
        clips = {**config_to_dict(cfg.video), "num_classes": cfg.synth.num_classes,
                 "clutter": cfg.synth.clutter, "colours": cfg.synth.colours,
                 "colour_groups": cfg.synth.colour_groups, "marker_share": cfg.synth.marker_share}  # fmt: skip
        clips.pop("overrides"), clips.pop("enabled")

        def write(stage_dir: Path) -> dict:
            from sparsedino.data.synthetic_video import write_synthetic_videos

            return write_synthetic_videos(vcfg.data_root, clips=clips["clips"], frames=clips["frames"],
                                          size=clips["size"], seed=clips["seed"], num_classes=clips["num_classes"],
                                          max_objects=clips["max_objects"], clutter=clips["clutter"],
                                          colours=clips["colours"], colour_groups=clips["colour_groups"],
                                          marker_share=clips["marker_share"], overwrite=True)  # fmt: skip

        stages.append(Stage("video/data", write, clips, estimate_s=0.05 * clips["clips"] * clips["frames"]))
        deps, settings["clips"] = ["video/data"], clips
    patch = next(iter(plan.train.values())).model.patch_size

    def reference(stage_dir: Path) -> dict:
        dataset = build_davis(vcfg)
        return {
            "oracle": _scores(run_video(dataset, OracleFeatures(patch), vcfg, progress=False)),
            "constant": _scores(run_video(dataset, ConstantFeatures(patch), vcfg, progress=False)),
        }

    stages.append(Stage("video/reference", reference, {**settings, "patch": patch}, 10.0, depends_on=deps))
    for rid, train_cfg in plan.train.items():

        def run(stage_dir: Path, train_cfg=train_cfg) -> dict:
            from sparsedino.models import load_backbone
            from sparsedino.train.checkpointing import LATEST, epoch_snapshot_name

            dataset = build_davis(vcfg)
            folder = Path(train_cfg.run.output_dir)
            result = {}
            for key, name in (("final", LATEST), ("epoch0", epoch_snapshot_name(0))):
                if not (folder / name).is_file():
                    continue  # no initialisation snapshot when checkpoint_every_epochs is 0
                model, _ = load_backbone(folder / name)
                extractor = BackboneFeatures(model, vcfg.layer, vcfg.norm, resolve_device(vcfg.device))
                masks = stage_dir / MASKS if key == "final" and vcfg.save_masks else None
                result[key] = _scores(run_video(dataset, extractor, vcfg, masks_dir=masks, progress=False))
            return result

        stages.append(
            Stage(f"video/{rid}", run, settings, estimate_s=15.0, depends_on=[*deps, f"train/{rid}"])
        )
    return stages


def _scores(result: dict) -> dict:
    keep = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay", "objects",
            "sequences", "per_sequence", "masks_dir", "speed")  # fmt: skip
    return {key: result[key] for key in keep}


def video_section(plan, results: dict[str, dict], out: Path) -> tuple[list, dict]:
    """Report blocks (J&F table, difference, figure) and the JSON summary; empty when the stage is off."""
    from sparsedino.diagnose.report import fmt
    from sparsedino.pipeline.statistics import format_mean_std, summarise_values

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
    import matplotlib.pyplot as plt
    from PIL import Image

    from sparsedino.data.davis import DavisDataset
    from sparsedino.data.palettes import voc_palette
    from sparsedino.diagnose.figures import save_figure

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
