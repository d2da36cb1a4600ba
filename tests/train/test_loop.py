"""In-process training runs on generated images: learning, outputs, failures."""

from __future__ import annotations

import json

import pytest
import torch

from sparsedino.config import ConfigError
from sparsedino.models import load_backbone
from sparsedino.train import NonFiniteLossError, load_train_config, run_training
from sparsedino.train.build import build_network
from sparsedino.train.distributed import DistInfo
from sparsedino.train.loop import Trainer
from sparsedino.train.loss import DINOLoss


def _records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_student_learns_to_match_a_fixed_teacher(image_root, tmp_path, tiny_overrides):
    """The optimisation path (loss, backward, clipping, AdamW, schedules) reduces the DINO loss.

    The teacher is a differently initialised network kept fixed (momentum 1, centre frozen), so the
    loss can only fall if the student's gradients and updates are right.
    """
    cfg = load_train_config(
        "dino_cpu_tiny",
        tiny_overrides(
            image_root,
            tmp_path / "run",
            "optim.lr=0.03",
            "optim.momentum_teacher=1.0",
            "optim.center_momentum=1.0",
            "optim.clip_grad=3.0",
        ),
    )
    trainer = Trainer(cfg, DistInfo())
    torch.manual_seed(123)
    trainer.nets.teacher.load_state_dict(build_network(cfg, 0.0).state_dict())
    teacher_before = {k: v.clone() for k, v in trainer.nets.teacher.state_dict().items()}
    trainer.fit()
    losses = [r["loss"] for r in _records(tmp_path / "run") if "loss" in r]
    assert len(losses) == 8
    assert sum(losses[-4:]) / 4 < losses[0] - 1.0, losses
    for key, value in trainer.nets.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key])  # momentum 1: the teacher never moved


@pytest.mark.slow
def test_tiny_run_writes_outputs_and_loadable_checkpoints(image_root, tmp_path, tiny_overrides):
    out = tmp_path / "run"
    cfg = load_train_config(
        "dino_cpu_tiny",
        tiny_overrides(
            image_root,
            out,
            "optim.epochs=2",
            "run.max_iters_per_epoch=2",
            "run.checkpoint_every_epochs=1",
            "log.tensorboard=true",
            "model.drop_path_rate=0.1",
        ),
    )
    assert run_training(cfg) == out
    records = _records(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(
        set(r) >= {"loss", "lr", "wd", "momentum", "teacher_temp", "images_per_s"}
        for r in records
        if "loss" in r
    )
    assert (out / "config.yaml").is_file() and (out / "train_summary.json").is_file()
    assert any((out / "tensorboard").iterdir())
    assert sorted(p.name for p in out.glob("checkpoint_epoch*.pth")) == [
        "checkpoint_epoch0000.pth",  # the initialisation, where curves over training start
        "checkpoint_epoch0001.pth",
        "checkpoint_epoch0002.pth",
    ]
    # The checkpoint uses the official layout and is readable with weights_only=True.
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == 0
    assert "head.last_layer.weight_g" in ckpt["teacher"] and "backbone.cls_token" in ckpt["student"]
    assert ckpt["dino_loss"]["center"].shape == (1, 64)
    assert ckpt["args"]["model"]["normalizer"] == "entmax15"
    # The teacher moved away from the student's initial weights by EMA but is not the student.
    assert not torch.equal(ckpt["teacher"]["backbone.cls_token"], ckpt["student"]["backbone.cls_token"])
    # load_backbone rebuilds the teacher with the training normaliser and the epoch of the snapshot.
    model, info = load_backbone(out / "checkpoint_epoch0001.pth")
    assert (info.source, info.arch, info.normalizer, info.epoch) == ("sparsedino", "vit_pico", "entmax15", 1)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 48)
    init = torch.load(out / "checkpoint_epoch0000.pth", weights_only=True)
    assert init["epoch"] == 0 and torch.equal(
        init["teacher"]["backbone.pos_embed"], init["student"]["backbone.pos_embed"]
    )


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(
    image_root, tmp_path, tiny_overrides, monkeypatch
):
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
    with pytest.raises(RuntimeError, match=r"broken\.png"):
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
    with pytest.raises(ConfigError, match=r"run\.precision"):  # at config load, before any work
        load_train_config("dino_cpu_tiny", tiny_overrides(image_root, tmp_path / "r", "run.precision=fp16"))
