"""For whom does it work? The primary metric's effect per segment, and the arm × segment interaction test
(``analysis.segments``; DESIGN.md, "Segments", and the JSON's ``segments`` and ``heterogeneity`` blocks).

A segment is a column of the cohort source (``segment``, ``region``): each assigned customer's value is
left-joined from it on the pilot's id column. The data side is the primary metric's own query
(``labkit.data.query``: its windows, missing policies and data checks, unchanged) over units whose group key
is the (arm, segment value) pair instead of the arm — the pattern of the post-stratified (arm, stratum)
cells and of the cluster totals (``labkit.data.clusters``) — so ONE ``GROUP BY`` per segment column returns
one row per (arm, value) and no customer row leaves the engine (a quantile metric adds its values query, as
overall). A customer absent from the cohort source, or whose value is NULL, is in the segment ``null``.
A cluster-randomised pilot (``cohort.unit_column``) reads each value's cluster totals instead
(``labkit.data.clusters.cluster_totals`` on that value's customers: within a segment, the clusters' parts are
still the independent units), so its per-segment effects are cluster-robust like its overall ones.

Per segment value and treatment arm the effect is estimated by the method the metric uses overall
(``labkit.methods.estimate``: z/Barnard, Welch, CUPED, delta method, bootstrap, post-stratified blocks,
sequential widening), with the interval at level 1 − alpha (unadjusted, as its raw p-value); the p-values of
every (column, value, arm) row form one family, corrected by the pilot's ``analysis.correction``
(``p_value_adjusted``). A cell (value, arm) whose control or treatment arm counts fewer customers than the
lab's ``privacy.min_cell_size`` is withheld: every number of its row is None (``reason``
``suppressed_small_cell``), it enters neither the family nor the interaction test, and a warning says so.

``heterogeneity``: per column and treatment arm, the F test of the arm × segment interaction
(``labkit.stats.heterogeneity.interaction_test``) on the cells' n, mean and sum of squared deviations of the
customer-level outcome (for proportions and means; None for ratios and quantiles, whose outcome is not a
per-customer mean, and for cluster pilots, whose customers are not independent). It is a fixed-horizon
test, also in sequential mode.

``exploratory``: a segment column that the pilot's first recorded run did not declare (its MLflow params,
``analysis.segments``) was chosen after data were seen. The store is read only when the pilot declares
segments and a store exists, through ``labkit.tracking``'s reader (imported here, lazily: a sqlite store is
read with plain SELECTs, without MLflow); with no run yet, the segments are pre-registered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from labkit.result import Block, finite

if TYPE_CHECKING:  # pragma: no cover
    import ibis

    from labkit.data.arms import MetricData
    from labkit.data.sources import Engine
    from labkit.result import Analysis
    from labkit.spec import Pilot

__all__ = [
    "HeterogeneityRow", "SegmentRow", "cluster_segment_cells", "registered_segments", "segment_cells",
    "segment_results", "with_segments",
]  # fmt: skip

# The separator of the segment in a group key (``arm[<US>stratum]<RS>=value``; ``arm<RS>`` for NULL): the
# stratum's separator is ``labkit.data.query.CELL`` (\x1f), arm names are [a-z0-9_].
SEG = "\x1e"
SUPPRESSED = "suppressed_small_cell"
PARAM_SEGMENTS = "analysis.segments"  # the flattened spec's param (labkit.tracking.record.flatten_params)


class _Row(Block):
    """A row of the two blocks: every field in the JSON, in field order; floats finite or None."""

    __slots__ = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), float):
                object.__setattr__(self, f.name, finite(getattr(self, f.name)))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SegmentRow(_Row):
    """One entry of ``segments``: the primary metric's effect in one segment value for one treatment arm.
    The contract's keys, then the method and the reason (``suppressed_small_cell`` for a withheld cell)."""

    column: str
    value: str | None
    metric: str
    arm: str
    n_control: int | None
    n_treatment: int | None
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    lift: float | None
    p_value: float | None
    p_value_adjusted: float | None
    exploratory: bool
    method: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class HeterogeneityRow(_Row):
    """One entry of ``heterogeneity``: does the arm's effect differ between the column's segments?"""

    column: str
    metric: str
    arm: str
    p_value: float | None


