"""Metric -> per-arm sufficient statistics, computed where the data lives (tea-tasting's split).

Each metric of a pilot compiles to **one Ibis expression** over the lab's engine that ends in a
``GROUP BY arm`` and returns one row per arm: customers assigned, customers missing, and the moments
``n, Σy, Σy², Σx, Σx², Σxy`` (``labkit.stats.moments.ArmMoments``) the statistics run on, plus counts of
bad rows for the data checks. No customer-level row is pulled into Python, except for quantile metrics,
whose bootstrap needs the raw per-customer values (a second query, ``SELECT arm, y``). ``moments_expr``
returns the expression itself, so a benchmark or test can inspect the plan without running it. The same
expressions run on DuckDB (files), PostgreSQL and Spark (``labkit.data.sources``); there the units are a
TEMP table (PostgreSQL) or the parquet read in place (Spark), and only the per-arm rows come back.

Intent-to-treat (DESIGN.md, "Conventions the statistics rely on"): the units (``customer_id, arm,
assigned_at``) are the assigned customers, and every one of them is counted in its arm. The units are
left-joined to each metric source on the pilot's ``cohort.id_column`` (ids of different kinds, text
against numbers, are compared as text). The units are taken to hold each customer once, as
``labkit assign`` writes them. Quantile values come back sorted, so a seeded bootstrap repeats exactly.

Per-customer tables (``source`` + ``column``):
- proportion: a customer with no row, or a null value, counts as 0 (and in ``missing``); values must be
  0/1 or true/false.
- mean, quantile: such a customer is excluded from ``n`` (and counted in ``missing``).
- ratio: y is the numerator column and x the denominator column, each from its own source; a customer
  missing either is excluded (and counted). Per-customer zero denominators are fine: the delta method
  works on the arm sums.
- ``covariate: COLUMN`` gives x. A customer whose covariate is missing (no row, or null) gets x = 0
  rather than being dropped: CUPED stays unbiased for any fixed function of pre-treatment data, and
  dropping would break intent-to-treat and make the adjusted and unadjusted analyses count different
  customers. Only the variance reduction suffers.
- Duplicate ids among the assigned customers are refused (with their count, never the ids).

Event tables (``source`` with a ``timestamp`` in the lab file + ``event: {column, equals}``): the
matching events of a customer whose timestamp lies in the half-open window
``[assigned_at, assigned_at + window_days)`` are aggregated per customer:
- count: the number of events; sum / mean / max: of the event value ``column`` (events whose value is
  null are ignored); any: 1 if there is at least one event, else 0.
- a customer without events counts as 0 for count, sum and any (never dropped); for mean and max there
  is no value, so the customer is excluded and counted in ``missing``.
- ``cuped: true``: x is the same aggregate over the pre-period ``[assigned_at - window_days,
  assigned_at)``; a mean/max customer with no pre-period events gets x = 0 (as for covariates above).

Timestamps are compared as naive UTC: a timezone-aware column (TIMESTAMPTZ) is converted to UTC — every
engine's session runs in UTC (DuckDB's and PostgreSQL's ``TimeZone``, Spark's
``spark.sql.session.timeZone``) — and a naive timestamp is taken to be UTC already; a
DATE column means midnight UTC. Windows add whole days (``INTERVAL n DAY`` on naive timestamps: exactly
n × 24 h, no daylight-saving shifts).

Data checks, each a ``DataError`` naming source and column (and, for counts, ``rows``): a missing column
lists the columns that exist; a non-numeric value column names its type; NaN or ±inf values in the rows
that enter the metric are refused with their count (a NaN never reaches the statistics); a proportion
value other than 0/1 is refused with the count. Booleans are cast to 0/1.

Numerics: every sum is accumulated in DOUBLE in the engine. The variance is later formed as
``Σy² − (Σy)²/n``, which loses digits by cancellation when the mean is large against the spread
(≈ 16 − 2·log10(|mean|/sd) significant digits remain); for CRM metrics over thousands of customers
that leaves far more precision than the sampling error, so the one-pass sums are kept for their
portability to every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import numpy

    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot
    from labkit.stats.moments import ArmMoments

# Private names for the units' columns, so a source's own `arm` or `customer_id` cannot clash with them.
_UNIT, _ARM, _AT, _Y, _X, _MISS = "_lk_unit", "_lk_arm", "_lk_at", "_lk_y", "_lk_x", "_lk_missing"
POOLED_ARM = "all"


@dataclass(frozen=True)
class MetricData:
    """One metric reduced to per-arm statistics: what the analysis needs, nothing customer-level
    (except ``values`` for quantile metrics)."""

    metric: str  # metric name
    kind: str  # proportion | mean | ratio | quantile
    arms: dict[str, ArmMoments]  # per arm, every assigned customer who counts
    assigned: dict[str, int]  # customers assigned per arm
    missing: dict[str, int]  # assigned customers with no row / null value in the source, per arm
    values: dict[str, numpy.ndarray] | None  # raw per-customer values per arm (sorted), quantiles only
    covariate: str | None  # "pre-period <aggregate> over <window> days", the covariate column, or None


@dataclass(frozen=True)
class _Check:
    """A count of bad rows computed in the aggregate query, and the error it raises when non-zero."""

    name: str  # output column of the per-arm query
    source: str
    column: str
    what: str  # duplicates | nonfinite | not01


# --------------------------------------------------------------------------------------------------
# public API


def units_table(engine: Engine, pilot: Pilot) -> ibis.Table:
    """The pilot's assignment (``results/<id>/assignment.parquet``): customer_id, arm, stratum, assigned_at."""
    path = pilot.results_dir / "assignment.parquet"
    if not path.is_file():
        raise AssignmentError(pilot.id, f"no assignment for {pilot.id}; run `labkit assign {pilot.id}` first")
    engine.bind(pilot)  # the units go where the pilot's data lives (a TEMP table in PostgreSQL)
    table = engine.read_file(path, f"assignment_{pilot.id.replace('-', '_')}")
    absent = [c for c in ("customer_id", "arm", "assigned_at") if c not in table.columns]
    if absent:
        raise AssignmentError(
            pilot.id,
            f"{pilot.lab.display(path)} lacks column(s) {', '.join(absent)}; "
            f"columns: {', '.join(table.columns)}",
        )
    return table


