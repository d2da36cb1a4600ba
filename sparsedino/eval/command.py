"""``sparsedino eval {knn,linear,seg,video}``: frozen-backbone protocols from the command line.

Examples::

    sparsedino eval knn --checkpoint ckpt.pth --data /data/imagenet --out runs/eval
    sparsedino eval linear --checkpoint dino_deitsmall16_pretrain.pth --data /data/imagenet lrs=[1e-3,1e-2]
    sparsedino eval seg --checkpoint ckpt.pth --config eval_seg_voc --data /data/VOCdevkit --with-cls
    sparsedino eval seg --checkpoint ckpt.pth --config eval_seg_ade20k --data /data/ADEChallengeData2016 \\
        layers=[-4,-3,-2,-1] features.cache_dir=/tmp/feats
    sparsedino eval video --checkpoint dino_deitsmall16_pretrain.pth --data /data/DAVIS

``--checkpoint`` names the backbone: our training checkpoints and exports, official DINO files and timm ViT
state dicts of our table as a ``FILE``; any timm ViT as ``timm:NAME[,key=value...]:FILE`` (e.g.
``timm:vit_small_patch14_reg4_dinov2:dinov2_vits14_reg4_pretrain.pth``); a transformers folder as
``hf:FOLDER`` (see :mod:`sparsedino.models.spec`). Patch size, image mean / std and the prefix tokens come
from the model. Results go to ``OUT/<protocol>.json`` and ``.md`` with the resolved config beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from sparsedino.atomic import check_output_dir, staged_directory
from sparsedino.attention import Normalizer
from sparsedino.commands import Command, Group, dispatch
from sparsedino.config import ConfigError, check_normalizer, resolve_device, save_config
from sparsedino.data.imagenet import ImageNetFolder
from sparsedino.data.joint_transforms import make_classification_transform
from sparsedino.data.segmentation import SEG_DATASETS, build_seg_dataset
from sparsedino.eval.knn import run_knn
from sparsedino.eval.linear import run_linear
from sparsedino.eval.report import write_results
from sparsedino.eval.segmentation import run_seg_probe
from sparsedino.eval.settings import PROTOCOLS, load_protocol_config
from sparsedino.eval.video import BackboneFeatures, build_davis, run_video
from sparsedino.eval.video_checks import check_fits_backbone, first_frame_sizes
from sparsedino.models import load_backbone, parse_backbone_spec
from sparsedino.models.layout import token_layout
from sparsedino.models.spec import SPEC_HELP
from sparsedino.runlock import RunLock

USAGE = """usage: sparsedino eval {knn,linear,seg,video} --checkpoint SPEC --data ROOT [--config YAML] \
[key=value ...]
protocols:
  knn     DINO weighted k-NN on last-block [CLS] (T=0.07, k=10/20/100/200)      preset: eval_knn
  linear  linear probe on [CLS]: fast grid of lrs x (last 1/4 blocks) x avgpool on cached features
          (preset eval_linear), or DINO's protocol on augmented views (preset eval_linear_dino)
  seg     DINOv2 "linear" segmentation probe (BN + 1x1 conv, sliding-window eval)
          presets: eval_seg_voc, eval_seg_ade20k, eval_seg_cityscapes
  video   DINO video label propagation on DAVIS-2017 (480p, T=0.1, top-5, 1+7 context frames,
          window 12), J&F as the DAVIS benchmark; nothing trained                preset: eval_video_davis

