"""``sparsedino diagnose`` options: each bad value is refused before any work, naming its dotted key."""

from __future__ import annotations

import pytest

from sparsedino.config import ConfigError
from sparsedino.diagnose.settings import load_diagnose_config

BAD = {
    "dataset=coco": "key 'dataset' must be one of voc, ade20k, cityscapes, got 'coco'",
    "n_images=0": "key 'n_images' must be > 0, got 0",
    "batch_size=-1": "key 'batch_size' must be > 0",
    "n_figure_images=-1": "key 'n_figure_images' must be >= 0",
    "fg_threshold=0": "key 'fg_threshold' must be a finite number in (0, 1]",
    "cls_mass_keep=1.5": "key 'cls_mass_keep' must be a finite number in (0, 1]",
    "outlier_ratio=1": "key 'outlier_ratio' must be > 1 (a multiple of the median norm)",
    "dense_probe.lr=0": "key 'dense_probe.lr' must be > 0",
    "dense_probe.warmup_iters=-1": "key 'dense_probe.warmup_iters' must be >= 0",
    "dense_probe.train_fraction=1": "key 'dense_probe.train_fraction' must be a finite number in (0, 1)",
    "dse.global_clusters=0": "key 'dse.global_clusters' must be > 0",
    "dse.dim_weight=-0.5": "key 'dse.dim_weight' must be >= 0",
    "device=gpu": "key 'device': 'gpu' is not a device",
}


@pytest.mark.parametrize("override", BAD)
def test_a_bad_value_is_named(override):
    with pytest.raises(ConfigError) as err:
        load_diagnose_config(None, [override])
    assert BAD[override] in str(err.value)


ALLOWED = {  # the edges of the ranges above, on the allowed side
    "fg_threshold=1": ("fg_threshold", 1.0),
    "cls_mass_keep=1": ("cls_mass_keep", 1.0),
    "outlier_ratio=1.01": ("outlier_ratio", 1.01),
    "n_figure_images=0": ("n_figure_images", 0),
    "dense_probe.warmup_iters=0": ("dense_probe.warmup_iters", 0),
    "dense_probe.train_fraction=0.9": ("dense_probe.train_fraction", 0.9),
    "dse.dim_weight=0": ("dse.dim_weight", 0.0),
    "dataset=cityscapes": ("dataset", "cityscapes"),
    "device=cpu": ("device", "cpu"),
}


@pytest.mark.parametrize("override", ALLOWED)
def test_the_edges_that_are_allowed_load(override):
    key, expected = ALLOWED[override]
    value = load_diagnose_config(None, [override])
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected


@pytest.mark.parametrize("preset", ["diagnose_quick", "diagnose_paper"])
def test_shipped_presets_load(preset):
    assert load_diagnose_config(preset).n_images > 0