def aggregate_pilot(engine: Engine, pilot: Pilot, units: ibis.Table, *, as_of=None) -> dict[str, MetricData]:
    """Every metric of the pilot, in the order of the pilot file.

    ``as_of`` (a datetime, naive UTC) is the date of a look before the pilot's windows have closed:
    events from ``as_of`` on have not happened yet and are left out of every window. Per-customer
    tables are snapshots and are read as they are."""
    return {m.name: aggregate_metric(engine, pilot, m, units, as_of=as_of) for m in pilot.spec.metrics}


def aggregate_metric(engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, *, as_of=None) -> MetricData:
    """One metric over the assigned ``units``: one query returning one row per arm (two for quantiles)."""
    from labkit.stats.moments import ArmMoments

    built = _build(engine, pilot, metric, units, as_of=as_of)
    rows = engine.con.to_pyarrow(built.summary).to_pylist()
    _raise_on_checks(rows, built.checks)
    arms, assigned, missing = {}, {}, {}
    for row in rows:
        arm = str(row[_ARM])
        arms[arm] = _moments(row, metric)
        assigned[arm] = int(row["assigned"])
        missing[arm] = int(row["missing"] or 0)
    order = list(pilot.arms) + sorted(a for a in arms if a not in pilot.arms)
    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    values = None
    if metric.type == "quantile":
        values = _values(engine, built.per_customer, order)
    return MetricData(
        metric=metric.name,
        kind=metric.type,
        arms={a: arms.get(a, empty) for a in order},
        assigned={a: assigned.get(a, 0) for a in order},
        missing={a: missing.get(a, 0) for a in order},
        values=values,
        covariate=built.covariate,
    )


