"""The arm × segment interaction test against statsmodels' OLS F test on the customer rows (issue #16)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.anova import anova_lm

from labkit.stats.heterogeneity import interaction_test


def cells(df):
    g = df.groupby(["segment", "arm"])["y"]
    out = pd.DataFrame(
        {"n": g.size(), "mean": g.mean(), "m2": g.apply(lambda s: ((s - s.mean()) ** 2).sum())}
    )
    return out.reset_index()


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_segments=st.integers(2, 5),
    n_arms=st.integers(2, 3),
    binary=st.booleans(),
    interaction=st.sampled_from([0.0, 0.3]),
)
def test_matches_statsmodels_interaction_f_test(seed, n_segments, n_arms, binary, interaction):
    rng = np.random.default_rng(seed)
    n = 600
    seg = rng.integers(0, n_segments, n)
    arm = rng.integers(0, n_arms, n)
    latent = 0.2 * seg + 0.1 * arm + interaction * (seg == 1) * (arm == 1) + rng.normal(size=n)
    y = (latent > 0.5).astype(float) if binary else latent
    df = pd.DataFrame({"segment": [f"s{s}" for s in seg], "arm": [f"a{a}" for a in arm], "y": y})
    c = cells(df)
    res = interaction_test(c["segment"], c["arm"], c["n"], c["mean"], c["m2"])
    full = smf.ols("y ~ C(segment) * C(arm)", df).fit()
    add = smf.ols("y ~ C(segment) + C(arm)", df).fit()
    table = anova_lm(add, full)
    assert res is not None
    assert res.f_statistic == pytest.approx(table["F"].iloc[1], rel=1e-8)
    assert res.p_value == pytest.approx(table["Pr(>F)"].iloc[1], rel=1e-7, abs=1e-14)
    assert res.df_num == table["df_diff"].iloc[1]


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.SingularMatrixWarning")
def test_an_empty_cell_drops_its_parameter_as_ols_does():
    rng = np.random.default_rng(1)
    rows = [(s, a) for s in ("x", "y", "z") for a in ("c", "t") if (s, a) != ("z", "t")]
    df = pd.DataFrame(
        [(s, a, v) for s, a in rows for v in rng.normal(size=40)], columns=["segment", "arm", "y"]
    )
    c = cells(df)
    res = interaction_test(c["segment"], c["arm"], c["n"], c["mean"], c["m2"])
    table = anova_lm(
        smf.ols("y ~ C(segment) + C(arm)", df).fit(), smf.ols("y ~ C(segment) * C(arm)", df).fit()
    )
    assert res.df_num == 1
    assert res.p_value == pytest.approx(table["Pr(>F)"].iloc[1], rel=1e-7)


def test_one_segment_is_not_estimable():
    assert interaction_test(["a", "a"], ["c", "t"], [10, 10], [0.1, 0.2], [1.0, 1.0]) is None


def test_aa_false_positive_rate_by_simulation():
    rng = np.random.default_rng(9)
    reps, hits = 1500, 0
    for _ in range(reps):
        n = rng.integers(20, 80, size=(4, 2)).astype(float)
        mean = rng.normal(0, 1 / np.sqrt(n))
        m2 = rng.chisquare(n - 1)
        seg, arm = np.meshgrid(range(4), range(2), indexing="ij")
        hits += interaction_test(seg.ravel(), arm.ravel(), n.ravel(), mean.ravel(), m2.ravel()).p_value < 0.05
    from scipy import stats

    lo, hi = stats.binom.ppf([0.0005, 0.9995], reps, 0.05)
    assert lo <= hits <= hi
