"""Mixed precision on CPU: bf16 autocast, and the fp16 + GradScaler path (opened to CPU for the tests).

Kill/resume equality in bf16 and fp16 is in test_resume_distributed.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from sparsedino.train import NonFiniteLossError, load_train_config, loop, run_training
from sparsedino.train import settings as train_settings
from sparsedino.train.loss import DINOLoss


class _NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward (a finite loss whose backward blows up)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@pytest.fixture()
def fp16_on_cpu(monkeypatch):
    monkeypatch.setattr(train_settings, "FP16_DEVICES", ("cuda", "cpu"))


def _nan_gradients_at(monkeypatch, steps):
    """From now on, the DINO loss's backward gives NaN gradients at the given 1-based steps."""
    real_forward, calls = DINOLoss.forward, {"n": 0}

    def forward(self, student_out, teacher_out, epoch):
        calls["n"] += 1
        if calls["n"] in steps:
            student_out = _NaNGradient.apply(student_out)
        return real_forward(self, student_out, teacher_out, epoch)

    monkeypatch.setattr(DINOLoss, "forward", forward)


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


def _finite_checkpoint(out):
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    for part in ("student", "teacher"):
        assert all(bool(v.isfinite().all()) for v in ckpt[part].values() if v.is_floating_point())
    return ckpt


@pytest.mark.slow
def test_bf16_run_trains_like_fp32(image_root, tmp_path, tiny_overrides):
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        cfg = load_train_config(
            "dino_cpu_tiny", tiny_overrides(image_root, out, f"run.precision={precision}")
        )
        run_training(cfg)
        runs[precision] = [r["loss"] for r in _losses(out)]
        ckpt = _finite_checkpoint(out)
        assert ckpt["fp16_scaler"] is None
        assert ckpt["student"]["backbone.cls_token"].dtype == torch.float32  # weights stay fp32
    assert runs["bf16"] != runs["fp32"]  # autocast did run in bf16 ...
    assert max(abs(a - b) for a, b in zip(runs["bf16"], runs["fp32"])) < 0.05, runs  # ... and learns the same


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_non_finite_gradients_stop_before_the_weights_change(
    image_root, tmp_path, tiny_overrides, monkeypatch, precision
):
    out = tmp_path / "run"
    cfg = load_train_config(
        "dino_cpu_tiny",
        tiny_overrides(
            image_root, out, "optim.epochs=1", "run.checkpoint_every_iters=1", f"run.precision={precision}"
        ),
    )
    _nan_gradients_at(monkeypatch, {3})
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient of '.+' .*step 2.*checkpoint"):
        run_training(cfg)
    ckpt = _finite_checkpoint(out)  # the last good state: after step 2, before the NaN step
    assert (ckpt["epoch"], ckpt["iteration"]) == (0, 2)


def test_fp16_scaler_skips_an_overflowing_step_and_training_goes_on(
    image_root, tmp_path, tiny_overrides, monkeypatch, fp16_on_cpu
):
    out = tmp_path / "run"
    cfg = load_train_config(
        "dino_cpu_tiny", tiny_overrides(image_root, out, "optim.epochs=3", "run.precision=fp16")
    )
    _nan_gradients_at(monkeypatch, {10})
    run_training(cfg)
    scales = [r["loss_scale"] for r in _losses(out)]
    # the scale settles from 2**16 over the first 8 steps (their gradients overflow), then holds ...
    assert scales[7] == scales[8] < 2.0**16
    assert scales[9] == scales[8] / 2  # ... until the NaN step, which was skipped
    ckpt = _finite_checkpoint(out)
    assert ckpt["global_step"] == 12 and ckpt["fp16_scaler"]["scale"] == scales[-1]


def test_fp16_stops_after_a_streak_of_overflowing_steps(
    image_root, tmp_path, tiny_overrides, monkeypatch, fp16_on_cpu
):
    monkeypatch.setattr(loop, "MAX_OVERFLOW_STREAK", 3)
    out = tmp_path / "run"
    cfg = load_train_config(
        "dino_cpu_tiny",
        tiny_overrides(
            image_root, out, "optim.epochs=1", "run.checkpoint_every_iters=1", "run.precision=fp16"
        ),
    )
    _nan_gradients_at(monkeypatch, set(range(1, 100)))
    with pytest.raises(NonFiniteLossError, match=r"overflowed in 4 consecutive steps"):
        run_training(cfg)
    _finite_checkpoint(out)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_nan_loss_stops_in_mixed_precision(image_root, tmp_path, tiny_overrides, monkeypatch, precision):
    monkeypatch.setattr(train_settings, "FP16_DEVICES", ("cuda", "cpu"))
    out = tmp_path / "run"
    cfg = load_train_config(
        "dino_cpu_tiny",
        tiny_overrides(
            image_root, out, "optim.epochs=1", "run.checkpoint_every_iters=1", f"run.precision={precision}"
        ),
    )
    real_forward, calls = DINOLoss.forward, {"n": 0}

    def forward(self, student_out, teacher_out, epoch):
        calls["n"] += 1
        loss = real_forward(self, student_out, teacher_out, epoch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(DINOLoss, "forward", forward)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan .*checkpoint"):
        run_training(cfg)
    ckpt = _finite_checkpoint(out)
    assert (ckpt["epoch"], ckpt["iteration"]) == (0, 2)
