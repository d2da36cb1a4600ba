"""The files ``sparsedino export`` writes, and the checks that keep it from destroying any.

An export never replaces a training checkpoint (``student`` / ``teacher`` / ``optimizer``: a run resumes
from it) nor the file it reads, with or without ``--force``; any other existing file is replaced only with
``--force``.

A ``.pth`` export is a bare state dict (``torch.load`` gives the tensors, timm's ``load_state_dict`` takes
it) plus the ``FILE.pth.json`` sidecar; the same metadata is also stored inside the file
(:mod:`sparsedino.models.embedded`). The pair is written to temporaries and renamed sidecar first, weights
last: the weights file never exists without its sidecar.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import safetensors.torch
import torch

from sparsedino.atomic import atomic_files, atomic_write_bytes, check_output_file, torch_save
from sparsedino.config import ConfigError
from sparsedino.errors import OutputError
from sparsedino.models.formats import SIDECAR_SUFFIX

TRAINING_KEYS = ("student", "teacher", "optimizer")


def sidecar_path(path: Path) -> Path:
    """``FILE.pth`` -> ``FILE.pth.json``."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def is_training_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a training checkpoint (or snapshot) of ours or of DINO's, read lazily."""
    if path.suffix == ".safetensors" or not path.is_file():
        return False
    with torch.serialization.safe_globals([argparse.Namespace]):
        for mmap in (True, False):  # (mmap: only the pickled index is read; legacy files need a full load)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except Exception:  # not a torch file (or an unsafe one): not ours to protect, --force decides
                continue
            return isinstance(obj, dict) and any(isinstance(obj.get(key), dict) for key in TRAINING_KEYS)
    return False


def check_export_target(checkpoint: Path, out: Path, force: bool) -> None:
    """Refuse an ``--out`` that would replace the input, a training checkpoint, or (without ``force``) any
    existing file; check that ``out`` can be written.

    Raises:
        ConfigError: naming ``--out`` and what it would destroy.
        OutputError: ``out`` is a folder or its folder cannot be written.
    """
    check_output_file(out, "--out")
    targets = [out] + ([sidecar_path(out)] if out.suffix != ".safetensors" else [])
    for target in targets:
        if _same_file(target, checkpoint):
            raise ConfigError(
                f"--out {str(out)!r} would overwrite the checkpoint being exported; give another file name"
            )
    if is_training_checkpoint(out):
        raise ConfigError(
            f"--out {str(out)!r} is a training checkpoint (a run resumes from it); export never replaces one, "
            "even with --force: give another file name"
        )
    existing = [str(target) for target in targets if target.exists() or target.is_symlink()]
    if existing and not force:
        raise OutputError(
            f"--out: {', '.join(map(repr, existing))} already exist(s); pass --force to replace"
        )


def write_export(out: Path, state: dict, meta: dict) -> None:
    """Write the export: safetensors with ``meta`` in its header, or ``.pth`` + sidecar as a pair."""
    if out.suffix == ".safetensors":
        atomic_write_bytes(
            out, safetensors.torch.save(dict(state), metadata={"sparsedino": json.dumps(meta)})
        )
        return
    with atomic_files(sidecar_path(out), out) as (sidecar_tmp, weights_tmp):
        sidecar_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        with open(weights_tmp, "wb") as handle:
            torch_save(state, handle)
