"""In-process training runs on generated images: learning, outputs, failures."""

from __future__ import annotations

import json

import pytest
import torch

from sparsedino.config import ConfigError
from sparsedino.models import load_backbone
from sparsedino.train import NonFiniteLossError, load_train_config, run_training
from sparsedino.train.loss import DINOLoss


def _records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_tiny_run_learns_and_writes_outputs(image_root, tmp_path, tiny_overrides):
    out = tmp_path / "run"
    cfg = load_train_config(
        "dino_cpu_tiny",
        tiny_overrides(
            image_root,
            out,
            "optim.epochs=6",
            "optim.lr=0.2",
            "optim.clip_grad=0",
            "optim.warmup_teacher_temp_epochs=0",
            "optim.teacher_temp=0.04",
            "run.checkpoint_every_epochs=3",
            "log.tensorboard=true",
        ),
    )
    assert run_training(cfg) == out
    losses = [r["loss"] for r in _records(out) if "loss" in r]
    assert len(losses) == 6 * 4
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    assert (out / "config.yaml").is_file() and (out / "train_summary.json").is_file()
    assert any((out / "tensorboard").iterdir())
    assert sorted(p.name for p in out.glob("checkpoint_epoch*.pth")) == [
        "checkpoint_epoch0003.pth",
        "checkpoint_epoch0006.pth",
    ]
    # The checkpoint uses the official layout and is readable with weights_only=True.
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 6 and ckpt["iteration"] == 0
    assert "head.last_layer.weight_g" in ckpt["teacher"] and "backbone.cls_token" in ckpt["student"]
    assert ckpt["dino_loss"]["center"].shape == (1, 64)
    # load_backbone rebuilds the teacher with the training normaliser and the epoch of the snapshot.
    model, info = load_backbone(out / "checkpoint_epoch0003.pth")
    assert (info.source, info.arch, info.normalizer, info.epoch) == ("sparsedino", "vit_pico", "entmax15", 3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 48)


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(image_root, tmp_path, tiny_overrides, monkeypatch):
    out = tmp_path / "run"
    cfg = load_train_config(
        "dino_cpu_tiny", tiny_overrides(image_root, out, "optim.epochs=1", "run.checkpoint_every_iters=1")
    )
    real_forward, calls = DINOLoss.forward, {"n": 0}

    def forward(self, student_out, teacher_out, epoch):
        calls["n"] += 1
        loss = real_forward(self, student_out, teacher_out, epoch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(DINOLoss, "forward", forward)
    with pytest.raises(NonFiniteLossError, match="checkpoint"):
        run_training(cfg)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["iteration"]) == (0, 2)
    assert all(torch.isfinite(v).all() for v in ckpt["teacher"].values())


def test_missing_data_folder_is_named(tmp_path, tiny_overrides):
    cfg = load_train_config("dino_cpu_tiny", tiny_overrides(tmp_path / "nope", tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="nope"):
        run_training(cfg)


def test_unreadable_images_error_or_are_skipped_and_counted(tmp_path, tiny_overrides, make_images):
    root = make_images(tmp_path / "imgs", per_class=4)
    (root / "train" / "class0" / "broken.png").write_bytes(b"not a png")
    cfg = load_train_config("dino_cpu_tiny", tiny_overrides(root, tmp_path / "a", "optim.epochs=1"))
    with pytest.raises(RuntimeError, match="broken.png"):
        run_training(cfg)
    out = tmp_path / "b"
    cfg = load_train_config(
        "dino_cpu_tiny",
        tiny_overrides(root, out, "optim.epochs=1", "data.on_bad_image=skip", "optim.batch_size_per_gpu=17"),
    )
    run_training(cfg)  # one batch of 17 out of 17 files: the broken one is always drawn
    assert json.loads((out / "train_summary.json").read_text())["skipped_images"] == 1


def test_resume_refuses_a_different_model(image_root, tmp_path, tiny_overrides):
    out = tmp_path / "run"
    run_training(load_train_config("dino_cpu_tiny", tiny_overrides(image_root, out, "optim.epochs=1")))
    cfg = load_train_config(
        "dino_cpu_tiny", tiny_overrides(image_root, out, "optim.epochs=2", "model.normalizer=softmax")
    )
    with pytest.raises(ConfigError, match=r"model"):
        run_training(cfg)


def test_fp16_on_cpu_is_rejected(image_root, tmp_path, tiny_overrides):
    cfg = load_train_config("dino_cpu_tiny", tiny_overrides(image_root, tmp_path / "r", "run.precision=fp16"))
    with pytest.raises(ConfigError, match="run.precision"):
        run_training(cfg)
