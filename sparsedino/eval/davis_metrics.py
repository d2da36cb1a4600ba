"""The DAVIS benchmark's region (J) and boundary (F) measures, and its per-object statistics.

Definitions follow the official evaluation code, davisvideochallenge/davis2017-evaluation
(``davis2017/metrics.py``, ``davis2017/utils.py``, ``davis2017/evaluation.py``), re-implemented here in
numpy (the official code needs OpenCV and scikit-image):

- **J** (region similarity): the Jaccard index |pred & gt| / |pred | gt| of one object's binary masks,
  1 when both are empty; void pixels, if any, count for neither.
- **F** (contour accuracy): the F-measure of boundary precision and recall. Boundaries are the
  one-pixel-wide maps of ``seg2bmap`` (a pixel is on the boundary when it differs from its east, south
  or south-east neighbour, i.e. the contour offset by half a pixel towards the origin). A predicted
  boundary pixel is matched when a ground-truth boundary pixel lies within a disk of radius
  ``ceil(0.008 x image diagonal)`` pixels (8 px at 854x480), and vice versa for recall. An empty
  prediction of a present object has precision 1, recall 0; both empty gives F = 1.
- Per object and sequence, **M** (mean over frames), **R** (recall: share of frames above 0.5) and
  **D** (decay: mean of the first quarter of the frames minus mean of the last quarter).
- Semi-supervised protocol: the first frame (given) and the last frame are not scored; object ids are
  1..N with N the largest id in the first frame's annotation; the benchmark's ``J&F-Mean`` is the mean of
  J-Mean and F-Mean, each the mean over every object of every sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal (the benchmark's ``bound_th``)


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: intersection over union of two binary masks (1.0 when both are empty).

    Args:
        gt: (H, W) ground-truth mask, any dtype (nonzero = object).
        pred: (H, W) predicted mask.
        void: optional (H, W) mask of pixels to ignore.

    Returns:
        The Jaccard index in [0, 1].
    """
    gt, pred = _binary(gt, pred, void)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    union = np.count_nonzero((gt | pred) & keep)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred & keep) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide boundary of a binary mask, as ``seg2bmap`` defines it (same size).

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour (outside the
    image counts as background); on the last row only the east neighbour and on the last column only the
    south neighbour are compared, and the bottom-right pixel is never a boundary pixel.

    Args:
        mask: (H, W) binary mask.

    Returns:
        (H, W) bool boundary map.
    """
    seg = np.asarray(mask).astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_tolerance_px(shape: Sequence[int], bound_th: float = BOUNDARY_TOLERANCE) -> int:
    """Radius of the matching disk: ``bound_th`` pixels when >= 1, else ``ceil(bound_th * diagonal)``."""
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(*shape[:2]))


def disk(radius: int) -> np.ndarray:
    """The (2r+1, 2r+1) disk footprint ``x^2 + y^2 <= r^2`` (scikit-image's ``disk`` with strict radius)."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[None, :] ** 2 + offsets[:, None] ** 2 <= radius**2


def dilate(bmap: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by :func:`disk` (``radius``); pixels outside the image contribute nothing.

    The disk is decomposed into rows: each row of the footprint is a horizontal run of half-width
    ``w(dy)``, applied with a running sum, then shifted by ``dy``. O(radius) passes over the image.
    """
    bmap = np.asarray(bmap, dtype=bool)
    if radius <= 0:
        return bmap.copy()
    height, width = bmap.shape
    padded = np.pad(bmap.astype(np.int32), ((0, 0), (1, 0))).cumsum(1)  # (H, W + 1): prefix sums per row
    runs: dict[int, np.ndarray] = {}
    out = np.zeros_like(bmap)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)  # the footprint row's half-width
        if half not in runs:
            cols = np.arange(width)
            hi = np.minimum(cols + half + 1, width)
            lo = np.maximum(cols - half, 0)
            runs[half] = (padded[:, hi] - padded[:, lo]) > 0  # any set pixel within [x - half, x + half]
        run = runs[half]
        # out[y] |= run[y + dy]
        if dy >= 0:
            out[: height - dy] |= run[dy:]
        else:
            out[-dy:] |= run[: height + dy]
    return out


def boundary_f_measure(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUNDARY_TOLERANCE
) -> float:
    """F: the boundary F-measure of one object's binary masks (the benchmark's ``f_measure``).

    Args:
        gt: (H, W) ground-truth mask.
        pred: (H, W) predicted mask.
        void: optional (H, W) mask of pixels removed from both masks before their boundaries are taken.
        bound_th: matching tolerance, a fraction of the image diagonal (< 1) or pixels (>= 1).

    Returns:
        2PR / (P + R) in [0, 1].
    """
    gt, pred = _binary(gt, pred, void)
    if void is not None:
        keep = ~void.astype(bool)
        gt, pred = gt & keep, pred & keep
    radius = boundary_tolerance_px(gt.shape, bound_th)
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:  # (P, R) = (1, 0) or (0, 1)
        return 0.0
    precision = np.count_nonzero(pred_b & dilate(gt_b, radius)) / n_pred
    recall = np.count_nonzero(gt_b & dilate(pred_b, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(per_frame: Sequence[float]) -> dict[str, float]:
    """The benchmark's per-object statistics of one measure over frames: mean, recall, decay.

    Decay splits the frames into 4 bins at ``round(linspace(1, n, 5)) - 1`` (neighbouring bins share
    their edge frame) and subtracts the last bin's mean from the first's.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.size == 0:
        return {"mean": math.nan, "recall": math.nan, "decay": math.nan}
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    bins = [values[edges[i] : edges[i + 1] + 1] for i in range(4)]
    return {
        "mean": float(np.nanmean(values)),
        "recall": float(np.nanmean(values > 0.5)),
        "decay": float(np.nanmean(bins[0]) - np.nanmean(bins[3])),
    }


def evaluate_sequence(gt: np.ndarray, pred: np.ndarray, num_objects: int | None = None) -> dict[int, dict]:
    """J and F of every object of one sequence under the semi-supervised protocol.

    Args:
        gt: (T, H, W) ground-truth object ids (0 background; 255 counts as background, as in the benchmark).
        pred: (T, H, W) predicted object ids.
        num_objects: objects 1..N to score; default the largest id in ``gt[0]``.

    Returns:
        ``{object_id: {"J": per-frame list, "F": per-frame list, "J_stats": ..., "F_stats": ...}}`` over
        frames 1..T-2 (the given first frame and the last frame are not scored).

    Raises:
        ValueError: if shapes differ or the sequence has fewer than 3 frames.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(
            f"ground truth {gt.shape} and prediction {pred.shape} must be equal (T, H, W) stacks"
        )
    if gt.shape[0] < 3:
        raise ValueError(
            f"a sequence needs at least 3 frames to be scored (first and last are not), got {gt.shape[0]}"
        )
    gt = np.where(gt == 255, 0, gt)
    if num_objects is None:
        num_objects = int(gt[0].max())
    scores: dict[int, dict] = {}
    for obj in range(1, num_objects + 1):
        j = [region_similarity(gt[t] == obj, pred[t] == obj) for t in range(1, gt.shape[0] - 1)]
        f = [boundary_f_measure(gt[t] == obj, pred[t] == obj) for t in range(1, gt.shape[0] - 1)]
        scores[obj] = {"J": j, "F": f, "J_stats": statistics(j), "F_stats": statistics(f)}
    return scores


def summarize(per_sequence: dict[str, dict[int, dict]]) -> dict[str, float]:
    """The benchmark's global table: means over every object of every sequence.

    Returns:
        ``J&F-Mean``, ``J-Mean``, ``J-Recall``, ``J-Decay``, ``F-Mean``, ``F-Recall``, ``F-Decay`` and
        ``objects`` (how many objects were averaged).
    """
    objects = [obj for seq in per_sequence.values() for obj in seq.values()]
    if not objects:
        raise ValueError("no objects to summarise")
    table = {}
    for measure in ("J", "F"):
        for stat, name in (("mean", "Mean"), ("recall", "Recall"), ("decay", "Decay")):
            table[f"{measure}-{name}"] = float(np.mean([o[f"{measure}_stats"][stat] for o in objects]))
    return {"J&F-Mean": (table["J-Mean"] + table["F-Mean"]) / 2, **table, "objects": len(objects)}


def _binary(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if void is not None and np.shape(void) != gt.shape:
        raise ValueError(f"void mask {np.shape(void)} does not match the masks {gt.shape}")
    return gt, pred
