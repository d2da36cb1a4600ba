"""``sparsedino train`` settings: the choices come from their one home, and each bad value is named."""

from __future__ import annotations

import pytest

from sparsedino.config import ConfigError
from sparsedino.models import ARCHS
from sparsedino.train.settings import ModelSettings, load_train_config


def test_arch_choices_are_the_architecture_table():
    """Every architecture ``build_vit`` knows can be chosen in a config, and nothing else."""
    assert set(ModelSettings.RULES["arch"].choices) == set(ARCHS)
    for arch in ARCHS:
        assert load_train_config("dino_cpu_tiny", ["data.path=x", f"model.arch={arch}"]).model.arch == arch


BAD = {
    "model.arch=vit_huge": "key 'model.arch' must be one of vit_femto, vit_pico, vit_tiny, vit_small",
    "model.attn_scale=0": "key 'model.attn_scale' must be null (head_dim ** -0.5) or a finite number > 0",
    "model.drop_path_rate=1": "key 'model.drop_path_rate' must be a finite number in [0, 1), got 1.0",
    "data.global_crops_number=1": "key 'data.global_crops_number' must be >= 2 (the teacher views are compared",
    "data.local_crops_scale=[0.05,0.4,0.5]": "key 'data.local_crops_scale' must be [min, max] with 0 < min <= max",
    "data.local_crop_size=20": "key 'data.local_crop_size' (20) must be a multiple of model.patch_size",
    "optim.epochs=0": "key 'optim.epochs' must be an integer in [1, 10000] (more is not a schedule), got 0",
    "optim.epochs=10001": "key 'optim.epochs' must be an integer in [1, 10000]",
    "optim.momentum_teacher=1.1": "key 'optim.momentum_teacher' must be a finite number in [0, 1], got 1.1",
    "optim.lr=0": "key 'optim.lr' must be > 0, got 0.0",
    "optim.clip_grad=-1": "key 'optim.clip_grad' must be >= 0",
    "run.device=cuda:0": "key 'run.device' must be one of auto, cpu, cuda, got 'cuda:0'",
    "init.sha256=abc": "key 'init.sha256' must be empty or 64 hex digits (a SHA-256), got 'abc'",
    "init.kind=foo": "key 'init.kind' must be one of \"\", sparsedino, dino, export, state_dict, got 'foo'",
    "gram.resize_mode=cubic": "key 'gram.resize_mode' must be one of bicubic, bilinear, nearest, area",
}


@pytest.mark.parametrize("override", BAD)
def test_a_bad_value_is_named(override):
    with pytest.raises(ConfigError) as err:
        load_train_config("dino_cpu_tiny", ["data.path=x", override])
    assert BAD[override] in str(err.value)


@pytest.mark.parametrize(
    "override",
    ["optim.epochs=10000", "model.attn_scale=null", "model.attn_scale=0.125", "data.global_crops_number=2",
     "optim.momentum_teacher=1", "model.drop_path_rate=0", "gram.max_updates=-5"],  # gram off: not checked
)  # fmt: skip
def test_the_edges_that_are_allowed_load(override):
    load_train_config("dino_cpu_tiny", ["data.path=x", override])