def moments_expr(engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table) -> ibis.Table:
    """The per-arm aggregate expression of a metric (one row per arm), without running it."""
    return _build(engine, pilot, metric, units).summary


def baseline(engine: Engine, pilot: Pilot, metric: Metric, population: ibis.Table) -> ArmMoments:
    """The metric's moments over a population, pooled into one pseudo-arm, for power planning.

    ``population`` has ``customer_id`` and ``assigned_at`` (e.g. the eligible customers with
    ``assigned_at = cohort.start``). At plan time the pilot's own period is the future, so an event metric
    reads the PRE-period ``[assigned_at - window_days, assigned_at)`` instead (and, with ``cuped``, its
    covariate the period before that); a per-customer table is read as it is now.
    """
    import ibis

    from labkit.stats.moments import ArmMoments

    engine.bind(pilot)
    at = _as_utc(population["assigned_at"], "assignment", "assigned_at")
    if metric.event is not None:
        at = at - ibis.interval(days=int(metric.window_days))
    pop = population.select(
        customer_id=population["customer_id"], arm=ibis.literal(POOLED_ARM), assigned_at=at
    )
    built = _build(engine, pilot, metric, pop)
    rows = engine.con.to_pyarrow(built.summary).to_pylist()
    _raise_on_checks(rows, built.checks)
    return _moments(rows[0], metric) if rows else ArmMoments(n=0, sum=0.0, sum_sq=0.0)


# --------------------------------------------------------------------------------------------------
# building the expression


@dataclass(frozen=True)
class _Built:
    per_customer: ibis.Table  # one row per assigned customer: arm, y, x, missing flag, check counts
    summary: ibis.Table  # GROUP BY arm of the above
    checks: list[_Check]
    covariate: str | None


def _build(engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, *, as_of=None) -> _Built:
    import ibis.expr.datatypes as dt

    u = units.select(
        **{
            _UNIT: units["customer_id"],
            _ARM: units["arm"].cast(dt.string),
            _AT: _as_utc(units["assigned_at"], "assignment", "assigned_at"),
        }
    )
    if metric.type == "ratio":
        per_customer, checks = _ratio(engine, pilot, metric, u)
        covariate = None
    elif metric.event is not None:
        per_customer, checks = _events(engine, pilot, metric, u, as_of=as_of)
        covariate = f"pre-period {metric.aggregate} over {metric.window_days} days" if metric.cuped else None
    else:
        per_customer, checks = _per_customer(engine, pilot, metric, u)
        covariate = metric.covariate
    return _Built(
        per_customer,
        _summarise(per_customer, checks, has_x=covariate is not None or metric.type == "ratio"),
        checks,
        covariate,
    )


def _summarise(pc: ibis.Table, checks: list[_Check], *, has_x: bool) -> ibis.Table:
    """GROUP BY arm: assigned, missing and the moments, all in DOUBLE; check counts summed."""
    import ibis

    y = pc[_Y]
    counted = y.notnull()
    # Not measured: NULL (read as 0 by _moments). A literal 0.0 would be NUMERIC in PostgreSQL.
    zero = ibis.null().cast("float64")
    if has_x:
        x = pc[_X]
        xs = {
            "sum_x": x.sum(where=counted),
            "sum_x_sq": (x * x).sum(where=counted),
            "sum_xy": (x * y).sum(where=counted),
        }
    else:
        xs = {"sum_x": zero, "sum_x_sq": zero, "sum_xy": zero}
    return pc.group_by(_ARM).aggregate(
        assigned=pc.count(),
        missing=pc[_MISS].sum(),
        n=y.count(),
        sum=y.sum(),
        sum_sq=(y * y).sum(),
        **xs,
        **{c.name: pc[c.name].sum() for c in checks},
    )


