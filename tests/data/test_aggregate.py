"""Metric aggregation in the engine, checked against an independent pandas computation in each test."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import threading
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from labkit.data.aggregate import (
    MetricData,
    aggregate_metric,
    aggregate_pilot,
    baseline,
    moments_expr,
    units_table,
)
from labkit.data.sources import Engine
from labkit.errors import AssignmentError, DataError
from labkit.lab import load_lab
from labkit.spec import load_pilot

from conftest import DROP, pilot_yaml

LAB = """\
lab: agg-lab
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
  contacts: {format: parquet, path: data/contacts.parquet}
  scores: {format: parquet, path: data/scores.parquet}
  events: {format: parquet, path: data/events.parquet, timestamp: ts}
functions: [service]
channels: [twitter]
stages: [retention]
"""

W = 10  # window_days used throughout
START = pd.Timestamp("2026-11-01")
DAY = pd.Timedelta(days=1)
US = pd.Timedelta(microseconds=1)
N = 60


# --------------------------------------------------------------------------------------------------
# the tiny lab


@pytest.fixture
def lab(tiny_lab):
    """A lab with per-customer, ratio and event sources and an assignment of N customers to two arms."""
    rng = np.random.default_rng(7)
    tiny_lab.write("configs/lab.yaml", LAB)
    data = tiny_lab.root / "data"
    data.mkdir()
    ids = np.arange(1, N + 1)
    pd.DataFrame({"customer_id": ids, "segment": "a"}).to_parquet(data / "customers.parquet")

    # assigned_at varies by customer, so every window is per customer
    at = (
        START
        + pd.to_timedelta(rng.integers(0, 5, N), unit="D")
        + pd.to_timedelta(rng.integers(0, 86400, N), "s")
    )
    units = pd.DataFrame(
        {
            "customer_id": ids,
            "arm": np.where(ids % 2 == 0, "control", "fast"),
            "stratum": "all",
            "assigned_at": at.astype("datetime64[us]"),
        }
    )
    tiny_lab.units = units
    write_assignment(tiny_lab, units)

    # per-customer outcomes: 10 assigned customers have no row, two have null values; one extra customer
    present = ids[ids % 6 != 1]
    out = pd.DataFrame(
        {
            "customer_id": np.append(present, 999),
            "churned": rng.integers(0, 2, len(present) + 1),
            "flag": rng.integers(0, 2, len(present) + 1).astype(bool),
            "spend": rng.gamma(2.0, 30.0, len(present) + 1).round(2),
            "pre_spend": rng.gamma(2.0, 25.0, len(present) + 1).round(2),
            "tickets": rng.integers(0, 5, len(present) + 1),
            "contacts_here": rng.integers(0, 4, len(present) + 1),
            "segment": "x",
        }
    )
    out.loc[out.index[:2], "spend"] = np.nan  # null in the CSV
    out.loc[out.index[1:4], "churned"] = np.nan
    out.loc[out.index[3:6], "pre_spend"] = np.nan  # missing covariate
    out["churned"] = out["churned"].astype("Int64")
    out.to_csv(data / "outcomes.csv", index=False)
    tiny_lab.outcomes = out

    # a second per-customer source for ratio denominators; different customers are missing
    cpresent = ids[ids % 5 != 0]
    contacts = pd.DataFrame(
        {"customer_id": cpresent, "contacts": rng.integers(0, 6, len(cpresent)).astype(float)}
    )
    contacts.to_parquet(data / "contacts.parquet")
    tiny_lab.contacts = contacts

    # events around each customer's assignment, in both periods and outside them, plus exact boundaries
    rows = []
    for cid, t0 in zip(ids, at):
        if cid % 7 == 0:
            continue  # no events at all
        for _ in range(rng.integers(0, 12)):
            offset = pd.Timedelta(seconds=int(rng.integers(-2 * W * 86400, 2 * W * 86400)))
            etype = "reply" if rng.random() < 0.7 else "like"
            rows.append((cid, t0 + offset, etype, float(rng.integers(1, 100))))
        if cid % 3 == 0:
            for edge in (t0, t0 + W * DAY, t0 - W * DAY, t0 - US, t0 + W * DAY - US):
                rows.append((cid, edge, "reply", float(rng.integers(1, 100))))
    ev = pd.DataFrame(rows, columns=["customer_id", "ts", "event_type", "value"])
    ev["ts"] = ev["ts"].astype("datetime64[us]")
    ev.to_parquet(data / "events.parquet")
    tiny_lab.events = ev
    return tiny_lab


def write_assignment(tiny_lab, units: pd.DataFrame) -> None:
    path = tiny_lab.root / "results" / "p" / "assignment.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    units.to_parquet(path)


def pilot_with(tiny_lab, metrics: str, arms: str = "{control: 0.5, fast: 0.5}"):
    """The default pilot (tests/pilots.py) on every customer with ``metrics`` (the lines of the list as
    written in the file), the first one primary."""
    declared = yaml.safe_load(metrics)
    tiny_lab.pilot(pilot_yaml(**{
        "title": "Aggregation",
        "hypothesis": {"statement": "Something moves.", "metric": declared[0]["name"], "direction": "increase",
                       "mde": {"relative": 0.1}},
        "cohort.where": DROP, "cohort.max_size": 1000, "cohort.arms": yaml.safe_load(arms),
        "metrics": declared,
    }))  # fmt: skip
    return load_pilot("experiments/p.yaml", lab=load_lab(tiny_lab.root))


def run(tiny_lab, metrics: str, **kw) -> MetricData:
    pilot = pilot_with(tiny_lab, metrics, **kw)
    engine = Engine.for_lab(pilot.lab)
    try:
        return aggregate_metric(engine, pilot, pilot.spec.metrics[0], units_table(engine, pilot))
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------------
# the independent reference


def reference(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per-arm moments from a per-customer frame with columns arm, y (NaN = excluded), x (optional)."""
    out = {}
    for arm, g in frame.groupby("arm"):
        k = g[g["y"].notna()]
        y = k["y"].astype(float)
        x = k["x"].astype(float) if "x" in k else pd.Series(0.0, index=k.index)
        out[arm] = dict(
            n=len(k),
            sum=y.sum(),
            sum_sq=(y * y).sum(),
            sum_x=x.sum(),
            sum_x_sq=(x * x).sum(),
            sum_xy=(x * y).sum(),
        )
    return out


