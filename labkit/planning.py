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

With several treatment arms the primary family is corrected (Holm), so the plan uses alpha / (number of
treatment arms), Holm's worst case. Unequal allocations use the effective per-arm size
2 / (1/n_control + 1/n_treatment) of the smallest treatment arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from labkit.errors import SpecError
from labkit.spec import Pilot


@dataclass(frozen=True)
class Plan:
    pilot: str
    metric: str
    baseline_mean: float | None
    baseline_sd: float | None
    baseline_n: int
    baseline_from: str  # "assignment" | "eligible"
    mde_abs: float | None
    mde_relative: float | None
    alpha: float
    power: float
    required_per_arm: int | None
    required_total: int | None
    mde_at_cap: float | None  # absolute, on the metric's scale
    mde_at_cap_relative: float | None
    powered: bool | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The `plan` block of the JSON contract, plus the baseline it rests on."""
        return {
            "required_per_arm": self.required_per_arm,
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
            "warnings": list(self.warnings),
        }


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


def make_plan(pilot: Pilot, baseline, baseline_from: str) -> Plan:
    """Pure planning arithmetic over a measured baseline (an ArmMoments of the primary metric).

    Never raises for a pilot that validated: an MDE no number of customers reaches, or a cap too small
    to put 2 customers in every arm, is a plan without the missing numbers whose warnings say why (the
    analysis carries this plan in its JSON). :func:`plan` refuses the same pilot in one line instead."""
    return _make_plan(pilot, baseline, baseline_from)[0]


def _make_plan(pilot: Pilot, baseline, baseline_from: str) -> tuple[Plan, SpecError | None]:
    """The plan, and the problem that makes the pilot impossible to plan as written (or None)."""
    from labkit.stats import power as pw

    s = pilot.settings
    m = pilot.primary
    hyp = pilot.spec.hypothesis
    k = max(len(pilot.treatments), 1)
    alpha = s.alpha / k
    warnings: list[str] = []
    mean = baseline.mean if baseline.n else None
    if m.type == "ratio" and baseline.n and baseline.sum_x:
        mean = baseline.sum / baseline.sum_x
    sd = per_customer_sd(m.type, baseline)
    if m.type == "quantile":
        warnings.append("quantile metric: the plan uses the metric's SD, a rough stand-in for the bootstrap")
    if hyp.mde.relative is not None:
        mde_abs = abs(mean) * hyp.mde.relative if mean else None
    else:
        mde_abs = hyp.mde.absolute
    if baseline.n < 30:
        warnings.append(f"the baseline rests on only {baseline.n} customers")
    # a relative MDE of 1e-320 is 0 on the metric's scale (float underflow): as unreachable as 1e-300
    problem = _unreachable_mde(pilot, mde_abs) if (mde_abs == 0 and hyp.mde.relative) else None
    if sd is None or sd == 0 or not mde_abs:
        warnings.append(
            problem.detail if problem else "no usable baseline variance: the sample size cannot be planned"
        )
        plan = Plan(
            pilot.id,
            m.name,
            mean,
            sd,
            baseline.n,
            baseline_from,
            mde_abs,
            hyp.mde.relative,
            s.alpha,
            s.power,
            None,
            None,
            None,
            None,
            None,
            warnings,
        )
        return plan, problem
    weights = pilot.arms
    w_c = weights[pilot.control]
    w_t = min(weights[a] for a in pilot.treatments) if pilot.treatments else w_c
    cap = _cap(pilot)
    n_c, n_t = cap * w_c, cap * w_t
    n_eff = 2 / (1 / n_c + 1 / n_t) if n_c > 0 and n_t > 0 else 0
    try:
        if s.sequential:  # always-valid intervals are wider: plan with their boundary, tuned to the cap
            required = pw.sample_size_per_arm_sequential(
                sd=sd, mde_abs=mde_abs, alpha=alpha, power=s.power, n_tuning=cap
            )
        else:
            required = pw.sample_size_per_arm(sd_control=sd, mde_abs=mde_abs, alpha=alpha, power=s.power)
    except ValueError:  # sd > 0, a finite non-zero MDE, alpha and power validated: the MDE is out of reach
        required = None
    if required is None or required > MAX_PER_ARM:
        required, problem = None, _unreachable_mde(pilot, mde_abs)
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
    # total so that the smallest arm reaches `required` under the planned weights
    required_total = math.ceil(required / min(w_c, w_t)) if required else None
    powered = mde_cap is not None and mde_cap <= mde_abs * (1 + 1e-12)
    if problem is not None:
        warnings.append(problem.detail)
    elif not powered:
        warnings.append(
            f"underpowered: at the cap of {cap:,} customers the smallest detectable effect is "
            f"{mde_cap:.4g}, above the MDE {mde_abs:.4g}; about {required_total:,} customers would be needed"
        )
    rel = mde_cap / abs(mean) if (mde_cap is not None and mean) else None
    plan = Plan(
        pilot.id,
        m.name,
        mean,
        sd,
        baseline.n,
        baseline_from,
        mde_abs,
        hyp.mde.relative,
        s.alpha,
        s.power,
        required,
        required_total,
        mde_cap,
        rel,
        powered,
        warnings,
    )
    return plan, problem


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


def plan(pilot: Pilot, *, engine=None) -> Plan:
    """Measure the baseline in the lab's data and plan the pilot (DESIGN.md, Power)."""
    from labkit.data.aggregate import baseline as measure
    from labkit.data.sources import Engine

    own = engine is None
    engine = engine or Engine.for_lab(pilot.lab)
    try:
        population, origin = _population(engine, pilot)
        moments = measure(engine, pilot, pilot.primary, population)
        result, problem = _make_plan(pilot, moments, origin)
        if problem is not None:  # the command and the API refuse what cannot be planned (case 44)
            raise problem
        return result
    finally:
        if own:
            engine.close()


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
        from labkit.errors import LabkitError

        raise LabkitError(
            f"{pilot.id}: {field} is not set, so it comes from the imported assignment; run "
            f"`labkit assign {pilot.id}` first"
        )
    return value
