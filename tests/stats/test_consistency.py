"""Every reported interval agrees with its test (RELIABILITY case 51), and lifts follow the effect's sign
(case 50): for random sufficient statistics of every metric type and mode, an interval excludes 0 exactly
when p < alpha — the effect interval, the lift interval (when bounded), the sequential confidence sequence
with its always-valid p-value, the Bayesian credible interval with its chance to beat, and intervals at
the level matching a Holm/BH-adjusted p-value.

Cases within a relative 1e-9 of p = alpha are left out (``assume``): there the two sides differ only by the
rounding of the t/normal quantile and distribution functions, not by construction.
"""

import math

import numpy as np
import pytest
from fieller_ref import fieller_lift
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from labkit.stats import (
    ArmMoments,
    adjust,
    always_valid,
    bayes_lift,
    bootstrap_quantile,
    compare_proportions,
    cuped,
    delta_ratio,
    welch,
)

ALPHAS = st.sampled_from([0.01, 0.05, 0.1, 0.2])
SETTINGS = settings(max_examples=150, deadline=None)


def _excludes(low, high) -> bool:
    return low > 0 or high < 0


def _check(est, alpha: float) -> None:
    """The agreement every Estimate owes: effect interval, lift interval (if bounded) and p-value."""
    if est.p_value is None:
        return
    assume(abs(est.p_value / alpha - 1) > 1e-9)
    significant = est.p_value < alpha
    assert est.ci_low is not None and est.ci_high is not None
    assert _excludes(est.ci_low, est.ci_high) == significant, (est.p_value, est.ci_low, est.ci_high)
    if est.lift is not None:
        # lift = effect / |control mean|: the same sign as the effect, whatever the control mean's sign
        assert est.lift * est.effect >= 0
        assert est.lift == pytest.approx(est.effect / abs(est.mean_control), rel=1e-12, abs=1e-300)
    if est.lift_ci_low is not None:
        assert _excludes(est.lift_ci_low, est.lift_ci_high) == significant, (
            est.p_value,
            est.lift_ci_low,
            est.lift_ci_high,
        )


@st.composite
def arm(draw, *, covariate: bool = False, n_max: int = 2000):
    """Sufficient statistics of a possible arm: n, mean and sd of y (and of x with a correlation)."""
    n = draw(st.integers(2, n_max))
    mean = draw(st.floats(-100, 100))
    sd = draw(st.floats(0.01, 50))
    fields = {"n": n, "sum": n * mean, "sum_sq": (n - 1) * sd * sd + n * mean * mean}
    if covariate:
        mean_x = draw(st.floats(-50, 50))
        sd_x = draw(st.floats(0.01, 20))
        rho = draw(st.floats(-0.95, 0.95))
        fields.update(
            sum_x=n * mean_x,
            sum_x_sq=(n - 1) * sd_x * sd_x + n * mean_x * mean_x,
            sum_xy=(n - 1) * rho * sd * sd_x + n * mean * mean_x,
        )
    return ArmMoments(**fields)


@SETTINGS
@given(control=arm(), treatment=arm(), alpha=ALPHAS)
def test_welch_intervals_agree_with_the_test(control, treatment, alpha):
    _check(welch(control, treatment, alpha=alpha), alpha)


@SETTINGS
@given(control=arm(covariate=True), treatment=arm(covariate=True), alpha=ALPHAS)
def test_cuped_intervals_agree_with_the_test(control, treatment, alpha):
    _check(cuped(control, treatment, alpha=alpha), alpha)


@st.composite
def ratio_arm(draw):
    """A ratio arm: numerator y and a positive-mean denominator x, correlated."""
    n = draw(st.integers(2, 2000))
    mean_x = draw(st.floats(0.5, 20))
    sd_x = draw(st.floats(0.01, 10))
    mean = draw(st.floats(-100, 100))
    sd = draw(st.floats(0.01, 50))
    rho = draw(st.floats(-0.95, 0.95))
    return ArmMoments(
        n=n,
        sum=n * mean,
        sum_sq=(n - 1) * sd * sd + n * mean * mean,
        sum_x=n * mean_x,
        sum_x_sq=(n - 1) * sd_x * sd_x + n * mean_x * mean_x,
        sum_xy=(n - 1) * rho * sd * sd_x + n * mean * mean_x,
    )


@SETTINGS
@given(control=ratio_arm(), treatment=ratio_arm(), alpha=ALPHAS)
def test_ratio_intervals_agree_with_the_test(control, treatment, alpha):
    _check(delta_ratio(control, treatment, alpha=alpha), alpha)


