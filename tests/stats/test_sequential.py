"""Confidence sequences: published test vectors, gbstats, the p-value inversion, and peeking by simulation."""

import math

import numpy as np
import pytest
from fieller_ref import fieller_lift
from scipy import stats

from labkit.stats import ArmMoments, always_valid, compare_proportions, multiplier, welch
from labkit.stats.sequential import always_valid_p_value


def _waudby_smith_halfwidth(se, n, n_tuning, alpha):
    """Eq. 9 of Waudby-Smith et al. (2023) in its original ρ parameterisation (eq. 161), per unit se."""
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_tuning
    s2 = se**2 * n
    return math.sqrt(s2) * math.sqrt(
        2 * (n * rho2 + 1) / (n**2 * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )


@pytest.mark.parametrize(("ratio", "h"), [(0.25, 3.264), (1, 3.035), (4, 3.127), (20, 3.337)])
def test_published_multipliers_at_alpha_005(ratio, h):
    assert multiplier(ratio * 1000, 1000, 0.05) == pytest.approx(h, abs=5e-4)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.3])
@pytest.mark.parametrize(("n", "n_tuning"), [(10, 1000), (500, 500), (5000, 200), (123, 4567)])
def test_multiplier_matches_the_original_parameterisation(n, n_tuning, alpha):
    assert multiplier(n, n_tuning, alpha) == pytest.approx(
        _waudby_smith_halfwidth(1.0, n, n_tuning, alpha), rel=1e-9
    )


@pytest.mark.parametrize("ratio", [1e-3, 0.1, 1, 10, 1e3])
def test_multiplier_falls_as_alpha_grows_towards_its_limit(ratio):
    alphas = np.geomspace(1e-12, 0.999999, 400)
    h = np.array([multiplier(ratio, 1.0, a) for a in alphas])
    assert np.all(np.diff(h) < 0), "h must decrease in alpha for the p-value inversion to be unique"
    assert h[-1] == pytest.approx(math.sqrt(1 + 1 / (2 * ratio)), rel=1e-3)
    # ...and is always wider than the fixed-horizon interval
    assert np.all(h > stats.norm.isf(alphas / 2))


def _estimate(seed=0, shift=0.3, n_c=400, n_t=420):
    rng = np.random.default_rng(seed)
    return welch(
        ArmMoments.from_values(rng.normal(10, 2, n_c)), ArmMoments.from_values(rng.normal(10 + shift, 2, n_t))
    )


@pytest.mark.parametrize("n_tuning", [500, 820, 5000])
def test_always_valid_matches_gbstats_sequential(n_tuning):
    pytest.importorskip("gbstats")
    from gbstats.frequentist.tests import SequentialConfig, SequentialTwoSidedTTest
    from gbstats.models.statistics import SampleMeanStatistic

    rng = np.random.default_rng(5)
    yc, yt = rng.normal(10, 2, 400), rng.normal(10.3, 2, 420)
    c, t = ArmMoments.from_values(yc), ArmMoments.from_values(yt)
    est = always_valid(welch(c, t), n=c.n + t.n, n_tuning=n_tuning, alpha=0.05)
    stat = lambda a: SampleMeanStatistic(n=a.n, sum=a.sum, sum_squares=a.sum_sq)  # noqa: E731
    config = SequentialConfig(difference_type="absolute", sequential_tuning_parameter=n_tuning)
    ref = SequentialTwoSidedTTest(stat(c), stat(t), config).confidence_interval
    assert (est.ci_low, est.ci_high) == (pytest.approx(ref[0], rel=1e-9), pytest.approx(ref[1], rel=1e-9))
    # gbstats widens the symmetric delta-method lift interval; ours is Fieller's interval at the same
    # multiplier (so it agrees with the always-valid p-value), from an independent implementation
    h = multiplier(c.n + t.n, n_tuning, 0.05)
    low, high = fieller_lift(c.mean, t.mean, c.var / c.n, t.var / t.n, h)
    assert (est.lift_ci_low, est.lift_ci_high) == (
        pytest.approx(low, rel=1e-9),
        pytest.approx(high, rel=1e-9),
    )


