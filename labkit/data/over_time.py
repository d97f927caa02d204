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

A cluster-randomised pilot (``cohort.unit_column``) gets the same query with the (arm, cluster) pair as
the group key (:func:`daily_cluster_totals`): per pair its customers, the daily deltas and, for a CUPED
metric, a day −1 row with the pre-period covariate's Σx and Σx² (constant over days) and the deltas of
Σxy; the cumulative totals per pair are taken in numpy (D × pairs), for the cluster estimator of
``labkit.clustered``.

Only per-(arm, day) rows leave the engine (per (arm, cluster, day) in a cluster pilot), never a customer
id. The metric's types are those its
``aggregate_metric`` already checked (an analysis aggregates the metric before it asks for its history); a
NaN or infinite event value is refused with its count, as there. Timestamps are naive UTC
(``labkit.data.query.as_utc``).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from labkit.data.arms import arm_order
from labkit.data.checks import raise_on_checks
from labkit.data.query import ARM, AT, CELL, UNIT, Check, as_utc, id_match, renamed_units
from labkit.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import numpy

    from labkit.data.clusters import ClusterTotals
    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot
    from labkit.stats.moments import ArmMoments

__all__ = [
    "CUMULATIVE", "DailyClusterTotals", "DailyMoments", "cluster_shares", "daily_cluster_totals",
    "daily_cluster_totals_expr", "daily_moments", "daily_moments_expr",
]  # fmt: skip

#: The event aggregates whose value on day d is a cumulative sum of per-day contributions.
CUMULATIVE = ("count", "sum", "any")

_DAY_S = 86_400
_DD, _UNITS, _DY, _DY2, _NF, _LAST = "_lk_day", "_lk_units", "_lk_dy", "_lk_dy2", "_lk_nf", "_lk_last"
_DXY, _XU, _XV = "_lk_dxy", "_lk_xu", "_lk_xv"


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
    start = _start(pilot, metric, start, days)
    if start is None:
        return None
    expr = daily_moments_expr(engine, pilot, metric, units, start=start)
    rows = engine.con.to_pyarrow(expr).to_pylist()
    check = Check(_NF, metric.source, metric.column or "", "nonfinite")
    raise_on_checks(rows, [check] if metric.column else [])
    return _cumulated(pilot, metric, start, rows, days)


def _start(pilot: Pilot, metric: Metric, start: dt.date | None, days: int | None) -> dt.date | None:
    """The day 0 of a metric's history (``start``, else the pilot's); None when it has none."""
    if metric.event is None or metric.aggregate not in CUMULATIVE:
        return None
    start = start or pilot.start
    if start is None:
        raise ValueError(f"{pilot.id}: over time needs the pilot's start")
    if days is not None and days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    return start


def daily_moments_expr(
    engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, *, start: dt.date
) -> ibis.Table:
    """The one query (not run): per (arm, day) the summed deltas of Σy and Σy², and per arm (day 0) the
    customers and their last assignment time."""
    u = renamed_units(units)
    u = u.mutate(**{AT: as_utc(u[AT], "assignment", "assigned_at")})
    return _moments_union(engine, pilot, metric, u, start)


def _moments_union(
    engine: Engine, pilot: Pilot, metric: Metric, u: ibis.Table, start: dt.date, *, pre_period: bool = False
) -> ibis.Table:
    """The union of the per-arm rows (day 0) and the per-(arm, day) deltas over renamed units ``u``, whose
    ``ARM`` is the group key (the arm, or the (arm, cluster) pair of :func:`daily_cluster_totals_expr`);
    ``pre_period`` adds, per key, the day −1 row of a CUPED covariate's Σx and Σx² (:func:`_pre_rows`) and
    to every row the deltas of Σxy (NULL where there are none)."""
    import ibis

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
    e = _matching(engine, pilot, metric)
    if pre_period:
        per_arm = per_arm.mutate(**{_DXY: ibis.null().cast("float64")})
    if e is None:  # a CSV of events that is a header alone: no event, every value is 0
        return per_arm
    x = _pre_values(metric, e, u) if pre_period else None
    union = per_arm.union(_deltas(metric, e, u, start, x), distinct=False)
    return union.union(_pre_rows(metric, x), distinct=False) if x is not None else union


