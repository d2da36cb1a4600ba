"""The rule tables every option and config key is checked with (``sparsedino/options.py``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from sparsedino.config import ConfigError, load_config
from sparsedino.eval.settings import PROTOCOLS, FeatureSettings, load_protocol_config
from sparsedino.options import NON_NEGATIVE, POSITIVE, Check, ListOf, OneOf, Range, Rules, check_section


@dataclass
class _Inner:
    RULES: ClassVar[Rules] = {"rate": Range(0, 1, open_high=True)}
    rate: float = 0.5


@dataclass
class _Outer:
    RULES: ClassVar[Rules] = {"sizes": ListOf("sizes", POSITIVE), "mode": OneOf(("a", "b"))}
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    mode: str = "a"
    inner: _Inner = field(default_factory=_Inner)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sizes=[]", "key 'sizes' must be a non-empty list of sizes > 0, got []"),
        ("sizes=[3,0]", "key 'sizes' must be a non-empty list of sizes > 0, got [3, 0]"),
        ("mode=c", "key 'mode' must be one of a, b, got 'c'"),
        ("inner.rate=1", "key 'inner.rate' must be a finite number in [0, 1), got 1.0"),
    ],
)
def test_a_section_and_its_nested_sections_name_the_dotted_key(override, message):
    cfg = load_config(_Outer, None, [override])
    with pytest.raises(ConfigError) as err:
        check_section(cfg, _Outer)
    assert str(err.value) == message


def test_valid_values_pass_and_the_rules_are_not_config_keys():
    cfg = load_config(_Outer, None, ["inner.rate=0"])
    check_section(cfg, _Outer)
    assert "RULES" not in cfg and [f.name for f in dataclasses.fields(_Outer)] == ["sizes", "mode", "inner"]
    with pytest.raises(ConfigError, match="RULES"):
        load_config(_Outer, None, ["RULES=1"])  # not a settable key


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "1"])
def test_nan_inf_bools_and_text_fail_every_range(value):
    assert not POSITIVE.accepts(value) and not NON_NEGATIVE.accepts(value)
    assert not Range(-10, 10).accepts(value)


def test_bounds_and_their_words():
    assert POSITIVE.describe() == "> 0" and not POSITIVE.accepts(0) and POSITIVE.accepts(1e-9)
    assert NON_NEGATIVE.describe() == ">= 0" and NON_NEGATIVE.accepts(0) and not NON_NEGATIVE.accepts(-1)
    half_open = Range(0, 1, open_high=True)
    assert (
        half_open.accepts(0)
        and not half_open.accepts(1)
        and half_open.describe() == "a finite number in [0, 1)"
    )
    counted = Range(1, 8, integer=True, note="pixels")
    assert counted.describe() == "an integer in [1, 8] (pixels)" and not counted.accepts(2.0)
    assert Check(lambda v: v % 2 == 0, "an even number").describe() == "an even number"
    assert not ListOf("names").accepts("abc")  # a string is not a list of names


@pytest.mark.parametrize("schema", [*PROTOCOLS.values(), FeatureSettings])
def test_every_rule_names_a_field_of_its_section(schema):
    assert set(schema.RULES) <= {f.name for f in dataclasses.fields(schema)}


def test_protocol_defaults_pass_their_rules():
    for protocol in PROTOCOLS:
        load_protocol_config(protocol, None, ["features.device=cpu" if protocol != "video" else "device=cpu"])
