"""``labkit.analyze(pilot)``: the recipe that turns a pilot's data into its verdict and the `--json` contract.

Flow: the assignment (intent-to-treat units) -> per-arm sufficient statistics of every metric, computed
in the engine -> one estimate per (metric, treatment arm) by the method its type calls for
(``labkit.methods``) -> multiplicity -> the Bayesian reading (Bayesian engine) -> the decision
(``labkit.decision``) -> the economics (``labkit.roi``) and the recommendation. No MLflow, no papermill
here; the result is a ``labkit.result.Analysis``, built once, whose ``to_dict()`` is exactly what
``labkit analyze --json`` prints and what the notebook writes as results.json.

Families (DESIGN.md): the primary metric over the treatment arms is one family (Holm when there are
several arms); the secondary metrics x arms form another, corrected by the pilot's ``correction``;
guardrails are not corrected. Each row's adjusted p-value comes with the interval at the matching level
(:func:`_adjusted_intervals`). A step after the estimates makes new rows (``dataclasses.replace``); no row
is edited in place.

Cluster-randomised pilots (``cohort.unit_column``): every metric is reduced to cluster totals instead and
estimated by the cluster-robust t (``labkit.clustered``: CR2 with Bell–McCaffrey df, the ICC and design
effect in each row, SRM on clusters, a saturation design's direct effect as the rows and its ``spillover``
block); multiplicity, the decision and the ROI read those rows as any other.

Imported assignments: the assignment's data warnings (customers failing ``where``, NULL arms skipped, the
cap) join ``warnings`` with the analysis' own (differential missingness, blocks left out of a
post-stratified estimate, a withheld quantile, a changed cohort), so the JSON, the notebook and the run
description say everything the terminal said.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import replace
from pathlib import Path

from labkit import __version__
from labkit.clustered import cluster_srm, cluster_summary, few_clusters_warning, is_clustered, spillover
from labkit.decision import ArmResult, GuardrailCheck, Verdict, decide, recommend
from labkit.methods import dropped_strata_warning, estimate, shown_estimate
from labkit.result import METRIC_FIELDS, Analysis, BayesSummary, MetricQuality, MetricRow, Plan, SrmSummary
from labkit.roi import pilot_roi, primary_gains
from labkit.spec import Pilot

# the contract's names, where they were before labkit.result held them
__all__ = ["METRIC_FIELDS", "Analysis", "analyze", "build_analysis", "sources_used"]


def _as_of(value) -> dt.datetime | None:
    """A look date (ISO text, date or datetime) as a naive UTC datetime; events from then on are unseen."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            from labkit._validation import unlocated

            raise unlocated(f"as_of: '{value}' is not an ISO date (YYYY-MM-DD)", field="as_of") from None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    return dt.datetime(value.year, value.month, value.day)


def as_of_problem(pilot: Pilot, as_of) -> str | None:
    """What is wrong with a look date for this pilot, or None. A look on or before the pilot's start
    (``cohort.start``, midnight UTC; an imported assignment's earliest ``assigned_at``) sees no event of the
    pilot, while its per-customer tables are read as they are today: a mistyped year gave a run whose event
    metrics were all 0 beside today's snapshot metrics, a verdict, and the pilot's latest run."""
    look = _as_of(as_of)
    start = pilot.start if look is not None else None
    if start is None or look > dt.datetime.combine(start, dt.time()):
        return None
    shown = look.date().isoformat() if look.time() == dt.time() else look.isoformat(sep=" ")
    return (
        f"as_of {shown} is not after the pilot's start ({start.isoformat()}, UTC): nothing of the pilot "
        f"had happened yet; give a date after {start.isoformat()}"
    )


