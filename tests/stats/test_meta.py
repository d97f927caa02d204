"""DerSimonian–Laird against statsmodels combine_effects (random effects; fixed effects when τ² truncates)."""

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

from labkit.stats import dersimonian_laird

HETEROGENEOUS = [  # (lifts of pilots, their variances): Q > k − 1
    ([0.1, 0.5, 0.2, -0.3], [0.01, 0.02, 0.015, 0.03]),
    ([0.02, 0.15, -0.05, 0.30, 0.08, 0.01], [0.002, 0.004, 0.003, 0.01, 0.001, 0.0015]),
    ([0.4, -0.2], [0.01, 0.012]),
]
HOMOGENEOUS = [  # Q < k − 1: τ² truncates to 0
    ([0.1, 0.3, 0.2], [0.01, 0.02, 0.015]),
    ([0.05, 0.06, 0.04, 0.05], [0.01, 0.01, 0.02, 0.03]),
]


@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize(("effects", "variances"), HETEROGENEOUS)
def test_random_effects_match_statsmodels(effects, variances, alpha):
    result = dersimonian_laird(effects, variances, alpha=alpha)
    ref = combine_effects(np.array(effects), np.array(variances), method_re="chi2", alpha=alpha)
    ci = ref.conf_int(alpha=alpha, use_t=False)[1]  # rows: fixed, random, fixed wls, random wls
    assert result.k == len(effects)
    assert result.tau2 > 0 and ref.tau2 == pytest.approx(result.tau2, rel=1e-9)
    assert result.pooled == pytest.approx(ref.mean_effect_re, rel=1e-9)
    assert result.se == pytest.approx(ref.sd_eff_w_re, rel=1e-9)
    assert (result.ci_low, result.ci_high) == (pytest.approx(ci[0], rel=1e-9), pytest.approx(ci[1], rel=1e-9))
    assert result.q == pytest.approx(ref.q, rel=1e-9)
    assert result.i2 == pytest.approx(ref.i2, rel=1e-9)
    p_value = 2 * stats.norm.sf(abs(ref.mean_effect_re / ref.sd_eff_w_re))
    assert result.p_value == pytest.approx(p_value, rel=1e-9)


@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")  # statsmodels' τ² < 0
@pytest.mark.parametrize(("effects", "variances"), HOMOGENEOUS)
def test_truncated_tau2_gives_the_fixed_effect_estimate(effects, variances):
    result = dersimonian_laird(effects, variances)
    ref = combine_effects(np.array(effects), np.array(variances), method_re="chi2")
    assert ref.tau2 < 0  # statsmodels does not truncate
    assert (result.tau2, result.i2) == (0.0, 0.0)
    assert result.pooled == pytest.approx(ref.mean_effect_fe, rel=1e-9)
    assert result.se == pytest.approx(ref.sd_eff_w_fe, rel=1e-9)
    assert result.q == pytest.approx(ref.q, rel=1e-9)


def test_one_pilot_is_returned_as_is():
    result = dersimonian_laird([0.12], [0.0025], alpha=0.05)
    z = stats.norm.isf(0.025)
    assert (result.k, result.pooled, result.tau2, result.q, result.i2) == (1, 0.12, 0.0, 0.0, None)
    assert result.se == pytest.approx(0.05, rel=1e-12)
    assert (result.ci_low, result.ci_high) == (pytest.approx(0.12 - z * 0.05), pytest.approx(0.12 + z * 0.05))
    assert result.p_value == pytest.approx(2 * stats.norm.sf(0.12 / 0.05), rel=1e-12)


def test_identical_pilots_have_no_heterogeneity():
    result = dersimonian_laird([0.1, 0.1, 0.1], [0.01, 0.02, 0.04])
    assert (result.tau2, result.i2, result.q) == (0.0, 0.0, pytest.approx(0.0, abs=1e-15))
    assert result.pooled == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize(
    ("effects", "variances", "message"),
    [
        ([], [], "at least one study"),
        ([0.1, 0.2], [0.01], "same length"),
        ([0.1, 0.2], [0.01, 0.0], "variances finite and positive"),
        ([0.1, np.nan], [0.01, 0.02], "effects must be finite"),
    ],
)
def test_bad_input_raises(effects, variances, message):
    with pytest.raises(ValueError, match=message):
        dersimonian_laird(effects, variances)


def test_result_is_json_ready():
    assert set(dersimonian_laird([0.1, 0.2], [0.01, 0.01]).to_dict()) == {
        "k",
        "pooled",
        "se",
        "ci_low",
        "ci_high",
        "tau2",
        "i2",
        "q",
        "p_value",
    }


def test_pooled_interval_covers_the_mean_lift_across_many_pilots():
    # k = 25 pilots with true heterogeneity τ = 0.05 around a mean lift of 0.08
    level, reps, k = 0.95, 2000, 25
    rng = np.random.default_rng(111)
    variances = rng.uniform(0.001, 0.01, (reps, k))
    effects = 0.08 + rng.normal(0, 0.05, (reps, k)) + rng.normal(0, np.sqrt(variances))
    hits = 0
    for y, v in zip(effects, variances):
        result = dersimonian_laird(y, v, alpha=1 - level)
        hits += result.ci_low <= 0.08 <= result.ci_high
    # DL's normal interval is known to run a little short with estimated τ²: allow 1.5 points
    low, high = stats.binom.interval(0.9999, reps, level)
    assert low - 0.015 * reps <= hits <= high, f"coverage {hits}/{reps}; 99.99% bound [{low}, {high}] - 1.5%"
