"""The run folder under careless and hostile use (issues 12.6, 12.7, 12.8, 12.11): a refused run writes
nothing, one writer per folder, every bad value found at load time, files readable by the group."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from sparsedino.atomic import atomic_write_json
from sparsedino.cli import main as cli_main
from sparsedino.config import ConfigError
from sparsedino.pipeline.command import run_reproduce
from sparsedino.train import NonFiniteLossError, load_train_config, run_training
from sparsedino.train.loop import Trainer

from .conftest import TINY_OVERRIDES


def _overrides(data, out, *extra):
    return [*TINY_OVERRIDES, f"data.path={data}", f"run.output_dir={out}", *extra]


@pytest.fixture(scope="module")
def finished_run(image_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    previous = os.umask(0o022)
    try:
        run_training(load_train_config("dino_cpu_tiny", _overrides(image_root, out, "optim.epochs=1")))
    finally:
        os.umask(previous)
    return out


# ---- 12.6: validate first, write after ---------------------------------------------------------------
def test_a_refused_resume_leaves_the_run_config_untouched(finished_run, image_root):
    before = (finished_run / "config.yaml").read_text()
    cfg = load_train_config("dino_cpu_tiny", _overrides(image_root, finished_run, "model.normalizer=softmax"))
    with pytest.raises(ConfigError, match="differs from the checkpoint"):
        run_training(cfg)
    assert (finished_run / "config.yaml").read_text() == before


def test_a_run_refused_after_reading_its_data_writes_nothing(make_images, tmp_path):
    data = make_images(tmp_path / "few", n_classes=1, per_class=3)  # fewer images than one batch of 8
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        run_training(load_train_config("dino_cpu_tiny", _overrides(data, out)))
    assert not out.exists()


# ---- 12.7: one writer per folder -----------------------------------------------------------------------
def test_a_second_writer_on_a_run_folder_is_refused_naming_the_first(
    image_root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "busy"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "sparsedino", "train", "dino_cpu_tiny",
         *_overrides(image_root, out, "optim.epochs=1000")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while not (out / "config.yaml").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)  # config.yaml is written once the lock is held
        assert first.poll() is None, "the first run ended early"
        status = cli_main(["train", "dino_cpu_tiny", *_overrides(image_root, out)])
        err = capsys.readouterr().err
        assert status == 2 and f"pid {first.pid}" in err and len(err.strip().splitlines()) == 1
        monkeypatch.setattr("sparsedino.pipeline.stages.StageRunner.run_all", lambda *a: pytest.fail("ran"))
        with pytest.raises(OSError, match=f"pid {first.pid}"):  # `reproduce` into the same folder
            run_reproduce("micro", out)
    finally:
        first.kill()
        first.wait()


# ---- 12.8: every bad value found at load time ----------------------------------------------------------
@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=nan",
        "optim.min_lr=-1e-6",
        "optim.weight_decay=inf",
        "optim.weight_decay_end=-0.4",
        "optim.teacher_temp=0",
        "optim.clip_grad=nan",
        "model.attn_scale=-0.1",
        "model.attn_scale=0",
        "data.color_jitter=nan",
        "optim.epochs=100000000",
        "run.device=cuda" if not torch.cuda.is_available() else "run.device=cuda:99",
    ],
)
def test_non_finite_non_positive_and_absurd_values_are_refused_naming_the_key(override, image_root, tmp_path):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config("dino_cpu_tiny", _overrides(image_root, tmp_path / "r", override))


def test_a_nan_loss_before_any_checkpoint_does_not_claim_one_is_intact(image_root, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "step", lambda self, crops, epoch: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError) as err:
        run_training(load_train_config("dino_cpu_tiny", _overrides(image_root, tmp_path / "r")))
    assert "no checkpoint had been written yet" in str(err.value) and "intact" not in str(err.value)
    # 12.6: a run that failed before its first checkpoint leaves no set-up files for the next one to trip on
    assert not (tmp_path / "r" / "config.yaml").exists()
    assert not (tmp_path / "r" / "checkpoint_epoch0000.pth").exists()


@pytest.mark.parametrize(
    ("variable", "value"), [("SPARSEDINO_COMPILE", "maybe"), ("SPARSEDINO_CACHE", "{file}/cache")]
)
def test_garbage_environment_fails_at_start_naming_the_variable(
    variable, value, image_root, tmp_path, capsys, monkeypatch
):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv(variable, value.format(file=tmp_path / "file"))
    monkeypatch.setattr(Trainer, "__init__", lambda *a: pytest.fail("training started"))
    assert cli_main(["train", "dino_cpu_tiny", *_overrides(image_root, tmp_path / "r")]) == 2
    assert variable in capsys.readouterr().err


# ---- 12.11: permissions and interrupted writes ---------------------------------------------------------
def test_results_and_checkpoints_follow_the_umask(finished_run, tmp_path):
    for name in ("checkpoint.pth", "config.yaml", "train_summary.json"):
        assert stat.S_IMODE((finished_run / name).stat().st_mode) == 0o644, name  # written under umask 022
    previous = os.umask(0o002)
    try:
        atomic_write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o664


def test_resume_removes_temp_files_left_by_a_kill_during_a_checkpoint_write(finished_run, image_root):
    stale = finished_run / ".checkpoint.pth.k9x2ab.tmp"  # the name atomic writes give their temp file
    stale.write_bytes(b"half a checkpoint")
    run_training(load_train_config("dino_cpu_tiny", _overrides(image_root, finished_run, "optim.epochs=1")))
    assert not stale.exists()
    assert (finished_run / "checkpoint.pth").is_file()
