"""Names of the attention normalisers and their (probabilities, gradient) kernels.

A normaliser is given as a string or as the entmax ``alpha``:

==================  =====================  ==========================================
value               canonical name         meaning
==================  =====================  ==========================================
"softmax", 1.0      "softmax"              dense softmax (SDPA when fused)
"entmax15", 1.5     "entmax15"             exact entmax-1.5 (sort-free solver)
"sparsemax", 2.0    "sparsemax"            exact sparsemax
1.25, "entmax1.25"  "entmax1.25"           alpha-entmax by bisection, any alpha > 1
==================  =====================  ==========================================
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sparsedino.attention.entmax import (
    entmax15,
    entmax15_backward,
    entmax15_forward,
    entmax_bisect,
    sparsemax,
)

__all__ = [
    "canonical_alpha",
    "normalize",
    "normalize_scores",
    "normalizer_alpha",
    "normalizer_backward",
    "normalizer_name",
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


def _from_alpha(alpha: float, original: object) -> str:
    if not math.isfinite(alpha) or alpha < 1.0:
        raise ValueError(
            f"invalid attention normalizer {original!r}: entmax alpha must be >= 1 (1 = softmax)"
        )
    if alpha == 1.0:
        return "softmax"
    if alpha == 1.5:
        return "entmax15"
    if alpha == 2.0:
        return "sparsemax"
    return f"entmax{alpha:g}"


def normalizer_name(value: str | float) -> str:
    """Canonical name of a normaliser ("softmax", "entmax15", "sparsemax", "entmax1.25", ...).

    Raises:
        ValueError: naming the value if it is not a known normaliser or a valid alpha.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid attention normalizer {value!r}")
    if isinstance(value, (int, float)):
        return _from_alpha(float(value), value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _ALIASES:
            return _ALIASES[key]
        if key.startswith("entmax"):
            try:
                alpha = float(key[len("entmax") :].lstrip("-_"))
            except ValueError:
                alpha = None
            if alpha is not None:
                return _from_alpha(alpha, value)
    raise ValueError(
        f"invalid attention normalizer {value!r}: expected 'softmax', 'entmax15', 'sparsemax', "
        "'entmax<alpha>' (e.g. 'entmax1.25') or a float alpha >= 1"
    )


def validate_normalizer(value: str | float) -> str:
    """Check ``value`` names a normaliser; returns the canonical name (ValueError naming the value if not)."""
    return normalizer_name(value)


def normalizer_alpha(name: str | float) -> float:
    """The entmax alpha of a normaliser (1.0 for softmax)."""
    return canonical_alpha(normalizer_name(name))


def canonical_alpha(name: str) -> float:
    """The entmax alpha of a canonical name (as :func:`normalizer_name` returns); TorchScript-compatible."""
    if name == "softmax":
        return 1.0
    if name == "entmax15":
        return 1.5
    if name == "sparsemax":
        return 2.0
    return float(name[6:])  # "entmax<alpha>"


def normalize(scores: Tensor, name: str, dim: int = -1) -> Tensor:
    """Apply the (canonical) normaliser ``name`` along ``dim`` (differentiable)."""
    if name == "softmax":
        return torch.softmax(scores, dim=dim)
    if name == "entmax15":
        return entmax15(scores, dim=dim)
    if name == "sparsemax":
        return sparsemax(scores, dim=dim)
    return entmax_bisect(scores, alpha=normalizer_alpha(name), dim=dim)


def normalize_scores(
    scores: Tensor, name: str, scale: float, bias: Tensor | None, thresholds: Tensor | None = None
) -> Tensor:
    """Probabilities of ``scores * scale + bias`` along the last dim, without autograd (attention op).

    ``scores`` is a temporary the caller owns (overwritten). ``thresholds``: see ``entmax15_forward``.
    """
    if name == "entmax15":
        return entmax15_forward(scores, -1, scale, bias, inplace=True, thresholds=thresholds)
    scores = scores * scale if bias is None else scores * scale + bias
    with torch.no_grad():
        return normalize(scores, name)


def normalizer_backward(
    p: Tensor, grad: Tensor, name: str, dim: int = -1, scale: float = 1.0, inplace: bool = False
) -> Tensor:
    """Gradient w.r.t. the scores (times ``scale``) from the probabilities ``p`` only (attention op).

    Computed in float32 (float64 stays float64), returned in ``grad``'s dtype. ``inplace=True`` allows
    overwriting ``grad`` (a temporary the caller owns).
    """
    if name == "entmax15":
        return entmax15_backward(p, grad, dim, scale, inplace=inplace)
    out_dtype = grad.dtype
    compute = torch.float64 if grad.dtype == torch.float64 else torch.float32
    p, grad = p.to(compute), grad.to(compute)
    if name == "softmax":
        gp = grad * p
        return ((gp - p * gp.sum(dim, keepdim=True)) * scale).to(out_dtype)
    alpha = normalizer_alpha(name)
    # alpha-entmax (sparsemax at alpha=2): s = p^(2-alpha) on the support; ds = s*g - s*sum(s*g)/sum(s).
    s = torch.where(p > 0, p.clamp_min(1e-30).pow(2.0 - alpha), torch.zeros_like(p))
    sg = s * grad
    ds = (sg - s * sg.sum(dim, keepdim=True) / s.sum(dim, keepdim=True).clamp_min(1e-30)) * scale
    return ds.to(out_dtype)
