"""The rows of the leadership view: one ``PilotRow`` per pilot read from its latest run, one ``GroupSummary``
per function, channel or stage, and the ``Portfolio`` with its one-line answer. The definitions of every
field are in ``labkit.compare``'s docstring; ``pilot_row`` reads a run as ``labkit.tracking.reader`` returns
it (tags, params and metrics named in ``labkit.tracking.record``)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field

from labkit.decision import recommendation_of
from labkit.tracking.record import (
    NOTE,
    PARAM_ALPHA,
    PARAM_DIRECTION,
    PARAM_METRIC,
    PARAM_STATEMENT,
    TAG_CHANNEL,
    TAG_DATA_CHANGED,
    TAG_DECISION,
    TAG_DIRECTION,
    TAG_FUNCTION,
    TAG_PRIMARY,
    TAG_RECOMMENDATION,
    TAG_RECOMMENDATION_ARM,
    TAG_RUN_KEY,
    TAG_SPEC_CHANGED,
    TAG_STAGE,
    TAG_TITLE,
)

FLOAT_LIMIT = 1e300  # tracking stores ±inf as ±1.8e308: anything this large is an unbounded interval


@dataclass(frozen=True)
class PilotRow:
    """One pilot's latest finished run, as leadership reads it (``labkit.compare``'s docstring defines it)."""

    pilot: str
    function: str | None
    channel: str | None
    stage: str | None
    title: str | None
    hypothesis: str | None
    primary_metric: str | None
    direction: str
    arm: str | None
    arms: int
    effect: float | None
    effect_ci_low: float | None
    effect_ci_high: float | None
    lift: float | None
    lift_ci_low: float | None
    lift_ci_high: float | None
    gain: float | None
    gain_ci_low: float | None
    gain_ci_high: float | None
    p_value_adjusted: float | None
    decision: str | None
    exposed: int | None
    cost: float | None
    value: float | None
    value_ci_low: float | None
    value_ci_high: float | None
    roi: float | None
    roi_ci_low: float | None
    roi_ci_high: float | None
    spec_changed: bool
    data_changed: bool
    running: bool
    alpha: float
    run_id: str
    run_name: str | None
    started_at: str | None
    description: str | None
    lift_se: float | None = None  # delta-method se of the lift: the pooled gain's variance is its square
    # the decision weighed with the ROI (scale | rework | extend | stop | fix) and the arm it names
    recommendation: str | None = None
    recommendation_arm: str | None = None
    run_url: str | None = None  # the run in the MLflow UI, when the store is a tracking server (http)
    run_folder: str | None = None  # results/<pilot>/runs/<stamp>/ relative to the lab root, when known
    notebook_report: str | None = None  # its notebook's HTML report, relative to the lab root, when it exists

    def to_dict(self) -> dict:
        return asdict(self)

    def gain_variance(self) -> float | None:
        """The sampling variance the meta-analysis gives this pilot's gain (``labkit.compare``), or None."""
        if self.gain is None:
            return None
        if self.lift_se is not None and math.isfinite(self.lift_se) and self.lift_se > 0:
            return self.lift_se * self.lift_se
        lo, hi = self.gain_ci_low, self.gain_ci_high
        if lo is None or hi is None or not hi > lo or max(abs(lo), abs(hi)) >= FLOAT_LIMIT:
            return None
        return ((hi - lo) / (2 * _z(self.alpha))) ** 2


@dataclass(frozen=True)
class GroupSummary:
    """One function, channel or stage: tally, win rate, pooled gain with heterogeneity, value and ROI."""

    group: str
    pilots: int
    decisions: dict[str, int]
    decided: int
    win_rate: float | None
    pooled_k: int
    pooled_gain: float | None
    pooled_gain_ci_low: float | None
    pooled_gain_ci_high: float | None
    pooled_p_value: float | None
    tau2: float | None
    i2: float | None
    q: float | None
    note: str | None
    value: float | None
    value_ci_low: float | None
    value_ci_high: float | None
    cost: float | None
    roi: float | None
    roi_ci_low: float | None
    roi_ci_high: float | None
    without_value: int
    pilot_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pilot_ids"] = list(self.pilot_ids)
        return out


