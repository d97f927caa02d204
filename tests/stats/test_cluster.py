"""Cluster-randomised analysis against statsmodels' cluster-robust OLS, and by simulation (issue #16)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.power import TTestIndPower

from labkit.stats.cluster import (
    ClusterCells,
    cluster_contrast,
    clusters_per_arm,
    design_effect,
    icc_anova,
    weighted_cluster_size,
)


def simulate(rng, n_clusters, icc, effect=0.0, base=0.0, binary=False, sizes=(5, 60)):
    """Customers in clusters with a cluster random effect; clusters (not customers) get the arm."""
    sizes = rng.integers(sizes[0], sizes[1], n_clusters)
    arm = rng.permutation(np.arange(n_clusters) % 2)
    u = rng.normal(0, math.sqrt(icc), n_clusters)
    cluster = np.repeat(np.arange(n_clusters), sizes)
    a = np.repeat(arm, sizes)
    latent = base + effect * a + u[cluster] + rng.normal(0, math.sqrt(1 - icc), cluster.size)
    y = (latent > 0).astype(float) if binary else latent
    return pd.DataFrame({"cluster": cluster, "arm": a, "y": y})


def cells_of(df: pd.DataFrame, cell_col="arm") -> ClusterCells:
    """Each (cluster, cell)'s sum, count and sum of squares of y, with numpy (integer labels): a pandas
    groupby with a lambda per group was ~90% of the simulations' time."""
    keys, where = np.unique(df[["cluster", cell_col]].to_numpy(), axis=0, return_inverse=True)
    where = where.ravel()
    y = df["y"].to_numpy(dtype=float)
    sums = np.bincount(where, weights=y)
    squares = np.bincount(where, weights=y * y)
    n = np.bincount(where)
    return ClusterCells.of(
        pd.Series(keys[:, 0]), pd.Series(keys[:, 1]), pd.Series(sums), pd.Series(n), pd.Series(squares)
    )


def statsmodels_contrast(df: pd.DataFrame, cell_col: str, treatment: int, control: int, k: int):
    x = np.zeros((len(df), k))
    x[np.arange(len(df)), df[cell_col].to_numpy()] = 1.0
    fit = sm.OLS(df["y"].to_numpy(), x).fit(cov_type="cluster", cov_kwds={"groups": df["cluster"].to_numpy()})
    c = np.zeros(k)
    c[treatment], c[control] = 1.0, -1.0
    t = fit.t_test(c)
    return float(np.asarray(t.effect).ravel()[0]), float(np.asarray(t.sd).ravel()[0])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_clusters=st.integers(6, 60), binary=st.booleans())
def test_matches_statsmodels_cluster_robust_ols(seed, n_clusters, binary):
    rng = np.random.default_rng(seed)
    df = simulate(rng, n_clusters, icc=0.1, effect=0.2, binary=binary)
    if df.groupby("arm")["y"].var().min() == 0:
        return
    res = cluster_contrast(cells_of(df), treatment=1, control=0, small_sample="cr1")
    effect, sd = statsmodels_contrast(df, "arm", 1, 0, 2)
    assert res.effect == pytest.approx(effect, rel=1e-9, abs=1e-12)
    assert res.se == pytest.approx(sd, rel=1e-9)
    g = df["cluster"].nunique()
    assert res.df == g - 2
    p_ref = 2 * sps.t.sf(abs(effect / sd), g - 2)
    assert res.p_value == pytest.approx(p_ref, rel=1e-8, abs=1e-15)
    crit = sps.t.ppf(0.975, g - 2)
    assert res.ci_low == pytest.approx(effect - crit * sd, rel=1e-9, abs=1e-12)
    assert (res.ci_low > 0 or res.ci_high < 0) == (res.p_value < 0.05)


