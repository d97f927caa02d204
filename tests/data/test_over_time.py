"""A metric's moments on each day since the start (labkit.data.over_time), in one query, checked against
pandas recomputing each day's cumulative per-customer values from the same rows — exactly for counts and
whole-number sums — on DuckDB, PostgreSQL and random event logs (hypothesis). For a cluster pilot
(``daily_cluster_totals``) the same per (community, arm) pair, a CUPED covariate's Σx, Σx², Σxy included,
equal to ``cluster_totals`` of a look on that day, and one query."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_server import postgres_server  # noqa: F401 -- the session fixture

from labkit.data.aggregate import aggregate_metric, units_table
from labkit.data.over_time import daily_moments, daily_moments_expr
from labkit.data.sources import Engine
from labkit.errors import DataError
from labkit.lab import load_lab
from labkit.spec import load_pilot

URL_ENV = "OVER_TIME_DB_URL"
LAB = """\
lab: over-time-lab
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: parquet, path: data/outcomes.parquet}
  events: {format: parquet, path: data/events.parquet, timestamp: ts}
functions: [service]
channels: [twitter]
stages: [retention]
"""
PG_LAB = f"""\
lab: over-time-pg
sources:
  customers: {{format: postgres, url_env: {URL_ENV}, table: customers}}
  outcomes: {{format: postgres, url_env: {URL_ENV}, table: outcomes}}
  events: {{format: postgres, url_env: {URL_ENV}, table: events, timestamp: ts}}
functions: [service]
channels: [twitter]
stages: [retention]
"""

W = 7
START = pd.Timestamp("2026-11-01")
DAY = pd.Timedelta(days=1)
US = pd.Timedelta(microseconds=1)


def pilot_text(window: int = W) -> str:
    return f"""\
id: p
title: Replies over time
function: service
channel: twitter
stage: retention
owner: lab@example.com
hypothesis:
  statement: Replies grow.
  metric: replies
  direction: increase
  mde: {{relative: 0.1}}
cohort:
  source: customers
  id_column: customer_id
  max_size: 1000
  arms: {{control: 0.5, fast: 0.5}}
  control: control
  start: 2026-11-01
metrics:
  - {{name: replies, type: mean, source: events, event: {{column: event_type, equals: reply}}, aggregate: count, window_days: {window}}}
  - {{name: replied, type: proportion, source: events, event: {{column: event_type, equals: reply}}, aggregate: any, window_days: {window}}}
  - {{name: points, type: mean, source: events, event: {{column: event_type, equals: reply}}, aggregate: sum, column: value, window_days: {window}}}
  - {{name: fraction, type: mean, source: events, event: {{column: event_type, equals: reply}}, aggregate: sum, column: share, window_days: {window}}}
  - {{name: top, type: mean, source: events, event: {{column: event_type, equals: reply}}, aggregate: max, column: value, window_days: {window}}}
  - {{name: churned, type: proportion, source: outcomes, column: churned}}
