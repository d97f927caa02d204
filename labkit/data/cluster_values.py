"""Quantile metrics of cluster-randomised pilots in the engine: each counted customer's value with its
cluster and arm, for the cluster bootstrap (``labkit.stats.cluster_bootstrap``).

A quantile has no cluster totals, so ``labkit.data.clusters.cluster_totals`` refuses it; its bootstrap
resamples whole clusters and needs the values themselves, as the customer-level bootstrap of an ordinary
pilot does (``labkit.data.arms.quantile_values``). The query is the metric's own (``build_metric``: windows,
missing policy, data checks unchanged) over units whose group key is the (arm, cluster) pair
(``clustered_units``), so:

- one ``GROUP BY`` per (cluster, arm) gives the counts (assigned, missing, counted, Σy, Σy²) and runs the
  refusals of ``cluster_totals`` — a duplicate id (the cohort source included), NaN/inf values, customers
  without a cluster with their count;
- one ``SELECT key, y`` of the customers with a value returns value and (arm, cluster) key — never the
  customer id: only values and cluster labels leave the engine (clusters as text, as ``ClusterCells.of``
  compares them).

Values come back in the engine's order; they are sorted here (per arm by cluster, then value), and the
bootstrap codes clusters by their sorted labels, so a seeded result repeats exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from labkit.data.checks import raise_on_checks, raise_on_duplicates
from labkit.data.clusters import ClusterTotals, clustered_units, loose_customers, raise_on_loose
from labkit.data.query import ARM, CELL, Y, build_metric, renamed_units

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import numpy

    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot

__all__ = ["ClusterValues", "cluster_values"]


@dataclass(frozen=True)
class ClusterValues:
    """A quantile metric's counted customers as parallel arrays, sorted by (arm, cluster, value): ``value``,
    ``arm_code`` (an index into ``arms``) and ``code`` (an index into ``labels``, the sorted cluster labels,
    text) — integers, not a million strings; and its per-(cluster, arm) ``totals`` (kind ``quantile``:
    assigned, missing, counted n, Σy, Σy²; no x)."""

    metric: str
    unit_column: str
    arms: tuple[str, ...]
    labels: numpy.ndarray
    arm_code: numpy.ndarray
    code: numpy.ndarray
    value: numpy.ndarray
    totals: ClusterTotals

    @property
    def arm(self) -> numpy.ndarray:
        """Each value's arm (text)."""
        import numpy as np

        return np.array(self.arms or ("",), dtype=object)[self.arm_code]

    @property
    def cluster(self) -> numpy.ndarray:
        """Each value's cluster label (text)."""
        return self.labels[self.code]

    def of(self, arm: str) -> tuple[numpy.ndarray, numpy.ndarray]:
        """The values of ``arm`` and, parallel, their clusters' codes: in the order of the labels, so the
        bootstrap codes them as it would the labels, without sorting the labels of a million customers."""
        keep = self.arm_code == (self.arms.index(arm) if arm in self.arms else -1)
        return self.value[keep], self.code[keep]


def cluster_values(
    engine: Engine,
    pilot: Pilot,
    metric: Metric,
    units: ibis.Table,
    unit_column: str,
    *,
    source: str | None = None,
    as_of=None,
) -> ClusterValues:
    """The quantile metric's values with their cluster and arm (module docstring); the arguments are
    ``cluster_totals``': ``units`` the assignment, ``source`` the table holding ``unit_column`` (the cohort
    source by default), ``as_of`` a look's date."""
    if metric.type != "quantile":
        raise ValueError(f"metric '{metric.name}' is a {metric.type}: its clusters have totals")
    source = source or pilot.spec.cohort.source
    plain = renamed_units(units)
    u = clustered_units(engine, pilot, plain, unit_column, source, by_cluster=True)
    built = build_metric(engine, pilot, metric, u, as_of=as_of)
    fetched = engine.con.to_pyarrow(built.summary)
    rows = sorted(fetched.to_pylist(), key=lambda r: str(r[ARM]))
    units_n = int(engine.con.to_pyarrow(plain.aggregate(n=plain.count())).to_pylist()[0]["n"])
    # a customer twice in the cohort source (or the metric's source) doubles its rows: named here
    checked = replace(built, sources={**built.sources, source: [unit_column]})
    raise_on_duplicates(engine, pilot, checked, u, rows, units_n=units_n)
    raise_on_checks(rows, built.checks)
    raise_on_loose(loose_customers(fetched), source, unit_column)
    pc = built.per_customer
    table = engine.con.to_pyarrow(pc.filter(pc[Y].notnull()).select(ARM, Y))
    return _values(metric, unit_column, rows, table.column(ARM), table.column(Y))


def _values(metric: Metric, unit_column: str, rows: list[dict], keys, ys) -> ClusterValues:
    """The per-(cluster, arm) rows and the (key, y) columns as ``ClusterValues`` (an empty sum is 0). The
    keys are dictionary-encoded: only the distinct (arm, cluster) keys are split in Python."""
    import numpy as np

    encoded = keys.combine_chunks().dictionary_encode()
    distinct = [str(k) for k in encoded.dictionary.to_pylist()]
    index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    pairs = [k.partition(CELL) for k in distinct]
    labels = sorted({p[2] for p in pairs})
    arms = tuple(sorted({p[0] for p in pairs}))
    rank = {label: i for i, label in enumerate(labels)}
    key_rank = np.argsort(np.argsort(np.array(distinct, dtype=object), kind="stable"), kind="stable")
    value = ys.to_numpy(zero_copy_only=False).astype("float64")
    order = np.lexsort((value, key_rank[index])) if value.size else np.arange(0)  # "arm<US>cluster" order
    index = index[order]
    arm_code = np.array([arms.index(p[0]) for p in pairs] or [0], dtype=np.int64)[index]
    code = np.array([rank[p[2]] for p in pairs] or [0], dtype=np.int64)[index]
    cells = [str(r[ARM]).partition(CELL) for r in rows]

    def column(name: str, dtype=float) -> np.ndarray:
        return np.array([r[name] or 0 for r in rows], dtype=dtype)

    zeros = np.zeros(len(rows))
    totals = ClusterTotals(
        metric=metric.name,
        kind=metric.type,
        unit_column=unit_column,
        covariate=None,
        cluster=np.array([c[2] for c in cells], dtype=object),
        arm=np.array([c[0] for c in cells], dtype=object),
        assigned=column("rows", np.int64),
        missing=column("missing", np.int64),
        n=column("n", np.int64),
        y=column("sum"),
        y2=column("sum_sq"),
        x=zeros,
        x2=zeros,
        xy=zeros,
    )
    return ClusterValues(
        metric.name, unit_column, arms, np.array(labels, dtype=object), arm_code, code, value[order], totals
    )
