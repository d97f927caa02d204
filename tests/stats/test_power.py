"""Sample size and MDE against statsmodels NormalIndPower / TTestIndPower, and achieved power by simulation."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower

from labkit.stats import ArmMoments, compare_proportions, mde_at_n, proportion_sd, sample_size_per_arm, welch

CASES = [  # (sd_control, sd_treatment, mde_abs, alpha, power)
    (1.0, 1.0, 0.3, 0.05, 0.8),
    (2.0, 2.0, 0.1, 0.01, 0.9),
    (1.0, 2.5, 0.5, 0.1, 0.8),
    (proportion_sd(0.081), proportion_sd(0.081 * 0.85), 0.081 * 0.15, 0.05, 0.8),  # churn, relative mde 15%
    (5.0, 5.0, 4.0, 0.05, 0.95),  # tiny n
]


def _pooled_d(sd_c, sd_t, mde):
    """Standardised effect for statsmodels: the unequal variances enter through their average."""
    return abs(mde) / math.sqrt((sd_c**2 + sd_t**2) / 2)


@pytest.mark.parametrize(("sd_c", "sd_t", "mde", "alpha", "power"), CASES)
def test_sample_size_matches_normal_ind_power(sd_c, sd_t, mde, alpha, power):
    n = sample_size_per_arm(sd_control=sd_c, sd_treatment=sd_t, mde_abs=mde, alpha=alpha, power=power)
    ref = NormalIndPower().solve_power(
        effect_size=_pooled_d(sd_c, sd_t, mde), alpha=alpha, power=power, ratio=1.0
    )
    assert n == max(2, math.ceil(ref))


@pytest.mark.parametrize(("sd_c", "sd_t", "mde", "alpha", "power"), CASES[:3])
def test_one_sided_sample_size_matches_normal_ind_power(sd_c, sd_t, mde, alpha, power):
    n = sample_size_per_arm(
        sd_control=sd_c, sd_treatment=sd_t, mde_abs=mde, alpha=alpha, power=power, two_sided=False
    )
    ref = NormalIndPower().solve_power(
        effect_size=_pooled_d(sd_c, sd_t, mde), alpha=alpha, power=power, ratio=1.0, alternative="larger"
    )
    assert n == math.ceil(ref)


@pytest.mark.parametrize(("sd_c", "sd_t", "mde", "alpha", "power"), [c for c in CASES if c[0] == c[1]])
def test_t_based_sample_size_is_at_most_two_more(sd_c, sd_t, mde, alpha, power):
    n = sample_size_per_arm(sd_control=sd_c, mde_abs=mde, alpha=alpha, power=power)
    ref = math.ceil(TTestIndPower().solve_power(effect_size=mde / sd_c, alpha=alpha, power=power, ratio=1.0))
    assert n <= ref <= n + 2


@pytest.mark.parametrize(
    ("sd", "n", "alpha", "power"), [(1.0, 100, 0.05, 0.8), (3.0, 2000, 0.01, 0.9), (0.27, 37, 0.1, 0.5)]
)
def test_mde_at_n_has_the_planned_power_in_statsmodels(sd, n, alpha, power):
    mde = mde_at_n(sd=sd, n_per_arm=n, alpha=alpha, power=power)
    d = mde / sd
    # the planning formula is the power of one tail at alpha/2 ...
    one_tail = NormalIndPower().power(
        effect_size=d, nobs1=n, alpha=alpha / 2, ratio=1.0, alternative="larger"
    )
    assert one_tail == pytest.approx(power, rel=1e-9)
    # ... so the two-sided power exceeds the plan only by the far tail's rejection probability
    two_sided = NormalIndPower().power(effect_size=d, nobs1=n, alpha=alpha, ratio=1.0)
    far_tail = stats.norm.cdf(-stats.norm.isf(alpha / 2) - d * math.sqrt(n / 2))
    assert two_sided == pytest.approx(power + far_tail, rel=1e-9)


def test_mde_and_sample_size_are_inverse():
    n = sample_size_per_arm(sd_control=1.3, mde_abs=0.2, alpha=0.05, power=0.8)
    assert (
        mde_at_n(sd=1.3, n_per_arm=n, alpha=0.05, power=0.8)
        <= 0.2
        < mde_at_n(sd=1.3, n_per_arm=n - 1, alpha=0.05, power=0.8)
    )


def test_proportion_sd():
    assert proportion_sd(0.2) == pytest.approx(math.sqrt(0.16), rel=1e-12)
    assert proportion_sd(0.0) == 0.0
    with pytest.raises(ValueError, match=r"a proportion must be in \[0, 1\], got 1.2"):
        proportion_sd(1.2)


def test_huge_effects_still_need_two_customers_per_arm():
    assert sample_size_per_arm(sd_control=1.0, mde_abs=100.0, alpha=0.05, power=0.8) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sd_control": 1.0, "mde_abs": 0.0, "alpha": 0.05, "power": 0.8}, "mde_abs must be a non-zero"),
        ({"sd_control": 0.0, "mde_abs": 0.1, "alpha": 0.05, "power": 0.8}, "not both 0"),
        ({"sd_control": 1.0, "mde_abs": 0.1, "alpha": 0.05, "power": 1.0}, r"power must be in \(0, 1\)"),
        ({"sd_control": 1.0, "mde_abs": 0.1, "alpha": 0.0, "power": 0.8}, r"alpha must be in \(0, 1\)"),
    ],
)
def test_bad_input_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_size_per_arm(**kwargs)


# --- simulation: the planned n delivers the planned power --------------------------------------------


def _binomial_bounds(reps, rate):
    return stats.binom.interval(0.9999, reps, rate)


def test_planned_n_achieves_planned_power_for_a_mean():
    alpha, power, mde, sd, reps = 0.05, 0.8, 0.3, 1.0, 3000
    n = sample_size_per_arm(sd_control=sd, mde_abs=mde, alpha=alpha, power=power)
    rng = np.random.default_rng(101)
    yc, yt = rng.normal(0, sd, (reps, n)), rng.normal(mde, sd, (reps, n))
    moments = lambda y: [ArmMoments(n, s, q) for s, q in zip(y.sum(1), (y * y).sum(1))]  # noqa: E731
    hits = sum(welch(c, t, alpha=alpha).p_value < alpha for c, t in zip(moments(yc), moments(yt)))
    low, high = _binomial_bounds(reps, power)
    assert low <= hits <= high, (
        f"power at n={n}: {hits}/{reps} rejections; planned {power}, 99.99% bound [{low}, {high}]"
    )


def test_planned_n_achieves_planned_power_for_a_proportion():
    alpha, power, p_c, p_t, reps = 0.05, 0.8, 0.10, 0.13, 3000
    n = sample_size_per_arm(
        sd_control=proportion_sd(p_c),
        sd_treatment=proportion_sd(p_t),
        mde_abs=p_t - p_c,
        alpha=alpha,
        power=power,
    )
    rng = np.random.default_rng(102)
    k_c, k_t = rng.binomial(n, p_c, reps), rng.binomial(n, p_t, reps)
    hits = sum(
        compare_proportions(ArmMoments(n, a, a), ArmMoments(n, b, b), alpha=alpha).p_value < alpha
        for a, b in zip(k_c, k_t)
    )
    # the pooled z-test is a hair less powerful than the unpooled normal plan: allow one point of power
    low, high = _binomial_bounds(reps, power)
    assert low - 0.01 * reps <= hits <= high, (
        f"power at n={n}: {hits}/{reps}; planned {power}, bound [{low}, {high}]"
    )


# -- sequential mode: the always-valid boundary h replaces z_{1-alpha/2} ---------------------------


def _h(n, n_tuning, alpha):
    """The confidence-sequence multiplier, written out from the issue's formula (not labkit's code)."""
    u = n * (math.log(1 - 2 * math.log(alpha)) - 2 * math.log(alpha)) / n_tuning
    return math.sqrt((u + 1) / u * math.log((u + 1) / alpha**2))


@pytest.mark.parametrize(
    ("sd", "mde", "alpha", "power", "cap"),
    [
        (1.0, 0.1, 0.05, 0.8, 4000),
        (1.0, 0.1, 0.05, 0.8, 40_000),
        (3.0, 0.5, 0.1, 0.9, 1000),
        (0.3, 0.01, 0.01, 0.8, 10**6),
    ],
)
def test_sequential_sample_size_is_the_smallest_n_reaching_power_at_the_final_look(
    sd, mde, alpha, power, cap
):
    from labkit.stats.power import sample_size_per_arm_sequential

    n = sample_size_per_arm_sequential(sd=sd, mde_abs=mde, alpha=alpha, power=power, n_tuning=cap)

    def achieved(k):  # P(|Z| > h) with Z ~ N(mde/se, 1), both tails, by scipy
        se = sd * math.sqrt(2 / k)
        h = _h(2 * k, cap, alpha)
        return stats.norm.sf(h - mde / se) + stats.norm.cdf(-h - mde / se)

    assert achieved(n) >= power - 1e-9 > achieved(n - 1)
    fixed = sample_size_per_arm(sd_control=sd, mde_abs=mde, alpha=alpha, power=power)
    assert n > fixed  # always-valid intervals cost customers


def test_sequential_mde_at_cap_has_the_planned_power():
    from labkit.stats.power import mde_at_n_sequential

    sd, n, cap, alpha, power = 2.0, 5000, 10_000, 0.05, 0.8
    mde = mde_at_n_sequential(sd=sd, n_per_arm=n, n_analysed=2 * n, n_tuning=cap, alpha=alpha, power=power)
    se = sd * math.sqrt(2 / n)
    assert stats.norm.sf(_h(2 * n, cap, alpha) - mde / se) == pytest.approx(power, abs=1e-12)


def test_sequential_planned_n_achieves_planned_power_by_simulation():
    """Simulate pilots at the planned n with the true effect = mde; the always-valid test at the final
    look (labkit's welch + always_valid) rejects in ~80% of them."""
    from labkit.stats import always_valid
    from labkit.stats.power import sample_size_per_arm_sequential

    sd, mde, alpha, power, cap = 1.0, 0.2, 0.05, 0.8, 2000
    n = sample_size_per_arm_sequential(sd=sd, mde_abs=mde, alpha=alpha, power=power, n_tuning=cap)
    rng = np.random.default_rng(20261123)
    reps, hits = 1500, 0
    for _ in range(reps):
        c, t = rng.normal(0, sd, n), rng.normal(mde, sd, n)
        est = welch(_moments(c), _moments(t), alpha=alpha)
        est = always_valid(est, n=2 * n, n_tuning=cap, alpha=alpha)
        hits += est.ci_low > 0 or est.ci_high < 0
    mc = 3 * math.sqrt(power * (1 - power) / reps)
    assert abs(hits / reps - power) < mc + 0.01  # + the normal-vs-Welch approximation


def _moments(x):
    return ArmMoments(n=len(x), sum=float(x.sum()), sum_sq=float((x * x).sum()))
