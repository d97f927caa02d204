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

Per-customer tables (``source`` + ``column``). A customer with no row, or a NULL value, is counted in
``missing`` and treated by the metric's ``missing`` policy (``Metric.missing_policy``, ``_apply_missing``):
- proportion (default ``zero-if-absent``): a customer with no row counts as 0, a NULL value inside the
  table is excluded from ``n``; ``missing: zero`` counts both as 0, ``missing: exclude`` excludes both.
  Values must be 0/1 or true/false.
- mean, quantile (default ``exclude``): such a customer is excluded from ``n``; ``missing: zero`` counts 0.
- ratio: y is the numerator column and x the denominator column, each from its own source; a customer
  missing either is excluded (and counted), or with ``missing: zero`` has 0 for what is missing.
  Per-customer zero denominators are fine: the delta method works on the arm sums.
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
- a customer without events counts as 0 for count, sum and any (never dropped; ``missing: exclude`` is
  refused for them); for mean and max there is no value, so the customer is counted in ``missing`` and
  excluded (the default) or, with ``missing: zero``, counted as 0.
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
    # imported blocks (cohort.assignment.strata) only: per arm, per stratum label, the moments
    strata: dict[str, dict[str, ArmMoments]] | None = None


@dataclass(frozen=True)
class _Check:
    """A count of bad rows computed in the aggregate query, and the error it raises when non-zero."""

    name: str  # output column of the per-arm query
    source: str
    column: str
    what: str  # nonfinite | not01


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

    The per-customer metrics (proportion, mean, quantile, ratio) run as ONE query: each source is read
    and left-joined to the units once, and one ``GROUP BY arm`` returns every metric's moments. Each event
    metric is one more query (its window is per customer). On DuckDB these queries run at the same time
    (``_fetch``).

    ``as_of`` (a datetime, naive UTC) is the date of a look before the pilot's windows have closed:
    events from ``as_of`` on have not happened yet and are left out of every event window. Per-customer
    tables are snapshots and are read as they are."""
    by_stratum = _post_stratified(pilot)
    u = _units(units, by_stratum=by_stratum)
    tables = [m for m in pilot.spec.metrics if m.event is None]
    events = [m for m in pilot.spec.metrics if m.event is not None]
    built = [_build_tables(engine, pilot, tables, u)] if tables else []
    built += [_build(engine, pilot, m, u, as_of=as_of) for m in events]
    queries = [b.summary for b in built]
    # The duplicate check compares the per-customer join's rows with the units' count: an event query's
    # rows are the units, one each (events are grouped per customer before the units are joined); a pilot
    # without event metrics counts them in one more query, run with the rest.
    count = tables and not events
    fetched = _fetch(engine, queries + ([u.aggregate(n=u.count())] if count else []))
    out = {}
    if tables:
        rows = fetched[1] if events else fetched[-1]
        units_n = sum(int(r["rows"]) for r in rows) if events else int(rows[0]["n"])
        out.update(_tables_data(engine, pilot, built[0], u, fetched[0], units_n=units_n))
    for m, b, rows in zip(events, built[1:] if tables else built, fetched[1 if tables else 0 :]):
        out[m.name] = _events_data(pilot, m, b, rows)
    if by_stratum:
        out = {name: _by_arm(pilot, md) for name, md in out.items()}
    return {m.name: out[m.name] for m in pilot.spec.metrics}


def _post_stratified(pilot: Pilot) -> bool:
    """An imported assignment randomised within blocks is aggregated per (arm, stratum) cell."""
    a = pilot.spec.cohort.assignment
    return a is not None and bool(a.strata)


# An (arm, stratum) cell's key in the per-cell query: arm names are [a-z0-9_], so the separator is unambiguous.
_CELL = "\x1f"


def _by_arm(pilot: Pilot, md: MetricData) -> MetricData:
    """Per-cell statistics (keys ``arm<US>stratum``) pooled into arms, the cells kept in ``strata``."""
    from dataclasses import replace

    from labkit.stats.moments import ArmMoments

    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    cells: dict[str, dict[str, ArmMoments]] = {}
    assigned: dict[str, int] = {}
    missing: dict[str, int] = {}
    for key, moments in md.arms.items():
        if _CELL not in key:  # the pilot's arms, listed (empty) before the cells the query returned
            continue
        arm, _, stratum = key.partition(_CELL)
        cells.setdefault(arm, {})[stratum] = moments
        assigned[arm] = assigned.get(arm, 0) + md.assigned.get(key, 0)
        missing[arm] = missing.get(arm, 0) + md.missing.get(key, 0)
    order = _arm_order(pilot, cells)
    values = None
    if md.values is not None:  # the spec refuses quantiles with strata; kept whole for other callers
        import numpy as np

        values = {
            a: np.sort(
                np.concatenate([v for k, v in md.values.items() if k.partition(_CELL)[0] == a] or [[]])
            )
            for a in order
        }
    return replace(
        md,
        arms={a: sum(cells.get(a, {}).values(), empty) for a in order},
        assigned={a: assigned.get(a, 0) for a in order},
        missing={a: missing.get(a, 0) for a in order},
        values=values,
        strata={a: dict(sorted(cells.get(a, {}).items())) for a in order},
    )


def aggregate_metric(
    engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, *, as_of=None
) -> MetricData:
    """One metric over the assigned ``units``: one query returning one row per arm (two for quantiles)."""
    if metric.event is not None:
        return _aggregate_events(engine, pilot, metric, units, as_of=as_of)
    return _aggregate_tables(engine, pilot, [metric], units)[metric.name]


def check_metrics(engine: Engine, pilot: Pilot) -> None:
    """Build every metric's expression without running it: a missing column, a value column that is not
    numeric, a timestamp that is text or an ``event.equals`` of the wrong type raises its DataError now,
    from the sources' schemas alone — so `labkit run` refuses such a pilot before it creates a run. (Value
    checks — NaN, duplicates, non-0/1 — need the data and stay with the analysis.)"""
    u = _units(units_table(engine, pilot))
    tables = [m for m in pilot.spec.metrics if m.event is None]
    if tables:
        _build_tables(engine, pilot, tables, u)
    for m in pilot.spec.metrics:
        if m.event is not None:
            _build(engine, pilot, m, u)


def moments_expr(engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table) -> ibis.Table:
    """The per-arm aggregate expression of a metric (one row per arm), without running it."""
    return _build(engine, pilot, metric, _units(units)).summary


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
    u = _units(pop)
    built = _build(engine, pilot, metric, u)
    rows = engine.con.to_pyarrow(built.summary).to_pylist()
    if metric.event is None:
        _raise_on_duplicates(engine, pilot, built, u, rows)
    _raise_on_checks(rows, built.checks)
    return _moments(rows[0], metric, "") if rows else ArmMoments(n=0, sum=0.0, sum_sq=0.0)


# --------------------------------------------------------------------------------------------------
# running the queries


def _aggregate_tables(
    engine: Engine, pilot: Pilot, metrics: list[Metric], units: ibis.Table
) -> dict[str, MetricData]:
    """The per-customer metrics in one query; quantile values in one more query each."""
    u = _units(units)
    built = _build_tables(engine, pilot, metrics, u)
    return _tables_data(engine, pilot, built, u, engine.con.to_pyarrow(built.summary).to_pylist())


def _tables_data(
    engine: Engine,
    pilot: Pilot,
    built: _Built,
    u: ibis.Table,
    rows: list[dict],
    *,
    units_n: int | None = None,
) -> dict[str, MetricData]:
    _raise_on_duplicates(engine, pilot, built, u, rows, units_n=units_n)
    _raise_on_checks(rows, built.checks)
    assigned = {str(r[_ARM]): int(r["rows"]) for r in rows}  # one joined row per customer, checked above
    order = _arm_order(pilot, assigned)
    out = {}
    for metric, prefix in built.parts:
        values = None
        if metric.type == "quantile":  # only its own source joined: the other metrics' joins are not needed
            values = _values(engine, _build_tables(engine, pilot, [metric], u).per_customer, order)
        out[metric.name] = _metric_data(
            metric, prefix, rows, assigned, order, values, built.covariates[metric.name]
        )
    return out


def _aggregate_events(
    engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, *, as_of=None
) -> MetricData:
    built = _build(engine, pilot, metric, _units(units), as_of=as_of)
    return _events_data(pilot, metric, built, engine.con.to_pyarrow(built.summary).to_pylist())


def _events_data(pilot: Pilot, metric: Metric, built: _Built, rows: list[dict]) -> MetricData:
    _raise_on_checks(rows, built.checks)
    assigned = {str(r[_ARM]): int(r["rows"]) for r in rows}  # grouped by customer first: one row each
    order = _arm_order(pilot, assigned)
    return _metric_data(metric, "", rows, assigned, order, None, built.covariates[metric.name])


def _fetch(engine: Engine, queries: list) -> list[list[dict]]:
    """The rows of several small (per-arm) queries. On DuckDB they run at the same time, each on its own
    cursor of the one sandboxed database: a scan of a file of one row group runs on one thread, so a
    per-customer table read beside a parallel event scan fills the idle core. Elsewhere (PostgreSQL, Spark)
    one after the other, on the pilot's one connection. The first failing query's error is raised, as if
    they had run in order, as the engine's one-line error (``Engine.error``: never a row's content)."""
    if len(queries) < 2 or engine.kind != "duckdb" or any(_has_memtable(q) for q in queries):
        return [engine.con.to_pyarrow(q).to_pylist() for q in queries]
    from concurrent.futures import ThreadPoolExecutor

    backend = engine.con
    raw = backend.con
    # the sources and the units are TEMP views of this connection, which a cursor does not see: replayed
    views = [
        ddl
        for (ddl,) in raw.sql("SELECT sql FROM duckdb_views() WHERE temporary AND NOT internal").fetchall()
    ]
    jobs = [(str(backend.compile(q)), q.schema().to_pyarrow()) for q in queries]

    def run(job):
        sql, schema = job
        cur = raw.cursor()
        try:
            for ddl in views:
                cur.execute(ddl)
            return cur.sql(sql).to_arrow_table().cast(schema).to_pylist()
        finally:
            cur.close()

    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="labkit-query") as pool:
        futures = [pool.submit(run, job) for job in jobs]
        try:
            return [f.result() for f in futures]
        except Exception as exc:  # raw cursors are not the guarded backend: the engine explains the failure
            raise engine.error(exc) from None


def _has_memtable(expr) -> bool:
    import ibis.expr.operations as ops

    return bool(expr.op().find(ops.InMemoryTable))


def _arm_order(pilot: Pilot, seen) -> list[str]:
    return list(pilot.arms) + sorted(a for a in seen if a not in pilot.arms)


def _metric_data(metric, prefix, rows, assigned, order, values, covariate) -> MetricData:
    from labkit.stats.moments import ArmMoments

    arms = {str(r[_ARM]): _moments(r, metric, prefix) for r in rows}
    missing = {str(r[_ARM]): int(r[prefix + "missing"] or 0) for r in rows}
    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    return MetricData(
        metric=metric.name,
        kind=metric.type,
        arms={a: arms.get(a, empty) for a in order},
        assigned={a: assigned.get(a, 0) for a in order},
        missing={a: missing.get(a, 0) for a in order},
        values=values,
        covariate=covariate,
    )


# --------------------------------------------------------------------------------------------------
# building the expressions


@dataclass(frozen=True)
class _Built:
    per_customer: ibis.Table  # one row per assigned customer: arm, each metric's y, x, missing flag, checks
    summary: ibis.Table  # GROUP BY arm of the above
    checks: list[_Check]
    parts: list[tuple[Metric, str]]  # each metric and the prefix of its columns
    covariates: dict[str, str | None]  # metric name -> what its x is, or None
    sources: dict[str, list[str]]  # per-customer sources joined -> their value columns (duplicate check)


def _units(units: ibis.Table, *, by_stratum: bool = False) -> ibis.Table:
    """The units with private column names; ``by_stratum`` makes the group key the (arm, stratum) cell."""
    import ibis.expr.datatypes as dt

    arm = units["arm"].cast(dt.string)
    if by_stratum:
        arm = arm + _CELL + units["stratum"].cast(dt.string)
    return units.select(
        **{
            _UNIT: units["customer_id"],
            _ARM: arm,
            _AT: _as_timestamp(units["assigned_at"], "assignment", "assigned_at"),
        }
    )


def _build(engine: Engine, pilot: Pilot, metric: Metric, u: ibis.Table, *, as_of=None) -> _Built:
    """One metric's expression (an event metric, or a per-customer metric alone)."""
    if metric.event is None:
        return _build_tables(engine, pilot, [metric], u)
    per_customer, checks = _events(engine, pilot, metric, u, as_of=as_of)
    covariate = f"pre-period {metric.aggregate} over {metric.window_days} days" if metric.cuped else None
    return _Built(
        per_customer,
        _summarise(per_customer, checks, [("", metric.cuped)]),
        checks,
        [(metric, "")],
        {metric.name: covariate},
        {},
    )