def analyze(pilot: Pilot, *, engine=None, as_of=None, over_time: bool = False) -> Analysis:
    """Analyse a pilot from its assignment and the lab's data (DESIGN.md, Statistics).

    ``as_of`` is the date of a look (ISO text or date): events from then on are left out of every event
    window, as if the analysis ran that day; per-customer tables are read as they are. ``over_time``: also
    the primary metric's effect on each day since the start (``labkit.over_time``), up to the look."""
    from concurrent.futures import ThreadPoolExecutor

    from labkit.assignment import load_assignment
    from labkit.clustered import cluster_data, plan_design
    from labkit.data.aggregate import aggregate_pilot, units_table
    from labkit.data.sources import DigestCache, Engine
    from labkit.listing import not_started
    from labkit.planning import make_plan

    look = _as_of(as_of)
    own = engine is None
    engine = engine or Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        assignment = load_assignment(pilot)
        if problem := as_of_problem(pilot, look):  # after the load: an imported pilot's start is its file's
            from labkit._validation import unlocated

            raise unlocated(f"{pilot.id}: {problem}", field="as_of")
        if look is None and (problem := not_started(pilot)):  # a look now, before the start: nothing yet
            from labkit.errors import DataError

            raise DataError(None, f"{pilot.id}: {problem}")
        # A lab of files is hashed while the engine aggregates (hashlib and DuckDB both release the GIL);
        # PostgreSQL tables' digests are queries on a second connection of their own, which the server runs
        # beside the metric queries (at 1M customers and 10M events: 19 s of a 31 s analysis, one after
        # the other); on Spark's one session a digest waits its turn.
        files = all(pilot.lab.source(n).format in ("csv", "parquet") for n in sources_used(pilot))
        cache = DigestCache.load(pilot.lab)
        side = Engine.for_lab(pilot.lab) if not files and engine.kind == "postgres" else None
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="labkit-digest") as pool:
                by = engine if files else side
                job = pool.submit(_data_digest, by, pilot, assignment.path, cache) if by is not None else None
                data = (
                    aggregate_pilot(engine, pilot, units, as_of=look)
                    if pilot.spec.cohort.unit_column is None
                    else cluster_data(engine, pilot, units, as_of=look)  # cluster totals (labkit.clustered)
                )
                digest = job.result() if job else _data_digest(engine, pilot, assignment.path, cache)
        finally:
            if side is not None:
                side.close()
        baseline = data[pilot.primary.name].arms.get(pilot.control)
        design = plan_design(pilot, data[pilot.primary.name])  # None unless cluster-randomised
        plan = make_plan(pilot, baseline, "control arm", design=design) if baseline is not None else None
        result = build_analysis(
            pilot, data, assignment_meta=assignment.meta, plan=plan, data_digest=digest, as_of=look,
            cohort_changes=tuple(assignment.changes(pilot)),
        )  # fmt: skip
        from labkit.segments import with_segments  # analysis.segments: per-segment effects, or unchanged

        result = with_segments(result, engine, pilot, units, data, as_of=look)
        if over_time:  # the effect on each day since the start: one more query (labkit.over_time)
            from labkit.over_time import with_over_time

            result = with_over_time(result, engine, pilot, units, as_of=look)
        cache.save()
        return result
    finally:
        if own:
            engine.close()


def _data_digest(engine, pilot: Pilot, assignment_path: Path, cache=None) -> str:
    from labkit.data.sources import file_digest

    names = sorted(sources_used(pilot))
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}={engine.digest(name, cache)}\n".encode())
    assignment = cache.digest(assignment_path) if cache is not None else file_digest(assignment_path)
    h.update(f"assignment={assignment}\n".encode())
    return h.hexdigest()


def sources_used(pilot: Pilot) -> set[str]:
    """The lab sources the pilot reads (``labkit.data.sources.pilot_sources``, imported when called: the
    data layer stays out of ``import labkit.analysis``)."""
    from labkit.data.sources import pilot_sources

    return pilot_sources(pilot)