def _matching(engine: Engine, pilot: Pilot, metric: Metric) -> ibis.Table | None:
    """The metric's matching events (id, UTC timestamp, value), or None when the source has no rows."""
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
    return t.filter(t[metric.event.column] == metric.event.equals).select(**fields)


def _deltas(
    metric: Metric, e: ibis.Table, u: ibis.Table, start: dt.date, x: ibis.Table | None = None
) -> ibis.Table:
    """Per (arm, day): Σ_i c_i(k) − c_i(k⁻) and Σ_i c_i(k)² − c_i(k⁻)² over customers with events that day;
    with the customers' covariates ``x`` (:func:`_pre_values`) also Σ_i x_i·(c_i(k) − c_i(k⁻))."""
    import ibis

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
    aggs = {
        _UNITS: ibis.literal(0, "int64"),
        _DY: (c - p).sum(),
        _DY2: (c * c - p * p).sum(),
        _NF: per[_NF].sum().cast("int64") if metric.column else ibis.literal(0, "int64"),
        _LAST: ibis.null().cast("timestamp"),
    }
    if x is None:
        return per.group_by([ARM, _DD]).aggregate(**aggs).select(ARM, _DD, _UNITS, _DY, _DY2, _NF, _LAST)
    per = per.mutate(_lk_dc=c - p, _lk_dc2=c * c - p * p)
    per = per.left_join(x.select(_XU, _XV), per[UNIT] == x[_XU])
    aggs |= {_DY: per["_lk_dc"].sum(), _DY2: per["_lk_dc2"].sum()}
    aggs[_DXY] = (per["_lk_dc"] * per[_XV].fill_null(0.0)).sum()
    if metric.column:
        aggs[_NF] = per[_NF].sum().cast("int64")
    return per.group_by([ARM, _DD]).aggregate(**aggs).select(ARM, _DD, _UNITS, _DY, _DY2, _NF, _LAST, _DXY)


def _pre_values(metric: Metric, e: ibis.Table, u: ibis.Table) -> ibis.Table:
    """Per customer with pre-period events: its key, its CUPED covariate x (the aggregate of its matching
    events in ``[assigned_at − window, assigned_at)``, ``labkit.data.query``'s pre-period; none: 0) and
    the count of its non-finite values."""
    import ibis

    window = ibis.interval(days=int(metric.window_days))
    j = e.inner_join(u, [id_match(u[UNIT], e["e_id"]), e["e_ts"] >= u[AT] - window, e["e_ts"] < u[AT]])
    if metric.aggregate == "sum":
        x = j["e_v"].sum().fill_null(0.0)
    elif metric.aggregate == "any":
        x = _flag(j["e_id"].count() > 0)
    else:
        x = j["e_id"].count().cast("float64")
    nf = j["e_id"].count(where=j["e_v"].isnan() | j["e_v"].isinf()) if metric.column else ibis.literal(0)
    return j.group_by(**{_XU: j[UNIT], ARM: j[ARM]}).aggregate(**{_XV: x, _NF: nf.cast("int64")})


def _pre_rows(metric: Metric, x: ibis.Table) -> ibis.Table:
    """Per key (day −1): Σx and Σx² of the customers' covariates (:func:`_pre_values`)."""
    import ibis

    out = x.group_by(ARM).aggregate(
        **{
            _DD: ibis.literal(-1, "int64"),
            _UNITS: ibis.literal(0, "int64"),
            _DY: x[_XV].sum(),
            _DY2: (x[_XV] * x[_XV]).sum(),
            _NF: x[_NF].sum().cast("int64"),
            _LAST: ibis.null().cast("timestamp"),
            _DXY: ibis.null().cast("float64"),
        }
    )
    return out.select(ARM, _DD, _UNITS, _DY, _DY2, _NF, _LAST, _DXY)


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


# --------------------------------------------------------------------------------------------------
# cluster-randomised pilots: the same deltas per (cluster, arm)