def _proportion(k, n):
    return ArmMoments(n=n, sum=k, sum_sq=k)


@st.composite
def counts(draw, n_min, n_max):
    n = draw(st.integers(n_min, n_max))
    return n, draw(st.integers(0, n))


@SETTINGS
@given(c=counts(30, 5000), t=counts(30, 5000), alpha=ALPHAS)
def test_proportion_intervals_agree_with_the_test_on_every_path(c, t, alpha):
    (n_c, k_c), (n_t, k_t) = c, t
    # the exact path is slow to enumerate: keep its tables small here (its own test covers it)
    assume(n_c * n_t > 2500 or max(n_c, n_t) <= 60)
    _check(compare_proportions(_proportion(k_c, n_c), _proportion(k_t, n_t), alpha=alpha), alpha)


@settings(max_examples=40, deadline=None)
@given(c=counts(1, 29), t=counts(1, 29), alpha=ALPHAS)
def test_exact_proportion_intervals_agree_with_barnards_test(c, t, alpha):
    (n_c, k_c), (n_t, k_t) = c, t
    est = compare_proportions(_proportion(k_c, n_c), _proportion(k_t, n_t), alpha=alpha)
    assert est.method == "barnard"
    _check(est, alpha)


@settings(max_examples=60, deadline=None)
@given(
    control=st.lists(st.floats(-50, 200), min_size=2, max_size=40),
    treatment=st.lists(st.floats(-50, 200), min_size=2, max_size=40),
    q=st.sampled_from([0.25, 0.5, 0.9]),
    n_boot=st.integers(10, 400),
    alpha=ALPHAS,
)
def test_bootstrap_intervals_agree_with_the_bootstrap_p_value(control, treatment, q, n_boot, alpha):
    est = bootstrap_quantile(control, treatment, q=q, alpha=alpha, n_boot=n_boot, seed=3)
    if est.p_value is None:
        return
    significant = est.p_value < alpha
    if est.ci_low is None:  # too few replicates for this level: then p can never fall below it
        assert not significant and 2 / (n_boot + 1) >= alpha
        return
    assert _excludes(est.ci_low, est.ci_high) == significant
    if est.lift_ci_low is not None:
        assert _excludes(est.lift_ci_low, est.lift_ci_high) == significant


@SETTINGS
@given(control=arm(), treatment=arm(), alpha=ALPHAS, tuning=st.floats(0.05, 20))
def test_confidence_sequences_agree_with_the_always_valid_p_value(control, treatment, alpha, tuning):
    fixed = welch(control, treatment, alpha=alpha)
    assume(fixed.reason is None)
    n = control.n + treatment.n
    _check(always_valid(fixed, n=n, n_tuning=n * tuning, alpha=alpha), alpha)


@SETTINGS
@given(c=counts(30, 5000), t=counts(30, 5000), alpha=ALPHAS, tuning=st.floats(0.05, 20))
def test_proportion_confidence_sequences_agree_with_the_always_valid_p_value(c, t, alpha, tuning):
    (n_c, k_c), (n_t, k_t) = c, t
    assume(n_c * n_t > 2500)
    fixed = compare_proportions(_proportion(k_c, n_c), _proportion(k_t, n_t), alpha=alpha)
    assume(fixed.reason is None and fixed.se is not None)
    _check(always_valid(fixed, n=n_c + n_t, n_tuning=(n_c + n_t) * tuning, alpha=alpha), alpha)


@SETTINGS
@given(
    lift=st.floats(-3, 3),
    se=st.floats(1e-4, 2),
    prior_sd=st.floats(0.05, 5),
    alpha=ALPHAS,
    direction=st.sampled_from(["increase", "decrease"]),
)
def test_credible_interval_agrees_with_the_chance_to_beat(lift, se, prior_sd, alpha, direction):
    b = bayes_lift(lift, se, prior_sd=prior_sd, alpha=alpha, direction=direction)
    tail = min(b.chance_to_beat, 1 - b.chance_to_beat)
    assume(abs(tail / (alpha / 2) - 1) > 1e-9)
    assert _excludes(b.ci_low, b.ci_high) == (tail < alpha / 2)


