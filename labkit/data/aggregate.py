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
against numbers, are compared as text) — except that the file an imported assignment was read from,
unchanged since, is grouped by its own arm column in place (``arms_in_place``: the same rows). The units are taken to hold each customer once, as
``labkit assign`` writes them. Quantile values come back sorted, so a seeded bootstrap repeats exactly.

Per-customer tables (``source`` + ``column``). A customer with no row, or a NULL value, is counted in
``missing`` and treated by the metric's ``missing`` policy (``Metric.missing_policy``, ``labkit.data.query``):
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

from typing import TYPE_CHECKING

from labkit.data.arms import (
    MetricData,
    arm_moments,
    arm_order,
    by_arm,
    metric_data,
    post_stratified,
    quantile_values,
)
from labkit.data.checks import raise_on_checks, raise_on_duplicates
from labkit.data.query import ARM, as_utc, build_metric, build_tables, renamed_units
from labkit.errors import AssignmentError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.query import Built
    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot
    from labkit.stats.moments import ArmMoments

__all__ = [
    "POOLED_ARM",
    "MetricData",
    "aggregate_metric",
    "aggregate_pilot",
    "baseline",
    "check_metrics",
    "fetch_tables",
    "moments_expr",
    "units_table",
]


POOLED_ARM = "all"


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
    by_stratum = post_stratified(pilot)
    u = renamed_units(units, by_stratum=by_stratum)
    tables = [m for m in pilot.spec.metrics if m.event is None]
    events = [m for m in pilot.spec.metrics if m.event is not None]
    arms_in = arms_in_place(engine, pilot, tables) if not by_stratum else None
    built = [build_tables(engine, pilot, tables, u, arms_in=arms_in)] if tables else []
    built += [build_metric(engine, pilot, m, u, as_of=as_of) for m in events]
    queries = [b.summary for b in built]
    # The duplicate check compares the per-customer join's rows with the units' count: an event query's
    # rows are the units, one each (events are grouped per customer before the units are joined); a pilot
    # without event metrics counts them in one more query, run with the rest.
    count = tables and not events
    fetched = [
        t.to_pylist() for t in fetch_tables(engine, queries + ([u.aggregate(n=u.count())] if count else []))
    ]
    out = {}
    if tables:
        rows = fetched[1] if events else fetched[-1]
        units_n = sum(int(r["rows"]) for r in rows) if events else int(rows[0]["n"])
        out.update(_tables_data(engine, pilot, built[0], u, fetched[0], units_n=units_n, arms_in=arms_in))
    for m, b, rows in zip(events, built[1:] if tables else built, fetched[1 if tables else 0 :]):
        out[m.name] = _events_data(pilot, m, b, rows)
    if by_stratum:
        out = {name: by_arm(pilot, md) for name, md in out.items()}
    return {m.name: out[m.name] for m in pilot.spec.metrics}


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
    u = renamed_units(units_table(engine, pilot))
    tables = [m for m in pilot.spec.metrics if m.event is None]
    if tables:
        build_tables(engine, pilot, tables, u)
    for m in pilot.spec.metrics:
        if m.event is not None:
            build_metric(engine, pilot, m, u)


def moments_expr(engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table) -> ibis.Table:
    """The per-arm aggregate expression of a metric (one row per arm), without running it."""
    return build_metric(engine, pilot, metric, renamed_units(units)).summary


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
    at = as_utc(population["assigned_at"], "assignment", "assigned_at")
    if metric.event is not None:
        at = at - ibis.interval(days=int(metric.window_days))
    pop = population.select(
        customer_id=population["customer_id"], arm=ibis.literal(POOLED_ARM), assigned_at=at
    )
    u = renamed_units(pop)
    built = build_metric(engine, pilot, metric, u)
    rows = engine.con.to_pyarrow(built.summary).to_pylist()
    if metric.event is None:
        raise_on_duplicates(engine, pilot, built, u, rows)
    raise_on_checks(rows, built.checks)
    return arm_moments(rows[0], metric, "") if rows else ArmMoments(n=0, sum=0.0, sum_sq=0.0)


