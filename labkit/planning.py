"""Power planning: customers per arm needed for the MDE, and the MDE reachable at the exposure cap.

The baseline (mean and per-customer standard deviation of the primary metric) is measured, not guessed:
over the assigned customers when an assignment exists, else over the eligible customers. Event metrics
read the pre-period ``[start − window_days, start)`` because the pilot's own period is the future at
plan time; per-customer tables read their current values. The per-customer SD that enters the formula
is the one the analysis will use: sqrt(p(1−p)) for proportions, the delta-method SD for ratios, the
CUPED-reduced SD sqrt(1 − ρ²)·σ when the metric has a covariate, and the raw SD for quantiles (a rough,
conservative stand-in, reported as such).

In sequential mode the always-valid boundary h·se replaces z_{1−α/2}·se (``labkit.stats.power``,
sequential part), tuned to the cap as the analysis is: the plan then asks for more customers, honestly.

Where the baseline comes from, in order (``Plan.baseline_from``):

1. ``control arm`` — once the pilot has started (``cohort.start`` <= today, UTC) and is assigned: the
   primary metric over the control arm, exactly what ``labkit analyze`` measures for its ``plan`` block, so
   `plan` and `analyze` give the same numbers on the same data (both call :func:`make_plan` on those moments);
2. ``assignment`` / ``eligible`` — before the start: the pre-period of the assigned (else eligible) customers;
3. ``assumption`` — ``hypothesis.baseline`` ({rate: p} or {mean: m, sd: s}), when the data above holds no
   usable variance (no outcome rows yet, a constant column) or the metric's source file does not exist
   yet. The plan then says so in a warning. Without an assumption such a pilot gets no sample size.

With several treatment arms the primary family is corrected (Holm over the treatment arms), so the plan uses
alpha / (number of treatment arms): Holm's first step, i.e. Bonferroni, its worst case. Arms are sized for the
planned allocation: with k = w_treatment / w_control for the smallest treatment arm, the control arm needs
n_c = (z_{1−α/2} + z_{power})² σ² (1 + 1/k) / mde² (statsmodels ``NormalIndPower`` with ``ratio=k``), and
each arm a gets ceil(n_c · w_a / w_control) (``Plan.required_by_arm``); ``required_per_arm`` is the
smallest arm's number (the one whose shortfall "how many more" counts; with equal arms every arm's), and
``required_total`` their sum. In sequential mode the equal-arm size n of the always-valid test is
translated to the allocation by equal variance, n_c = n (1 + 1/k) / 2 (exact for the fixed horizon, a close
approximation for the boundary, which depends on the customers analysed). An MDE is out of reach when two
equal arms would need more than 10^15 customers each.

Cluster-randomised pilots (``cohort.unit_column``): customers of a cluster are not independent, so the plan
carries the design effect DE = 1 + (n̄_w − 1)·ICC (``labkit.stats.cluster``; n̄_w the size-weighted cluster
size): the customers' numbers (per arm, MDE at the cap) are planned with the per-customer SD times √DE, and
``clusters_per_arm`` is the t-based search of ``clusters_per_arm`` (see :func:`_clusters_needed`). The ICC
and the cluster sizes are measured on the primary metric's cluster totals where the baseline is measured
(the control arm's clusters once started, as ``analyze`` does, else the assigned or eligible customers'
clusters, event metrics on the pre-period); where the data give no ICC (a ratio metric, no outcomes yet)
``hypothesis.baseline.icc`` is assumed, else 0.05 with a warning (``labkit.clustered.DEFAULT_ICC``).
"""

from __future__ import annotations

import math
from dataclasses import replace

from labkit._validation import unlocated
from labkit.errors import AssignmentError, LabkitError, SpecError
from labkit.result import Plan
from labkit.spec import Pilot

__all__ = ["MAX_PER_ARM", "Plan", "assumed_baseline", "make_plan", "per_customer_sd", "plan"]


def per_customer_sd(kind: str, moments) -> float | None:
    """The per-customer SD the analysis of this metric type will face."""
    n = moments.n
    if n < 2:
        return None
    if kind == "proportion":
        p = moments.mean
        return math.sqrt(max(p * (1 - p), 0.0))
    if kind == "ratio":
        mx = moments.mean_x
        if mx == 0:
            return None
        r = moments.sum / moments.sum_x
        var = moments.var - 2 * r * moments.cov_xy + r * r * moments.var_x
        return math.sqrt(max(var, 0.0)) / abs(mx)
    sd = math.sqrt(max(moments.var, 0.0))
    if moments.sum_x_sq and moments.var_x > 0 and moments.var > 0:
        rho = moments.cov_xy / math.sqrt(moments.var_x * moments.var)
        sd *= math.sqrt(max(1 - rho * rho, 0.0))
    return sd