# --------------------------------------------------------------------------- the recipe


def with_segments(
    result: Analysis, engine: Engine, pilot: Pilot, units: ibis.Table, data: dict, *, as_of=None
) -> Analysis:
    """The analysis with its ``segments`` and ``heterogeneity`` blocks and their warnings; the analysis as it
    is when the pilot declares no segments (its JSON then has neither block)."""
    columns = pilot.spec.analysis.segments
    if not columns:
        return result
    if pilot.spec.cohort.unit_column is not None:
        cells = {c: cluster_segment_cells(engine, pilot, units, c, as_of=as_of) for c in columns}
    else:
        units_n = sum(data[pilot.primary.name].assigned.values())
        cells = {c: segment_cells(engine, pilot, units, c, as_of=as_of, units_n=units_n) for c in columns}
    registered, note = registered_segments(pilot)
    rows, het, warnings = segment_results(pilot, cells, registered)
    return replace(
        result,
        segments=tuple(rows),
        heterogeneity=tuple(het),
        warnings=(*result.warnings, *warnings, *([note] if note else [])),
    )


def segment_results(
    pilot: Pilot, cells: dict[str, dict[str | None, MetricData]], registered: frozenset[str] | None
) -> tuple[list[SegmentRow], list[HeterogeneityRow], list[str]]:
    """Pure given the per-(value, arm) statistics: the rows (adjusted as one family), the interaction tests
    and the warnings (withheld cells, exploratory columns)."""
    from labkit import stats
    from labkit.methods import estimate

    s = pilot.settings
    floor = pilot.lab.spec.privacy.min_cell_size
    metric = pilot.primary.name
    rows: list[SegmentRow] = []
    het: list[HeterogeneityRow] = []
    withheld: list[str] = []
    for column, by_value in cells.items():
        exploratory = registered is not None and column not in registered
        for arm in pilot.treatments:
            shown: dict[str | None, MetricData] = {}
            for value, md in by_value.items():
                base = dict(column=column, value=value, metric=metric, arm=arm, exploratory=exploratory)
                if _smallest(md, pilot.control, arm) < floor:
                    withheld.append(f"{column}={'null' if value is None else value} ({arm})")
                    rows.append(SegmentRow(**base, **_EMPTY, reason=SUPPRESSED))
                    continue
                shown[value] = md
                est = estimate(pilot, md, arm, alpha=s.alpha)
                rows.append(
                    SegmentRow(
                        **base, n_control=est.n_control, n_treatment=est.n_treatment, effect=est.effect,
                        ci_low=est.ci_low, ci_high=est.ci_high, lift=est.lift, p_value=est.p_value,
                        p_value_adjusted=None, method=est.method, reason=est.reason,
                    )
                )  # fmt: skip
            het.append(HeterogeneityRow(column, metric, arm, _interaction(pilot, shown, arm)))
    adjusted = stats.adjust([r.p_value for r in rows], s.correction)
    rows = [replace(r, p_value_adjusted=p) for r, p in zip(rows, adjusted)]
    warnings = []
    if withheld:
        warnings.append(
            f"analysis.segments: fewer than {floor} customers in an arm of {len(withheld)} segment cell(s), "
            f"so their effects are withheld (privacy.min_cell_size): {_listed(withheld)}"
        )
    late = [c for c in cells if registered is not None and c not in registered]
    if late:
        one = len(late) == 1
        warnings.append(
            f"analysis.segments: {', '.join(late)} {'was' if one else 'were'} added after the pilot's first "
            f"run, so {'its' if one else 'their'} per-segment effects are exploratory, not pre-registered"
        )
    return rows, het, warnings


