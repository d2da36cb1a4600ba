"""Issue 24: a checkpoint is checked before a run resumes from it (a negative position, NaN/inf weights),
and a run refused before writing anything leaves no folder holding only its lock file."""

from __future__ import annotations

import shutil

import pytest
import torch

from sparsedino.models import CheckpointError
from sparsedino.runlock import LOCK_NAME
from sparsedino.train import load_train_config, run_training
from sparsedino.train.loop import Trainer

from .conftest import TINY_OVERRIDES


def _cfg(data, out, *extra):
    return load_train_config("dino_cpu_tiny", [*TINY_OVERRIDES, f"data.path={data}", f"run.output_dir={out}",
                                               "optim.epochs=1", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def finished(image_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    run_training(_cfg(image_root, out))
    return out


def _edited_copy(finished, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpt = torch.load(run / "checkpoint.pth", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, run / "checkpoint.pth")
    return run, (run / "checkpoint.pth").read_bytes()


def _no_training(monkeypatch):
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("training started from a bad checkpoint"))


def test_a_negative_global_step_is_refused_before_resuming(finished, image_root, tmp_path, monkeypatch):
    run, before = _edited_copy(finished, tmp_path, lambda c: c.update(global_step=-5))
    _no_training(monkeypatch)
    with pytest.raises(CheckpointError, match="stored global_step -5"):
        run_training(_cfg(image_root, run, "optim.epochs=2"))
    assert (run / "checkpoint.pth").read_bytes() == before


def test_nan_weights_are_refused_up_front_naming_the_tensor(finished, image_root, tmp_path, monkeypatch):
    def poison(ckpt):
        name = next(k for k in ckpt["teacher"] if k.endswith("qkv.weight"))
        ckpt["teacher"][name][0, 0] = float("nan")

    run, before = _edited_copy(finished, tmp_path, poison)
    _no_training(monkeypatch)
    with pytest.raises(
        CheckpointError, match=r"'teacher\.backbone\.blocks\.0\.attn\.qkv\.weight' holds 1 NaN"
    ):
        run_training(_cfg(image_root, run, "optim.epochs=2"))
    assert (run / "checkpoint.pth").read_bytes() == before


def test_a_run_refused_before_writing_leaves_no_lock_only_folder(image_root, tmp_path, monkeypatch):
    def refuse(self, iters):  # a failure after the lock is taken, before anything is written
        raise CheckpointError("refused for the test")

    monkeypatch.setattr(Trainer, "_open_run", refuse)
    with pytest.raises(CheckpointError):
        run_training(_cfg(image_root, tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made is kept, but not the lock file
    with pytest.raises(CheckpointError):
        run_training(_cfg(image_root, tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / LOCK_NAME).exists()