"""


# --------------------------------------------------------------------------------------------------
# the rows: customers assigned across a few days (some before the start), events inside, before and after
# their windows, on the exact edges of windows and days, and customers with no event at all


def event_log(seed: int, n: int = 80) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1)
    at = START + pd.to_timedelta(rng.integers(-86_400, 3 * 86_400, n), "s")
    units = pd.DataFrame(
        {"customer_id": ids, "arm": np.where(rng.random(n) < 0.5, "control", "fast"), "stratum": "all",
         "assigned_at": at.astype("datetime64[us]")}
    )  # fmt: skip
    rows = []
    for cid, t0 in zip(ids, units["assigned_at"]):
        if cid % 6 == 0:
            continue  # no events
        for _ in range(rng.integers(0, 10)):
            offset = pd.Timedelta(seconds=int(rng.integers(-2 * 86_400, (W + 2) * 86_400)))
            rows.append((cid, t0 + offset, "reply" if rng.random() < 0.75 else "like"))
        if cid % 4 == 1:  # window edges, and an event on each side of a day's midnight
            midnight = START + int(rng.integers(1, W)) * DAY
            rows += [(cid, t, "reply") for t in (t0, t0 - US, t0 + W * DAY - US, t0 + W * DAY)]
            rows += [(cid, t, "reply") for t in (midnight - US, midnight) if t >= t0]
    ev = pd.DataFrame(rows, columns=["customer_id", "ts", "event_type"])
    ev["ts"] = ev["ts"].astype("datetime64[us]")
    ev["value"] = rng.integers(0, 50, len(ev)).astype(float)
    ev["share"] = rng.random(len(ev))
    return units, ev


def write_lab(root: Path, units: pd.DataFrame, events: pd.DataFrame, lab: str = LAB) -> None:
    for sub in ("configs", "experiments", "data", "results/p"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "configs" / "lab.yaml").write_text(lab)
    (root / "experiments" / "p.yaml").write_text(pilot_text())
    pd.DataFrame({"customer_id": units["customer_id"]}).to_parquet(root / "data" / "customers.parquet")
    pd.DataFrame({"customer_id": units["customer_id"], "churned": 0}).to_parquet(
        root / "data" / "outcomes.parquet"
    )
    events.to_parquet(root / "data" / "events.parquet")
    units.to_parquet(root / "results" / "p" / "assignment.parquet")


def run(root: Path, metric: str, **kw):
    pilot = load_pilot(str(root / "experiments" / "p.yaml"), lab=load_lab(root))
    engine = Engine.for_lab(pilot.lab)
    try:
        return daily_moments(engine, pilot, pilot.metric(metric), units_table(engine, pilot), **kw)
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------------
# the independent reference: each day's per-customer values recomputed from scratch


AGGREGATES = {"replies": ("count", None), "replied": ("any", None), "points": ("sum", "value"),
              "fraction": ("sum", "share")}  # fmt: skip


def reference(units: pd.DataFrame, events: pd.DataFrame, metric: str, days: int) -> dict[str, list[tuple]]:
    """Per arm, per day d: (n, Σc, Σc²) with c the customer's aggregate over [at, min(at + W, start + d))."""
    agg, column = AGGREGATES[metric]
    ev = events[events["event_type"] == "reply"].merge(
        units[["customer_id", "assigned_at"]], on="customer_id"
    )
    ev = ev[(ev["ts"] >= ev["assigned_at"]) & (ev["ts"] < ev["assigned_at"] + W * DAY)]
    out = {a: [] for a in sorted(units["arm"].unique())}
    for d in range(1, days + 1):
        seen = ev[ev["ts"] < START + d * DAY].groupby("customer_id")
        c = seen.size() if column is None else seen[column].sum()
        if agg == "any":
            c = (c > 0).astype(float)
        c = units.set_index("customer_id").assign(c=c.astype(float)).fillna({"c": 0.0})
        for arm, g in c.groupby("arm"):
            out[arm].append((len(g), g["c"].sum(), (g["c"] ** 2).sum()))
    return out


def got(moments) -> dict[str, list[tuple]]:
    return {a: [(m.n, m.sum, m.sum_sq) for m in series] for a, series in moments.arms.items() if series[0].n}


def closing_day(units: pd.DataFrame) -> int:
    return int(np.ceil((units["assigned_at"].max() + W * DAY - START) / DAY))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("over-time")
    units, events = event_log(5)
    write_lab(root, units, events)
    return root, units, events


# --------------------------------------------------------------------------------------------------
# DuckDB


@pytest.mark.parametrize("metric", ["replies", "replied", "points"])
def test_each_days_moments_equal_pandas_exactly(lab, metric):
    root, units, events = lab
    m = run(root, metric)
    days = closing_day(units)
    assert m.days == tuple(range(1, days + 1))
    assert m.as_of[0] == dt.date(2026, 11, 2) and m.as_of[-1] == dt.date(2026, 11, 1) + dt.timedelta(days)
    assert got(m) == reference(units, events, metric, days)


