"""A killed adapted run (initialised from a checkpoint, alpha schedule, Gram anchoring) resumes bit-identically,
from its own checkpoint: the source file is not read again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import timm
import torch

from tests.train.test_resume_distributed import _env, _steps_logged

pytestmark = pytest.mark.slow


def test_kill_9_then_resume_of_an_adapted_run_is_bit_identical(image_root, tmp_path, tiny_overrides):
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3,
                               num_heads=3, num_classes=0)  # fmt: skip
    torch.save(source.state_dict(), tmp_path / "softmax_backbone.pth")
    copy = tmp_path / "copy.pth"
    copy.write_bytes((tmp_path / "softmax_backbone.pth").read_bytes())
    extra = [
        "optim.epochs=3",
        "run.checkpoint_every_iters=1",
        "model.drop_path_rate=0.2",
        "model.normalizer=entmax15",
        "model.alpha_warmup_epochs=2",  # softmax -> entmax-1.5 over epochs 0 and 1 (bisection between)
        "gram.enabled=true",
        "gram.start_epoch=1",  # first snapshot at the start of epoch 1, re-synced at epoch 2
        "gram.update_every_epochs=1",
        "gram.ramp_epochs=1",
    ]

    def command(out, src):
        overrides = tiny_overrides(image_root, out, f"init.checkpoint={src}", *extra)
        return [sys.executable, "-m", "sparsedino", "train", "dino_cpu_tiny", *overrides]

    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(
        command(ref, tmp_path / "softmax_backbone.pth"), env=_env(), check=True, capture_output=True
    )
    proc = subprocess.Popen(
        command(run, copy), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while _steps_logged(run) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # in epoch 1: mid alpha schedule, Gram teacher in use
    proc.wait()
    killed_at = torch.load(run / "checkpoint.pth", weights_only=True)
    assert 4 < killed_at["global_step"] < 12

    # the copy the killed run started from is gone: resuming must not need it
    copy_bytes_hash = killed_at["sparsedino"]["init"]["sha256"]
    copy.unlink()
    subprocess.run(command(run, copy), env=_env(), check=True, capture_output=True)
    a = torch.load(ref / "checkpoint.pth", weights_only=True)
    b = torch.load(run / "checkpoint.pth", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (3, 12)
    for part in ("student", "teacher"):
        assert set(a[part]) == set(b[part])
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert torch.equal(a["dino_loss"]["center"], b["dino_loss"]["center"])
    ga, gb = a["gram_teacher"], b["gram_teacher"]
    assert (ga["synced_epoch"], ga["updates"]) == (gb["synced_epoch"], gb["updates"]) == (2, 1)
    assert all(torch.equal(ga["backbone"][k], gb["backbone"][k]) for k in ga["backbone"])
    assert b["sparsedino"]["init"]["sha256"] == copy_bytes_hash == a["sparsedino"]["init"]["sha256"]
    assert b["sparsedino"]["normalizer"] == "entmax15"
