"""Paired statistics of the reproduce report, against published tables and a hand-computed example."""

import math

import pytest

from sparsedino.pipeline.statistics import mean_std, paired_comparison, t_cdf, t_quantile

# Student t quantiles from the standard table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T_TABLE = {(0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 4): 2.776, (0.975, 9): 2.262, (0.975, 30): 2.042,
           (0.80, 2): 1.061, (0.80, 4): 0.941, (0.95, 5): 2.015, (0.995, 3): 5.841}  # fmt: skip


@pytest.mark.parametrize(("p", "df"), list(T_TABLE))
def test_t_quantile_matches_the_published_table(p, df):
    assert t_quantile(p, df) == pytest.approx(T_TABLE[(p, df)], abs=6e-4)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
    assert t_quantile(1 - p, df) == pytest.approx(-t_quantile(p, df))


def test_t_cdf_reduces_to_closed_forms():
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_paired_comparison_hand_computed():
    # differences 1, 2, 2: mean 5/3, s = sqrt(1/3), se = 1/3; t(0.975, 2) = 4.3027, t(0.8, 2) = 1.0607
    out = paired_comparison([10.0, 20.0, 30.0], [11.0, 22.0, 32.0])
    assert out["differences"] == [1.0, 2.0, 2.0]
    assert out["mean"] == pytest.approx(5 / 3)
    assert out["std"] == pytest.approx(math.sqrt(1 / 3))
    assert out["ci_low"] == pytest.approx(5 / 3 - 4.30265 / 3, abs=1e-4)
    assert out["ci_high"] == pytest.approx(5 / 3 + 4.30265 / 3, abs=1e-4)
    assert out["mdd"] == pytest.approx((4.30265 + 1.06066) / 3, abs=1e-4)
    assert out["significant"] is True


def test_paired_comparison_is_paired_not_pooled():
    # large seed-to-seed spread, constant per-seed gain: the paired interval is tight around +1
    out = paired_comparison([10.0, 50.0, 90.0, 30.0], [11.0, 51.0, 91.0, 31.0])
    assert out["std"] == pytest.approx(0.0, abs=1e-12)
    assert out["ci_low"] == pytest.approx(1.0) and out["ci_high"] == pytest.approx(1.0)
    noisy = paired_comparison([0.0, 0.0, 0.0], [1.0, -1.0, 0.5])
    assert noisy["significant"] is False and noisy["ci_low"] < 0 < noisy["ci_high"]


def test_one_seed_gives_a_difference_but_no_interval_and_mismatches_raise():
    out = paired_comparison([3.0], [5.0])
    assert out["mean"] == 2.0 and out["std"] is None and out["ci_low"] is None and out["mdd"] is None
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([1.0, 2.0], [1.0])
    assert mean_std([2.0, 4.0]) == (3.0, pytest.approx(math.sqrt(2)))


def test_positive_control_summary_by_hand():
    from sparsedino.pipeline.evidence import positive_control_summary

    points = [{"amount": 0.0, "miou": 0.60, "acc_bg": 0.10, "diffusion_index": 0.0},
              {"amount": 0.5, "miou": 0.50, "acc_bg": 0.20, "diffusion_index": 0.5},
              {"amount": 0.25, "miou": 0.55, "acc_bg": 0.15, "diffusion_index": 0.25}]  # fmt: skip
    out = positive_control_summary(points, probe_noise=0.5)
    assert out["miou_falls"] and out["acc_bg_rises"] and out["responds"]
    assert out["largest_drop"] == pytest.approx(10.0) and out["drop_exceeds_probe_noise"]
    assert out["miou_drop_per_index"] == pytest.approx(20.0)  # 10 points per 0.5 of index
    flat = positive_control_summary([{**p, "miou": 0.6} for p in points], probe_noise=0.5)
    assert not flat["miou_falls"] and not flat["responds"] and not flat["drop_exceeds_probe_noise"]