def test_a_sum_of_fractions_matches_to_rounding(lab):
    root, units, events = lab
    m = run(root, "fraction", days=4)
    want = reference(units, events, "fraction", 4)
    for arm, series in got(m).items():
        assert np.asarray(series) == pytest.approx(np.asarray(want[arm]), rel=1e-12)


def test_day_d_is_the_look_as_of_start_plus_d_days(lab):
    root, _, _ = lab
    m = run(root, "replies", days=W + 4)
    pilot = load_pilot(str(root / "experiments" / "p.yaml"), lab=load_lab(root))
    engine = Engine.for_lab(pilot.lab)
    try:
        for d in (1, 3, W + 4):
            look = dt.datetime(2026, 11, 1) + dt.timedelta(days=d)
            md = aggregate_metric(
                engine, pilot, pilot.metric("replies"), units_table(engine, pilot), as_of=look
            )
            for arm, series in m.arms.items():
                a = md.arms[arm]
                assert (series[d - 1].n, series[d - 1].sum, series[d - 1].sum_sq) == (a.n, a.sum, a.sum_sq)
    finally:
        engine.close()


def test_a_horizon_past_the_windows_repeats_the_last_day(lab):
    root, units, _ = lab
    m = run(root, "replies", days=closing_day(units) + 3)
    for series in m.arms.values():
        assert series[-1] == series[-4]


def test_a_per_customer_table_and_a_max_have_no_history(lab):
    root, _, _ = lab
    assert run(root, "churned") is None
    assert run(root, "top") is None


def test_one_query_however_many_days(lab):
    root, _, _ = lab
    pilot = load_pilot(str(root / "experiments" / "p.yaml"), lab=load_lab(root))
    engine = Engine.for_lab(pilot.lab)
    try:
        expr = daily_moments_expr(engine, pilot, pilot.metric("replies"), units_table(engine, pilot),
                                  start=dt.date(2026, 11, 1))  # fmt: skip
        sql = str(engine.con.compile(expr)).upper()
    finally:
        engine.close()
    assert sql.count(" OVER ") == 1 and "UNION ALL" in sql  # one window function, no query per day
    assert "CUSTOMER_ID" not in {c.upper() for c in expr.columns}


def test_infinite_event_values_are_refused_with_their_count(tmp_path):
    units, events = event_log(9, n=20)
    m = events.merge(units, on="customer_id")
    inside = (
        (m["ts"] >= m["assigned_at"]) & (m["ts"] < m["assigned_at"] + W * DAY) & (m["event_type"] == "reply")
    )
    events.loc[inside[inside].index[:3], "value"] = np.inf  # merge kept events' order: same index
    write_lab(tmp_path, units, events)
    with pytest.raises(
        DataError, match=r"^source 'events', column 'value': 3 rows of assigned customers hold NaN"
    ):
        run(tmp_path, "points")


def test_no_events_at_all_is_zero_every_day(tmp_path):
    units, events = event_log(3, n=12)
    write_lab(tmp_path, units, events.iloc[:0])
    m = run(tmp_path, "replies", days=3)
    for arm, series in m.arms.items():
        assert [(s.n, s.sum, s.sum_sq) for s in series] == [((units["arm"] == arm).sum(), 0.0, 0.0)] * 3


# --------------------------------------------------------------------------------------------------
# random event logs