Run `sparsedino eval PROTOCOL --help` for the options of one protocol."""


def add_arguments(parser: argparse.ArgumentParser, protocol: str) -> None:
    """The options of ``sparsedino eval PROTOCOL`` (``seg`` adds ``--dataset`` and ``--with-cls``)."""
    parser.add_argument("--checkpoint", required=True, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--data", help="dataset root (overrides data_root)")
    parser.add_argument("--config", help="YAML file or preset (e.g. eval_seg_voc)")
    parser.add_argument(
        "--normalizer", help="attention normaliser override (softmax, entmax15, sparsemax, alpha)"
    )
    parser.add_argument("--arch", help="expected architecture (vit_small ...); inferred when omitted")
    parser.add_argument(
        "--which", default="teacher", choices=["teacher", "student"], help="network of a training checkpoint"
    )
    parser.add_argument("--out", default=None, help=f"output folder (default runs/eval/{protocol})")
    if protocol == "seg":
        parser.add_argument("--dataset", choices=SEG_DATASETS, help="overrides dataset")
        parser.add_argument(
            "--with-cls", action="store_true", default=None, help="concatenate [CLS] to patches"
        )
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")


def normalizer_option(value: str | None) -> Normalizer | None:
    """``--normalizer`` parsed once (any documented spelling, e.g. ``entmax-1.5`` or ``1.5``) into the
    :class:`sparsedino.attention.Normalizer` that :func:`sparsedino.models.load_backbone` takes; None if
    not given. ConfigError naming the option otherwise."""
    return None if value is None else check_normalizer(value, "--normalizer")


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if args.data:
        extra.append(f"data_root={args.data}")
    if getattr(args, "dataset", None):
        extra.append(f"dataset={args.dataset}")
    if getattr(args, "with_cls", None):
        extra.append("with_cls=true")
    return extra


def _classification_sets(cfg, model):
    layout = token_layout(model)  # the model's image statistics
    transform = make_classification_transform(
        train=False, crop=cfg.crop, resize=cfg.resize, mean=layout.mean, std=layout.std
    )
    return (
        ImageNetFolder(cfg.data_root, cfg.train_split, transform),
        ImageNetFolder(cfg.data_root, cfg.val_split, transform),
    )


def check_fits_model(protocol: str, model, cfg) -> None:
    """Settings that depend on the backbone (block indices, crop vs patch size), checked before any work.

    Raises:
        ConfigError: naming the key and the model's depth or patch size.
    """
    depth, patch = len(model.blocks), model.patch_embed.patch_size[0]
    if protocol in ("seg", "video") and not getattr(model, "dynamic_img_size", False):
        raise ConfigError(
            f"eval {protocol} feeds inputs of varying size, but this {type(model).__name__} takes "
            f"{tuple(getattr(model.patch_embed, 'img_size', ()))} inputs only (no dynamic_img_size)"
        )
    if protocol == "seg":
        bad = [layer for layer in cfg.layers if not -depth <= layer < depth]
        if bad:
            raise ConfigError(f"key 'layers': block(s) {bad} out of range for a model with {depth} blocks")
        if cfg.crop_size % patch:
            raise ConfigError(
                f"key 'crop_size' ({cfg.crop_size}) must be a multiple of the patch size {patch}"
            )
    if protocol == "linear" and all(n > depth for n in cfg.n_last_blocks):
        raise ConfigError(
            f"key 'n_last_blocks': {list(cfg.n_last_blocks)} all exceed the model depth {depth}"
        )


def run_protocol(protocol: str, model, cfg, out: Path | None = None) -> dict:
    """Build the datasets named in ``cfg`` (validated before the backbone runs) and run one protocol.

    ``out`` is where protocols that write more than their result (the video masks) put it.
    """
    if not cfg.data_root:
        raise ConfigError("data_root is empty: pass --data ROOT or data_root=...")
    check_fits_model(protocol, model, cfg)
    if protocol == "video":
        dataset = build_davis(cfg)
        check_fits_backbone(
            cfg, first_frame_sizes(dataset), model.patch_embed.patch_size[0], len(model.blocks)
        )
        extractor = BackboneFeatures(model, cfg.layer, cfg.norm, resolve_device(cfg.device))
        masks = out / "masks" if out is not None and cfg.save_masks else None
        return run_video(dataset, extractor, cfg, masks_dir=masks)
    if protocol == "seg":
        train = build_seg_dataset(cfg.dataset, cfg.data_root, cfg.train_split)
        val = build_seg_dataset(cfg.dataset, cfg.data_root, cfg.val_split)
        train.load_raw(0), val.load_raw(0)  # fail fast on a wrong annotation folder
        return run_seg_probe(model, train, val, list(cfg.layers), cfg.with_cls, cfg)
    train, val = _classification_sets(cfg, model)
    if protocol == "knn":
        return run_knn(model, train, val, cfg)
    return run_linear(model, train, val, cfg)


def evaluate(protocol: str, args: argparse.Namespace) -> int:
    """Check every input (config, output folder, checkpoint), then evaluate and write the results.

    The outputs are written into a folder beside ``--out`` and swapped in only when all are complete
    (:func:`~sparsedino.atomic.staged_directory`), under ``--out``'s lock: a failed run leaves a finished
    result untouched, and a fresh ``--out`` is not left holding masks without a result file.
    """
    spec = parse_backbone_spec(args.checkpoint)
    cfg = load_protocol_config(protocol, args.config, _overrides(args))
    if not cfg.data_root:
        raise ConfigError("data_root is empty: pass --data ROOT or data_root=...")
    out = check_output_dir(args.out or f"runs/eval/{protocol}", "--out")
    normalizer = normalizer_option(args.normalizer)
    model, info = load_backbone(spec, normalizer=normalizer, arch=args.arch, which=args.which)
    with RunLock(out, "--out"), staged_directory(out) as stage:
        result = run_protocol(protocol, model, cfg, stage)
        result = {"backbone": dataclasses.asdict(info), **result}
        if result.get("masks_dir"):
            result["masks_dir"] = str(out / Path(result["masks_dir"]).name)  # where it is after the swap
        save_config(cfg, stage / f"{protocol}_config.yaml")
        json_path, md_path = write_results(stage, result["protocol"], result)
    print(f"wrote {out / json_path.name} and {out / md_path.name}")
    return 0


def _protocol(protocol: str) -> Command:
    """The leaf ``sparsedino eval PROTOCOL``."""
    return Command(
        add_arguments=lambda parser: add_arguments(parser, protocol),
        run=lambda args: evaluate(protocol, args),
        description=f"Frozen-backbone {protocol} evaluation. Extra key=value arguments override config keys.",
    )


CLI = Group("protocol", USAGE, {protocol: _protocol(protocol) for protocol in PROTOCOLS})


def main(argv: Sequence[str]) -> int:
    """``sparsedino eval PROTOCOL [options] [key=value ...]`` (``argv`` starts with the protocol)."""
    return dispatch(CLI, argv, "sparsedino eval")
