"""Diagnostics over training: every per-block score against the epoch of several checkpoints of one run.

Checkpoints are given as files, folders (every ``*.pth``, ``*.pt``, ``*.safetensors`` inside) or glob
patterns; a ``timm:NAME:FILE`` spec's FILE may be a glob too (one timm model, several weight files). The epoch is ``BackboneInfo.epoch`` when the checkpoint stores one, otherwise the number in the
file name (``checkpoint0040.pth``, ``epoch_40.safetensors``, ``ep40.pt``).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path

from sparsedino.atomic import atomic_write_json
from sparsedino.diagnose import figures
from sparsedino.diagnose.report import Doc, fmt, write_documents
from sparsedino.diagnose.scores import GROUPS, SCORES, scalar_scores
from sparsedino.errors import MissingDataError
from sparsedino.models.formats import CheckpointError
from sparsedino.models.spec import BackboneSpec, parse_backbone_spec

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
_EPOCH_IN_NAME = re.compile(r"(?:epoch|ep|checkpoint|ckpt)[_\-]?(\d+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def resolve_checkpoints(specs: Sequence[str]) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of checkpoint files.

    Raises:
        MissingDataError: naming the spec that matches no checkpoint file (a ``FileNotFoundError``).
    """
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
        elif any(ch in spec for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        else:
            matches = [path] if path.is_file() else []
        if not matches:
            what = "folder has no .pth/.pt/.safetensors file" if path.is_dir() else "no such checkpoint file"
            raise MissingDataError(f"--checkpoint {spec}: {what}")
        found += [m for m in matches if m.resolve() not in {f.resolve() for f in found}]
    return found


def resolve_backbones(values: Sequence[str]) -> list[BackboneSpec]:
    """``--checkpoint`` values -> one backbone spec per file, in order, without duplicates.

    Checkpoint files, folders and globs expand as in :func:`resolve_checkpoints`; so does the FILE of a
    ``timm:`` spec; an ``hf:FOLDER`` is one backbone.

    Raises:
        CheckpointError / MissingDataError: naming the value that is malformed or matches no file.
    """
    found: dict[BackboneSpec, BackboneSpec] = {}  # the spec with a resolved path -> the spec as given
    for value in values:
        spec = parse_backbone_spec(value)
        files = [spec.path] if spec.kind == "hf" else resolve_checkpoints([str(spec.path)])
        for path in files:
            found.setdefault(spec.with_path(path.resolve()), spec.with_path(path))
    return list(found.values())


def epoch_from_name(path: str | Path) -> int | None:
    """The epoch written in a checkpoint's file name, or None."""
    stem = Path(path).name.split(".")[0]
    match = _EPOCH_IN_NAME.search(stem) or _LAST_NUMBER.search(stem)
    return int(match.group(1)) if match else None


def assign_epochs(items: Sequence[tuple[Path, int | None, str]]) -> list[tuple[int, Path]]:
    """Sort checkpoints by epoch; the stored epoch wins over the name.

    Args:
        items: ``(path, stored epoch or None, content fingerprint)``.

    Returns:
        ``[(epoch, path)]`` sorted by epoch. Files with the same content (DINO's ``checkpoint.pth`` is a copy
        of the latest ``checkpointNNNN.pth``) are diagnosed once, under the name that carries an epoch; for
        two different files of the same epoch, the one whose name carries the epoch is kept.

    Raises:
        ValueError: naming a file whose epoch is neither stored nor in its name.
    """
    ranked = sorted(items, key=lambda item: epoch_from_name(item[0]) is None)  # named epochs first
    by_epoch: dict[int, Path] = {}
    seen: set[str] = set()
    for path, stored, fingerprint in ranked:
        if fingerprint in seen:
            continue
        seen.add(fingerprint)
        epoch = stored if stored is not None else epoch_from_name(path)
        if epoch is None:
            raise CheckpointError(f"{path}: no epoch stored in the checkpoint nor in its file name")
        if epoch not in by_epoch:
            by_epoch[epoch] = path
    return sorted(by_epoch.items())


def collect_series(runs: Sequence[tuple[int, dict]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Score key -> block -> [(epoch, value)] from ``[(epoch, metrics)]``; missing values are skipped."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for epoch, metrics in runs:
        for block, values in metrics["blocks"].items():
            for key, value in scalar_scores(values).items():
                series.setdefault(key, {}).setdefault(block, []).append((epoch, float(value)))
    return series


def write_over_training(runs: Sequence[tuple[int, dict, str]], out_dir: str | Path) -> dict:
    """Curves of every score against the epoch (one line per block), ``over_training.json`` and reports.

    Args:
        runs: ``[(epoch, metrics, run_dir relative to out_dir)]`` of the individual checkpoint runs.
        out_dir: destination folder.

    Returns:
        The series written to ``over_training.json``.
    """
    out = Path(out_dir)
    runs = sorted(runs, key=lambda r: r[0])
    series = collect_series([(e, m) for e, m, _ in runs])
    doc: Doc = [
        ("h", 1, "sparsedino diagnostics over training"),
        (
            "p",
            f"{len(runs)} checkpoints, epochs {', '.join(str(e) for e, _, _ in runs)}. Each checkpoint's "
            "full report is in its own folder: " + ", ".join(d for _, _, d in runs) + ".",
        ),
    ]
    last_block = max((b for _, m, _ in runs for b in m["blocks"]), key=int)
    keys = [k for k in SCORES if k in series and last_block in series[k]]
    rows = [[str(e)] + [fmt(m["blocks"].get(last_block, {}).get(k)) for k in keys] for e, m, _ in runs]
    doc += [
        ("h", 2, f"Scores of block {last_block} per epoch"),
        ("table", ["epoch"] + [SCORES[k][1] for k in keys], rows),
    ]
    doc.append(("h", 2, "Scores against epoch (one line per block)"))
    figs = []
    for group in GROUPS:
        p = figures.plot_over_epochs(series, group, out / "figures" / figures.figure_name("epochs", group))
        if p:
            figs.append(f"figures/{p.name}")
            doc.append(("img", figs[-1], f"{group} against epoch"))
    result = {
        "epochs": [e for e, _, _ in runs],
        "runs": {str(e): d for e, _, d in runs},
        "series": {k: {b: [list(p) for p in pts] for b, pts in v.items()} for k, v in series.items()},
        "figures": figs,
    }
    atomic_write_json(out / "over_training.json", result)
    write_documents(doc, out, "sparsedino diagnostics over training")
    return result