@st.composite
def logs(draw):
    n = draw(st.integers(1, 12))
    at_s = draw(st.lists(st.integers(-86_400, 2 * 86_400), min_size=n, max_size=n))
    arms = draw(st.lists(st.sampled_from(["control", "fast"]), min_size=n, max_size=n))
    units = pd.DataFrame(
        {"customer_id": np.arange(1, n + 1), "arm": arms, "stratum": "all",
         "assigned_at": (START + pd.to_timedelta(at_s, "s")).astype("datetime64[us]")}
    )  # fmt: skip
    events = draw(
        st.lists(
            st.tuples(
                st.integers(1, n + 2),
                st.integers(-2 * 86_400, (W + 3) * 86_400),
                st.integers(0, 3),
                st.booleans(),
            ),  # fmt: skip
            max_size=40,
        )
    )
    ev = pd.DataFrame(events, columns=["customer_id", "s", "value", "reply"])
    ev["ts"] = (START + pd.to_timedelta(ev["s"], "s")).astype("datetime64[us]")
    ev["event_type"] = np.where(ev["reply"], "reply", "like")
    ev["value"] = ev["value"].astype(float)
    ev["share"] = ev["value"] / 4
    return units, ev[["customer_id", "ts", "event_type", "value", "share"]]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs(), st.sampled_from(["replies", "replied", "points"]))
def test_random_event_logs_match_pandas(log, metric):
    units, events = log
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_lab(root, units, events)
        m = run(root, metric)
    days = closing_day(units)
    want = reference(units, events, metric, days)
    assert got(m) == {a: s for a, s in want.items() if s[0][0]}


# --------------------------------------------------------------------------------------------------
# PostgreSQL: the same rows as tables (event times as timestamptz)


def test_postgres_gives_the_same_moments(tmp_path, postgres_server, monkeypatch):  # noqa: F811
    import psycopg

    units, events = event_log(21, n=40)
    url = postgres_server.create_database("over_time")
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CREATE TABLE customers (customer_id bigint)")
        con.execute("CREATE TABLE outcomes (customer_id bigint, churned bigint)")
        con.execute("CREATE TABLE events (customer_id bigint, ts timestamptz, event_type text, value double precision,"
                    " share double precision)")  # fmt: skip
        with con.cursor() as cur:
            cur.executemany("INSERT INTO customers VALUES (%s)", [(int(i),) for i in units["customer_id"]])
            cur.executemany(
                "INSERT INTO events VALUES (%s, %s, %s, %s, %s)",
                [(int(r.customer_id), r.ts.to_pydatetime().replace(tzinfo=dt.UTC), r.event_type, r.value, r.share)
                 for r in events.itertuples()],
            )  # fmt: skip
    monkeypatch.setenv(URL_ENV, url)
    write_lab(tmp_path, units, events, lab=PG_LAB)
    days = closing_day(units)
    for metric in ("replies", "points"):
        assert got(run(tmp_path, metric)) == reference(units, events, metric, days), metric


# --------------------------------------------------------------------------------------------------
# cluster-randomised pilots: the same query per (cluster, arm), cumulated in numpy


