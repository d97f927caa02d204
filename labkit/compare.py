"""``labkit compare``: the leadership view over the latest run of every pilot (DESIGN.md, "Leadership view").

``portfolio(lab)`` reads the ``labkit.latest`` run of every pilot through ``Tracker`` and returns a frozen
``Portfolio``: one ``PilotRow`` per pilot and one ``GroupSummary`` per function, channel or stage.
``labkit.report`` turns it into a table, JSON, CSV or HTML. Definitions, so every number can be checked:

- **Primary row.** The primary metric is the tag ``labkit.primary_metric``, else the param
  ``hypothesis.metric``, else ``meta.primary_metric`` of the run's ``results.json``. Its numbers are the
  metrics ``<primary>.<arm>.<field>``. With several treatment arms the row shows the arm with the best
  ``gain`` (below) and names it (``arm``; ``arms`` counts the treatment arms).
- **Gain.** ``lift`` is the relative lift of the analysis (effect / control mean). ``gain`` is that lift
  signed so that positive is the direction the hypothesis predicted (a churn pilot whose churn fell by
  12 % has lift −0.12 and gain +0.12), so pilots with ``increase`` and ``decrease`` hypotheses can be pooled
  and ranked. The direction is the param ``hypothesis.direction`` (else ``results.json``; else increase).
- **Win rate** = ship / decided, where decided = ship + harm + no-effect: the pilots that reached a
  verdict. Inconclusive and invalid pilots have not been decided yet and are left out of the ratio (they
  are in the tally); with no decided pilot the win rate is None.
- **Pooled gain.** DerSimonian–Laird random effects (``labkit.stats.meta``, τ² truncated at 0) over the
  gains of the group's pilots that have a standard error. Each pilot's variance is ``lift_se²``, the
  delta-method variance of its lift that the analysis logs (``<primary>.<arm>.lift_se``): the lift is
  effect / |control mean|, so the gain's sign is right for negative-mean metrics too. The reported lift
  interval is Fieller's (asymmetric, agreeing with the test), so its width is no longer a normal se; only
  for runs logged before ``lift_se`` existed is the variance read off a finite lift interval,
  ``((hi − lo) / (2·z))²``, ``z = Φ⁻¹(1 − alpha/2)`` at the pilot's own alpha (the param
  ``analysis.alpha``, else the lab default). The pooled interval is at the lab's default alpha; τ², I²
  and Cochran's Q are reported. A group with one such pilot is shown as that pilot, not pooled
  (``pooled_k`` = 1, pooled fields None, a ``note`` says so).
- **Value and ROI.** A pilot's value is the analysis' (effect per customer × ``value_per_unit`` × customers
  in the treatment arms, signed so a move in the predicted direction is worth money), its interval from
  the effect's interval; ROI = (value − cost) / cost. A group's total value is the sum of its pilots'
  values and its interval the sums of their lower and upper bounds: exact if the pilots' errors were
  perfectly correlated, so wider than the interval of independent pilots — conservative. Total cost is the
  sum of every pilot's cost, including pilots whose value could not be estimated (the money was spent;
  ``without_value`` counts them); group ROI = (total value − total cost) / total cost, its interval from
  the total value's bounds.
- **Recommendation.** The run's tag ``labkit.recommendation`` (and ``labkit.recommendation_arm``): the
  decision weighed with the ROI (``labkit.decision.recommend``: scale, rework, extend, stop, fix). Runs
  recorded before it existed get it from their decision and ROI by the same rule
  (``labkit.decision.recommendation_of``), with the best arm as the arm to scale. ROI is (value − cost) /
  cost from the run's ``value`` and ``cost`` (its headline ``roi_pct`` is rounded for reading).
- **Links.** ``run_url``: the run's page when the store is a tracking server (http), else None;
  ``run_folder``: ``results/<pilot>/runs/<stamp>`` from the run key; ``notebook_report``: that folder's
  ``report.html`` (else the notebook's ``<stem>.html``) when the file exists, relative to the lab root.
- **Flags.** ``spec_changed``: the run's tag ``labkit.spec_changed`` is ``"true"`` (the hypothesis, metrics
  or cohort changed after the first run). ``data_changed``: its tag ``labkit.data_changed`` is ``"true"``
  (set by whoever records the run; compare does not diff ``labkit.data_digest`` across runs itself).
  ``running``: the pilot has a live RUNNING run newer than the latest finished one (its numbers are about
  to change; a run whose process is gone, or another host's run older than 24 h, is abandoned, not live).
  A pilot with a RUNNING run and no finished run has no row; it is listed in ``running_only``.
- **Filters.** ``function`` (in the search), ``since`` (an ISO date or date-time; a date is midnight UTC,
  a date-time without zone is UTC; keeps pilots whose latest run started then or later) and ``decision``.
- **Order.** Groups by ROI, highest first (no ROI last); pilots by group in that order, then by gain.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field

from labkit.decision import recommendation_of
from labkit.errors import LabkitError

BY = ("function", "channel", "stage")
DECISIONS = ("ship", "harm", "no-effect", "inconclusive", "invalid")
DECIDED = ("ship", "harm", "no-effect")
TAG_CHANNEL = "labkit.channel"
TAG_STAGE = "labkit.stage"
TAG_DECISION = "labkit.decision"
TAG_PRIMARY = "labkit.primary_metric"
TAG_SPEC_CHANGED = "labkit.spec_changed"
TAG_DATA_CHANGED = "labkit.data_changed"
TAG_KIND = "labkit.kind"
TAG_RECOMMENDATION = "labkit.recommendation"
TAG_RECOMMENDATION_ARM = "labkit.recommendation_arm"
FLOAT_LIMIT = 1e300  # tracking stores ±inf as ±1.8e308: anything this large is an unbounded interval


@dataclass(frozen=True)
class PilotRow:
    """One pilot's latest finished run, as leadership reads it (module docstring for the definitions)."""

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
        """The sampling variance the meta-analysis gives this pilot's gain (module docstring), or None."""
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


