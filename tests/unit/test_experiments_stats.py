"""experiments/stats.py against scipy and hand-computed values: paired t, TOST, Holm, verdicts, detectable effect."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from mimic_learn.experiments.stats import (
    EQUIVALENCE_MARGINS,
    compare_arms,
    detectable_effect,
    holm,
    margin_for,
    mean_sd,
    paired_t,
)


def _t2_cdf(t: float) -> float:
    """Closed-form CDF of Student's t with 2 degrees of freedom."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_paired_t_matches_scipy_and_a_hand_computed_case():
    arm, base = {0: 0.90, 1: 0.80, 2: 0.85}, {0: 0.85, 1: 0.80, 2: 0.80, 3: 0.10}  # seed 3 is unpaired
    c = paired_t(arm, base, margin=0.01)
    ref = stats.ttest_rel([0.90, 0.80, 0.85], [0.85, 0.80, 0.80])
    assert c.n == 3 and c.p == pytest.approx(ref.pvalue, rel=1e-12)
    # by hand: diffs 0.05, 0, 0.05 -> mean 1/30, sd 0.0288675, t = 2.0 on 2 df
    assert c.mean == pytest.approx(1 / 30) and c.sd == pytest.approx(0.028867513459481287)
    assert c.p == pytest.approx(2 * (1 - _t2_cdf(2.0)), abs=1e-9)  # 0.18350
    half = 4.302652729911275 * c.sd / math.sqrt(3)  # t(0.975, 2)
    assert (c.low, c.high) == pytest.approx((c.mean - half, c.mean + half))


def test_tost_by_hand():
    # diffs 0.001, 0.003, -0.001: mean 0.001, se 0.002/sqrt(3); margin 0.003
    c = paired_t({0: 0.501, 1: 0.503, 2: 0.499}, {0: 0.5, 1: 0.5, 2: 0.5}, margin=0.003)
    se = 0.002 / math.sqrt(3)
    p_low = 1 - _t2_cdf((0.001 + 0.003) / se)  # 0.0371
    p_high = _t2_cdf((0.001 - 0.003) / se)  # 0.1127
    assert c.p_tost == pytest.approx(max(p_low, p_high), abs=1e-9)
    assert c.p_tost == pytest.approx(0.11270, abs=1e-4)


def test_holm_on_a_textbook_example():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": float("nan")})
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert adjusted["d"] == pytest.approx(0.02) and adjusted["a"] == pytest.approx(0.03)
    assert adjusted["c"] == pytest.approx(0.06) and adjusted["b"] == pytest.approx(0.06)
    assert math.isnan(adjusted["e"])
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}  # capped at 1


def test_verdicts_per_arm():
    seeds = range(10)
    base = {s: 0.80 + 0.01 * (s % 3) for s in seeds}
    noise = [0.001, -0.001, 0.0005, -0.0005, 0.0, 0.001, -0.001, 0.0002, -0.0002, 0.0]
    arms = {
        "better": {s: base[s] + 0.03 + noise[s] for s in seeds},
        "worse": {s: base[s] - 0.03 + noise[s] for s in seeds},
        "same": {s: base[s] + noise[s] for s in seeds},
        "noisy": {s: base[s] + (0.05 if s % 2 else -0.05) for s in seeds},
        "one_seed": {0: 0.9},
    }
    out = compare_arms(arms, base, regime="100")
    assert out["better"].verdict == "better" and out["worse"].verdict == "worse"
    assert out["same"].verdict == "equivalent within ±1 pt"
    assert out["noisy"].verdict == "inconclusive"
    assert out["one_seed"].verdict == "inconclusive (n=1)"
    # Holm over the four arms with >= 2 seeds: every adjusted p is at least the raw one
    assert all(c.p_holm >= c.p for k, c in out.items() if k != "one_seed")
    # the interval is the simultaneous 1 - 0.05/4 one
    t = stats.t.ppf(1 - 0.05 / 8, 9)
    c = out["better"]
    assert c.high - c.mean == pytest.approx(t * c.sd / math.sqrt(10))


def test_identical_seeds_are_equivalent_and_a_constant_shift_is_a_difference():
    base = {0: 0.5, 1: 0.6, 2: 0.7}
    assert compare_arms({"copy": dict(base)}, base, "600")["copy"].verdict == "equivalent within ±0.3 pt"
    shifted = {s: v + 0.01 for s, v in base.items()}
    assert compare_arms({"up": shifted}, base, "600")["up"].verdict == "better"


def test_margins_table_and_sd():
    assert margin_for("100") == EQUIVALENCE_MARGINS["100"] == 0.01 and margin_for("600") == 0.003
    assert margin_for("12345") == 0.01  # the default
    m, sd = mean_sd([1.0, 2.0, 3.0])
    assert (m, sd) == (2.0, 1.0)  # sample SD (ddof=1)


def test_detectable_effect_shrinks_with_seeds():
    three, ten = detectable_effect(0.01, 3), detectable_effect(0.01, 10)
    assert three == pytest.approx((4.302652729911275 + stats.t.ppf(0.8, 2)) * 0.01 / math.sqrt(3))
    assert ten < three / 2
    assert math.isnan(detectable_effect(0.01, 1))