def cluster_lab(root: Path, seed: int, n: int = 80) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The event log with customers in 9 communities, each community's customers in one arm, and a pilot
    ``pc`` randomising communities whose metrics add a CUPED count."""
    units, events = event_log(seed, n)
    community = (units["customer_id"] * 7 % 9).map(lambda g: f"com-{g}")
    units["arm"] = np.where(community.isin(["com-0", "com-2", "com-3", "com-7"]), "fast", "control")
    write_lab(root, units, events)
    pd.DataFrame({"customer_id": units["customer_id"], "community": community}).to_parquet(
        root / "data" / "customers.parquet"
    )
    text = (
        pilot_text()
        .replace("id: p\n", "id: pc\n")
        .replace("  id_column: customer_id\n", "  id_column: customer_id\n  unit_column: community\n")
    )
    cuped = "  - {name: replies_adj, type: mean, source: events, event: {column: event_type, equals: reply}, "
    text += cuped + f"aggregate: count, window_days: {W}, cuped: true}}\n"
    (root / "experiments" / "pc.yaml").write_text(text)
    (root / "results" / "pc").mkdir(parents=True, exist_ok=True)
    units.to_parquet(root / "results" / "pc" / "assignment.parquet")
    return units.assign(community=community), events


def run_clusters(root: Path, metric: str, **kw):
    from labkit.data.over_time import daily_cluster_totals

    pilot = load_pilot(str(root / "experiments" / "pc.yaml"), lab=load_lab(root))
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        return daily_cluster_totals(engine, pilot, pilot.metric(metric), units, "community", **kw)
    finally:
        engine.close()


def cluster_reference(units: pd.DataFrame, events: pd.DataFrame, metric: str, days: int) -> dict:
    """Per (community, arm): n, Σx, Σx² (the pre-period count) and per day (Σc, Σc², Σxc), from scratch."""
    agg, column = AGGREGATES["replies" if metric == "replies_adj" else metric]
    ev = events[events["event_type"] == "reply"].merge(
        units[["customer_id", "assigned_at"]], on="customer_id"
    )
    post = ev[(ev["ts"] >= ev["assigned_at"]) & (ev["ts"] < ev["assigned_at"] + W * DAY)]
    pre = ev[(ev["ts"] >= ev["assigned_at"] - W * DAY) & (ev["ts"] < ev["assigned_at"])]
    base = units.set_index("customer_id")
    x = base.index.map(pre.groupby("customer_id").size()).fillna(0).to_numpy(dtype=float)
    base = base.assign(x=x if metric == "replies_adj" else 0.0)
    out = {}
    for d in range(1, days + 1):
        seen = post[post["ts"] < START + d * DAY].groupby("customer_id")
        c = seen.size() if column is None else seen[column].sum()
        c = (c > 0).astype(float) if agg == "any" else c.astype(float)
        b = base.assign(c=base.index.map(c).fillna(0.0).to_numpy(dtype=float))
        for (g, arm), part in b.groupby(["community", "arm"]):
            first = out.setdefault((g, arm), {"n": len(part), "x": part.x.sum(), "x2": (part.x**2).sum(),
                                              "y": [], "y2": [], "xy": []})  # fmt: skip
            first["y"].append(part.c.sum())
            first["y2"].append((part.c**2).sum())
            first["xy"].append((part.x * part.c).sum())
    return out


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    root = tmp_path_factory.mktemp("over-time-clusters")
    units, events = cluster_lab(root, 8)
    return root, units, events


@pytest.mark.parametrize("metric", ["replies", "replied", "points", "replies_adj"])
def test_each_days_cluster_totals_equal_pandas_exactly(clusters, metric):
    root, units, events = clusters
    m = run_clusters(root, metric)
    days = closing_day(units)
    assert m.days == tuple(range(1, days + 1)) and m.as_of[-1] == dt.date(2026, 11, 1) + dt.timedelta(days)
    assert list(m.arm) == sorted(m.arm, key=["control", "fast"].index)  # the pilot's arm order
    want = cluster_reference(units, events, metric, days)
    assert sorted(zip(m.cluster, m.arm)) == sorted(want)
    for j, key in enumerate(zip(m.cluster, m.arm)):
        w = want[key]
        assert (m.n[j], m.x[j], m.x2[j]) == (w["n"], w["x"], w["x2"])
        assert (list(m.y[:, j]), list(m.y2[:, j]), list(m.xy[:, j])) == (w["y"], w["y2"], w["xy"])
    assert m.covariate == ("pre-period count over 7 days" if metric == "replies_adj" else None)
    if metric != "replies_adj":
        assert not m.x.any() and not m.xy.any()


def test_a_days_cluster_totals_are_the_analysis_totals_of_a_look_that_day(clusters):
    """``on(i)`` is what ``cluster_totals`` gives for `--as-of start + day` (the final analysis' query), on
    days after the last assignment (a look before a customer's assignment cuts its pre-period short; the
    curve keeps the covariate the final analysis uses)."""
    from labkit.data.clusters import cluster_totals

    root, _, _ = clusters
    pilot = load_pilot(str(root / "experiments" / "pc.yaml"), lab=load_lab(root))
    m = run_clusters(root, "replies_adj")
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        for i in (3, len(m.days) - 1):  # assignments end before day 3's midnight
            look = dt.datetime.combine(m.as_of[i], dt.time())
            want = cluster_totals(engine, pilot, pilot.metric("replies_adj"), units, "community", as_of=look)
            have = m.on(i)
            order = {k: j for j, k in enumerate(zip(want.cluster, want.arm))}
            idx = [order[k] for k in zip(have.cluster, have.arm)]
            for name in ("assigned", "missing", "n", "y", "y2", "x", "x2", "xy"):
                assert list(getattr(have, name)) == list(getattr(want, name)[idx]), (i, name)
    finally:
        engine.close()
    assert m.until(3).days == (1, 2, 3) and m.until(3).y.shape == (3, m.n.size)


def test_cluster_totals_over_time_are_one_query(clusters):
    from labkit.data.over_time import daily_cluster_totals_expr

    root, _, _ = clusters
    pilot = load_pilot(str(root / "experiments" / "pc.yaml"), lab=load_lab(root))
    engine = Engine.for_lab(pilot.lab)
    calls = []
    real = engine.con.to_pyarrow
    try:
        units = units_table(engine, pilot)
        for name in ("replies", "replies_adj"):
            expr = daily_cluster_totals_expr(
                engine, pilot, pilot.metric(name), units, "community", start=dt.date(2026, 11, 1)
            )
            sql = str(engine.con.compile(expr)).upper()
            assert sql.count(" OVER ") == 1 and "UNION ALL" in sql, name  # no query per day
            assert "CUSTOMER_ID" not in {c.upper() for c in expr.columns}
        engine.con.to_pyarrow = lambda *a, **k: calls.append(a) or real(*a, **k)
        from labkit.data.over_time import daily_cluster_totals

        daily_cluster_totals(engine, pilot, pilot.metric("replies_adj"), units, "community")
    finally:
        engine.con.to_pyarrow = real
        engine.close()
    assert len(calls) == 1


def test_a_customer_without_a_cluster_is_refused_with_the_count(tmp_path):
    units, _ = cluster_lab(tmp_path, 4, n=30)
    keep = units["customer_id"] > 2  # two customers absent from the cohort source: no community
    pd.DataFrame(
        {"customer_id": units["customer_id"][keep], "community": units["community"][keep]}
    ).to_parquet(tmp_path / "data" / "customers.parquet")
    with pytest.raises(DataError, match=r"2 assigned customers have no community; in a cluster-randomised"):
        run_clusters(tmp_path, "replies")


def test_postgres_gives_the_same_cluster_totals(tmp_path, postgres_server, monkeypatch):  # noqa: F811
    import psycopg

    units, events = cluster_lab(tmp_path, 23, n=40)
    url = postgres_server.create_database("over_time_clusters")
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CREATE TABLE customers (customer_id bigint, community text)")
        con.execute("CREATE TABLE outcomes (customer_id bigint, churned bigint)")
        con.execute("CREATE TABLE events (customer_id bigint, ts timestamptz, event_type text, value double precision,"
                    " share double precision)")  # fmt: skip
        with con.cursor() as cur:
            cur.executemany("INSERT INTO customers VALUES (%s, %s)",
                            [(int(r.customer_id), r.community) for r in units.itertuples()])  # fmt: skip
            cur.executemany(
                "INSERT INTO events VALUES (%s, %s, %s, %s, %s)",
                [(int(r.customer_id), r.ts.to_pydatetime().replace(tzinfo=dt.UTC), r.event_type, r.value, r.share)
                 for r in events.itertuples()],
            )  # fmt: skip
    monkeypatch.setenv(URL_ENV, url)
    (tmp_path / "configs" / "lab.yaml").write_text(PG_LAB)
    days = closing_day(units)
    for metric in ("replies_adj", "points"):
        m, want = run_clusters(tmp_path, metric), cluster_reference(units, events, metric, days)
        got_totals = {(g, a): (m.n[j], m.x[j], list(m.y[:, j]), list(m.xy[:, j]))
                      for j, (g, a) in enumerate(zip(m.cluster, m.arm))}  # fmt: skip
        assert got_totals == {k: (w["n"], w["x"], w["y"], w["xy"]) for k, w in want.items()}, metric