# --------------------------------------------------------------------------- reading runs


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


def _notebook_report(lab, run_folder: str | None, notebook: str | None) -> str | None:
    """The run's notebook report for a reader: ``report.html`` (the export without code) in the run's
    folder, else the notebook's own ``<stem>.html``; relative to the lab root; None when neither exists
    (the run was recorded elsewhere, or its folder was cleaned up)."""
    from pathlib import Path

    if run_folder is None:
        return None
    folder = lab.root / run_folder
    names = ["report.html"] + ([f"{Path(notebook).stem}.html"] if notebook else [])
    for name in names:
        if (folder / name).is_file():
            return f"{run_folder}/{name}"
    return None


def _ui_base(uri: str) -> str | None:
    """The MLflow UI's address for a tracking server (``http(s)://``: the server is the UI), without
    credentials or query; None for a local store, whose UI `labkit ui` starts on a port of its own."""
    from labkit.tracking import display_uri

    if not uri.startswith(("http://", "https://")):
        return None
    return display_uri(uri).rstrip("/")


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


def parse_since(since) -> float | None:
    """``--since`` as epoch seconds: an ISO date is midnight UTC; a date-time without zone is UTC."""
    if since is None or since == "":
        return None
    if isinstance(since, dt.datetime):
        moment = since
    elif isinstance(since, dt.date):
        moment = dt.datetime(since.year, since.month, since.day)
    else:
        try:
            moment = dt.datetime.fromisoformat(str(since))
        except ValueError:
            raise LabkitError(
                f"--since: '{since}' is not an ISO date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


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

    primary = tags.get(TAG_PRIMARY) or params.get("hypothesis.metric") or from_meta("primary_metric")
    direction = params.get("hypothesis.direction") or tags.get("labkit.direction")
    if direction not in ("increase", "decrease"):
        direction = from_meta("direction")
    direction = direction if direction in ("increase", "decrease") else "increase"
    sign = 1.0 if direction == "increase" else -1.0
    try:
        alpha = float(params.get("analysis.alpha") or default_alpha)
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
        function=tags.get("labkit.function") or params.get("function"),
        channel=tags.get(TAG_CHANNEL) or params.get("channel"),
        stage=tags.get(TAG_STAGE) or params.get("stage"),
        title=tags.get("labkit.title") or params.get("title"),
        hypothesis=params.get("hypothesis.statement") or tags.get("mlflow.note.content"),
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
        description=tags.get("mlflow.note.content"),
        lift_se=chosen.get("lift_se"),
        recommendation=recommendation,
        recommendation_arm=tags.get(TAG_RECOMMENDATION_ARM)
        or (best_arm if recommendation in ("scale", "rework") else None),
        run_folder=_run_folder(tags.get("labkit.run_key")),
    )


# --------------------------------------------------------------------------- groups