def assert_matches(data: MetricData, frame: pd.DataFrame, missing: dict[str, int]) -> None:
    expected = reference(frame)
    assert set(data.arms) == set(expected)
    for arm, exp in expected.items():
        m = data.arms[arm]
        got = dict(n=m.n, sum=m.sum, sum_sq=m.sum_sq, sum_x=m.sum_x, sum_x_sq=m.sum_x_sq, sum_xy=m.sum_xy)
        assert got == pytest.approx(exp, rel=1e-12, abs=1e-9), arm
        assert data.assigned[arm] == int((frame["arm"] == arm).sum())
        assert data.missing[arm] == missing.get(arm, 0)


def per_customer(tiny_lab, table: pd.DataFrame, column: str) -> pd.DataFrame:
    return tiny_lab.units.merge(table[["customer_id", column]], on="customer_id", how="left")


def missing_by_arm(frame: pd.DataFrame, mask: pd.Series) -> dict[str, int]:
    return frame[mask].groupby("arm").size().to_dict()


def events_in(tiny_lab, lo_days: int, hi_days: int, *, etype: str = "reply") -> pd.DataFrame:
    """Events of each assigned customer in [assigned_at + lo, assigned_at + hi), computed by hand."""
    ev = tiny_lab.events[tiny_lab.events["event_type"] == etype]
    m = ev.join(tiny_lab.units.set_index("customer_id")["assigned_at"], on="customer_id", how="inner")
    keep = (m["ts"] >= m["assigned_at"] + lo_days * DAY) & (m["ts"] < m["assigned_at"] + hi_days * DAY)
    return m[keep]  # indexed like tiny_lab.events


def per_customer_aggregate(tiny_lab, events: pd.DataFrame, aggregate: str) -> pd.Series:
    """count / sum / any fill customers without events with 0; mean / max leave them NaN."""
    g = events.groupby("customer_id")["value"]
    series = {
        "count": g.size(),
        "sum": g.sum(),
        "mean": g.mean(),
        "max": g.max(),
        "any": g.size().clip(upper=1),
    }
    s = series[aggregate].reindex(tiny_lab.units["customer_id"]).to_numpy()
    if aggregate in ("count", "sum", "any"):
        s = np.nan_to_num(s, nan=0.0)
    return pd.Series(s, index=tiny_lab.units.index, dtype=float)


# --------------------------------------------------------------------------------------------------
# per-customer metrics


def _no_row(tiny_lab, frame: pd.DataFrame) -> pd.Series:
    return ~frame["customer_id"].isin(tiny_lab.outcomes["customer_id"])


def test_proportion_counts_absent_customers_as_zero_and_excludes_null_values(lab):
    """The default policy (DESIGN.md): no row is a 0, a NULL inside the table is not measured."""
    data = run(lab, "  - {name: churned, type: proportion, source: outcomes, column: churned}")
    f = per_customer(lab, lab.outcomes, "churned")
    missing = f["churned"].isna()
    assert missing.sum() == 10 + 3  # no row, or a null value
    y = f["churned"].where(~_no_row(lab, f), 0.0)  # absent -> 0, NULL stays NaN (excluded)
    assert_matches(data, f.assign(y=y), missing_by_arm(f, missing))
    assert data.kind == "proportion" and data.values is None and data.covariate is None
    assert sum(data.assigned.values()) - sum(m.n for m in data.arms.values()) == 3  # the NULLs only


