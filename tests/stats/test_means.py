"""Welch's t-test and the shared lift (Fieller interval, delta-method se), against scipy, statsmodels,
gbstats, tea-tasting and an independent Fieller implementation."""

import math

import numpy as np
import pytest
from fieller_ref import fieller_lift
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from labkit.stats import ArmMoments, lift_interval, welch


def _datasets():
    rng = np.random.default_rng(20261101)
    return {
        "balanced": (rng.normal(10, 2, 200), rng.normal(10.5, 2, 200)),
        "lopsided": (rng.normal(5, 1, 12), rng.normal(6, 4, 400)),
        "tiny": (np.array([1.0, 2.0, 4.0]), np.array([2.0, 5.0])),
        "skewed": (rng.exponential(3, 60), rng.exponential(4, 25)),
        "negative_means": (rng.normal(-2, 1, 30), rng.normal(-1.5, 3, 31)),
        "counts": (rng.poisson(0.4, 500).astype(float), rng.poisson(0.5, 480).astype(float)),
    }


DATASETS = _datasets()


def _arms(name):
    control, treatment = DATASETS[name]
    return control, treatment, ArmMoments.from_values(control), ArmMoments.from_values(treatment)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_welch_matches_scipy_and_statsmodels(name, alpha):
    control, treatment, c, t = _arms(name)
    est = welch(c, t, alpha=alpha)

    ref = stats.ttest_ind_from_stats(
        treatment.mean(),
        treatment.std(ddof=1),
        treatment.size,
        control.mean(),
        control.std(ddof=1),
        control.size,
        equal_var=False,
    )
    compare = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    ci_low, ci_high = compare.tconfint_diff(alpha=alpha, usevar="unequal")
    _, _, df = compare.ttest_ind(usevar="unequal")

    assert est.method == "welch-t" and est.reason is None
    assert (est.n_control, est.n_treatment) == (control.size, treatment.size)
    assert est.mean_control == pytest.approx(control.mean(), rel=1e-9)
    assert est.effect == pytest.approx(treatment.mean() - control.mean(), rel=1e-9)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert est.ci_low == pytest.approx(ci_low, rel=1e-6)
    assert est.ci_high == pytest.approx(ci_high, rel=1e-6)
    assert est.se == pytest.approx(abs(est.effect / ref.statistic), rel=1e-6)
    # the lift interval is Fieller's at the same t critical value as the effect interval
    crit = stats.t.ppf(1 - alpha / 2, df)
    assert (est.ci_high - est.ci_low) / (2 * est.se) == pytest.approx(crit, rel=1e-6)
    vc, vt = control.var(ddof=1) / control.size, treatment.var(ddof=1) / treatment.size
    ref_lift = fieller_lift(control.mean(), treatment.mean(), vc, vt, crit)
    if ref_lift is None:
        assert (est.lift_ci_low, est.lift_ci_high) == (None, None)
    else:
        assert (est.lift_ci_low, est.lift_ci_high) == (
            pytest.approx(ref_lift[0], rel=1e-6, abs=1e-12),
            pytest.approx(ref_lift[1], rel=1e-6, abs=1e-12),
        )


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_lift_is_the_growthbook_delta_method(name):
    control, treatment, c, t = _arms(name)
    est = welch(c, t)
    mc, mt = control.mean(), treatment.mean()
    vc, vt = control.var(ddof=1) / control.size, treatment.var(ddof=1) / treatment.size
    # written out from Var(lift) ≈ v_t/m_c² + m_t²·v_c/m_c⁴ (gbstats frequentist_variance, relative)
    se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    assert est.lift == pytest.approx((mt - mc) / abs(mc), rel=1e-9)
    assert est.lift_se == pytest.approx(se, rel=1e-9)
    assert est.lift == pytest.approx(
        (est.mean_treatment - est.mean_control) / abs(est.mean_control), rel=1e-12
    )


