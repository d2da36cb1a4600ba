"""Issue 24, ``eval video``: a failed run leaves a finished result untouched (and a fresh folder empty),
every setting is checked before work, small temperatures do not overflow, outputs are locked, and
unreadable split lists are named (also for ``eval seg`` and ``diagnose``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sparsedino.cli import main
from sparsedino.data.palettes import voc_palette
from sparsedino.data.synthetic import write_synthetic_dataset
from sparsedino.data.synthetic_video import write_synthetic_videos
from sparsedino.eval.video import propagate_step
from sparsedino.runlock import LOCK_NAME, RunLock

from ..cli_errors import error_line as _error_line
from .conftest import make_tiny_vit

PROG = "sparsedino eval video"
SMALL = ["short_side=32", "size_multiple=8", "device=cpu", "size_mask_neighborhood=2"]


def error_line(capsys, prog: str = PROG) -> str:
    return _error_line(capsys, prog)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("video_ckpt") / "tiny.pth"
    torch.save(make_tiny_vit().state_dict(), path)
    return path


@pytest.fixture
def clips(tmp_path):
    root = tmp_path / "clips"
    write_synthetic_videos(root, clips=2, frames=4, size=32, seed=0, num_classes=4)
    return root


def _argv(checkpoint, data, out, *extra):
    return [
        "eval",
        "video",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]


def _snapshot(folder):
    """Every file under ``folder`` (hidden ones included: a staging folder left behind would show) but the
    lock, whose content names the last process."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME)
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _truncate_a_frame_of_the_second_clip(clips):
    frame = clips / "JPEGImages/480p/synth_clip_001/00002.jpg"
    frame.write_bytes(frame.read_bytes()[:300])  # the header (size) still reads; decoding fails


def test_a_failed_run_leaves_a_finished_result_untouched(checkpoint, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(checkpoint, clips, out)) == 0
    finished = _snapshot(out)
    assert "video.json" in finished and "masks/synth_clip_000/00001.png" in finished
    _truncate_a_frame_of_the_second_clip(clips)
    assert main(_argv(checkpoint, clips, out, "topk=3")) == 2  # fails on the second clip
    assert "synth_clip_001" in error_line(capsys)
    assert _snapshot(out) == finished  # the first clip's masks were not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "out"]  # no staging folder left


def test_a_failed_run_into_a_fresh_folder_leaves_no_masks_without_result(checkpoint, clips, tmp_path, capsys):
    _truncate_a_frame_of_the_second_clip(clips)
    assert main(_argv(checkpoint, clips, tmp_path / "fresh")) == 2
    error_line(capsys)
    assert not (tmp_path / "fresh").exists()


def test_a_bad_annotation_of_a_later_clip_fails_before_any_clip_is_segmented(
    checkpoint, clips, tmp_path, capsys
):
    path = clips / "Annotations/480p/synth_clip_001/00003.png"
    ids = np.array(Image.open(path))
    ids[0, 0] = 9  # an object the first frame does not have
    image = Image.fromarray(ids, "P")
    image.putpalette(voc_palette())
    image.save(path)
    assert main(_argv(checkpoint, clips, tmp_path / "out")) == 2
    assert "holds object ids [9]" in error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("layer=99", "'layer': block 99 out of range for a model with 3 blocks"),
        ("device=banana", "'device'"),
        pytest.param(
            "device=cuda", "'device'", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA")
        ),
        ("short_side=4", "'short_side'"),
        ("size_multiple=64", "'size_multiple'"),
        ("short_side=6 size_multiple=1", "smaller than one 8-px patch"),
    ],
)
def test_settings_that_cannot_run_are_one_line_errors(checkpoint, clips, tmp_path, capsys, setting, named):
    assert main(_argv(checkpoint, clips, tmp_path / "out", *setting.split())) == 2
    assert named in error_line(capsys)
    assert not (tmp_path / "out").exists()


def _reference(target, context, labels, temperature, topk):
    """Softmax over each target's kept context patches in float64: DINO's weights, computed stably."""
    cos = (context.reshape(-1, context.shape[-1]) @ target.T).double()  # (n*hw, q)
    kth = torch.topk(cos, topk, dim=0).values[-1]
    logits = (cos / temperature).masked_fill(cos < kth, float("-inf"))
    weights = torch.softmax(logits, dim=0)
    return labels.permute(1, 0, 2).reshape(labels.shape[1], -1).double() @ weights


@pytest.mark.parametrize("temperature", [0.001, 0.005, 0.1, 1.0, 1e6])
def test_affinities_are_the_softmax_weights_at_any_temperature(temperature):
    torch.manual_seed(0)
    target = F.normalize(torch.randn(30, 16), dim=-1)
    context = F.normalize(torch.randn(3, 30, 16), dim=-1)
    labels = torch.softmax(torch.randn(3, 4, 30), dim=1)
    soft = propagate_step(target, context, labels, temperature=temperature, topk=5)
    assert torch.isfinite(soft).all()
    torch.testing.assert_close(
        soft.double(), _reference(target, context, labels, temperature, 5), atol=1e-5, rtol=0
    )


def test_at_the_default_temperature_the_result_is_unchanged_to_float_tolerance():
    torch.manual_seed(1)
    target = F.normalize(torch.randn(40, 16), dim=-1)
    context = F.normalize(torch.randn(2, 40, 16), dim=-1)
    labels = torch.softmax(torch.randn(2, 3, 40), dim=1)
    aff = (context.reshape(80, 16) @ target.T).div(0.1).exp()  # the formula before the fix, in float32
    aff = aff.masked_fill(aff < torch.topk(aff, 5, dim=0).values[-1], 0.0)
    before = labels.permute(1, 0, 2).reshape(3, 80) @ (aff / aff.sum(0, keepdim=True))
    torch.testing.assert_close(propagate_step(target, context, labels, 0.1, 5), before, atol=1e-6, rtol=1e-6)


def test_a_small_temperature_does_not_zero_the_score(checkpoint, clips, tmp_path):
    assert main(_argv(checkpoint, clips, tmp_path / "out", "temperature=0.005")) == 0
    result = json.loads((tmp_path / "out" / "video.json").read_text())
    assert result["J&F-Mean"] > 0.05  # was 0.0: exp(cos / 0.005) overflowed to inf, inf / inf = NaN


def test_an_output_folder_in_use_is_refused(checkpoint, clips, tmp_path, capsys):
    with RunLock(tmp_path / "out", "--out"):
        assert main(_argv(checkpoint, clips, tmp_path / "out")) == 2
        assert "in use by another sparsedino process" in error_line(capsys)


@pytest.mark.parametrize("command", ["eval video", "eval seg", "diagnose"])
def test_a_split_list_that_is_not_utf8_is_named(command, checkpoint, clips, tmp_path, capsys):
    if command == "eval video":
        listing, data, extra = clips / "ImageSets/2017/val.txt", clips, SMALL
    else:
        data = tmp_path / "voc"
        write_synthetic_dataset(data, n_train=4, n_val=4, size=32, seed=0, num_classes=2)
        listing = data / "VOC2012/ImageSets/Segmentation/val.txt"
        extra = (
            ["img_size=32", "n_images=4"] if command == "diagnose" else ["crop_size=32", "eval_short_side=32"]
        )
    listing.write_bytes(b"synth\xff\xfe\x00 name\n")
    argv = [
        *command.split(),
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, *extra]) == 2
    line = error_line(capsys, f"sparsedino {command}")
    assert "val.txt" in line and "not UTF-8" in line
