"""The `labkit analyze --json` contract as types: each block of DESIGN.md's JSON is a frozen dataclass.

``Analysis`` is built once, from blocks that are built once: a later step (the multiplicity adjustment,
the adjusted intervals, the Bayesian summary) makes a new row with :func:`dataclasses.replace`, never
edits one. ``to_dict()`` of each block gives its JSON object with the keys in the contract's order, so
``Analysis.to_dict()`` is byte for byte what `labkit analyze --json` prints and results.json holds.

Every block also reads as its JSON object (``row["lift"]``, ``result.srm["counts"]``, ``row.get("reason")``):
notebooks, results.json readers and the Python API of DESIGN.md index the blocks by field name, and that
keeps working; attributes are the typed way in. No float in a block is NaN or infinite: anything not
finite is None (JSON has neither, and the contract says so).

This module imports nothing heavy (pandas only inside ``Analysis.metrics``): the contract is read by
`labkit list` and the tracking code without the statistics.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit._files import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from labkit.decision import Recommendation, Verdict
    from labkit.over_time import OverTime
    from labkit.stats import Estimate

# The leading keys of every metric entry, in the contract's order (the tracking code logs these).
METRIC_FIELDS = (
    "metric", "role", "type", "arm", "control_arm", "n_control", "n_treatment", "mean_control",
    "mean_treatment", "effect", "ci_low", "ci_high", "lift", "lift_ci_low", "lift_ci_high", "p_value",
    "p_value_adjusted", "method", "variance_reduction",
)  # fmt: skip

# The intervals of an estimate; each has an ``*_adjusted`` twin in a row: the interval at the level that
# matches the row's adjusted p-value (labkit.analysis, multiplicity).
INTERVAL_FIELDS = ("ci_low", "ci_high", "lift_ci_low", "lift_ci_high")

# The `plan` block of an analysis whose primary metric gave no baseline to plan from.
NO_PLAN = {"required_per_arm": None, "mde_at_cap": None, "powered": None}


def finite(x):
    """Floats for JSON: None for anything not finite (never NaN in the contract); ints and bools as is."""
    if x is None or isinstance(x, (bool, int)):
        return x
    x = float(x)
    return x if math.isfinite(x) else None


class Block(Mapping):
    """A contract block that also reads as its JSON object (module docstring): ``block[key]`` is
    ``block.to_dict()[key]``. Subclasses are frozen dataclasses that define ``to_dict``."""

    __slots__ = ()

    def to_dict(self) -> dict:  # pragma: no cover - every block defines it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def _finite_floats(block) -> None:
    """Make every float field of a frozen block finite-or-None (called from ``__post_init__``)."""
    for f in fields(block):
        value = getattr(block, f.name)
        if isinstance(value, float):
            object.__setattr__(block, f.name, finite(value))


class FlatBlock(Block):
    """A block of plain fields: its JSON object is its fields in order, every float finite or None."""

    __slots__ = ()

    def __post_init__(self) -> None:
        _finite_floats(self)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class BayesSummary(FlatBlock):
    """The Bayesian engine's reading of a row's lift (``labkit.stats.bayes_lift``), at level 1 − alpha."""

    posterior_lift: float | None
    posterior_lift_sd: float | None
    credible_low: float | None
    credible_high: float | None
    chance_to_beat: float | None
    expected_loss: float | None


@dataclass(frozen=True)
class MetricQuality(Block):
    """One entry of ``data_quality``: who was assigned and who is missing, per arm, for one metric."""

    assigned: dict[str, int]
    missing: dict[str, int]
    missing_policy: str | None
    covariate: str | None

    def to_dict(self) -> dict:
        return {
            "assigned": dict(self.assigned),
            "missing": dict(self.missing),
            "missing_policy": self.missing_policy,
            "covariate": self.covariate,
        }


@dataclass(frozen=True)
class MetricRow(Block):
    """One entry of ``metrics``: one (metric, treatment arm) comparison.

    The row is its context (metric, role, type, arms), the estimate of the method the metric calls for
    (``labkit.stats.Estimate``, at level 1 − alpha), the metric's data quality (the row shows its two arms'
    counts), and what the later steps of the analysis add: the multiplicity-adjusted p-value with the
    estimate at the matching level, whose intervals are the ``*_adjusted`` keys (None without a p-value),
    and, in the Bayesian engine, the posterior (``bayes``). Its JSON keys follow the contract's order:
    ``METRIC_FIELDS``, the rest of the estimate, the counts, the adjusted intervals, the Bayesian keys
    where the Bayesian engine read the row."""

    metric: str
    role: str  # primary | secondary | guardrail
    type: str  # proportion | mean | ratio | quantile
    arm: str
    control_arm: str
    estimate: Estimate
    quality: MetricQuality
    p_value_adjusted: float | None = None
    adjusted: Estimate | None = None  # the estimate at the level that matches p_value_adjusted
    bayes: BayesSummary | None = None
    clusters: ClusterSummary | None = None  # cluster-randomised pilots only (cohort.unit_column)

    def __post_init__(self) -> None:
        _finite_floats(self)

    @property
    def assigned_treatment(self) -> int:
        """Customers assigned to this row's treatment arm (intent-to-treat: the ROI's multiplier)."""
        return int(self.quality.assigned.get(self.arm, 0))

    def to_dict(self) -> dict:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NESTED}
        estimate = self.estimate.to_dict()
        out = {name: own[name] if name in own else estimate[name] for name in METRIC_FIELDS}
        out |= {k: v for k, v in estimate.items() if k not in out}
        out |= self.clusters.to_dict() if self.clusters is not None else {}
        q, arms = self.quality, {"control": self.control_arm, "treatment": self.arm}
        out |= {f"missing_{side}": int(q.missing.get(arm, 0)) for side, arm in arms.items()}
        out |= {f"assigned_{side}": int(q.assigned.get(arm, 0)) for side, arm in arms.items()}
        out |= {"missing_policy": q.missing_policy, "covariate": q.covariate}
        adjusted = self.adjusted
        out |= {f"{k}_adjusted": getattr(adjusted, k) if adjusted else None for k in INTERVAL_FIELDS}
        return out | (self.bayes.to_dict() if self.bayes is not None else {})


_NESTED = ("estimate", "quality", "adjusted", "bayes", "clusters")  # MetricRow's fields that are blocks


@dataclass(frozen=True)
class ClusterSummary(FlatBlock):
    """A cluster-randomised pilot's fields of a metric entry (``labkit.clustered``): the clusters of the two
    compared groups, the intra-cluster correlation and the design effect (None where they do not apply:
    a ratio metric has no customer-level ICC)."""

    n_clusters_control: int
    n_clusters_treatment: int
    icc: float | None
    design_effect: float | None


@dataclass(frozen=True)
class SpilloverRow(FlatBlock):
    """One entry of ``spillover`` (``cohort.saturation``): the effect on treated customers and on untreated
    customers of treated clusters, each against customers of pure-control clusters (``labkit.clustered``)."""

    metric: str
    arm: str
    direct_effect: float | None
    direct_ci_low: float | None
    direct_ci_high: float | None
    spillover_effect: float | None
    spillover_ci_low: float | None
    spillover_ci_high: float | None
    n_clusters: int


@dataclass(frozen=True)
class SrmSummary(Block):
    """The ``srm`` block: the sample-ratio check of the arms' sizes against the planned allocation."""

    p_value: float | None
    ok: bool
    counts: dict[str, int]
    expected: dict[str, float | None]
    method: str

    def __post_init__(self) -> None:
        _finite_floats(self)

    @classmethod
    def of(cls, srm) -> SrmSummary:
        """From ``labkit.stats.srm_test``'s result."""
        return cls(
            p_value=finite(srm.p_value),
            ok=bool(srm.ok),
            counts=dict(srm.counts),
            expected={k: finite(v) for k, v in srm.expected.items()},
            method=srm.method,
        )

    def to_dict(self) -> dict:
        return {
            "p_value": self.p_value,
            "ok": self.ok,
            "counts": dict(self.counts),
            "expected": dict(self.expected),
            "method": self.method,
        }