@settings(max_examples=100, deadline=None)
@given(
    family=st.lists(st.tuples(arm(n_max=400), arm(n_max=400)), min_size=2, max_size=6),
    method=st.sampled_from(["holm", "bh"]),
    alpha=ALPHAS,
)
def test_intervals_at_the_adjusted_level_agree_with_adjusted_p_values(family, method, alpha):
    # labkit.analysis reports, per hypothesis, the interval at level 1 − alpha·p/p_adj (ci_*_adjusted)
    estimates = [welch(c, t, alpha=alpha) for c, t in family]
    p_raw = [e.p_value for e in estimates]
    assume(all(p is not None and p > 0 for p in p_raw))
    for (c, t), p, p_adj in zip(family, p_raw, adjust(p_raw, method)):
        assume(abs(p_adj / alpha - 1) > 1e-9)
        level = alpha * p / p_adj if p_adj > p else alpha
        est = welch(c, t, alpha=level)
        assert _excludes(est.ci_low, est.ci_high) == (p_adj < alpha)
        if est.lift_ci_low is not None:
            assert _excludes(est.lift_ci_low, est.lift_ci_high) == (p_adj < alpha)


# --- case 50: a negative control mean ---------------------------------------------------------------


def _net_revenue(seed=4):
    rng = np.random.default_rng(seed)
    control, treatment = rng.normal(-10, 4, 300), rng.normal(-5, 4, 300)
    return control, treatment, ArmMoments.from_values(control), ArmMoments.from_values(treatment)


def test_lift_of_a_negative_metric_moving_up_is_positive():
    # net revenue from about −10 to −5: effect +5, lift +50 % (it read −50 % when divided by the signed mean)
    control, treatment, c, t = _net_revenue()
    est = welch(c, t)
    mc, mt = control.mean(), treatment.mean()
    assert est.effect > 0 and est.p_value < 1e-10
    assert est.lift == pytest.approx((mt - mc) / abs(mc), rel=1e-12) and est.lift > 0.4
    crit = (est.ci_high - est.ci_low) / (2 * est.se)
    low, high = fieller_lift(mc, mt, c.var / c.n, t.var / t.n, crit)
    assert (est.lift_ci_low, est.lift_ci_high) == (
        pytest.approx(low, rel=1e-9),
        pytest.approx(high, rel=1e-9),
    )
    assert 0 < est.lift_ci_low < est.lift < est.lift_ci_high


def test_bayesian_chance_to_beat_of_a_negative_metric_moving_as_predicted_is_near_one():
    _, _, c, t = _net_revenue()
    est = welch(c, t)
    up = bayes_lift(est.lift, est.lift_se, direction="increase")
    assert up.chance_to_beat > 0.999 and up.expected_loss < 1e-6  # it gave 0 and 0.5 with the signed mean
    down = bayes_lift(est.lift, est.lift_se, direction="decrease")
    assert down.chance_to_beat < 0.001


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_mirrored_metrics_have_mirrored_lifts(sign):
    # y and −y moved by the same treatment: equal effects in magnitude, lifts of opposite sign and equal size
    _, _, c, t = _net_revenue()
    flip = lambda a: ArmMoments(n=a.n, sum=sign * a.sum, sum_sq=a.sum_sq)  # noqa: E731
    est, mirror = welch(c, t), welch(flip(c), flip(t))
    assert mirror.lift == pytest.approx(sign * est.lift, rel=1e-12)
    assert mirror.p_value == pytest.approx(est.p_value, rel=1e-12)


def test_unbounded_lift_set_is_reported_as_none_not_infinity():
    # a control mean indistinguishable from 0: Fieller's set is unbounded; the effect is still tested
    c = ArmMoments(n=50, sum=50 * 0.1, sum_sq=49 * 4.0 + 50 * 0.01)
    t = ArmMoments(n=50, sum=50 * 3.0, sum_sq=49 * 4.0 + 50 * 9.0)
    est = welch(c, t)
    assert est.p_value < 0.05 and est.ci_low > 0
    assert est.lift is not None and est.lift_se is not None
    assert (est.lift_ci_low, est.lift_ci_high) == (None, None)
    assert fieller_lift(c.mean, t.mean, c.var / c.n, t.var / t.n, stats.t.ppf(0.975, 98)) is None
    assert math.isfinite(est.lift)


@SETTINGS
@given(
    studies=st.lists(st.tuples(st.floats(-1, 1), st.floats(1e-4, 0.5)), min_size=1, max_size=8),
    alpha=ALPHAS,
)
def test_pooled_meta_analysis_interval_agrees_with_its_p_value(studies, alpha):
    from labkit.stats import dersimonian_laird

    effects, variances = zip(*studies)
    pooled = dersimonian_laird(effects, variances, alpha=alpha)
    assume(abs(pooled.p_value / alpha - 1) > 1e-9)
    assert _excludes(pooled.ci_low, pooled.ci_high) == (pooled.p_value < alpha)