@pytest.mark.parametrize("policy", ["zero", "exclude"])
def test_proportion_missing_policy_is_applied(lab, policy):
    data = run(
        lab, f"  - {{name: churned, type: proportion, source: outcomes, column: churned, missing: {policy}}}"
    )
    f = per_customer(lab, lab.outcomes, "churned")
    y = f["churned"].fillna(0) if policy == "zero" else f["churned"]
    assert_matches(data, f.assign(y=y), missing_by_arm(f, f["churned"].isna()))


def test_mean_missing_zero_counts_absent_and_null_as_zero(lab):
    data = run(lab, "  - {name: spend, type: mean, source: outcomes, column: spend, missing: zero}")
    f = per_customer(lab, lab.outcomes, "spend")
    assert_matches(data, f.assign(y=f["spend"].fillna(0)), missing_by_arm(f, f["spend"].isna()))


def test_boolean_proportion_is_cast_to_zero_one(lab):
    data = run(lab, "  - {name: flagged, type: proportion, source: outcomes, column: flag}")
    f = per_customer(lab, lab.outcomes, "flag")
    missing = f["flag"].isna()
    y = f["flag"].astype(float).where(~_no_row(lab, f), 0.0)
    assert_matches(data, f.assign(y=y), missing_by_arm(f, missing))


def test_mean_excludes_missing_customers(lab):
    data = run(lab, "  - {name: spend, type: mean, source: outcomes, column: spend}")
    f = per_customer(lab, lab.outcomes, "spend")
    assert_matches(data, f.assign(y=f["spend"]), missing_by_arm(f, f["spend"].isna()))
    assert sum(data.missing.values()) == 10 + 2


def test_mean_with_covariate_column_fills_a_missing_covariate_with_zero(lab):
    data = run(lab, "  - {name: spend, type: mean, source: outcomes, column: spend, covariate: pre_spend}")
    f = lab.units.merge(lab.outcomes[["customer_id", "spend", "pre_spend"]], on="customer_id", how="left")
    assert f.loc[f["spend"].notna(), "pre_spend"].isna().sum() == 3  # the rule below is exercised
    assert_matches(
        data, f.assign(y=f["spend"], x=f["pre_spend"].fillna(0.0)), missing_by_arm(f, f["spend"].isna())
    )
    assert data.covariate == "pre_spend"


def test_quantile_returns_sorted_values_of_counted_customers(lab):
    data = run(lab, "  - {name: spend_p50, type: quantile, quantile: 0.5, source: outcomes, column: spend}")
    f = per_customer(lab, lab.outcomes, "spend")
    assert_matches(data, f.assign(y=f["spend"]), missing_by_arm(f, f["spend"].isna()))
    for arm, g in f[f["spend"].notna()].groupby("arm"):
        np.testing.assert_array_equal(data.values[arm], np.sort(g["spend"].to_numpy()))


def test_ratio_from_one_source(lab):
    data = run(
        lab,
        "  - name: tickets_per_contact\n    type: ratio\n"
        "    numerator: {source: outcomes, column: tickets}\n"
        "    denominator: {source: outcomes, column: contacts_here}",
    )
    f = lab.units.merge(
        lab.outcomes[["customer_id", "tickets", "contacts_here"]], on="customer_id", how="left"
    )
    assert_matches(
        data, f.assign(y=f["tickets"], x=f["contacts_here"]), missing_by_arm(f, f["tickets"].isna())
    )
    assert data.kind == "ratio" and data.covariate is None


def test_ratio_across_two_sources_excludes_customers_missing_either(lab):
    data = run(
        lab,
        "  - name: tickets_per_contact\n    type: ratio\n"
        "    numerator: {source: outcomes, column: tickets}\n"
        "    denominator: {source: contacts, column: contacts}",
    )
    f = lab.units.merge(lab.outcomes[["customer_id", "tickets"]], on="customer_id", how="left")
    f = f.merge(lab.contacts, on="customer_id", how="left")
    gone = f["tickets"].isna() | f["contacts"].isna()
    assert gone.sum() > f["tickets"].isna().sum()  # both sources lose customers
    y = f["tickets"].where(~gone)
    assert_matches(data, f.assign(y=y, x=f["contacts"].where(~gone)), missing_by_arm(f, gone))


# --------------------------------------------------------------------------------------------------
# event metrics