# Customers per arm past which an MDE is no pilot's to detect (the sequential search stops here too): the
# plan refuses it rather than print a 300-digit number or overflow (RELIABILITY.md case 44).
MAX_PER_ARM = 10**15


def make_plan(pilot: Pilot, baseline, baseline_from: str, *, design=None) -> Plan:
    """Pure planning arithmetic over a measured baseline (an ArmMoments of the primary metric); ``design``
    (``labkit.clustered.ClusterDesign``) sizes a cluster-randomised pilot (module docstring).

    Never raises for a pilot that validated: an MDE no number of customers reaches, or a cap too small
    to put 2 customers in every arm, is a plan without the missing numbers whose warnings say why (the
    analysis carries this plan in its JSON). :func:`plan` refuses the same pilot in one line instead."""
    return _make_plan(pilot, baseline, baseline_from, design=design)[0]


def assumed_baseline(pilot: Pilot) -> tuple[float, float] | None:
    """(mean, per-customer SD) of ``hypothesis.baseline``, or None: sqrt(p(1 − p)) for an assumed rate;
    for ``{pilot: id}`` the control arm of that pilot's latest recorded run (:func:`past_pilot_baseline`)."""
    b = pilot.spec.hypothesis.baseline
    if b is None:
        return None
    if b.pilot is not None:
        return past_pilot_baseline(pilot, b.pilot)
    if b.rate is not None:
        return b.rate, math.sqrt(b.rate * (1 - b.rate))
    if b.mean is not None and b.sd is not None:
        return b.mean, b.sd
    return None


def past_pilot_baseline(pilot: Pilot, past: str) -> tuple[float, float]:
    """The control arm's mean and per-customer SD of the primary metric (same name) in the latest recorded
    run of the past pilot ``past`` (``results/<past>/runs/*/results.json``): SD sqrt(p(1 − p)) for a
    proportion, sqrt(Var(mean) · n) otherwise — the variance the analysis used, so a CUPED metric's
    reduced SD. One clear error when there is no such run or metric."""
    import json

    name = pilot.spec.hypothesis.metric
    where = f"hypothesis.baseline.pilot: '{past}'"
    runs = sorted((pilot.lab.results_dir / past / "runs").glob("*/results.json"))
    if not runs:
        raise unlocated(f"{where} has no recorded run in results/{past}/runs/; run it first, or give numbers")
    try:
        rows = json.loads(runs[-1].read_text(encoding="utf-8")).get("metrics") or []
    except (OSError, ValueError, AttributeError):
        rows = []
    row = next((r for r in rows if r.get("metric") == name and r.get("mean_control") is not None), None)
    if row is None:
        raise unlocated(f"{where}: its latest run has no control mean for '{name}'; give numbers instead")
    mean = float(row["mean_control"])
    if row.get("type") == "proportion":
        return mean, math.sqrt(mean * (1 - mean))
    var, n = row.get("var_mean_control"), row.get("n_control")
    if not var or not n:
        raise unlocated(f"{where}: its latest run has no variance for '{name}'; give {{mean, sd}} instead")
    return mean, math.sqrt(float(var) * float(n))


def _measured(pilot: Pilot, baseline) -> tuple[float | None, float | None]:
    """(mean, per-customer SD) of a measured baseline (an ArmMoments of the primary metric)."""
    m = pilot.primary
    mean = baseline.mean if baseline.n else None
    if m.type == "ratio" and baseline.n and baseline.sum_x:
        mean = baseline.sum / baseline.sum_x
    return mean, per_customer_sd(m.type, baseline)


def _usable(pilot: Pilot, mean: float | None, sd: float | None) -> bool:
    needs_mean = pilot.spec.hypothesis.mde.relative is not None
    return bool(sd) and (mean is not None and mean != 0 or not needs_mean)


