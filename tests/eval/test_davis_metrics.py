"""J and F as the DAVIS benchmark defines them: hand-computed cases and values of the official code."""

from __future__ import annotations

import numpy as np
import pytest

from sparsedino.eval.davis_metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_tolerance_px,
    dilate,
    disk,
    evaluate_sequence,
    region_similarity,
    statistics,
    summarize,
)


def square(rows: slice, cols: slice, shape=(10, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def perimeter(rows: range, cols: range, shape=(10, 10)) -> np.ndarray:
    """The one-pixel outline of the rectangle rows x cols."""
    mask = np.zeros(shape, bool)
    mask[rows.start, cols.start : cols.stop] = mask[rows.stop - 1, cols.start : cols.stop] = True
    mask[rows.start : rows.stop, cols.start] = mask[rows.start : rows.stop, cols.stop - 1] = True
    return mask


def test_region_similarity_hand_computed():
    gt = square(slice(2, 6), slice(2, 6))  # 16 px
    pred = square(slice(2, 6), slice(3, 7))  # shifted one column: 12 shared, 20 in the union
    assert region_similarity(gt, pred) == pytest.approx(12 / 20)
    void = np.zeros_like(gt)
    void[:, [2, 6]] = True  # the two columns where they differ
    assert region_similarity(gt, pred, void) == 1.0
    empty = np.zeros_like(gt)
    assert region_similarity(empty, empty) == 1.0  # an absent object predicted absent
    assert region_similarity(gt, empty) == 0.0


def test_boundary_map_is_the_outline_shifted_half_a_pixel_to_the_origin():
    # seg2bmap marks pixels differing from their east, south or south-east neighbour: for a 4x4 square
    # at rows/cols 2-5 that is the outline of the 5x5 square at rows/cols 1-5 (16 px)
    bmap = boundary_map(square(slice(2, 6), slice(2, 6)))
    np.testing.assert_array_equal(bmap, perimeter(range(1, 6), range(1, 6)))
    full = boundary_map(np.ones((4, 5), bool))  # only the last row/column rules apply at the border
    assert not full.any()


def test_disk_and_dilation():
    assert disk(0).sum() == 1 and disk(1).sum() == 5 and disk(2).sum() == 13 and disk(8).sum() == 197
    point = np.zeros((9, 9), bool)
    point[4, 4] = True
    np.testing.assert_array_equal(dilate(point, 3)[1:8, 1:8], disk(3))
    assert dilate(point, 3).sum() == disk(3).sum()
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True  # pixels outside the image contribute nothing
    np.testing.assert_array_equal(dilate(corner, 2), np.pad(disk(2)[2:, 2:], ((0, 2), (0, 2))))


def test_boundary_f_measure_hand_computed():
    gt = square(slice(2, 6), slice(2, 6))  # boundary: outline of rows 1-5 x cols 1-5
    pred = square(slice(4, 8), slice(2, 6))  # two rows lower: outline of rows 3-7 x cols 1-5
    # exact matching: the 6 pixels of columns 1 and 5 in rows 3-5 are on both outlines: P = R = 6/16
    assert boundary_f_measure(gt, pred, bound_th=0) == pytest.approx(6 / 16)
    # a 1-px disk (4-neighbourhood) also matches the corners' neighbours: 10 of 16 each way
    assert boundary_f_measure(gt, pred, bound_th=1) == pytest.approx(10 / 16)
    assert boundary_f_measure(gt, gt) == 1.0
    empty = np.zeros_like(gt)
    assert boundary_f_measure(gt, empty) == 0.0  # P = 1, R = 0
    assert boundary_f_measure(empty, pred) == 0.0  # P = 0, R = 1
    assert boundary_f_measure(empty, empty) == 1.0


def test_tolerance_is_0008_of_the_diagonal():
    assert boundary_tolerance_px((480, 854)) == 8  # ceil(0.008 * 979.7)
    assert boundary_tolerance_px((64, 64)) == 1
    assert boundary_tolerance_px((96, 128)) == 2  # ceil(1.28)
    assert boundary_tolerance_px((64, 64), bound_th=3) == 3  # >= 1 means pixels


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_values_of_the_official_implementation():
    # reference values printed by davis2017-evaluation's metrics.py (db_eval_iou, f_measure with
    # OpenCV dilation by scikit-image's disk) on the same masks; 300 random cases agreed exactly too
    gt, pred = _disc((96, 128), 40, 50, 20), _disc((96, 128), 44, 47, 18)
    assert region_similarity(gt, pred) == pytest.approx(0.6923076923076923, abs=1e-12)
    assert boundary_f_measure(gt, pred) == pytest.approx(0.39102564102564097, abs=1e-12)
    gt = _disc((480, 854), 200, 400, 120)
    pred = _disc((480, 854), 215, 390, 110) | _disc((480, 854), 400, 700, 30)
    assert region_similarity(gt, pred) == pytest.approx(0.7477347527528341, abs=1e-12)
    assert boundary_f_measure(gt, pred) == pytest.approx(0.4090447131721862, abs=1e-12)


def test_statistics_mean_recall_decay():
    stats = statistics([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    assert stats["mean"] == pytest.approx(0.55)
    assert stats["recall"] == pytest.approx(0.5)  # 4 of 8 frames above 0.5
    # bins at round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]: first [0.9, 0.8, 0.7], last [0.4, 0.3, 0.2]
    assert stats["decay"] == pytest.approx(0.8 - 0.3)


def test_sequence_scores_skip_the_given_first_and_the_last_frame():
    gt = np.zeros((4, 10, 10), np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 7:9, 7:9] = 2
    gt[2, 0, 0] = 255  # void counts as background, as in the benchmark
    pred = gt.copy()
    pred[2, 0, 0] = 0
    pred[0] = 0  # frame 0 is given, frame 3 is not scored: errors there do not count
    pred[3] = 1
    scores = evaluate_sequence(gt, pred)
    assert set(scores) == {1, 2}
    assert scores[1]["J"] == [1.0, 1.0] and scores[2]["F"] == [1.0, 1.0]
    pred[1, 7:9, 7:9] = 0  # object 2 lost in frame 1: J 0, F 0 (P = 1, R = 0)
    table = summarize({"clip": evaluate_sequence(gt, pred)})
    assert table["objects"] == 2
    assert table["J-Mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert table["J&F-Mean"] == pytest.approx((table["J-Mean"] + table["F-Mean"]) / 2)
    with pytest.raises(ValueError, match="at least 3 frames"):
        evaluate_sequence(gt[:2], pred[:2])
