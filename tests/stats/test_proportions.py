"""Proportions: Wald z vs statsmodels, Barnard + its inversion vs scipy/tea-tasting/brute force, score vs
statsmodels, Wilson/Newcombe vs statsmodels; every interval agrees with its test."""

import math

import numpy as np
import pytest
from fieller_ref import fieller_lift
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint
from statsmodels.stats.proportion import test_proportions_2indep as sm_test_2indep

from labkit.stats import ArmMoments, compare_proportions, wilson_interval
from labkit.stats.proportions import _Exact, newcombe_interval, proportions_method


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
    # the unpooled (Wald) test and interval, a dual pair from one standard error
    est = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t), alpha=alpha)
    ref = sm_test_2indep(k_t, n_t, k_c, n_c, method="wald", compare="diff")
    ci_low, ci_high = confint_proportions_2indep(
        k_t, n_t, k_c, n_c, method="wald", compare="diff", alpha=alpha
    )
    assert est.method == "z-test" and est.reason is None
    assert est.effect == pytest.approx(k_t / n_t - k_c / n_c, rel=1e-12)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert est.ci_low == pytest.approx(ci_low, rel=1e-6)
    assert est.ci_high == pytest.approx(ci_high, rel=1e-6)
    unpooled = math.sqrt(k_c / n_c * (1 - k_c / n_c) / n_c + k_t / n_t * (1 - k_t / n_t) / n_t)
    assert est.se == pytest.approx(unpooled, rel=1e-9)
    # the lift interval is Fieller's with the same variances and normal critical value
    v_c, v_t = k_c / n_c * (1 - k_c / n_c) / n_c, k_t / n_t * (1 - k_t / n_t) / n_t
    low, high = fieller_lift(k_c / n_c, k_t / n_t, v_c, v_t, stats.norm.ppf(1 - alpha / 2))
    assert (est.lift_ci_low, est.lift_ci_high) == (
        pytest.approx(low, rel=1e-6),
        pytest.approx(high, rel=1e-6),
    )


@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), LARGE)
def test_z_test_p_value_matches_tea_tasting(k_c, n_c, k_t, n_t):
    tt = pytest.importorskip("tea_tasting")
    from tea_tasting.aggr import Aggregates

    aggr = lambda k, n: Aggregates(count_=n, mean_={"y": k / n})  # noqa: E731
    ref = tt.Proportion("y", method="norm", correction=False, equal_var=False).analyze_aggregates(
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


def _barnard_reference(k_c, n_c, k_t, n_t, points=4001):
    """Barnard's exact unconditional p-value with the pooled z statistic, by brute force: every table, the
    nuisance proportion on a dense grid (independent of labkit's coarse-to-fine search)."""
    x_c, x_t = np.meshgrid(np.arange(n_c + 1), np.arange(n_t + 1), indexing="ij")
    pooled = (x_c + x_t) / (n_c + n_t)
    var = pooled * (1 - pooled) * (1 / n_c + 1 / n_t)
    diff = x_t / n_t - x_c / n_c
    z = np.where(var > 0, np.abs(diff) / np.sqrt(np.where(var > 0, var, 1)), 0.0)
    extreme = (z >= z[k_c, k_t] - 1e-9 * max(1.0, z[k_c, k_t])).astype(float)
    grid = np.linspace(0, 1, points)[:, None]
    pmf_c = stats.binom.pmf(np.arange(n_c + 1)[None, :], n_c, grid)
    pmf_t = stats.binom.pmf(np.arange(n_t + 1)[None, :], n_t, grid)
    return min(1.0, float(np.einsum("gi,ij,gj->g", pmf_c, extreme, pmf_t).max()))


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), SMALL)
def test_small_counts_use_barnard_and_its_inversion(k_c, n_c, k_t, n_t, alpha):
    est = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t), alpha=alpha)
    assert est.method == "barnard"
    # scipy maximises the nuisance with a global optimiser that can fall short of the supremum: ours is at
    # least as large, and equal to a dense-grid brute force (and to scipy where scipy found it)
    scipy_p = stats.barnard_exact([[k_t, k_c], [n_t - k_t, n_c - k_c]], pooled=True).pvalue
    assert est.p_value >= scipy_p * (1 - 1e-6)
    assert est.p_value == pytest.approx(_barnard_reference(k_c, n_c, k_t, n_t), rel=1e-4)
    # the interval is the test inverted: it excludes 0 exactly when p < alpha, and holds the estimate
    assert est.ci_low <= est.effect <= est.ci_high
    assert (est.ci_low > 0 or est.ci_high < 0) == (est.p_value < alpha)
    if est.lift_ci_low is not None:
        assert est.lift_ci_low <= est.lift <= est.lift_ci_high
        assert (est.lift_ci_low > 0 or est.lift_ci_high < 0) == (est.p_value < alpha)


