"""Write protocol results as JSON (machine) and Markdown (human), side by side, atomically."""

from __future__ import annotations

import math
from pathlib import Path

from sparsedino.atomic import atomic_write_json, atomic_write_text


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def _flat(value) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) + ")"
    return _fmt(value)


def knn_markdown(result: dict) -> list[str]:
    rows = [k for k in result["results"] if k.startswith("k=")]
    lines = ["| k | top-1 (%) | top-5 (%) |", "|---|---|---|"]
    lines += [
        f"| {result['results'][r]['k']} | {_fmt(result['results'][r]['top1'])} | "
        f"{_fmt(result['results'][r]['top5'])} |"
        for r in rows
    ]
    return lines


def linear_markdown(result: dict) -> list[str]:
    best = result["best"]
    lines = [
        f"**Best on val**: top-1 {_fmt(best['top1'])} %, top-5 {_fmt(best['top5'])} % "
        f"(lr {best['lr']:g}, last {best['n_last_blocks']} block(s), avgpool {best['avgpool']})",
        "",
        "| lr | last blocks | avgpool | top-1 (%) | top-5 (%) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {e['lr']:g} | {e['n_last_blocks']} | {e['avgpool']} | {_fmt(e['top1'])} | {_fmt(e['top5'])} |"
        for e in result["grid"]
    ]
    return lines


def seg_markdown(result: dict) -> list[str]:
    lines = [f"**mIoU**: {_fmt(100 * result['miou'])} %", "", "| class | IoU (%) |", "|---|---|"]
    lines += [f"| {name} | {_fmt(100 * iou)} |" for name, iou in result["per_class_iou"].items()]
    return lines


def video_markdown(result: dict) -> list[str]:
    keys = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(100 * result[k]) for k in keys) + " |", ""]
    lines += ["| sequence | J-Mean (%) | F-Mean (%) |", "|---|---|---|"]
    lines += [
        f"| {name} | {_fmt(100 * seq['J-Mean'])} | {_fmt(100 * seq['F-Mean'])} |"
        for name, seq in result["per_sequence"].items()
    ]
    return lines


_TABLES = {
    "knn": knn_markdown,
    "linear": linear_markdown,
    "linear_seg": seg_markdown,
    "video": video_markdown,
}
_SKIP = {"results", "grid", "best", "per_class_iou", "history", "metrics", "J&F-Mean", "J-Mean", "J-Recall",
         "J-Decay", "F-Mean", "F-Recall", "F-Decay"}  # fmt: skip


def write_results(out_dir: str | Path, name: str, result: dict) -> tuple[Path, Path]:
    """Write ``out_dir/<name>.json`` and ``out_dir/<name>.md`` and return both paths.

    The Markdown starts with every scalar/string setting of the result (protocol, layers, norm,
    augmentation, ...) so a table is never separated from how it was produced.
    """
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_json(json_path, result)
    lines = [f"# {name}", ""]
    for key, value in result.items():
        if key not in _SKIP and not isinstance(value, (list, dict)):
            lines.append(f"- **{key}**: {_fmt(value)}")
        elif (
            key not in _SKIP
            and isinstance(value, list)
            and all(not isinstance(v, (list, dict)) for v in value)
        ):
            lines.append(f"- **{key}**: {', '.join(map(_fmt, value))}")
        elif key in ("backbone", "speed", "extraction") and isinstance(value, dict):
            lines.append(f"- **{key}**: " + ", ".join(f"{k}={_flat(v)}" for k, v in value.items()))
    lines.append("")
    lines += _TABLES.get(result.get("protocol", ""), lambda r: [])(result)
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path