@dataclass(frozen=True)
class DailyClusterTotals:
    """A metric's totals per (cluster, arm) pair on each day since the start: ``cluster[j]``, ``arm[j]``
    and its customers ``n[j]`` (every assigned customer, a 0 until its first event: constant over days),
    the CUPED covariate's Σx ``x[j]`` and Σx² ``x2[j]`` (a pre-period: constant; 0 without one), and the
    cumulative Σy ``y[i, j]``, Σy² ``y2[i, j]`` and Σxy ``xy[i, j]`` of pair j on ``days[i]``, the look at
    ``as_of[i]``. The covariate is the whole pre-period, as the final analysis reads it: a `--as-of` look
    before a customer's assignment would see only the part of it before the look (assignments are drawn
    by the start, so this matters only for customers assigned after a day's midnight)."""

    metric: str
    kind: str
    unit_column: str
    covariate: str | None
    start: dt.date
    days: tuple[int, ...]
    as_of: tuple[dt.date, ...]
    cluster: numpy.ndarray
    arm: numpy.ndarray
    n: numpy.ndarray
    x: numpy.ndarray
    x2: numpy.ndarray
    y: numpy.ndarray
    y2: numpy.ndarray
    xy: numpy.ndarray

    def until(self, last: int | None) -> DailyClusterTotals:
        """Days 1..``last`` (a look's day): a prefix, as the totals are cumulative."""
        if last is None or last >= len(self.days):
            return self
        return replace(
            self, days=self.days[:last], as_of=self.as_of[:last], y=self.y[:last], y2=self.y2[:last],
            xy=self.xy[:last],
        )  # fmt: skip

    def on(self, i: int) -> ClusterTotals:
        """The ``ClusterTotals`` of ``days[i]`` — what ``cluster_totals`` gives for a look on that day, so
        the cluster estimator reads them as it reads the analysis'."""
        import numpy as np

        from labkit.data.clusters import ClusterTotals

        return ClusterTotals(
            metric=self.metric, kind=self.kind, unit_column=self.unit_column, covariate=self.covariate,
            cluster=self.cluster, arm=self.arm, assigned=self.n, missing=np.zeros_like(self.n), n=self.n,
            y=self.y[i], y2=self.y2[i], x=self.x, x2=self.x2, xy=self.xy[i],
        )  # fmt: skip


def cluster_shares(engine: Engine, units: ibis.Table) -> dict[str, float]:
    """A saturation design's treated share per cluster, from the assignment's ``cluster`` and
    ``saturation`` columns (what the analysis reads; constant over days, so not part of the daily query)."""
    pairs = units.select("cluster", "saturation").distinct()
    return {str(r["cluster"]): float(r["saturation"]) for r in engine.con.to_pyarrow(pairs).to_pylist()}


def daily_cluster_totals(
    engine: Engine,
    pilot: Pilot,
    metric: Metric,
    units: ibis.Table,
    unit_column: str,
    *,
    days: int | None = None,
    start: dt.date | None = None,
) -> DailyClusterTotals | None:
    """The totals per (cluster, arm) of days 1..``days`` since ``start``, in one query (as
    :func:`daily_moments`, with the (arm, cluster) pair as the group key, the pattern of
    ``labkit.data.clusters``; ``unit_column`` read from the cohort source); None when the metric has no
    history. The analysis has already refused what ``cluster_totals`` refuses (a customer twice in the
    cohort source); a customer without a cluster is refused here too, with the count."""
    start = _start(pilot, metric, start, days)
    if start is None:
        return None
    source = pilot.spec.cohort.source
    expr = daily_cluster_totals_expr(engine, pilot, metric, units, unit_column, start=start)
    cols = _columns(engine.con.to_pyarrow(expr))
    check = Check(_NF, metric.source, metric.column or "", "nonfinite")
    raise_on_checks([{_NF: int(cols[_NF].sum())}], [check] if metric.column else [])
    base = cols[_DD] == 0
    loose = int(sum(n for k, n in zip(cols[ARM][base], cols[_UNITS][base]) if CELL not in k))
    from labkit.data.clusters import raise_on_loose

    raise_on_loose(loose, source, unit_column)
    return _cluster_cumulated(pilot, metric, unit_column, start, cols, days)


