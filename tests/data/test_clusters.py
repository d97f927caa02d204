"""Cluster totals of a metric (labkit.data.clusters), each checked against pandas on the same rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
from pg_server import postgres_server  # noqa: F401 -- the session fixture

from labkit.data import clusters
from labkit.data.aggregate import units_table
from labkit.data.clusters import (
    ClusterTotals,
    cluster_totals,
    mixed_clusters,
    pilot_totals,
    raise_on_mixed_clusters,
)
from labkit.data.sources import Engine
from labkit.errors import AssignmentError, DataError
from labkit.lab import load_lab
from labkit.spec import load_pilot
from labkit.stats.cluster import cluster_contrast, icc_anova

LAB = """\
lab: cluster-lab
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
  events: {format: parquet, path: data/events.parquet, timestamp: ts}
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
  metric: churned
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
  - {name: churned, type: proportion, source: outcomes, column: churned}
  - {name: spend, type: mean, source: outcomes, column: spend, covariate: pre_spend}
  - name: per_contact
    type: ratio
    numerator: {source: outcomes, column: tickets}
    denominator: {source: outcomes, column: contacts}
  - name: replies
    type: mean
    source: events
    event: {column: event_type, equals: reply}
    aggregate: count
    window_days: 10
    cuped: true
  - {name: p50, type: quantile, quantile: 0.5, source: outcomes, column: spend}
"""

PG_LAB = """\
lab: cluster-pg
sources:
  customers: {format: postgres, url_env: CLUSTER_DB_URL, table: customers}
  outcomes: {format: postgres, url_env: CLUSTER_DB_URL, table: outcomes}
  events: {format: postgres, url_env: CLUSTER_DB_URL, table: events, timestamp: ts}