def cr2_reference(df: pd.DataFrame, cell_col: str, treatment: int, control: int, k: int):
    """CR2 and Bell–McCaffrey df from the matrices of the customer-level cell-dummy regression."""
    x = np.zeros((len(df), k))
    x[np.arange(len(df)), df[cell_col].to_numpy()] = 1.0
    y = df["y"].to_numpy()
    bread = np.linalg.inv(x.T @ x)
    resid = y - x @ (bread @ x.T @ y)
    c = np.zeros(k)
    c[treatment], c[control] = 1.0, -1.0
    groups = df["cluster"].to_numpy()
    p_cols = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        xg = x[idx]
        h = xg @ bread @ xg.T
        vals, vecs = np.linalg.eigh(np.eye(len(idx)) - h)
        a = vecs @ np.diag(vals**-0.5) @ vecs.T
        col = np.zeros(len(df))
        col[idx] = a @ xg @ bread @ c
        p_cols.append(col)
    pm = np.array(p_cols).T
    var = float(((pm.T @ resid) ** 2).sum())
    m = np.eye(len(df)) - x @ bread @ x.T
    q = pm.T @ m @ pm
    return var, np.trace(q) ** 2 / np.trace(q @ q)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_clusters=st.integers(4, 14), binary=st.booleans())
def test_cr2_and_its_degrees_of_freedom_match_the_matrix_formulas(seed, n_clusters, binary):
    rng = np.random.default_rng(seed)
    df = simulate(rng, n_clusters, icc=0.1, effect=0.2, binary=binary, sizes=(1, 20))
    if df.groupby("arm")["y"].var().min() == 0:
        return
    res = cluster_contrast(cells_of(df), treatment=1, control=0)
    var, dof = cr2_reference(df, "arm", 1, 0, 2)
    assert res.se == pytest.approx(math.sqrt(var), rel=1e-8)
    assert res.df == pytest.approx(dof, rel=1e-8)
    assert res.p_value == pytest.approx(2 * sps.t.sf(abs(res.effect) / math.sqrt(var), dof), rel=1e-7)


def test_ratio_metric_is_the_delta_method_over_clusters():
    """For a ratio, y is the numerator and n the denominator: Var(Σy/Σn) by linearisation, by hand."""
    rng = np.random.default_rng(7)
    g = 30
    arm = np.arange(g) % 2
    num = rng.gamma(2, 5, g)
    den = rng.gamma(3, 4, g)
    cells = ClusterCells.of(np.arange(g), arm, num, den)
    res = cluster_contrast(cells, 1, 0, small_sample="cr1", n_customers=1000)
    var = 0.0
    for a in (0, 1):
        y, n = num[arm == a], den[arm == a]
        r = y.sum() / n.sum()
        var += ((y - r * n) ** 2).sum() / n.sum() ** 2
    var *= g / (g - 1) * (1000 - 1) / (1000 - 2)
    assert res.se == pytest.approx(math.sqrt(var), rel=1e-12)
    assert res.effect == pytest.approx(
        num[arm == 1].sum() / den[arm == 1].sum() - num[arm == 0].sum() / den[arm == 0].sum()
    )


def test_icc_recovers_the_simulated_correlation():
    rng = np.random.default_rng(3)
    est = [icc_anova(cells_of(simulate(rng, 200, icc=0.1, effect=1.0))) for _ in range(20)]
    assert np.mean(est) == pytest.approx(0.1, abs=0.015)
    assert icc_anova(cells_of(simulate(rng, 200, icc=0.0))) < 0.03


def test_icc_matches_the_anova_formula_on_equal_clusters():
    """Equal clusters of m: ρ = (MSB − MSW)/(MSB + (m − 1)MSW) from scipy's one-way ANOVA sums."""
    rng = np.random.default_rng(5)
    df = simulate(rng, 40, icc=0.2, sizes=(10, 11))
    df = df[df["arm"] == 0]
    groups = [grp["y"].to_numpy() for _, grp in df.groupby("cluster")]
    f = sps.f_oneway(*groups).statistic
    m = 10
    ref = (f - 1) / (f + m - 1)  # ICC from the F ratio MSB/MSW
    assert icc_anova(cells_of(df)) == pytest.approx(ref, rel=1e-9)


def test_design_effect_and_weighted_size():
    assert design_effect(0.05, 21) == pytest.approx(2.0)
    assert weighted_cluster_size([10, 10, 10]) == 10
    assert weighted_cluster_size([1, 19]) == pytest.approx((1 + 361) / 20)


