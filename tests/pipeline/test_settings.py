"""``sparsedino reproduce`` settings: each bad value is refused when the preset loads, naming its key."""

from __future__ import annotations

import pytest

from sparsedino.config import ConfigError
from sparsedino.pipeline.plan import load_reproduce_config

BAD = {
    "arms=[]": "key 'arms' must be a non-empty list",
    "arms=[softmax,1.0]": "key 'arms': duplicate entries",
    "seeds=[0,0]": "key 'seeds' must be distinct seeds, got [0, 0]",
    "seeds=[]": "key 'seeds' must be distinct seeds",
    "seg_datasets=[coco]": "key 'seg_datasets' must be a non-empty list of segmentation datasets one of voc",
    "seg_datasets=[]": "key 'seg_datasets' must be a non-empty list",  # (was an IndexError while planning)
    "seg_datasets=[ade20k]": "key 'seg_datasets': the embedded dataset provides only the VOC layout",
    "train_processes=0": "key 'train_processes' must be >= 1, got 0",
    "budget_minutes=-1": "key 'budget_minutes' must be >= 0",
    "curve.every_epochs=0": "key 'curve.every_epochs' must be >= 1",
    "controls.inject=[0.5,0]": "key 'controls.inject' must be a list of amounts in (0, 1], got [0.5, 0.0]",
    "controls.inject_source=max": "key 'controls.inject_source' must be one of cls, mean, got 'max'",
    "controls.seeds=[7]": "key 'controls.seeds': seed 7 is not one of the seeds",
    "statistics.confidence=0.5": "key 'statistics.confidence' must be a finite number in (0.5, 1)",
    "statistics.power=1": "key 'statistics.power' must be a finite number in [0.5, 1)",
}


@pytest.mark.parametrize("override", BAD)
def test_a_bad_value_is_named(override):
    with pytest.raises(ConfigError) as err:
        load_reproduce_config("micro", [override])
    assert BAD[override] in str(err.value)


@pytest.mark.parametrize(
    "override",
    ["controls.inject=[]", "controls.inject=[1.0]", "statistics.power=0.5", "statistics.confidence=0.99",
     "budget_minutes=0", "seeds=[3,1]", "controls.inject_source=cls"],
)  # fmt: skip
def test_the_edges_that_are_allowed_load(override):
    load_reproduce_config("micro", [override])
