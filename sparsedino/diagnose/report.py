"""Write a diagnostics run (``metrics.json``, ``figures/*.png``, ``report.md``, ``report.html``) and
side-by-side comparisons of two runs.

Reports are built as a small list of blocks (headings, paragraphs, tables, images) rendered both to
Markdown (images referenced by relative path) and to a self-contained HTML page (images embedded as
base64 data URIs, so the file can be mailed or opened anywhere).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from sparsedino.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from sparsedino.diagnose import figures, registers
from sparsedino.diagnose.scores import GROUPS, SCORES
from sparsedino.errors import DataError, MissingDataError

Doc = list[tuple]  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", rel_path, caption)

METRICS_VERSION = 1
MAP_KINDS = {
    "cls_attn": "[CLS] attention (head mean)",
    "pca": "PCA of patch features (RGB = PC1-3)",
    "norm": "patch-token norm",
}


def fmt(value: Any) -> str:
    """Human formatting of a score value."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def render_markdown(doc: Doc) -> str:
    lines: list[str] = []
    for item in doc:
        if item[0] == "h":
            lines += ["#" * item[1] + " " + item[2], ""]
        elif item[0] == "p":
            lines += [item[1], ""]
        elif item[0] == "table":
            header, rows = item[1], item[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif item[0] == "img":
            lines += [f"![{item[2]}]({item[1]})", ""]
    return "\n".join(lines)


def render_html(doc: Doc, base: Path, title: str) -> str:
    """Self-contained HTML: images read from ``base / rel_path`` and embedded as base64 PNG."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
        "text-align:right}th:first-child,td:first-child{text-align:left}img{max-width:100%}"
        "figure{margin:1em 0}</style>",
        "</head><body>",
    ]
    for item in doc:
        if item[0] == "h":
            parts.append(f"<h{item[1]}>{html.escape(item[2])}</h{item[1]}>")
        elif item[0] == "p":
            parts.append(f"<p>{html.escape(item[1])}</p>")
        elif item[0] == "table":
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in item[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in item[2]
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif item[0] == "img":
            data = base64.b64encode((base / item[1]).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(item[2])}">'
                f"<figcaption>{html.escape(item[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_documents(doc: Doc, out_dir: Path, title: str) -> None:
    atomic_write_text(out_dir / "report.md", render_markdown(doc))
    atomic_write_text(out_dir / "report.html", render_html(doc, out_dir, title))


def definitions_table() -> tuple[str, list[str], list[list[str]]]:
    return ("table", ["score", "key", "definition"], [[t, f"`{k}`", d] for k, (_, t, d) in SCORES.items()])


def _score_table(metrics: dict) -> tuple[str, list[str], list[list[str]]]:
    blocks = sorted(metrics["blocks"], key=int)
    rows = [
        [SCORES[k][1]] + [fmt(metrics["blocks"][b].get(k)) for b in blocks]
        for k in SCORES
        if any(k in metrics["blocks"][b] for b in blocks) and not k.startswith(registers.PREFIX)
    ]
    return ("table", ["score"] + [f"block {b}" for b in blocks], rows)


def _context(metrics: dict) -> list[tuple]:
    model, data, cfg = metrics.get("model", {}), metrics.get("data", {}), metrics.get("config", {})
    items: list[tuple] = []
    if model:
        items.append(("p", "Model: " + ", ".join(f"{k}={v}" for k, v in model.items() if v is not None)))
    items.append(("p", "Data: " + ", ".join(f"{k}={v}" for k, v in data.items())))
    items.append(
        (
            "p",
            f"Features: block outputs, final LayerNorm {'applied' if cfg.get('final_norm') else 'not applied'}"
            f" (token norms always on the residual stream, before it). High-norm outlier: norm > "
            f"{cfg.get('outlier_ratio')} x the median patch norm of its image. Foreground patch: >= "
            f"{cfg.get('fg_threshold')} of its labelled pixels are foreground (class != 0, 255 ignored).",
        )
    )
    return items


def write_run(result: dict, out_dir: str | Path, model_info: dict | None = None) -> dict:
    """Write ``metrics.json``, ``figures/*.png``, ``report.md`` and ``report.html`` for one run.

    Args:
        result: output of ``run_diagnostics``.
        out_dir: destination folder (created).
        model_info: description of the model (e.g. ``BackboneInfo`` as a dict).

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in result.items() if k != "examples"}
    metrics = {"version": METRICS_VERSION, "model": model_info or {}, **metrics}
    metrics["definitions"] = {k: d for k, (_, _, d) in SCORES.items()}
    figs: list[tuple[str, str]] = []
    for group in GROUPS:
        p = figures.plot_group_curves(
            {"run": metrics}, group, out / "figures" / figures.figure_name("curves", group)
        )
        if p:
            figs.append((f"figures/{p.name}", f"{group} per block"))
    p = figures.plot_norm_histograms({"run": metrics}, out / "figures" / "norm_histograms.png")
    figs.append((f"figures/{p.name}", "patch-norm distribution per block"))
    p = figures.plot_head_distances({"run": metrics}, out / "figures" / "head_distances.png")
    if p:
        figs.append((f"figures/{p.name}", "mean attention distance of every head"))
    for kind, title in MAP_KINDS.items():
        p = figures.plot_maps(
            result.get("examples", {"maps": {}}), kind, out / "figures" / f"maps_{kind}.png", title
        )
        if p:
            figs.append((f"figures/{p.name}", title))
    metrics["figures"] = [f for f, _ in figs]
    atomic_write_json(out / "metrics.json", metrics)
    doc: Doc = [
        ("h", 1, "sparsedino diagnostics"),
        *_context(metrics),
        ("h", 2, "Scores per block"),
        _score_table(metrics),
        *registers.register_section(metrics, fmt),
        ("h", 2, "Figures"),
    ]
    doc += [("img", f, c) for f, c in figs]
    doc += [
        ("h", 2, "Definitions"),
        definitions_table(),
        ("p", "Full definitions: docs/diagnostics.md of the sparsedino repository."),
    ]
    write_documents(doc, out, "sparsedino diagnostics")
    return metrics


def load_metrics(run_dir: str | Path) -> dict:
    """Read ``run_dir/metrics.json``, with an error naming the folder if it is not a diagnostics run."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise MissingDataError(f"{run_dir} is not a diagnostics run: {path} does not exist")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(metrics, dict) or "blocks" not in metrics:
        raise DataError(f"{path} has no 'blocks': not written by `sparsedino diagnose`")
    return metrics


def run_label(metrics: dict, run_dir: str | Path) -> str:
    """A short name for a run: its ``model.run`` (set by the pipeline), its normaliser, else its folder name."""
    model = metrics.get("model") or {}
    return str(model.get("run") or model.get("normalizer") or Path(run_dir).resolve().name)


def write_compare(run_a: str | Path, run_b: str | Path, out_dir: str | Path) -> dict:
    """Side-by-side report of two runs (e.g. softmax vs entmax): overlaid per-block curves, a table of
    every score at each common block (A, B, B - A) and both runs' map figures.

    Returns:
        The comparison written to ``out_dir/compare.json``.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    ma, mb = load_metrics(run_a), load_metrics(run_b)
    la, lb = run_label(ma, run_a), run_label(mb, run_b)
    if la == lb:
        la, lb = f"A ({la})", f"B ({lb})"
    runs = {la: ma, lb: mb}
    figs: list[tuple[str, str]] = []
    for group in GROUPS:
        p = figures.plot_group_curves(runs, group, out / "figures" / figures.figure_name("compare", group))
        if p:
            figs.append((f"figures/{p.name}", f"{group} per block: {la} vs {lb}"))
    p = figures.plot_norm_histograms(runs, out / "figures" / "compare_norm_histograms.png")
    figs.append((f"figures/{p.name}", "patch-norm distribution per block"))
    p = figures.plot_head_distances(runs, out / "figures" / "compare_head_distances.png")
    if p:
        figs.append((f"figures/{p.name}", "mean attention distance of every head"))
    common = sorted(set(ma["blocks"]) & set(mb["blocks"]), key=int)
    table: dict[str, dict[str, list]] = {}
    doc: Doc = [
        ("h", 1, f"sparsedino diagnostics: {la} vs {lb}"),
        ("p", f"A = {Path(run_a).resolve()}; B = {Path(run_b).resolve()}"),
    ]
    for b in common:
        rows = []
        for k in SCORES:
            va, vb = ma["blocks"][b].get(k), mb["blocks"][b].get(k)
            if va is None and vb is None:
                continue
            delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
            rows.append([SCORES[k][1], fmt(va), fmt(vb), fmt(delta)])
            table.setdefault(b, {})[k] = [va, vb, delta]
        doc += [("h", 2, f"Block {b}"), ("table", ["score", la, lb, "B - A"], rows)]
    doc.append(("h", 2, "Figures"))
    doc += [("img", f, c) for f, c in figs]
    for label, run_dir, m in ((la, Path(run_a), ma), (lb, Path(run_b), mb)):
        for rel in m.get("figures", []):
            if Path(rel).name.startswith("maps_") and (run_dir / rel).is_file():
                dest = f"figures/{label.replace(' ', '_').replace('(', '').replace(')', '')}_{Path(rel).name}"
                atomic_write_bytes(out / dest, (run_dir / rel).read_bytes())
                doc.append(("img", dest, f"{label}: {Path(rel).stem}"))
    doc += [("h", 2, "Definitions"), definitions_table()]
    comparison = {
        "version": METRICS_VERSION,
        "a": {"label": la, "dir": str(run_a)},
        "b": {"label": lb, "dir": str(run_b)},
        "blocks": table,
    }
    atomic_write_json(out / "compare.json", comparison)
    write_documents(doc, out, f"{la} vs {lb}")
    return comparison