def _per_customer(engine: Engine, pilot: Pilot, metric: Metric, u: ibis.Table):
    """proportion / mean / quantile from a per-customer table, with an optional covariate column."""
    cols = [metric.column] + ([metric.covariate] if metric.covariate else [])
    side, checks = _side(
        engine, pilot, u, metric.source, cols, proportion=metric.type == "proportion", tag="s"
    )
    j = u.left_join(side, _key(u[_UNIT], side["s_id"]))
    v = j["s_v0"]
    missing = v.isnull()
    y = v.fill_null(0.0) if metric.type == "proportion" else v
    out = {_ARM: j[_ARM], _Y: y, _MISS: _flag(missing, "int64")}
    if metric.covariate:
        out[_X] = j["s_v1"].fill_null(0.0)
    out.update({c.name: j[c.name].fill_null(0) for c in checks})
    return j.select(**out), checks


def _ratio(engine: Engine, pilot: Pilot, metric: Metric, u: ibis.Table):
    """Ratio: y = numerator column, x = denominator column; a customer missing either is excluded."""
    import ibis

    num, den = metric.numerator, metric.denominator
    checks: list[_Check] = []
    if num.source == den.source:
        side, checks = _side(engine, pilot, u, num.source, [num.column, den.column], tag="s")
        j = u.left_join(side, _key(u[_UNIT], side["s_id"]))
        yv, xv = j["s_v0"], j["s_v1"]
    else:
        a, ca = _side(engine, pilot, u, num.source, [num.column], tag="n")
        b, cb = _side(engine, pilot, u, den.source, [den.column], tag="d")
        checks = ca + cb
        j = u.left_join(a, _key(u[_UNIT], a["n_id"]))
        j = j.left_join(b, _key(j[_UNIT], b["d_id"]))
        yv, xv = j["n_v0"], j["d_v0"]
    missing = yv.isnull() | xv.isnull()
    null = ibis.null().cast("float64")
    out = {
        _ARM: j[_ARM],
        _Y: ibis.ifelse(missing, null, yv),
        _X: ibis.ifelse(missing, null, xv),
        _MISS: _flag(missing, "int64"),
    }
    out.update({c.name: j[c.name].fill_null(0) for c in checks})
    return j.select(**out), checks


def _side(
    engine: Engine,
    pilot: Pilot,
    units: ibis.Table,
    source: str,
    columns: list[str],
    *,
    tag: str,
    proportion: bool = False,
):
    """A per-customer source reduced to one row per id (in the engine), with its check counts.

    Columns: ``<tag>_id``, ``<tag>_v<i>`` (DOUBLE), ``<tag>_dup`` (1 when the id has more than one row),
    ``<tag>_nf<i>`` (NaN/inf rows) and for a proportion ``<tag>_n01`` (rows neither 0 nor 1).
    """
    idc = pilot.spec.cohort.id_column
    engine.require_columns(source, [idc, *columns])
    t = engine.table(source)
    t = t.semi_join(units, _key(t[idc], units[_UNIT]))  # only the assigned customers' rows are reduced
    values = {f"v{i}": _numeric(t[c], source, c) for i, c in enumerate(columns)}
    aggs = {f"{tag}_rows": t.count()}
    checks = [_Check(f"{tag}_dup", source, idc, "duplicates")]
    for i, c in enumerate(columns):
        v = values[f"v{i}"]
        aggs[f"{tag}_v{i}"] = v.max()
        aggs[f"{tag}_nf{i}"] = t.count(where=v.isnan() | v.isinf())
        checks.append(_Check(f"{tag}_nf{i}", source, c, "nonfinite"))
    if proportion:
        v = values["v0"]
        aggs[f"{tag}_n01"] = t.count(where=v.notnull() & ~v.isin([0.0, 1.0]))
        checks.append(_Check(f"{tag}_n01", source, columns[0], "not01"))
    g = t.group_by(**{f"{tag}_id": t[idc]}).aggregate(**aggs)
    g = g.mutate(**{f"{tag}_dup": _flag(g[f"{tag}_rows"] > 1, "int64")})
    return g, checks


