"""Each metric as one Ibis expression that ends in ``GROUP BY arm``: the query side of ``labkit.data.aggregate``.

The per-customer metrics (proportion, mean, quantile, ratio) of a pilot are fused (``build_tables``): each
source is read once and left-joined to the units on the pilot's id column. An event metric
(``build_metric``) aggregates each customer's events inside the window after (and, with ``cuped``, before)
the assignment. Both end in one row per arm of ``rows``, ``missing`` and the moments, plus counts of bad
rows that ``labkit.data.checks`` turns into errors. The rules they follow (missing values, windows,
timestamps as naive UTC, the types a column must have) are ``labkit.data.aggregate``'s docstring; the
types are checked here, from the sources' schemas alone, so a wrong column fails before any query runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from labkit.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot


# The units' columns inside a query, named so that a source's own `arm` or `customer_id` cannot clash with them.
UNIT, ARM, AT, Y, X, MISSING = "_lk_unit", "_lk_arm", "_lk_at", "_lk_y", "_lk_x", "_lk_missing"

# An (arm, stratum) cell's key in the per-cell query: arm names are [a-z0-9_], so the separator is unambiguous.
CELL = "\x1f"


@dataclass(frozen=True)
class Check:
    """A count of bad rows computed in the aggregate query, and the error it raises when non-zero."""

    name: str  # output column of the per-arm query
    source: str
    column: str
    what: str  # nonfinite | not01


@dataclass(frozen=True)
class Built:
    """A metric's (or the fused per-customer metrics') expressions, not yet run."""

    per_customer: ibis.Table  # one row per assigned customer: arm, each metric's y, x, missing flag, checks
    summary: ibis.Table  # GROUP BY arm of the above
    checks: list[Check]
    parts: list[tuple[Metric, str]]  # each metric and the prefix of its columns
    covariates: dict[str, str | None]  # metric name -> what its x is, or None
    sources: dict[str, list[str]]  # per-customer sources joined -> their value columns (duplicate check)


def renamed_units(units: ibis.Table, *, by_stratum: bool = False) -> ibis.Table:
    """The units with private column names; ``by_stratum`` makes the group key the (arm, stratum) cell."""
    import ibis.expr.datatypes as dt

    arm = units["arm"].cast(dt.string)
    if by_stratum:
        arm = arm + CELL + units["stratum"].cast(dt.string)
    return units.select(
        **{
            UNIT: units["customer_id"],
            ARM: arm,
            AT: _as_timestamp(units["assigned_at"], "assignment", "assigned_at"),
        }
    )


def build_metric(engine: Engine, pilot: Pilot, metric: Metric, u: ibis.Table, *, as_of=None) -> Built:
    """One metric's expression (an event metric, or a per-customer metric alone)."""
    if metric.event is None:
        return build_tables(engine, pilot, [metric], u)
    per_customer, checks = _events(engine, pilot, metric, u, as_of=as_of)
    covariate = f"pre-period {metric.aggregate} over {metric.window_days} days" if metric.cuped else None
    return Built(
        per_customer,
        _summarise(per_customer, checks, [("", metric.cuped)]),
        checks,
        [(metric, "")],
        {metric.name: covariate},
        {},
    )