def build_analysis(
    pilot: Pilot,
    data: dict,
    *,
    assignment_meta: dict,
    plan: Plan | None,
    data_digest: str | None = None,
    as_of: dt.datetime | None = None,
    cohort_changes: tuple[str, ...] = (),
) -> Analysis:
    """Everything after aggregation: pure given the per-arm statistics (tests drive it directly).

    ``as_of`` is the look's date (``meta.as_of``); ``cohort_changes`` what changed in the pilot's cohort
    since its assignment was drawn (``Assignment.changes``): `assign` refuses to redraw silently, so the
    analysis says which cohort it analyses."""
    from labkit import stats

    s = pilot.settings
    counts = _srm_counts(pilot, assignment_meta, data[pilot.primary.name])
    primary = data[pilot.primary.name]
    # a cluster pilot randomised clusters: its sample ratio is tested on clusters (labkit.clustered)
    srm = cluster_srm(pilot, primary) if is_clustered(primary) else stats.srm_test(counts, pilot.arms)
    # the assignment's own data warnings (customers failing `where`, NULL arms skipped, the cap) travel
    # with every analysis of it: the JSON, the notebook and the run description say what the terminal said
    warnings = [*(plan.warnings if plan else ()), *(str(w) for w in assignment_meta.get("warnings", []))]
    quality = _quality(pilot, data)
    rows, tost, found = _estimate_rows(pilot, data, quality)
    warnings += found
    rows = _adjusted_intervals(pilot, data, _adjusted(rows, s.correction), s.alpha)
    rows, bayes_by_arm = _bayes(pilot, rows) if s.engine == "bayesian" else (rows, {})
    verdict = _verdict(pilot, rows, tost, bayes_by_arm, srm, assignment_meta, plan, data)
    roi = pilot_roi(pilot, rows)
    gains = primary_gains(pilot, rows)
    advice = recommend(
        verdict, roi=roi, gains=gains, metric=pilot.primary.name, currency=pilot.lab.spec.currency
    )
    if assignment_meta.get("cap_exceeded") and not any("the cap is a promise" in w for w in warnings):
        warnings.append("more customers are in the imported assignment than the pilot's cap allows")
    if cohort_changes:
        warnings.append(
            f"the cohort changed after the assignment was drawn ({'; '.join(cohort_changes)}); this analyses "
            f"the assignment as drawn — `labkit assign {pilot.id} --force` archives it and draws anew"
        )
    return Analysis(
        pilot=pilot.id,
        decision=verdict.decision,
        reason=verdict.reason,
        verdict=verdict,
        srm=SrmSummary.of(srm),
        metric_rows=tuple(rows),
        plan=plan,
        roi=roi,
        advice=advice,
        warnings=tuple(warnings),
        data_quality=quality,
        meta=_meta(pilot, counts, data_digest, as_of),
        spillover=spillover(pilot, primary, alpha=s.alpha),
    )


def _srm_counts(pilot: Pilot, assignment_meta: dict, primary) -> dict[str, int]:
    """Customers per arm for the sample-ratio check: those the primary metric's data counted as assigned,
    else the assignment's own counts."""
    if any(primary.assigned.get(arm) is not None for arm in pilot.arms):
        return {arm: int(primary.assigned.get(arm, 0)) for arm in pilot.arms}
    return {arm: int(assignment_meta.get("counts", {}).get(arm, 0)) for arm in pilot.arms}


def _role(pilot: Pilot, metric: str) -> str:
    if metric == pilot.primary.name:
        return "primary"
    return "guardrail" if metric in {g.metric for g in pilot.spec.guardrails} else "secondary"


def _estimate_rows(
    pilot: Pilot, data: dict, quality: dict[str, MetricQuality]
) -> tuple[list[MetricRow], dict, list[str]]:
    """One row per (metric, treatment arm) at level 1 − alpha; the primary's 1 − 2·alpha estimates for
    the equivalence test (by arm); the data warnings the estimates raised, in metric order."""
    s = pilot.settings
    control = pilot.control
    rows: list[MetricRow] = []
    tost: dict[str, object] = {}
    warnings: list[str] = []
    for m in pilot.spec.metrics:
        md = data[m.name]
        role = _role(pilot, m.name)
        for arm in pilot.treatments:
            est = shown_estimate(pilot, md, arm, alpha=s.alpha)
            if role == "primary":
                tost[arm] = estimate(pilot, md, arm, alpha=min(2 * s.alpha, 0.99))
            rows.append(
                MetricRow(
                    metric=m.name, role=role, type=m.type, arm=arm, control_arm=control, estimate=est,
                    quality=quality[m.name], clusters=cluster_summary(pilot, md, arm),
                )
            )  # fmt: skip
            for warning in (dropped_strata_warning(md, pilot, arm), few_clusters_warning(pilot, md, arm)):
                if warning:
                    warnings.append(warning)
            if est.reason == "suppressed_small_cell":  # a withheld number is said, not just missing
                warnings.append(
                    f"metric '{m.name}', arm '{arm}': fewer than {pilot.lab.spec.privacy.min_cell_size} "
                    "customers in an arm, so the quantile is withheld (privacy.min_cell_size)"
                )
        warnings += _missingness_warnings(md, pilot)
        warnings += _long_window_warning(m, pilot)
    return rows, tost, warnings


#: The longest event window over which the confidence sequence of a fixed cohort was shown to keep alpha
#: when read daily (tests/stats/test_over_time_validity.py).
SEQUENTIAL_WINDOW_SHOWN = 90


def _long_window_warning(metric, pilot: Pilot) -> list[str]:
    """Sequential mode over a long event window: the sequence is tuned to customers, and a fixed cohort
    adds none while its outcomes accumulate, so daily looks over a long window can exceed alpha (A/A
    simulation: ~6 % at 5 % over 730 days of rare events); said, not hidden."""
    days = getattr(metric, "window_days", None)
    if not pilot.settings.sequential or days is None or days <= SEQUENTIAL_WINDOW_SHOWN:
        return []
    return [
        f"metric '{metric.name}': its {days}-day window is longer than the {SEQUENTIAL_WINDOW_SHOWN} days over "
        "which sequential mode's confidence sequences were shown to keep alpha for a fixed cohort read daily "
        "(over 730 days of rare events, ~6 % at alpha 5 %); weigh daily looks accordingly"
    ]


