"""The video stage of ``sparsedino reproduce``: DINO's label propagation (J&F) for every arm.

Stages (when ``video.enabled``)::

    video/data                embedded clips in the DAVIS layout (skipped with real data: data.davis)
    video/reference           oracle features (hard patch-level ground truth: what perfect patch matching
                              gives at this grid) and constant features (the first-frame spatial prior: the floor)
    video/<arm>-s<seed>       the final teacher and, as the epoch-0 floor, the initialisation

The report's J&F table and figure of the propagated masks are drawn by ``video_report.py``.
"""

from __future__ import annotations

from pathlib import Path

from sparsedino.config import ConfigError, config_to_dict, load_config, resolve_device
from sparsedino.data.davis import DavisError
from sparsedino.data.synthetic_video import write_synthetic_videos
from sparsedino.errors import MissingDataError
from sparsedino.eval.settings import VideoConfig
from sparsedino.eval.video import BackboneFeatures, ConstantFeatures, OracleFeatures, build_davis, run_video
from sparsedino.eval.video_checks import check_fits_backbone, first_frame_sizes, validate_video_config
from sparsedino.models import load_backbone
from sparsedino.models.vit import ARCHS
from sparsedino.pipeline.stages import Stage
from sparsedino.train.checkpointing import LATEST, epoch_snapshot_name

MASKS = "masks"
SCORES = ("J&F-Mean", "J-Mean", "F-Mean")


def build_video_config(cfg, out: Path):
    """The resolved :class:`~sparsedino.eval.settings.VideoConfig` of a reproduce run (None when off)."""
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
    cfg, vcfg = plan.cfg, plan.video
    settings = {**config_to_dict(vcfg), "clips": None}  # what the clips are is part of every result's key
    stages, deps = [], []
    if cfg.synth.enabled:
        clips = {**config_to_dict(cfg.video), "num_classes": cfg.synth.num_classes,
                 "clutter": cfg.synth.clutter, "colours": cfg.synth.colours,
                 "colour_groups": cfg.synth.colour_groups, "marker_share": cfg.synth.marker_share}  # fmt: skip
        clips.pop("overrides"), clips.pop("enabled")

        def write(stage_dir: Path) -> dict:
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