def build_tables(
    engine: Engine, pilot: Pilot, metrics: list[Metric], u: ibis.Table, *, arms_in: str | None = None
) -> Built:
    """Per-customer metrics (proportion, mean, quantile, ratio) over the units, fused: every source is
    read once and left-joined to the units on the id, so the joined table has one row per assigned
    customer when each source holds a customer at most once (``raise_on_duplicates`` checks it).

    ``arms_in``: the column of the metrics' one source that holds each customer's arm, when the units are
    exactly that source's rows with an arm (an imported assignment whose file is unchanged since
    ``labkit assign``, ``labkit.data.aggregate``). The source is then grouped by that column in place —
    the same rows, ids and arms as the join, without joining a copy of the table back to itself.

    Per metric (prefix ``m<i>_`` when there are several): ``y``, ``x`` (covariate or denominator) and a
    missing flag; per source column: a count of NaN/inf rows, and for proportions of values not 0/1."""
    import ibis

    idc = pilot.spec.cohort.id_column
    needed: dict[str, list[str]] = {}  # source -> value columns, in order of first use
    proportions: set[tuple[str, str]] = set()
    for m in metrics:
        refs = [m.numerator, m.denominator] if m.type == "ratio" else [m]
        for ref in refs:
            needed.setdefault(ref.source, [])
            if ref.column not in needed[ref.source]:
                needed[ref.source].append(ref.column)
        if m.covariate and m.covariate not in needed[m.source]:
            needed[m.source].append(m.covariate)
        if m.type == "proportion":
            proportions.add((m.source, m.column))

    j = u
    place: dict[tuple[str, str], str] = {}  # (source, column) -> its column in the joined table
    present: dict[str, str] = {}  # source -> its joined id column
    for k, (source, columns) in enumerate(needed.items()):
        engine.require_columns(source, [idc, *columns])
        t = _declared(engine, source, engine.table(source), dict.fromkeys(columns, "float64"))
        side = {f"_lk_s{k}_id": t[idc]}
        present[source] = f"_lk_s{k}_id"  # NULL after the left join: the customer has no row there
        for i, c in enumerate(columns):
            place[(source, c)] = f"_lk_s{k}_v{i}"
            side[place[(source, c)]] = _numeric(t[c], source, c)
        if arms_in is not None:  # the one source: its rows with an arm are the units (as the import wrote)
            j = t.filter(t[arms_in].notnull()).select(
                **{UNIT: t[idc], ARM: t[arms_in].cast("string")}, **side
            )
            continue
        s = t.select(**side)
        j = j.left_join(s, id_match(j[UNIT], s[f"_lk_s{k}_id"]))

    out = {ARM: j[ARM]}
    checks: list[Check] = []
    for (source, column), name in place.items():
        v = j[name]
        out[f"{name}_nf"] = _flag(v.isnan() | v.isinf(), "int64")
        checks.append(Check(f"{name}_nf", source, column, "nonfinite"))
        if (source, column) in proportions:
            out[f"{name}_n01"] = _flag(~v.isin([0.0, 1.0]), "int64")
            checks.append(Check(f"{name}_n01", source, column, "not01"))

    null = ibis.null().cast("float64")
    parts, covariates, has_x = [], {}, []
    for i, m in enumerate(metrics):
        p = f"m{i}_" if len(metrics) > 1 else ""
        if m.type == "ratio":
            yv = j[place[(m.numerator.source, m.numerator.column)]]
            xv = j[place[(m.denominator.source, m.denominator.column)]]
            missing = yv.isnull() | xv.isnull()
            if m.missing_policy == "zero":  # a missing numerator or denominator is a 0 of it
                out[p + Y], out[p + X] = yv.fill_null(0.0), xv.fill_null(0.0)
            else:
                out[p + Y], out[p + X] = ibis.ifelse(missing, null, yv), ibis.ifelse(missing, null, xv)
        else:
            v = j[place[(m.source, m.column)]]
            missing = v.isnull()
            out[p + Y] = _apply_missing(m.missing_policy, v, j[present[m.source]].isnull())
            if m.covariate:
                out[p + X] = j[place[(m.source, m.covariate)]].fill_null(0.0)
        out[p + MISSING] = _flag(missing, "int64")
        parts.append((m, p))
        covariates[m.name] = m.covariate
        has_x.append((p, m.type == "ratio" or bool(m.covariate)))
    pc = j.select(**out)
    return Built(pc, _summarise(pc, checks, has_x), checks, parts, covariates, needed)


def _apply_missing(policy: str, value, absent):
    """A per-customer value under the metric's ``missing`` policy (``Metric.missing_policy``): ``zero``
    counts a customer absent from the table, or with a NULL value, as 0; ``exclude`` leaves both out of
    ``n``; ``zero-if-absent`` (a proportion's default) counts the absent as 0 and excludes a NULL inside
    the table — a row that exists but was not measured says nothing about the outcome."""
    import ibis

    if policy == "zero":
        return value.fill_null(0.0)
    if policy == "zero-if-absent":
        return ibis.ifelse(absent, 0.0, value)
    return value