def _make_plan(
    pilot: Pilot, baseline, baseline_from: str, *, missing: str | None = None, design=None
) -> tuple[Plan, SpecError | None]:
    """The plan, and the problem that makes the pilot impossible to plan as written (or None).

    ``baseline`` is the measured ArmMoments (None when nothing could be measured, ``missing`` saying why);
    where it has no usable variance, ``hypothesis.baseline`` stands in (module docstring)."""
    from labkit.stats import power as pw

    s = pilot.settings
    m = pilot.primary
    hyp = pilot.spec.hypothesis
    k = max(len(pilot.treatments), 1)
    alpha = s.alpha / k
    warnings: list[str] = []
    n_measured = baseline.n if baseline is not None else 0
    mean, sd = _measured(pilot, baseline) if baseline is not None else (None, None)
    # read only when needed: a past pilot's baseline reads its results, and says so when it cannot
    assumed = None if _usable(pilot, mean, sd) else assumed_baseline(pilot)
    if assumed is not None:
        why = missing or f"the {baseline_from} data holds no usable baseline for '{m.name}' yet"
        past = pilot.spec.hypothesis.baseline.pilot
        source = f"pilot '{past}''s latest recorded control arm" if past else "the assumed baseline"
        warnings.append(f"{why}: planned from {source} (hypothesis.baseline)")
        mean, sd, n_measured, baseline_from = assumed[0], assumed[1], 0, "assumption"
    elif missing is not None:
        warnings.append(missing)
    if m.type == "quantile":
        warnings.append("quantile metric: the plan uses the metric's SD, a rough stand-in for the bootstrap")
    if hyp.mde.relative is not None:
        mde_abs = abs(mean) * hyp.mde.relative if mean else None
    else:
        mde_abs = hyp.mde.absolute
    if baseline_from != "assumption" and n_measured < 30:
        warnings.append(f"the baseline rests on only {n_measured} customers")
    # a relative MDE of 1e-320 is 0 on the metric's scale (float underflow): as unreachable as 1e-300
    problem = _unreachable_mde(pilot, mde_abs) if (mde_abs == 0 and hyp.mde.relative) else None
    sd_customer, clustered = sd, {}
    if design is not None:  # a cluster pilot: clusters needed, and the customers' numbers carry the DE
        clustered, sd = _cluster_sizing(pilot, design, sd, mde_abs, alpha, warnings)

    def partial(**planned) -> Plan:
        """The plan of this baseline with the numbers that could be planned (``planned``; none: a plan
        whose warnings say why), and every warning said so far."""
        return Plan(
            pilot=pilot.id, metric=m.name, baseline_mean=mean, baseline_sd=sd_customer, baseline_n=n_measured,
            baseline_from=baseline_from, mde_abs=mde_abs, mde_relative=hyp.mde.relative, alpha=s.alpha,
            power=s.power, warnings=tuple(warnings), **clustered, **planned,
        )  # fmt: skip

    if sd is None or sd == 0 or not mde_abs:
        if problem:
            warnings.append(problem.detail)
        else:
            hint = "" if assumed is not None else "; give an assumed one in hypothesis.baseline"
            warnings.append(f"no usable baseline variance: the sample size cannot be planned{hint}")
        return partial(), problem
    weights = pilot.arms
    w_c = weights[pilot.control]
    w_t = min(weights[a] for a in pilot.treatments) if pilot.treatments else w_c
    ratio = w_t / w_c  # k = n_treatment / n_control for the smallest treatment arm
    cap = _cap(pilot)
    n_c, n_t = cap * w_c, cap * w_t
    n_eff = 2 / (1 / n_c + 1 / n_t) if n_c > 0 and n_t > 0 else 0
    try:
        if s.sequential:  # always-valid intervals are wider: plan with their boundary, tuned to the cap
            equal = pw.sample_size_per_arm_sequential(
                sd=sd, mde_abs=mde_abs, alpha=alpha, power=s.power, n_tuning=cap
            )
        else:
            equal = pw.sample_size_per_arm(sd_control=sd, mde_abs=mde_abs, alpha=alpha, power=s.power)
    except ValueError:  # sd > 0, a finite non-zero MDE, alpha and power validated: the MDE is out of reach
        equal = None
    by_arm = None
    if equal is None or equal > MAX_PER_ARM:
        equal, problem = None, _unreachable_mde(pilot, mde_abs)
    else:
        by_arm = _sized_arms(pilot, equal, sd=sd, mde_abs=mde_abs, alpha=alpha, ratio=ratio)
    if s.sequential:
        mde_cap = (
            pw.mde_at_n_sequential(sd=sd, n_per_arm=n_eff, n_analysed=n_c + n_t, n_tuning=cap, alpha=alpha,
                                   power=s.power)
            if n_eff >= 2 else None
        )  # fmt: skip
    else:
        mde_cap = pw.mde_at_n(sd=sd, n_per_arm=n_eff, alpha=alpha, power=s.power) if n_eff >= 2 else None
    if n_eff < 2 and problem is None:
        problem = _cap_too_small(pilot, cap, w_c, w_t)
    required = min(by_arm.values()) if by_arm else None
    required_total = sum(by_arm.values()) if by_arm else None
    powered = mde_cap is not None and mde_cap <= mde_abs * (1 + 1e-12)
    if problem is not None:
        warnings.append(problem.detail)
    elif not powered:
        warnings.append(
            f"underpowered: at the cap of {cap:,} customers the smallest detectable effect is "
            f"{mde_cap:.4g}, above the MDE {mde_abs:.4g}; about {required_total:,} customers would be needed"
        )
    rel = mde_cap / abs(mean) if (mde_cap is not None and mean) else None
    planned = partial(
        required_per_arm=required, required_total=required_total, required_by_arm=by_arm, mde_at_cap=mde_cap,
        mde_at_cap_relative=rel, powered=powered,
    )  # fmt: skip
    return planned, problem