@dataclass(frozen=True)
class Portfolio:
    """The leadership view: pilots, groups and the one-line answer; ``to_dict()`` is the JSON format."""

    lab: str
    experiment: str
    store: str
    currency: str
    by: str
    alpha: float
    filters: dict
    generated_at: str
    pilots: tuple[PilotRow, ...]
    groups: tuple[GroupSummary, ...]
    running_only: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    root: str | None = field(default=None, repr=False)  # the lab root, for the report's relative links only

    @property
    def answer(self) -> str:
        """Which group gives the biggest return, and whether the intervals settle it."""
        ranked = [g for g in self.groups if g.roi is not None]
        if not ranked:
            return f"no {self.by} has a value estimate yet: no ROI to compare"
        best = ranked[0]
        text = (
            f"highest ROI: {self.by} '{best.group}', {_pct(best.roi)} "
            f"[{_pct(best.roi_ci_low)}, {_pct(best.roi_ci_high)}] over {best.pilots} pilot(s)"
        )
        if len(ranked) > 1:
            second = ranked[1]
            if best.roi_ci_low is not None and second.roi_ci_high is not None:
                if best.roi_ci_low <= second.roi_ci_high:
                    text += (
                        f"; its interval overlaps '{second.group}' ({_pct(second.roi)}), "
                        "so the ranking is not settled"
                    )
                else:
                    text += f"; clearly ahead of '{second.group}' ({_pct(second.roi)})"
        if best.roi_ci_low is not None and best.roi_ci_low < 0 <= (best.roi_ci_high or 0):
            text += "; break-even is inside its interval"
        return text

    def to_dict(self) -> dict:
        return {
            "lab": self.lab,
            "experiment": self.experiment,
            "store": self.store,
            "currency": self.currency,
            "by": self.by,
            "alpha": self.alpha,
            "filters": dict(self.filters),
            "generated_at": self.generated_at,
            "answer": self.answer,
            "groups": [g.to_dict() for g in self.groups],
            "pilots": [p.to_dict() for p in self.pilots],
            "running_only": list(self.running_only),
            "warnings": list(self.warnings),
        }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1%}"