def _events(engine: Engine, pilot: Pilot, metric: Metric, u: ibis.Table, *, as_of=None):
    """An event metric: the aggregate per customer inside its window (and the pre-period with cuped)."""
    import ibis

    source = metric.source
    idc = pilot.spec.cohort.id_column
    ts = pilot.lab.source(source).timestamp
    if ts is None:  # the spec check already refuses this; kept for callers that skip it
        raise DataError(source, "not an event table: the lab file gives it no 'timestamp'")
    needed = [idc, ts, metric.event.column] + ([metric.column] if metric.column else [])
    engine.require_columns(source, needed)
    t = engine.table(source)
    match = _equals(t[metric.event.column], metric.event.equals, source, metric.event.column)
    fields = {"e_id": t[idc], "e_ts": _as_utc(t[ts], source, ts)}
    if metric.column:
        fields["e_v"] = _numeric(t[metric.column], source, metric.column)
    e = t.filter(match).select(**fields)
    if as_of is not None:
        e = e.filter(e["e_ts"] < ibis.literal(as_of).cast("timestamp"))

    window = ibis.interval(days=int(metric.window_days))
    low = u[_AT] - window if metric.cuped else u[_AT]
    key = _key(u[_UNIT], e["e_id"])
    j = u.left_join(e, [key, e["e_ts"] >= low, e["e_ts"] < u[_AT] + window])
    post = j["e_ts"] >= j[_AT]  # the join keeps only [low, at + window): the rest is the pre-period
    pre = j["e_ts"] < j[_AT]
    agg = metric.aggregate
    aggs = {_Y: _event_aggregate(j, agg, post)}
    if metric.cuped:
        aggs[_X] = _event_aggregate(j, agg, pre)
    checks = []
    if metric.column:
        v = j["e_v"]
        aggs["e_nf"] = j["e_id"].count(where=v.isnan() | v.isinf())
        checks.append(_Check("e_nf", source, metric.column, "nonfinite"))
    pc = j.group_by([_ARM, _UNIT]).aggregate(**aggs)
    y = pc[_Y]
    out = {_ARM: pc[_ARM], _Y: y, _MISS: _flag(y.isnull(), "int64")}
    if metric.cuped:
        out[_X] = pc[_X].fill_null(0.0)
    out.update({c.name: pc[c.name] for c in checks})
    return pc.select(**out), checks


def _event_aggregate(j: ibis.Table, agg: str, where):
    """The per-customer aggregate of the joined events selected by ``where``, as DOUBLE."""
    if agg == "count":
        return j["e_id"].count(where=where).cast("float64")
    if agg == "any":
        return _flag(j["e_id"].count(where=where) > 0, "float64")
    v = j["e_v"]
    if agg == "sum":
        return v.sum(where=where).fill_null(0.0)
    if agg == "mean":
        return v.mean(where=where)
    if agg == "max":
        return v.max(where=where)
    raise ValueError(f"unknown aggregate {agg!r}")  # the spec allows no other


# --------------------------------------------------------------------------------------------------
# types


def _numeric(col, source: str, column: str):
    """A value column as DOUBLE (booleans as 0/1); anything else is a DataError naming its type."""
    dtype = col.type()
    if dtype.is_boolean():
        return _flag(col, "float64")
    if dtype.is_numeric():
        return col.cast("float64")
    raise DataError(
        source, f"type {dtype} is not numeric; a metric needs numbers (or true/false)", column=column
    )


def _flag(condition, to: str):
    """A boolean as 0/1 of type ``to`` (null stays null), through int32: PostgreSQL casts a boolean to
    integer only, not to bigint or double."""
    return condition.cast("int32").cast(to)


