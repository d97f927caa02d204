"""The primary metric's per-arm moments at each day since the start, in one query (``labkit analyze
--over-time``; the statistics are ``labkit.stats.over_time``).

Day d is the look at ``as_of = start + d days`` (midnight UTC): its moments are exactly those of
``aggregate_metric(..., as_of=start + d days)`` — every assigned customer counted in its arm, a customer's
value the aggregate of its matching events in ``[assigned_at, min(assigned_at + window_days, as_of))``, a
customer without such events a 0 — so the row of day d is what a `labkit analyze --as-of` on that day
shows. Defined for event metrics whose aggregate accumulates: count, sum and any. A per-customer table is a
snapshot with no event time, so there is no "as of day d" to compute: None; so for mean and max events,
whose customers enter ``n`` only once they have a value (not yet needed: None too).

One query, however many days (not one per day). Let c_i(d) be customer i's value on day d, and k the
customer's event days (the day an event first counts: ⌊(ts − start) / 1 day⌋ + 1, at least 1). Then

    Σ_i c_i(d)  = Σ_{k ≤ d} Σ_i (c_i(k) − c_i(k⁻)),     Σ_i c_i(d)² = Σ_{k ≤ d} Σ_i (c_i(k)² − c_i(k⁻)²),

k⁻ the customer's previous event day (0 before the first). In the engine: the matching events in each
customer's window are grouped per (customer, event day) — the day's contribution —, a window function
cumulates them per customer (``SUM(..) OVER (PARTITION BY customer ORDER BY day)``), and that sum less the
day's own contribution is the value at the previous event day (no second window, no ``LAG``); for ``any``
each is 1 once positive. The deltas are summed per (arm, day). Days without an event change nothing, so carrying c_i forward costs no row: the
per-day deltas are cumulated over days in Python (D rows per arm). The same ``UNION ALL`` brings each arm's
customer count n (constant over days: a customer with no event yet counts as 0) and the last
``assigned_at``, from which the default horizon is the day every window has closed.

Only per-(arm, day) rows leave the engine, never a customer id. The metric's types are those its
``aggregate_metric`` already checked (an analysis aggregates the metric before it asks for its history); a
NaN or infinite event value is refused with its count, as there. Timestamps are naive UTC
(``labkit.data.query.as_utc``).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labkit.data.arms import arm_order
from labkit.data.checks import raise_on_checks
from labkit.data.query import ARM, AT, UNIT, Check, as_utc, id_match, renamed_units
from labkit.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot
    from labkit.stats.moments import ArmMoments

__all__ = ["CUMULATIVE", "DailyMoments", "daily_moments", "daily_moments_expr"]

#: The event aggregates whose value on day d is a cumulative sum of per-day contributions.
CUMULATIVE = ("count", "sum", "any")

_DAY_S = 86_400
_DD, _UNITS, _DY, _DY2, _NF, _LAST = "_lk_day", "_lk_units", "_lk_dy", "_lk_dy2", "_lk_nf", "_lk_last"


@dataclass(frozen=True)
class DailyMoments:
    """A metric's per-arm moments (n, Σy, Σy²) on each day since the start: ``arms[a][i]`` is arm a on
    ``days[i]``, the look at midnight UTC of ``as_of[i]``."""

    metric: str
    start: dt.date
    days: tuple[int, ...]
    as_of: tuple[dt.date, ...]
    arms: dict[str, tuple[ArmMoments, ...]]


def daily_moments(
    engine: Engine,
    pilot: Pilot,
    metric: Metric,
    units: ibis.Table,
    *,
    days: int | None = None,
    start: dt.date | None = None,
) -> DailyMoments | None:
    """The moments of days 1..``days`` since ``start`` (default: ``pilot.start``, and the day the last
    window closes), or None when the metric has no history (module docstring). ``units`` is the assignment
    (``labkit.data.aggregate.units_table``). A look before every window has closed (``--as-of``) passes
    its own day as ``days``: later days would show events that, on that day, had not happened yet."""
    if metric.event is None or metric.aggregate not in CUMULATIVE:
        return None
    start = start or pilot.start
    if start is None:
        raise ValueError(f"{pilot.id}: over time needs the pilot's start")
    if days is not None and days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    expr = daily_moments_expr(engine, pilot, metric, units, start=start)
    rows = engine.con.to_pyarrow(expr).to_pylist()
    check = Check(_NF, metric.source, metric.column or "", "nonfinite")
    raise_on_checks(rows, [check] if metric.column else [])
    return _cumulated(pilot, metric, start, rows, days)


def daily_moments_expr(
    engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, *, start: dt.date
) -> ibis.Table:
    """The one query (not run): per (arm, day) the summed deltas of Σy and Σy², and per arm (day 0) the
    customers and their last assignment time."""
    import ibis

    u = renamed_units(units)
    u = u.mutate(**{AT: as_utc(u[AT], "assignment", "assigned_at")})
    per_arm = u.group_by(ARM).aggregate(
        **{
            _DD: ibis.literal(0, "int64"),
            _UNITS: u.count(),
            _DY: ibis.null().cast("float64"),
            _DY2: ibis.null().cast("float64"),
            _NF: ibis.literal(0, "int64"),
            _LAST: u[AT].max(),
        }
    )
    deltas = _deltas(engine, pilot, metric, u, start)
    if deltas is None:  # a CSV of events that is a header alone: no event, every value is 0
        return per_arm
    return per_arm.union(deltas, distinct=False)


def _deltas(engine: Engine, pilot: Pilot, metric: Metric, u: ibis.Table, start: dt.date):
    """Per (arm, day): Σ_i c_i(k) − c_i(k⁻) and Σ_i c_i(k)² − c_i(k⁻)² over customers with events that day."""
    import ibis

    source = metric.source
    if engine.no_rows(source):
        return None
    ts = pilot.lab.source(source).timestamp
    if ts is None:
        raise DataError(source, "not an event table: the lab file gives it no 'timestamp'")
    idc = pilot.spec.cohort.id_column
    engine.require_columns(
        source, [idc, ts, metric.event.column] + ([metric.column] if metric.column else [])
    )
    t = engine.table(source)
    fields = {"e_id": t[idc], "e_ts": as_utc(t[ts], source, ts)}
    if metric.column:
        v = t[metric.column]
        fields["e_v"] = (v.cast("int32") if v.type().is_boolean() else v).cast("float64")
    e = t.filter(t[metric.event.column] == metric.event.equals).select(**fields)
    window = ibis.interval(days=int(metric.window_days))
    j = e.inner_join(u, [id_match(u[UNIT], e["e_id"]), e["e_ts"] >= u[AT], e["e_ts"] < u[AT] + window])
    # the day an event first counts: a look at start + d days sees events before it; ts truncated to its
    # day first, so the epoch is whole seconds on every engine (no rounding of fractions)
    s0 = int(dt.datetime.combine(start, dt.time()).replace(tzinfo=dt.UTC).timestamp())
    day = (j["e_ts"].truncate("D").epoch_seconds().cast("int64") - s0) // _DAY_S + 1
    j = j.mutate(**{_DD: ibis.greatest(day, ibis.literal(1, "int64")).cast("int64")})
    if metric.aggregate == "sum":
        today = j["e_v"].sum().fill_null(0.0)
    else:  # count, and any (1 once the cumulated count is positive)
        today = j["e_id"].count().cast("float64")
    aggs = {"today": today}
    if metric.column:
        aggs[_NF] = j["e_id"].count(where=j["e_v"].isnan() | j["e_v"].isinf())
    per = j.group_by([UNIT, ARM, _DD]).aggregate(**aggs)
    upto = ibis.window(group_by=per[UNIT], order_by=per[_DD], rows=(None, 0))
    per = per.mutate(cum=per["today"].sum().over(upto))
    c, p = per["cum"], per["cum"] - per["today"]  # p: the cumulated value before this day (no LAG needed)
    if metric.aggregate == "any":
        c, p = _flag(c > 0), _flag(p > 0)
    out = per.group_by([ARM, _DD]).aggregate(
        **{
            _UNITS: ibis.literal(0, "int64"),
            _DY: (c - p).sum(),
            _DY2: (c * c - p * p).sum(),
            _NF: per[_NF].sum().cast("int64") if metric.column else ibis.literal(0, "int64"),
            _LAST: ibis.null().cast("timestamp"),
        }
    )
    return out.select(ARM, _DD, _UNITS, _DY, _DY2, _NF, _LAST)


def _flag(condition):
    """A boolean as 0.0/1.0 (through int32: PostgreSQL casts a boolean to integer only)."""
    return condition.cast("int32").cast("float64")


def _cumulated(
    pilot: Pilot, metric: Metric, start: dt.date, rows: list[dict], days: int | None
) -> DailyMoments:
    """The per-(arm, day) deltas of the query cumulated over days 1..D, per arm in the pilot's order."""
    from labkit.stats.moments import ArmMoments

    units = {str(r[ARM]): int(r[_UNITS]) for r in rows if r[_DD] == 0}
    if days is None:
        days = _closing_day(metric, start, [r[_LAST] for r in rows if r[_DD] == 0 and r[_LAST] is not None])
    dy = {a: [0.0] * (days + 1) for a in units}
    dy2 = {a: [0.0] * (days + 1) for a in units}
    for r in rows:
        d = int(r[_DD])
        if 1 <= d <= days:
            a = str(r[ARM])
            dy[a][d] += float(r[_DY] or 0.0)
            dy2[a][d] += float(r[_DY2] or 0.0)
    arms = {}
    for a in arm_order(pilot, units):
        n, total, sq, series = units.get(a, 0), 0.0, 0.0, []
        for d in range(1, days + 1):
            if n:
                total, sq = total + dy[a][d], sq + dy2[a][d]
            series.append(ArmMoments(n=n, sum=total, sum_sq=max(sq, 0.0)))
        arms[a] = tuple(series)
    return DailyMoments(
        metric=metric.name,
        start=start,
        days=tuple(range(1, days + 1)),
        as_of=tuple(start + dt.timedelta(days=d) for d in range(1, days + 1)),
        arms=arms,
    )


def _closing_day(metric: Metric, start: dt.date, lasts: list[dt.datetime]) -> int:
    """The first day whose look sees every window closed: ⌈(last assigned_at + window − start) / 1 day⌉."""
    if not lasts:
        return int(metric.window_days)
    end = max(lasts) + dt.timedelta(days=int(metric.window_days))
    return max(1, math.ceil((end - dt.datetime.combine(start, dt.time())) / dt.timedelta(days=1)))