def _summarise(pc: ibis.Table, checks: list[Check], parts: list[tuple[str, bool]]) -> ibis.Table:
    """GROUP BY arm: rows, and per metric (prefix, has x) missing and the moments, all in DOUBLE; check
    counts summed."""
    import ibis

    # Not measured: NULL (read as 0 by arms.arm_moments). A literal 0.0 would be NUMERIC in PostgreSQL.
    zero = ibis.null().cast("float64")
    aggs = {"rows": pc.count()}
    for p, has_x in parts:
        y = pc[p + Y]
        counted = y.notnull()
        aggs[p + "missing"] = pc[p + MISSING].sum()
        aggs[p + "n"] = y.count()
        aggs[p + "sum"] = y.sum()
        aggs[p + "sum_sq"] = (y * y).sum()
        x = pc[p + X] if has_x else None
        aggs[p + "sum_x"] = x.sum(where=counted) if has_x else zero
        aggs[p + "sum_x_sq"] = (x * x).sum(where=counted) if has_x else zero
        aggs[p + "sum_xy"] = (x * y).sum(where=counted) if has_x else zero
    aggs.update({c.name: pc[c.name].sum() for c in checks})
    return pc.group_by(ARM).aggregate(**aggs)


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
    types = {ts: "timestamp", metric.event.column: _literal_type(metric.event.equals)}
    t = _declared(engine, source, engine.table(source), types | dict.fromkeys(needed[3:], "float64"))
    match = _equals(t[metric.event.column], metric.event.equals, source, metric.event.column)
    event_ts, at = _aligned(_as_timestamp(t[ts], source, ts), u[AT])
    u = u.mutate(**{AT: at})
    fields = {"e_id": t[idc], "e_ts": event_ts}
    if metric.column:
        fields["e_v"] = _numeric(t[metric.column], source, metric.column)
    e = t.filter(match).select(**fields)
    if as_of is not None:  # naive UTC; cast to the column's type (a literal: once, not per row)
        e = e.filter(e["e_ts"] < ibis.literal(as_of).cast(e["e_ts"].type()))

    window = ibis.interval(days=int(metric.window_days))
    low = u[AT] - window if metric.cuped else u[AT]
    # The matching events in [low, at + window) are joined to their customer and aggregated per customer
    # (only customers with events: a GROUP BY on the id alone), then the units are left-joined to that,
    # one row per assigned customer; a customer without events has no value (0 for count, sum and any).
    j = e.inner_join(u, [id_match(u[UNIT], e["e_id"]), e["e_ts"] >= low, e["e_ts"] < u[AT] + window])
    post = j["e_ts"] >= j[AT]  # the join keeps only [low, at + window): the rest is the pre-period
    pre = j["e_ts"] < j[AT]
    agg = metric.aggregate
    aggs = {"e_y": _event_aggregate(j, agg, post)}
    if metric.cuped:
        aggs["e_x"] = _event_aggregate(j, agg, pre)
    checks = []
    if metric.column:
        v = j["e_v"]
        aggs["e_nf"] = j["e_id"].count(where=v.isnan() | v.isinf())
        checks.append(Check("e_nf", source, metric.column, "nonfinite"))
    per = j.group_by(e_unit=j[UNIT]).aggregate(**aggs)
    pc = u.left_join(per, u[UNIT] == per["e_unit"])
    # no event is a 0 for count/sum/any (not missing); mean/max have no value: missing, excluded or 0
    y = pc["e_y"].fill_null(0.0) if metric.missing_policy == "zero" else pc["e_y"]
    no_value = pc["e_y"].isnull() if agg in ("mean", "max") else y.isnull()
    out = {ARM: pc[ARM], Y: y, MISSING: _flag(no_value, "int64")}
    if metric.cuped:
        out[X] = pc["e_x"].fill_null(0.0)
    out.update({c.name: pc[c.name].fill_null(0) for c in checks})
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


def _declared(engine: Engine, source: str, t: ibis.Table, types: dict[str, str]) -> ibis.Table:
    """A CSV source that is a header and no rows (``Engine.no_rows``: no events yet, say) has text
    columns only, as nothing could be inferred; the columns a metric reads are given the types it needs
    (no value contradicts them), so it reads zero rows instead of refusing "type string is not a
    timestamp". Any other source is returned as it is."""
    if not engine.no_rows(source):
        return t
    return t.mutate(**{c: t[c].cast(to) for c, to in types.items()})


def _literal_type(value) -> str:
    """The column type that an ``event.equals`` value compares with (see ``_equals``)."""
    if isinstance(value, bool):
        return "boolean"
    return "float64" if isinstance(value, int | float) else "string"


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


def as_utc(col, source: str, column: str):
    """A timestamp as naive UTC (see the module docstring); a DATE is midnight UTC."""
    import ibis.expr.datatypes as dt

    dtype = col.type()
    if dtype.is_timestamp() or dtype.is_date():
        return col.cast(dt.Timestamp())
    raise DataError(source, f"type {dtype} is not a timestamp", column=column)


def _as_timestamp(col, source: str, column: str):
    """A timestamp column as it is (naive, or timezone-aware); a DATE as midnight UTC; else a DataError."""
    dtype = col.type()
    if dtype.is_timestamp():
        return col
    return as_utc(col, source, column)


def _aligned(event_ts, unit_at):
    """Event times and assignment times in one comparable type, casting as few values as possible.

    Both timezone-aware: compared as they are — the same instants, and every session runs in UTC, so
    adding whole days is exactly n x 24 h as on naive UTC. (Casting 100M TIMESTAMPTZ events to naive
    costs seconds.) Both naive: as they are. Otherwise the timezone-aware side is taken to naive UTC."""
    if event_ts.type().timezone is not None and unit_at.type().timezone is not None:
        return event_ts, unit_at

    def naive(col):
        return col.cast("timestamp") if col.type().timezone is not None else col

    return naive(event_ts), naive(unit_at)


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


def id_match(left, right):
    """Join predicate on customer ids; ids of different kinds (text vs number) are compared as text."""
    lt, rt = left.type(), right.type()
    if (lt.is_integer() and rt.is_integer()) or lt == rt:
        return left == right
    return left.cast("string") == right.cast("string")
