"""The cluster draw in the engine (``cohort.unit_column``; the rule is ``labkit.assignment.cluster_rule``).

The engine filters the eligible customers, counts them per (cluster, stratum label) — one row per pair
comes to Python, never a customer id — and Python draws the clusters (``draw_clusters``). One row per kept
cluster goes back as a small in-memory table (its arm, or its saturation share and treated count, and its
stratum), joined to the customers on the cluster's text; in a saturation design the engine ranks each
cluster's customers by the customer draw's keyed hash ``h(c)`` (a window ``ROW_NUMBER`` per cluster) and
the first T_g take the treatment. The same on DuckDB, PostgreSQL and Spark, as the customer draw
(``labkit.assignment.draw``: the hash spelled per backend, text ordered bytewise).

The assignment file gains, for these pilots only, ``cluster`` (the cluster value as text) and, with
``cohort.saturation``, ``saturation`` (the cluster's treated share, a float), so the analysis can form the
cells of a saturation design: customers of pure-control clusters, treated customers, and untreated
customers of treated clusters. A treated cluster is one of share > 0 (a small cluster of a small share
may have no treated customer, by rounding: it is still a treated cluster, as drawn). A pilot without
``unit_column`` is drawn by ``drawn_table``, unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.assignment.cluster_rule import CLUSTER_METHOD, ClusterOutcome, draw_clusters
from labkit.assignment.draw import (
    HELPER,
    US,
    check_ids,
    drawn_meta,
    explain_empty,
    id_key,
    sha256_expr,
    stratum_label,
)
from labkit.assignment.store import cohort_start
from labkit.errors import AssignmentError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.sources import Engine
    from labkit.spec import Pilot

__all__ = ["CLUSTER_METHOD", "check_cluster_type", "cluster_table"]


def cluster_table(engine: Engine, pilot: Pilot) -> tuple[ibis.Table, dict]:
    """The cluster draw as one Ibis expression (customer_id, arm, stratum, assigned_at, cluster[,
    saturation]) and its metadata."""
    import ibis

    from labkit.cohort import eligible
    from labkit.data.backends import sort_key
    from labkit.spec import arm_weights

    c = pilot.spec.cohort
    unit = c.unit_column
    engine.require_columns(c.source, [c.id_column, unit, *c.stratify_by])
    source_table = engine.table(c.source)
    check_ids(engine, pilot, source_table, c.source, c.id_column, f"source '{c.source}'")
    check_cluster_type(source_table, c.source, unit)
    pool = eligible(engine, pilot)
    ID, K, G, L, R = (f"{HELPER}{name}" for name in ("id", "k", "g", "l", "r"))
    strata = [f"{HELPER}s{i}" for i in range(len(c.stratify_by))]
    t = pool.select(
        **{ID: pool[c.id_column], K: id_key(pool[c.id_column]), G: id_key(pool[unit])},
        **{name: pool[col] for name, col in zip(strata, c.stratify_by)},
    )
    t = t.mutate(**{L: stratum_label(t, strata)})
    head = engine.con.to_pyarrow(t.aggregate(n=t.count(), g=t[G].count())).to_pylist()[0]
    n_eligible, with_cluster = int(head["n"]), int(head["g"] or 0)
    if n_eligible == 0:
        explain_empty(engine, pilot, source_table)
    if with_cluster == 0:
        raise AssignmentError(
            pilot.id,
            f"none of the {n_eligible} eligible customers has a {unit}; a cluster-randomised pilot draws "
            "clusters, so every customer needs one",
        )
    t = t.filter(t[G].notnull())
    sizes = engine.con.to_pyarrow(t.group_by([G, L]).aggregate(n=t.count())).to_pylist()
    saturation = list(c.saturation) if c.saturation else None
    weights = arm_weights(c.arms)
    drawn = draw_clusters(
        ((r[G], r[L], int(r["n"])) for r in sizes),
        salt=pilot.salt,
        pilot_id=pilot.id,
        weights=weights,
        max_size=c.max_size,
        max_clusters=c.max_clusters,
        saturation=saturation,
        control=c.control,
    )
    if not drawn.clusters:
        raise AssignmentError(
            pilot.id,
            f"no cluster fits the cap: the first cluster drawn has more than max_size {c.max_size} customers; "
            "raise max_size",
        )
    kept = _kept_table(drawn, saturation is not None)
    t = t.join(kept, t[G] == kept[f"{G}2"])
    if saturation is not None:
        h = sha256_expr(engine.kind, pilot.salt + US + pilot.id + US, t[K])
        t = t.mutate(
            **{R: ibis.row_number().over(group_by=[t[G]], order_by=[h, sort_key(engine.kind, t[K])])}
        )
        treatment = next(a for a in sorted(weights) if a != c.control)
        arm = ibis.ifelse(t[R] < t[f"{HELPER}treated"], treatment, c.control)
    else:
        arm = t[f"{HELPER}arm"]
    start = cohort_start(pilot)
    columns = {
        "customer_id": t[ID],
        "arm": arm.cast("string"),
        "stratum": t[f"{HELPER}stratum"].cast("string"),
        "assigned_at": ibis.literal(start, type="timestamp('UTC')"),
        "cluster": t[G].cast("string"),
    }
    if saturation is not None:
        columns["saturation"] = t[f"{HELPER}share"].cast("float64")
    out = t.select(**columns)
    out = out.order_by(sort_key(engine.kind, out.customer_id))
    id_type = source_table[c.id_column].type()
    return out, _metadata(pilot, drawn, id_type, n_eligible, with_cluster, weights)


def check_cluster_type(table, source: str, unit_column: str) -> None:
    """Cluster values are text or integers: their text, which the keyed hash reads, is then the same on
    every engine (as ids)."""
    utype = table[unit_column].type()
    if not (utype.is_string() or utype.is_integer()):
        raise DataError(
            source,
            f"type {utype} cannot name clusters; cluster values must be text or integers",
            column=unit_column,
        )


def _kept_table(drawn: ClusterOutcome, saturated: bool):
    """The kept clusters as an in-memory table: cluster text, arm, stratum (and share, treated)."""
    import ibis
    import pyarrow as pa

    G2 = f"{HELPER}g2"
    cl = drawn.clusters
    data = {
        G2: pa.array([d.cluster for d in cl], pa.string()),
        f"{HELPER}arm": pa.array([d.arm for d in cl], pa.string()),
        f"{HELPER}stratum": pa.array([d.stratum for d in cl], pa.string()),
    }
    if saturated:
        data[f"{HELPER}share"] = pa.array([d.share for d in cl], pa.float64())
        data[f"{HELPER}treated"] = pa.array([d.treated for d in cl], pa.int64())
    return ibis.memtable(pa.table(data))


def _metadata(
    pilot: Pilot, drawn: ClusterOutcome, id_type, n_eligible: int, with_cluster: int, weights
) -> dict:
    """The drawn assignment's metadata (``drawn_meta``) with ``clusters``: the design, its caps, counts."""
    c = pilot.spec.cohort
    kept = drawn.clusters
    customers = sum(d.size for d in kept)
    no_cluster = n_eligible - with_cluster
    capped = len(kept) < drawn.eligible_clusters
    warnings = []
    if no_cluster:
        warnings.append(
            f"{no_cluster} of {n_eligible} eligible customers have no {c.unit_column} (NULL); they cannot "
            "inherit a cluster's arm and are left out of the pilot"
        )
    if capped:
        cap = f"max_size {c.max_size}" + (f", max_clusters {c.max_clusters}" if c.max_clusters else "")
        warnings.append(
            f"{drawn.eligible_clusters - len(kept)} of {drawn.eligible_clusters} clusters "
            f"({with_cluster - customers} of {with_cluster} customers) were left out by the cap ({cap}), at random"
        )
    arms = sorted(weights)
    clusters = {
        "unit_column": c.unit_column,
        "eligible": drawn.eligible_clusters,
        "assigned": len(kept),
        "max_clusters": c.max_clusters,
        "no_cluster": no_cluster,
        "counts": {a: sum(1 for d in kept if d.arm == a) for a in arms},
    }
    if c.saturation:
        clusters["saturation"] = {f"{s:g}": sum(1 for d in kept if d.share == float(s)) for s in c.saturation}
        clusters["counts"] = {
            "pure_control": sum(1 for d in kept if d.share == 0),
            "saturated": sum(1 for d in kept if d.share != 0),
        }
    return drawn_meta(
        pilot,
        CLUSTER_METHOD,
        id_type,
        eligible=n_eligible,
        capped=capped,
        weights={a: weights[a] for a in arms},
        warnings=warnings,
        extra={"clusters": clusters},
    )
