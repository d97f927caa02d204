"""Normal–normal lift posterior: conjugate formula, shrinkage of a small pilot, gbstats, numerical loss."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from labkit.stats import ArmMoments, bayes_lift, compare_proportions, welch


def _conjugate(lift, se, prior_mean, prior_sd):
    """Posterior of N(prior_mean, prior_sd²) after observing lift ~ N(true, se²) (precision-weighted)."""
    w_data, w_prior = 1 / se**2, 1 / prior_sd**2
    return (w_data * lift + w_prior * prior_mean) / (w_data + w_prior), math.sqrt(1 / (w_data + w_prior))


def test_small_pilot_two_vs_five_percent_is_shrunk_towards_zero():
    n = 400
    k_c, k_t = round(0.02 * n), round(0.05 * n)
    est = compare_proportions(ArmMoments(n=n, sum=k_c, sum_sq=k_c), ArmMoments(n=n, sum=k_t, sum_sq=k_t))
    p_c, p_t = k_c / n, k_t / n
    lift = p_t / p_c - 1  # +150%
    se = math.sqrt(p_t * (1 - p_t) / n / p_c**2 + p_t**2 * p_c * (1 - p_c) / n / p_c**4)
    assert (est.lift, est.lift_se) == (pytest.approx(lift, rel=1e-12), pytest.approx(se, rel=1e-9))

    result = bayes_lift(est.lift, est.lift_se)  # default prior N(0, 0.3²)
    post_mean, post_sd = _conjugate(lift, se, 0.0, 0.3)
    assert (result.prior_mean, result.prior_sd) == (0.0, 0.3)
    assert result.post_mean == pytest.approx(post_mean, rel=1e-12)
    assert result.post_sd == pytest.approx(post_sd, rel=1e-12)
    assert 0 < result.post_mean < lift  # shrunk towards 0, same sign
    assert result.post_mean < 0.5 * lift  # and substantially: the data are weak
    z = stats.norm.isf(0.025)
    assert (result.ci_low, result.ci_high) == (
        pytest.approx(post_mean - z * post_sd, rel=1e-12),
        pytest.approx(post_mean + z * post_sd, rel=1e-12),
    )


@pytest.mark.parametrize("direction", ["increase", "decrease"])
@pytest.mark.parametrize(
    ("lift", "se", "prior_mean", "prior_sd"),
    [(0.12, 0.05, 0.0, 0.3), (-0.2, 0.15, 0.05, 0.1), (0.01, 0.4, 0.0, 0.3)],
)
def test_chance_to_beat_and_expected_loss_by_numerical_integration(lift, se, prior_mean, prior_sd, direction):
    result = bayes_lift(lift, se, prior_mean=prior_mean, prior_sd=prior_sd, direction=direction)
    mu, sd = _conjugate(lift, se, prior_mean, prior_sd)
    posterior = stats.norm(mu, sd)
    if direction == "increase":
        chance = posterior.sf(0)
        loss = integrate.quad(lambda x: -x * posterior.pdf(x), -np.inf, 0)[0]
    else:
        chance = posterior.cdf(0)
        loss = integrate.quad(lambda x: x * posterior.pdf(x), 0, np.inf)[0]
    assert result.chance_to_beat == pytest.approx(chance, rel=1e-9)
    assert result.expected_loss == pytest.approx(loss, rel=1e-7, abs=1e-12)


def test_matches_gbstats_effect_engine_with_a_proper_prior():
    pytest.importorskip("gbstats")
    from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
    from gbstats.models.statistics import SampleMeanStatistic

    rng = np.random.default_rng(81)
    c, t = ArmMoments.from_values(rng.gamma(2, 10, 300)), ArmMoments.from_values(rng.gamma(2, 11, 280))
    est = welch(c, t)
    result = bayes_lift(est.lift, est.lift_se, prior_mean=0.02, prior_sd=0.3)

    stat = lambda a: SampleMeanStatistic(n=a.n, sum=a.sum, sum_squares=a.sum_sq)  # noqa: E731
    config = EffectBayesianConfig(prior_effect=GaussianPrior(mean=0.02, variance=0.09, proper=True))
    ref = EffectBayesianABTest(stat(c), stat(t), config).compute_result()
    assert result.post_mean == pytest.approx(ref.expected, rel=1e-9)
    assert result.post_sd == pytest.approx(ref.uplift.stddev, rel=1e-9)
    assert (result.ci_low, result.ci_high) == (
        pytest.approx(ref.ci[0], rel=1e-9),
        pytest.approx(ref.ci[1], rel=1e-9),
    )
    assert result.chance_to_beat == pytest.approx(ref.chance_to_win, rel=1e-9)
    assert result.expected_loss == pytest.approx(ref.risk[1], rel=1e-6)  # gbstats: risk of shipping treatment


def test_a_vague_prior_leaves_the_data_alone_and_a_tight_one_dominates():
    vague = bayes_lift(0.1, 0.02, prior_sd=1e3)
    assert vague.post_mean == pytest.approx(0.1, rel=1e-6) and vague.post_sd == pytest.approx(0.02, rel=1e-6)
    tight = bayes_lift(0.1, 0.5, prior_mean=0.0, prior_sd=1e-3)
    assert abs(tight.post_mean) < 1e-4


def test_directions_mirror_each_other():
    up = bayes_lift(0.05, 0.04, direction="increase")
    down = bayes_lift(0.05, 0.04, direction="decrease")
    assert up.chance_to_beat + down.chance_to_beat == pytest.approx(1.0, rel=1e-12)
    assert up.expected_loss < down.expected_loss
    assert (up.post_mean, up.ci_low) == (down.post_mean, down.ci_low)


def test_zero_standard_error_means_the_data_pin_the_lift():
    result = bayes_lift(0.2, 0.0)
    assert (result.post_mean, result.post_sd, result.chance_to_beat, result.expected_loss) == (
        0.2,
        0.0,
        1.0,
        0.0,
    )
    assert bayes_lift(-0.1, 0.0).expected_loss == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lift": 0.1, "lift_se": -1.0}, "lift_se >= 0"),
        ({"lift": math.nan, "lift_se": 0.1}, "must be finite"),
        ({"lift": 0.1, "lift_se": 0.1, "prior_sd": 0.0}, "prior_sd must be positive"),
        (
            {"lift": 0.1, "lift_se": 0.1, "direction": "up"},
            "unknown direction 'up'; allowed: increase, decrease",
        ),
    ],
)
def test_bad_input_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bayes_lift(**kwargs)


def test_result_is_json_ready():
    assert set(bayes_lift(0.1, 0.05).to_dict()) == {
        "prior_mean",
        "prior_sd",
        "post_mean",
        "post_sd",
        "ci_low",
        "ci_high",
        "chance_to_beat",
        "expected_loss",
    }