@pytest.mark.parametrize("alpha", [0.05, 0.2])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_welch_lift_matches_gbstats(name, alpha):
    pytest.importorskip("gbstats")
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import SampleMeanStatistic

    _, _, c, t = _arms(name)
    est = welch(c, t, alpha=alpha)
    stat = lambda arm: SampleMeanStatistic(n=arm.n, sum=arm.sum, sum_squares=arm.sum_sq)  # noqa: E731
    for difference, (value, low, high) in {
        "relative": (est.lift, est.lift_ci_low, est.lift_ci_high),
        "absolute": (est.effect, est.ci_low, est.ci_high),
    }.items():
        config = FrequentistConfig(alpha=alpha, difference_type=difference)
        ref = TwoSidedTTest(stat(c), stat(t), config).compute_result()
        # gbstats 0.8's frequentist lift divides by the signed control mean, ours by |control mean| (the
        # GrowthBook app's convention), so the points agree up to the sign of the control mean; its relative
        # interval is the symmetric delta-method one, ours Fieller's (checked independently above)
        sign = math.copysign(1.0, c.mean) if difference == "relative" else 1.0
        assert value == pytest.approx(sign * ref.expected, rel=1e-6)
        if difference == "absolute":  # gbstats' relative p-value tests the lift, ours the effect
            assert low == pytest.approx(ref.ci[0], rel=1e-6)
            assert high == pytest.approx(ref.ci[1], rel=1e-6)
            assert est.p_value == pytest.approx(ref.p_value, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_welch_matches_tea_tasting(name):
    tt = pytest.importorskip("tea_tasting")
    from tea_tasting.aggr import Aggregates

    _, _, c, t = _arms(name)
    est = welch(c, t)
    aggr = lambda arm: Aggregates(count_=arm.n, mean_={"y": arm.mean}, var_={"y": arm.var})  # noqa: E731
    ref = tt.Mean("y", use_t=True, equal_var=False, alternative="two-sided", confidence_level=0.95)
    res = ref.analyze_aggregates(aggr(c), aggr(t))
    assert est.effect == pytest.approx(res.effect_size, rel=1e-9)
    assert est.ci_low == pytest.approx(res.effect_size_ci_lower, rel=1e-6)
    assert est.ci_high == pytest.approx(res.effect_size_ci_upper, rel=1e-6)
    assert est.p_value == pytest.approx(res.pvalue, rel=1e-6)
    # tea-tasting's lift is m_t/m_c − 1 (signed control mean) with a log-ratio interval: the same point up to
    # the sign of the control mean (ours divides by |m_c|), different bounds
    assert est.lift == pytest.approx(math.copysign(1.0, c.mean) * res.rel_effect_size, rel=1e-9)


def test_lift_interval_helper_is_none_at_zero_control_mean_and_bare_at_zero_se():
    assert lift_interval(0.0, 1.0, 0.1, 0.1, 1.96) is None
    bare = lift_interval(2.0, 0.0, 0.0, 0.0, 1.96)
    assert (bare.lift, bare.se, bare.ci_low, bare.ci_high) == (-1.0, None, None, None)


# --- degenerate data: a reason, the point estimates that still make sense, never NaN ----------------


def test_empty_arm():
    est = welch(ArmMoments(n=0, sum=0.0, sum_sq=0.0), ArmMoments.from_values([1.0, 2.0, 3.0]))
    assert est.reason == "empty_arm"
    assert (est.mean_control, est.mean_treatment, est.effect, est.p_value) == (None, 2.0, None, None)


def test_single_customer_arm_gives_the_difference_but_no_inference():
    est = welch(ArmMoments.from_values([4.0]), ArmMoments.from_values([1.0, 2.0, 6.0]))
    assert est.reason == "too_few"
    assert est.effect == pytest.approx(-1.0)
    assert est.lift == pytest.approx(-0.25)
    assert (est.se, est.ci_low, est.ci_high, est.p_value, est.lift_ci_low) == (None,) * 5


@pytest.mark.parametrize(("control", "treatment"), [([3.0, 3.0, 3.0], [5.0, 5.0]), ([2.0] * 4, [2.0] * 6)])
def test_zero_variance_in_both_arms_reports_the_difference_without_a_p_value(control, treatment):
    est = welch(ArmMoments.from_values(control), ArmMoments.from_values(treatment))
    assert est.reason == "zero_variance"
    assert est.effect == pytest.approx(treatment[0] - control[0])
    assert (est.se, est.ci_low, est.p_value) == (None, None, None)


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on the constant arm
def test_zero_variance_in_one_arm_is_still_a_welch_test():
    control, treatment = np.array([3.0, 3.0, 3.0, 3.0]), np.array([2.0, 5.0, 4.0, 6.0, 7.0])
    est = welch(ArmMoments.from_values(control), ArmMoments.from_values(treatment))
    ref = stats.ttest_ind(treatment, control, equal_var=False)
    assert est.reason is None
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-6)