def _sized_arms(pilot: Pilot, equal: int, *, sd: float, mde_abs: float, alpha: float, ratio: float) -> dict:
    """Every arm's size for the planned allocation (module docstring): the control arm's n_c for the ratio
    k of the smallest treatment arm, each arm ceil(n_c · w_a / w_control), at least 2."""
    from labkit.stats import power as pw

    weights = pilot.arms
    w_c = weights[pilot.control]
    if pilot.settings.sequential:
        n_control = equal * (1 + 1 / ratio) / 2
    else:  # the equal-arm formula with σ_t² = σ²/k is n_c = z²σ²(1 + 1/k)/mde², rounded up once
        n_control = pw.sample_size_per_arm(
            sd_control=sd, sd_treatment=sd / math.sqrt(ratio), mde_abs=mde_abs, alpha=alpha,
            power=pilot.settings.power,
        )  # fmt: skip
    return {arm: max(2, math.ceil(n_control * w / w_c * (1 - 1e-12))) for arm, w in weights.items()}


def _unreachable_mde(pilot: Pilot, mde_abs: float | None) -> SpecError:
    mde = pilot.spec.hypothesis.mde
    field = "hypothesis.mde.relative" if mde.relative is not None else "hypothesis.mde.absolute"
    given = mde.relative if mde.relative is not None else mde.absolute
    scale = f" ({mde_abs:.3g} on the metric's scale)" if mde.relative is not None else ""
    return SpecError(
        pilot.doc.path,
        pilot.doc.line_of(tuple(field.split("."))),
        field,
        f"an MDE of {given:g}{scale} needs more than 10^15 customers per arm, which no pilot "
        "reaches; give the smallest effect worth detecting",
    )


def _cap_too_small(pilot: Pilot, cap: int, w_control: float, w_treatment: float) -> SpecError:
    # n_eff = cap / (1/w_c + 1/w_t) * 2 must reach 2 customers per arm (Welch needs a variance in each)
    smallest = math.ceil((1 / w_control + 1 / w_treatment) * (1 - 1e-12))
    return SpecError(
        pilot.doc.path,
        pilot.doc.line_of(("cohort", "max_size")),
        "cohort.max_size",
        f"a cap of {cap:,} leaves fewer than 2 customers per arm, so no effect is detectable; "
        f"plan with a cap of at least {smallest:,}",
    )


def plan(pilot: Pilot, *, engine=None, today=None) -> Plan:
    """Measure the baseline in the lab's data and plan the pilot (DESIGN.md, Power; module docstring for
    where the baseline comes from). ``today`` (a date, default today in UTC) decides whether the pilot has
    started, i.e. whether its control arm's outcomes are the baseline, as in ``labkit analyze``."""
    from labkit.data.sources import Engine

    own = engine is None
    engine = engine or Engine.for_lab(pilot.lab)
    try:
        moments, origin, missing = _baseline(engine, pilot, today)
        design = None
        if pilot.spec.cohort.unit_column:  # the control arm summed over its clusters, as `analyze` sums it
            design, control = _cluster_design(engine, pilot, today)
            moments = control if control is not None and origin == "control arm" else moments
        result, problem = _make_plan(pilot, moments, origin, missing=missing, design=design)
        if problem is not None:  # the command and the API refuse what cannot be planned (case 44)
            raise problem
        return result
    finally:
        if own:
            engine.close()


