"""Sample-ratio mismatch: chi-square vs scipy/gbstats, exact binomial vs scipy, exact multinomial vs brute force."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from labkit.stats import srm as srm_module
from labkit.stats import srm_test
from labkit.stats.srm import binomial_two_sided_p


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ({"control": 1000, "fast_reply": 996}, {"control": 0.5, "fast_reply": 0.5}),
        ({"control": 1000, "fast_reply": 880}, {"control": 0.5, "fast_reply": 0.5}),
        ({"control": 520, "a": 1010, "b": 990}, {"control": 0.2, "a": 0.4, "b": 0.4}),
        ({"control": 300, "treatment": 700}, {"control": 3, "treatment": 7}),  # weights need not sum to 1
    ],
)
def test_chi_square_matches_scipy(counts, weights):
    result = srm_test(counts, weights)
    observed = list(counts.values())
    total_weight = sum(weights.values())
    expected = [sum(observed) * weights[arm] / total_weight for arm in counts]
    assert result.method == "chi-square"
    assert result.p_value == pytest.approx(stats.chisquare(observed, expected).pvalue, rel=1e-9)
    assert result.expected == pytest.approx(dict(zip(counts, expected)), rel=1e-12)
    assert result.counts == counts
    assert result.ok == (result.p_value >= 0.001)


def test_chi_square_matches_gbstats():
    gbstats_utils = pytest.importorskip("gbstats.utils")
    counts, weights = {"c": 520, "a": 1010, "b": 990}, {"c": 0.2, "a": 0.4, "b": 0.4}
    ref = gbstats_utils.check_srm(list(counts.values()), list(weights.values()))
    assert srm_test(counts, weights).p_value == pytest.approx(ref, rel=1e-9)


def test_clear_mismatch_is_not_ok():
    result = srm_test({"control": 1000, "treatment": 850}, {"control": 0.5, "treatment": 0.5})
    assert result.p_value < 0.001 and result.ok is False


@pytest.mark.parametrize(
    ("n_control", "n_treatment", "weight"), [(30, 20, 0.5), (2, 12, 0.5), (40, 59, 0.3), (0, 7, 0.5)]
)
def test_small_two_arm_cohorts_use_the_exact_binomial_test(n_control, n_treatment, weight):
    result = srm_test(
        {"control": n_control, "treatment": n_treatment}, {"control": weight, "treatment": 1 - weight}
    )
    assert result.method == "binomial-exact"
    ref = stats.binomtest(n_control, n_control + n_treatment, weight).pvalue
    assert result.p_value == pytest.approx(ref, rel=1e-9)


def _exact_binomial_p(k: int, n: int, p: float) -> float:
    """scipy's two-sided rule (outcomes no more likely than ``k``, within a relative 1e-7) in exact integer
    arithmetic: the float ``p`` is a / 2**e exactly, so each pmf is comb(n, i) a^i (2**e - a)^(n-i) / 2**(e n)."""
    if k == p * n:
        return 1.0
    a, scale = p.as_integer_ratio()
    weights = [math.comb(n, i) * a**i * (scale - a) ** (n - i) for i in range(n + 1)]
    hits = sum(w for w in weights if w * 10**7 <= weights[k] * (10**7 + 1))
    return min(1.0, float(Fraction(hits, scale**n)))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 400), data=st.data(), p=st.floats(0.01, 0.99))
def test_the_exact_binomial_p_value_equals_scipys_binomtest_for_any_count_and_rate(n, data, p):
    # Against scipy's binomtest, and against the same sum in exact arithmetic: far in the tail scipy's pmf
    # drifts (k=16, n=178, p=0.98828125: exact 2.8959608832878e-291, labkit 2.8959608832877e-291, scipy
    # 2.8959608903e-291, a relative 2.4e-9), so scipy is held to 1e-9 only above 1e-200.
    k = data.draw(st.integers(0, n))
    got = binomial_two_sided_p(k, n, p)
    assert got == pytest.approx(_exact_binomial_p(k, n, p), rel=1e-9, abs=1e-300)
    assert got == pytest.approx(stats.binomtest(k, n, p).pvalue, rel=1e-9, abs=1e-200)


def test_the_far_tail_binomial_p_value_is_the_exact_one_where_scipy_drifts():
    k, n, p = 16, 178, 0.98828125  # found by hypothesis
    exact = _exact_binomial_p(k, n, p)
    assert binomial_two_sided_p(k, n, p) == pytest.approx(exact, rel=1e-12)  # scipy: a relative 2.4e-9 off


def _brute_force_multinomial_p(counts, probs):
    """P(outcomes no more likely than the observed one), by listing every outcome."""
    total = sum(counts)
    pmf = lambda c: stats.multinomial.pmf(c, total, probs)  # noqa: E731
    p_obs = pmf(counts)
    outcomes = (c for c in itertools.product(range(total + 1), repeat=len(counts) - 1) if sum(c) <= total)
    return sum(p for c in outcomes if (p := pmf([*c, total - sum(c)])) <= p_obs * (1 + 1e-7))


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ([10, 12, 8], [1, 1, 1]),
        ([3, 15, 12], [0.2, 0.4, 0.4]),
        ([0, 5, 6, 2], [1, 1, 1, 1]),
        ([20, 20, 20], [0.5, 0.25, 0.25]),
    ],
)
def test_small_multi_arm_cohorts_use_the_exact_multinomial_test(counts, weights):
    arms = [f"arm{i}" for i in range(len(counts))]
    result = srm_test(dict(zip(arms, counts)), dict(zip(arms, weights)))
    probs = [w / sum(weights) for w in weights]
    assert result.method == "multinomial-exact"
    assert result.p_value == pytest.approx(min(1.0, _brute_force_multinomial_p(counts, probs)), rel=1e-6)


def test_monte_carlo_multinomial_agrees_with_exact_enumeration(monkeypatch):
    counts = {"a": 40, "b": 25, "c": 3}
    weights = {"a": 0.5, "b": 0.45, "c": 0.05}
    exact = srm_test(counts, weights)
    monkeypatch.setattr(srm_module, "MAX_ENUMERATION", 10)
    approx = srm_test(counts, weights)
    assert (exact.method, approx.method) == ("multinomial-exact", "multinomial-mc")
    mc_se = math.sqrt(exact.p_value * (1 - exact.p_value) / srm_module.MC_DRAWS)
    assert approx.p_value == pytest.approx(exact.p_value, abs=5 * mc_se + 1e-5)


def test_large_cohort_with_a_tiny_arm_is_still_exact():
    # expected holdout 0.0004 · 10 002 ≈ 4 < 5, and 5·10⁷ allocations: the seeded Monte Carlo test
    counts = {"control": 5000, "holdout": 12, "treatment": 4990}
    weights = {"control": 0.4998, "holdout": 0.0004, "treatment": 0.4998}
    result = srm_test(counts, weights)
    assert result.method == "multinomial-mc"
    assert result.p_value == srm_test(counts, weights).p_value  # seeded
    # the holdout alone is 12 where 4 were expected: an exact binomial tail bounds what to expect
    assert result.p_value < 0.01


@pytest.mark.parametrize(
    ("counts", "method"),
    [
        ({"c": 50, "t": 50}, "chi-square"),  # total 100, expected 50: the approximation is fine
        ({"c": 50, "t": 49}, "binomial-exact"),  # total 99
    ],
)
def test_switching_rule(counts, method):
    assert srm_test(counts, {"c": 0.5, "t": 0.5}).method == method


def test_expected_count_below_five_switches_to_exact():
    result = srm_test({"c": 995, "t": 5}, {"c": 0.996, "t": 0.004})  # expected t = 4
    assert result.method == "binomial-exact"


def test_no_customers_is_not_a_mismatch():
    result = srm_test({"c": 0, "t": 0}, {"c": 0.5, "t": 0.5})
    assert (result.p_value, result.ok, result.method) == (None, True, "no-data")


@pytest.mark.parametrize(
    ("counts", "weights", "message"),
    [
        (
            {"c": 10, "t": 10},
            {"c": 0.5, "x": 0.5},
            r"counts has arms \['c', 't'\] but weights has \['c', 'x'\]",
        ),
        ({"c": -1, "t": 10}, {"c": 0.5, "t": 0.5}, r"count of arm 'c' must be a whole number >= 0, got -1"),
        ({"c": 1.5, "t": 10}, {"c": 0.5, "t": 0.5}, r"count of arm 'c' must be a whole number"),
        ({"c": 10, "t": 10}, {"c": 0.0, "t": 1.0}, r"weights must be positive and finite"),
        ({"c": 10}, {"c": 1.0}, r"at least 2 arms"),
    ],
)
def test_bad_input_raises(counts, weights, message):
    with pytest.raises(ValueError, match=message):
        srm_test(counts, weights)


def test_result_is_json_ready():
    data = srm_test({"c": 500, "t": 520}, {"c": 0.5, "t": 0.5}).to_dict()
    assert set(data) == {"p_value", "ok", "counts", "expected", "method"}


# --- operating characteristics -----------------------------------------------------------------------


def test_chi_square_false_alarm_rate_under_the_planned_split():
    # the production threshold is 0.001; at 0.05 a 2000-replication check has power to see a miscalibration
    alpha, reps = 0.05, 2000
    draws = np.random.default_rng(51).multinomial(1200, [0.2, 0.4, 0.4], size=reps)
    hits = sum(
        srm_test(dict(zip("abc", row)), {"a": 0.2, "b": 0.4, "c": 0.4}).p_value < alpha for row in draws
    )
    low, high = stats.binom.interval(0.9999, reps, alpha)
    assert low <= hits <= high, f"false alarms {hits}/{reps} at alpha={alpha}; 99.99% bound [{low}, {high}]"


@pytest.mark.parametrize("total", [20, 61])
def test_exact_binomial_size_never_exceeds_alpha(total):
    alpha, weight = 0.05, 0.3
    pmf = stats.binom.pmf(np.arange(total + 1), total, weight)
    size = sum(
        pmf[k]
        for k in range(total + 1)
        if srm_test({"c": k, "t": total - k}, {"c": weight, "t": 1 - weight}).p_value < alpha
    )
    assert size <= alpha, f"exact size {size:.4f} at total={total} exceeds alpha={alpha}"