EVENT = (
    "  - name: m\n    type: {type}\n    source: events\n    event: {{column: event_type, equals: reply}}\n"
    "    aggregate: {aggregate}\n    window_days: 10\n    cuped: true\n"
)


@pytest.mark.parametrize(
    "kind, aggregate",
    [("mean", "count"), ("mean", "sum"), ("mean", "mean"), ("mean", "max"), ("proportion", "any")],
)
def test_event_aggregate_and_its_pre_period(lab, kind, aggregate):
    metric = EVENT.format(type=kind, aggregate=aggregate)
    if aggregate in ("sum", "mean", "max"):
        metric += "    column: value\n"
    data = run(lab, metric)
    y = per_customer_aggregate(lab, events_in(lab, 0, W), aggregate)
    x = per_customer_aggregate(lab, events_in(lab, -W, 0), aggregate).fillna(0.0)
    f = lab.units.assign(y=y, x=x)
    assert_matches(data, f, missing_by_arm(f, y.isna()))
    assert data.covariate == f"pre-period {aggregate} over 10 days"
    if aggregate in ("count", "sum", "any"):
        assert data.missing == {"control": 0, "fast": 0}
        assert all(m.n == data.assigned[a] for a, m in data.arms.items())
    else:
        assert sum(data.missing.values()) > 0  # customers without events have no mean/max


def test_window_is_half_open_at_both_ends(tiny_lab):
    """At assigned_at counts, at assigned_at + window does not; the pre-period likewise."""
    tiny_lab.write("configs/lab.yaml", LAB)
    (tiny_lab.root / "data").mkdir()
    t0 = pd.Timestamp("2026-11-03 12:00:00")
    write_assignment(
        tiny_lab,
        pd.DataFrame(
            {
                "customer_id": [1, 2],
                "arm": ["control", "fast"],
                "stratum": "all",
                "assigned_at": pd.Series([t0, t0]).astype("datetime64[us]"),
            }
        ),
    )
    edges = {
        t0: 1,  # post
        t0 + W * DAY - US: 10,  # post, last microsecond
        t0 + W * DAY: 100,  # neither
        t0 - US: 1000,  # pre
        t0 - W * DAY: 10000,  # pre, first instant
        t0 - W * DAY - US: 100000,  # neither
    }
    ev = pd.DataFrame(
        {"customer_id": 1, "ts": list(edges), "event_type": "reply", "value": list(edges.values())}
    )
    ev["ts"] = ev["ts"].astype("datetime64[us]")
    ev.to_parquet(tiny_lab.root / "data" / "events.parquet")
    data = run(tiny_lab, EVENT.format(type="mean", aggregate="sum") + "    column: value\n")
    assert (data.arms["control"].sum, data.arms["control"].sum_x) == (11.0, 11000.0)
    assert (data.arms["fast"].n, data.arms["fast"].sum, data.arms["fast"].sum_x) == (1, 0.0, 0.0)

    # the same instants in a timezone-aware column (Europe/Berlin) are compared in UTC
    ev["ts"] = ev["ts"].dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")
    ev.to_parquet(tiny_lab.root / "data" / "events.parquet")
    data = run(tiny_lab, EVENT.format(type="mean", aggregate="sum") + "    column: value\n")
    assert (data.arms["control"].sum, data.arms["control"].sum_x) == (11.0, 11000.0)

    # ... also against timezone-aware assignment times (as `labkit assign` writes them; compared uncast),
    # in another zone again, and with an as_of look that cuts the last post-period microsecond off
    units = pd.read_parquet(tiny_lab.root / "results" / "p" / "assignment.parquet")
    units["assigned_at"] = units["assigned_at"].dt.tz_localize("UTC").dt.tz_convert("America/New_York")
    write_assignment(tiny_lab, units)
    data = run(tiny_lab, EVENT.format(type="mean", aggregate="sum") + "    column: value\n")
    assert (data.arms["control"].sum, data.arms["control"].sum_x) == (11.0, 11000.0)
    pilot = pilot_with(tiny_lab, EVENT.format(type="mean", aggregate="sum") + "    column: value\n")
    engine = Engine.for_lab(pilot.lab)
    try:
        look = (t0 + W * DAY - US).to_pydatetime()
        cut = aggregate_metric(engine, pilot, pilot.spec.metrics[0], units_table(engine, pilot), as_of=look)
    finally:
        engine.close()
    assert (cut.arms["control"].sum, cut.arms["control"].sum_x) == (1.0, 11000.0)


def test_customers_without_events_count_as_zero_for_count(lab):
    data = run(lab, EVENT.format(type="mean", aggregate="count"))
    quiet = set(lab.units["customer_id"]) - set(events_in(lab, 0, W)["customer_id"])
    assert quiet  # some customers have no event in their window...
    assert sum(data.assigned.values()) == sum(m.n for m in data.arms.values()) == N  # ...and all count