def test_always_valid_widens_around_the_same_point_and_renames_the_method():
    fixed = _estimate()
    seq = always_valid(fixed, n=820, n_tuning=1000, alpha=0.05)
    h = multiplier(820, 1000, 0.05)
    assert seq.method == "welch-t+cs"
    assert (seq.effect, seq.se, seq.lift, seq.lift_se) == (fixed.effect, fixed.se, fixed.lift, fixed.lift_se)
    assert seq.ci_high - seq.ci_low == pytest.approx(2 * h * fixed.se, rel=1e-12)
    low, high = fieller_lift(
        fixed.mean_control, fixed.mean_treatment, fixed.var_mean_control, fixed.var_mean_treatment, h
    )
    assert (seq.lift_ci_low, seq.lift_ci_high) == (
        pytest.approx(low, rel=1e-9),
        pytest.approx(high, rel=1e-9),
    )
    assert seq.lift_ci_low < fixed.lift_ci_low and seq.lift_ci_high > fixed.lift_ci_high
    assert seq.ci_low < fixed.ci_low and seq.ci_high > fixed.ci_high
    assert seq.p_value >= fixed.p_value


@pytest.mark.parametrize("shift", [0.15, 0.3, 0.5, 1.0, -0.4])
def test_p_value_is_the_alpha_at_which_the_sequence_touches_zero(shift):
    est = _estimate(shift=shift)
    seq = always_valid(est, n=820, n_tuning=1000, alpha=0.05)
    assert 0.0 < seq.p_value < 1.0
    at_p = always_valid(est, n=820, n_tuning=1000, alpha=seq.p_value)
    nearest_bound = at_p.ci_low if est.effect > 0 else at_p.ci_high
    assert nearest_bound == pytest.approx(0.0, abs=1e-9 * est.se)
    for alpha in (0.01, 0.05, 0.2):
        excludes = always_valid(est, n=820, n_tuning=1000, alpha=alpha)
        assert (seq.p_value < alpha) == (excludes.ci_low > 0 or excludes.ci_high < 0)


def test_p_value_extremes():
    assert always_valid_p_value(0.0, 100, 1000) == 1.0
    assert always_valid_p_value(1.0, 100, 1000) == 1.0  # inside even the widest-alpha sequence
    assert always_valid_p_value(200.0, 100, 1000) == 0.0  # beyond double precision


def test_degenerate_estimates_pass_through_with_their_reason():
    too_few = welch(ArmMoments.from_values([1.0]), ArmMoments.from_values([2.0, 3.0]))
    seq = always_valid(too_few, n=3, n_tuning=100, alpha=0.05)
    assert (seq.method, seq.reason, seq.effect, seq.ci_low, seq.p_value) == (
        "welch-t+cs",
        "too_few",
        1.5,
        None,
        None,
    )
    # an exact proportions result with no Wald se (every customer converted) cannot be widened
    saturated = compare_proportions(ArmMoments(n=9, sum=9, sum_sq=9), ArmMoments(n=8, sum=8, sum_sq=8))
    seq = always_valid(saturated, n=17, n_tuning=100, alpha=0.05)
    assert (seq.reason, seq.ci_low, seq.p_value) == ("zero_variance", None, None)


@pytest.mark.parametrize(("n", "n_tuning", "alpha"), [(0, 10, 0.05), (10, 0, 0.05), (10, 10, 1.0)])
def test_bad_arguments_raise(n, n_tuning, alpha):
    with pytest.raises(ValueError):
        multiplier(n, n_tuning, alpha)


# --- peeking: 20 looks at an A/A pilot ---------------------------------------------------------------


