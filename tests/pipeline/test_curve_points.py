"""Which epoch checkpoints the curves over training evaluate (``curve.every_epochs``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sparsedino.pipeline.runner import _epoch_checkpoints
from sparsedino.train.checkpointing import epoch_snapshot_name


@pytest.mark.parametrize(
    ("saved", "every", "expected"),
    [
        (range(0, 31, 5), 5, [0, 5, 10, 15, 20, 25, 30]),  # cpu-long: every checkpoint
        (range(0, 19, 3), 3, [0, 3, 6, 9, 12, 15, 18]),  # cpu-demo: every checkpoint
        (range(0, 31, 5), 10, [0, 10, 20, 30]),  # multiples of 10 among checkpoints every 5
        (range(0, 19, 3), 4, [0, 12, 18]),  # epochs 12 (multiple of 4) and the last
        (range(0, 3), 1, [0, 1, 2]),
    ],
)
def test_curve_points_are_epoch_multiples_plus_initialisation_and_last(tmp_path, saved, every, expected):
    for epoch in saved:
        (tmp_path / epoch_snapshot_name(epoch)).write_bytes(b"")
    (tmp_path / "checkpoint.pth").write_bytes(b"")  # the latest checkpoint is not an epoch point
    plan = SimpleNamespace(
        train={
            "softmax-s0": SimpleNamespace(
                run=SimpleNamespace(output_dir=str(tmp_path)), init=SimpleNamespace(checkpoint="")
            )
        },
        cfg=SimpleNamespace(curve=SimpleNamespace(every_epochs=every)),
    )
    points = _epoch_checkpoints(plan, "softmax-s0")
    assert [epoch for epoch, _ in points] == expected
    assert all(path.name == epoch_snapshot_name(epoch) for epoch, path in points)
