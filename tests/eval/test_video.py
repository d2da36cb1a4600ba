"""DINO's video label propagation: oracle and constant features, the affinity rule, the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sparsedino.config import load_config
from sparsedino.data.palettes import voc_palette
from sparsedino.data.synthetic_video import write_synthetic_videos
from sparsedino.eval.command import main
from sparsedino.eval.settings import VideoConfig
from sparsedino.eval.video import (
    ConstantFeatures,
    OracleFeatures,
    build_davis,
    frame_size,
    labels_to_ids,
    propagate_labels,
    propagate_step,
    run_video,
    segment_sequence,
)


def _blocky_tree(root, frames=6, grid=(4, 6), patch=8):
    """A DAVIS tree whose objects are patch-aligned rectangles moving one patch per frame."""
    rng = np.random.default_rng(0)
    height, width = grid[0] * patch, grid[1] * patch
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("blocks\n")
    for t in range(frames):
        ids = np.zeros(grid, np.uint8)
        ids[1:3, t % 4 : t % 4 + 2] = 1  # moves right by a patch per frame
        ids[3, (5 - t) % 6] = 2  # moves left
        mask = ids.repeat(patch, 0).repeat(patch, 1)
        rgb = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        for path, image in ((f"JPEGImages/480p/blocks/{t:05d}.jpg", Image.fromarray(rgb)),
                            (f"Annotations/480p/blocks/{t:05d}.png", Image.fromarray(mask, "P"))):  # fmt: skip
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            if image.mode == "P":
                image.putpalette(voc_palette())
            image.save(root / path)
    return root


def _cfg(root, *extra):
    return load_config(VideoConfig, None, [f"data_root={root}", "short_side=32", "size_multiple=8", *extra])


def test_oracle_features_reproduce_the_ground_truth_at_the_patch_grid(tmp_path):
    root = _blocky_tree(tmp_path / "davis")
    cfg = _cfg(root)
    dataset = build_davis(cfg)
    gt = np.stack([dataset.load_mask(dataset[0], t) for t in range(6)])
    patch_ids = torch.from_numpy(gt[:, ::8, ::8].astype(np.int64))  # (T, 4, 6) labels per patch
    images = torch.zeros(6, 3, 32, 48)
    soft = propagate_labels(
        OracleFeatures(8)(images, gt), F.one_hot(patch_ids[0], 3).permute(2, 0, 1).float()
    )
    for t, labels in enumerate(soft, start=1):
        assert torch.equal(labels.argmax(0), patch_ids[t])  # every patch of every frame is right
    result = segment_sequence(dataset, dataset[0], OracleFeatures(8), cfg)
    for t in range(1, 6):  # at pixels, only DINO's bilinear upsampling (rounded block corners) differs
        exact = labels_to_ids(F.one_hot(patch_ids[t], 3).permute(2, 0, 1).float(), 8, (32, 48))
        np.testing.assert_array_equal(result.pred[t], exact)
    scores = run_video(dataset, OracleFeatures(8), cfg, progress=False)
    assert scores["objects"] == 2 and scores["sequences"] == 1 and scores["J-Mean"] > 0.85


def test_oracle_on_embedded_clips_is_limited_only_by_the_patch_grid(tmp_path):
    write_synthetic_videos(tmp_path / "v", clips=2, frames=5, size=32, seed=0, num_classes=4)
    cfg = _cfg(tmp_path / "v")
    pixels = run_video(build_davis(cfg), OracleFeatures(1), cfg, progress=False)
    patches = run_video(build_davis(cfg), OracleFeatures(4), cfg, progress=False)
    assert pixels["J-Mean"] > 0.95 and pixels["F-Mean"] > 0.95  # 1-px patches: the ground truth
    assert pixels["J&F-Mean"] > patches["J&F-Mean"]


def test_constant_features_give_the_first_frame_prior():
    first = torch.zeros(2, 4, 6)
    first[1, :2, :3] = 1.0  # object in the top-left 2x3 patches
    first[0] = 1 - first[1]
    feats = ConstantFeatures(8)(torch.randn(5, 3, 32, 48), None)  # every patch of every frame alike
    assert feats.shape == (5, 4, 6, 1)
    # no window: every patch of every frame receives the first frame's label frequencies
    for soft in propagate_labels(feats, first, size_mask_neighborhood=0):
        torch.testing.assert_close(soft, first.mean((1, 2), keepdim=True).expand_as(soft))
    # a 1-patch window: the first frame's labels averaged over each 3x3 window (inside the frame)
    box = F.avg_pool2d(first[None], 3, 1, 1, count_include_pad=False)[0]
    softs = propagate_labels(feats, first, size_mask_neighborhood=1)
    torch.testing.assert_close(softs[0], box)
    # frame 2 averages the first frame's and frame 1's labels over the window: a purely spatial prior
    box2 = F.avg_pool2d(box[None], 3, 1, 1, count_include_pad=False)[0]
    torch.testing.assert_close(softs[1], (box + box2) / 2)


def test_affinity_temperature_topk_and_ties():
    target = torch.tensor([[1.0, 0.0]])
    keys = F.normalize(torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]]), dim=-1)
    labels = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])  # (1, K=3, 4)
    # top-2 of cosines (1, 0.6, 0, 1): the two patches at cos 1 (labels 0 and 2), equal weights
    soft = propagate_step(target, keys, labels, temperature=0.1, topk=2)
    torch.testing.assert_close(soft[:, 0], torch.tensor([0.5, 0.0, 0.5]))
    # top-3: the third kept patch (cos 0.6) weighs exp(6) against exp(10) for each of the others
    soft = propagate_step(target, keys, labels, temperature=0.1, topk=3)
    weights = torch.tensor([math.exp(10), math.exp(6), math.exp(10)])
    torch.testing.assert_close(soft[:, 0], weights / weights.sum())
    # top-1 with a tie at the top keeps both tied patches (the reference thresholds at the k-th value)
    torch.testing.assert_close(
        propagate_step(target, keys, labels, topk=1)[:, 0], torch.tensor([0.5, 0.0, 0.5])
    )


def test_frame_size_and_upsampling():
    assert frame_size(480, 854, 480, 64) == (480, 832)  # DAVIS 480p as DINO feeds it
    assert frame_size(854, 480, 480, 64) == (832, 480)
    assert frame_size(64, 64, 64, 8) == (64, 64)
    with pytest.raises(ValueError, match="no pixels"):
        frame_size(480, 854, 16, 64)
    soft = F.one_hot(torch.tensor([[0, 1], [2, 1]]), 3).permute(2, 0, 1).float()  # (3, 2, 2)
    ids = labels_to_ids(soft, 4, (8, 8))
    np.testing.assert_array_equal(ids, np.array([[0, 1], [2, 1]]).repeat(4, 0).repeat(4, 1))
    assert labels_to_ids(soft, 4, (16, 16)).shape == (16, 16)  # nearest resize to the original size


def test_cli_end_to_end_and_bad_data(tmp_path, tiny_vit, capsys):
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_vit.state_dict(), checkpoint)
    root = tmp_path / "clips"
    write_synthetic_videos(root, clips=2, frames=4, size=32, seed=0, num_classes=4)
    out = tmp_path / "out"
    argv = ["video", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(out)]
    assert main([*argv, "short_side=32", "size_multiple=8", "device=cpu", "size_mask_neighborhood=2"]) == 0
    result = json.loads((out / "video.json").read_text())
    assert (
        result["protocol"] == "video"
        and result["sequences"] == 2
        and result["features"] == "BackboneFeatures"
    )
    assert 0.0 <= result["J&F-Mean"] <= 1.0 and set(result["per_sequence"]) == {
        "synth_clip_000",
        "synth_clip_001",
    }
    masks = sorted((out / "masks/synth_clip_001").glob("*.png"))
    assert [p.name for p in masks] == [f"{t:05d}.png" for t in range(4)]
    assert Image.open(masks[0]).mode == "P" and Image.open(masks[0]).size == (32, 32)
    markdown = (out / "video.md").read_text()
    assert "J&F-Mean" in markdown and "synth_clip_000" in markdown
    (root / "Annotations/480p/synth_clip_001/00002.png").unlink()
    assert main([*argv, "short_side=32", "size_multiple=8"]) == 2
    assert "synth_clip_001" in capsys.readouterr().err
    assert main([*argv, "topk=0"]) == 2
    assert "topk" in capsys.readouterr().err


def test_the_preset_holds_dinos_defaults():
    preset = load_config(VideoConfig, "eval_video_davis")
    assert preset == load_config(VideoConfig)  # the defaults are the reference script's
    assert (preset.short_side, preset.size_multiple, preset.temperature, preset.topk) == (480, 64, 0.1, 5)
    assert (preset.n_last_frames, preset.size_mask_neighborhood, preset.layer, preset.norm) == (
        7,
        12,
        -1,
        True,
    )
