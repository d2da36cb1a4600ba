"""The DAVIS-2017 reader on a fixture tree, and its errors naming the bad sequence or frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsedino.data.davis import DavisDataset, DavisError


def _write_sequence(
    root: Path, writers, name: str, frames: int, size=(12, 20), objects=2, annotate=None
) -> None:
    rng = np.random.default_rng(len(name))
    for t in range(frames):
        writers.save_rgb(
            root / "JPEGImages/480p" / name / f"{t:05d}.jpg", rng.integers(0, 256, (*size, 3)), "JPEG"
        )
        if annotate is None or t in annotate:
            mask = np.zeros(size, np.uint8)
            for k in range(1, objects + 1):
                mask[k : k + 3, 4 * k + t : 4 * k + t + 3] = k
            mask[0, 0] = 255  # void
            writers.save_mask(root / "Annotations/480p" / name / f"{t:05d}.png", mask, palette=True)


@pytest.fixture
def davis_root(tmp_path, writers) -> Path:
    root = tmp_path / "DAVIS"
    _write_sequence(root, writers, "bear", 4, objects=1)
    _write_sequence(root, writers, "dogs-jump", 3, objects=3)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("bear\ndogs-jump\n")
    return root


def test_sequences_frames_and_masks(davis_root):
    dataset = DavisDataset(davis_root)
    assert [s.name for s in dataset] == ["bear", "dogs-jump"]
    bear, dogs = dataset[0], dataset[1]
    assert len(bear) == 4 and bear.num_objects == 1 and dogs.num_objects == 3
    assert [p.name for p in bear.frames] == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]
    assert bear.frame_id(2) == "00002"
    frame = dataset.load_frame(dogs, 1)
    assert frame.shape == (12, 20, 3) and frame.dtype == np.uint8
    mask = dataset.load_mask(dogs, 1, size=frame.shape[:2])
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}  # void (255) reads as background
    assert mask[1, 5] == 1
    assert len(DavisDataset(davis_root, sequences=["dogs-jump"])) == 1
    assert len(DavisDataset(davis_root, max_sequences=1)) == 1


def test_missing_parts_are_named(davis_root, tmp_path):
    with pytest.raises(DavisError, match="JPEGImages/480p"):
        DavisDataset(tmp_path / "nowhere")
    with pytest.raises(DavisError, match=r"test-dev\.txt"):
        DavisDataset(davis_root, split="test-dev")
    with pytest.raises(DavisError, match="'cat'"):
        DavisDataset(davis_root, sequences=["cat"])
    (davis_root / "ImageSets/2017/val.txt").write_text("bear\nmissing-seq\n")
    with pytest.raises(DavisError, match="sequence 'missing-seq' has no frames"):
        DavisDataset(davis_root)


def test_missing_first_annotation_is_named(davis_root, writers):
    _write_sequence(davis_root, writers, "late", 3, annotate={1, 2})
    (davis_root / "ImageSets/2017/val.txt").write_text("late\n")
    with pytest.raises(
        DavisError, match=r"sequence 'late' has no annotation of its first frame .*00000\.png"
    ):
        DavisDataset(davis_root)


def test_bad_frames_and_masks_are_named(davis_root, writers):
    dataset = DavisDataset(davis_root)
    bear = dataset[0]
    bad_frame = bear.frames[2]
    bad_frame.write_bytes(b"not a jpeg")
    with pytest.raises(DavisError, match=rf"sequence 'bear'.*{bad_frame.name}"):
        dataset.load_frame(bear, 2)
    writers.save_rgb(bear.annotations[1], np.zeros((12, 20, 3)))  # a colour rendering, not ids
    with pytest.raises(DavisError, match=r"bear/00001\.png has mode 'RGB'"):
        dataset.load_mask(bear, 1)
    writers.save_mask(bear.annotations[3], np.zeros((10, 20)), palette=True)
    with pytest.raises(DavisError, match=r"bear/00003\.png is 20x10 but its frame is 20x12"):
        dataset.load_mask(bear, 3, size=(12, 20))
    writers.save_mask(bear.annotations[3], np.full((12, 20), 2), palette=True)
    with pytest.raises(DavisError, match=r"00003\.png holds object ids \[2\]"):
        dataset.load_mask(bear, 3)
