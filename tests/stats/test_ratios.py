"""Delta-method ratio metrics against a raw-data linearisation (scipy), gbstats and tea-tasting."""

import numpy as np
import pytest
from fieller_ref import fieller_lift
from scipy import stats

from labkit.stats import ArmMoments, delta_ratio, welch
from labkit.stats.ratios import ratio_variance


def _datasets():
    rng = np.random.default_rng(42)

    def tickets(n, rate):
        contacts = rng.poisson(3, n) + 1
        return rng.binomial(contacts, rate).astype(float), contacts.astype(float)

    return {
        "tickets_per_contact": (tickets(300, 0.30), tickets(320, 0.35)),
        "lopsided": (tickets(15, 0.3), tickets(600, 0.3)),
        "tiny": (
            (np.array([1.0, 0.0, 2.0]), np.array([2.0, 1.0, 2.0])),
            (np.array([3.0, 1.0]), np.array([3.0, 4.0])),
        ),
        "revenue_per_order": (
            (rng.gamma(2, 30, 80), rng.poisson(2, 80) + 1.0),
            (rng.gamma(2, 33, 90), rng.poisson(2, 90) + 1.0),
        ),
    }


DATASETS = _datasets()


def _arms(name):
    (yc, xc), (yt, xt) = DATASETS[name]
    return (yc, xc), (yt, xt), ArmMoments.from_values(yc, xc), ArmMoments.from_values(yt, xt)


def _linearised(y, x):
    """Per-customer influence values (y − R·x)/x̄ around the arm's ratio: the delta method on raw rows."""
    ratio = y.sum() / x.sum()
    return ratio, (y - ratio * x) / x.mean()


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_delta_ratio_matches_linearisation_on_raw_rows(name, alpha):
    (yc, xc), (yt, xt), c, t = _arms(name)
    est = delta_ratio(c, t, alpha=alpha)
    r_c, z_c = _linearised(yc, xc)
    r_t, z_t = _linearised(yt, xt)
    ref = stats.ttest_ind_from_stats(
        r_t, z_t.std(ddof=1), z_t.size, r_c, z_c.std(ddof=1), z_c.size, equal_var=False
    )
    se = np.sqrt(z_c.var(ddof=1) / z_c.size + z_t.var(ddof=1) / z_t.size)
    assert est.method == "delta-ratio" and est.reason is None
    assert (est.mean_control, est.mean_treatment) == (
        pytest.approx(r_c, rel=1e-12),
        pytest.approx(r_t, rel=1e-12),
    )
    assert est.se == pytest.approx(se, rel=1e-8)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert est.lift == pytest.approx(r_t / r_c - 1, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.05, 0.2])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_delta_ratio_matches_gbstats(name, alpha):
    pytest.importorskip("gbstats")
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import RatioStatistic, SampleMeanStatistic

    _, _, c, t = _arms(name)
    est = delta_ratio(c, t, alpha=alpha)

    def stat(arm):
        return RatioStatistic(
            n=arm.n,
            m_statistic=SampleMeanStatistic(n=arm.n, sum=arm.sum, sum_squares=arm.sum_sq),
            d_statistic=SampleMeanStatistic(n=arm.n, sum=arm.sum_x, sum_squares=arm.sum_x_sq),
            m_d_sum_of_products=arm.sum_xy,
        )

    for difference, (value, low, high) in {
        "absolute": (est.effect, est.ci_low, est.ci_high),
        "relative": (est.lift, est.lift_ci_low, est.lift_ci_high),
    }.items():
        ref = TwoSidedTTest(stat(c), stat(t), FrequentistConfig(alpha=alpha, difference_type=difference))
        result = ref.compute_result()
        assert value == pytest.approx(result.expected, rel=1e-6)
        if difference == "absolute":
            assert low == pytest.approx(result.ci[0], rel=1e-6)
            assert high == pytest.approx(result.ci[1], rel=1e-6)
            assert est.p_value == pytest.approx(result.p_value, rel=1e-6, abs=1e-12)
        else:
            # gbstats' relative interval is the symmetric delta-method one; ours is Fieller's at the same t
            # critical value, from the same linearised variances (independent implementation)
            crit = (est.ci_high - est.ci_low) / (2 * est.se)
            bounds = fieller_lift(est.mean_control, est.mean_treatment, ratio_variance(c) / c.n,
                                  ratio_variance(t) / t.n, crit)  # fmt: skip
            if (
                bounds is None
            ):  # the control ratio is not significantly ≠ 0: an unbounded set, reported as None
                assert (low, high) == (None, None)
            else:
                assert (low, high) == (pytest.approx(bounds[0], rel=1e-6), pytest.approx(bounds[1], rel=1e-6))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_delta_ratio_matches_tea_tasting(name):
    tt = pytest.importorskip("tea_tasting")
    from tea_tasting.aggr import Aggregates

    _, _, c, t = _arms(name)
    est = delta_ratio(c, t)

    def aggr(arm):
        return Aggregates(
            count_=arm.n,
            mean_={"y": arm.mean, "x": arm.mean_x},
            var_={"y": arm.var, "x": arm.var_x},
            cov_={("x", "y"): arm.cov_xy},
        )

    metric = tt.RatioOfMeans(
        "y", "x", use_t=True, equal_var=False, alternative="two-sided", confidence_level=0.95
    )
    res = metric.analyze_aggregates(aggr(c), aggr(t))
    assert est.effect == pytest.approx(res.effect_size, rel=1e-9)
    assert est.ci_low == pytest.approx(res.effect_size_ci_lower, rel=1e-6)
    assert est.ci_high == pytest.approx(res.effect_size_ci_upper, rel=1e-6)
    assert est.p_value == pytest.approx(res.pvalue, rel=1e-6)


