"""`sparsedino eval {knn,linear,seg}` end to end on the embedded dataset with a tiny checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from sparsedino.eval.command import main


@pytest.fixture
def checkpoint(tmp_path, tiny_vit):
    path = tmp_path / "tiny_vit.pth"
    torch.save(tiny_vit.state_dict(), path)  # a bare timm state dict, as users bring them
    return path


def test_eval_seg_writes_json_and_markdown(tmp_path, checkpoint, synth_root):
    out = tmp_path / "out"
    argv = [
        "seg",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(synth_root),
        "--out",
        str(out),
        "--with-cls",
        "crop_size=32",
        "iters=4",
        "batch_size=4",
        "warmup_iters=1",
        "eval_short_side=0",
        "max_val_images=4",
        "features.batch_size=8",
        "features.device=cpu",
    ]
    assert main(argv) == 0
    result = json.loads((out / "linear_seg.json").read_text())
    assert result["with_cls"] and result["backbone"]["source"] == "state_dict"
    assert 0 <= result["miou"] <= 1 and len(result["per_class_iou"]) == 5
    markdown = (out / "linear_seg.md").read_text()
    assert "mIoU" in markdown and "augmentation" in markdown and "background" in markdown
    assert (out / "seg_config.yaml").is_file()


def test_eval_knn_and_linear(tmp_path, checkpoint, synth_root):
    common = [
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(synth_root / "imagenet"),
        "--out",
        str(tmp_path),
        "crop=32",
        "resize=32",
        "features.device=cpu",
    ]
    assert main(["knn", *common, "ks=[5,10]"]) == 0
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert set(knn["results"]) >= {"k=5", "k=10"} and knn["results"]["num_test"] == 16
    assert main(["linear", *common, "lrs=[0.01,0.1]", "epochs=1", "n_last_blocks=[1,4]"]) == 0
    linear = json.loads((tmp_path / "linear.json").read_text())
    assert len(linear["grid"]) == 2 * 2 and linear["skipped_n_last_blocks"] == [4]  # the model has 3 blocks
    assert "Best on val" in (tmp_path / "linear.md").read_text()


def test_bad_arguments_are_reported(tmp_path, checkpoint, capsys):
    assert main(["seg", "--checkpoint", str(checkpoint), "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main(["knn", "--checkpoint", str(tmp_path / "missing.pth"), "--data", "x"]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert main(["seg", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nowhere")]) == 2
    assert "JPEGImages" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["knn", "--checkpoint", str(garbage), "--data", str(tmp_path)]) == 2
    assert "garbage.pth" in capsys.readouterr().err
    assert main(["bogus"]) == 2