def _number(value) -> float | None:
    """A stored metric as a float, or None where it stands for ±inf (tracking's 1.8e308) or is missing."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or abs(value) >= FLOAT_LIMIT:
        return None
    return value


def _share(metrics: dict, key: str) -> float | None:
    """ROI (``roi``, ``roi_ci_low``, ``roi_ci_high``) exactly as the analysis defines it, (value − cost) /
    cost from the run's ``value`` (or its bound) and ``cost``; else the rounded percentage the run shows
    (``roi_pct`` …), else the fraction runs recorded before logged (``roi`` …)."""
    value = _number(metrics.get(key.replace("roi", "value", 1)))
    cost = _number(metrics.get("cost"))
    if value is not None and cost:
        return (value - cost) / cost
    pct = _number(metrics.get(key.replace("roi", "roi_pct", 1)))
    return pct / 100 if pct is not None else _number(metrics.get(key))


def _run_folder(run_key: str | None) -> str | None:
    """The run's output folder, ``results/<pilot>/runs/<stamp>``, from its run key ``<pilot>/<stamp>``
    (`labkit run`'s layout); None for a key of another shape."""
    if not run_key or run_key.count("/") != 1 or ".." in run_key:
        return None
    pilot, stamp = run_key.split("/")
    return f"results/{pilot}/runs/{stamp}" if pilot and stamp else None


def _z(alpha: float) -> float:
    from scipy.special import ndtri

    return float(ndtri(1 - alpha / 2))


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pilot_row(run: dict, *, default_alpha: float, results_meta=None) -> PilotRow:
    """One ``Tracker.latest_runs()`` entry as a row; ``results_meta(run)`` gives results.json's meta."""
    tags, params, metrics = run["tags"], run["params"], run["metrics"]
    meta: dict | None = None

    def from_meta(key: str):
        nonlocal meta
        if meta is None:
            meta = (results_meta(run) if results_meta else None) or {}
        return meta.get(key)

    primary = tags.get(TAG_PRIMARY) or params.get(PARAM_METRIC) or from_meta("primary_metric")
    direction = params.get(PARAM_DIRECTION) or tags.get(TAG_DIRECTION)
    if direction not in ("increase", "decrease"):
        direction = from_meta("direction")
    direction = direction if direction in ("increase", "decrease") else "increase"
    sign = 1.0 if direction == "increase" else -1.0
    try:
        alpha = float(params.get(PARAM_ALPHA) or default_alpha)
    except ValueError:
        alpha = default_alpha

    arms: dict[str, dict[str, float | None]] = {}
    if primary:
        prefix = f"{primary}."
        for name, value in metrics.items():
            if name.startswith(prefix) and "." in name[len(prefix) :]:
                arm, key = name[len(prefix) :].rsplit(".", 1)
                arms.setdefault(arm, {})[key] = _number(value)

    def gain_of(numbers: dict) -> float | None:
        lift = numbers.get("lift")
        return None if lift is None else sign * lift

    best_arm = None
    if arms:
        # the best treatment arm by gain; arms without a lift come last, ties by name
        best_arm = min(arms, key=lambda a: (gain_of(arms[a]) is None, -(gain_of(arms[a]) or 0.0), a))
    chosen = arms.get(best_arm, {})
    lift, lo, hi = chosen.get("lift"), chosen.get("lift_ci_low"), chosen.get("lift_ci_high")
    gain = None if lift is None else sign * lift
    gain_lo = gain_hi = None
    if lo is not None and hi is not None:
        gain_lo, gain_hi = sorted((sign * lo, sign * hi))

    decision = tags.get(TAG_DECISION) or from_meta("decision")
    roi = _share(metrics, "roi")
    recommendation = tags.get(TAG_RECOMMENDATION) or recommendation_of(decision, roi)
    exposed = _number(metrics.get("exposed"))
    if exposed is None:
        counts = [v for k, v in metrics.items() if k.startswith("srm.counts.")]
        exposed = float(sum(counts)) if counts else None
    return PilotRow(
        pilot=run["pilot"],
        function=tags.get(TAG_FUNCTION) or params.get("function"),
        channel=tags.get(TAG_CHANNEL) or params.get("channel"),
        stage=tags.get(TAG_STAGE) or params.get("stage"),
        title=tags.get(TAG_TITLE) or params.get("title"),
        hypothesis=params.get(PARAM_STATEMENT) or tags.get(NOTE),
        primary_metric=primary,
        direction=direction,
        arm=best_arm,
        arms=len(arms),
        effect=chosen.get("effect"),
        effect_ci_low=chosen.get("ci_low"),
        effect_ci_high=chosen.get("ci_high"),
        lift=lift,
        lift_ci_low=lo,
        lift_ci_high=hi,
        gain=gain,
        gain_ci_low=gain_lo,
        gain_ci_high=gain_hi,
        p_value_adjusted=chosen.get("p_value_adjusted"),
        decision=decision,
        exposed=None if exposed is None else int(round(exposed)),
        cost=_number(metrics.get("cost")),
        value=_number(metrics.get("value")),
        value_ci_low=_number(metrics.get("value_ci_low")),
        value_ci_high=_number(metrics.get("value_ci_high")),
        roi=roi,
        roi_ci_low=_share(metrics, "roi_ci_low"),
        roi_ci_high=_share(metrics, "roi_ci_high"),
        spec_changed=tags.get(TAG_SPEC_CHANGED) == "true",
        data_changed=tags.get(TAG_DATA_CHANGED) == "true",
        running=False,
        alpha=alpha,
        run_id=run["run_id"],
        run_name=run.get("run_name"),
        started_at=_iso(run.get("start_time")),
        description=tags.get(NOTE),
        lift_se=chosen.get("lift_se"),
        recommendation=recommendation,
        recommendation_arm=tags.get(TAG_RECOMMENDATION_ARM)
        or (best_arm if recommendation in ("scale", "rework") else None),
        run_folder=_run_folder(tags.get(TAG_RUN_KEY)),
    )