def test_event_value_must_match_the_column_type(lab):
    metric = EVENT.format(type="mean", aggregate="count").replace("equals: reply", "equals: 3")
    with pytest.raises(DataError) as info:
        run(lab, metric)
    assert str(info.value) == (
        "source 'events', column 'event_type': type string cannot equal event.equals 3; "
        "give a value of the column's type"
    )


# --------------------------------------------------------------------------------------------------
# data errors: one clear message naming source and column


def write_parquet(frame: pd.DataFrame, path) -> None:
    """Like DataFrame.to_parquet, but a NaN stays a NaN (pandas would write it as null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: pa.array(frame[c].to_numpy(), from_pandas=False) for c in frame.columns})
    pq.write_table(table, path)


def write_scores(tiny_lab, values, *, ids=None) -> None:
    ids = list(range(1, len(values) + 1)) if ids is None else ids
    write_parquet(pd.DataFrame({"customer_id": ids, "v": values}), tiny_lab.root / "data" / "scores.parquet")


def test_missing_column_lists_the_columns(lab):
    with pytest.raises(DataError) as info:
        run(lab, "  - {name: m, type: mean, source: outcomes, column: nope}")
    assert str(info.value) == (
        "source 'outcomes', column 'nope': no such column; columns: customer_id, churned, flag, spend, "
        "pre_spend, tickets, contacts_here, segment"
    )


def test_string_column_is_refused_with_its_type(lab):
    with pytest.raises(DataError) as info:
        run(lab, "  - {name: m, type: mean, source: outcomes, column: segment}")
    assert str(info.value) == (
        "source 'outcomes', column 'segment': type string is not numeric; a metric needs numbers (or true/false)"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_with_a_count(lab, bad):
    # two bad rows among assigned customers; a third at customer 999 (not assigned) does not count
    write_scores(lab, [1.0, bad, 2.0, bad, 5.0, bad], ids=[1, 2, 3, 4, 5, 999])
    with pytest.raises(DataError) as info:
        run(lab, "  - {name: m, type: mean, source: scores, column: v}")
    assert str(info.value) == "source 'scores', column 'v': 2 rows of assigned customers hold NaN or infinity"
    assert info.value.rows == 2


def test_nan_in_an_event_value_is_refused(lab):
    ev = lab.events.copy()
    ev.loc[events_in(lab, 0, W).index[0], "value"] = np.nan  # one event inside its customer's window
    write_parquet(ev, lab.root / "data" / "events.parquet")
    with pytest.raises(DataError) as info:
        run(lab, EVENT.format(type="mean", aggregate="sum") + "    column: value\n")
    assert (
        str(info.value)
        == "source 'events', column 'value': 1 row of assigned customers holds NaN or infinity"
    )


def test_proportion_outside_zero_one_is_refused_with_a_count(lab):
    write_scores(lab, [0, 1, 2, 1, 0.5, 0])
    with pytest.raises(DataError) as info:
        run(lab, "  - {name: m, type: proportion, source: scores, column: v}")
    assert str(info.value) == (
        "source 'scores', column 'v': 2 rows of assigned customers hold a value other than 0/1; "
        "a proportion needs 0/1 or true/false"
    )


def test_duplicate_ids_are_refused_with_a_count_and_no_ids(lab):
    write_scores(lab, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], ids=[11, 11, 12, 13, 13, 13, 999])
    with pytest.raises(DataError) as info:
        run(lab, "  - {name: m, type: mean, source: scores, column: v}")
    from labkit.privacy import lab_key, pseudonym

    key = lab_key(load_lab(lab.root))
    assert str(info.value) == (
        "source 'scores', column 'customer_id': 2 assigned customers have more than one row; "
        "a per-customer table needs one row per customer. examples, as pseudonyms (labkit.privacy.pseudonym): "
        f"{pseudonym(11, key)}, {pseudonym(13, key)}"
    )
    assert info.value.rows == 2
    # the raw ids appear nowhere as a token (a random pseudonym may contain "11" as hex digits)
    tokens = set(re.findall(r"[0-9A-Za-z]+", str(info.value)))
    assert not tokens & {"11", "13"}


def test_the_fused_query_gives_each_metric_what_it_gives_alone(lab):
    """aggregate_pilot runs the per-customer metrics as one query (shared joins, prefixed columns); every
    metric must come out exactly as its own single-metric query computes it."""
    pilot = pilot_with(
        lab,
        "  - {name: churned, type: proportion, source: outcomes, column: churned}\n"
        "  - {name: spend, type: mean, source: outcomes, column: spend, covariate: pre_spend}\n"
        "  - {name: p50, type: quantile, quantile: 0.5, source: outcomes, column: spend}\n"
        "  - name: per_contact\n"
        "    type: ratio\n"
        "    numerator: {source: outcomes, column: tickets}\n"
        "    denominator: {source: contacts, column: contacts}\n"
        + EVENT.format(type="mean", aggregate="count").replace("name: m", "name: replies"),
    )
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        fused = aggregate_pilot(engine, pilot, units)
        alone = {m.name: aggregate_metric(engine, pilot, m, units) for m in pilot.spec.metrics}
    finally:
        engine.close()
    assert list(fused) == [m.name for m in pilot.spec.metrics]
    for name, data in fused.items():
        other = alone[name]
        assert (data.arms, data.assigned, data.missing, data.covariate) == (
            other.arms,
            other.assigned,
            other.missing,
            other.covariate,
        ), name
        if data.values is not None:
            assert {a: v.tolist() for a, v in data.values.items()} == {
                a: v.tolist() for a, v in other.values.items()
            }
    assert fused["spend"].arms["control"].sum_x != 0 and fused["per_contact"].arms["fast"].sum_x != 0
    assert sum(fused["churned"].assigned.values()) == N


def test_duplicates_in_any_source_of_a_fused_query_are_refused(lab):
    """Several metrics over two sources run as one query; a duplicate in the second source is found."""
    write_scores(lab, [1.0, 2.0, 3.0, 4.0], ids=[11, 12, 12, 13])
    pilot = pilot_with(
        lab,
        "  - {name: spend, type: mean, source: outcomes, column: spend}\n"
        "  - {name: m, type: mean, source: scores, column: v}",
    )
    engine = Engine.for_lab(pilot.lab)
    try:
        with pytest.raises(DataError) as info:
            aggregate_pilot(engine, pilot, units_table(engine, pilot))
    finally:
        engine.close()
    assert str(info.value).startswith(
        "source 'scores', column 'customer_id': 1 assigned customer has more than one row"
    )


def test_duplicates_are_found_when_an_event_metric_counts_the_units(lab):
    """With an event metric the units' count comes from the event query's rows (one per assigned
    customer), not from a query of its own: a duplicate in a per-customer source is still refused."""
    write_scores(lab, [1.0, 2.0, 3.0, 4.0], ids=[11, 12, 12, 13])
    pilot = pilot_with(
        lab,
        "  - {name: spend, type: mean, source: outcomes, column: spend}\n"
        "  - {name: v, type: mean, source: scores, column: v}\n"
        + EVENT.format(type="mean", aggregate="count").replace("name: m", "name: replies"),
    )
    engine = Engine.for_lab(pilot.lab)
    try:
        with pytest.raises(DataError, match=r"source 'scores', column 'customer_id': 1 assigned customer"):
            aggregate_pilot(engine, pilot, units_table(engine, pilot))
    finally:
        engine.close()


def test_queries_run_together_on_duckdb_raise_the_first_failure_in_order(lab):
    """aggregate_pilot's queries run at the same time on DuckDB cursors (labkit.data.aggregate.fetch_tables):
    the rows are those of one query after the other, a failing query raises its own error, as in order,
    and a cursor is held by the same sandbox (it cannot read outside the lab either)."""
    import duckdb
    import ibis

    from labkit.data.aggregate import fetch_tables
    from labkit.errors import LabkitError

    pilot = pilot_with(lab, "  - {name: spend, type: mean, source: outcomes, column: spend}")
    engine = Engine.for_lab(pilot.lab)
    try:
        t = engine.table("outcomes")
        queries = [
            t.group_by("customer_id").aggregate(s=t.spend.sum()).order_by("customer_id"),
            t.count().as_table(),
        ]
        got = [table.to_pylist() for table in fetch_tables(engine, queries)]
        assert got == [engine.con.to_pyarrow(q).to_pylist() for q in queries]
        bad = t.select(x=ibis.literal("not a number").cast("float64")).aggregate(s=ibis._.x.sum())
        # the engine's error, as one labkit line that names the failure but never quotes DuckDB's text
        with pytest.raises(LabkitError, match=r"\(ConversionException\)") as failed:
            fetch_tables(engine, [queries[1], bad])
        assert "not a number" not in str(failed.value)
        cursor = engine.con.con.cursor()  # what fetch_tables runs each query on
        with pytest.raises(duckdb.PermissionException):
            cursor.sql("SELECT count(*) FROM read_csv('/etc/passwd')").fetchall()
        cursor.close()
    finally:
        engine.close()


# --------------------------------------------------------------------------------------------------
# shape of the query, arms, units and baseline


def test_one_query_returns_one_row_per_arm(lab):
    import ibis.expr.operations as ops

    pilot = pilot_with(
        lab, "  - {name: spend, type: mean, source: outcomes, column: spend, covariate: pre_spend}"
    )
    engine = Engine.for_lab(pilot.lab)
    try:
        expr = moments_expr(engine, pilot, pilot.spec.metrics[0], units_table(engine, pilot))
        op = expr.op()
        assert isinstance(op, ops.Aggregate) and list(op.groups) == ["_lk_arm"]
        result = engine.con.to_pyarrow(expr)
        assert result.num_rows == 2
        assert {"n", "sum", "sum_sq", "sum_x", "sum_x_sq", "sum_xy", "missing", "rows"} <= set(
            result.column_names
        )
    finally:
        engine.close()


def test_every_pilot_arm_is_reported_even_when_empty(lab):
    data = run(
        lab,
        "  - {name: spend, type: mean, source: outcomes, column: spend}",
        arms="{control: 0.4, fast: 0.4, slow: 0.2}",
    )
    assert list(data.arms) == ["control", "fast", "slow"]
    assert (data.arms["slow"].n, data.assigned["slow"], data.missing["slow"]) == (0, 0, 0)


def test_an_empty_arm_has_no_quantile_values(lab):
    data = run(
        lab,
        "  - {name: p50, type: quantile, quantile: 0.5, source: outcomes, column: spend}",
        arms="{control: 0.4, fast: 0.4, slow: 0.2}",
    )
    assert data.values["slow"].shape == (0,) and len(data.values["control"]) == data.arms["control"].n


def test_nan_in_a_covariate_is_refused_naming_the_covariate(lab):
    write_parquet(
        pd.DataFrame({"customer_id": [1, 2, 3], "v": [1.0, 2.0, 3.0], "pre": [0.5, np.nan, 1.0]}),
        lab.root / "data" / "scores.parquet",
    )
    with pytest.raises(DataError) as info:
        run(lab, "  - {name: m, type: mean, source: scores, column: v, covariate: pre}")
    assert (
        str(info.value) == "source 'scores', column 'pre': 1 row of assigned customers holds NaN or infinity"
    )


def test_a_text_timestamp_is_refused(lab):
    ev = lab.events.assign(ts=lab.events["ts"].astype(str))
    ev.to_parquet(lab.root / "data" / "events.parquet")
    with pytest.raises(DataError) as info:
        run(lab, EVENT.format(type="mean", aggregate="count"))
    assert str(info.value) == "source 'events', column 'ts': type string is not a timestamp"


def test_aggregate_pilot_covers_every_metric(lab):
    pilot = pilot_with(
        lab,
        "  - {name: churned, type: proportion, source: outcomes, column: churned}\n"
        + EVENT.format(type="mean", aggregate="count").replace("name: m", "name: replies"),
    )
    engine = Engine.for_lab(pilot.lab)
    try:
        data = aggregate_pilot(engine, pilot, units_table(engine, pilot))
    finally:
        engine.close()
    assert list(data) == ["churned", "replies"]
    assert data["replies"].covariate == "pre-period count over 10 days"


def test_units_table_without_an_assignment(lab):
    (lab.root / "results" / "p" / "assignment.parquet").unlink()
    pilot = pilot_with(lab, "  - {name: spend, type: mean, source: outcomes, column: spend}")
    engine = Engine.for_lab(pilot.lab)
    try:
        with pytest.raises(AssignmentError) as info:
            units_table(engine, pilot)
    finally:
        engine.close()
    assert str(info.value) == "p: no assignment for p; run `labkit assign p` first"


def test_units_table_reads_the_assignment(lab):
    pilot = pilot_with(lab, "  - {name: spend, type: mean, source: outcomes, column: spend}")
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        assert {"customer_id", "arm", "stratum", "assigned_at"} <= set(units.columns)
        assert units.count().execute() == N
    finally:
        engine.close()


def population(engine, pilot):
    import ibis

    start = ibis.literal(pilot.spec.cohort.start).cast("timestamp")
    t = engine.table("customers")
    return t.select(customer_id=t["customer_id"], arm=ibis.literal("all"), assigned_at=start)


def test_baseline_of_an_event_metric_reads_the_pre_period(lab):
    pilot = pilot_with(lab, EVENT.format(type="mean", aggregate="count"))
    engine = Engine.for_lab(pilot.lab)
    try:
        got = baseline(engine, pilot, pilot.primary, population(engine, pilot))
    finally:
        engine.close()
    ev = lab.events[lab.events["event_type"] == "reply"]
    start = pd.Timestamp(dt.datetime(2026, 11, 1))
    in_pre = ev[(ev["ts"] >= start - W * DAY) & (ev["ts"] < start)]
    in_pre_pre = ev[(ev["ts"] >= start - 2 * W * DAY) & (ev["ts"] < start - W * DAY)]
    ids = pd.Index(range(1, N + 1))
    y = in_pre.groupby("customer_id").size().reindex(ids, fill_value=0).astype(float)
    x = in_pre_pre.groupby("customer_id").size().reindex(ids, fill_value=0).astype(float)
    exp = reference(pd.DataFrame({"arm": "all", "y": y.to_numpy(), "x": x.to_numpy()}))["all"]
    assert (got.n, got.sum, got.sum_sq, got.sum_x, got.sum_xy) == pytest.approx(
        (exp["n"], exp["sum"], exp["sum_sq"], exp["sum_x"], exp["sum_xy"])
    )


def test_baseline_of_a_per_customer_metric_reads_current_values(lab):
    pilot = pilot_with(lab, "  - {name: spend, type: mean, source: outcomes, column: spend}")
    engine = Engine.for_lab(pilot.lab)
    try:
        got = baseline(engine, pilot, pilot.primary, population(engine, pilot))
    finally:
        engine.close()
    spend = lab.outcomes.set_index("customer_id")["spend"].reindex(range(1, N + 1)).dropna()
    assert (got.n, got.sum, got.sum_sq) == pytest.approx((len(spend), spend.sum(), (spend**2).sum()))


def test_values_whose_squares_overflow_are_refused(lab):
    write_scores(lab, [1e200, 2e200, 3.0])
    with pytest.raises(DataError) as info:
        run(lab, "  - {name: m, type: mean, source: scores, column: v}")
    assert (
        str(info.value)
        == "source 'scores', column 'v': the sums of squares overflow a double; rescale the column"
    )


def test_a_query_past_the_memory_limit_spills_inside_the_sandbox_and_gives_the_same_sums(tiny_lab):
    """`duckdb.memory_limit` of the lab file bounds DuckDB's memory: a hash aggregate over 2M distinct ids
    that needs more spills to results/.duckdb-tmp (still behind the sandbox's lock) and returns the exact
    per-group sums numpy computes."""
    rng = np.random.default_rng(3)
    n = 2_000_000
    ids, v = rng.permutation(n), rng.integers(0, 1000, n)
    (tiny_lab.root / "data").mkdir(exist_ok=True)
    write_parquet(pd.DataFrame({"customer_id": ids, "v": v}), tiny_lab.root / "data" / "scores.parquet")
    tiny_lab.write("configs/lab.yaml", LAB + "duckdb: {memory_limit: 64MB}\n")
    (tiny_lab.root / "results").mkdir(exist_ok=True)
    engine = Engine.for_lab(load_lab(tiny_lab.root))
    try:
        con = engine.con.con
        limit, temp = con.sql(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchall()[0]
        assert limit.endswith("B") and temp == str(tiny_lab.root / "results" / ".duckdb-tmp")
        t = engine.table("scores")
        per_id = t.group_by("customer_id").aggregate(s=t.v.sum(), k=t.count())
        q = per_id.aggregate(groups=per_id.count(), total=per_id.s.sum(), sq=(per_id.s * per_id.s).sum())
        spilled, done = set(), threading.Event()

        def watch():  # DuckDB removes its spill files when the query ends: look while it runs
            while not done.is_set():
                with contextlib.suppress(FileNotFoundError):
                    spilled.update(os.listdir(temp))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            (row,) = engine.con.to_pyarrow(q).to_pylist()
        finally:
            done.set()
            watcher.join()
    finally:
        engine.close()
    assert spilled, "the query never spilled: raise n or lower the limit"
    assert (row["groups"], row["total"], row["sq"]) == (n, int(v.sum()), int((v.astype(np.int64) ** 2).sum()))


def test_the_digest_cache_hashes_a_file_again_whenever_it_was_written(tmp_path, monkeypatch):
    """The digest cache remembers a file's sha256 by size, mtime, ctime and inode: the same file is not
    hashed again, and one rewritten with the same size and its old mtime put back still is (ctime)."""
    import hashlib

    from labkit.data.sources import DigestCache

    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "data.bin"
    f.write_bytes(b"a" * 1000)
    cache = DigestCache.load()
    assert cache.digest(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    cache.save()
    again = DigestCache.load()
    assert again.digest(f) == hashlib.sha256(b"a" * 1000).hexdigest() and not again.changed  # remembered
    st = f.stat()
    time.sleep(0.01)
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime tells
    assert DigestCache.load().digest(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    (tmp_path / "cache" / DigestCache.NAME).write_text("not json")
    assert DigestCache.load().digest(f) == hashlib.sha256(b"b" * 1000).hexdigest()  # a broken cache is none