def _as_utc(col, source: str, column: str):
    """A timestamp as naive UTC (see the module docstring); a DATE is midnight UTC."""
    import ibis.expr.datatypes as dt

    dtype = col.type()
    if dtype.is_timestamp() or dtype.is_date():
        return col.cast(dt.Timestamp())
    raise DataError(source, f"type {dtype} is not a timestamp", column=column)


def _equals(col, value, source: str, column: str):
    """``event.column == equals`` when the two agree in type; a clear error when they cannot."""
    dtype = col.type()
    if isinstance(value, bool):
        ok = dtype.is_boolean()
    elif isinstance(value, int | float):
        ok = dtype.is_numeric()
    else:
        ok = dtype.is_string()
    if not ok:
        shown = repr(value) if isinstance(value, str) else str(value).lower()
        raise DataError(
            source,
            f"type {dtype} cannot equal event.equals {shown}; give a value of the column's type",
            column=column,
        )
    return col == value


def _key(left, right):
    """Join predicate on customer ids; ids of different kinds (text vs number) are compared as text."""
    lt, rt = left.type(), right.type()
    if (lt.is_integer() and rt.is_integer()) or lt == rt:
        return left == right
    return left.cast("string") == right.cast("string")


# --------------------------------------------------------------------------------------------------
# results


def _raise_on_checks(rows: list[dict], checks: list[_Check]) -> None:
    """Duplicates first (values are then meaningless), then NaN/inf, then non-0/1 proportions."""
    order = {"duplicates": 0, "nonfinite": 1, "not01": 2}
    for check in sorted(checks, key=lambda c: order[c.what]):
        bad = sum(int(row[check.name] or 0) for row in rows)
        if not bad:
            continue
        if check.what == "duplicates":
            message = (
                f"{_plural(bad, 'assigned customer')} {'has' if bad == 1 else 'have'} more than one row; "
                "a per-customer table needs one row per customer"
            )
        elif check.what == "nonfinite":
            message = f"{_plural(bad, 'row')} of assigned customers {'holds' if bad == 1 else 'hold'} NaN or infinity"
        else:
            message = (
                f"{_plural(bad, 'row')} of assigned customers {'holds' if bad == 1 else 'hold'} a value "
                "other than 0/1; a proportion needs 0/1 or true/false"
            )
        raise DataError(check.source, message, column=check.column, rows=bad)


def _values(engine: Engine, pc: ibis.Table, order: list[str]) -> dict:
    """The raw per-customer values per arm (quantile metrics only), sorted so a seeded bootstrap repeats."""
    import numpy as np

    table = engine.con.to_pyarrow(pc.filter(pc[_Y].notnull()).select(_ARM, _Y))
    arms = np.asarray(table.column(_ARM).to_pylist(), dtype=object)
    ys = table.column(_Y).to_numpy(zero_copy_only=False).astype("float64")
    out = {a: np.sort(ys[arms == a]) for a in order}
    for a in sorted(set(arms.tolist()) - set(order)):
        out[a] = np.sort(ys[arms == a])
    return out


def _moments(row: dict, metric: Metric) -> ArmMoments:
    """One per-arm row of the query as ArmMoments; an empty sum (SQL NULL) is 0."""
    import math

    from labkit.stats.moments import ArmMoments

    sums = [row[k] for k in ("sum", "sum_sq", "sum_x", "sum_x_sq", "sum_xy")]
    if any(v is not None and not math.isfinite(v) for v in sums):  # finite values, overflowing squares
        ref = metric.numerator if metric.type == "ratio" else metric
        raise DataError(
            ref.source, "the sums of squares overflow a double; rescale the column", column=ref.column
        )
    return ArmMoments(
        n=int(row["n"]),
        sum=_f(row["sum"]),
        sum_sq=_f(row["sum_sq"]),
        sum_x=_f(row["sum_x"]),
        sum_x_sq=_f(row["sum_x_sq"]),
        sum_xy=_f(row["sum_xy"]),
    )


def _f(value) -> float:
    return 0.0 if value is None else float(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
