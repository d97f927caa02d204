"""Proportions: z-test vs statsmodels, exact path vs scipy/tea-tasting, Wilson/Newcombe vs statsmodels."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

from labkit.stats import ArmMoments, compare_proportions, wilson_interval
from labkit.stats.proportions import newcombe_interval, proportions_method


def _arm(k, n):
    return ArmMoments(n=n, sum=k, sum_sq=k)


LARGE = [  # (k_c, n_c, k_t, n_t)
    (81, 1000, 62, 996),
    (40, 400, 60, 410),
    (500, 5000, 45, 300),  # lopsided arms
    (120, 150, 100, 140),  # high rates: failures are the rare outcome
]
SMALL = [
    (3, 20, 8, 20),
    (0, 8, 4, 9),
    (29, 30, 25, 30),
    (12, 12, 12, 12),
    (2, 40, 9, 45),
    (10, 29, 15, 31),  # enough successes, too few customers
]


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), LARGE)
def test_z_test_matches_statsmodels(k_c, n_c, k_t, n_t, alpha):
    est = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t), alpha=alpha)
    _, p_pooled = proportions_ztest([k_t, k_c], [n_t, n_c])
    ci_low, ci_high = confint_proportions_2indep(
        k_t, n_t, k_c, n_c, method="wald", compare="diff", alpha=alpha
    )
    assert est.method == "z-test" and est.reason is None
    assert est.effect == pytest.approx(k_t / n_t - k_c / n_c, rel=1e-12)
    assert est.p_value == pytest.approx(p_pooled, rel=1e-6)
    assert est.ci_low == pytest.approx(ci_low, rel=1e-6)
    assert est.ci_high == pytest.approx(ci_high, rel=1e-6)
    unpooled = math.sqrt(k_c / n_c * (1 - k_c / n_c) / n_c + k_t / n_t * (1 - k_t / n_t) / n_t)
    assert est.se == pytest.approx(unpooled, rel=1e-9)


@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), LARGE)
def test_z_test_p_value_matches_tea_tasting(k_c, n_c, k_t, n_t):
    tt = pytest.importorskip("tea_tasting")
    from tea_tasting.aggr import Aggregates

    aggr = lambda k, n: Aggregates(count_=n, mean_={"y": k / n})  # noqa: E731
    ref = tt.Proportion("y", method="norm", correction=False, equal_var=True).analyze_aggregates(
        aggr(k_c, n_c), aggr(k_t, n_t)
    )
    assert compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t)).p_value == pytest.approx(ref.pvalue, rel=1e-6)


@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), LARGE)
def test_proportion_lift_se_matches_gbstats(k_c, n_c, k_t, n_t):
    pytest.importorskip("gbstats")
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import ProportionStatistic

    est = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t))
    ref = TwoSidedTTest(
        ProportionStatistic(n=n_c, sum=k_c),
        ProportionStatistic(n=n_t, sum=k_t),
        FrequentistConfig(difference_type="relative"),
    )
    assert est.lift == pytest.approx(ref.point_estimate, rel=1e-9)
    # gbstats puts a Welch t on it; the variance (hence se) is the crit-free part to compare
    assert est.lift_se == pytest.approx(math.sqrt(ref.variance), rel=1e-9)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), SMALL)
def test_small_counts_use_boschloo_and_newcombe(k_c, n_c, k_t, n_t, alpha):
    est = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t), alpha=alpha)
    # rows = outcome, columns = arm, here control first: the two-sided test does not care
    ref_p = stats.boschloo_exact([[k_c, k_t], [n_c - k_c, n_t - k_t]], alternative="two-sided").pvalue
    ci_low, ci_high = confint_proportions_2indep(
        k_t, n_t, k_c, n_c, method="newcomb", compare="diff", alpha=alpha
    )
    assert est.method == "boschloo+newcombe"
    assert est.p_value == pytest.approx(min(ref_p, 1.0), rel=1e-6)
    assert est.ci_low == pytest.approx(ci_low, rel=1e-6, abs=1e-12)
    assert est.ci_high == pytest.approx(ci_high, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), SMALL[:3])
def test_boschloo_p_value_matches_tea_tasting(k_c, n_c, k_t, n_t):
    tt = pytest.importorskip("tea_tasting")
    from tea_tasting.aggr import Aggregates

    aggr = lambda k, n: Aggregates(count_=n, mean_={"y": k / n})  # noqa: E731
    ref = tt.Proportion("y", method="boschloo").analyze_aggregates(aggr(k_c, n_c), aggr(k_t, n_t))
    assert compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t)).p_value == pytest.approx(ref.pvalue, rel=1e-6)


def test_rare_event_in_large_arms_uses_fisher():
    k_c, n_c, k_t, n_t = 3, 2000, 11, 2000
    est = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t))
    ci_low, ci_high = confint_proportions_2indep(k_t, n_t, k_c, n_c, method="newcomb", compare="diff")
    assert est.method == "fisher+newcombe"
    assert est.p_value == pytest.approx(
        stats.fisher_exact([[k_t, k_c], [n_t - k_t, n_c - k_c]]).pvalue, rel=1e-6
    )
    assert (est.ci_low, est.ci_high) == (pytest.approx(ci_low, rel=1e-6), pytest.approx(ci_high, rel=1e-6))


@pytest.mark.parametrize(
    ("k_c", "n_c", "k_t", "n_t", "method"),
    [
        (10, 30, 10, 30, "z-test"),  # exactly at every threshold
        (9, 30, 10, 30, "boschloo+newcombe"),  # 9 successes
        (10, 30, 21, 30, "boschloo+newcombe"),  # 9 failures
        (15, 29, 15, 30, "boschloo+newcombe"),  # 29 customers
        (9, 100, 50, 100, "fisher+newcombe"),  # 100 · 100 tables: too many for Boschloo
        (9, 50, 50, 50, "boschloo+newcombe"),  # 50 · 50 = 2500: still Boschloo
    ],
)
def test_switching_rule(k_c, n_c, k_t, n_t, method):
    assert proportions_method(k_c, n_c, k_t, n_t) == method
    assert compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t)).method == method


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
@pytest.mark.parametrize(("k", "n"), [(0, 5), (5, 5), (1, 1), (3, 17), (40, 400), (999, 1000)])
def test_wilson_interval_matches_statsmodels(k, n, alpha):
    low, high = wilson_interval(k, n, alpha)
    ref_low, ref_high = proportion_confint(k, n, alpha=alpha, method="wilson")
    assert low == pytest.approx(ref_low, rel=1e-9, abs=1e-15)
    assert high == pytest.approx(ref_high, rel=1e-9, abs=1e-15)
    assert 0.0 <= low <= k / n <= high <= 1.0


@pytest.mark.parametrize(("k", "n", "message"), [(6, 5, "between 0 and n=5"), (1, 0, "n must be positive")])
def test_wilson_bad_input_raises(k, n, message):
    with pytest.raises(ValueError, match=message):
        wilson_interval(k, n)


@pytest.mark.parametrize(("successes", "message"), [(11, "between 0 and n=10"), (2.5, "whole number")])
def test_impossible_success_counts_raise(successes, message):
    with pytest.raises(ValueError, match=rf"control: successes \(sum\) must be a {message}|{message}"):
        compare_proportions(ArmMoments(n=10, sum=successes, sum_sq=successes), _arm(3, 10))


# --- degenerate data ---------------------------------------------------------------------------------


def test_empty_arm():
    est = compare_proportions(_arm(0, 0), _arm(3, 10))
    assert est.reason == "empty_arm"
    assert (est.effect, est.p_value, est.mean_treatment) == (None, None, 0.3)


def test_no_successes_in_control_gives_an_exact_test_but_no_lift():
    est = compare_proportions(_arm(0, 20), _arm(6, 20))
    assert est.reason == "zero_control_mean"
    assert est.p_value == pytest.approx(stats.boschloo_exact([[6, 0], [14, 20]]).pvalue, rel=1e-6)
    assert est.ci_low > 0
    assert (est.lift, est.lift_ci_low) == (None, None)


def test_no_successes_anywhere():
    est = compare_proportions(_arm(0, 15), _arm(0, 12))
    assert est.reason == "zero_control_mean"
    assert (est.effect, est.p_value, est.se) == (0.0, 1.0, None)
    assert est.ci_low < 0 < est.ci_high


def test_everyone_converts_in_both_arms():
    est = compare_proportions(_arm(12, 12), _arm(9, 9))
    assert est.reason is None
    assert (est.effect, est.lift, est.p_value, est.se) == (0.0, 0.0, 1.0, None)
    # a zero-width lift interval would claim certainty from 21 customers
    assert (est.lift_ci_low, est.lift_ci_high) == (None, None)


# --- simulation and exact operating characteristics --------------------------------------------------


def _binomial_bounds(reps, rate):
    return stats.binom.interval(0.9999, reps, rate)


def test_z_test_aa_false_positive_rate():
    alpha, reps, n, rate = 0.05, 4000, 500, 0.12
    rng = np.random.default_rng(11)
    k_c, k_t = rng.binomial(n, rate, reps), rng.binomial(n, rate, reps)
    estimates = [compare_proportions(_arm(a, n), _arm(b, n), alpha=alpha) for a, b in zip(k_c, k_t)]
    assert {e.method for e in estimates} == {"z-test"}
    hits = sum(e.p_value < alpha for e in estimates)
    low, high = _binomial_bounds(reps, alpha)
    assert low <= hits <= high, f"A/A: {hits}/{reps} at alpha={alpha}; 99.99% bound [{low}, {high}]"


def test_z_interval_covers_the_true_difference():
    level, reps, n, p_c, p_t = 0.95, 4000, 600, 0.10, 0.14
    rng = np.random.default_rng(12)
    k_c, k_t = rng.binomial(n, p_c, reps), rng.binomial(n, p_t, reps)
    estimates = [compare_proportions(_arm(a, n), _arm(b, n), alpha=1 - level) for a, b in zip(k_c, k_t)]
    hits = sum(e.ci_low <= p_t - p_c <= e.ci_high for e in estimates)
    lift_hits = sum(e.lift_ci_low <= p_t / p_c - 1 <= e.lift_ci_high for e in estimates)
    low, high = _binomial_bounds(reps, level)
    assert low <= hits <= high, f"coverage {hits}/{reps}; 99.99% bound [{low}, {high}]"
    assert low <= lift_hits <= high, f"lift coverage {lift_hits}/{reps}; 99.99% bound [{low}, {high}]"


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_exact_path_size_never_exceeds_alpha(rate):
    # no simulation needed: enumerate every outcome of two arms of 5 and add up the rejection mass
    alpha, n = 0.05, 5
    pmf = stats.binom.pmf(np.arange(n + 1), n, rate)
    size = sum(
        pmf[a] * pmf[b]
        for a in range(n + 1)
        for b in range(n + 1)
        if compare_proportions(_arm(a, n), _arm(b, n), alpha=alpha).p_value < alpha
    )
    assert size <= alpha, f"exact size {size:.4f} at p={rate}, n={n} per arm exceeds alpha={alpha}"


@pytest.mark.parametrize(("p_c", "p_t"), [(0.1, 0.1), (0.05, 0.3), (0.5, 0.6)])
def test_newcombe_exact_coverage_is_close_to_nominal(p_c, p_t):
    # exact coverage by enumeration, n = 20 per arm; Newcombe (1998) reports minimum coverage ~0.93
    n, level = 20, 0.95
    pmf_c = stats.binom.pmf(np.arange(n + 1), n, p_c)
    pmf_t = stats.binom.pmf(np.arange(n + 1), n, p_t)
    coverage = 0.0
    for a in range(n + 1):
        for b in range(n + 1):
            low, high = newcombe_interval(a, n, b, n, 1 - level)
            if low <= p_t - p_c <= high:
                coverage += pmf_c[a] * pmf_t[b]
    assert 0.93 <= coverage <= 0.99, f"Newcombe coverage {coverage:.4f} at p_c={p_c}, p_t={p_t}, n={n}"


@pytest.mark.slow
def test_exact_path_aa_false_positive_rate_by_simulation():
    alpha, reps, n, rate = 0.05, 400, 25, 0.15
    rng = np.random.default_rng(13)
    k_c, k_t = rng.binomial(n, rate, reps), rng.binomial(n, rate, reps)
    hits = sum(
        compare_proportions(_arm(a, n), _arm(b, n), alpha=alpha).p_value < alpha for a, b in zip(k_c, k_t)
    )
    # exact tests are conservative: only the upper bound matters
    _, high = _binomial_bounds(reps, alpha)
    assert hits <= high, f"A/A exact: {hits}/{reps} at alpha={alpha}; 99.99% upper bound {high}"