@pytest.mark.parametrize("icc,m,mde", [(0.05, 20, 0.2), (0.2, 50, 0.3), (0.0, 10, 0.25)])
def test_clusters_per_arm_agrees_with_statsmodels_ttestindpower(icc, m, mde):
    k = clusters_per_arm(mde, sd=1.0, icc=icc, cluster_size=m)
    d = mde / math.sqrt(design_effect(icc, m) / m)
    solved = TTestIndPower().solve_power(effect_size=d, alpha=0.05, power=0.8, ratio=1.0)
    assert k == math.ceil(solved - 1e-9)


def simulate_fast(rng, n_clusters, icc, effect=0.0, sizes=(5, 60)):
    """As `simulate`, straight to cluster totals with numpy (the simulations run thousands of pilots)."""
    size = rng.integers(sizes[0], sizes[1], n_clusters)
    arm = rng.permutation(np.arange(n_clusters) % 2)
    cluster = np.repeat(np.arange(n_clusters), size)
    y = effect * arm[cluster] + rng.normal(0, math.sqrt(icc), n_clusters)[cluster]
    y += rng.normal(0, math.sqrt(1 - icc), cluster.size)
    cells = ClusterCells(np.arange(n_clusters), arm, np.bincount(cluster, weights=y), size.astype(float))
    return cells, y, arm[cluster]


def _coverage(rng, reps, icc, n_clusters):
    hit_cluster = hit_naive = 0
    for _ in range(reps):
        cells, y, a = simulate_fast(rng, n_clusters, icc=icc, effect=0.3)
        res = cluster_contrast(cells, 1, 0)
        hit_cluster += res.ci_low <= 0.3 <= res.ci_high
        t, c = y[a == 1], y[a == 0]
        se = math.sqrt(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c))
        e = t.mean() - c.mean()
        hit_naive += e - 1.96 * se <= 0.3 <= e + 1.96 * se
    return hit_cluster / reps, hit_naive / reps


@pytest.mark.parametrize("icc", [0.05, 0.2])
def test_cluster_intervals_cover_while_naive_ones_undercover(icc):
    """Seeded: 95 % CR2 intervals cover within binomial bounds at 30 clusters; customer-level ones do not."""
    reps = 3000
    cov_cluster, cov_naive = _coverage(np.random.default_rng(11 + int(icc * 100)), reps, icc, 30)
    half = 3 * math.sqrt(0.95 * 0.05 / reps)  # 3 binomial standard errors
    assert 0.95 - half <= cov_cluster <= 0.95 + half
    assert cov_naive < 0.90


@pytest.mark.parametrize("n_clusters", [10, 60])
def test_coverage_holds_at_few_and_many_clusters(n_clusters):
    reps = 2000
    cov_cluster, _ = _coverage(np.random.default_rng(n_clusters), reps, 0.1, n_clusters)
    half = 3 * math.sqrt(0.95 * 0.05 / reps)
    assert 0.95 - half <= cov_cluster <= 0.95 + half


def test_aa_false_positive_rate_is_alpha():
    rng = np.random.default_rng(2026)
    reps = 3000
    hits = sum(
        cluster_contrast(simulate_fast(rng, 20, icc=0.15)[0], 1, 0).p_value < 0.05 for _ in range(reps)
    )
    lo, hi = sps.binom.ppf([0.0005, 0.9995], reps, 0.05)
    assert lo <= hits <= hi


