"""The attention normaliser as a value: parsed once from any documented spelling into a :class:`Normalizer`.

==========================================  =============  =====  ===========  ==================================
spellings accepted (case-insensitive)       ``.name``      alpha  ``.kind``    meaning
==========================================  =============  =====  ===========  ==================================
"softmax", 1.0, "1"                         "softmax"      1.0    "softmax"    dense softmax (SDPA when fused)
"entmax15", "entmax-1.5", "entmax1.5",      "entmax15"     1.5    "entmax15"   exact entmax-1.5 (sort-free
"entmax_15", "1.5", 1.5                                                        solver)
"sparsemax", "entmax2", 2.0                 "sparsemax"    2.0    "sparsemax"  exact sparsemax
"entmax1.25", "entmax-1.25", "1.25", 1.25   "entmax1.25"   1.25   "bisect"     alpha-entmax by bisection, any
                                                                               alpha in (1, 1e6]
==========================================  =============  =====  ===========  ==================================

``.name`` is the canonical spelling: what checkpoints, configs written by the trainer, reports and layers
store and compare. A value is parsed once where a user gives it (config load, CLI parse, the public
functions and constructors of :mod:`sparsedino.attention`) with :func:`parse_normalizer`; every internal
function below them takes the :class:`Normalizer`. The one exception is the boundary TorchScript and
torch.fx see: a layer keeps the canonical name (a ``str``) for them, and its fx leaf functions receive
that name (TorchScript cannot compile the dataclass; an fx graph stores the name as a constant).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsedino.attention.entmax import entmax15, entmax_bisect, sparsemax

__all__ = [
    "Normalizer",
    "canonical_alpha",
    "normalize",
    "normalizer_name",
    "parse_normalizer",
    "validate_normalizer",
]

_ALIASES = {
    "softmax": "softmax",
    "entmax15": "entmax15",
    "entmax1.5": "entmax15",
    "entmax-1.5": "entmax15",
    "entmax_15": "entmax15",
    "sparsemax": "sparsemax",
    "entmax2": "sparsemax",
    "entmax2.0": "sparsemax",
}
_KINDS = {"softmax": "softmax", "entmax15": "entmax15", "sparsemax": "sparsemax"}


@dataclass(frozen=True)
class Normalizer:
    """A parsed attention normaliser (immutable; build it with :func:`parse_normalizer`).

    Attributes:
        name: Canonical spelling ("softmax", "entmax15", "sparsemax", "entmax1.25", ...).
        alpha: entmax alpha (1.0 = softmax, 2.0 = sparsemax).
        kind: Kernel family: "softmax", "entmax15", "sparsemax" or "bisect" (any other alpha).
    """

    name: str
    alpha: float
    kind: str

    @property
    def is_softmax(self) -> bool:
        """Whether this is dense softmax (the one place the question is answered)."""
        return self.kind == "softmax"

    def __str__(self) -> str:
        return self.name


# Above it the bisection's (alpha - 1) * score overflows float32 for ordinary scores (NaN maps from about
# 1e38); every alpha past ~10 already gives the argmax at float32 precision, so nothing is lost.
MAX_ALPHA = 1e6


def _from_alpha(alpha: float, original: object) -> str:
    if not math.isfinite(alpha) or alpha < 1.0 or alpha > MAX_ALPHA:
        raise ValueError(
            f"invalid attention normalizer {original!r}: entmax alpha must be in [1, {MAX_ALPHA:g}] (1 = softmax)"
        )
    if alpha == 1.0:
        return "softmax"
    if alpha == 1.5:
        return "entmax15"
    if alpha == 2.0:
        return "sparsemax"
    return f"entmax{alpha:g}"


def _canonical(value: str | float) -> str:
    if isinstance(value, bool):
        raise ValueError(f"invalid attention normalizer {value!r}")
    if isinstance(value, (int, float)):
        return _from_alpha(float(value), value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _ALIASES:
            return _ALIASES[key]
        number = key[len("entmax") :].lstrip("-_") if key.startswith("entmax") else key
        try:
            alpha = float(number)
        except ValueError:
            alpha = None
        if alpha is not None:
            return _from_alpha(alpha, value)
    raise ValueError(
        f"invalid attention normalizer {value!r}: expected 'softmax', 'entmax15', 'sparsemax', "
        "'entmax<alpha>' (e.g. 'entmax1.25'), or an alpha >= 1 (e.g. 1.5)"
    )


@functools.lru_cache(maxsize=256, typed=True)
def _parse(value: str | float) -> Normalizer:
    name = _canonical(value)
    return Normalizer(name, canonical_alpha(name), _KINDS.get(name, "bisect"))


def parse_normalizer(value: str | float | Normalizer) -> Normalizer:
    """The :class:`Normalizer` of any documented spelling, an alpha, or a :class:`Normalizer` (returned as is).

    Raises:
        ValueError: naming the value if it is not a known normaliser or a valid alpha.
    """
    if isinstance(value, Normalizer):
        return value
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"invalid attention normalizer {value!r}")
    return _parse(value)


def normalizer_name(value: str | float | Normalizer) -> str:
    """Canonical name of a normaliser ("softmax", "entmax15", "sparsemax", "entmax1.25", ...).

    Also importable as ``validate_normalizer`` (the same function: it checks the value and returns its name).

    Raises:
        ValueError: naming the value if it is not a known normaliser or a valid alpha.
    """
    return parse_normalizer(value).name


validate_normalizer = normalizer_name  # (a second name callers use when they only check the value)


def check_scale(scale: float | None) -> float | None:
    """A score scale as a float, checked: None (the layer's ``head_dim ** -0.5``) or a finite number > 0.

    Entmax is not scale invariant (the scale sets how sparse the attention is); 0 would make every row
    uniform, a negative scale would attend to the least similar keys, and NaN / inf give NaN outputs.

    Raises:
        TypeError: ``scale`` is not a number (a bool or a string included).
        ValueError: naming the value, if it is not finite and > 0.
    """
    if scale is None:
        return None
    if isinstance(scale, (bool, str)):
        raise TypeError(f"scale must be a finite number > 0 or None (head_dim ** -0.5), got {scale!r}")
    try:
        value = float(scale)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"scale must be a finite number > 0 or None (head_dim ** -0.5), got {scale!r}"
        ) from err
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale must be a finite number > 0 or None (head_dim ** -0.5), got {scale!r}")
    return value


def canonical_alpha(name: str) -> float:
    """The entmax alpha of a canonical name (as :func:`normalizer_name` returns), for the TorchScript path
    (which has the name, not the :class:`Normalizer`)."""
    if name == "softmax":
        return 1.0
    if name == "entmax15":
        return 1.5
    if name == "sparsemax":
        return 2.0
    return float(name[6:])  # "entmax<alpha>"


def normalize(scores: Tensor, normalizer: str | float | Normalizer, dim: int = -1) -> Tensor:
    """Apply ``normalizer`` along ``dim`` (differentiable)."""
    spec = parse_normalizer(normalizer)
    if spec.is_softmax:
        return torch.softmax(scores, dim=dim)
    if spec.kind == "entmax15":
        return entmax15(scores, dim=dim)
    if spec.kind == "sparsemax":
        return sparsemax(scores, dim=dim)
    return entmax_bisect(scores, alpha=spec.alpha, dim=dim)