_EMPTY = dict.fromkeys(
    ("n_control", "n_treatment", "effect", "ci_low", "ci_high", "lift", "p_value", "p_value_adjusted")
)


def _smallest(md: MetricData, control: str, arm: str) -> int:
    """The customers counted in the smaller of the two arms of a cell (a quantile's values)."""
    if md.values is not None:
        return min(len(md.values.get(control, ())), len(md.values.get(arm, ())))
    return min(md.arms[control].n, md.arms[arm].n)


def _listed(items: list[str], most: int = 8) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _interaction(pilot: Pilot, shown: dict[str | None, MetricData], arm: str) -> float | None:
    """The interaction test's p-value over the shown cells of one arm against control (None when the
    metric's outcome is not a per-customer mean, or the test is not estimable)."""
    from labkit.stats.heterogeneity import interaction_test

    if pilot.primary.type not in ("proportion", "mean") or len(shown) < 2 or pilot.spec.cohort.unit_column:
        return None  # a cluster pilot's customers are not independent: the customer-level F test would lie
    segment, arms, n, mean, m2 = [], [], [], [], []
    for value, md in shown.items():
        for a in (pilot.control, arm):
            m = md.arms[a]
            segment.append("\x00null" if value is None else value)
            arms.append(a)
            n.append(m.n)
            mean.append(m.sum / m.n if m.n else 0.0)
            m2.append(max(m.sum_sq - m.sum * m.sum / m.n, 0.0) if m.n else 0.0)
    test = interaction_test(segment, arms, n, mean, m2)
    return test.p_value if test is not None else None


# --------------------------------------------------------------------------- the data side


def segment_cells(
    engine: Engine, pilot: Pilot, units: ibis.Table, column: str, *, as_of=None, units_n: int | None = None
) -> dict[str | None, MetricData]:
    """The primary metric per value of ``column`` (text; None for customers without one): one
    ``MetricData`` per value, each with every arm of the pilot, in ONE ``GROUP BY`` (arm, value) query.
    ``units_n`` is the assigned customers' count, when known (the duplicate check then needs no query)."""
    from labkit.data.arms import arm_order, by_arm, metric_data, post_stratified, quantile_values
    from labkit.data.checks import raise_on_checks, raise_on_duplicates
    from labkit.data.query import ARM, UNIT, build_metric, build_tables, id_match, renamed_units

    metric = pilot.primary
    source, idc = pilot.spec.cohort.source, pilot.spec.cohort.id_column
    stratified = post_stratified(pilot)
    plain = renamed_units(units, by_stratum=stratified)
    engine.require_columns(source, [idc, column])
    t = engine.table(source)
    side = t.select(_lk_sid=t[idc], _lk_seg=t[column].cast("string"))
    j = plain.left_join(side, id_match(plain[UNIT], side["_lk_sid"]))
    key = j[ARM] + SEG + ("=" + j["_lk_seg"]).fill_null("")
    u = j.select(**({c: j[c] for c in plain.columns} | {ARM: key}))
    built = build_metric(engine, pilot, metric, u, as_of=as_of)
    rows = engine.con.to_pyarrow(built.summary).to_pylist()
    # a customer twice in the cohort source doubles its rows: named like a metric source's duplicates
    checked = replace(built, sources={**built.sources, source: [column]})
    raise_on_duplicates(engine, pilot, checked, u, rows, units_n=units_n)
    raise_on_checks(rows, built.checks)
    values = None
    if metric.type == "quantile":
        values = quantile_values(engine, build_tables(engine, pilot, [metric], u).per_customer, [])
    by_value: dict[str | None, list[dict]] = {}
    for r in rows:
        cell, _, rest = str(r[ARM]).partition(SEG)
        by_value.setdefault(rest[1:] if rest else None, []).append({**r, ARM: cell})
    out = {}
    for value in sorted(by_value, key=lambda v: (v is None, v or "")):
        own = by_value[value]
        assigned = {str(r[ARM]): int(r["rows"]) for r in own}
        order = arm_order(pilot, assigned)
        mine = None
        if values is not None:
            tail = SEG + ("" if value is None else "=" + value)
            mine = {k[: -len(tail)]: v for k, v in values.items() if k.endswith(tail)}
            mine = {a: mine.get(a, _no_values()) for a in order} | mine
        md = metric_data(metric, "", own, assigned, order, mine, built.covariates[metric.name])
        out[value] = by_arm(pilot, md) if stratified else md
    return out


