"""Holm and Benjamini–Hochberg against statsmodels multipletests; None entries; FWER/FDR by simulation."""

import gc
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.multitest import multipletests as _multipletests

from labkit.stats import adjust


def multipletests(p_values, method: str):
    """statsmodels' multipletests, the reference. Its Holm branch calls gc.collect(), which walks the whole
    heap of a test worker (~0.35 s per call in a full session, a few ms alone); with the heap frozen for the
    call it walks only what the call made. Nothing it computes changes."""
    gc.freeze()
    try:
        return _multipletests(p_values, method=method)
    finally:
        gc.unfreeze()


FAMILIES = [
    [0.01, 0.04, 0.03, 0.2],
    [0.5],
    [0.001, 0.001, 0.049, 0.05, 0.9, 1.0],  # ties and the boundaries
    [0.0, 0.3, 0.02],
    [0.04, 0.01, 0.03, 0.02, 0.05, 0.6, 0.7, 0.002],
]


@pytest.mark.parametrize(("method", "reference"), [("holm", "holm"), ("bh", "fdr_bh")])
@pytest.mark.parametrize("p_values", FAMILIES)
def test_matches_statsmodels(p_values, method, reference):
    expected = multipletests(p_values, method=reference)[1]
    assert adjust(p_values, method) == pytest.approx(list(expected), rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
    st.sampled_from([("holm", "holm"), ("bh", "fdr_bh")]),
)
def test_matches_statsmodels_on_any_family(p_values, methods):
    # atol 1e-300: below it floats are subnormal, with a few bits at most, and the order of the operations
    # decides the last one (test_a_subnormal_p_value_is_adjusted_to_the_correctly_rounded_value)
    method, reference = methods
    np.testing.assert_allclose(
        adjust(p_values, method), multipletests(p_values, method=reference)[1], rtol=1e-12, atol=1e-300
    )


def test_a_subnormal_p_value_is_adjusted_to_the_correctly_rounded_value():
    # found by hypothesis: BH of 5e-324 at rank 2 of 9 is 5e-324 * 9 / 2 = 4.5 subnormal units, which rounds
    # (half to even) to 4: 2e-323. statsmodels divides by the rounded rank / m and gives 2.5e-323.
    p_values = [0.0, *[1.0] * 7, 5e-324]
    assert adjust(p_values, "bh")[8] == float(Fraction(5e-324) * 9 / 2) == 2e-323


def test_none_is_passed_through_and_not_counted():
    p_values = [0.01, None, 0.04, 0.03, None]
    adjusted = adjust(p_values, "holm")
    assert adjusted[1] is None and adjusted[4] is None
    assert [adjusted[i] for i in (0, 2, 3)] == pytest.approx(
        list(multipletests([0.01, 0.04, 0.03], method="holm")[1])
    )


def test_none_correction_and_empty_family():
    assert adjust([0.2, None, 0.01], "none") == [0.2, None, 0.01]
    assert adjust([], "holm") == []
    assert adjust([None], "bh") == [None]


@pytest.mark.parametrize(
    ("p_values", "method", "message"),
    [
        ([0.1], "bonferroni", r"unknown correction 'bonferroni'; allowed: holm, bh, none"),
        ([0.1, 1.2], "holm", r"p-values must be in \[0, 1\]"),
        ([float("nan")], "bh", r"p-values must be in \[0, 1\]"),
    ],
)
def test_bad_input_raises(p_values, method, message):
    with pytest.raises(ValueError, match=message):
        adjust(p_values, method)


def test_holm_controls_the_familywise_error_rate():
    alpha, reps, m = 0.05, 4000, 6
    p = np.random.default_rng(61).uniform(size=(reps, m))  # every null true
    hits = sum(min(adjust(list(row), "holm")) < alpha for row in p)
    raw_hits = int(np.sum(p.min(axis=1) < alpha))
    _, high = stats.binom.interval(0.9999, reps, alpha)
    assert hits <= high, f"Holm FWER {hits}/{reps} at alpha={alpha}; 99.99% upper bound {high}"
    assert raw_hits > 4 * high, "uncorrected, six looks at the null should reject far more often"


def test_bh_controls_the_false_discovery_rate():
    alpha, reps, m, m_true = 0.1, 3000, 10, 3
    rng = np.random.default_rng(62)
    z = rng.normal(size=(reps, m))
    z[:, :m_true] += 3.0  # three real effects
    p = 2 * stats.norm.sf(np.abs(z))
    fdp = []
    for row in p:
        rejected = np.array(adjust(list(row), "bh")) < alpha
        fdp.append(rejected[m_true:].sum() / max(1, rejected.sum()))
    # BH (independent tests): FDR = alpha · m0/m = 0.07; allow 4 Monte Carlo standard errors
    bound = alpha * (m - m_true) / m + 4 * np.std(fdp) / np.sqrt(reps)
    assert np.mean(fdp) <= bound, f"BH FDR {np.mean(fdp):.4f} over {reps} reps exceeds {bound:.4f}"
