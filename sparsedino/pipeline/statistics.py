"""Statistics of a paired comparison over training seeds: what a difference between arms is worth.

Both arms of a seed share the initialisation and the data order, so the comparison is *paired*: the unit
of evidence is the per-seed difference ``d_s = arm_s - baseline_s``. With ``n`` seeds, mean ``d`` and sample
standard deviation ``s_d`` (ddof 1):

* 95% confidence interval of the mean difference: ``d +- t(0.975, n-1) * s_d / sqrt(n)``;
* minimum detectable difference (MDD) at significance ``alpha`` (two-sided) and power ``1 - beta``:
  ``(t(1 - alpha/2, n-1) + t(1 - beta, n-1)) * s_d / sqrt(n)``, the smallest true difference the design
  finds with that probability (the standard approximation for a paired t-test; Cohen 1988, ch. 2).

The Student-t quantile is computed here (no SciPy dependency): the t CDF through the regularised
incomplete beta function (continued fraction, Numerical Recipes 3rd ed. 6.4), inverted by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # odd step
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry otherwise
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`t_cdf`: the ``t`` with ``P(T <= t) = p`` (e.g. ``t_quantile(0.975, 2) = 4.303``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # bisection to float precision
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise_values(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "n", "values"}`` of the non-None values (mean/std None when there are none)."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean, std = mean_std(kept)
    return {"mean": mean, "std": std, "n": len(kept), "values": kept}


def format_mean_std(stat: dict, scale: float = 1.0, with_n: bool = True) -> str:
    """``"12.34 ± 0.56 (n=3)"`` for a :func:`summarise_values` dict (``n/a`` when empty)."""
    if stat["mean"] is None:
        return "n/a"
    text = f"{scale * stat['mean']:.2f}"
    if stat["std"] is not None:
        text += f" ± {scale * stat['std']:.2f}"
    return text + (f" (n={stat['n']})" if with_n and stat["n"] > 1 else "")


def paired_comparison(
    baseline: Sequence[float],
    arm: Sequence[float],
    confidence: float = 0.95,
    power: float = 0.8,
) -> dict:
    """Per-seed differences ``arm - baseline`` with their mean, CI and minimum detectable difference.

    Args:
        baseline: one value per seed (e.g. softmax mIoU), in seed order.
        arm: the other arm's values for the same seeds, same order.
        confidence: two-sided confidence level of the interval (also ``1 - alpha`` of the MDD).
        power: probability of detecting a true difference of size MDD.

    Returns:
        ``{"n", "differences", "mean", "std", "ci_low", "ci_high", "confidence", "mdd", "power",
        "significant"}``; ``std``, the interval and the MDD are None with fewer than 2 seeds, and
        ``significant`` says whether the interval excludes 0.
    """
    if len(baseline) != len(arm):
        raise ValueError(f"paired values need the same seeds: {len(baseline)} vs {len(arm)} values")
    if not baseline:
        raise ValueError("paired_comparison needs at least one seed")
    diffs = [b - a for a, b in zip(baseline, arm)]
    n = len(diffs)
    mean, std = mean_std(diffs)
    out = {"n": n, "differences": diffs, "mean": mean, "std": std, "confidence": confidence, "power": power,
           "ci_low": None, "ci_high": None, "mdd": None, "significant": None}  # fmt: skip
    if std is None:
        return out
    se = std / math.sqrt(n)
    t_ci = t_quantile(0.5 + confidence / 2.0, n - 1)
    out["ci_low"], out["ci_high"] = mean - t_ci * se, mean + t_ci * se
    out["mdd"] = (t_ci + t_quantile(power, n - 1)) * se
    out["significant"] = not out["ci_low"] <= 0.0 <= out["ci_high"]
    return out
