"""Compare two ``sparsedino reproduce`` run folders: are their results the same?

A refactor must not change results (issue 23). This compares every JSON / JSONL file of two run folders
(output paths replaced by ``OUT``; timings, dates and the hashes of settings that hold the output path
left out) and every checkpoint's tensors (``torch.equal`` per key). ``--strict`` keeps those hashes, for
two runs written to the same path one after the other.

Usage::

    python tools/compare_runs.py RUN_A RUN_B [--strict]   # exit 0 when equal, 1 with the differences listed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

# Fields that differ between two runs of the same code: wall-clock times and dates.
TIME_KEYS = frozenset(
    {
        "date",
        "finished",
        "elapsed_s",
        "stage_seconds",
        "stages_total_s",
        "seconds",
        "images_per_s",
        "iters_per_s",
        "speed",
    }
)
# Hashes of settings or files that contain the output folder's path (equal when both runs used one path).
PATH_HASH_KEYS = frozenset({"fingerprint", "sha256"})


def normalise(value: Any, root: Path, skip: frozenset[str]) -> Any:
    """``value`` with ``root`` replaced by ``OUT`` in strings and the keys in ``skip`` dropped."""
    if isinstance(value, dict):
        return {k: normalise(v, root, skip) for k, v in value.items() if k not in skip}
    if isinstance(value, list):
        return [normalise(v, root, skip) for v in value]
    if isinstance(value, str):
        return value.replace(str(root), "OUT")
    return value


def read_json(path: Path, root: Path, skip: frozenset[str]) -> Any:
    text = path.read_text()
    docs = (
        [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.suffix == ".jsonl"
        else json.loads(text)
    )
    return normalise(docs, root, skip)


def compare_tensors(a: Path, b: Path) -> list[str]:
    """The keys whose tensors differ between two checkpoints (nested dicts walked)."""

    def flat(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
        if torch.is_tensor(obj):
            return {prefix: obj}
        if isinstance(obj, dict):
            return {k: v for key, item in obj.items() for k, v in flat(item, f"{prefix}.{key}").items()}
        return {}

    ta, tb = flat(torch.load(a, weights_only=True)), flat(torch.load(b, weights_only=True))
    if ta.keys() != tb.keys():
        return [f"keys differ: {sorted(ta.keys() ^ tb.keys())[:5]}"]
    return [k for k in ta if ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument(
        "--strict", action="store_true", help="also compare the hashes that hold the output path"
    )
    args = parser.parse_args(argv)
    a, b = args.run_a.resolve(), args.run_b.resolve()
    skip = TIME_KEYS if args.strict else TIME_KEYS | PATH_HASH_KEYS
    problems: list[str] = []
    files = sorted({p.relative_to(a) for p in a.rglob("*")} | {p.relative_to(b) for p in b.rglob("*")})
    n_json = n_tensors = 0
    for rel in files:
        pa, pb = a / rel, b / rel
        if rel.suffix not in (".json", ".jsonl", ".pth"):
            continue
        if not (pa.is_file() and pb.is_file()):
            problems.append(f"{rel}: only in {'A' if pa.exists() else 'B'}")
        elif rel.suffix == ".pth":
            n_tensors += 1
            problems += [f"{rel}: tensor {k} differs" for k in compare_tensors(pa, pb)]
        else:
            n_json += 1
            if read_json(pa, a, skip) != read_json(pb, b, skip):
                problems.append(f"{rel}: values differ")
    print(f"{n_json} JSON files, {n_tensors} checkpoints compared; left out: {sorted(skip)}")
    print("\n".join(problems) if problems else "equal")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