def _baseline(engine, pilot: Pilot, today):
    """(moments or None, origin, why nothing was measured or None): see the module docstring."""
    import datetime as dt

    from labkit.assignment import assignment_path
    from labkit.data.aggregate import aggregate_pilot, units_table
    from labkit.data.aggregate import baseline as measure
    from labkit.errors import DataError

    today = today or dt.datetime.now(dt.UTC).date()
    started = pilot.start is not None and pilot.start <= today
    try:
        if started and assignment_path(pilot).is_file():  # what `labkit analyze` plans from
            # the primary metric alone: its moments do not depend on the other metrics, whose sources
            # (a missing event log, say) are no business of the plan
            alone = replace(
                pilot, spec=pilot.spec.model_copy(update={"metrics": [pilot.primary], "guardrails": []})
            )
            data = aggregate_pilot(engine, alone, units_table(engine, alone))
            return data[pilot.primary.name].arms.get(pilot.control), "control arm", None
        population, origin = _population(engine, pilot)
        return measure(engine, pilot, pilot.primary, population), origin, None
    except DataError as exc:
        absent = _not_there_yet(pilot, exc)
        if assumed_baseline(pilot) is None or absent is None:
            raise
        return None, "assumption", f"no data yet ({absent} does not exist)"


def _not_there_yet(pilot: Pilot, exc) -> str | None:
    """The primary metric's (or the cohort's) source file, as shown, when the data error is that it does not
    exist yet (an assumed baseline stands in: a pilot is planned before any data exists), else None: a
    misspelt column or a broken file is still an error."""
    m = pilot.primary
    sources = {m.source, pilot.spec.cohort.source}
    sources |= {r.source for r in (m.numerator, m.denominator) if r is not None}
    if exc.source not in sources or exc.column is not None:
        return None
    try:
        path = pilot.lab.source_path(exc.source)
    except LabkitError:
        return None
    return None if path.exists() else pilot.lab.display(path)


def _population(engine, pilot: Pilot):
    """The customers the baseline is measured on: the assignment if drawn, else the eligible cohort."""
    import ibis

    from labkit.assignment import assignment_path
    from labkit.cohort import eligible

    start = ibis.literal(_known(pilot, pilot.start, "cohort.start")).cast("timestamp")
    path = assignment_path(pilot)
    if path.is_file():
        units = engine.read_file(path, f"assignment_{pilot.id.replace('-', '_')}")
        return units.select("customer_id", arm=ibis.literal("all"), assigned_at=start), "assignment"
    idc = pilot.spec.cohort.id_column
    pop = eligible(engine, pilot)
    return pop.select(customer_id=pop[idc], arm=ibis.literal("all"), assigned_at=start), "eligible"


def _cap(pilot: Pilot) -> int:
    return _known(pilot, pilot.cap, "cohort.max_size")


def _known(pilot: Pilot, value, field: str):
    """An imported assignment may leave the cap and the start to its data: known once it is assigned."""
    if value is None:
        raise AssignmentError(
            pilot.id,
            f"{field} is not set, so it comes from the imported assignment; run "
            f"`labkit assign {pilot.id}` first",
        )
    return value


# --------------------------------------------------------------------------------------------------
# cluster-randomised pilots


def _cluster_sizing(
    pilot: Pilot, design, sd, mde_abs, alpha: float, warnings: list[str]
) -> tuple[dict, float]:
    """The plan's cluster fields (``clusters_per_arm``, ``icc``, ``design_effect``) and the per-customer SD
    inflated by √DE, with which the customers' numbers (per arm, at the cap) are planned (module docstring)."""
    from labkit.clustered import DEFAULT_ICC

    if design.icc_from == "default":
        warnings.append(
            f"no ICC from the data or hypothesis.baseline.icc: planned with an assumed ICC of {DEFAULT_ICC:g}"
        )
    de = design.design_effect
    fields = {"icc": design.icc, "design_effect": de, "clusters_per_arm": None}
    if de is None:
        warnings.append("no cluster sizes in the data yet: the clusters needed cannot be planned")
        return fields, sd
    if sd and mde_abs:
        fields["clusters_per_arm"] = _clusters_needed(pilot, design, sd, mde_abs, alpha)
    return fields, sd * math.sqrt(de) if sd else sd


