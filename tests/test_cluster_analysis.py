"""Cluster-randomised pilots through `labkit.analyze` and `labkit.plan` (issue #16; ``labkit.clustered``).

Each number is checked on an independent path: the customer rows are read back with pandas, joined to the
drawn assignment, and reduced to cluster totals there (not through labkit's engine query); effects are
compared with statsmodels OLS on the customer rows (the coefficient of the arm, or of the saturation cell),
the CR1 standard error with statsmodels' ``cov_type='cluster'``, the CR2 standard error with the CR2 sandwich
computed from its matrix definition on the customer-level design (Bell & McCaffrey 2002), and the clusters
planned with statsmodels' ``TTestIndPower``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.stats.power import TTestIndPower

import labkit
from labkit.spec import load_pilot
from labkit.stats.cluster import ClusterCells, cluster_contrast, icc_anova

PILOT = """\
id: {id}
title: Community replies
function: service
channel: community
stage: retention
owner: lab@example.com
hypothesis:
  statement: Replies in the community raise spend.
  metric: {primary}
  direction: increase
  mde: {{relative: 0.1}}
cohort:
  source: customers
  id_column: customer_id
  unit_column: community
  max_size: 5000
  arms: {{control: 1, fast: 1}}
  control: control
  start: 2026-11-01
{extra}metrics:
  - name: spend
    type: mean
    source: outcomes
    column: spend
  - name: churned
    type: proportion
    source: outcomes
    column: churned
  - name: spend_adj
    type: mean
    source: outcomes
    column: spend
    covariate: pre_spend
  - name: tickets_per_contact
    type: ratio
    numerator: {{source: outcomes, column: tickets}}
    denominator: {{source: outcomes, column: contacts}}