functions: [service]
channels: [community]
stages: [retention]
"""

N, W = 120, 10
START = pd.Timestamp("2026-11-01")
DAY = pd.Timedelta(days=1)


@pytest.fixture
def lab(tiny_lab):
    """N customers in 20 accounts of unequal size, the arm drawn per account; outcomes and events."""
    rng = np.random.default_rng(11)
    tiny_lab.write("configs/lab.yaml", LAB)
    tiny_lab.pilot(PILOT)
    data = tiny_lab.root / "data"
    data.mkdir()
    ids = np.arange(1, N + 1)
    account = rng.choice(np.arange(100, 120), N, p=np.linspace(1, 3, 20) / np.linspace(1, 3, 20).sum())
    pd.DataFrame({"customer_id": ids, "account_id": account}).to_parquet(data / "customers.parquet")
    treated = {a: bool(rng.random() < 0.5) for a in np.unique(account)}
    units = pd.DataFrame(
        {
            "customer_id": ids,
            "arm": ["fast" if treated[a] else "control" for a in account],
            "stratum": "all",
            "assigned_at": (START + pd.to_timedelta(rng.integers(0, 86400, N), "s")).astype("datetime64[us]"),
        }
    )
    write_units(tiny_lab, units)
    present = ids[ids % 7 != 3]  # some customers have no outcome row
    out = pd.DataFrame(
        {
            "customer_id": present,
            "churned": rng.integers(0, 2, present.size).astype(float),
            "spend": rng.gamma(2.0, 30.0, present.size).round(2),
            "pre_spend": rng.gamma(2.0, 25.0, present.size).round(2),
            "tickets": rng.integers(0, 5, present.size),
            "contacts": rng.integers(0, 4, present.size),
        }
    )
    out.loc[out.index[:3], "spend"] = np.nan
    out.loc[out.index[2:5], "churned"] = np.nan
    out.to_csv(data / "outcomes.csv", index=False)
    rows = []
    for cid, t0 in zip(ids, units["assigned_at"]):
        for _ in range(rng.integers(0, 8) if cid % 5 else 0):
            offset = pd.Timedelta(seconds=int(rng.integers(-2 * W * 86400, 2 * W * 86400)))
            rows.append((cid, t0 + offset, "reply" if rng.random() < 0.7 else "like"))
    ev = pd.DataFrame(rows, columns=["customer_id", "ts", "event_type"])
    ev["ts"] = ev["ts"].astype("datetime64[us]")
    ev.to_parquet(data / "events.parquet")
    tiny_lab.frames = {"units": units, "account": account, "outcomes": out, "events": ev}
    return tiny_lab


def write_units(tiny_lab, units: pd.DataFrame) -> None:
    path = tiny_lab.root / "results" / "p" / "assignment.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    units.to_parquet(path)


def totals(tiny_lab, metric: str, unit_column: str = "account_id"):
    pilot = load_pilot("experiments/p.yaml", lab=load_lab(tiny_lab.root))
    engine = Engine.for_lab(pilot.lab)
    try:
        return cluster_totals(engine, pilot, pilot.metric(metric), units_table(engine, pilot), unit_column)
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------------
# the independent reference


def per_customer(tiny_lab, metric: str) -> pd.DataFrame:
    """One row per assigned customer: arm, cluster, y (NaN = excluded), x — computed in pandas."""
    f = tiny_lab.frames
    u = f["units"].assign(cluster=f["account"].astype(str))
    o = u.merge(f["outcomes"], on="customer_id", how="left")
    absent = ~u["customer_id"].isin(f["outcomes"]["customer_id"])
    if metric == "churned":  # absent: 0; a NULL inside the table: excluded
        y = o["churned"].where(~absent.values, 0.0)
        return o.assign(y=y, x=0.0, miss=o["churned"].isna())
    if metric == "spend":
        return o.assign(y=o["spend"], x=o["pre_spend"].fillna(0.0))
    if metric == "per_contact":
        both = o["tickets"].notna() & o["contacts"].notna()
        return o.assign(y=o["tickets"].where(both), x=o["contacts"].where(both))
    ev = f["events"][f["events"]["event_type"] == "reply"].merge(u, on="customer_id")
    post = (ev["ts"] >= ev["assigned_at"]) & (ev["ts"] < ev["assigned_at"] + W * DAY)
    pre = (ev["ts"] >= ev["assigned_at"] - W * DAY) & (ev["ts"] < ev["assigned_at"])
    y = ev[post].groupby("customer_id").size().reindex(u["customer_id"], fill_value=0).to_numpy()
    x = ev[pre].groupby("customer_id").size().reindex(u["customer_id"], fill_value=0).to_numpy()
    return u.assign(y=y.astype(float), x=x.astype(float))


def reference(frame: pd.DataFrame) -> dict[tuple[str, str], dict[str, float]]:
    out = {}
    for (cluster, arm), g in frame.groupby(["cluster", "arm"]):
        k = g[g["y"].notna()]
        y, x = k["y"].astype(float), k["x"].astype(float)
        out[(cluster, arm)] = dict(
            assigned=len(g), missing=int(g["miss"].sum() if "miss" in g else g["y"].isna().sum()), n=len(k), y=y.sum(), y2=(y * y).sum(),
            x=x.sum(), x2=(x * x).sum(), xy=(x * y).sum(),
        )  # fmt: skip
    return out


def as_dict(t) -> dict[tuple[str, str], dict[str, float]]:
    fields = ("assigned", "missing", "n", "y", "y2", "x", "x2", "xy")
    return {
        (t.cluster[i], t.arm[i]): {f: float(getattr(t, f)[i]) for f in fields} for i in range(t.cluster.size)
    }


# --------------------------------------------------------------------------------------------------
# totals


@pytest.mark.parametrize("metric", ["churned", "spend", "per_contact", "replies"])
def test_totals_per_cluster_and_arm_match_pandas(lab, metric):
    t = totals(lab, metric)
    got, want = as_dict(t), reference(per_customer(lab, metric))
    assert got.keys() == want.keys()
    for key, exp in want.items():
        assert got[key] == pytest.approx(exp, rel=1e-12, abs=1e-9), key
    assert t.unit_column == "account_id" and t.metric == metric
    assert not any(isinstance(c, int) for c in t.cluster)  # text, as ClusterCells compares them


def test_the_cells_feed_the_estimator_with_the_customer_level_means(lab):
    t = totals(lab, "spend")
    frame = per_customer(lab, "spend").dropna(subset=["y"])
    cells = t.cells(["control", "fast"])
    c = cluster_contrast(cells, treatment=1, control=0)
    means = frame.groupby("arm")["y"].mean()
    assert c.mean_control == pytest.approx(means["control"], rel=1e-12)
    assert c.effect == pytest.approx(means["fast"] - means["control"], rel=1e-9)
    assert c.n_clusters == t.clusters("control") + t.clusters("fast")
    assert 0.0 <= icc_anova(cells) <= 1.0


def test_a_ratio_cell_is_numerator_over_denominator_totals(lab):
    t = totals(lab, "per_contact")
    frame = per_customer(lab, "per_contact").dropna(subset=["y"])
    cells = t.cells(["control", "fast"])
    assert cells.y2 is None
    c = cluster_contrast(cells, treatment=1, control=0)
    g = frame[frame["arm"] == "fast"]
    assert c.mean_treatment == pytest.approx(g["y"].sum() / g["x"].sum(), rel=1e-12)


def test_a_quantile_has_no_cluster_totals(lab):
    with pytest.raises(ValueError, match="quantile"):
        totals(lab, "p50")


def test_customers_without_a_cluster_are_refused_with_their_count(lab):
    data = lab.root / "data" / "customers.parquet"
    c = pd.read_parquet(data)
    c["account_id"] = c["account_id"].astype("Float64")
    c.loc[c.index[:4], "account_id"] = pd.NA
    c.to_parquet(data)
    with pytest.raises(DataError, match=r"column 'account_id': 4 assigned customers have no account_id"):
        totals(lab, "churned")


def test_a_customer_twice_in_the_cohort_source_is_refused(lab):
    data = lab.root / "data" / "customers.parquet"
    c = pd.read_parquet(data)
    pd.concat([c, c.iloc[:2].assign(account_id=999)]).to_parquet(data)
    for metric in ("churned", "replies"):
        with pytest.raises(
            DataError, match=r"source 'customers', column 'customer_id': 2 assigned customers"
        ):
            totals(lab, metric)


def test_a_missing_unit_column_lists_the_columns(lab):
    with pytest.raises(DataError, match="community_id"):
        totals(lab, "churned", unit_column="community_id")


# --------------------------------------------------------------------------------------------------
# an imported assignment must be constant within each cluster


def test_mixed_clusters_are_counted(lab):
    pilot = load_pilot("experiments/p.yaml", lab=load_lab(lab.root))
    units = lab.frames["units"].copy()
    engine = Engine.for_lab(pilot.lab)
    try:
        assert mixed_clusters(engine, pilot, units_table(engine, pilot), "account_id") == 0
    finally:
        engine.close()
    account = pd.Series(lab.frames["account"])
    flipped = []
    for a in account.unique()[:3]:  # flip one customer in each of three accounts of more than one customer
        idx = account.index[account == a]
        if len(idx) > 1:
            units.loc[idx[0], "arm"] = "fast" if units.loc[idx[0], "arm"] == "control" else "control"
            flipped.append(a)
    write_units(lab, units)
    engine = Engine.for_lab(pilot.lab)
    try:
        n = mixed_clusters(engine, pilot, units_table(engine, pilot), "account_id")
    finally:
        engine.close()
    want = units.assign(c=account.values).groupby("c")["arm"].nunique().gt(1).sum()
    assert n == want == len(flipped)
    with pytest.raises(AssignmentError, match=rf"^p: {n} clusters have customers in more than one arm"):
        raise_on_mixed_clusters(pilot, n, "account_id")
    raise_on_mixed_clusters(pilot, 0, "account_id")


# --------------------------------------------------------------------------------------------------
# PostgreSQL: the same rows as tables


def test_postgres_gives_the_same_totals(lab, postgres_server, monkeypatch):  # noqa: F811
    import psycopg

    f = lab.frames
    url = postgres_server.create_database("clusters")
    with psycopg.connect(url, autocommit=True) as con, con.cursor() as cur:
        cur.execute("CREATE TABLE customers (customer_id bigint, account_id bigint)")
        cur.execute("CREATE TABLE outcomes (customer_id bigint, churned double precision, spend double precision,"
                    " pre_spend double precision, tickets bigint, contacts bigint)")  # fmt: skip
        cur.execute("CREATE TABLE events (customer_id bigint, ts timestamptz, event_type text)")
        cur.executemany("INSERT INTO customers VALUES (%s, %s)",
                        [(int(i), int(a)) for i, a in zip(f["units"]["customer_id"], f["account"])])  # fmt: skip
        o = f["outcomes"].astype(object).where(f["outcomes"].notna(), None)
        cur.executemany("INSERT INTO outcomes VALUES (%s, %s, %s, %s, %s, %s)",
                        [tuple(r) for r in o[["customer_id", "churned", "spend", "pre_spend", "tickets",
                                              "contacts"]].itertuples(index=False)])  # fmt: skip
        cur.executemany("INSERT INTO events VALUES (%s, %s, %s)",
                        [(int(r.customer_id), r.ts.to_pydatetime().replace(tzinfo=dt.UTC), r.event_type)
                         for r in f["events"].itertuples()])  # fmt: skip
    monkeypatch.setenv("CLUSTER_DB_URL", url)
    lab.write("configs/lab.yaml", PG_LAB)
    for metric in ("churned", "replies"):
        got, want = as_dict(totals(lab, metric)), reference(per_customer(lab, metric))
        assert got.keys() == want.keys(), metric
        for key, exp in want.items():
            assert got[key] == pytest.approx(exp, rel=1e-12, abs=1e-9), (metric, key)
    pilot = load_pilot("experiments/p.yaml", lab=load_lab(lab.root))
    engine = Engine.for_lab(pilot.lab)
    try:
        assert mixed_clusters(engine, pilot, units_table(engine, pilot), "account_id") == 0
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------------
# a pilot's metrics batched (pilot_totals): the same totals as one metric at a time, in fewer queries

BATCHED = {  # every demo-like kind, with the missing policies, over two per-customer sources and events
    "churned": {"type": "proportion", "source": "outcomes", "column": "churned"},
    "churned_zero": {"type": "proportion", "source": "outcomes", "column": "churned", "missing": "zero"},
    "churned_excl": {"type": "proportion", "source": "outcomes", "column": "churned", "missing": "exclude"},
    "spend": {"type": "mean", "source": "outcomes", "column": "spend", "covariate": "pre_spend"},
    "spend_zero": {"type": "mean", "source": "outcomes", "column": "spend", "missing": "zero"},
    "size": {"type": "mean", "source": "customers", "column": "account_id"},
    "per_contact": {"type": "ratio", "numerator": {"source": "outcomes", "column": "tickets"},
                    "denominator": {"source": "outcomes", "column": "contacts"}},
    "per_contact_zero": {"type": "ratio", "numerator": {"source": "outcomes", "column": "tickets"},
                         "denominator": {"source": "outcomes", "column": "contacts"}, "missing": "zero"},
    "replies": {"type": "mean", "source": "events", "event": {"column": "event_type", "equals": "reply"},
                "aggregate": "count", "window_days": W, "cuped": True},
    "replied": {"type": "proportion", "source": "events", "event": {"column": "event_type", "equals": "reply"},
                "aggregate": "any", "window_days": 5},
}  # fmt: skip


def batched_pilot(tiny_lab, names=tuple(BATCHED), *, cohort: str = ""):
    """The pilot with the ``BATCHED`` metrics ``names`` (in that order) and ``cohort`` lines added, loaded."""
    import json

    head = PILOT.split("metrics:")[0].replace("metric: churned", f"metric: {names[0]}") + cohort
    lines = [f"  - {json.dumps({'name': n, **BATCHED[n]})}" for n in names]
    tiny_lab.pilot(head + "metrics:\n" + "\n".join(lines) + "\n")
    return load_pilot("experiments/p.yaml", lab=load_lab(tiny_lab.root))


def both_ways(pilot, unit_column: str = "account_id"):
    """(pilot_totals of every metric, {metric: cluster_totals of it alone}, queries the batch ran)."""
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        queries, inside = [], []
        fetch, direct = clusters.fetch_tables, engine.con.to_pyarrow

        def fetch_counted(engine, exprs):  # the batch's queries, run at once on DuckDB
            queries.extend(exprs)
            inside.append(True)
            try:
                return fetch(engine, exprs)
            finally:
                inside.pop()

        def direct_counted(expr, *a, **k):  # any other query that reaches the engine
            if not inside:
                queries.append(expr)
            return direct(expr, *a, **k)

        clusters.fetch_tables, engine.con.to_pyarrow = fetch_counted, direct_counted
        try:
            batched = pilot_totals(engine, pilot, list(pilot.spec.metrics), units, unit_column)
        finally:
            clusters.fetch_tables, engine.con.to_pyarrow = fetch, direct
        alone = {m.name: cluster_totals(engine, pilot, m, units, unit_column) for m in pilot.spec.metrics}
    finally:
        engine.close()
    return batched, alone, len(queries)


def test_batched_totals_are_the_per_metric_totals(lab):
    pilot = batched_pilot(lab)
    batched, alone, queries = both_ways(pilot)
    assert list(batched) == list(BATCHED)
    for name, t in batched.items():
        one = alone[name]
        for field in fields(ClusterTotals):
            got, want = getattr(t, field.name), getattr(one, field.name)
            if isinstance(want, np.ndarray):
                assert got.dtype == want.dtype and np.array_equal(got, want), (name, field.name)
            else:
                assert got == want, (name, field.name)
    assert queries == 1 + 2 + 1  # per-customer metrics, each event metric, the units' count
    # and what they hold is the independent reference's
    for name in ("churned", "spend", "per_contact", "replies"):
        got, want = as_dict(batched[name]), reference(per_customer(lab, name))
        assert got.keys() == want.keys()
        for key, exp in want.items():
            assert got[key] == pytest.approx(exp, rel=1e-12, abs=1e-9), (name, key)


def test_batched_totals_follow_the_missing_policies(lab):
    batched, _, _ = both_ways(batched_pilot(lab))
    f = lab.frames
    o = f["units"].merge(f["outcomes"], on="customer_id", how="left")
    for name, counted in (
        ("churned_zero", len(o)),  # absent and NULL: 0
        ("churned_excl", int(o["churned"].notna().sum())),  # both excluded
        ("spend_zero", len(o)),
    ):
        t = batched[name]
        assert t.n.sum() == counted, name
        assert t.y.sum() == pytest.approx(o[BATCHED[name]["column"]].fillna(0.0).sum(), rel=1e-12), name
    assert batched["per_contact_zero"].x.sum() == pytest.approx(o["contacts"].fillna(0).sum())
    assert batched["replied"].y.sum() <= batched["replied"].n.sum() == len(o)


@pytest.mark.parametrize("problem", ["no cluster", "twice in the cohort", "nan", "not 0/1"])
def test_batched_totals_refuse_as_each_metric_does(lab, problem):
    data = lab.root / "data"
    if problem in ("no cluster", "twice in the cohort"):
        c = pd.read_parquet(data / "customers.parquet")
        if problem == "no cluster":
            c["account_id"] = c["account_id"].astype("Float64")
            c.loc[c.index[:4], "account_id"] = pd.NA
        else:
            c = pd.concat([c, c.iloc[:2].assign(account_id=999)])
        c.to_parquet(data / "customers.parquet")
    else:
        o = pd.read_csv(data / "outcomes.csv")
        o.loc[o.index[7:9], "spend" if problem == "nan" else "churned"] = np.inf if problem == "nan" else 2.0
        o.to_csv(data / "outcomes.csv", index=False)
    names = ("replies", "spend", "churned", "per_contact")
    pilot = batched_pilot(lab, names)
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        with pytest.raises(DataError) as batched:
            pilot_totals(engine, pilot, list(pilot.spec.metrics), units, "account_id")
        first = None
        for m in pilot.spec.metrics:  # the first metric that refuses, taken alone
            try:
                cluster_totals(engine, pilot, m, units, "account_id")
            except DataError as exc:
                first = exc
                break
    finally:
        engine.close()
    assert first is not None and str(batched.value) == str(first)


def test_a_cluster_pilot_is_analysed_from_the_batched_totals(lab):
    from labkit.clustered import cluster_data, of_totals

    pilot = batched_pilot(
        lab, ("churned", "spend", "per_contact", "replies"), cohort="  unit_column: account_id\n"
    )
    assert pilot.spec.cohort.unit_column == "account_id"
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        data = cluster_data(engine, pilot, units)
        alone = {m.name: of_totals(pilot, cluster_totals(engine, pilot, m, units, "account_id"))
                 for m in pilot.spec.metrics}  # fmt: skip
    finally:
        engine.close()
    assert list(data) == list(alone)
    for name, d in data.items():
        assert (d.arms, d.assigned, d.missing, d.covariate) == (
            alone[name].arms, alone[name].assigned, alone[name].missing, alone[name].covariate,
        ), name  # fmt: skip
