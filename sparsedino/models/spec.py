"""``BackboneSpec``: the one way every command names a backbone, parsed once where the user gives it.

Spellings (the value of ``--checkpoint`` in ``diagnose`` and ``eval``, and of ``export``'s argument)::

    FILE                                    our checkpoint or export, an official DINO file, a timm ViT state
                                            dict of our architecture table (read by load_checkpoint_backbone)
    timm:NAME:FILE                          timm.create_model(NAME, pretrained=False) loaded from FILE
                                            (.pth / .safetensors, timm's layout or the original one, e.g. the
                                            official DINOv2 / DINOv3 releases)
    timm:NAME,key=value,...:FILE            the same with create_model keyword arguments (a model of another
                                            size or depth than NAME's: img_size=224, depth=6, ...)
    hf:FOLDER                               a transformers model folder written by save_pretrained (config.json)

``NAME`` may carry a pretrained tag (``vit_small_patch14_dinov2.lvd142m``): the tag picks the weights'
pretrained config (image mean / std); nothing is ever downloaded. Values are read as int, float,
``true`` / ``false`` / ``none``, else as strings. ``FILE`` is everything after the second colon, so paths may
hold colons. A folder holding ``config.json`` given without ``hf:`` is an error (a bare folder means a
training run's checkpoints in ``diagnose``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from timm.models import get_arch_name, get_pretrained_cfg

from sparsedino.models.formats import CheckpointError
from sparsedino.models.hf_config import read_hf_config

__all__ = ["SPEC_HELP", "TIMM_SUFFIXES", "BackboneSpec", "parse_backbone_spec"]

KINDS = ("checkpoint", "timm", "hf")
TIMM_SUFFIXES = (".pth", ".pt", ".safetensors")
# create_model arguments that fetch or read weights themselves: the spec's FILE is the only weights source.
FORBIDDEN_TIMM_KWARGS = (
    "pretrained",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
)
SPEC_HELP = (
    "backbone: FILE (our checkpoint/export, an official DINO file, a timm ViT of our table), "
    "timm:NAME[,key=value...]:FILE (a timm model and its .pth/.safetensors weights) or hf:FOLDER "
    "(a transformers save_pretrained folder)"
)


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone name: what to build and where its weights are.

    Attributes:
        kind: ``"checkpoint"`` (our loader), ``"timm"`` or ``"hf"``.
        path: the checkpoint / weights file, or the transformers folder.
        timm_name: timm model name, with its pretrained tag if given (``kind == "timm"`` only).
        timm_kwargs: extra ``timm.create_model`` arguments, as ``(key, value)`` pairs in the given order.
    """

    kind: str
    path: Path
    timm_name: str | None = None
    timm_kwargs: tuple[tuple[str, Any], ...] = field(default=())

    def __str__(self) -> str:
        """The canonical spelling (parses back to an equal spec)."""
        if self.kind == "timm":
            extra = "".join(f",{k}={_format_value(v)}" for k, v in self.timm_kwargs)
            return f"timm:{self.timm_name}{extra}:{self.path}"
        return f"hf:{self.path}" if self.kind == "hf" else str(self.path)

    def with_path(self, path: str | Path) -> BackboneSpec:
        """The same model with another weights file (one of several epochs of a run)."""
        return BackboneSpec(self.kind, Path(path), self.timm_name, self.timm_kwargs)


def _format_value(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _parse_value(text: str) -> Any:
    """``"2"`` -> 2, ``"1e-5"`` -> 1e-05, ``"true"`` -> True, ``"none"`` -> None, anything else stays text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_backbone_spec(value: str | Path | BackboneSpec, option: str = "--checkpoint") -> BackboneSpec:
    """Parse (and check) what the user wrote to name a backbone; see the module docstring for the spellings.

    Checks that need no model or weights are done here, before any work: the timm name and tag exist, the
    weights file exists and has a known suffix, the folder holds a ``config.json`` of a ViT-like model type.
    A bare ``FILE`` is not checked here: :func:`sparsedino.models.checkpoint.load_checkpoint_backbone`
    reports its problems.

    Args:
        value: the text (or a ``Path``, always a checkpoint file; or an already parsed spec).
        option: the option's name in error messages.

    Returns:
        The :class:`BackboneSpec`.

    Raises:
        CheckpointError: one line naming the option, the value and the problem (unknown timm name with the
            closest names, missing file, folder without ``config.json``, a model type that is not a ViT).
    """
    if isinstance(value, BackboneSpec):
        return value
    if isinstance(value, Path):
        return BackboneSpec("checkpoint", value)
    text = str(value)
    if text.startswith("timm:"):
        return _parse_timm(text, option)
    if text.startswith("hf:"):
        folder = Path(text[len("hf:") :]).expanduser()
        read_hf_config(folder, f"{option} {text!r}")
        return BackboneSpec("hf", folder)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        raise CheckpointError(
            f"{option} {text!r} is a folder with a config.json (a transformers model?): write hf:{text} "
            "to load it with transformers"
        )
    return BackboneSpec("checkpoint", path)


def _parse_timm(text: str, option: str) -> BackboneSpec:
    head, sep, file = text[len("timm:") :].partition(":")
    if not sep or not file:
        raise CheckpointError(
            f"{option} {text!r}: a timm backbone needs its weights file, as timm:NAME:FILE "
            "(nothing is downloaded)"
        )
    name, *pairs = head.split(",")
    kwargs = []
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.isidentifier():
            raise CheckpointError(f"{option} {text!r}: {pair!r} is not a key=value model argument")
        if key in FORBIDDEN_TIMM_KWARGS:
            raise CheckpointError(
                f"{option} {text!r}: {key!r} is not allowed, the weights come from the spec's FILE only"
            )
        kwargs.append((key, _parse_value(raw)))
    _check_timm_name(name, f"{option} {text!r}")
    path = Path(file).expanduser()
    if path.suffix not in TIMM_SUFFIXES:
        raise CheckpointError(
            f"{option} {text!r}: the weights file must end with {', '.join(TIMM_SUFFIXES)}, got {path.name!r}"
        )
    if not path.is_file() and not any(ch in file for ch in "*?["):  # globs are expanded by diagnose
        raise CheckpointError(f"{option} {text!r}: weights file {file!r} does not exist")
    return BackboneSpec("timm", path, name, tuple(kwargs))


def _check_timm_name(name: str, where: str) -> None:
    """An unknown model or pretrained tag is an error that lists the closest known names."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else "; see timm.list_models()"
        raise CheckpointError(f"{where}: timm has no model {name!r}{hint}")
    if "." in name:
        try:
            get_pretrained_cfg(name, allow_unregistered=False)
        except RuntimeError as err:
            tags = timm.list_pretrained(f"{get_arch_name(name)}.*")
            raise CheckpointError(
                f"{where}: {err} (known: {', '.join(tags) or 'none'})".replace("\n", " ")
            ) from err


def spec_metadata(spec: BackboneSpec) -> dict[str, Any]:
    """What an export records about the model a spec names (``timm_model``, ``timm_kwargs``), JSON-ready."""
    if spec.kind != "timm":
        return {}
    return {"timm_model": spec.timm_name, "timm_kwargs": json.loads(json.dumps(dict(spec.timm_kwargs)))}
