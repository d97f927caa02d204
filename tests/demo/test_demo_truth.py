"""The demo lab against its own truth: labkit's analysis must find the effects the generator applied.

The module reads the session's demo lab after ``labkit demo`` (tests/demo_lab.py): the CRM before the
pilots (``demo.build_base``), every pilot's cohort drawn by the real ``labkit.assign``, the pilot period
simulated from those arms (``demo.simulate_outcomes``, which writes ``data/truth.json``), and every
pilot analysed by its own notebook. Each analysis is compared with the truth. The truth is stated on the intent-to-treat scale the
analysis estimates (labkit/demo/truth.py: the mean over the assigned cohort of each customer's expected outcome
under each arm, missing per-customer rows counted as the analysis counts them), so the primary
interval of every treatment arm must contain the true effect.

This is one fixed seed (``demo.DEMO_SEED``), not a coverage study: with a dozen 95% intervals a different
seed could miss one honestly; the coverage of the methods is checked by simulation elsewhere. One interval
misses by design: the ambassador pilot randomised by customer, whose control arm gets the spillover
(labkit/demo/truth.py, ``interference``); its interval must miss the truth and cover what its design
estimates instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml
from scipy import stats as sps

from labkit import demo
from labkit.stats.cluster import ClusterCells, cluster_contrast

REPO = Path(__file__).resolve().parents[2]
PILOT_IDS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))


@pytest.fixture(scope="module")
def demo_truth(demo_lab):
    """The session's demo lab after `labkit demo` (tests/demo_lab.py): the truth its generator wrote, and
    each pilot's results.json as its notebook wrote it (equal to ``labkit.analyze``, tested elsewhere)."""
    demo_lab.check()
    root = demo_lab.root
    analyses = {}
    for path in sorted((root / "experiments").glob("*.yaml")):
        (results,) = sorted((root / "results" / path.stem / "runs").glob("*/results.json"))
        analyses[path.stem] = json.loads(results.read_text())
    return demo.load_truth(root), analyses


def primary_rows(data: dict) -> dict[str, dict]:
    return {r["arm"]: r for r in data["metrics"] if r["role"] == "primary"}


def test_every_demo_pilot_has_a_truth(demo_truth):
    truth, analyses = demo_truth
    assert sorted(truth["pilots"]) == PILOT_IDS == sorted(analyses)
    assert truth["seed"] == demo.DEMO_SEED


@pytest.mark.parametrize("pilot_id", PILOT_IDS)
def test_primary_interval_contains_the_true_effect(demo_truth, pilot_id):
    truth, analyses = demo_truth
    t, data = truth["pilots"][pilot_id], analyses[pilot_id]
    rows = primary_rows(data)
    assert data["meta"]["primary_metric"] == t["primary_metric"]
    assert sorted(rows) == sorted(t["arms"])  # every treatment arm the generator knows
    # the truth is about the very cohort the analysis counts (SRM counts clusters where it drew clusters)
    assert data["srm"]["counts"] == t.get("n_clusters", t["n_assigned"])
    biased = t.get("interference", {}).get("bias")  # randomised by customer, its control arm in the spillover
    for arm, r in rows.items():
        true = t["arms"][arm]["effect"]
        assert r["control_arm"] == t["control_arm"]
        if "n_clusters" in t:  # and the customers in them
            assert (r["n_control"], r["n_treatment"]) == (
                t["n_assigned"][r["control_arm"]],
                t["n_assigned"][arm],
            )
        if biased:  # the interval misses the truth, and covers what the design estimates instead
            assert r["ci_high"] < true, (pilot_id, r, true)
            true = t["interference"]["expected_estimate"]
        assert r["ci_low"] <= true <= r["ci_high"], (
            f"{pilot_id}/{arm}: true effect {true:.5g} outside [{r['ci_low']:.5g}, {r['ci_high']:.5g}] "
            f"({r['method']}, estimate {r['effect']:.5g})"
        )


def test_the_cluster_pilot_recovers_the_spillover_the_customer_pilot_misses(demo_truth):
    """The ambassador programme, randomised by community and by customer (#16): the cluster design's
    interval covers the true effect of treating whole communities, with its clusters, ICC and design
    effect reported; the customer design's estimate is about the direct effect alone, below the truth by
    the spillover truth.json states (``interference.bias``, about half the effect)."""
    truth, analyses = demo_truth
    by_community, by_customer = (demo.AMBASSADOR_PILOTS[0], demo.AMBASSADOR_PILOTS[1])
    t, (r,) = truth["pilots"][by_community], primary_rows(analyses[by_community]).values()
    assert t["interference"]["randomised_by"] == "community_id" and t["interference"]["bias"] == 0
    assert r["ci_low"] <= t["arms"]["ambassador"]["effect"] <= r["ci_high"]
    assert (r["n_clusters_control"], r["n_clusters_treatment"]) == tuple(t["n_clusters"].values())
    assert 0 < r["icc"] < 0.1 and r["design_effect"] > 1.5  # communities of ~200: the interval widens
    assert "cluster" in r["method"]
    t, (r,) = truth["pilots"][by_customer], primary_rows(analyses[by_customer]).values()
    i = t["interference"]
    assert i["randomised_by"] == "customer" and -0.7 < i["relative_bias"] < -0.4
    assert r["ci_low"] <= i["expected_estimate"] <= r["ci_high"] < t["arms"]["ambassador"]["effect"]
    # both designs ran the same programme: the same true effect, and the customer design sees half of it
    assert t["arms"]["ambassador"]["effect"] == pytest.approx(
        truth["pilots"][by_community]["arms"]["ambassador"]["effect"], rel=0.1
    )
    assert r["effect"] < 0.6 * t["arms"]["ambassador"]["effect"]


