"""Seeded quantile bootstrap: same distribution as naive resampling, agrees with scipy.stats.bootstrap."""

import numpy as np
import pytest
from scipy import stats

from labkit.stats import bootstrap_quantile
from labkit.stats.quantiles import bootstrap_quantiles

RNG = np.random.default_rng(90)
CONTROL = RNG.lognormal(3.0, 0.8, 150)  # first-response minutes
TREATMENT = RNG.lognormal(2.8, 0.8, 170)


def test_point_estimates_are_numpy_quantiles():
    est = bootstrap_quantile(CONTROL, TREATMENT, q=0.9)
    assert est.method == "bootstrap" and est.reason is None
    assert est.mean_control == pytest.approx(np.quantile(CONTROL, 0.9), rel=1e-12)
    assert est.mean_treatment == pytest.approx(np.quantile(TREATMENT, 0.9), rel=1e-12)
    assert est.effect == pytest.approx(np.quantile(TREATMENT, 0.9) - np.quantile(CONTROL, 0.9), rel=1e-12)
    assert est.lift == pytest.approx(est.effect / est.mean_control, rel=1e-12)


def test_same_seed_same_result_and_seed_matters():
    first = bootstrap_quantile(CONTROL, TREATMENT, q=0.5, seed=7)
    assert bootstrap_quantile(CONTROL, TREATMENT, q=0.5, seed=7) == first
    assert bootstrap_quantile(CONTROL, TREATMENT, q=0.5, seed=8).ci_low != first.ci_low


@pytest.mark.parametrize(
    ("values", "q"),
    [
        (RNG.exponential(size=37), 0.5),
        (RNG.poisson(2, size=50).astype(float), 0.9),  # heavy ties
        (RNG.normal(size=8), 0.95),
        (RNG.normal(size=5), 0.5),
        (RNG.normal(size=3), 0.99),
    ],
)
def test_order_statistic_draws_have_the_naive_bootstrap_distribution(values, q):
    reps = 40000
    fast = bootstrap_quantiles(np.sort(values), q, reps, np.random.default_rng(1))
    idx = np.random.default_rng(2).integers(0, values.size, (reps, values.size))
    naive = np.quantile(values[idx], q, axis=1)
    # rounding: numpy's interpolation differs from ours in the last bit, which KS would see as a shift
    result = stats.ks_2samp(np.round(fast, 9), np.round(naive, 9))
    assert result.pvalue > 1e-4, (
        f"KS statistic {result.statistic:.4f} between order-statistic and naive draws"
    )


@pytest.mark.parametrize("q", [0.5, 0.9])
def test_interval_and_se_agree_with_scipy_bootstrap(q):
    est = bootstrap_quantile(CONTROL, TREATMENT, q=q, n_boot=20000, seed=3)
    ref = stats.bootstrap(
        (TREATMENT, CONTROL),
        lambda t, c, axis: np.quantile(t, q, axis=axis) - np.quantile(c, q, axis=axis),
        n_resamples=20000,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(4),
    )
    # two independent Monte Carlo runs of 20 000: allow a small fraction of the standard error
    assert est.se == pytest.approx(ref.standard_error, rel=0.05)
    assert est.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.1 * est.se)
    assert est.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.1 * est.se)


def test_p_value_is_the_percentile_interval_inversion():
    for shift in (0.0, 0.5, 3.0, 20.0):
        for alpha in (0.05, 0.2):
            est = bootstrap_quantile(CONTROL, TREATMENT + shift, q=0.5, alpha=alpha, seed=1)
            excludes_zero = est.ci_low > 0 or est.ci_high < 0
            # equivalent up to the +1 in numerator and denominator
            if abs(est.p_value - alpha) > 4 / 2001:
                assert (est.p_value < alpha) == excludes_zero, (shift, alpha, est.p_value, est.ci_low)
    far = bootstrap_quantile(CONTROL, CONTROL + 1000, q=0.5)
    assert far.p_value == pytest.approx(2 / 2001)  # never 0 from a finite bootstrap


# --- degenerate data and bad input -------------------------------------------------------------------


def test_empty_single_and_constant_arms():
    assert bootstrap_quantile([], [1.0, 2.0], q=0.5).reason == "empty_arm"
    single = bootstrap_quantile([3.0], [1.0, 2.0], q=0.5)
    assert single.reason == "too_few" and single.effect == pytest.approx(-1.5)
    constant = bootstrap_quantile([2.0, 2.0, 2.0], [5.0, 5.0], q=0.5)
    assert constant.reason == "zero_variance"
    assert (constant.effect, constant.p_value, constant.ci_low) == (3.0, None, None)


def test_median_stuck_on_a_mass_of_zeros_has_zero_variance():
    control = np.r_[np.zeros(95), np.ones(5)]
    est = bootstrap_quantile(control, control.copy(), q=0.5)
    assert est.reason == "zero_variance"
    assert est.effect == 0.0 and est.p_value is None


def test_zero_control_quantile_gives_no_lift():
    control = np.r_[np.zeros(60), RNG.exponential(size=40)]
    est = bootstrap_quantile(control, control + 1.0, q=0.5)
    assert est.reason == "zero_control_mean"
    assert est.p_value is not None and est.lift is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"q": 1.0}, r"q must be in \(0, 1\)"),
        ({"q": 0.5, "n_boot": 5}, r"n_boot must be a whole number >= 10"),
        ({"q": 0.5, "alpha": 0.0}, r"alpha must be in \(0, 1\)"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_quantile(CONTROL, TREATMENT, **kwargs)


def test_nan_values_raise():
    with pytest.raises(ValueError, match="control_values must be finite"):
        bootstrap_quantile([1.0, np.nan], [1.0, 2.0], q=0.5)


# --- simulation --------------------------------------------------------------------------------------


def test_bootstrap_aa_false_positive_rate():
    alpha, reps = 0.05, 1000
    rng = np.random.default_rng(91)
    hits = sum(
        bootstrap_quantile(
            rng.exponential(size=120), rng.exponential(size=150), q=0.5, alpha=alpha, seed=i
        ).p_value
        < alpha
        for i in range(reps)
    )
    low, high = stats.binom.interval(0.9999, reps, alpha)
    assert low <= hits <= high, f"A/A: {hits}/{reps} at alpha={alpha}; 99.99% bound [{low}, {high}]"


def test_bootstrap_interval_covers_the_true_median_difference():
    level, reps = 0.95, 1000
    rng = np.random.default_rng(92)
    true = np.log(2) * (1.3 - 1.0)  # medians of exponentials with scales 1.0 and 1.3
    hits = sum(
        e.ci_low <= true <= e.ci_high
        for e in (
            bootstrap_quantile(
                rng.exponential(1.0, 200), rng.exponential(1.3, 200), q=0.5, alpha=1 - level, seed=i
            )
            for i in range(reps)
        )
    )
    low, high = stats.binom.interval(0.9999, reps, level)
    assert low <= hits <= high, f"coverage {hits}/{reps}; 99.99% bound [{low}, {high}]"
