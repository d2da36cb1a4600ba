"""Resume compares normalisers in canonical spelling; checkpoints store the canonical one."""

from __future__ import annotations

import pytest
import torch
import yaml

from sparsedino.config import ConfigError
from sparsedino.models import load_backbone
from sparsedino.train import load_train_config, run_training


def _train(image_root, out, tiny_overrides, spelling, epochs):
    extra = (f"model.normalizer={spelling}", f"optim.epochs={epochs}", "run.max_iters_per_epoch=1")
    return run_training(load_train_config("dino_cpu_tiny", tiny_overrides(image_root, out, *extra)))


def test_a_run_spelled_differently_resumes_and_stores_the_canonical_name(
    image_root, tmp_path, tiny_overrides
):
    out = tmp_path / "run"
    _train(image_root, out, tiny_overrides, "entmax-1.5", 1)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["model"]["normalizer"] == ckpt["sparsedino"]["normalizer"] == "entmax15"
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["normalizer"] == "entmax15"
    _train(image_root, out, tiny_overrides, "1.5", 2)  # the same model: resumes, not "a different model"
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 2


def test_an_old_checkpoint_storing_the_users_spelling_still_resumes_and_loads(
    image_root, tmp_path, tiny_overrides
):
    out = tmp_path / "run"
    _train(image_root, out, tiny_overrides, "entmax15", 1)
    path = out / "checkpoint.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["args"]["model"]["normalizer"] = ckpt["sparsedino"]["normalizer"] = "entmax-1.5"  # as written before
    torch.save(ckpt, path)
    _, info = load_backbone(path)
    assert info.normalizer == "entmax15"
    _train(image_root, out, tiny_overrides, "entmax15", 2)
    assert torch.load(path, weights_only=True)["epoch"] == 2


def test_a_different_normaliser_is_still_refused(image_root, tmp_path, tiny_overrides):
    out = tmp_path / "run"
    _train(image_root, out, tiny_overrides, "entmax-1.5", 1)
    with pytest.raises(ConfigError, match=r"'model' differs"):
        _train(image_root, out, tiny_overrides, "sparsemax", 2)
