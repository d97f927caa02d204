"""Post-stratification against statsmodels: the fully interacted OLS (Lin 2013) with HC2 errors, and the
stratum fixed-effects OLS where every block has the same treated share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.stats.moments import ArmMoments
from labkit.stats.poststrat import post_stratified


def cells(frame: pd.DataFrame, treat: int) -> dict[str, ArmMoments]:
    return {
        str(b): ArmMoments.from_values(g["y"].to_numpy())
        for b, g in frame[frame.treat == treat].groupby("block")
    }


def interacted_ols(frame: pd.DataFrame):
    """y ~ treat * (block dummies centred at their shares), HC2: the arm's coefficient is the estimate."""
    d = frame.copy()
    dummies = pd.get_dummies(d["block"], prefix="b", drop_first=True, dtype=float)
    dummies -= dummies.mean()
    d = pd.concat([d, dummies], axis=1)
    terms = " + ".join(f"{c} + treat:{c}" for c in dummies.columns)
    return smf.ols(f"y ~ treat{' + ' + terms if terms else ''}", data=d).fit(cov_type="HC2")


def frame_from(blocks: list[tuple[int, int]], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for b, (n_c, n_t) in enumerate(blocks):
        base = rng.normal(0, 3)
        y = np.concatenate([rng.normal(base, 1 + b % 3, n_c), rng.normal(base + 0.5, 2, n_t)])
        parts.append(pd.DataFrame({"block": f"s{b}", "treat": [0] * n_c + [1] * n_t, "y": y}))
    return pd.concat(parts, ignore_index=True)


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.lists(st.tuples(st.integers(2, 60), st.integers(2, 60)), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_post_stratified_equals_the_fully_interacted_ols_with_hc2(blocks, seed):
    f = frame_from(blocks, seed)
    est, dropped = post_stratified(cells(f, 0), cells(f, 1), alpha=0.05)
    ols = interacted_ols(f)
    assert dropped == 0 and est.method == "post-stratified"
    assert est.effect == pytest.approx(ols.params["treat"], rel=1e-9, abs=1e-9)
    assert est.se == pytest.approx(ols.bse["treat"], rel=1e-9)
    assert est.n_control + est.n_treatment == len(f)


def test_with_a_common_treated_share_it_equals_stratum_fixed_effects():
    f = frame_from([(50, 50), (120, 120), (30, 30)], seed=7)
    est, _ = post_stratified(cells(f, 0), cells(f, 1))
    fe = smf.ols("y ~ treat + C(block)", data=f).fit()
    assert est.effect == pytest.approx(fe.params["treat"], rel=1e-9)


def test_unequal_treated_shares_make_the_pooled_difference_wrong_and_this_right():
    rng = np.random.default_rng(3)
    f = pd.concat(
        [
            pd.DataFrame({"block": "a", "treat": [0] * 20 + [1] * 180, "y": np.r_[rng.normal(10, 1, 200)] + np.r_[[0] * 20, [1] * 180]}),
            pd.DataFrame({"block": "b", "treat": [0] * 180 + [1] * 20, "y": np.r_[rng.normal(0, 1, 200)] + np.r_[[0] * 180, [1] * 20]}),
        ],
        ignore_index=True,
    )  # fmt: skip
    est, _ = post_stratified(cells(f, 0), cells(f, 1))
    pooled = f[f.treat == 1].y.mean() - f[f.treat == 0].y.mean()
    assert abs(pooled - 1) > 5 and est.ci_low < 1 < est.ci_high


def test_a_block_missing_an_arm_is_left_out_and_counted():
    f = frame_from([(30, 30), (40, 1), (0, 5)], seed=1)
    est, dropped = post_stratified(cells(f, 0), cells(f, 1))
    kept = f[f.block == "s0"]
    assert dropped == 2
    assert est.effect == pytest.approx(kept[kept.treat == 1].y.mean() - kept[kept.treat == 0].y.mean())
    assert (est.n_control, est.n_treatment) == (30, 30)


def test_no_comparable_block_gives_a_reason_not_a_nan():
    est, dropped = post_stratified({"a": ArmMoments.from_values([1.0])}, {"a": ArmMoments.from_values([2.0])})
    assert dropped == 1 and est.reason == "too_few" and est.se is None
    est, _ = post_stratified({}, {"a": ArmMoments.from_values([2.0, 3.0])})
    assert est.reason == "empty_arm"