def cluster_segment_cells(
    engine: Engine, pilot: Pilot, units: ibis.Table, column: str, *, as_of=None
) -> dict:
    """A cluster-randomised pilot's primary metric per value of ``column``: the cluster totals
    (``labkit.data.clusters.cluster_totals``) of each value's customers — within one segment the clusters'
    parts are still the independent units — so each value's estimate is the cluster-robust one of the
    overall analysis (``labkit.clustered``). One query for the values, then one per value."""
    import ibis

    from labkit.clustered import of_totals
    from labkit.data.clusters import cluster_totals
    from labkit.data.query import id_match

    source, idc = pilot.spec.cohort.source, pilot.spec.cohort.id_column
    engine.require_columns(source, [idc, column])
    t = engine.table(source)
    side = t.select(_lk_sid=t[idc], _lk_seg=t[column].cast("string"))
    j = units.left_join(side, id_match(units["customer_id"], side["_lk_sid"]))
    found = engine.con.to_pyarrow(j.select("_lk_seg").distinct()).column(0).to_pylist()
    shares = None
    if pilot.spec.cohort.saturation:  # each cluster's drawn treated share, as the overall analysis reads it
        pairs = engine.con.to_pyarrow(units.select("cluster", "saturation").distinct()).to_pylist()
        shares = {str(r["cluster"]): float(r["saturation"]) for r in pairs}
    out = {}
    for value in sorted(found, key=lambda v: (v is None, v or "")):
        match = j["_lk_seg"].isnull() if value is None else j["_lk_seg"] == ibis.literal(value)
        mine = j.filter(match).select(*units.columns)
        totals = cluster_totals(
            engine, pilot, pilot.primary, mine, pilot.spec.cohort.unit_column, as_of=as_of
        )
        out[value] = of_totals(pilot, totals, shares)
    return out


def _no_values():
    import numpy as np

    return np.array([], dtype="float64")


# --------------------------------------------------------------------------- pre-registration


def registered_segments(pilot: Pilot) -> tuple[frozenset[str] | None, str | None]:
    """The segment columns the pilot's first recorded run declared (its ``analysis.segments`` param; empty
    when it declared none), or None when no run is recorded yet (the segments are then pre-registered);
    with a note when the store could not be read (the segments are then taken as pre-registered)."""
    import sqlite3

    from labkit.errors import TrackingError
    from labkit.tracking import check_store_exists, open_runs

    try:
        check_store_exists(pilot.lab)  # a sqlite store not created yet: no run, nothing to open
    except TrackingError:
        return None, None
    try:
        store = open_runs(pilot.lab)
        try:
            runs = [r for r in store.pilot_runs() if r["pilot"] == pilot.id]  # any status, any function
        finally:
            store.close()
    except (TrackingError, sqlite3.Error) as exc:  # a store being migrated or locked: said, not fatal
        return None, (
            f"analysis.segments: the first run's segments could not be read ({exc}); none is labelled "
            "exploratory"
        )
    if not runs:
        return None, None
    first = min(runs, key=lambda r: (r["start_time"] is None, r["start_time"] or 0.0, r["run_id"]))
    declared = first["params"].get(PARAM_SEGMENTS)
    try:
        names = json.loads(declared) if declared else []
    except ValueError:
        names = []
    return frozenset(str(n) for n in names if isinstance(n, str)), None