def summarize(name: str, rows: list[PilotRow], *, alpha: float = 0.05) -> GroupSummary:
    """Tally, win rate, pooled gain (DerSimonian–Laird), total value and ROI of one group of pilots."""
    from labkit.stats.meta import dersimonian_laird

    tally: dict[str, int] = {}
    for r in rows:
        key = r.decision or "unknown"
        tally[key] = tally.get(key, 0) + 1
    decisions = {d: tally.pop(d, 0) for d in DECISIONS} | tally
    decided = sum(decisions[d] for d in DECIDED)
    win_rate = decisions["ship"] / decided if decided else None

    usable = [r for r in rows if r.gain_variance() is not None]
    pooled = None
    if len(usable) >= 2:
        variances = [r.gain_variance() for r in usable]
        pooled = dersimonian_laird([r.gain for r in usable], variances, alpha=alpha)
        note = None
    elif len(usable) == 1:
        note = f"one pilot with an interval ({usable[0].pilot}): shown as such, not pooled"
    else:
        note = "no pilot with a lift interval: nothing to pool"
    if len(usable) < len(rows) and len(usable) >= 2:
        note = f"{len(rows) - len(usable)} pilot(s) without a lift interval left out of the pooling"

    valued = [
        r for r in rows if r.value is not None and r.value_ci_low is not None and r.value_ci_high is not None
    ]
    costs = [r.cost for r in rows if r.cost is not None]
    value = sum(r.value for r in valued) if valued else None
    v_lo = sum(r.value_ci_low for r in valued) if valued else None
    v_hi = sum(r.value_ci_high for r in valued) if valued else None
    cost = sum(costs) if costs else None

    def roi(v):
        return None if v is None or not cost else (v - cost) / cost

    return GroupSummary(
        group=name,
        pilots=len(rows),
        decisions=decisions,
        decided=decided,
        win_rate=win_rate,
        pooled_k=len(usable),
        pooled_gain=pooled.pooled if pooled else None,
        pooled_gain_ci_low=pooled.ci_low if pooled else None,
        pooled_gain_ci_high=pooled.ci_high if pooled else None,
        pooled_p_value=pooled.p_value if pooled else None,
        tau2=pooled.tau2 if pooled else None,
        i2=pooled.i2 if pooled else None,
        q=pooled.q if pooled else None,
        note=note,
        value=value,
        value_ci_low=v_lo,
        value_ci_high=v_hi,
        cost=cost,
        roi=roi(value),
        roi_ci_low=roi(v_lo),
        roi_ci_high=roi(v_hi),
        without_value=len(rows) - len(valued),
        pilot_ids=tuple(r.pilot for r in rows),
    )


# --------------------------------------------------------------------------- the portfolio


def portfolio(
    lab, *, by: str = "function", function: str | None = None, since=None, decision: str | None = None
) -> Portfolio:
    """The latest finished run of every pilot, grouped ``by`` function, channel or stage (see the module)."""
    from dataclasses import replace

    from labkit.tracking import display_uri

    if by not in BY:
        raise LabkitError(f"--by: unknown grouping '{by}'; allowed: {', '.join(BY)}")
    if function is not None and function not in lab.spec.functions:
        raise LabkitError(
            f"--function: unknown function '{function}'; allowed: {', '.join(lab.spec.functions)}"
        )
    if decision is not None and decision not in DECISIONS:
        raise LabkitError(f"--decision: unknown decision '{decision}'; allowed: {', '.join(DECISIONS)}")
    since_s = parse_since(since)
    filters = {k: v for k, v in (("function", function), ("since", since), ("decision", decision)) if v}
    filters = {k: str(v) for k, v in filters.items()}

    where = f"MLflow experiment '{lab.spec.mlflow_experiment}' at {display_uri(lab.tracking_uri)}"
    _check_store_exists(lab)
    from labkit.runstore import open_runs

    store = open_runs(lab)  # MLflow's sqlite tables read directly where that is exact, else MLflow
    alpha = lab.spec.defaults.alpha
    runs = store.latest_runs(function=function)
    total = len(runs) if runs else len(store.latest_runs()) if function is not None else 0
    if total == 0:
        raise LabkitError(_nothing_finished(store, where))
    kept = [
        run for run in runs
        if (since_s is None or (run.get("start_time") or 0) >= since_s)
        and (decision is None or run["tags"].get(TAG_DECISION) == decision)
    ]  # fmt: skip
    if not kept:
        shown = " ".join(f"--{k} {v}" for k, v in filters.items())
        raise LabkitError(
            f"no pilot's latest run matches {shown} in {where} ({total} pilot(s) without filters)"
        )

    running = _running_since(store, function)
    base = _ui_base(lab.tracking_uri)
    experiment_id = getattr(store, "experiment_id", None) if base else None
    rows = []
    for run in kept:
        row = pilot_row(run, default_alpha=alpha, results_meta=lambda r: _results_meta(store, r))
        if experiment_id:
            row = replace(row, run_url=f"{base}/#/experiments/{experiment_id}/runs/{row.run_id}")
        report = _notebook_report(lab, row.run_folder, run["tags"].get("labkit.notebook"))
        if report is not None:
            row = replace(row, notebook_report=report)
        started = running.get(row.pilot)
        if started is not None and started > (run.get("start_time") or 0):
            row = replace(row, running=True)
        rows.append(row)
    finished = {r["pilot"] for r in runs}
    running_only = tuple(sorted(p for p in running if p not in finished))

    grouped: dict[str, list[PilotRow]] = {}
    for row in rows:
        grouped.setdefault(getattr(row, by) or "unknown", []).append(row)
    groups = [summarize(name, members, alpha=alpha) for name, members in grouped.items()]
    groups.sort(key=lambda g: (g.roi is None, -(g.roi or 0.0), g.group))
    order = {g.group: i for i, g in enumerate(groups)}
    rows.sort(key=lambda r: (order[getattr(r, by) or "unknown"], r.gain is None, -(r.gain or 0.0), r.pilot))
    warnings = [
        f"{r.pilot}: its hypothesis, metrics or cohort changed after the first run; read it as exploratory"
        for r in rows
        if r.spec_changed
    ]
    warnings += [
        f"{r.pilot}: a newer run is still RUNNING; these numbers are about to change"
        for r in rows
        if r.running
    ]
    warnings += [f"{p}: RUNNING, no finished run yet" for p in running_only]
    return Portfolio(
        lab=lab.spec.lab,
        experiment=lab.spec.mlflow_experiment,
        store=display_uri(lab.tracking_uri),
        currency=lab.spec.currency,
        by=by,
        alpha=alpha,
        filters=filters,
        generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        pilots=tuple(rows),
        groups=tuple(groups),
        running_only=running_only,
        warnings=tuple(warnings),
        root=str(lab.root),
    )