@dataclass(frozen=True)
class RoiSummary(Block):
    """The ``roi`` block (``labkit.roi``): the value of the change with its interval, the cost and ROI."""

    value: float | None
    value_ci_low: float | None
    value_ci_high: float | None
    cost: float
    roi: float | None
    roi_ci_low: float | None
    roi_ci_high: float | None
    value_per_unit: float

    def __post_init__(self) -> None:
        for name in ("value", "value_ci_low", "value_ci_high", "roi", "roi_ci_low", "roi_ci_high"):
            object.__setattr__(self, name, finite(getattr(self, name)))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Plan(Block):
    """A power analysis (``labkit.planning``); ``to_dict()`` is the ``plan`` block of the contract."""

    pilot: str
    metric: str
    baseline_mean: float | None
    baseline_sd: float | None
    baseline_n: int
    baseline_from: str  # "control arm" | "assignment" | "eligible" | "assumption" (labkit.planning)
    mde_abs: float | None
    mde_relative: float | None
    alpha: float
    power: float
    required_per_arm: int | None = None
    required_total: int | None = None
    mde_at_cap: float | None = None  # absolute, on the metric's scale
    mde_at_cap_relative: float | None = None
    powered: bool | None = None
    warnings: tuple[str, ...] = ()
    required_by_arm: dict[str, int] | None = None  # every arm's size under the planned allocation
    # cluster-randomised pilots only (labkit.planning, cohort.unit_column): None for every other pilot
    clusters_per_arm: int | None = None
    icc: float | None = None
    design_effect: float | None = None

    def to_dict(self) -> dict:
        """The `plan` block of the JSON contract, plus the baseline it rests on."""
        return {
            "required_per_arm": self.required_per_arm,
            "required_by_arm": dict(self.required_by_arm) if self.required_by_arm else None,
            "required_total": self.required_total,
            "mde_at_cap": self.mde_at_cap,
            "mde_at_cap_relative": self.mde_at_cap_relative,
            "powered": self.powered,
            "mde_abs": self.mde_abs,
            "baseline_mean": self.baseline_mean,
            "baseline_sd": self.baseline_sd,
            "baseline_n": self.baseline_n,
            "baseline_from": self.baseline_from,
            "alpha": self.alpha,
            "power": self.power,
            **self._cluster_fields(),
            "warnings": list(self.warnings),
        }

    def _cluster_fields(self) -> dict:
        """``clusters_per_arm``, ``icc``, ``design_effect``: present for a cluster pilot (an ICC) only."""
        if self.icc is None:
            return {}
        return {
            "clusters_per_arm": self.clusters_per_arm,
            "icc": self.icc,
            "design_effect": self.design_effect,
        }


