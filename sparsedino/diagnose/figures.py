"""Matplotlib figures of the diagnostics (Agg canvas, no pyplot state, PNG written atomically)."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sparsedino.atomic import atomic_write_bytes
from sparsedino.data.joint_transforms import IMAGENET_MEAN, IMAGENET_STD
from sparsedino.diagnose.scores import GROUPS, SCORES


def figure_name(prefix: str, group: str) -> str:
    """``<prefix>_<group>.png`` with the group's name reduced to letters, digits and ``_`` (a group such as
    ``dense structure (DSE)`` must not put parentheses into a Markdown image link)."""
    return f"{prefix}_{re.sub(r'[^0-9A-Za-z]+', '_', group).strip('_')}.png"


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` (a ``Figure`` or a pyplot figure) to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _adjust(fig: Figure, rows: int) -> None:
    """Fixed margins (much cheaper than tight_layout, which re-measures every label)."""
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.45 / height * rows ** 0.3, top=1 - 0.55 / height,
                        wspace=0.3, hspace=0.6)  # fmt: skip


def _grid(n: int, ncols: int = 3) -> tuple[int, int]:
    return max(1, math.ceil(n / ncols)), min(n, ncols) or 1


def _panels(n: int, width: float, height: float, ncols: int = 3) -> tuple[Figure, list, int]:
    """A figure with ``n`` axes laid out ``ncols`` wide, each panel ``width`` x ``height`` inches.

    Returns:
        ``(figure, axes in reading order, number of rows)``.
    """
    rows, cols = _grid(n, ncols)
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)], rows


def plot_group_curves(
    runs: dict[str, dict], group: str, path: str | Path, x_label: str = "block"
) -> Path | None:
    """One subplot per score of ``group``: score against block, one line per run.

    Args:
        runs: run label -> metrics (``{"blocks": {block: {score: value}}}``).
        group: a group of :data:`SCORES` ("norms", "attention", ...).
        path: PNG to write.

    Returns:
        The path, or None if no run has any score of the group.
    """
    keys = [
        k
        for k, (g, _, _) in SCORES.items()
        if g == group
        and any(isinstance(m["blocks"][b].get(k), (int, float)) for m in runs.values() for b in m["blocks"])
    ]
    if not keys:
        return None
    fig, axes, rows = _panels(len(keys), 4.2, 3.0)
    for ax, key in zip(axes, keys):
        for label, m in runs.items():
            pts = [(int(b), v[key]) for b, v in m["blocks"].items() if isinstance(v.get(key), (int, float))]
            if pts:
                pts.sort()
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_title(SCORES[key][1], fontsize=10)
        ax.set_xlabel(x_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(group)
    _adjust(fig, rows)
    return save_figure(fig, path)


def plot_norm_histograms(runs: dict[str, dict], path: str | Path) -> Path:
    """Histogram of log10(patch norm / image median) per block (outliers sit far right), one line per run."""
    blocks = sorted({int(b) for m in runs.values() for b in m["blocks"]})
    fig, axes, rows = _panels(len(blocks), 3.4, 2.6, 4)
    for ax, b in zip(axes, blocks):
        for label, m in runs.items():
            hist = m.get("histograms", {})
            if str(b) not in hist:
                continue
            edges = np.asarray(hist["edges_log10_ratio"])
            counts = np.asarray(hist[str(b)], dtype=float)
            share = counts / max(counts.sum(), 1.0)
            ax.stairs(share, 10**edges, label=label)
            threshold = m.get("config", {}).get("outlier_ratio")
            if threshold:
                ax.axvline(threshold, color="red", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"block {b}", fontsize=9)
        ax.set_xlabel("norm / image median", fontsize=8)
    fig.suptitle("patch-token norm distribution (red: outlier threshold)")
    _adjust(fig, rows)
    return save_figure(fig, path)


def plot_head_distances(runs: dict[str, dict], path: str | Path) -> Path | None:
    """Mean attention distance of every head against the block (the ViT paper's Figure 7), one colour per run."""
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for i, (label, m) in enumerate(runs.items()):
        pts = [(int(b), d) for b, v in m["blocks"].items() for d in v.get("attn.distance_px_per_head") or []]
        if pts:
            x, y = zip(*pts)
            ax.scatter(np.asarray(x) + 0.12 * (i - (len(runs) - 1) / 2), y, s=12, alpha=0.7, label=label)
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("block")
    ax.set_ylabel("mean attention distance (px)")
    ax.set_title("attention distance per head", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.9)
    return save_figure(fig, path)


def display_image(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(3, H, W) tensor normalised with ``mean`` / ``std`` (the model's) -> (H, W, 3) in [0, 1] for display."""
    mean = torch.tensor(mean)[:, None, None]
    std = torch.tensor(std)[:, None, None]
    return (image.float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_maps(examples: dict, kind: str, path: str | Path, title: str) -> Path | None:
    """Rows = example images, columns = image, ground truth, then the ``kind`` map of each block.

    Args:
        examples: ``run_diagnostics(...)["examples"]``.
        kind: ``"cls_attn"``, ``"pca"`` (RGB) or ``"norm"``.
    """
    images = examples.get("images")
    blocks = [b for b, d in examples["maps"].items() if kind in d]
    if images is None or not blocks:
        return None
    n = images.shape[0]
    stats = examples.get("mean", IMAGENET_MEAN), examples.get("std", IMAGENET_STD)
    cols = 2 + len(blocks)
    fig = Figure(figsize=(1.6 * cols, 1.6 * n + 0.4))
    for r in range(n):
        panels = [
            ("image", display_image(images[r], *stats), None),
            ("foreground", examples["fg"][r].numpy(), "gray"),
        ]
        for b in blocks:
            m = examples["maps"][b][kind][r]
            panels.append((f"block {b}", m.numpy(), None if kind == "pca" else "inferno"))
        for c, (name, arr, cmap) in enumerate(panels):
            ax = fig.add_subplot(n, cols, r * cols + c + 1)
            ax.imshow(arr, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / fig.get_figheight(), wspace=0.05,
                        hspace=0.15)  # fmt: skip
    return save_figure(fig, path)


def plot_over_epochs(
    series: dict[str, dict[str, list[tuple[int, float]]]], group: str, path: str | Path
) -> Path | None:
    """Every score of ``group`` against the training epoch, one subplot per score, one line per block.

    Args:
        series: score key -> block -> [(epoch, value), ...] (``over_training.collect_series``).
        group: a group of :data:`SCORES`.

    Returns:
        The path, or None if no score of the group was measured.
    """
    keys = [k for k, (g, _, _) in SCORES.items() if g == group and k in series]
    if not keys:
        return None
    fig, axes, rows = _panels(len(keys), 4.2, 3.0)
    for ax, key in zip(axes, keys):
        blocks = sorted(series[key], key=int)
        for j, b in enumerate(blocks):
            pts = sorted(series[key][b])
            ax.plot(*zip(*pts), marker="o", color=colormaps["viridis"](j / max(len(blocks) - 1, 1)),
                    label=f"block {b}")  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_title(SCORES[key][1], fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if ax is axes[0]:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{group} over training")
    _adjust(fig, rows)
    return save_figure(fig, path)


__all__ = [
    "GROUPS",
    "plot_group_curves",
    "plot_head_distances",
    "plot_maps",
    "plot_norm_histograms",
    "plot_over_epochs",
    "save_figure",
]
