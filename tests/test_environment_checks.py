"""Issue 24: ``SPARSEDINO_*`` names and the compiler are checked when a command starts; as a library the
kernel cache never falls back to the working folder and the kernels never turn off without a warning;
``diagnose`` writes nothing when it fails and locks its output; ``sparsify`` checks its scale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from sparsedino.attention import SparseAttention, native, sparsify
from sparsedino.cli import main
from sparsedino.data.synthetic import write_synthetic_dataset
from sparsedino.models.vit import build_vit
from sparsedino.runlock import RunLock

from .cli_errors import error_line


def test_a_misspelt_variable_is_reported_with_the_closest_name(monkeypatch, capsys):
    monkeypatch.setenv("SPARSEDINO_COMPLIE", "0")
    assert main(["data", "synth", "--out", "unused", "--size", "8"]) == 2
    line = error_line(capsys, "sparsedino data")
    assert (
        "SPARSEDINO_COMPLIE is not a sparsedino setting" in line
        and "did you mean SPARSEDINO_COMPILE?" in line
    )
    assert "SPARSEDINO_CACHE" in line and "SPARSEDINO_MALLOC_TUNING" in line


def test_compile_1_without_a_compiler_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("SPARSEDINO_COMPILE", "1")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["bench", "attention", "--shapes", "1x1x4x4"]) == 2
    assert "SPARSEDINO_COMPILE=1 asks for compiled kernels, but no C compiler" in error_line(
        capsys, "sparsedino bench"
    )


def test_the_real_entry_point_reports_the_misspelling_too(tmp_path):
    env = {**os.environ, "SPARSEDINO_CAHCE": str(tmp_path)}
    argv = [sys.executable, "-m", "sparsedino", "data", "synth", "--out", str(tmp_path / "d"), "--size", "8"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "SPARSEDINO_CAHCE" in result.stderr and "did you mean SPARSEDINO_CACHE?" in result.stderr


def test_an_empty_cache_variable_means_the_default_folder_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEDINO_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.warns(RuntimeWarning, match="SPARSEDINO_CACHE is set but empty"):
        folder = native.cache_dir()
    assert folder == tmp_path / "home" / ".cache" / "sparsedino"  # not the working folder
    monkeypatch.setenv("SPARSEDINO_CACHE", "relative/cache")
    assert native.cache_dir() == tmp_path / "relative" / "cache"  # absolute: ctypes never searches for it


def test_kernels_that_cannot_be_built_warn_once(monkeypatch):
    def no_cache(*args):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(native, "_build", no_cache)
    with pytest.warns(RuntimeWarning, match="C entmax kernels are unavailable.*Read-only file system"):
        assert native.available() is False
    assert native.available() is False and "Read-only" in native.build_error()  # remembered, no new warning


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "data"
    write_synthetic_dataset(root, n_train=8, n_val=8, size=32, seed=1, num_classes=3)
    checkpoint = tmp_path / "pico.pth"
    torch.save(
        build_vit("vit_pico", patch_size=8, img_size=32, normalizer="softmax").state_dict(), checkpoint
    )
    return root, checkpoint


def _diagnose(root, checkpoint, out):
    return ["diagnose", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(out), "img_size=32",
            "n_images=8", "batch_size=2", "dense_probe.enabled=false", "--no-progress"]  # fmt: skip


def test_diagnose_writes_nothing_when_a_late_image_is_bad(voc, tmp_path, capsys):
    root, checkpoint = voc
    mask = sorted((root / "VOC2012" / "SegmentationClass").glob("*val*"))[5]  # read after two batches
    Image.fromarray(np.full((32, 32), 200, np.uint8), "L").save(mask)
    assert main(_diagnose(root, checkpoint, tmp_path / "out")) == 2
    assert mask.name in error_line(capsys, "sparsedino diagnose")
    assert not (tmp_path / "out").exists()  # no config.yaml left for a later run to trip on


def test_diagnose_refuses_an_output_folder_in_use(voc, tmp_path, capsys):
    root, checkpoint = voc
    with RunLock(tmp_path / "out", "--out"):
        assert main(_diagnose(root, checkpoint, tmp_path / "out")) == 2
    assert "in use by another sparsedino process" in error_line(capsys, "sparsedino diagnose")


@pytest.mark.parametrize("scale", [0, -1.0, float("inf"), float("nan")])
def test_sparsify_and_sparse_attention_refuse_a_scale_that_is_not_finite_and_positive(scale):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=0)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        sparsify(model, "entmax15", scale=scale)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        SparseAttention(16, num_heads=2, scale=scale)
    assert type(model.blocks[0].attn).__name__ == "Attention"  # nothing was converted
    with pytest.raises(TypeError, match="scale"):
        sparsify(model, "entmax15", scale=True)
    assert sparsify(model, "entmax15", scale=0.3).blocks[0].attn.scale == 0.3
