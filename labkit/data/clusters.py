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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from labkit.data.checks import raise_on_checks, raise_on_duplicates
from labkit.data.query import ARM, CELL, UNIT, build_metric, id_match, renamed_units
from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import numpy

    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot
    from labkit.stats.cluster import ClusterCells

__all__ = ["ClusterTotals", "cluster_totals", "mixed_clusters", "raise_on_mixed_clusters"]

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
    if metric.type == "quantile":
        raise ValueError(
            f"metric '{metric.name}': a quantile has no cluster totals (it needs a cluster bootstrap)"
        )
    source = source or pilot.spec.cohort.source
    plain = renamed_units(units)
    u = _clustered(engine, pilot, plain, unit_column, source, by_cluster=True)
    built = build_metric(engine, pilot, metric, u, as_of=as_of)
    rows = engine.con.to_pyarrow(built.summary).to_pylist()
    units_n = int(engine.con.to_pyarrow(plain.aggregate(n=plain.count())).to_pylist()[0]["n"])
    # a customer twice in the cohort source (or a per-customer metric source) doubles its rows: named here
    checked = replace(built, sources={**built.sources, source: [unit_column]})
    raise_on_duplicates(engine, pilot, checked, u, rows, units_n=units_n)
    raise_on_checks(rows, built.checks)
    loose = sum(int(r["rows"]) for r in rows if CELL not in str(r[ARM]))
    if loose:
        raise DataError(
            source,
            f"{loose} assigned customer{'s' if loose != 1 else ''} {'have' if loose != 1 else 'has'} no "
            f"{unit_column}; in a cluster-randomised pilot every customer inherits its cluster's arm",
            column=unit_column,
            rows=loose,
        )
    return _totals(metric, unit_column, built.covariates[metric.name], rows)


def mixed_clusters(
    engine: Engine, pilot: Pilot, units: ibis.Table, unit_column: str, *, source: str | None = None
) -> int:
    """How many clusters hold customers of more than one arm (an imported assignment must give every
    customer of a cluster the same arm); one ``GROUP BY`` cluster, only the count comes back. Customers
    without a cluster are not counted here (``cluster_totals`` refuses them)."""
    source = source or pilot.spec.cohort.source
    u = _clustered(engine, pilot, renamed_units(units), unit_column, source, by_cluster=False)
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


def _clustered(
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


def _totals(metric: Metric, unit_column: str, covariate: str | None, rows: list[dict]) -> ClusterTotals:
    """The per-(cluster, arm) rows of the query as parallel arrays (an empty sum, SQL NULL, is 0)."""
    import numpy as np

    keys = [str(r[ARM]).partition(CELL) for r in rows]

    def column(name: str, dtype=float) -> np.ndarray:
        return np.array([r[name] or 0 for r in rows], dtype=dtype)

    sums = {k: column(k) for k in _SUMS}
    return ClusterTotals(
        metric=metric.name,
        kind=metric.type,
        unit_column=unit_column,
        covariate=covariate,
        cluster=np.array([k[2] for k in keys], dtype=object),
        arm=np.array([k[0] for k in keys], dtype=object),
        assigned=column("rows", np.int64),
        missing=column("missing", np.int64),
        n=sums["n"].astype(np.int64),
        y=sums["sum"],
        y2=sums["sum_sq"],
        x=sums["sum_x"],
        x2=sums["sum_x_sq"],
        xy=sums["sum_xy"],
    )
