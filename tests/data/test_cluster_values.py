"""A quantile's values with their clusters (labkit.data.cluster_values) against pandas on the same rows, and
what leaves the engine: values and cluster labels, never a customer id."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labkit.data.aggregate import units_table
from labkit.data.cluster_values import cluster_values
from labkit.data.sources import Engine
from labkit.errors import DataError
from labkit.lab import load_lab
from labkit.spec import load_pilot

LAB = """\
lab: cluster-values
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
functions: [service]
channels: [community]
stages: [retention]
"""

PILOT = """\
id: p
title: Community replies
function: service
channel: community
stage: retention
owner: lab@example.com
hypothesis:
  statement: Replies spread.
  metric: p50
  direction: decrease
  mde: {relative: 0.1}
cohort:
  source: customers
  id_column: customer_id
  max_size: 1000
  arms: {control: 0.5, fast: 0.5}
  control: control
  start: 2026-11-01
metrics:
  - {name: p50, type: quantile, quantile: 0.5, source: outcomes, column: minutes}
  - {name: p90_zero, type: quantile, quantile: 0.9, source: outcomes, column: minutes, missing: zero}
  - {name: spend, type: mean, source: outcomes, column: spend}
"""

N = 150


@pytest.fixture
def lab(tiny_lab):
    """N customers (text ids) in 25 accounts, the arm drawn per account; some without an outcome row,
    some with a NULL value."""
    rng = np.random.default_rng(21)
    tiny_lab.write("configs/lab.yaml", LAB)
    tiny_lab.pilot(PILOT)
    data = tiny_lab.root / "data"
    data.mkdir()
    ids = np.array([f"cust-{i:04d}" for i in range(N)], dtype=object)
    account = rng.integers(500, 525, N)
    pd.DataFrame({"customer_id": ids, "account_id": account}).to_parquet(data / "customers.parquet")
    treated = {a: bool(rng.random() < 0.5) for a in np.unique(account)}
    units = pd.DataFrame(
        {
            "customer_id": ids,
            "arm": ["fast" if treated[a] else "control" for a in account],
            "stratum": "all",
            "assigned_at": pd.Timestamp("2026-11-01").as_unit("us"),
        }
    )
    path = tiny_lab.root / "results" / "p" / "assignment.parquet"
    path.parent.mkdir(parents=True)
    units.to_parquet(path)
    present = ids[np.arange(N) % 6 != 1]
    out = pd.DataFrame(
        {
            "customer_id": present,
            "minutes": rng.gamma(2.0, 15.0, present.size).round(1),
            "spend": rng.gamma(2.0, 30.0, present.size),
        }
    )
    out.loc[out.index[:4], "minutes"] = np.nan
    out.to_csv(data / "outcomes.csv", index=False)
    tiny_lab.frames = {"units": units, "account": account, "outcomes": out}
    return tiny_lab


def fetch(tiny_lab, metric: str, unit_column: str = "account_id", *, spy: list | None = None):
    pilot = load_pilot("experiments/p.yaml", lab=load_lab(tiny_lab.root))
    engine = Engine.for_lab(pilot.lab)
    if spy is not None:  # every table that comes back from the engine
        real = engine.con.to_pyarrow
        engine.con.to_pyarrow = lambda expr, *a, **k: spy.append(real(expr, *a, **k)) or spy[-1]
    try:
        return cluster_values(engine, pilot, pilot.metric(metric), units_table(engine, pilot), unit_column)
    finally:
        engine.close()


def reference(tiny_lab, zero: bool) -> pd.DataFrame:
    """One row per counted customer: arm, cluster (text), value — by pandas."""
    f = tiny_lab.frames
    u = f["units"].assign(cluster=f["account"].astype(str))
    o = u.merge(f["outcomes"], on="customer_id", how="left")
    y = o["minutes"].fillna(0.0) if zero else o["minutes"]
    return o.assign(value=y).dropna(subset=["value"])[["arm", "cluster", "value"]]


@pytest.mark.parametrize(("metric", "zero"), [("p50", False), ("p90_zero", True)])
def test_values_come_with_their_cluster_and_arm_as_pandas_has_them(lab, metric, zero):
    got = fetch(lab, metric)
    want = reference(lab, zero).sort_values(["arm", "cluster", "value"])
    assert list(got.arm) == list(want.arm) and list(got.cluster) == list(want.cluster)
    assert np.array_equal(got.value, want.value.to_numpy())
    values, codes = got.of("fast")
    assert np.array_equal(np.sort(values), np.sort(want[want.arm == "fast"].value.to_numpy()))
    labels = sorted(set(want.cluster))  # a code is the rank of the cluster's label among all labels
    assert [labels[c] for c in codes] == list(got.cluster[got.arm == "fast"])
    assert set(got.cluster[got.arm == "fast"]) == set(want[want.arm == "fast"].cluster)
    # the per-(cluster, arm) counts: assigned, missing (no row or a NULL value), counted n, Σy
    f = lab.frames
    o = f["units"].assign(cluster=f["account"].astype(str)).merge(f["outcomes"], on="customer_id", how="left")
    cells = (
        o.assign(miss=o.minutes.isna())
        .groupby(["arm", "cluster"])
        .agg(rows=("arm", "size"), miss=("miss", "sum"))
    )
    t = got.totals
    assert sorted(zip(t.arm, t.cluster)) == sorted(cells.index)
    for i in range(t.cluster.size):
        key = (t.arm[i], t.cluster[i])
        counted = want[(want.arm == key[0]) & (want.cluster == key[1])].value
        assert (t.assigned[i], t.missing[i], t.n[i]) == (cells.rows[key], cells.miss[key], counted.size)
        assert t.y[i] == pytest.approx(counted.sum(), rel=1e-12)
    assert t.kind == "quantile" and t.covariate is None


def test_no_customer_id_leaves_the_engine(lab):
    spy: list = []
    got = fetch(lab, "p50", spy=spy)
    ids = set(lab.frames["units"].customer_id)
    assert spy  # the counts per cluster and the values came back through the spy
    for table in spy:
        for column in table.columns:
            assert not ids & {str(v) for v in column.to_pylist()}, table.schema
    assert not ids & {str(v) for v in (*got.arm, *got.cluster, *got.totals.cluster)}


def test_a_quantiles_customers_without_a_cluster_are_refused_with_their_count(lab):
    data = lab.root / "data" / "customers.parquet"
    c = pd.read_parquet(data)
    c["account_id"] = c["account_id"].astype("Float64")
    c.loc[c.index[:3], "account_id"] = pd.NA
    c.to_parquet(data)
    with pytest.raises(DataError, match=r"column 'account_id': 3 assigned customers have no account_id"):
        fetch(lab, "p50")


def test_a_customer_twice_in_the_cohort_source_is_refused_for_a_quantile(lab):
    data = lab.root / "data" / "customers.parquet"
    c = pd.read_parquet(data)
    pd.concat([c, c.iloc[:2].assign(account_id=999)]).to_parquet(data)
    with pytest.raises(DataError, match=r"source 'customers', column 'customer_id': 2 assigned customers"):
        fetch(lab, "p50")


def test_only_a_quantile_has_cluster_values(lab):
    with pytest.raises(ValueError, match="is a mean: its clusters have totals"):
        fetch(lab, "spend")
