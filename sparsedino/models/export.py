"""``sparsedino export CKPT --format timm|dino --out FILE``: write a checkpoint's backbone for other tools.

Formats:
- ``timm``: the state dict of ``timm.create_model("vit_small_patch16_224", num_classes=0)`` (or the
  matching size / patch); registers allowed (``reg_token``, timm's ``no_embed_class`` layout).
- ``dino``: an official DINO backbone file (as ``dino_deitsmall16_pretrain.pth``), loadable with
  ``dino.vision_transformer.vit_small(patch_size=16).load_state_dict(...)``; DINO's ViT has no registers.
  For register-free ViTs the tensors are the same as ``timm`` (DINO's ViT uses timm's parameter names).

``.safetensors`` files carry our metadata (arch, normalizer, ...) in their header; ``.pth`` files are a
bare state dict with a ``FILE.json`` sidecar (and the same metadata inside, see
:mod:`sparsedino.models.export_files`), so ``torch.load`` gives the state dict directly and
:func:`sparsedino.models.load_backbone` still rebuilds the right attention. An export never replaces a
training checkpoint or its own input, and any other existing file only with ``--force``.

The source is any backbone spec (:mod:`sparsedino.models.spec`) but a transformers folder:
``timm:NAME[,k=v]:FILE`` is written as the timm model's state dict in timm's layout (an original DINOv2 /
DINOv3 file comes out converted), with ``timm_model`` / ``timm_kwargs`` in the metadata; it is read back as
``timm:NAME[,k=v]:OUT``. An ``hf:FOLDER`` is refused: the folder is already the model in its own format and
every command reads it as it is (its tensors have transformers' names, not timm's or DINO's).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

from sparsedino.commands import Command, dispatch
from sparsedino.config import ConfigError
from sparsedino.models.backbone import load_backbone
from sparsedino.models.checkpoint import BackboneInfo
from sparsedino.models.embedded import with_embedded_metadata
from sparsedino.models.export_files import check_export_target, write_export
from sparsedino.models.spec import SPEC_HELP, BackboneSpec, parse_backbone_spec, spec_metadata

FORMATS = ("timm", "dino")
SUFFIXES = (".pth", ".pt", ".safetensors")


def timm_model_name(info: BackboneInfo) -> str | None:
    """The stock timm model with this backbone's shape (e.g. ``vit_small_patch16_224``), or None.

    None when timm has no such model (``vit_pico``, custom widths, most patch / register combinations):
    the file then loads into ``timm.models.VisionTransformer`` built with the shape stored in its metadata.
    """
    if info.source == "timm":
        return info.arch
    if info.arch == "custom":
        return None
    size = info.arch.removeprefix("vit_")
    reg = f"_reg{info.num_registers}" if info.num_registers else ""
    name = f"vit_{size}_patch{info.patch_size}{reg}_224"
    return name if timm.is_model(name) else None


def export_backbone(
    checkpoint: str | Path | BackboneSpec,
    out: str | Path,
    fmt: str = "timm",
    which: str = "teacher",
    force: bool = False,
) -> tuple[Path, BackboneInfo]:
    """Write the ``which`` backbone of ``checkpoint`` to ``out`` in format ``fmt`` (atomically).

    ``force`` allows replacing an existing file that is neither a training checkpoint nor ``checkpoint``.

    Returns:
        ``(out_path, info)``.

    Raises:
        ConfigError: unknown format or file suffix, registers with ``fmt="dino"``, a transformers folder,
            a timm model with ``fmt="dino"``, or an ``out`` that is the input or a training checkpoint.
        OutputError: ``out`` cannot be written, or exists and ``force`` is false.
        CheckpointError: the checkpoint cannot be read.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.suffix not in SUFFIXES:
        raise ConfigError(f"--out {str(out)!r} must end with one of {', '.join(SUFFIXES)}")
    spec = parse_backbone_spec(checkpoint, "checkpoint")
    if spec.kind == "hf":
        raise ConfigError(
            f"{spec} is a transformers folder: it is already a saved model, which every command reads as "
            f"{spec}; export writes timm / DINO files (transformers' tensor names are neither)"
        )
    if spec.kind == "timm" and fmt == "dino":
        raise ConfigError(
            f"--format dino writes DINO v1 ViTs of our checkpoints; export {spec} with --format timm"
        )
    check_export_target(spec.path, out, force)
    model, info = load_backbone(spec, which=which)
    if fmt == "dino" and info.num_registers:
        raise ConfigError(
            f"{str(checkpoint)!r} has {info.num_registers} register tokens, which DINO's ViT does not "
            "support; export with --format timm"
        )
    weights = model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    meta = {
        "source": "export",
        "format": fmt,
        "arch": info.arch,
        "patch_size": info.patch_size,
        "num_heads": info.num_heads,
        "num_registers": info.num_registers,
        "normalizer": info.normalizer,
        "attn_scale": _attn_scale(model),
        "epoch": info.epoch,
        "timm_model": timm_model_name(info),
        "exported_from": str(spec),
        "exported_from_sha256": info.sha256,
        **spec_metadata(spec),
    }
    if spec.kind == "timm":
        meta["spec"] = str(spec.with_path(out))  # how to read the export back
    write_export(out, with_embedded_metadata(state, getattr(weights, "_metadata", None), meta), meta)
    return out, info


def _attn_scale(model: torch.nn.Module) -> float | None:
    """The attention logit scale when it differs from ``head_dim ** -0.5``, else None (the default)."""
    for module in model.modules():
        if hasattr(module, "normalizer") and hasattr(module, "head_dim") and hasattr(module, "scale"):
            default = module.head_dim**-0.5
            return None if abs(float(module.scale) - default) < 1e-9 else float(module.scale)
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sparsedino export``."""
    parser.add_argument("checkpoint", metavar="SPEC", help=f"{SPEC_HELP}; not a transformers folder")
    parser.add_argument(
        "--format", choices=FORMATS, default="timm", help="key layout to write (default timm)"
    )
    parser.add_argument("--out", required=True, help="output file (.pth or .safetensors)")
    parser.add_argument("--which", choices=("teacher", "student"), default="teacher")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing --out (never a training checkpoint)"
    )


def run(args: argparse.Namespace) -> int:
    """Export, then say what was written and how to read it back."""
    out, info = export_backbone(args.checkpoint, args.out, args.format, args.which, args.force)
    timm_name = timm_model_name(info)
    if info.source == "timm":
        spec = parse_backbone_spec(info.spec).with_path(out)
        print(f"wrote {out} (timm format, timm model {info.arch}); read it back as --checkpoint {spec}")
        return 0
    print(
        f"wrote {out} ({args.format} format): {info.arch} patch {info.patch_size}, {info.normalizer} attention, "
        f"{info.num_registers} registers, epoch {info.epoch}; "
        + (f"timm name {timm_name}" if timm_name else "no stock timm model has this shape")
    )
    return 0


CLI = Command(
    add_arguments,
    run,
    description="Export the teacher (or student) backbone of a checkpoint as a timm or DINO file.",
)


def main(argv: Sequence[str]) -> int:
    """``sparsedino export SPEC --out FILE [options]``."""
    return dispatch(CLI, argv, "sparsedino export")
