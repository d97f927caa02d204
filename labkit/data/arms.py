"""Per-arm rows of a metric's query -> ``MetricData``: moments per arm in the pilot's arm order, quantile
values, and for an imported assignment randomised within blocks the (arm, stratum) cells pooled into arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from labkit.data.query import ARM, CELL, Y
from labkit.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import numpy

    from labkit.data.sources import Engine
    from labkit.spec import Metric, Pilot
    from labkit.stats.moments import ArmMoments


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


def arm_order(pilot: Pilot, seen) -> list[str]:
    """The pilot's arms in its file's order, then any other arm the data holds, sorted."""
    return list(pilot.arms) + sorted(a for a in seen if a not in pilot.arms)


def metric_data(metric, prefix, rows, assigned, order, values, covariate) -> MetricData:
    """One metric's columns (``prefix``) of the per-arm rows as MetricData; an arm without rows is empty."""
    from labkit.stats.moments import ArmMoments

    arms = {str(r[ARM]): arm_moments(r, metric, prefix) for r in rows}
    missing = {str(r[ARM]): int(r[prefix + "missing"] or 0) for r in rows}
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


def arm_moments(row: dict, metric: Metric, prefix: str) -> ArmMoments:
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


def quantile_values(engine: Engine, pc: ibis.Table, order: list[str]) -> dict:
    """The raw per-customer values per arm (quantile metrics only), sorted so a seeded bootstrap repeats."""
    import numpy as np

    table = engine.con.to_pyarrow(pc.filter(pc[Y].notnull()).select(ARM, Y))
    arms = np.asarray(table.column(ARM).to_pylist(), dtype=object)
    ys = table.column(Y).to_numpy(zero_copy_only=False).astype("float64")
    out = {a: np.sort(ys[arms == a]) for a in order}
    for a in sorted(set(arms.tolist()) - set(order)):
        out[a] = np.sort(ys[arms == a])
    return out


def post_stratified(pilot: Pilot) -> bool:
    """An imported assignment randomised within blocks is aggregated per (arm, stratum) cell."""
    a = pilot.spec.cohort.assignment
    return a is not None and bool(a.strata)


def by_arm(pilot: Pilot, md: MetricData) -> MetricData:
    """Per-cell statistics (keys ``arm<US>stratum``) pooled into arms, the cells kept in ``strata``."""
    from dataclasses import replace

    from labkit.stats.moments import ArmMoments

    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    cells: dict[str, dict[str, ArmMoments]] = {}
    assigned: dict[str, int] = {}
    missing: dict[str, int] = {}
    for key, moments in md.arms.items():
        if CELL not in key:  # the pilot's arms, listed (empty) before the cells the query returned
            continue
        arm, _, stratum = key.partition(CELL)
        cells.setdefault(arm, {})[stratum] = moments
        assigned[arm] = assigned.get(arm, 0) + md.assigned.get(key, 0)
        missing[arm] = missing.get(arm, 0) + md.missing.get(key, 0)
    order = arm_order(pilot, cells)
    values = None
    if md.values is not None:  # the spec refuses quantiles with strata; kept whole for other callers
        import numpy as np

        values = {
            a: np.sort(np.concatenate([v for k, v in md.values.items() if k.partition(CELL)[0] == a] or [[]]))
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
