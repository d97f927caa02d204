"""Cluster-randomised pilots in the engine: a metric's totals per (cluster, arm), and the check that an
imported assignment gives every customer of a cluster the same arm.

A cluster-randomised pilot (``cohort.unit_column``: account_id, community_id, region) is analysed on
cluster totals (``labkit.stats.cluster``), so the data layer returns, per (cluster, arm), what
``ClusterCells`` needs — the outcome total Σy, the customers counted n and Σy² (for the ICC) — and with
them Σx, Σx², Σxy: a CUPED covariate's totals, or for a ratio metric the denominator total (then ``n`` of
the cells is Σx). The cluster of a customer is the ``unit_column`` of the cohort source, joined on the
pilot's id column.

The metric's query is ``labkit.data.query``'s own (``build_metric``: its windows, missing policies and
data checks, unchanged) over units whose group key is the (arm, cluster) pair instead of the arm — the
pattern of the post-stratified (arm, stratum) cells — so its one ``GROUP BY`` returns one row per
(cluster, arm) and no customer row, no customer id, leaves the engine. Cluster values come back as text
(``ClusterCells.of`` compares them as text too). A customer whose cluster is NULL (or who is absent from
the cohort source) cannot have inherited a cluster's arm: refused with the count, as is a customer twice
in the cohort source. Quantile metrics need values, not totals (a cluster bootstrap): refused here.

A pilot's metrics are batched as the plain path batches them (``labkit.data.aggregate.aggregate_pilot``):
``pilot_totals`` joins the clusters to the units once, fuses every per-customer metric into one query
(``build_tables``: each source read and joined once), runs one query per event metric (its window is per
customer) and counts the units once — instead of a query and a count per metric. The rows of a metric are
the same either way (the same expressions, the same groups); they are ordered by (arm, cluster), so the
arrays do not depend on the engine's hash order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from labkit.data.aggregate import fetch_tables
from labkit.data.checks import raise_on_checks, raise_on_duplicates
from labkit.data.query import ARM, CELL, UNIT, build_metric, build_tables, id_match, renamed_units
from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import numpy
    import pyarrow

    from labkit.data.query import Built
    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot
    from labkit.stats.cluster import ClusterCells

__all__ = [
    "ClusterTotals",
    "cluster_totals",
    "loose_customers",
    "mixed_clusters",
    "pilot_totals",
    "raise_on_loose",
    "raise_on_mixed_clusters",
]

_CLUSTER = "_lk_cluster"
_SUMS = ("n", "sum", "sum_sq", "sum_x", "sum_x_sq", "sum_xy")


@dataclass(frozen=True)
class ClusterTotals:
    """One metric per (cluster, arm): parallel arrays, one entry per pair that has assigned customers.

    ``assigned`` counts the assigned customers, ``n`` those counted (a value under the metric's missing
    policy), ``missing`` those without a value; ``y``, ``y2`` are Σy and Σy²; ``x``, ``x2``, ``xy`` are
    Σx, Σx², Σxy (a CUPED covariate, or a ratio's denominator; 0 where the metric has no x)."""

    metric: str
    kind: str  # proportion | mean | ratio
    unit_column: str
    covariate: str | None  # what x is ("pre-period count over 30 days", a column), None without one
    cluster: numpy.ndarray  # cluster values as text
    arm: numpy.ndarray
    assigned: numpy.ndarray
    missing: numpy.ndarray
    n: numpy.ndarray
    y: numpy.ndarray
    y2: numpy.ndarray
    x: numpy.ndarray
    x2: numpy.ndarray
    xy: numpy.ndarray

    def clusters(self, arm: str) -> int:
        """Clusters with at least one assigned customer in ``arm``."""
        return int(((self.arm == arm) & (self.assigned > 0)).sum())

    def cells(self, arms: list[str]) -> ClusterCells:
        """The ``ClusterCells`` of the estimator: cell i is ``arms[i]`` (rows of other arms are left out).
        For a ratio metric n is the denominator total and there is no Σy² (an ICC of customers does not
        apply); otherwise n is the customers counted and y2 is Σy²."""
        import numpy as np

        from labkit.stats.cluster import ClusterCells

        index = {a: i for i, a in enumerate(arms)}
        keep = np.array([a in index for a in self.arm], dtype=bool)
        cell = [index[a] for a in self.arm[keep]]
        if self.kind == "ratio":
            return ClusterCells.of(self.cluster[keep], cell, self.y[keep], self.x[keep])
        return ClusterCells.of(self.cluster[keep], cell, self.y[keep], self.n[keep], self.y2[keep])


def cluster_totals(
    engine: Engine,
    pilot: Pilot,
    metric: Metric,
    units: ibis.Table,
    unit_column: str,
    *,
    source: str | None = None,
    as_of=None,
) -> ClusterTotals:
    """The metric's totals per (cluster, arm) in one ``GROUP BY`` (module docstring); ``units`` is the
    assignment (``labkit.data.aggregate.units_table``), ``source`` the table holding ``unit_column`` (the
    cohort source by default), ``as_of`` a look's date as in ``aggregate_metric``."""
    return pilot_totals(engine, pilot, [metric], units, unit_column, source=source, as_of=as_of)[metric.name]


def pilot_totals(
    engine: Engine,
    pilot: Pilot,
    metrics: list[Metric],
    units: ibis.Table,
    unit_column: str,
    *,
    source: str | None = None,
    as_of=None,
) -> dict[str, ClusterTotals]:
    """Each metric's totals per (cluster, arm), in the order of ``metrics``: the per-customer metrics in one
    query, one query per event metric, one count of the units (module docstring). The refusals are
    ``cluster_totals``' — a duplicate id (the cohort source included), NaN/inf, a proportion's value other
    than 0/1, customers without a cluster with their count — checked query by query in the order of the
    metrics, so a pilot with one problem gets the same error as its metrics taken one at a time."""
    import numpy as np

    quantile = next((m for m in metrics if m.type == "quantile"), None)
    if quantile is not None:
        raise ValueError(
            f"metric '{quantile.name}': a quantile has no cluster totals (it needs a cluster bootstrap)"
        )
    source = source or pilot.spec.cohort.source
    plain = renamed_units(units)
    u = clustered_units(engine, pilot, plain, unit_column, source, by_cluster=True)
    tables = [m for m in metrics if m.event is None]
    queries: list[Built] = []  # built in the order of the metrics (a missing column is named as before)
    for m in metrics:
        if m.event is not None:
            queries.append(build_metric(engine, pilot, m, u, as_of=as_of))
        elif m is tables[0]:  # every per-customer metric in one query
            queries.append(build_tables(engine, pilot, tables, u))
    # Arrow columns, a row per (cluster, arm); on DuckDB the queries run at the same time, as a plain pilot's
    *fetched, count = fetch_tables(engine, [*(b.summary for b in queries), plain.aggregate(n=plain.count())])
    units_n = int(count.to_pylist()[0]["n"])
    for b, rows in zip(queries, fetched):
        # a customer twice in the cohort source (or a per-customer metric source) doubles its rows: named here
        checked = replace(b, sources={**b.sources, source: [unit_column]})
        total = [_sums(rows, ["rows", *(c.name for c in b.checks)])]  # all the checks read: their sums
        raise_on_duplicates(engine, pilot, checked, u, total, units_n=units_n)
        raise_on_checks(total, b.checks)
        raise_on_loose(loose_customers(rows), source, unit_column)
    out = {}
    for b, rows in zip(queries, fetched):
        rows = rows.sort_by(ARM)  # (arm, cluster): not the engine's hash order
        keys = [k.partition(CELL) for k in rows.column(ARM).to_pylist()]
        arm = np.array([k[0] for k in keys], dtype=object)
        cluster = np.array([k[2] for k in keys], dtype=object)
        for m, prefix in b.parts:
            out[m.name] = _totals(m, unit_column, b.covariates[m.name], rows, prefix, arm, cluster)
    return {m.name: out[m.name] for m in metrics}


def _sums(rows: pyarrow.Table, names: list[str]) -> dict[str, int]:
    """The columns ``names`` of the per-(cluster, arm) rows summed (what the checks count, in one row)."""
    import pyarrow.compute as pc

    return {name: int(pc.sum(rows.column(name)).as_py() or 0) for name in names}


def loose_customers(rows: pyarrow.Table) -> int:
    """Assigned customers counted in rows whose group key has no cluster (``rows``' ``rows`` column)."""
    import pyarrow.compute as pc

    alone = pc.invert(pc.match_substring(rows.column(ARM), CELL))
    return int(pc.sum(pc.filter(rows.column("rows"), alone)).as_py() or 0)


def raise_on_loose(loose: int, source: str, unit_column: str) -> None:
    """The one refusal of customers without a cluster (NULL, or absent from the cohort source), whichever
    query counted them (totals, a quantile's values, the daily totals): they inherit no cluster's arm."""
    if loose:
        raise DataError(
            source,
            f"{loose} assigned customer{'s' if loose != 1 else ''} {'have' if loose != 1 else 'has'} no "
            f"{unit_column}; in a cluster-randomised pilot every customer inherits its cluster's arm",
            column=unit_column,
            rows=loose,
        )


def mixed_clusters(
    engine: Engine, pilot: Pilot, units: ibis.Table, unit_column: str, *, source: str | None = None
) -> int:
    """How many clusters hold customers of more than one arm (an imported assignment must give every
    customer of a cluster the same arm); one ``GROUP BY`` cluster, only the count comes back. Customers
    without a cluster are not counted here (``cluster_totals`` refuses them)."""
    source = source or pilot.spec.cohort.source
    u = clustered_units(engine, pilot, renamed_units(units), unit_column, source, by_cluster=False)
    u = u.filter(u[_CLUSTER].notnull())
    per = u.group_by(_CLUSTER).aggregate(_lk_arms=u[ARM].nunique())
    mixed = per.filter(per["_lk_arms"] > 1)
    return int(engine.con.to_pyarrow(mixed.aggregate(n=mixed.count())).to_pylist()[0]["n"])


def raise_on_mixed_clusters(pilot: Pilot, mixed: int, unit_column: str) -> None:
    """The error for an imported assignment whose clusters are not constant in arm (``mixed_clusters``)."""
    if mixed:
        raise AssignmentError(
            pilot.id,
            f"{mixed} cluster{'s' if mixed != 1 else ''} {'have' if mixed != 1 else 'has'} customers in more "
            f"than one arm; with cohort.unit_column: {unit_column} every customer of a cluster must be in "
            "its cluster's arm",
        )


def clustered_units(
    engine: Engine, pilot: Pilot, u: ibis.Table, unit_column: str, source: str, *, by_cluster: bool
) -> ibis.Table:
    """The renamed units with each customer's cluster (text, NULL when it has none) left-joined from
    ``source``; ``by_cluster`` makes the group key ``arm<US>cluster`` (the arm alone without a cluster)."""
    import ibis

    idc = pilot.spec.cohort.id_column
    engine.require_columns(source, [idc, unit_column])
    t = engine.table(source)
    side = t.select(_lk_cid=t[idc], **{_CLUSTER: t[unit_column].cast("string")})
    j = u.left_join(side, id_match(u[UNIT], side["_lk_cid"]))
    cluster = j[_CLUSTER]
    arm = ibis.ifelse(cluster.isnull(), j[ARM], j[ARM] + CELL + cluster) if by_cluster else j[ARM]
    return j.select(**({c: j[c] for c in u.columns} | {ARM: arm, _CLUSTER: cluster}))


def _totals(
    metric: Metric,
    unit_column: str,
    covariate: str | None,
    rows: pyarrow.Table,
    prefix: str,
    arm: numpy.ndarray,
    cluster: numpy.ndarray,
) -> ClusterTotals:
    """One metric's columns (``prefix``, as in a fused query) of the per-(cluster, arm) rows, whose keys are
    ``arm`` and ``cluster``, as parallel arrays (an empty sum, SQL NULL, is 0)."""
    import numpy as np
    import pyarrow.compute as pc

    def column(name: str, dtype=float) -> np.ndarray:
        return np.asarray(pc.fill_null(rows.column(name), 0).to_numpy()).astype(dtype)

    sums = {k: column(prefix + k) for k in _SUMS}
    return ClusterTotals(
        metric=metric.name,
        kind=metric.type,
        unit_column=unit_column,
        covariate=covariate,
        cluster=cluster,
        arm=arm,
        assigned=column("rows", np.int64),
        missing=column(prefix + "missing", np.int64),
        n=sums["n"].astype(np.int64),
        y=sums["sum"],
        y2=sums["sum_sq"],
        x=sums["sum_x"],
        x2=sums["sum_x_sq"],
        xy=sums["sum_xy"],
    )