@pytest.mark.parametrize("pilot_id", PILOT_IDS)
def test_decision_matches_what_the_generator_did(demo_truth, pilot_id):
    truth, analyses = demo_truth
    expected, data = truth["pilots"][pilot_id]["expected"], analyses[pilot_id]
    assert data["srm"]["ok"], data["reason"]
    if expected == "harmful":
        assert data["decision"] == "harm", data["reason"]
    elif expected == "positive":
        assert data["decision"] == "ship", data["reason"]
        # the arm(s) that ship are among those the generator made positive
        positive = {a for a, v in truth["pilots"][pilot_id]["arms"].items() if v["expected"] == "positive"}
        direction = 1 if data["meta"]["direction"] == "increase" else -1
        shipped = {
            a
            for a, r in primary_rows(data).items()
            if r["p_value_adjusted"] < data["meta"]["alpha"] and r["effect"] * direction > 0
        }
        assert shipped and shipped <= positive
    else:
        assert expected == "null"
        assert data["decision"] not in ("ship", "harm"), data["reason"]


def cluster_pilot_rows(demo_lab, pilot_id: str) -> tuple[str, pd.DataFrame]:
    """(the unit column, one row per counted customer: arm, cluster, y), rebuilt in pandas from the lab's
    files: the assignment (results/<id>/assignment.parquet, labkit/assignment/store.py) joined to the
    customer table's unit column and to the primary metric's column as the pilot file defines it."""
    spec = yaml.safe_load((demo_lab.root / "experiments" / f"{pilot_id}.yaml").read_text())
    cohort = spec["cohort"]
    (metric,) = [m for m in spec["metrics"] if m["name"] == spec["hypothesis"]["metric"]]
    # what is rebuilt here: a per-customer proportion under its default missing policy (DESIGN.md: an
    # assigned customer absent from the table counts as 0, a NULL inside it is left out); no window
    assert (metric["type"], set(metric)) == ("proportion", {"name", "type", "source", "column"}), metric
    idc, unit, column = cohort["id_column"], cohort["unit_column"], metric["column"]

    def read(source: str, columns: list[str]) -> pd.DataFrame:
        path = demo_lab.lab.source_path(source)
        if demo_lab.lab.source(source).format == "csv":
            return pd.read_csv(path, usecols=columns)
        return pd.read_parquet(path, columns=columns)

    units = pd.read_parquet(demo_lab.root / "results" / pilot_id / "assignment.parquet")
    customers = read(cohort["source"], [idc, unit]).rename(columns={idc: "customer_id"})
    rows = units[["customer_id", "arm", "cluster"]].merge(customers, on="customer_id", validate="1:1")
    assert len(rows) == len(units) and (rows[unit].astype(str) == rows["cluster"]).all()
    values = read(metric["source"], [idc, column]).rename(columns={idc: "customer_id"})
    rows = rows.merge(values, on="customer_id", how="left", validate="1:1", indicator="_source")
    rows["missing"] = rows[column].isna()  # absent from the table, or NULL in it
    rows["y"] = rows[column].where(rows["_source"] == "both", 0.0).astype(float)
    return unit, rows


def cr2_bell_mccaffrey(y: np.ndarray, X: np.ndarray, groups: np.ndarray, j: int = 1) -> tuple[float, float]:
    """The CR2 variance of coefficient j and its Bell–McCaffrey degrees of freedom, from the matrix
    definitions (Bell & McCaffrey 2002) as tests/stats/test_cluster.py's ``cr2_reference`` takes them,
    block by block so that no N × N matrix is made (6,000 customers): p_g = (I − H_gg)^(−1/2)·X_g·(X'X)⁻¹·c,
    Var = Σ_g (p_g'·e_g)², df = (tr Q)² / tr Q² with Q = P'(I − H)P = P'P − (P'X)(X'X)⁻¹(X'P)."""
    bread = np.linalg.inv(X.T @ X)
    e = y - X @ (bread @ (X.T @ y))
    c = np.zeros(X.shape[1])
    c[j] = 1.0
    var, pp, px = 0.0, [], []
    for g in np.unique(groups):
        s = groups == g
        xg = X[s]
        w, v = np.linalg.eigh(np.eye(int(s.sum())) - xg @ bread @ xg.T)
        p = v @ ((v.T @ (xg @ bread @ c)) / np.sqrt(w))
        var += float(p @ e[s]) ** 2
        pp.append(float(p @ p))
        px.append(p @ xg)
    px_ = np.array(px)
    q = np.diag(pp) - px_ @ bread @ px_.T
    return var, float(np.trace(q) ** 2 / np.trace(q @ q))


