"""The economics of a pilot: what its primary effect is worth against what it cost (the ``roi`` block).

Value = effect per customer × ``budget.value_per_unit`` × customers in the treatment arms, signed so that a
move in the hypothesis' direction is worth money; its interval comes from the effect's interval; ROI =
(value − cost) / cost (None at cost 0: nothing to pay back). With several treatment arms the values add
up, and so do the bounds: a conservative interval. ``labkit.decision.recommend`` weighs the verdict with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from labkit.result import MetricRow, RoiSummary
from labkit.spec import Pilot


def direction_sign(pilot: Pilot) -> float:
    """+1 when the hypothesis predicts an increase, −1 for a decrease: a gain is sign × effect."""
    return 1.0 if pilot.spec.hypothesis.direction == "increase" else -1.0


def primary_gains(pilot: Pilot, rows: Iterable[MetricRow]) -> dict[str, float | None]:
    """Each primary arm's effect in the predicted direction (None where there is no effect): the arm to
    scale is the largest gain (``labkit.decision.best_arm``)."""
    sign = direction_sign(pilot)
    effects = {r.arm: r.estimate.effect for r in rows if r.role == "primary"}
    return {arm: (None if effect is None else sign * effect) for arm, effect in effects.items()}


def pilot_roi(pilot: Pilot, rows: Iterable[MetricRow]) -> RoiSummary | None:
    """The ``roi`` block (module docstring), None when the pilot gives no budget. Any primary arm without
    an effect or an interval leaves value and ROI unknown (None), the cost and value per unit still said."""
    budget = pilot.spec.budget
    if budget is None:
        return None
    sign = direction_sign(pilot)
    value = low = high = 0.0
    for r in rows:
        if r.role != "primary":
            continue
        est = r.estimate
        if est.effect is None or est.ci_low is None or est.n_treatment is None:
            return RoiSummary(None, None, None, budget.cost, None, None, None, budget.value_per_unit)
        unit = budget.value_per_unit * (r.assigned_treatment or est.n_treatment) * sign
        a, b = est.ci_low * unit, est.ci_high * unit
        value += est.effect * unit
        low += min(a, b)
        high += max(a, b)
    cost = budget.cost

    def ratio(v):
        return (v - cost) / cost if cost else None

    return RoiSummary(
        value=value,
        value_ci_low=low,
        value_ci_high=high,
        cost=cost,
        roi=ratio(value),
        roi_ci_low=ratio(low),
        roi_ci_high=ratio(high),
        value_per_unit=budget.value_per_unit,
    )
