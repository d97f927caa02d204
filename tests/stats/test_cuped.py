"""CUPED against OLS y ~ arm + (x − x̄) (statsmodels) and Welch on the adjusted rows (scipy)."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from labkit.stats import ArmMoments, cuped, welch
from labkit.stats.cuped import cuped_theta


def _datasets():
    rng = np.random.default_rng(2013)

    def arm(n, effect, rho=0.7, scale=1.0):
        x = rng.normal(10, 2, n)
        y = 10 + effect + rho * (x - 10) + rng.normal(0, 2 * np.sqrt(1 - rho**2), n) * scale
        return y, x

    def counts(n, rate):
        pre = rng.poisson(2, n)
        return (rng.poisson(rate * (pre + 0.5))).astype(float), pre.astype(float)

    return {
        "correlated": (arm(300, 0.0), arm(300, 0.4)),
        "lopsided": (arm(20, 0.0, scale=0.5), arm(500, 0.3, scale=2.0)),
        "tiny": (
            (np.array([1.0, 3.0, 2.0]), np.array([0.5, 2.0, 2.5])),
            (np.array([4.0, 2.0, 5.0, 3.0]), np.array([3.0, 1.0, 2.0, 2.5])),
        ),
        "weak_covariate": (arm(200, 0.0, rho=0.05), arm(220, 0.2, rho=0.05)),
        "replies": (counts(400, 1.0), counts(380, 1.15)),
    }


DATASETS = _datasets()


def _stacked(name):
    (yc, xc), (yt, xt) = DATASETS[name]
    y, x = np.r_[yc, yt], np.r_[xc, xt]
    arm = np.r_[np.zeros(yc.size), np.ones(yt.size)]
    return (yc, xc), (yt, xt), y, x, arm


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_cuped_matches_ols_and_welch_on_adjusted_rows(name, alpha):
    (yc, xc), (yt, xt), y, x, arm = _stacked(name)
    est = cuped(ArmMoments.from_values(yc, xc), ArmMoments.from_values(yt, xt), alpha=alpha)

    design = sm.add_constant(np.column_stack([arm, x - x.mean()]))
    ols = sm.OLS(y, design).fit()
    theta = ols.params[2]
    assert est.method == "welch-t+cuped" and est.reason is None
    assert est.effect == pytest.approx(ols.params[1], rel=1e-9)
    assert cuped_theta(ArmMoments.from_values(yc, xc), ArmMoments.from_values(yt, xt)) == pytest.approx(
        theta, rel=1e-9
    )

    # with θ from OLS, the inference is Welch on the adjusted rows y − θ(x − x̄)
    adj_c, adj_t = yc - theta * (xc - x.mean()), yt - theta * (xt - x.mean())
    ref = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    ci_low, ci_high = CompareMeans(DescrStatsW(adj_t), DescrStatsW(adj_c)).tconfint_diff(
        alpha=alpha, usevar="unequal"
    )
    assert est.mean_control == pytest.approx(adj_c.mean(), rel=1e-9)
    assert est.mean_treatment == pytest.approx(adj_t.mean(), rel=1e-9)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert (est.ci_low, est.ci_high) == (pytest.approx(ci_low, rel=1e-6), pytest.approx(ci_high, rel=1e-6))
    # ...and, past a handful of customers, close to OLS's heteroskedasticity-robust (HC2) standard error
    if min(yc.size, yt.size) >= 20:
        assert est.se == pytest.approx(ols.get_robustcov_results("HC2").bse[1], rel=0.1)

    se_unadjusted = np.sqrt(yc.var(ddof=1) / yc.size + yt.var(ddof=1) / yt.size)
    assert est.variance_reduction == pytest.approx(1 - est.se**2 / se_unadjusted**2, rel=1e-9)


def test_variance_reduction_is_about_rho_squared():
    rng = np.random.default_rng(5)
    rho, n = 0.8, 5000
    x = rng.normal(size=(2, n))
    y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=(2, n))
    est = cuped(ArmMoments.from_values(y[0], x[0]), ArmMoments.from_values(y[1], x[1]))
    assert est.variance_reduction == pytest.approx(rho**2, abs=0.02)


def test_close_to_gbstats_which_pools_theta_over_stacked_data():
    pytest.importorskip("gbstats")
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic

    (yc, xc), (yt, xt), *_ = _stacked("correlated")
    c, t = ArmMoments.from_values(yc, xc), ArmMoments.from_values(yt, xt)
    est = cuped(c, t)

    def stat(arm):
        return RegressionAdjustedStatistic(
            n=arm.n,
            post_statistic=SampleMeanStatistic(n=arm.n, sum=arm.sum, sum_squares=arm.sum_sq),
            pre_statistic=SampleMeanStatistic(n=arm.n, sum=arm.sum_x, sum_squares=arm.sum_x_sq),
            post_pre_sum_of_products=arm.sum_xy,
            theta=0,
        )

    ref = TwoSidedTTest(stat(c), stat(t), FrequentistConfig(difference_type="absolute")).compute_result()
    # θ within arms (ours, = OLS) vs over stacked data (gbstats) differ by O(1/n)
    assert abs(est.effect - ref.expected) < 0.05 * est.se
    assert est.se == pytest.approx(ref.uplift.stddev, rel=0.02)


def test_constant_covariate_falls_back_to_welch():
    rng = np.random.default_rng(6)
    yc, yt = rng.normal(size=40), rng.normal(0.5, 1, 50)
    c, t = ArmMoments.from_values(yc, np.full(40, 3.0)), ArmMoments.from_values(yt, np.full(50, 3.0))
    est, plain = cuped(c, t), welch(c, t)
    assert est.variance_reduction == pytest.approx(0.0, abs=1e-12)
    for field in ("effect", "se", "ci_low", "ci_high", "p_value", "lift"):
        assert getattr(est, field) == pytest.approx(getattr(plain, field), rel=1e-12)


# --- degenerate data ---------------------------------------------------------------------------------


def test_empty_and_single_customer_arms():
    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    one = ArmMoments.from_values([2.0], [1.0])
    three = ArmMoments.from_values([1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    assert cuped(empty, three).reason == "empty_arm"
    single = cuped(one, three)
    assert single.reason == "too_few" and single.p_value is None and single.effect is not None


def test_outcome_fully_explained_by_the_covariate_has_zero_variance():
    xc, xt = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.5, 4.0, 5.0])
    est = cuped(ArmMoments.from_values(2 * xc + 1, xc), ArmMoments.from_values(2 * xt + 1.5, xt))
    assert est.reason == "zero_variance"
    assert est.effect == pytest.approx(0.5)
    assert est.variance_reduction == pytest.approx(1.0)
    assert (est.se, est.p_value) == (None, None)


# --- simulation --------------------------------------------------------------------------------------


def _batch(rng, reps, n, effect, rho=0.6):
    x = rng.normal(0, 1, (reps, n))
    y = 5 + effect + rho * x + np.sqrt(1 - rho**2) * rng.normal(0, 1, (reps, n))
    sums = [y.sum(1), (y * y).sum(1), x.sum(1), (x * x).sum(1), (x * y).sum(1)]
    return [ArmMoments(n, *row) for row in zip(*sums)]


def test_cuped_aa_false_positive_rate():
    alpha, reps = 0.05, 3000
    rng = np.random.default_rng(31)
    hits = sum(
        cuped(c, t, alpha=alpha).p_value < alpha
        for c, t in zip(_batch(rng, reps, 40, 0), _batch(rng, reps, 60, 0))
    )
    low, high = stats.binom.interval(0.9999, reps, alpha)
    assert low <= hits <= high, f"A/A: {hits}/{reps} at alpha={alpha}; 99.99% bound [{low}, {high}]"


def test_cuped_interval_covers_the_true_effect():
    level, reps, effect = 0.95, 3000, 0.25
    rng = np.random.default_rng(32)
    estimates = [
        cuped(c, t, alpha=1 - level)
        for c, t in zip(_batch(rng, reps, 100, 0), _batch(rng, reps, 100, effect))
    ]
    hits = sum(e.ci_low <= effect <= e.ci_high for e in estimates)
    low, high = stats.binom.interval(0.9999, reps, level)
    assert low <= hits <= high, f"coverage {hits}/{reps}; 99.99% bound [{low}, {high}]"
    # and it bought what it promises: about rho² = 0.36 of the variance
    assert np.mean([e.variance_reduction for e in estimates]) == pytest.approx(0.36, abs=0.02)
