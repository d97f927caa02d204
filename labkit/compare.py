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
  ``running``: the pilot has a live RUNNING run that looks later than the latest finished one (its numbers are
  about to change; a look back in flight does not; a run whose process is gone, or another host's run older than 24 h, is abandoned, not live).
  A pilot with a RUNNING run and no finished run has no row; it is listed in ``running_only``.
- **Filters.** ``function`` (in the search), ``since`` (an ISO date or date-time; a date is midnight UTC,
  a date-time without zone is UTC; keeps pilots whose latest run started then or later) and ``decision``.
- **Order.** Groups by ROI, highest first (no ROI last); pilots by group in that order, then by gain.
"""

from __future__ import annotations

import datetime as dt

from labkit.decision import DECISIONS
from labkit.errors import SpecError, TrackingError
from labkit.leadership import GroupSummary, PilotRow, Portfolio, pilot_row
from labkit.tracking.record import TAG_DECISION, TAG_NOTEBOOK
from labkit.tracking.rules import display_uri
from labkit.tracking.view import run_page

__all__ = ["BY", "DECIDED", "GroupSummary", "PilotRow", "Portfolio", "parse_since", "pilot_row", "portfolio",
           "summarize"]  # fmt: skip

BY = ("function", "channel", "stage")
DECIDED = ("ship", "harm", "no-effect")


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
            raise SpecError(
                "--since", None, "", f"'{since}' is not an ISO date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


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
        **_money(valued, [r.cost for r in rows if r.cost is not None]),
        without_value=len(rows) - len(valued),
        pilot_ids=tuple(r.pilot for r in rows),
    )


def _money(valued: list[PilotRow], costs: list[float]) -> dict[str, float | None]:
    """A group's total value with its interval (the sums of the pilots' values and bounds), total cost and
    ROI = (value − cost) / cost with its interval, as ``GroupSummary`` fields."""
    value = sum(r.value for r in valued) if valued else None
    v_lo = sum(r.value_ci_low for r in valued) if valued else None
    v_hi = sum(r.value_ci_high for r in valued) if valued else None
    cost = sum(costs) if costs else None

    def roi(v):
        return None if v is None or not cost else (v - cost) / cost

    totals = {"value": value, "value_ci_low": v_lo, "value_ci_high": v_hi, "cost": cost}
    return totals | {"roi": roi(value), "roi_ci_low": roi(v_lo), "roi_ci_high": roi(v_hi)}


# --------------------------------------------------------------------------- the portfolio


def portfolio(
    lab, *, by: str = "function", function: str | None = None, since=None, decision: str | None = None
) -> Portfolio:
    """The latest finished run of every pilot, grouped ``by`` function, channel or stage (see the module)."""
    from dataclasses import replace

    from labkit.tracking.reader import check_store_exists, look_key, open_runs, results_meta, running_since

    if by not in BY:
        raise SpecError("--by", None, "", f"unknown grouping '{by}'; allowed: {', '.join(BY)}")
    if function is not None and function not in lab.spec.functions:
        raise SpecError(
            "--function", None, "", f"unknown function '{function}'; allowed: {', '.join(lab.spec.functions)}"
        )
    if decision is not None and decision not in DECISIONS:
        raise SpecError(
            "--decision", None, "", f"unknown decision '{decision}'; allowed: {', '.join(DECISIONS)}"
        )
    since_s = parse_since(since)
    filters = {k: v for k, v in (("function", function), ("since", since), ("decision", decision)) if v}
    filters = {k: str(v) for k, v in filters.items()}

    where = f"MLflow experiment '{lab.spec.mlflow_experiment}' at {display_uri(lab.tracking_uri)}"
    check_store_exists(lab)
    store = open_runs(lab)  # MLflow's sqlite tables read directly where that is exact, else MLflow
    alpha = lab.spec.defaults.alpha
    runs = store.latest_runs(function=function)
    total = len(runs) if runs else len(store.latest_runs()) if function is not None else 0
    if total == 0:
        raise TrackingError(_nothing_finished(store, where))
    kept = [
        run for run in runs
        if (since_s is None or (run.get("start_time") or 0) >= since_s)
        and (decision is None or run["tags"].get(TAG_DECISION) == decision)
    ]  # fmt: skip
    if not kept:
        shown = " ".join(f"--{k} {v}" for k, v in filters.items())
        raise TrackingError(
            f"no pilot's latest run matches {shown} in {where} ({total} pilot(s) without filters)"
        )

    running = running_since(store, function)
    server = lab.tracking_uri.startswith(("http://", "https://"))  # the server is the UI: runs have pages
    experiment_id = getattr(store, "experiment_id", None) if server else None
    rows = []
    for run in kept:
        row = pilot_row(run, default_alpha=alpha, results_meta=lambda r: results_meta(store, r))
        if experiment_id:
            row = replace(row, run_url=run_page(lab.tracking_uri, experiment_id, row.run_id))
        report = _notebook_report(lab, row.run_folder, run["tags"].get(TAG_NOTEBOOK))
        if report is not None:
            row = replace(row, notebook_report=report)
        looking = running.get(row.pilot)  # a live run looking later than this one: the numbers will change
        if looking is not None and looking > look_key(run):
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