def test_the_demo_cluster_pilot_matches_statsmodels_the_cr2_formula_and_the_anova_icc(demo_truth, demo_lab):
    """#16's "Done when": the demo's cluster-randomised pilot, recomputed from the lab's own files in pandas
    (not through labkit's engine query). Its effect is statsmodels OLS's coefficient of the arm; the
    cluster totals give statsmodels' ``cov_type='cluster'`` standard error under labkit's "cr1" (CR1, the
    correction G/(G−1)·(N−1)/(N−k)); the reported CR2 interval is the CR2 sandwich with Bell–McCaffrey df
    from their matrix definitions at the pilot's alpha; the ICC is the one-way ANOVA estimator pooled within
    arms and the design effect 1 + (n̄_w − 1)·ICC; the clusters per arm are counted in the assignment."""
    _, analyses = demo_truth
    pilot_id = demo.AMBASSADOR_PILOTS[0]
    data = analyses[pilot_id]
    (r,) = primary_rows(data).values()
    assert r["method"] == "cluster-robust t (CR2)"  # fixed-horizon, no CUPED: the formulas below
    unit, rows = cluster_pilot_rows(demo_lab, pilot_id)
    assert set(rows.arm) == {r["arm"], r["control_arm"]}
    assert (rows.groupby(unit).arm.nunique() == 1).all()  # every customer inherits its cluster's arm
    missing = rows.groupby("arm").missing.sum()
    assert (r["missing_control"], r["missing_treatment"]) == (missing[r["control_arm"]], missing[r["arm"]])
    rows = rows[rows.y.notna()]  # the compared customers
    treated = (rows.arm == r["arm"]).to_numpy(dtype=float)
    assert (r["n_control"], r["n_treatment"]) == (int((treated == 0).sum()), int((treated == 1).sum()))
    clusters = rows.groupby("arm")[unit].nunique()
    assert (r["n_clusters_control"], r["n_clusters_treatment"]) == (
        clusters[r["control_arm"]],
        clusters[r["arm"]],
    )

    y, X = rows.y.to_numpy(), sm.add_constant(treated)
    groups = pd.factorize(rows[unit])[0]
    ols = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups})
    assert r["effect"] == pytest.approx(ols.params[1], rel=1e-9)
    totals = rows.assign(t=treated).groupby([unit, "t"], as_index=False).agg(y=("y", "sum"), n=("y", "size"))
    cells = ClusterCells.of(totals[unit], totals.t.astype(int), totals.y, totals.n)
    cr1 = cluster_contrast(cells, 1, 0, alpha=data["meta"]["alpha"], small_sample="cr1")
    assert cr1.effect == pytest.approx(ols.params[1], rel=1e-9)
    assert cr1.se == pytest.approx(ols.bse[1], rel=1e-9)

    var, df = cr2_bell_mccaffrey(y, X, groups)
    se, crit = math.sqrt(var), sps.t.ppf(1 - data["meta"]["alpha"] / 2, df)
    assert r["se"] == pytest.approx(se, rel=1e-9)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(
        (ols.params[1] - crit * se, ols.params[1] + crit * se), rel=1e-9
    )
    assert r["p_value"] == pytest.approx(2 * sps.t.sf(abs(ols.params[1]) / se, df), rel=1e-7)

    # the one-way ANOVA ICC within arms (clusters are the groups) and the design effect
    by = rows.groupby(unit)
    sizes, means = by.y.size(), by.y.mean()
    ssw = float(((rows.y - by.y.transform("mean")) ** 2).sum())
    arm_mean = by.arm.first().map(rows.groupby("arm").y.mean())
    ssb = float((sizes * (means - arm_mean) ** 2).sum())
    n, g, k = len(rows), len(sizes), 2
    msb, msw = ssb / (g - k), ssw / (n - g)
    n0 = (n - float((sizes**2).sum()) / n) / (g - k)
    icc = (msb - msw) / (msb + (n0 - 1) * msw)
    assert icc > 0 and r["icc"] == pytest.approx(icc, rel=1e-9)
    n_w = float((sizes**2).sum() / sizes.sum())
    assert r["design_effect"] == pytest.approx(1 + (n_w - 1) * icc, rel=1e-9)