def test_denominator_of_one_per_customer_is_a_plain_mean():
    rng = np.random.default_rng(3)
    yc, yt = rng.normal(5, 1, 50), rng.normal(5.4, 2, 70)
    ratio = delta_ratio(ArmMoments.from_values(yc, np.ones(50)), ArmMoments.from_values(yt, np.ones(70)))
    mean = welch(ArmMoments.from_values(yc), ArmMoments.from_values(yt))
    for field in ("effect", "se", "ci_low", "ci_high", "p_value", "lift", "lift_ci_low", "lift_ci_high"):
        assert getattr(ratio, field) == pytest.approx(getattr(mean, field), rel=1e-9)


# --- degenerate data ---------------------------------------------------------------------------------


def test_zero_denominator_in_an_arm():
    est = delta_ratio(
        ArmMoments.from_values([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ArmMoments.from_values([1.0, 2.0], [2.0, 2.0]),
    )
    assert est.reason == "zero_denominator"
    assert (est.mean_control, est.mean_treatment, est.effect, est.p_value) == (None, 0.75, None, None)


def test_empty_and_single_customer_arms():
    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    one = ArmMoments.from_values([1.0], [2.0])
    two = ArmMoments.from_values([1.0, 3.0], [2.0, 2.0])
    assert delta_ratio(empty, two).reason == "empty_arm"
    single = delta_ratio(one, two)
    assert single.reason == "too_few"
    assert single.effect == pytest.approx(0.5)


def test_numerator_proportional_to_denominator_has_zero_variance():
    # every customer converts exactly 40% / 50% of contacts: no sampling variance in the ratio
    c = ArmMoments.from_values([0.8, 1.6, 2.0], [2.0, 4.0, 5.0])
    t = ArmMoments.from_values([1.0, 0.5, 3.0], [2.0, 1.0, 6.0])
    est = delta_ratio(c, t)
    assert est.reason == "zero_variance"
    assert est.effect == pytest.approx(0.1)
    assert (est.se, est.p_value) == (None, None)


def test_zero_numerator_in_control_gives_no_lift():
    c = ArmMoments.from_values([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    t = ArmMoments.from_values([1.0, 0.0, 2.0], [1.0, 2.0, 3.0])
    est = delta_ratio(c, t)
    assert est.reason == "zero_control_mean"
    assert est.p_value is not None and est.lift is None


# --- simulation --------------------------------------------------------------------------------------


def _batch(rng, reps, n, rate):
    """Per-replicate ArmMoments for tickets ~ Binomial(contacts, rate), contacts ~ 1 + Poisson(3)."""
    x = (rng.poisson(3, (reps, n)) + 1).astype(float)
    y = rng.binomial(x.astype(int), rate).astype(float)
    sums = [y.sum(1), (y * y).sum(1), x.sum(1), (x * x).sum(1), (x * y).sum(1)]
    return [ArmMoments(n, *row) for row in zip(*sums)]


def test_delta_ratio_aa_false_positive_rate():
    alpha, reps = 0.05, 3000
    rng = np.random.default_rng(21)
    hits = sum(
        delta_ratio(c, t, alpha=alpha).p_value < alpha
        for c, t in zip(_batch(rng, reps, 150, 0.3), _batch(rng, reps, 250, 0.3))
    )
    low, high = stats.binom.interval(0.9999, reps, alpha)
    assert low <= hits <= high, f"A/A: {hits}/{reps} at alpha={alpha}; 99.99% bound [{low}, {high}]"


def test_delta_ratio_interval_covers_the_true_difference():
    level, reps, p_c, p_t = 0.95, 3000, 0.30, 0.36
    rng = np.random.default_rng(22)
    estimates = [
        delta_ratio(c, t, alpha=1 - level)
        for c, t in zip(_batch(rng, reps, 200, p_c), _batch(rng, reps, 200, p_t))
    ]
    hits = sum(e.ci_low <= p_t - p_c <= e.ci_high for e in estimates)
    lift_hits = sum(e.lift_ci_low <= p_t / p_c - 1 <= e.lift_ci_high for e in estimates)
    low, high = stats.binom.interval(0.9999, reps, level)
    assert low <= hits <= high, f"coverage {hits}/{reps}; 99.99% bound [{low}, {high}]"
    assert low <= lift_hits <= high, f"lift coverage {lift_hits}/{reps}; 99.99% bound [{low}, {high}]"