_TRACKERS: dict[tuple[str, str], object] = {}


def open_tracker(lab):
    """The lab's ``Tracker``, opened once per process: opening a store costs seconds of schema checks, and
    `labkit compare --log` reads and then writes the same store."""
    from labkit.tracking import Tracker

    key = (lab.tracking_uri, lab.spec.mlflow_experiment)
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(lab)
    return _TRACKERS[key]


def _check_store_exists(lab) -> None:
    """A sqlite store that does not exist yet is reported, not created (compare only reads)."""
    from pathlib import Path

    from labkit.tracking import display_uri

    uri = lab.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
        if not path.is_file():
            raise LabkitError(
                f"no MLflow store at {display_uri(uri)} yet: no pilot has been run; "
                "record runs with `labkit run`"
            )


def _nothing_finished(store, where: str) -> str:
    """Why there is nothing to compare: no pilot run at all, or none that finished."""
    runs = store.pilot_runs()
    if not runs:
        return f"no pilot runs in {where}: nothing to compare yet; record runs with `labkit run`"
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1
    pilots = len({run["pilot"] for run in runs})
    counted = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    return (
        f"no finished pilot run in {where}: {len(runs)} run(s) of {pilots} pilot(s), {counted}; "
        "compare reads finished runs only: fix the failures (the `labkit run` message names the cell) "
        "and run again"
    )


def _running_since(store, function: str | None) -> dict[str, float]:
    """Pilot -> start time (epoch s) of its newest live RUNNING run, filtered in the search itself.

    A RUNNING run that ``Tracker.sweep_stale`` would kill (its process on this host is gone, or another
    host's run is older than ``STALE_AFTER_HOURS``) is abandoned, not running: it raises no flag.
    """
    import socket
    import time

    from labkit.tracking import STALE_AFTER_HOURS, TAG_HOST, TAG_PID, TAG_PID_START, _pid_alive, owner_tag

    host, now = socket.gethostname(), time.time()
    newest: dict[str, float] = {}
    for run in store.pilot_runs(status="RUNNING", function=function):
        tags = run["tags"]
        started = run["start_time"] or 0.0
        if owner_tag(tags, TAG_HOST) == host:
            pid_text = owner_tag(tags, TAG_PID) or ""
            pid = int(pid_text) if pid_text.isdigit() else 0
            if not _pid_alive(pid, owner_tag(tags, TAG_PID_START)):
                continue
        elif (now - started) / 3600 > STALE_AFTER_HOURS:
            continue
        if run["pilot"] and started >= newest.get(run["pilot"], -1.0):
            newest[run["pilot"]] = started
    return newest


def _results_meta(store, run: dict) -> dict:
    """``meta`` of the run's results.json artifact: only read when tags and params lack the primary metric."""
    data = store.results_json(run)
    meta = data.get("meta") if isinstance(data, dict) else None
    meta = dict(meta) if isinstance(meta, dict) else {}
    if isinstance(data, dict) and data.get("decision"):
        meta.setdefault("decision", data["decision"])
    return meta
