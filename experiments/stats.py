"""The statistics every reproduction report uses: paired differences vs the baseline arm, Holm's correction
across arms, an equivalence test (TOST) with a margin stated per regime, and one verdict per arm.

    from mimic_learn.experiments.stats import compare_arms
    verdicts = compare_arms({"llm": {0: 0.81, 1: 0.80, 2: 0.83}}, {0: 0.80, 1: 0.81, 2: 0.82}, regime="100")
    verdicts["llm"].verdict          # "equivalent within ±1 pt", "better", "worse" or "inconclusive"

Rules (what a report states under its tables):
- Δ = arm − baseline on the seeds both have (same subset, initial weights and seed), mean over seeds.
- Difference test: two-sided paired t test (``scipy.stats.ttest_rel``); p values are Holm-adjusted across the
  arms compared with one baseline in one regime. The interval shown is the simultaneous one at level
  1 − α/m (Bonferroni over the m arms), which is never narrower than what Holm's step-down would allow.
- Equivalence: two one-sided t tests against ±margin (``EQUIVALENCE_MARGINS``), Holm-adjusted the same way.
- Verdict: "better"/"worse" when the adjusted difference p < α; else "equivalent within ±m" when the adjusted
  TOST p < α; else "inconclusive". Fewer than two paired seeds: "inconclusive (n=1)".
- Spread is the sample standard deviation over seeds (labelled SD), not a standard error.

``paired_diff`` is the simpler paired Δ with its unadjusted 95% t interval that sweep reports show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05

# Equivalence margins in accuracy (fraction; 0.01 = 1 point), per regime: the smallest difference we would
# call practically relevant there. One table; reports print it. Regimes not listed use DEFAULT_MARGIN.
EQUIVALENCE_MARGINS: dict[str, float] = {
    "10": 0.02,
    "100": 0.01,
    "600": 0.003,
    "6000": 0.002,
    "full": 0.001,
    "2000": 0.005,  # the blog's MNIST-32 proxy
}
DEFAULT_MARGIN = 0.01


def margin_for(regime: str) -> float:
    """The equivalence margin (accuracy fraction) of ``regime``."""
    return EQUIVALENCE_MARGINS.get(str(regime), DEFAULT_MARGIN)


@dataclass
class PairedComparison:
    """One arm against the baseline in one regime."""

    n: int
    mean: float  # mean of the paired differences (arm − baseline)
    sd: float  # SD of the paired differences
    low: float  # simultaneous interval (1 − α/m), see the module docstring
    high: float
    p: float  # two-sided paired t test, unadjusted
    p_tost: float  # TOST against ±margin, unadjusted
    margin: float
    p_holm: float = float("nan")
    p_tost_holm: float = float("nan")
    verdict: str = "inconclusive"
    diffs: tuple[float, ...] = ()


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof=1; 0.0 for one value; nan for none)."""
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt_mean_sd(values: list[float], scale: float = 1.0) -> str:
    """``mean ± SD`` as a report cell: 4 decimals, or 2 when ``scale`` is not 1 (percent); "—" for none."""
    m, s = mean_sd([v * scale for v in values])
    return "—" if math.isnan(m) else f"{m:.4f} ± {s:.4f}" if scale == 1.0 else f"{m:.2f} ± {s:.2f}"


def paired_diff(arm: dict[int, float], base: dict[int, float]) -> tuple[float, float, int]:
    """Mean difference arm - baseline over the seeds both have, and the half-width of its 95% t interval
    (``paired_t``'s, exact t quantile for any n); (nan, nan, 0) without a shared seed, half nan with one."""
    if not set(arm) & set(base):
        return float("nan"), float("nan"), 0
    c = paired_t(arm, base, margin=0.0)
    return c.mean, (c.high - c.low) / 2, c.n


def paired_t(arm: dict[int, float], base: dict[int, float], margin: float, level: float = 1 - ALPHA):
    """Paired t test, its ``level`` interval and TOST against ±``margin`` on the seeds both dicts have."""
    seeds = sorted(set(arm) & set(base))
    diffs = np.asarray([arm[s] - base[s] for s in seeds], dtype=float)
    n = diffs.size
    if n == 0:
        raise ValueError("arm and baseline share no seed")
    mean = float(diffs.mean())
    if n == 1:
        nan = float("nan")
        return PairedComparison(1, mean, nan, nan, nan, nan, nan, margin, diffs=tuple(diffs))
    sd = float(diffs.std(ddof=1))
    se = sd / math.sqrt(n)
    # every seed moved by the same amount (to rounding): the difference is known, not estimated
    if sd <= 1e-12:
        p = 1.0 if mean == 0.0 else 0.0
        p_tost = 0.0 if abs(mean) < margin else 1.0
        return PairedComparison(n, mean, 0.0, mean, mean, p, p_tost, margin, diffs=tuple(diffs))
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    half = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * se
    # TOST: H0 Δ <= −m (reject when t_low is large) and H0 Δ >= +m (reject when t_high is very negative)
    p_low = float(stats.t.sf((mean + margin) / se, n - 1))
    p_high = float(stats.t.cdf((mean - margin) / se, n - 1))
    return PairedComparison(
        n, mean, sd, mean - half, mean + half, p, max(p_low, p_high), margin, diffs=tuple(diffs)
    )


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p values (monotone, capped at 1); nan stays nan and is not counted."""
    valid = sorted((p, k) for k, p in pvalues.items() if not math.isnan(p))
    m = len(valid)
    out = {k: float("nan") for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(valid):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def verdict(c: PairedComparison, alpha: float = ALPHA, scale: float = 100.0) -> str:
    """The sentence a report prints for one comparison (margin in points when ``scale`` is 100)."""
    if c.n < 2:
        return f"inconclusive (n={c.n})"
    if c.p_holm < alpha:
        return "better" if c.mean > 0 else "worse"
    if c.p_tost_holm < alpha:
        return f"equivalent within ±{c.margin * scale:g} pt"
    return "inconclusive"


def compare_arms(
    arms: dict[str, dict[int, float]], base: dict[int, float], regime: str, alpha: float = ALPHA
) -> dict[str, PairedComparison]:
    """Every arm in ``arms`` (not the baseline) against ``base``: Holm across the arms, one verdict each.
    Arms sharing no seed with the baseline are left out."""
    margin = margin_for(regime)
    comparable = {k: v for k, v in arms.items() if set(v) & set(base)}
    m = max(1, sum(1 for v in comparable.values() if len(set(v) & set(base)) > 1))
    out = {k: paired_t(v, base, margin, level=1 - alpha / m) for k, v in comparable.items()}
    p_adj = holm({k: c.p for k, c in out.items()})
    tost_adj = holm({k: c.p_tost for k, c in out.items()})
    for k, c in out.items():
        c.p_holm, c.p_tost_holm = p_adj[k], tost_adj[k]
        c.verdict = verdict(c, alpha)
    return out


def detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true mean paired difference a two-sided paired t test at ``alpha`` detects with ``power``
    (normal-shift approximation with t quantiles): (t_{1−α/2} + t_{power}) · sd / √n."""
    if n < 2 or math.isnan(sd):
        return float("nan")
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / math.sqrt(n))