"""


@pytest.fixture
def lab(tiny_lab, monkeypatch):
    monkeypatch.setenv("LABKIT_ID_KEY", "test-key-0123456789abcdef")
    (tiny_lab.root / "data").mkdir(exist_ok=True)
    return tiny_lab


def write_customers(lab, n_clusters: int = 36, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 40, n_clusters)
    community = np.repeat([f"com-{g:03d}" for g in range(n_clusters)], sizes)
    frame = pd.DataFrame(
        {"customer_id": [f"C{i:05d}" for i in range(community.size)], "community": community}
    )
    frame.to_parquet(lab.root / "data" / "customers.parquet", index=False)
    return frame


def write_outcomes(lab, joined: pd.DataFrame, *, direct: float, spill: float = 0.0, seed: int = 4) -> None:
    """Clustered outcomes: a community effect (ICC well above 0), the treatment's effect on treated customers
    and ``spill`` on untreated customers of treated communities (``treated_cluster``)."""
    rng = np.random.default_rng(seed)
    codes, _ = pd.factorize(joined.community)
    u = rng.normal(0, 3.0, codes.max() + 1)[codes]
    treated = (joined.arm == "fast").to_numpy()
    near = joined.treated_cluster.to_numpy() & ~treated
    pre = 50 + u + rng.normal(0, 6, len(joined))
    spend = 10 + 0.8 * pre + u + direct * treated + spill * near + rng.normal(0, 4, len(joined))
    p = 1 / (1 + np.exp(-(-1.5 + 0.3 * u - 0.4 * treated)))
    contacts = rng.integers(1, 6, len(joined))
    out = pd.DataFrame(
        {
            "customer_id": joined.customer_id,
            "spend": spend.round(4),
            "pre_spend": pre.round(4),
            "churned": (rng.random(len(joined)) < p).astype(int),
            "tickets": rng.binomial(contacts, 0.3 + 0.02 * np.clip(u, -5, 5)),
            "contacts": contacts,
        }
    )
    out.to_csv(lab.root / "data" / "outcomes.csv", index=False)


def cluster_pilot(lab, *, pilot_id="p", primary="spend", extra=""):
    lab.write(
        f"experiments/{pilot_id}.yaml",
        PILOT.format(
            id=pilot_id, primary=primary, extra="".join(f"  {line}\n" for line in extra.splitlines())
        ),
    )
    return load_pilot(pilot_id)


def assigned_lab(lab, *, direct=2.0, spill=0.0, extra="", primary="spend"):
    """Customers, a drawn cluster assignment, outcomes; (pilot, customer rows joined with their arm)."""
    write_customers(lab)
    pilot = cluster_pilot(lab, extra=extra, primary=primary)
    frame = labkit.assign(pilot).frame()
    joined = frame[["customer_id", "arm", "cluster"]].rename(columns={"cluster": "community"})
    share = frame["saturation"] if "saturation" in frame else (frame.arm == "fast").astype(float)
    joined["treated_cluster"] = (share > 0).to_numpy()
    write_outcomes(lab, joined, direct=direct, spill=spill)
    rows = joined.merge(pd.read_csv(lab.root / "data" / "outcomes.csv"), on="customer_id")
    return pilot, rows


def cr2_se(y: np.ndarray, X: np.ndarray, groups: np.ndarray, j: int) -> float:
    """CR2 (Bell & McCaffrey 2002) standard error of coefficient j, from its matrix definition."""
    bread = np.linalg.inv(X.T @ X)
    e = y - X @ (bread @ X.T @ y)
    meat = np.zeros((X.shape[1], X.shape[1]))
    for g in np.unique(groups):
        s = groups == g
        Xg = X[s]
        h = np.eye(s.sum()) - Xg @ bread @ Xg.T
        w, v = np.linalg.eigh(h)
        a = v @ np.diag(1 / np.sqrt(np.clip(w, 1e-12, None))) @ v.T
        u = Xg.T @ a @ e[s]
        meat += np.outer(u, u)
    return float(np.sqrt((bread @ meat @ bread)[j, j]))


def pandas_cells(rows: pd.DataFrame, cell: pd.Series, y: str, n: str | None = None) -> ClusterCells:
    """Cluster totals per (community, cell) by pandas groupby: the independent aggregation path."""
    d = rows.assign(_cell=cell.to_numpy(), _n=1 if n is None else rows[n], _y2=rows[y] ** 2)
    g = d.groupby(["community", "_cell"], as_index=False).agg(
        y=(y, "sum"), n=("_n", "sum"), y2=("_y2", "sum")
    )
    return ClusterCells.of(g.community, g._cell, g.y, g.n, None if n else g.y2)


def row(result, metric: str) -> dict:
    return next(r for r in result.to_dict()["metrics"] if r["metric"] == metric)


# --------------------------------------------------------------------------------------------------


def test_a_cluster_pilots_effects_match_statsmodels_and_the_cr2_formula(lab):
    pilot, rows = assigned_lab(lab)
    result = labkit.analyze(pilot)
    treat = (rows.arm == "fast").astype(int)
    X = sm.add_constant(treat.to_numpy().astype(float))
    groups = pd.factorize(rows.community)[0]
    for metric, column in (("spend", "spend"), ("churned", "churned")):
        r = row(result, metric)
        y = rows[column].to_numpy(dtype=float)
        ols = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups})
        assert r["method"] == "cluster-robust t (CR2)"
        assert r["effect"] == pytest.approx(ols.params[1], rel=1e-9, abs=1e-12)
        assert r["se"] == pytest.approx(cr2_se(y, X, groups, 1), rel=1e-9)
        cells = pandas_cells(rows, treat, column)
        ref = cluster_contrast(cells, 1, 0)
        assert (r["ci_low"], r["ci_high"], r["p_value"]) == pytest.approx(
            (ref.ci_low, ref.ci_high, ref.p_value)
        )
        # CR1 on the same totals is statsmodels' cluster-robust se: the totals are the customers' rows
        assert cluster_contrast(cells, 1, 0, small_sample="cr1").se == pytest.approx(ols.bse[1], rel=1e-9)
        assert r["n_clusters_control"] == rows[treat == 0].community.nunique()
        assert r["n_clusters_treatment"] == rows[treat == 1].community.nunique()
        assert r["icc"] == pytest.approx(icc_anova(cells)) and r["icc"] > 0
        sizes = rows.groupby("community").size().to_numpy(dtype=float)
        assert r["design_effect"] == pytest.approx(1 + ((sizes**2).sum() / sizes.sum() - 1) * r["icc"])
        # the lift interval is Fieller's at the same t: it excludes 0 exactly when the test rejects
        if r["lift_ci_low"] is not None:
            assert (r["lift_ci_low"] > 0 or r["lift_ci_high"] < 0) == (r["p_value"] < 0.05)


def test_ratio_and_cuped_run_on_cluster_totals(lab):
    pilot, rows = assigned_lab(lab)
    result = labkit.analyze(pilot)
    treat = (rows.arm == "fast").astype(int)
    r = row(result, "tickets_per_contact")
    ref = cluster_contrast(pandas_cells(rows, treat, "tickets", "contacts"), 1, 0)
    assert r["effect"] == pytest.approx(ref.effect, rel=1e-9) and r["se"] == pytest.approx(ref.se, rel=1e-9)
    assert r["n_control"] == int((treat == 0).sum()) and r["icc"] is None
    # CUPED on cluster totals: θ from the cluster residual totals pooled within arms, effect Δȳ − θΔx̄
    c = (
        rows.assign(t=treat)
        .groupby(["community", "t"], as_index=False)
        .agg(y=("spend", "sum"), x=("pre_spend", "sum"), n=("spend", "size"))
    )
    mean = c.groupby("t")[["y", "x", "n"]].transform("sum")
    ey, ex = c.y - mean.y / mean.n * c.n, c.x - mean.x / mean.n * c.n
    theta = (ey * ex).sum() / (ex * ex).sum()
    arm = c.groupby("t")[["y", "x", "n"]].sum()
    dy, dx = (arm.y / arm.n).diff().iloc[1], (arm.x / arm.n).diff().iloc[1]
    adj = row(result, "spend_adj")
    assert adj["method"] == "cluster-robust t (CR2)+cuped"
    assert adj["effect"] == pytest.approx(dy - theta * dx, rel=1e-9)
    xbar = c.x.sum() / c.n.sum()
    cells = ClusterCells.of(c.community, c.t, c.y - theta * (c.x - xbar * c.n), c.n)
    assert adj["se"] == pytest.approx(cluster_contrast(cells, 1, 0).se, rel=1e-9)
    assert adj["variance_reduction"] == pytest.approx(1 - adj["se"] ** 2 / row(result, "spend")["se"] ** 2)
    assert adj["variance_reduction"] > 0.3


def test_the_sample_ratio_is_tested_on_clusters(lab):
    pilot, rows = assigned_lab(lab)
    srm = labkit.analyze(pilot).to_dict()["srm"]
    assert srm["counts"] == rows.groupby("arm").community.nunique().to_dict()
    assert srm["method"].endswith("on clusters") and srm["ok"]


def test_saturation_reports_the_direct_effect_and_the_spillover_against_pure_control(lab):
    pilot, rows = assigned_lab(lab, direct=3.0, spill=1.5, extra="saturation: [0, 0.5, 1]")
    result = labkit.analyze(pilot)
    cell = np.where(rows.arm == "fast", 1, np.where(rows.treated_cluster, 2, 0))
    X = np.column_stack([np.ones(len(rows)), cell == 1, cell == 2]).astype(float)
    y = rows.spend.to_numpy(dtype=float)
    groups = pd.factorize(rows.community)[0]
    ols = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups})
    (block,) = result.to_dict()["spillover"]
    assert block["metric"] == "spend" and block["arm"] == "fast"
    assert block["direct_effect"] == pytest.approx(ols.params[1], rel=1e-9)
    assert block["spillover_effect"] == pytest.approx(ols.params[2], rel=1e-9)
    cells = pandas_cells(rows, pd.Series(cell), "spend")
    direct, spill = cluster_contrast(cells, 1, 0), cluster_contrast(cells, 2, 0)
    assert (block["direct_ci_low"], block["direct_ci_high"]) == pytest.approx((direct.ci_low, direct.ci_high))
    assert (block["spillover_ci_low"], block["spillover_ci_high"]) == pytest.approx(
        (spill.ci_low, spill.ci_high)
    )
    assert block["n_clusters"] == rows.community.nunique()
    # the metric rows of a saturation pilot are the direct effect: treated vs pure-control customers
    r = row(result, "spend")
    assert r["effect"] == block["direct_effect"] and r["n_control"] == int((cell == 0).sum())
    # SRM on clusters per saturation level (equal shares)
    levels = rows.groupby("community").treated_cluster.first()
    srm = result.to_dict()["srm"]
    assert set(srm["counts"]) == {"0", "0.5", "1"} and srm["counts"]["0"] == int((~levels).sum())


def test_plan_sizes_clusters_like_statsmodels_and_agrees_with_analyze(lab):
    pilot, rows = assigned_lab(lab)
    planned = labkit.plan(pilot)
    analysed = labkit.analyze(pilot).to_dict()["plan"]
    planned_dict = planned.to_dict()
    assert planned_dict.keys() == analysed.keys()
    # the same sums, but DuckDB's parallel sums may differ in the last bit: floats to 1e-12
    for key, value in planned_dict.items():
        if isinstance(value, float):
            assert value == pytest.approx(analysed[key], rel=1e-12), key
        else:
            assert value == analysed[key], key
    assert set(analysed) >= {"clusters_per_arm", "icc", "design_effect"}
    sizes = rows.groupby("community").size().to_numpy(dtype=float)
    n_bar, n_w = sizes.mean(), (sizes**2).sum() / sizes.sum()
    assert planned.design_effect == pytest.approx(1 + (n_w - 1) * planned.icc)
    sd = rows[rows.arm == "control"].spend.std(ddof=1)
    assert planned.baseline_sd == pytest.approx(sd)
    d = planned.mde_abs / (sd * math.sqrt(planned.design_effect / n_bar))
    k = TTestIndPower().solve_power(effect_size=d, alpha=0.05, power=0.8, ratio=1.0)
    assert planned.clusters_per_arm == math.ceil(k)


def test_plain_pilots_have_no_cluster_fields(tiny_lab, monkeypatch):
    from labkit.result import Plan

    p = Plan(pilot="p", metric="m", baseline_mean=1.0, baseline_sd=1.0, baseline_n=10, baseline_from="x",
             mde_abs=0.1, mde_relative=None, alpha=0.05, power=0.8)  # fmt: skip
    assert "clusters_per_arm" not in p.to_dict() and "icc" not in p.to_dict()


def test_an_assumed_icc_plans_where_the_data_give_none_else_the_default_with_a_warning(lab):
    write_customers(lab)
    base = cluster_pilot(lab, primary="tickets_per_contact")  # a ratio has no customer-level ICC
    frame = labkit.assign(base).frame()
    joined = frame[["customer_id", "arm", "cluster"]].rename(columns={"cluster": "community"})
    write_outcomes(lab, joined.assign(treated_cluster=(joined.arm == "fast").to_numpy()), direct=0.0)
    planned = labkit.plan(base)
    assert planned.icc == 0.05 and any("assumed ICC of 0.05" in w for w in planned.warnings)
    text = lab.root / "experiments" / "p.yaml"
    text.write_text(
        text.read_text().replace(
            "  mde: {relative: 0.1}\n", "  mde: {relative: 0.1}\n  baseline: {icc: 0.2}\n"
        )
    )
    assumed = labkit.plan(load_pilot("p"))
    assert assumed.icc == 0.2 and assumed.clusters_per_arm > planned.clusters_per_arm
    assert not any("assumed ICC" in w for w in assumed.warnings)


def test_validation_takes_quantiles_and_refuses_an_icc_without_clusters(lab):
    from labkit.errors import SpecErrors

    write_customers(lab)
    quantile = (
        "  - name: p50\n    type: quantile\n    quantile: 0.5\n    source: outcomes\n    column: spend\n"
    )
    lab.write("experiments/q.yaml", PILOT.format(id="q", primary="spend", extra="") + quantile)
    assert load_pilot("q").metric("p50").type == "quantile"  # a cluster bootstrap (labkit.clustered)
    plain = PILOT.format(id="r", primary="spend", extra="").replace("  unit_column: community\n", "")
    lab.write(
        "experiments/r.yaml",
        plain.replace("  mde: {relative: 0.1}\n", "  mde: {relative: 0.1}\n  baseline: {icc: 0.1}\n"),
    )
    with pytest.raises(
        SpecErrors, match="hypothesis.baseline.icc: an ICC is assumed for cluster pilots only"
    ):
        load_pilot("r")


def test_the_terminal_shows_clusters_and_the_design_effect_whole_at_80_columns(lab, monkeypatch, capsys):
    from labkit.render import render_analysis, render_plan

    pilot, _ = assigned_lab(lab, extra="saturation: [0, 0.5, 1]")
    result = labkit.analyze(pilot)
    monkeypatch.setenv("COLUMNS", "80")
    render_analysis(result)
    render_plan(result.plan)
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines())
    r = result.metric_rows[0].clusters
    assert f"{r.n_clusters_control}/{r.n_clusters_treatment}" in out
    assert f"{r.design_effect:.3g}" in out and "clusters needed per arm" in out and "spillover" in out


def test_sequential_mode_widens_the_cluster_interval_on_clusters(lab):
    pilot, _ = assigned_lab(lab)
    fixed = row(labkit.analyze(pilot), "spend")
    text = lab.root / "experiments" / "p.yaml"
    text.write_text(text.read_text() + "analysis: {sequential: true}\n")
    seq = row(labkit.analyze(load_pilot("p")), "spend")
    assert seq["method"] == "cluster-robust t (CR2)+cs" and seq["effect"] == fixed["effect"]
    assert seq["ci_high"] - seq["ci_low"] > fixed["ci_high"] - fixed["ci_low"]


def test_before_the_start_the_plan_measures_the_icc_on_the_eligible_then_the_assigned_clusters(lab):
    import datetime as dt

    rows = write_customers(lab)
    pilot = cluster_pilot(lab)
    joined = rows.assign(arm="control", treated_cluster=False)
    write_outcomes(lab, joined, direct=0.0)
    before = dt.date(2026, 10, 1)
    eligible = labkit.plan(pilot, today=before)
    assert eligible.baseline_from == "eligible" and eligible.icc > 0.1 and eligible.clusters_per_arm
    cells = pandas_cells(
        joined.merge(pd.read_csv(lab.root / "data" / "outcomes.csv")), joined.arm.eq("x"), "spend"
    )
    assert eligible.icc == pytest.approx(icc_anova(cells))
    labkit.assign(pilot)
    assigned = labkit.plan(pilot, today=before)
    assert assigned.baseline_from == "assignment" and assigned.icc == pytest.approx(eligible.icc)


def test_three_arms_and_the_bayesian_engine_read_cluster_rows_as_any_other(lab):
    write_customers(lab, n_clusters=45)
    text = PILOT.format(id="p", primary="spend", extra="").replace(
        "{control: 1, fast: 1}", "{control: 1, a: 1, b: 1}"
    )
    lab.write("experiments/p.yaml", text + "analysis: {engine: bayesian}\n")
    pilot = load_pilot("p")
    frame = labkit.assign(pilot).frame()
    joined = frame[["customer_id", "arm", "cluster"]].rename(columns={"cluster": "community"})
    write_outcomes(lab, joined.assign(treated_cluster=False), direct=0.0)
    data = labkit.analyze(pilot).to_dict()
    spend = [r for r in data["metrics"] if r["metric"] == "spend"]
    assert [r["arm"] for r in spend] == ["a", "b"] and all("chance_to_beat" in r for r in spend)
    assert data["srm"]["counts"] == frame.groupby("arm").cluster.nunique().to_dict()
    assert data["plan"]["clusters_per_arm"] >= 2 and "spillover" not in data


def quantile_lab(lab, n_clusters: int = 36):
    """A cluster pilot whose primary metric is the p75 of spend: (pilot, customer rows with their arm)."""
    write_customers(lab, n_clusters=n_clusters)
    quantile = (
        "  - name: p75\n    type: quantile\n    quantile: 0.75\n    source: outcomes\n    column: spend\n"
    )
    lab.write("experiments/p.yaml", PILOT.format(id="p", primary="p75", extra="") + quantile)
    pilot = load_pilot("p")
    frame = labkit.assign(pilot).frame()
    joined = frame[["customer_id", "arm", "cluster"]].rename(columns={"cluster": "community"})
    write_outcomes(lab, joined.assign(treated_cluster=(joined.arm == "fast").to_numpy()), direct=3.0)
    return pilot, joined.merge(pd.read_csv(lab.root / "data" / "outcomes.csv"), on="customer_id")


def test_a_quantile_metric_gets_the_cluster_bootstrap_of_its_customer_values(lab):
    from labkit.stats.cluster_bootstrap import cluster_bootstrap_quantile
    from labkit.stats.quantiles import bootstrap_seed

    pilot, rows = quantile_lab(lab)
    result = labkit.analyze(pilot)
    data, r = result.to_dict(), row(result, "p75")
    c, t = rows[rows.arm == "control"], rows[rows.arm == "fast"]
    ref = cluster_bootstrap_quantile(
        c.spend, c.community, t.spend, t.community, q=0.75, seed=bootstrap_seed("p", "p75"),
        n_boot=pilot.settings.bootstrap_samples,
    )  # fmt: skip
    assert r["method"] == "cluster bootstrap" and r["reason"] is None
    assert r["mean_control"] == pytest.approx(np.quantile(c.spend, 0.75), rel=1e-12)
    assert r["effect"] == pytest.approx(np.quantile(t.spend, 0.75) - np.quantile(c.spend, 0.75), rel=1e-9)
    for key in ("ci_low", "ci_high", "p_value", "se", "lift_ci_low", "lift_ci_high"):
        assert r[key] == pytest.approx(getattr(ref, key), rel=1e-12), key
    assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["p_value"] < 0.05)
    clusters = (c.community.nunique(), t.community.nunique())
    assert (r["n_clusters_control"], r["n_clusters_treatment"]) == clusters
    assert r["icc"] is None and r["design_effect"] is None  # a quantile's design effect is no mean's
    assert data["srm"]["counts"] == rows.groupby("arm").community.nunique().to_dict()
    assert r["n_control"] == len(c) and data["plan"]["clusters_per_arm"] >= 2
    planned = labkit.plan(pilot)  # the plan measures the quantile's clusters as analyze does
    assert planned.clusters_per_arm == data["plan"]["clusters_per_arm"]


def test_a_quantile_over_too_few_clusters_is_shown_without_an_interval_and_says_why(lab):
    from labkit.clustered import cluster_data, few_clusters_warning
    from labkit.data.aggregate import units_table
    from labkit.data.sources import Engine

    pilot, rows = quantile_lab(lab, n_clusters=14)
    result = labkit.analyze(pilot)
    r = row(result, "p75")
    # the verdict names clusters, not customers: each arm has hundreds of customers
    assert result.reason == (
        "The primary metric 'p75' cannot be estimated: an arm has too few customers (in a cluster pilot: "
        "clusters) for an interval."
    )
    assert any("clusters per arm for an interval" in w for w in result.warnings)
    assert r["reason"] == "too_few" and r["p_value"] is None and r["ci_low"] is None
    assert r["mean_control"] == pytest.approx(np.quantile(rows[rows.arm == "control"].spend, 0.75), rel=1e-12)
    engine = Engine.for_lab(pilot.lab)
    try:
        data = cluster_data(engine, pilot, units_table(engine, pilot))
    finally:
        engine.close()
    k = rows.groupby("arm").community.nunique()
    assert few_clusters_warning(pilot, data["p75"], "fast") == (
        f"metric 'p75', arm 'fast': {k['control']} clusters in 'control' and {k['fast']} in 'fast'; a "
        "quantile's cluster bootstrap needs at least 10 clusters per arm for an interval (with fewer it "
        "under-covers), so only the quantiles are shown"
    )
    assert few_clusters_warning(pilot, data["spend"], "fast") is None
