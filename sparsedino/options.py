"""Command-line options checked against a table of rules, before any work: one style for every command.

argparse turns each option's text into its type (``--clips abc`` is argparse's own one-line error); the
values are then checked here, inside :func:`sparsedino.errors.run_command`, so that a bad one is a
:class:`~sparsedino.config.ConfigError` naming the option and its allowed range (exit code 2), never a
traceback minutes later. Every command states its options' rules in one table next to its parser::

    RULES = {"clips": Range(1, MAX_COUNT, integer=True), "clutter": Range(0, 100)}
    check_options(vars(args), RULES, option_name)

NaN and infinity fail every :class:`Range` (a bound of ``inf`` is never reached); bools are not numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sparsedino.config import ConfigError

MAX_COUNT = 2**31 - 1  # counts of steps, images, frames, repeats: nothing meaningful needs more than 32 bits
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Range:
    """A finite number (an integer if ``integer``) in ``[low, high]`` (``(low, high]`` if ``open_low``)."""

    low: float
    high: float
    integer: bool = False
    open_low: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        left = "(" if self.open_low else "["
        return f"{kind} in {left}{_fmt(self.low)}, {_fmt(self.high)}]"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    choices: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def option_name(key: str) -> str:
    """``n_train`` -> ``--n-train``: how argparse spells a destination on the command line."""
    return "--" + key.replace("_", "-")


def check_options(
    values: Mapping[str, Any],
    rules: Mapping[str, Range | OneOf],
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