def _adjusted(rows: list[MetricRow], correction: str) -> list[MetricRow]:
    """The rows with ``p_value_adjusted``: the primary family over arms by Holm, the secondary metrics × arms
    by the pilot's ``correction``, guardrails as they are (a missed harm costs more than a false alarm)."""
    from labkit import stats

    out = list(rows)
    for role, method in (("primary", "holm"), ("secondary", correction), ("guardrail", "none")):
        idx = [i for i, r in enumerate(out) if r.role == role and r.estimate.p_value is not None]
        adjusted = stats.adjust([out[i].estimate.p_value for i in idx], method) if idx else []
        for i, p in zip(idx, adjusted):
            out[i] = replace(out[i], p_value_adjusted=p)
    return out


def _adjusted_intervals(pilot: Pilot, data: dict, rows: list[MetricRow], alpha: float) -> list[MetricRow]:
    """The rows with intervals at the level that matches each adjusted p-value (``*_adjusted`` fields).

    For a hypothesis with raw p and adjusted p_adj (Holm or Benjamini–Hochberg), the interval at level
    1 − alpha·p/p_adj excludes 0 exactly when p < alpha·p/p_adj, i.e. when p_adj < alpha: the adjusted
    interval and the adjusted p-value agree, as ``ci_low``/``ci_high`` (level 1 − alpha, unadjusted) agree
    with the raw p-value (for Holm and BH alike: the level is read off the adjusted p-value, not a
    simultaneous-coverage claim for BH, which controls the false discovery rate). Where p_adj = p
    (guardrails, one-member families) or p = 0 the adjusted interval is the unadjusted one; where there is no
    p-value it is None. The estimate is recomputed at that level by the same method (bootstraps with the
    same seed, so the same replicates)."""
    out = []
    for r in rows:
        p, p_adj = r.estimate.p_value, r.p_value_adjusted
        if p is None or p_adj is None:
            out.append(r)
            continue
        level = alpha * p / p_adj if p_adj > p and p != 0 else None
        src = r.estimate if level is None else shown_estimate(pilot, data[r.metric], r.arm, alpha=level)
        out.append(replace(r, adjusted=src))
    return out


def _bayes(pilot: Pilot, rows: list[MetricRow]) -> tuple[list[MetricRow], dict]:
    """The rows with the Bayesian engine's reading of their lift, and for each primary arm its readings at
    1 − alpha and at 1 − 2·alpha (the equivalence interval of the decision)."""
    from labkit import stats

    s = pilot.settings
    out, by_arm = [], {}
    for r in rows:
        est = r.estimate
        # an unbounded (None) Fieller lift interval does not stop the Bayesian model: it needs lift_se only
        if est.lift is None or est.lift_se is None:
            out.append(r)
            continue
        direction = pilot.spec.hypothesis.direction if r.role == "primary" else "increase"

        def read(alpha: float, est=est, direction=direction):
            # the likelihood's se is the estimate's delta-method lift_se (labkit.stats.bayes), not the
            # interval's half-width / z: Welch intervals use t, sequential ones the wider CS multiplier
            return stats.bayes_lift(
                est.lift,
                est.lift_se,
                prior_mean=s.prior_mean,
                prior_sd=s.prior_sd,
                alpha=alpha,
                direction=direction,
            )

        b = read(s.alpha)
        summary = BayesSummary(b.post_mean, b.post_sd, b.ci_low, b.ci_high, b.chance_to_beat, b.expected_loss)
        out.append(replace(r, bayes=summary))
        if r.role == "primary":
            by_arm[r.arm] = (b, read(min(2 * s.alpha, 0.99)))
    return out, by_arm


def _quality(pilot: Pilot, data: dict) -> dict[str, MetricQuality]:
    return {
        name: MetricQuality(
            assigned=dict(md.assigned),
            missing=dict(md.missing),
            missing_policy=pilot.metric(name).missing_policy,
            covariate=md.covariate,
        )
        for name, md in data.items()
    }