def arms_in_place(engine: Engine, pilot: Pilot, metrics: list[Metric]) -> str | None:
    """The arm column to group the metrics' source by in place, or None to join the assignment.

    Only for an imported assignment (``labkit.assignment.imported``) whose per-customer metrics all read
    the very file that holds the arms, imported without a value map, blocks or clusters, on the pilot's id
    column, on DuckDB — and only while that file has the sha256 the import recorded before reading it
    (``imported.source_sha256``; the digest cache makes the check a ``stat``). Then the assignment is, by
    construction, that file's rows whose arm is not NULL, with the arm as text and the file's own ids, so
    grouping the file by the column gives the join's very rows: the moments are identical, and a 10M-row
    hash join of the file with its own copy is saved. Anything else (an older assignment without the
    digest, a changed file, an edited spec) keeps the join, the assignment being the record."""
    import json

    c = pilot.spec.cohort
    a = c.assignment
    if engine.kind != "duckdb" or a is None or not metrics or c.unit_column is not None:
        return None
    if {s for m in metrics for s in _sources(m)} != {a.source}:
        return None
    try:
        meta = json.loads((pilot.results_dir / "assignment.json").read_text(encoding="utf-8"))
        imp = meta["imported"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    digest = imp.get("source_sha256") if isinstance(imp, dict) else None
    same = (imp.get("source"), imp.get("arm_column"), imp.get("id_column")) == (
        a.source,
        a.arm_column,
        c.id_column,
    )
    if not digest or not same or imp.get("arms") is not None or imp.get("strata"):
        return None
    if meta.get("cohort", {}).get("unit_column") is not None:
        return None
    from labkit.data.sources import DigestCache

    cache = DigestCache.load(pilot.lab)
    try:
        current = engine.digest(a.source, cache)
    except OSError:  # the file is gone: the join's own read says so, as a DataError
        return None
    cache.save()
    return a.arm_column if current == digest else None


def _sources(metric: Metric) -> list[str]:
    return [metric.numerator.source, metric.denominator.source] if metric.type == "ratio" else [metric.source]


# --------------------------------------------------------------------------------------------------
# running the queries


def _aggregate_tables(
    engine: Engine, pilot: Pilot, metrics: list[Metric], units: ibis.Table
) -> dict[str, MetricData]:
    """The per-customer metrics in one query; quantile values in one more query each."""
    u = renamed_units(units)
    built = build_tables(engine, pilot, metrics, u)
    return _tables_data(engine, pilot, built, u, engine.con.to_pyarrow(built.summary).to_pylist())


def _tables_data(
    engine: Engine,
    pilot: Pilot,
    built: Built,
    u: ibis.Table,
    rows: list[dict],
    *,
    units_n: int | None = None,
    arms_in: str | None = None,
) -> dict[str, MetricData]:
    raise_on_duplicates(engine, pilot, built, u, rows, units_n=units_n)
    raise_on_checks(rows, built.checks)
    assigned = {str(r[ARM]): int(r["rows"]) for r in rows}  # one joined row per customer, checked above
    order = arm_order(pilot, assigned)
    out = {}
    for metric, prefix in built.parts:
        values = None
        if metric.type == "quantile":  # only its own source joined: the other metrics' joins are not needed
            own = build_tables(engine, pilot, [metric], u, arms_in=arms_in)
            values = quantile_values(engine, own.per_customer, order)
        out[metric.name] = metric_data(
            metric, prefix, rows, assigned, order, values, built.covariates[metric.name]
        )
    return out


def _aggregate_events(
    engine: Engine, pilot: Pilot, metric: Metric, units: ibis.Table, *, as_of=None
) -> MetricData:
    built = build_metric(engine, pilot, metric, renamed_units(units), as_of=as_of)
    return _events_data(pilot, metric, built, engine.con.to_pyarrow(built.summary).to_pylist())


def _events_data(pilot: Pilot, metric: Metric, built: Built, rows: list[dict]) -> MetricData:
    raise_on_checks(rows, built.checks)
    assigned = {str(r[ARM]): int(r["rows"]) for r in rows}  # grouped by customer first: one row each
    order = arm_order(pilot, assigned)
    return metric_data(metric, "", rows, assigned, order, None, built.covariates[metric.name])


def fetch_tables(engine: Engine, queries: list) -> list:
    """The results (Arrow tables) of several small (per-arm, per-cluster) queries. On DuckDB they run at the same time, each on its own
    cursor of the one sandboxed database: a scan of a file of one row group runs on one thread, so a
    per-customer table read beside a parallel event scan fills the idle core. Elsewhere (PostgreSQL, Spark)
    one after the other, on the pilot's one connection. The first failing query's error is raised, as if
    they had run in order, as the engine's one-line error (``Engine.error``: never a row's content)."""
    if len(queries) < 2 or engine.kind != "duckdb" or any(_has_memtable(q) for q in queries):
        return [engine.con.to_pyarrow(q) for q in queries]
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
            return cur.sql(sql).to_arrow_table().cast(schema)
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
