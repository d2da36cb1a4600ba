"""The embedded videos: deterministic per seed, DAVIS layout, masks consistent with the frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import sparsedino.data.synthetic_video as synthetic_video
from sparsedino.data.command import main as data_main
from sparsedino.data.davis import DavisDataset
from sparsedino.data.palettes import class_colours
from sparsedino.data.synthetic_video import clip_rng, make_clip, write_synthetic_videos


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        write_synthetic_videos(tmp_path / name, clips=2, frames=4, size=32, seed=seed, num_classes=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    mask = "Annotations/480p/synth_clip_000/00000.png"
    assert not np.array_equal(
        np.asarray(Image.open(tmp_path / "a" / mask)), np.asarray(Image.open(tmp_path / "c" / mask))
    )


def test_davis_layout_read_back(tmp_path):
    meta = write_synthetic_videos(tmp_path / "v", clips=3, frames=5, size=32, seed=1, num_classes=4)
    dataset = DavisDataset(tmp_path / "v")
    assert [s.name for s in dataset] == list(meta["sequences"]) == [f"synth_clip_{i:03d}" for i in range(3)]
    for seq in dataset:
        assert len(seq) == 5 and all(a is not None for a in seq.annotations)
        assert seq.num_objects == meta["sequences"][seq.name]["objects"] >= 2
        assert Image.open(seq.annotations[0]).mode == "P"
        frame = dataset.load_frame(seq, 4)
        clip = make_clip(clip_rng(1, int(seq.name[-3:])), frames=5, size=32, num_classes=4)
        np.testing.assert_array_equal(dataset.load_mask(seq, 4, size=frame.shape[:2]), clip.masks[4])
        blocks = [f.reshape(8, 4, 8, 4, 3).mean((1, 3)) for f in (frame, clip.frames[4])]
        assert np.abs(blocks[0] - blocks[1]).mean() < 6  # the same frame, up to JPEG loss
    assert json.loads((tmp_path / "v/meta.json").read_text())["frames"] == 5


def test_objects_move_touch_and_carry_their_colours():
    touching = False
    palette = class_colours(6)
    for index in range(8):
        clip = make_clip(clip_rng(0, index), frames=10, size=48, num_classes=6, colours="class")
        ids = list(range(1, len(clip.classes) + 1))
        assert set(np.unique(clip.masks[0]).tolist()) == {0, *ids}  # every object is given in frame 0
        assert set(np.unique(clip.masks).tolist()) <= {0, *ids}
        for k in ids:
            first, last = np.argwhere(clip.masks[0] == k).mean(0), np.argwhere(clip.masks[-1] == k)
            if len(last):
                assert np.abs(first - last.mean(0)).max() > 0.5  # every visible object has moved
            pixels = clip.frames[clip.masks == k].astype(np.float32)
            dist = np.linalg.norm(pixels[:, None] - palette[clip.classes[k - 1]][None], axis=-1).min(1)
            assert np.median(dist) < 40  # object pixels show the object's class colours
        background = clip.frames[clip.masks == 0].astype(np.float32)
        assert np.median(background.std(axis=1)) < 12  # grey clutter in class-colour mode
        m = clip.masks
        for a, b in ((m[:, 1:], m[:, :-1]), (m[:, :, 1:], m[:, :, :-1])):
            touching |= bool(((a != b) & (a > 0) & (b > 0)).any())  # two objects meet (occlusion)
    assert touching


def test_interrupted_write_leaves_nothing_and_cli(tmp_path, monkeypatch, capsys):
    real, calls = synthetic_video.make_clip, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_video, "make_clip", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_videos(tmp_path / "out", clips=3, frames=3, size=32)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    argv = ["synth-video", "--out", str(tmp_path / "cli"), "--clips", "2", "--frames", "3", "--size", "32"]
    assert data_main(argv) == 0
    assert (tmp_path / "cli/ImageSets/2017/val.txt").read_text().split() == [
        "synth_clip_000",
        "synth_clip_001",
    ]
    assert data_main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert data_main([*argv[:2], str(tmp_path / "bad"), "--frames", "2"]) == 2
    assert "--frames must be an integer in [3, " in capsys.readouterr().err