def _build_tables(engine: Engine, pilot: Pilot, metrics: list[Metric], u: ibis.Table) -> _Built:
    """Per-customer metrics (proportion, mean, quantile, ratio) over the units, fused: every source is
    read once and left-joined to the units on the id, so the joined table has one row per assigned
    customer when each source holds a customer at most once (``_raise_on_duplicates`` checks it).

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
        s = t.select(**side)
        j = j.left_join(s, _key(j[_UNIT], s[f"_lk_s{k}_id"]))

    out = {_ARM: j[_ARM]}
    checks: list[_Check] = []
    for (source, column), name in place.items():
        v = j[name]
        out[f"{name}_nf"] = _flag(v.isnan() | v.isinf(), "int64")
        checks.append(_Check(f"{name}_nf", source, column, "nonfinite"))
        if (source, column) in proportions:
            out[f"{name}_n01"] = _flag(~v.isin([0.0, 1.0]), "int64")
            checks.append(_Check(f"{name}_n01", source, column, "not01"))

    null = ibis.null().cast("float64")
    parts, covariates, has_x = [], {}, []
    for i, m in enumerate(metrics):
        p = f"m{i}_" if len(metrics) > 1 else ""
        if m.type == "ratio":
            yv = j[place[(m.numerator.source, m.numerator.column)]]
            xv = j[place[(m.denominator.source, m.denominator.column)]]
            missing = yv.isnull() | xv.isnull()
            if m.missing_policy == "zero":  # a missing numerator or denominator is a 0 of it
                out[p + _Y], out[p + _X] = yv.fill_null(0.0), xv.fill_null(0.0)
            else:
                out[p + _Y], out[p + _X] = ibis.ifelse(missing, null, yv), ibis.ifelse(missing, null, xv)
        else:
            v = j[place[(m.source, m.column)]]
            missing = v.isnull()
            out[p + _Y] = _apply_missing(m.missing_policy, v, j[present[m.source]].isnull())
            if m.covariate:
                out[p + _X] = j[place[(m.source, m.covariate)]].fill_null(0.0)
        out[p + _MISS] = _flag(missing, "int64")
        parts.append((m, p))
        covariates[m.name] = m.covariate
        has_x.append((p, m.type == "ratio" or bool(m.covariate)))
    pc = j.select(**out)
    return _Built(pc, _summarise(pc, checks, has_x), checks, parts, covariates, needed)


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


def _summarise(pc: ibis.Table, checks: list[_Check], parts: list[tuple[str, bool]]) -> ibis.Table:
    """GROUP BY arm: rows, and per metric (prefix, has x) missing and the moments, all in DOUBLE; check
    counts summed."""
    import ibis

    # Not measured: NULL (read as 0 by _moments). A literal 0.0 would be NUMERIC in PostgreSQL.
    zero = ibis.null().cast("float64")
    aggs = {"rows": pc.count()}
    for p, has_x in parts:
        y = pc[p + _Y]
        counted = y.notnull()
        aggs[p + "missing"] = pc[p + _MISS].sum()
        aggs[p + "n"] = y.count()
        aggs[p + "sum"] = y.sum()
        aggs[p + "sum_sq"] = (y * y).sum()
        x = pc[p + _X] if has_x else None
        aggs[p + "sum_x"] = x.sum(where=counted) if has_x else zero
        aggs[p + "sum_x_sq"] = (x * x).sum(where=counted) if has_x else zero
        aggs[p + "sum_xy"] = (x * y).sum(where=counted) if has_x else zero
    aggs.update({c.name: pc[c.name].sum() for c in checks})
    return pc.group_by(_ARM).aggregate(**aggs)


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
    event_ts, at = _aligned(_as_timestamp(t[ts], source, ts), u[_AT])
    u = u.mutate(**{_AT: at})
    fields = {"e_id": t[idc], "e_ts": event_ts}
    if metric.column:
        fields["e_v"] = _numeric(t[metric.column], source, metric.column)
    e = t.filter(match).select(**fields)
    if as_of is not None:  # naive UTC; cast to the column's type (a literal: once, not per row)
        e = e.filter(e["e_ts"] < ibis.literal(as_of).cast(e["e_ts"].type()))

    window = ibis.interval(days=int(metric.window_days))
    low = u[_AT] - window if metric.cuped else u[_AT]
    # The matching events in [low, at + window) are joined to their customer and aggregated per customer
    # (only customers with events: a GROUP BY on the id alone), then the units are left-joined to that,
    # one row per assigned customer; a customer without events has no value (0 for count, sum and any).
    j = e.inner_join(u, [_key(u[_UNIT], e["e_id"]), e["e_ts"] >= low, e["e_ts"] < u[_AT] + window])
    post = j["e_ts"] >= j[_AT]  # the join keeps only [low, at + window): the rest is the pre-period
    pre = j["e_ts"] < j[_AT]
    agg = metric.aggregate
    aggs = {"e_y": _event_aggregate(j, agg, post)}
    if metric.cuped:
        aggs["e_x"] = _event_aggregate(j, agg, pre)
    checks = []
    if metric.column:
        v = j["e_v"]
        aggs["e_nf"] = j["e_id"].count(where=v.isnan() | v.isinf())
        checks.append(_Check("e_nf", source, metric.column, "nonfinite"))
    per = j.group_by(e_unit=j[_UNIT]).aggregate(**aggs)
    pc = u.left_join(per, u[_UNIT] == per["e_unit"])
    # no event is a 0 for count/sum/any (not missing); mean/max have no value: missing, excluded or 0
    y = pc["e_y"].fill_null(0.0) if metric.missing_policy == "zero" else pc["e_y"]
    no_value = pc["e_y"].isnull() if agg in ("mean", "max") else y.isnull()
    out = {_ARM: pc[_ARM], _Y: y, _MISS: _flag(no_value, "int64")}
    if metric.cuped:
        out[_X] = pc["e_x"].fill_null(0.0)
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


def _as_utc(col, source: str, column: str):
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
    return _as_utc(col, source, column)


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


def _key(left, right):
    """Join predicate on customer ids; ids of different kinds (text vs number) are compared as text."""
    lt, rt = left.type(), right.type()
    if (lt.is_integer() and rt.is_integer()) or lt == rt:
        return left == right
    return left.cast("string") == right.cast("string")


# --------------------------------------------------------------------------------------------------
# results


def _raise_on_duplicates(
    engine: Engine,
    pilot: Pilot,
    built: _Built,
    u: ibis.Table,
    rows: list[dict],
    *,
    units_n: int | None = None,
) -> None:
    """Each per-customer source must hold an assigned customer at most once. Counted cheaply — the joined
    rows against the units — and only when they differ is each source grouped by id, to name it with a
    count of customers and example pseudonyms (never raw ids). Checked before anything else: with a
    duplicate the values are meaningless."""
    if not built.sources:
        return
    joined = sum(int(r["rows"]) for r in rows)
    units = (
        units_n
        if units_n is not None
        else int(engine.con.to_pyarrow(u.aggregate(n=u.count())).to_pylist()[0]["n"])
    )
    if joined == units:
        return
    idc = pilot.spec.cohort.id_column
    for source in built.sources:
        t = engine.table(source)
        mine = t.semi_join(u, _key(t[idc], u[_UNIT]))
        dup = mine.group_by(_lk_id=mine[idc]).aggregate(_lk_rows=mine.count())
        dup = dup.filter(dup["_lk_rows"] > 1)
        n = int(engine.con.to_pyarrow(dup.aggregate(ids=dup.count())).to_pylist()[0]["ids"])
        if not n:
            continue
        examples = (
            engine.con.to_pyarrow(dup.order_by("_lk_id").limit(3).select("_lk_id")).column(0).to_pylist()
        )
        from labkit.privacy import lab_key, pseudonym

        key = lab_key(pilot.lab)
        shown = ", ".join(pseudonym(v, key) for v in examples)
        raise DataError(
            source,
            f"{_plural(n, 'assigned customer')} {'has' if n == 1 else 'have'} more than one row; a per-customer "
            f"table needs one row per customer. examples, as pseudonyms (labkit.privacy.pseudonym): {shown}",
            column=idc,
            rows=n,
        )
    raise AssignmentError(
        pilot.id, f"the assignment's {units} customers matched {joined} rows; re-run `labkit assign`"
    )


def _raise_on_checks(rows: list[dict], checks: list[_Check]) -> None:
    """NaN/inf first, then non-0/1 proportions (duplicates are checked before, by _raise_on_duplicates)."""
    order = {"nonfinite": 1, "not01": 2}
    for check in sorted(checks, key=lambda c: order[c.what]):
        bad = sum(int(row[check.name] or 0) for row in rows)
        if not bad:
            continue
        if check.what == "nonfinite":
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


def _moments(row: dict, metric: Metric, prefix: str) -> ArmMoments:
    """One metric's columns (``prefix``) of a per-arm row of the query as ArmMoments; an empty sum (SQL
    NULL) is 0."""
    import math

    from labkit.stats.moments import ArmMoments

    sums = [row[prefix + k] for k in ("sum", "sum_sq", "sum_x", "sum_x_sq", "sum_xy")]
    if any(v is not None and not math.isfinite(v) for v in sums):  # finite values, overflowing squares
        ref = metric.numerator if metric.type == "ratio" else metric
        raise DataError(
            ref.source, "the sums of squares overflow a double; rescale the column", column=ref.column
        )
    return ArmMoments(
        n=int(row[prefix + "n"]),
        sum=_f(row[prefix + "sum"]),
        sum_sq=_f(row[prefix + "sum_sq"]),
        sum_x=_f(row[prefix + "sum_x"]),
        sum_x_sq=_f(row[prefix + "sum_x_sq"]),
        sum_xy=_f(row[prefix + "sum_xy"]),
    )


def _f(value) -> float:
    return 0.0 if value is None else float(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