def _meta(pilot: Pilot, counts: dict[str, int], data_digest: str | None, as_of: dt.datetime | None) -> dict:
    """What the analysis ran on and with: the code, the spec, the data, the settings, the pilot's labels."""
    s = pilot.settings
    meta = {
        "labkit_version": __version__,
        "analysed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "spec_sha256": pilot.spec_sha256,
        "prereg_sha256": pilot.prereg_sha256,
        "data_digest": data_digest,
        "alpha": s.alpha,
        "engine": s.engine,
        "sequential": s.sequential,
        "correction": s.correction,
        "function": pilot.spec.function,
        "channel": pilot.spec.channel,
        "stage": pilot.spec.stage,
        "primary_metric": pilot.primary.name,
        "direction": pilot.spec.hypothesis.direction,
        "exposed": int(sum(counts.values())),
        "cap": pilot.cap,
    }
    if as_of is not None:
        meta["as_of"] = as_of.isoformat()
    return meta


def _missingness_warnings(md, pilot: Pilot) -> list[str]:
    """Missingness that differs between arms biases intent-to-treat: flag it (two-proportion z, p < 0.01)."""
    from labkit.stats import ArmMoments, compare_proportions

    warnings = []
    c_n, c_miss = md.assigned.get(pilot.control, 0), md.missing.get(pilot.control, 0)
    for arm in pilot.treatments:
        t_n, t_miss = md.assigned.get(arm, 0), md.missing.get(arm, 0)
        if not (c_miss or t_miss) or min(c_n, t_n) < 2:
            continue
        est = compare_proportions(
            ArmMoments(c_n, c_miss, c_miss), ArmMoments(t_n, t_miss, t_miss), alpha=0.01
        )
        if est.p_value is not None and est.p_value < 0.01:
            warnings.append(
                f"metric '{md.metric}': missing data differs between '{pilot.control}' "
                f"({c_miss}/{c_n}) and '{arm}' ({t_miss}/{t_n}); results may be biased"
            )
    return warnings


def _arm_result(row: MetricRow, p_value: float | None, **judged) -> ArmResult:
    """What the decision reads of one row: its effect and lift, the p-value of its family, and ``judged``
    (the reason, the equivalence interval, the chance to beat control) where the caller has them."""
    e = row.estimate
    return ArmResult(
        **{"reason": e.reason, **judged}, arm=row.arm, effect=e.effect, lift=e.lift, p_value=p_value
    )


def _verdict(pilot: Pilot, rows, tost, bayes_by_arm, srm, assignment_meta, plan, data) -> Verdict:
    """The rows, the equivalence estimates and the data checks as ``labkit.decision.decide`` reads them."""
    s = pilot.settings
    hyp = pilot.spec.hypothesis
    relative = hyp.mde.relative is not None
    mde = hyp.mde.relative if relative else hyp.mde.absolute
    primary = []
    for r in rows:
        if r.role != "primary":
            continue
        low = high = ctb = None
        if s.engine == "bayesian" and r.arm in bayes_by_arm:
            b, b2 = bayes_by_arm[r.arm]
            ctb = b.chance_to_beat
            if relative:
                low, high = b2.ci_low, b2.ci_high
        t = tost.get(r.arm)
        if t is not None and low is None:
            low, high = (t.lift_ci_low, t.lift_ci_high) if relative else (t.ci_low, t.ci_high)
        reason = r.estimate.reason
        if reason == "zero_control_mean" and not relative and r.estimate.p_value is not None:
            reason = None  # only the lift is undefined; an absolute MDE is judged on the effect itself
        primary.append(
            _arm_result(
                r, r.p_value_adjusted, reason=reason, tost_low=low, tost_high=high, chance_to_beat=ctb
            )
        )
    guards = []
    for g in pilot.spec.guardrails:
        rel = g.max_harm.relative is not None
        # guardrails are not corrected: the raw p-value (a missed harm costs more than a false alarm)
        arms = [_arm_result(r, r.estimate.p_value) for r in rows if r.metric == g.metric]
        guards.append(
            GuardrailCheck(
                g.metric, g.direction, g.max_harm.relative if rel else g.max_harm.absolute, rel, arms
            )
        )
    smallest = min((data[pilot.primary.name].arms[a].n for a in pilot.arms), default=None)
    return decide(
        metric=pilot.primary.name,
        direction=hyp.direction,
        mde=mde,
        mde_relative=relative,
        alpha=s.alpha,
        primary=primary,
        guardrails=guards,
        srm_p=srm.p_value,
        cap_exceeded=bool(assignment_meta.get("cap_exceeded")),
        required_per_arm=plan.required_per_arm if plan else None,
        smallest_arm=smallest,
        bayesian=s.engine == "bayesian",
    )
