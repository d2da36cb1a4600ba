"""Learned per-head alphas of the ``entmax-learned-alpha`` arm: read from a run, shown in the report.

The train stage of a run with ``model.learn_alpha=true`` records its final teacher's alphas (the values the
attention uses, i.e. clamped into (1, 2]) as ``learned_alpha``: one list per block, one value per head.
The report shows them per run, with each block's mean, so a reader sees where the heads went (towards
softmax near 1, sparsemax at 2) from the 1.5 they started at.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sparsedino.attention.adaptive import used_alphas
from sparsedino.diagnose.report import Doc
from sparsedino.models.formats import read_checkpoint

_ALPHA_KEY = re.compile(r"(?:^|\.)blocks\.(\d+)\.attn\.alpha$")


def state_alphas(state: dict[str, torch.Tensor]) -> list[list[float]] | None:
    """The used alpha of each head per block (``[[block 0 heads], ...]``) from a state dict, or None.

    Args:
        state: A backbone or full-network state dict (keys ``...blocks.<i>.attn.alpha``, shape (H,)).

    Returns:
        Per-block lists of per-head alphas in block order, or None when the state has no learned alpha.
    """
    found = {}
    for key, value in state.items():
        match = _ALPHA_KEY.search(key)
        if match:
            found[int(match.group(1))] = used_alphas(value)
    if not found:
        return None
    return [found[i] for i in sorted(found)]


def checkpoint_alphas(path: Path) -> list[list[float]] | None:
    """:func:`state_alphas` of the teacher in a training checkpoint (None when it learns no alpha)."""
    obj, _ = read_checkpoint(Path(path))
    teacher = obj.get("teacher") if isinstance(obj, dict) else None
    return state_alphas(teacher) if isinstance(teacher, dict) else None


def learned_alpha_doc(results: dict[str, dict], run_ids: list[str]) -> tuple[Doc, dict]:
    """The report section of the learned alphas (empty when no run learned them) and its JSON.

    Args:
        results: Each stage's result by stage name (``train/<run>`` holds ``learned_alpha``).
        run_ids: The runs in report order.

    Returns:
        ``(doc, {run: [[alpha per head] per block]})``.
    """
    learned = {
        rid: results[f"train/{rid}"]["learned_alpha"]
        for rid in run_ids
        if (results.get(f"train/{rid}") or {}).get("learned_alpha")
    }
    if not learned:
        return [], {}
    heads = max(len(block) for blocks in learned.values() for block in blocks)
    rows = [
        [
            rid,
            str(i),
            *(f"{a:.4f}" for a in block),
            *([""] * (heads - len(block))),
            f"{sum(block) / len(block):.4f}",
        ]
        for rid, blocks in learned.items()
        for i, block in enumerate(blocks)
    ]
    doc: Doc = [
        ("h", 2, "Learned alpha per head (final teacher)"),
        (
            "p",
            "alpha-entmax per head, learned from the normaliser's alpha (1.5 for entmax15) and clamped "
            "into (1, 2]: near 1 a head is dense like softmax, at 2 it is sparsemax.",
        ),
        ("table", ["run", "block", *(f"head {h}" for h in range(heads)), "mean"], rows),
    ]
    return doc, learned