@pytest.mark.parametrize(("k_c", "n_c", "k_t", "n_t"), SMALL[:3])
def test_barnard_p_value_matches_tea_tasting(k_c, n_c, k_t, n_t):
    tt = pytest.importorskip("tea_tasting")
    from tea_tasting.aggr import Aggregates

    aggr = lambda k, n: Aggregates(count_=n, mean_={"y": k / n})  # noqa: E731
    ref = tt.Proportion("y", method="barnard").analyze_aggregates(aggr(k_c, n_c), aggr(k_t, n_t))
    got = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t)).p_value
    assert got >= ref.pvalue * (1 - 1e-6) and got == pytest.approx(ref.pvalue, rel=0.02)


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_exact_intervals_cover_at_least_the_level(level):
    # exact coverage by enumeration of every outcome of two arms of 6: an inverted exact test never covers
    # less than its level (the difference; the lift, where the control has a success, up to the grid search)
    n = 6
    outcomes = {
        (a, b): compare_proportions(_arm(a, n), _arm(b, n), alpha=1 - level)
        for a in range(n + 1)
        for b in range(n + 1)
    }
    for p_c, p_t in [(0.1, 0.1), (0.2, 0.5), (0.5, 0.6), (0.7, 0.2)]:
        pmf_c = stats.binom.pmf(np.arange(n + 1), n, p_c)
        pmf_t = stats.binom.pmf(np.arange(n + 1), n, p_t)
        cover = cover_lift = mass_lift = 0.0
        for (a, b), est in outcomes.items():
            weight = pmf_c[a] * pmf_t[b]
            if est.ci_low - 1e-6 <= p_t - p_c <= est.ci_high + 1e-6:
                cover += weight
            if a > 0:
                mass_lift += weight
                lo, hi = est.lift_ci_low, est.lift_ci_high
                if lo is None or lo - 1e-6 <= p_t / p_c - 1 <= hi + 1e-6:
                    cover_lift += weight
        assert cover >= level - 1e-6, f"difference coverage {cover:.4f} < {level} at {p_c}, {p_t}"
        # outcomes with no control success have no lift: coverage conditional on having one
        assert cover_lift / mass_lift >= level - 0.02, f"lift coverage {cover_lift / mass_lift:.4f}"


def test_rare_event_in_large_arms_uses_the_score_test():
    k_c, n_c, k_t, n_t = 3, 2000, 11, 2000
    est = compare_proportions(_arm(k_c, n_c), _arm(k_t, n_t))
    ref = sm_test_2indep(k_t, n_t, k_c, n_c, method="score", compare="diff")
    ci_low, ci_high = confint_proportions_2indep(k_t, n_t, k_c, n_c, method="score", compare="diff")
    r_low, r_high = confint_proportions_2indep(k_t, n_t, k_c, n_c, method="score", compare="ratio")
    assert est.method == "score"
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert (est.ci_low, est.ci_high) == (pytest.approx(ci_low, rel=1e-6), pytest.approx(ci_high, rel=1e-6))
    assert (est.lift_ci_low, est.lift_ci_high) == (
        pytest.approx(r_low - 1, rel=1e-6),
        pytest.approx(r_high - 1, rel=1e-6),
    )


@pytest.mark.parametrize(
    ("k_c", "n_c", "k_t", "n_t", "method"),
    [
        (10, 30, 10, 30, "z-test"),  # exactly at every threshold
        (9, 30, 10, 30, "barnard"),  # 9 successes
        (10, 30, 21, 30, "barnard"),  # 9 failures
        (15, 29, 15, 30, "barnard"),  # 29 customers
        (9, 100, 50, 100, "score"),  # 100 · 100 tables: too many to enumerate for every inverted bound
        (9, 50, 50, 50, "barnard"),  # 50 · 50 = 2500: still exact
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
    # more successes than customers is refused when the moments are built (a negative variance)
    with pytest.raises(
        ValueError, match=rf"control: successes \(sum\) must be a {message}|{message}|inconsistent"
    ):
        compare_proportions(ArmMoments(n=10, sum=successes, sum_sq=successes), _arm(3, 10))


# --- degenerate data ---------------------------------------------------------------------------------


def test_empty_arm():
    est = compare_proportions(_arm(0, 0), _arm(3, 10))
    assert est.reason == "empty_arm"
    assert (est.effect, est.p_value, est.mean_treatment) == (None, None, 0.3)


def test_no_successes_in_control_gives_an_exact_test_but_no_lift():
    est = compare_proportions(_arm(0, 20), _arm(6, 20))
    assert est.reason == "zero_control_mean"
    assert est.p_value == pytest.approx(_barnard_reference(0, 20, 6, 20), rel=1e-4)
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
    # the inverted exact test still gives honest, non-degenerate intervals from 21 customers
    assert est.ci_low < 0 < est.ci_high
    assert est.lift_ci_low < 0 < est.lift_ci_high


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
    pairs = list(zip(k_c.tolist(), k_t.tolist()))
    # the test is a function of (k_c, k_t): each of the ~70 distinct outcomes is tested once, and every
    # replicate is counted with its outcome's result (the same count as 400 calls, ~6x faster)
    rejects = {
        (a, b): compare_proportions(_arm(a, n), _arm(b, n), alpha=alpha).p_value < alpha
        for a, b in set(pairs)
    }
    hits = sum(rejects[pair] for pair in pairs)
    # exact tests are conservative: only the upper bound matters
    _, high = _binomial_bounds(reps, alpha)
    assert hits <= high, f"A/A exact: {hits}/{reps} at alpha={alpha}; 99.99% upper bound {high}"


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 60),
    p=st.lists(st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-9, 1)), min_size=1, max_size=8),
)
def test_the_exact_tests_binomial_probabilities_are_scipys_for_any_size_and_rate(n, p):
    """Barnard's rejection mass sums these over every table: each row is Binomial(n, p) at 0..n, the ends
    (p = 0, p = 1) exact, against scipy's binom.pmf (rates from 1e-9: the search's grids never go nearer 0
    than a step of ~0.01 but for 0 itself, and below ~1e-300 both underflow differently)."""
    got = _Exact(0, n, 0, n)._pmf(n, np.asarray(p, dtype=float))
    want = stats.binom.pmf(np.arange(n + 1)[None, :], n, np.asarray(p)[:, None])
    assert got.shape == want.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    ends = np.isin(np.asarray(p), (0.0, 1.0))
    np.testing.assert_array_equal(got[ends] == 0, want[ends] == 0)