def simulate_saturation(rng, n_clusters, direct, spill, icc=0.1, shares=(0.0, 0.5, 1.0)):
    """Randomised saturation (Baird et al. 2018): clusters draw a treated share, customers are drawn within.
    Cells: 0 pure control clusters, 1 treated customers, 2 untreated customers of treated clusters."""
    size = rng.integers(10, 40, n_clusters)
    share = np.asarray(shares)[rng.permutation(np.arange(n_clusters) % len(shares))]
    cluster = np.repeat(np.arange(n_clusters), size)
    treated = rng.random(cluster.size) < share[cluster]
    cell = np.where(share[cluster] == 0, 0, np.where(treated, 1, 2))
    y = rng.normal(0, np.sqrt(icc), n_clusters)[cluster] + rng.normal(0, np.sqrt(1 - icc), cluster.size)
    y += direct * (cell == 1) + spill * (cell == 2)
    return pd.DataFrame({"cluster": cluster, "cell": cell, "y": y})


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_saturation_direct_and_spillover_match_statsmodels(seed):
    rng = np.random.default_rng(seed)
    df = simulate_saturation(rng, 30, direct=0.4, spill=0.15)
    cells = cells_of(df, "cell")
    for contrast in (1, 2):
        res = cluster_contrast(cells, contrast, 0, small_sample="cr1")
        effect, sd = statsmodels_contrast(df, "cell", contrast, 0, 3)
        assert res.effect == pytest.approx(effect, rel=1e-9)
        assert res.se == pytest.approx(sd, rel=1e-9)
        assert res.df == df["cluster"].nunique() - 3


def test_saturation_recovers_direct_and_spillover_effects():
    """Seeded: over 400 simulated pilots the estimates centre on the truth and CR2 intervals cover."""
    rng = np.random.default_rng(18)
    reps = 400
    est, cover = np.zeros((reps, 2)), np.zeros((reps, 2))
    for r in range(reps):
        cells = cells_of(simulate_saturation(rng, 30, direct=0.4, spill=0.15), "cell")
        for j, (contrast, truth) in enumerate(((1, 0.4), (2, 0.15))):
            res = cluster_contrast(cells, contrast, 0)
            est[r, j] = res.effect
            cover[r, j] = res.ci_low <= truth <= res.ci_high
    assert est.mean(axis=0) == pytest.approx([0.4, 0.15], abs=0.02)
    assert (cover.mean(axis=0) >= 0.92).all()


def test_cluster_contrast_ignores_row_order_labels_and_earlier_calls():
    """A ClusterCells keeps factorised labels and per-cell results (module docstring "Speed"): shuffled rows
    with renamed clusters give the same contrasts, and a derived object (CUPED's ``replace``) or a call on
    another cell pair never reuses a result of a different one."""
    from dataclasses import asdict, replace

    rng = np.random.default_rng(16)
    g = cells_of(simulate_saturation(rng, 30, direct=0.4, spill=0.15), "cell")
    g = pd.DataFrame({"cluster": g.cluster, "cell": g.cell, "y": g.y, "n": g.n})
    g = pd.concat([g, pd.DataFrame({"cluster": [g.cluster[0]], "cell": [2], "y": [0.0], "n": [0.0]})])
    shuffled = g.sample(frac=1.0, random_state=3)
    cells = ClusterCells.of(g.cluster, g.cell, g.y, g.n)
    other = ClusterCells.of(
        "z" + (1000 - shuffled.cluster).astype(str), shuffled.cell, shuffled.y, shuffled.n
    )
    combos = [(s, t, c) for s in ("cr2", "cr1") for t, c in [(1, 0), (2, 0), (1, 2), (2, 1), (0, 0)]]
    ours = {k: asdict(cluster_contrast(cells, k[1], k[2], small_sample=k[0])) for k in combos}
    theirs = {k: asdict(cluster_contrast(other, k[1], k[2], small_sample=k[0])) for k in reversed(combos)}
    for k in combos:
        assert ours[k].pop("method") == theirs[k].pop("method")
        assert theirs[k] == pytest.approx(ours[k], rel=1e-12, abs=1e-15, nan_ok=True), k
    nonempty = g[g.n > 0]
    assert cells.n_clusters == other.n_clusters == g.cluster.nunique()
    for c in range(4):
        assert cells.clusters_in(c) == other.clusters_in(c) == nonempty.cluster[nonempty.cell == c].nunique()
    adjusted_y = g.y.to_numpy() * 2.0 - g.n.to_numpy()
    derived = cluster_contrast(replace(cells, y=adjusted_y), 1, 0)
    fresh = cluster_contrast(ClusterCells.of(g.cluster, g.cell, adjusted_y, g.n), 1, 0)
    assert derived == fresh
    assert derived != cluster_contrast(cells, 1, 0)
