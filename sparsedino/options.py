"""Values checked against a table of rules before any work: one style for command-line options and configs.

A table maps a name to a rule (:class:`Range`, :class:`OneOf`, :class:`ListOf`, :class:`Check`); a value it
refuses is a :class:`~sparsedino.config.ConfigError` naming the option or key, the value and what is
allowed (exit code 2), never a traceback minutes later. What one table entry cannot say (a key against
another key, a device this machine does not have) is checked in code right after the table.

Command-line options: argparse turns each option's text into its type (``--clips abc`` is argparse's own
one-line error); the values are then checked inside :func:`sparsedino.errors.run_command`, the command's
rules in one table next to its parser::

    RULES = {"clips": Range(1, MAX_COUNT, integer=True), "clutter": Range(0, 100)}
    check_options(vars(args), RULES, option_name)

Config sections: OmegaConf rejects unknown keys and wrong types when the config is loaded
(:func:`sparsedino.config.load_config`); each section's dataclass states its keys' ranges and choices in a
``RULES`` table beside its fields, and :func:`check_section` checks them, nested sections included, naming
the dotted key::

    @dataclass
    class FeatureSettings:
        RULES: ClassVar[Rules] = {"batch_size": POSITIVE, "dtype": OneOf(("float32", "float16"))}
        batch_size: int = 64
        dtype: str = "float32"

    check_section(cfg, KnnConfig)  # ConfigError: key 'features.batch_size' must be > 0, got 0

NaN and infinity fail every :class:`Range` (a bound of ``inf`` is never reached); bools are not numbers.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sparsedino.config import ConfigError

MAX_COUNT = 2**31 - 1  # counts of steps, images, frames, repeats: nothing meaningful needs more than 32 bits
MAX_SEED = 2**63 - 1


class Rule(Protocol):
    """What a table entry is: a test of one value and the words for what it accepts."""

    def accepts(self, value: Any) -> bool: ...

    def describe(self) -> str: ...


Rules = Mapping[str, Rule]  # name (an option's destination, a config key) -> its rule


@dataclass(frozen=True)
class Range:
    """A finite number (an integer if ``integer``) in ``[low, high]``; ``open_low`` / ``open_high`` leave a
    bound out, and ``note`` adds a hint to the message (``"0 = all"``, ``"pixels"``)."""

    low: float
    high: float = math.inf
    integer: bool = False
    open_low: bool = False
    open_high: bool = False
    note: str = ""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        if math.isinf(self.high):  # a lower bound only: "> 0", ">= 0"
            text = f"{'>' if self.open_low else '>='} {_fmt(self.low)}"
        else:
            kind = "an integer" if self.integer else "a finite number"
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            text = f"{kind} in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"
        return f"{text} ({self.note})" if self.note else text


POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    choices: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join('""' if c == "" else str(c) for c in self.choices)  # "" shown, not blank


@dataclass(frozen=True)
class ListOf:
    """A non-empty list; ``what`` names its items, each of which must pass ``item`` when given."""

    what: str
    item: Rule | None = None

    def accepts(self, value: Any) -> bool:
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            return False
        return self.item is None or all(self.item.accepts(v) for v in value)

    def describe(self) -> str:
        return f"a non-empty list of {self.what}" + (f" {self.item.describe()}" if self.item else "")


@dataclass(frozen=True)
class Check:
    """Any other test of one value, with the words for what it accepts."""

    test: Callable[[Any], bool]
    text: str

    def accepts(self, value: Any) -> bool:
        return bool(self.test(value))

    def describe(self) -> str:
        return self.text


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def option_name(key: str) -> str:
    """``n_train`` -> ``--n-train``: how argparse spells a destination on the command line."""
    return "--" + key.replace("_", "-")


def config_key(name: str) -> str:
    """``features.dtype`` -> ``key 'features.dtype'``: how messages name a config key."""
    return f"key {name!r}"


def check_options(
    values: Mapping[str, Any],
    rules: Rules,
    key: Callable[[str], str] = option_name,
) -> None:
    """Check each value that has a rule.

    Args:
        values: option values by destination name (``vars(args)``), any subset of ``rules``.
        rules: destination name -> rule.
        key: how the user spelled an option in messages (``--n-train``, ``key 'synth.n_train'``).

    Raises:
        ConfigError: naming the first bad option, its value and what is allowed.
    """
    for name, rule in rules.items():
        if name in values and values[name] is not None:
            values_of = values[name] if isinstance(values[name], list) else [values[name]]
            for value in values_of:
                if not rule.accepts(value):
                    raise ConfigError(f"{key(name)} must be {rule.describe()}, got {value!r}")


def check_section(cfg: Any, schema: type, prefix: str = "") -> None:
    """Check a loaded config against the ``RULES`` table of its dataclass and of each nested section.

    Args:
        cfg: the config (an OmegaConf object or a dataclass instance) of type ``schema``.
        schema: its dataclass; ``RULES`` (a class attribute, optional) maps field names to rules.
        prefix: dotted path of ``cfg`` in the whole config (``"features."``), for the messages.

    Raises:
        ConfigError: naming the first bad key (dotted), its value and what is allowed.
    """
    for name, rule in getattr(schema, "RULES", {}).items():
        value = getattr(cfg, name)
        if not rule.accepts(value):
            shown = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
            raise ConfigError(f"{config_key(prefix + name)} must be {rule.describe()}, got {shown!r}")
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[field.name]):
            check_section(getattr(cfg, field.name), hints[field.name], f"{prefix}{field.name}.")


def split_list(text: str, option: str) -> list[str]:
    """A comma-separated option value as its items; ConfigError naming ``option`` when it names none."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{option} {text!r} names nothing; give comma-separated values")
    return items


def check_unique(items: Sequence[Any], option: str) -> None:
    """ConfigError naming ``option`` when an item is given twice."""
    repeated = sorted({str(item) for item in items if list(items).count(item) > 1})
    if repeated:
        raise ConfigError(f"{option}: {', '.join(repeated)} given more than once")