def _clusters_needed(pilot: Pilot, design, sd: float, mde_abs: float, alpha: float) -> int | None:
    """Clusters per arm: ``labkit.stats.cluster.clusters_per_arm`` (two-sided t on cluster means, 2K − 2
    df) with a cluster mean's variance σ²·(1 + (n̄_w − 1)ρ)/n̄ — n̄ customers per cluster, the design effect
    at the size-weighted n̄_w (unequal clusters cost more) — passed as the SD σ·√(n̄_w/n̄) at size n̄_w;
    for unequal weights translated to the allocation by equal variance as the customers are (the smallest
    arm's number). A saturation design's arms are compared as customers of pure-control clusters against
    treated ones, each counted as a whole cluster (a lower bound for partial shares)."""
    from labkit.stats import power as pw
    from labkit.stats.cluster import clusters_per_arm, design_effect

    n_bar, n_w = design.mean_size, design.weighted_size
    sd_eff = sd * math.sqrt(n_w / n_bar)
    rough = pw.sample_size_per_arm(
        sd_control=sd * math.sqrt(design_effect(design.icc, n_w) / n_bar), mde_abs=mde_abs, alpha=alpha,
        power=pilot.settings.power,
    )  # fmt: skip
    if rough > 100_000:  # beyond any pilot; the t search would crawl, and t is z there
        return rough if rough <= MAX_PER_ARM else None
    equal = clusters_per_arm(mde_abs, sd_eff, design.icc, n_w, alpha=alpha, power=pilot.settings.power)
    weights = pilot.arms
    w_c = weights[pilot.control]
    ratio = min(weights[a] for a in pilot.treatments) / w_c if pilot.treatments else 1.0
    k_control = equal * (1 + 1 / ratio) / 2
    return min(max(2, math.ceil(k_control * w / w_c * (1 - 1e-12))) for w in weights.values())


def _cluster_design(engine, pilot: Pilot, today):
    """The ICC and cluster sizes measured where ``plan`` measures the baseline (the control arm's clusters
    once started, else the assigned or eligible customers' clusters, event metrics on the pre-period);
    assumed (``labkit.clustered.plan_design``) where the data hold none. Returns the design and, once
    started, the control arm's moments summed over its clusters (``analyze``'s very sums, so the two plans
    agree to the last digit), else None."""
    import datetime as dt

    import ibis

    from labkit.assignment import assignment_path
    from labkit.clustered import of_totals, of_values, plan_design
    from labkit.cohort import eligible
    from labkit.data.aggregate import units_table
    from labkit.data.cluster_values import cluster_values
    from labkit.data.clusters import cluster_totals
    from labkit.errors import DataError

    c, m = pilot.spec.cohort, pilot.primary
    today = today or dt.datetime.now(dt.UTC).date()
    started = pilot.start is not None and pilot.start <= today and assignment_path(pilot).is_file()
    try:
        if started:
            units = units_table(engine, pilot)
        else:
            start = ibis.literal(_known(pilot, pilot.start, "cohort.start")).cast("timestamp")
            if m.event is not None:
                start = start - ibis.interval(days=int(m.window_days))
            if assignment_path(pilot).is_file():
                units = _population(engine, pilot)[0]
            else:  # the eligible customers that have a cluster (the draw leaves the others out)
                pop = eligible(engine, pilot)
                units = pop.filter(pop[c.unit_column].notnull()).select(customer_id=pop[c.id_column])
            units = units.select("customer_id", arm=ibis.literal("all"), assigned_at=start)
        if m.type == "quantile":  # no totals: its values with their clusters (labkit.data.cluster_values)
            data = of_values(pilot, cluster_values(engine, pilot, m, units, c.unit_column))
        else:
            data = of_totals(pilot, cluster_totals(engine, pilot, m, units, c.unit_column))
    except (DataError, AssignmentError):
        data = None
    control = data.arms.get(pilot.control) if data is not None and started else None
    return plan_design(pilot, data), control