def _aa_looks(rng, reps, looks, per_look):
    """Welch z statistics and total n at each of ``looks`` cumulative looks of an A/A pilot."""
    shape = (reps, looks, per_look)
    yc, yt = rng.exponential(1.0, shape), rng.exponential(1.0, shape)  # skewed, like engagement counts
    stats_ = []
    for y in (yc, yt):
        n = per_look * np.arange(1, looks + 1)
        s, s2 = y.sum(axis=2).cumsum(axis=1), (y * y).sum(axis=2).cumsum(axis=1)
        stats_.append((n, s / n, (s2 - s * s / n) / (n - 1)))
    (n, mc, vc), (_, mt, vt) = stats_
    return (mt - mc) / np.sqrt(vc / n + vt / n), 2 * n


def test_peeking_twenty_times_confidence_sequence_keeps_alpha_naive_does_not():
    alpha, reps, looks, per_look = 0.05, 4000, 20, 25
    z, n_total = _aa_looks(np.random.default_rng(71), reps, looks, per_look)
    n_tuning = n_total[-1]
    h = np.array([multiplier(n, n_tuning, alpha) for n in n_total])
    cs_hits = int(np.sum(np.any(np.abs(z) > h, axis=1)))
    naive_hits = int(np.sum(np.any(np.abs(z) > stats.norm.isf(alpha / 2), axis=1)))
    _, high = stats.binom.interval(0.9999, reps, alpha)
    assert cs_hits <= high, (
        f"always-valid: {cs_hits}/{reps} A/A pilots ever significant over {looks} looks; bound {high}"
    )
    assert naive_hits > high, (
        f"naive: {naive_hits}/{reps} should exceed alpha={alpha} (bound {high}) when peeking"
    )
    assert naive_hits / reps > 2 * alpha  # peeking 20 times roughly quadruples the false-positive rate


@pytest.mark.slow
def test_peeking_with_the_library_estimates_end_to_end():
    alpha, reps, looks, per_look = 0.05, 1000, 20, 20
    rng = np.random.default_rng(72)
    cs_hits = naive_hits = 0
    for _ in range(reps):
        yc, yt = rng.exponential(1.0, looks * per_look), rng.exponential(1.0, looks * per_look)
        ever_cs = ever_naive = False
        for look in range(1, looks + 1):
            m = look * per_look
            est = welch(ArmMoments.from_values(yc[:m]), ArmMoments.from_values(yt[:m]), alpha=alpha)
            ever_naive |= est.p_value < alpha
            ever_cs |= always_valid(est, n=2 * m, n_tuning=2 * looks * per_look, alpha=alpha).p_value < alpha
        cs_hits += ever_cs
        naive_hits += ever_naive
    _, high = stats.binom.interval(0.9999, reps, alpha)
    assert cs_hits <= high, (
        f"always-valid: {cs_hits}/{reps} ever significant over {looks} looks; bound {high}"
    )
    assert naive_hits > high, f"naive: {naive_hits}/{reps} should exceed the alpha={alpha} bound {high}"


def test_a_zero_control_mean_still_gets_its_effect_widened():
    """Only the lift is undefined when the control mean is 0: the effect's interval is widened to the
    confidence sequence like any other (before 2026-12-06 it kept Welch's fixed-horizon interval, which
    read daily lets the false-positive rate grow: tests/stats/test_over_time_validity.py)."""
    from labkit.stats import widens

    c, t = ArmMoments(n=200, sum=0.0, sum_sq=0.0), ArmMoments(n=200, sum=9.0, sum_sq=13.0)
    fixed = welch(c, t, alpha=0.05)
    assert fixed.reason == "zero_control_mean" and widens(fixed)
    seq = always_valid(fixed, n=400, n_tuning=1000, alpha=0.05)
    h = multiplier(400, 1000, 0.05)
    assert seq.ci_high - seq.ci_low == pytest.approx(2 * h * fixed.se, rel=1e-12)
    assert seq.method == fixed.method + "+cs" and seq.lift is None and seq.lift_ci_low is None
    assert seq.p_value == pytest.approx(always_valid_p_value(fixed.effect / fixed.se, 400, 1000), rel=1e-12)
    for reason in ("empty_arm", "too_few", "zero_variance", "zero_denominator", "suppressed_small_cell"):
        from dataclasses import replace

        assert not widens(replace(fixed, reason=reason))