@dataclass(frozen=True)
class Analysis:
    """The result of analysing one pilot; ``to_dict()`` is the `labkit analyze --json` contract.

    ``decision`` and ``reason`` repeat the verdict's (the API of DESIGN.md reads ``.decision``); ``plan`` is
    None when the primary metric gave no baseline (the JSON then carries ``NO_PLAN``); ``advice`` is the
    decision weighed with the ROI (``labkit.decision.recommend``), None only for an Analysis built by hand."""

    pilot: str
    decision: str
    reason: str
    verdict: Verdict
    srm: SrmSummary
    metric_rows: tuple[MetricRow, ...]
    plan: Plan | None
    roi: RoiSummary | None
    warnings: tuple[str, ...] = ()
    data_quality: dict[str, MetricQuality] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    advice: Recommendation | None = None
    # `analysis.segments` only (labkit.segments.SegmentRow, HeterogeneityRow): None, and absent from the JSON,
    # for a pilot without segments
    segments: tuple | None = None
    heterogeneity: tuple | None = None
    # `cohort.saturation` only (SpilloverRow): None, and absent from the JSON, for any other pilot
    spillover: tuple | None = None
    # asked for only (`labkit analyze --over-time`, labkit.over_time.OverTime): None, and absent from the JSON
    over_time: OverTime | None = None

    @property
    def recommendation(self) -> str | None:
        """scale | rework | extend | stop | fix (DESIGN.md): what to do next, the economics included."""
        return self.advice.recommendation if self.advice else None

    @property
    def recommendation_text(self) -> str:
        """The recommendation as a notebook shows it: ``**rework** (arm 'x'). <one sentence>``."""
        if self.advice is None:
            return ""
        arm = f" (arm '{self.advice.arm}')" if self.advice.arm else ""
        return f"**{self.advice.recommendation}**{arm}. {self.advice.reason}"

    @property
    def metrics(self):
        """One row per (metric, treatment arm), as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([r.to_dict() for r in self.metric_rows])

    def to_dict(self) -> dict:
        return {
            "pilot": self.pilot,
            "decision": self.decision,
            "reason": self.reason,
            "decision_code": self.verdict.code,
            "srm": self.srm.to_dict(),
            "metrics": [r.to_dict() for r in self.metric_rows],
            "plan": self.plan.to_dict() if self.plan is not None else dict(NO_PLAN),
            "roi": self.roi.to_dict() if self.roi is not None else None,
            "recommendation": self.recommendation,
            "recommendation_arm": self.advice.arm if self.advice else None,
            "recommendation_reason": self.advice.reason if self.advice else None,
            "warnings": list(self.warnings),
            "data_quality": {name: q.to_dict() for name, q in self.data_quality.items()},
            **self._segment_blocks(),
            **({"spillover": [r.to_dict() for r in self.spillover]} if self.spillover is not None else {}),
            **(self.over_time.to_dict() if self.over_time is not None else {}),
            "meta": dict(self.meta),
        }

    def _segment_blocks(self) -> dict:
        """The `segments` and `heterogeneity` blocks, present only when the pilot declares segments."""
        if self.segments is None:
            return {}
        return {
            "segments": [r.to_dict() for r in self.segments],
            "heterogeneity": [h.to_dict() for h in self.heterogeneity or ()],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, directory: str | os.PathLike, *, run_token: str | None = None) -> Path:
        """Write results.json into ``directory`` atomically (temp file, fsync, rename).

        ``run_token`` (set by `labkit run`) is written into ``meta.run_token``: the runner counts a
        notebook as complete only when results.json carries the token of its own run."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "results.json"
        data = self.to_dict()
        if run_token:
            data["meta"] = {**data["meta"], "run_token": run_token}
        write_atomic(target, json.dumps(data, indent=2, allow_nan=False) + "\n")
        return target

    def _repr_html_(self) -> str:
        import html

        shown = ("metric", "role", "arm", "effect", "ci_low", "ci_high", "lift", "p_value_adjusted", "method")
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in shown) + "</tr>"
            for r in self.metric_rows
        )
        head = "".join(
            f"<th>{k}</th>"
            for k in ("metric", "role", "arm", "effect", "ci low", "ci high", "lift", "p (adj.)", "method")
        )
        advice = (
            f"<p>Recommendation: <b>{html.escape(self.advice.recommendation)}</b> — "
            f"{html.escape(self.advice.reason)}</p>"
            if self.advice
            else ""
        )
        return (
            f"<p><b>{html.escape(self.pilot)}</b>: <b>{html.escape(self.decision)}</b> — "
            f"{html.escape(self.reason)}</p>{advice}<table><tr>{head}</tr>{rows}</table>"
        )


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