def test_zero_control_mean_keeps_the_effect_but_not_the_lift():
    control, treatment = np.array([-1.0, 1.0, 0.0, 0.0]), np.array([0.5, 1.5, 1.0])
    est = welch(ArmMoments.from_values(control), ArmMoments.from_values(treatment))
    assert est.reason == "zero_control_mean"
    assert est.p_value == pytest.approx(stats.ttest_ind(treatment, control, equal_var=False).pvalue, rel=1e-6)
    assert (est.lift, est.lift_ci_low, est.lift_ci_high, est.lift_se) == (None, None, None, None)


def test_alpha_outside_zero_one_raises():
    arm = ArmMoments.from_values([1.0, 2.0])
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 1.5"):
        welch(arm, arm, alpha=1.5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=0, max_size=6),
    st.lists(st.integers(-3, 3), min_size=0, max_size=6),
)
def test_welch_never_leaks_nan_on_any_small_data(control, treatment):
    # Estimate.__post_init__ raises on NaN/inf, so constructing it at all is the check
    est = welch(
        ArmMoments.from_values(np.array(control, float)), ArmMoments.from_values(np.array(treatment, float))
    )
    if est.p_value is not None:
        assert 0.0 <= est.p_value <= 1.0
        assert est.ci_low <= est.effect <= est.ci_high
    else:
        assert est.reason is not None


# --- simulation: A/A false-positive rate and coverage ------------------------------------------------


def _moments_batch(values):
    """ArmMoments for each row of a (reps, n) array, the way the engine would aggregate them."""
    sums, sums_sq = values.sum(axis=1), (values * values).sum(axis=1)
    return [ArmMoments(n=values.shape[1], sum=s, sum_sq=q) for s, q in zip(sums, sums_sq)]


def _binomial_bounds(reps, rate):
    """Range that holds the count of hits with probability 0.9999 if the true rate is ``rate``."""
    return stats.binom.interval(0.9999, reps, rate)


def test_welch_aa_false_positive_rate_is_alpha_with_unequal_arms_and_variances():
    alpha, reps = 0.05, 4000
    rng = np.random.default_rng(7)
    controls = _moments_batch(rng.normal(10, 1, (reps, 15)))
    treatments = _moments_batch(rng.normal(10, 3, (reps, 60)))
    hits = sum(welch(c, t, alpha=alpha).p_value < alpha for c, t in zip(controls, treatments))
    low, high = _binomial_bounds(reps, alpha)
    assert low <= hits <= high, (
        f"A/A: {hits}/{reps} rejections at alpha={alpha}; 99.99% bound [{low}, {high}]"
    )


def test_welch_intervals_cover_the_true_effect_and_lift():
    level, reps = 0.95, 3000
    rng = np.random.default_rng(8)
    mu_c, mu_t = 10.0, 11.0
    controls = _moments_batch(rng.normal(mu_c, 2, (reps, 80)))
    treatments = _moments_batch(rng.normal(mu_t, 3, (reps, 120)))
    estimates = [welch(c, t, alpha=1 - level) for c, t in zip(controls, treatments)]
    effect_hits = sum(e.ci_low <= mu_t - mu_c <= e.ci_high for e in estimates)
    assert all(e.lift_ci_low is not None for e in estimates)  # control means far from 0: bounded
    lift_hits = sum(e.lift_ci_low <= mu_t / mu_c - 1 <= e.lift_ci_high for e in estimates)
    low, high = _binomial_bounds(reps, level)
    assert low <= effect_hits <= high, f"effect coverage {effect_hits}/{reps}; 99.99% bound [{low}, {high}]"
    assert low <= lift_hits <= high, f"lift coverage {lift_hits}/{reps}; 99.99% bound [{low}, {high}]"


@pytest.mark.slow
def test_welch_aa_false_positive_rate_on_skewed_revenue_large():
    alpha, reps = 0.05, 20000
    rng = np.random.default_rng(9)
    controls = _moments_batch(rng.lognormal(3, 1, (reps, 200)))
    treatments = _moments_batch(rng.lognormal(3, 1, (reps, 300)))
    hits = sum(welch(c, t, alpha=alpha).p_value < alpha for c, t in zip(controls, treatments))
    # lognormal(σ=1) at n=200 is close to, not exactly at, the t approximation: allow 1 point of alpha
    low, high = _binomial_bounds(reps, alpha)
    assert low - 0.01 * reps <= hits <= high + 0.01 * reps, (
        f"A/A skewed: {hits}/{reps} at alpha={alpha}; bound [{low}, {high}] ± {0.01 * reps:.0f}"
    )