def daily_cluster_totals_expr(
    engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, unit_column: str, *, start: dt.date
) -> ibis.Table:
    """The one query (not run): :func:`daily_moments_expr` per (arm, cluster) key, with the day −1 rows of
    a CUPED covariate."""
    from labkit.data.clusters import clustered_units

    # the key: arm<US>cluster, the arm alone for a customer without a cluster (refused, with the count)
    u = clustered_units(
        engine, pilot, renamed_units(units), unit_column, pilot.spec.cohort.source, by_cluster=True
    )
    u = u.select(**{UNIT: u[UNIT], ARM: u[ARM], AT: as_utc(u[AT], "assignment", "assigned_at")})
    return _moments_union(engine, pilot, metric, u, start, pre_period=metric.cuped)


def _columns(table) -> dict:
    """The query's rows (a pyarrow table: one row per (key, day), up to D × pairs) as numpy columns, the
    keys decoded once each (not a Python dict per row); NULL sums are 0, ``_LAST`` is its maximum."""
    import numpy as np
    import pyarrow.compute as pc

    table = table.combine_chunks() if table.num_rows else table
    keys = table.column(ARM).combine_chunks().dictionary_encode() if table.num_rows else None
    cols = {
        ARM: np.asarray(keys.dictionary.to_pylist(), dtype=object)[keys.indices.to_numpy()]
        if keys is not None else np.array([], dtype=object),
        _LAST: pc.max(table.column(_LAST)).as_py(),
    }  # fmt: skip
    for name, dtype in ((_DD, np.int64), (_UNITS, np.int64), (_NF, np.int64), (_DY, float), (_DY2, float)):
        cols[name] = np.nan_to_num(table.column(name).to_numpy().astype(dtype, copy=False))
    dxy = table.column(_DXY).to_numpy() if _DXY in table.column_names else np.zeros(table.num_rows)
    cols[_DXY] = np.nan_to_num(dxy.astype(float, copy=False))
    return cols


def _cluster_cumulated(
    pilot: Pilot, metric: Metric, unit_column: str, start: dt.date, cols: dict, days: int | None
) -> DailyClusterTotals:
    """The per-(key, day) deltas cumulated over days 1..D in numpy: pairs in the pilot's arm order, then
    by cluster."""
    import numpy as np

    base = cols[_DD] == 0
    if days is None:
        days = _closing_day(metric, start, [cols[_LAST]] if cols[_LAST] is not None else [])
    seen = {k.partition(CELL)[0]: 1 for k in cols[ARM][base]}
    order = {a: i for i, a in enumerate(arm_order(pilot, seen))}
    keys = sorted(cols[ARM][base], key=lambda k: (order[k.partition(CELL)[0]], k))
    index = {k: j for j, k in enumerate(keys)}
    pair = np.array([index[k] for k in cols[ARM]], dtype=np.int64)
    n = np.zeros(len(keys), dtype=np.int64)
    n[pair[base]] = cols[_UNITS][base]
    pre = cols[_DD] == -1
    x, x2 = np.zeros(len(keys)), np.zeros(len(keys))
    x[pair[pre]], x2[pair[pre]] = cols[_DY][pre], cols[_DY2][pre]
    live = (cols[_DD] >= 1) & (cols[_DD] <= days)
    at = cols[_DD][live] * len(keys) + pair[live]  # (day, pair) flattened: one row per (key, day)

    def cumulated(name: str) -> np.ndarray:
        deltas = np.bincount(at, weights=cols[name][live], minlength=(days + 1) * len(keys))
        return np.cumsum(deltas.reshape(days + 1, len(keys)), axis=0)[1:]

    parts = [k.partition(CELL) for k in keys]
    covariate = f"pre-period {metric.aggregate} over {metric.window_days} days" if metric.cuped else None
    return DailyClusterTotals(
        metric=metric.name, kind=metric.type, unit_column=unit_column, covariate=covariate, start=start,
        days=tuple(range(1, days + 1)), as_of=tuple(start + dt.timedelta(days=d) for d in range(1, days + 1)),
        cluster=np.array([p[2] for p in parts], dtype=object),
        arm=np.array([p[0] for p in parts], dtype=object),
        n=n, x=x, x2=x2, y=cumulated(_DY), y2=np.maximum(cumulated(_DY2), 0.0), xy=cumulated(_DXY),
    )  # fmt: skip
