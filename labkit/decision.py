"""The verdict: ship | harm | no-effect | inconclusive | invalid, and one sentence a manager understands.

Rules (DESIGN.md, "Decision"), checked in this order:

1. ``invalid`` — sample-ratio mismatch (SRM p < 0.001), a broken exposure cap, or a data-quality
   failure of the primary metric (an empty arm, no variance, a zero denominator...: the estimate's
   ``reason`` code).
2. ``harm`` — a treatment arm moved the primary metric significantly *against* the hypothesis
   (adjusted p < alpha), or a guardrail is breached: its point estimate lies past ``max_harm`` in the
   harmful direction, or it moved significantly (raw p < alpha: guardrails are not corrected, a missed
   harm costs more than a false alarm) in that direction.
3. ``ship`` — some treatment arm moved the primary metric significantly in the predicted direction.
4. ``no-effect`` — equivalence by two one-sided tests for every treatment arm: the 1 − 2·alpha interval
   lies inside ±MDE (on the lift scale for a relative MDE).
5. ``inconclusive`` — otherwise, with how many more customers per arm the plan says would settle it.

Relative quantities are on the lift scale, lift = effect / |control mean| (`labkit.stats.moments.Estimate`),
so a lift always has the effect's sign: the relative MDE, the equivalence interval (a Fieller interval,
which agrees with the test; None when unbounded, and then equivalence cannot be shown) and a relative
``max_harm`` are judged the same way for metrics with negative means (net revenue) as for positive ones.

In the Bayesian engine "significant in a direction" reads "chance to beat control ≥ 1 − alpha" (or
≤ alpha for the opposite direction), and the equivalence interval is the 1 − 2·alpha credible interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DECISIONS = ("ship", "harm", "no-effect", "inconclusive", "invalid")

_PLAIN_REASONS = {
    "empty_arm": "an arm has no customers",
    "too_few": "an arm has too few customers (in a cluster pilot: clusters) for an interval",
    "zero_variance": "the metric does not vary, so nothing can be estimated",
    "zero_control_mean": "the control mean is zero, so a relative lift is undefined",
    "zero_denominator": "the ratio's denominator is zero in an arm",
    "suppressed_small_cell": "an arm is below the lab's minimum cell size",
}


@dataclass(frozen=True)
class ArmResult:
    """What the decision needs of one (metric, treatment arm) comparison."""

    arm: str
    effect: float | None
    lift: float | None
    p_value: float | None  # adjusted for the primary family; raw for guardrails
    reason: str | None = None
    tost_low: float | None = None  # the 1 - 2 alpha interval, on the MDE's scale
    tost_high: float | None = None
    chance_to_beat: float | None = None  # Bayesian engine: P(the move is in the predicted direction)


@dataclass(frozen=True)
class GuardrailCheck:
    metric: str
    direction: str  # the harmful direction: increase | decrease
    max_harm: float
    relative: bool
    arms: list[ArmResult] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    decision: str
    reason: str
    code: str  # stable machine-readable reason: srm, cap_exceeded, <estimate reason>, significant, ...
    arms: list[str] = field(default_factory=list)  # the arms the verdict is about
    more_per_arm: int | None = None
    # (arm, low, high) of every primary arm: the 1 − 2·alpha interval the equivalence rule judged, on the
    # MDE's scale (lift for a relative MDE); empty when the verdict came before it (invalid)
    equivalence: tuple[tuple[str, float | None, float | None], ...] = ()

    def to_dict(self) -> dict:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "code": self.code,
            "arms": list(self.arms),
            "more_per_arm": self.more_per_arm,
            "equivalence": [{"arm": a, "low": lo, "high": hi} for a, lo, hi in self.equivalence],
        }


def _moved(a: ArmResult, direction: str, alpha: float, bayesian: bool) -> bool:
    """Did this arm move significantly in ``direction`` (increase/decrease)?"""
    if a.effect is None:
        return False
    sign_ok = a.effect > 0 if direction == "increase" else a.effect < 0
    if bayesian and a.chance_to_beat is not None:
        # chance_to_beat is P(move in the hypothesis' direction); it is recomputed by the caller per direction
        return sign_ok and a.chance_to_beat >= 1 - alpha
    return sign_ok and a.p_value is not None and a.p_value < alpha


def _opposite(direction: str) -> str:
    return "decrease" if direction == "increase" else "increase"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def decide(
    *,
    metric: str,
    direction: str,
    mde: float,
    mde_relative: bool,
    alpha: float,
    primary: list[ArmResult],
    guardrails: list[GuardrailCheck],
    srm_p: float | None,
    cap_exceeded: bool = False,
    required_per_arm: int | None = None,
    smallest_arm: int | None = None,
    bayesian: bool = False,
) -> Verdict:
    """Turn the primary comparisons, guardrails and data checks into a verdict."""
    if srm_p is not None and srm_p < 0.001:
        return Verdict(
            "invalid",
            f"The arms' sizes do not match the planned split (SRM p = {srm_p:.2g}); "
            "the assignment or the data is broken, so no effect can be trusted.",
            "srm",
        )
    if cap_exceeded:
        return Verdict(
            "invalid",
            "More customers were exposed than the pilot's cap allows; "
            "the cap is a promise, so the pilot cannot count.",
            "cap_exceeded",
        )
    broken = [a for a in primary if a.reason is not None]
    if broken:
        code = broken[0].reason
        text = _PLAIN_REASONS.get(code, code.replace("_", " "))
        return Verdict(
            "invalid",
            f"The primary metric '{metric}' cannot be estimated: {text}.",
            code,
            [a.arm for a in broken],
        )

    # the intervals the equivalence rule judges, kept on every verdict past this point so a reader (or a
    # test) can see what decided between no-effect and inconclusive
    equivalence = tuple((a.arm, a.tost_low, a.tost_high) for a in primary)

    def judged(decision: str, reason: str, code: str, arms: list[str], more: int | None = None) -> Verdict:
        return Verdict(decision, reason, code, arms, more, equivalence=equivalence)

    against = [a for a in primary if _against(a, direction, alpha, bayesian)]
    if against:
        a = against[0]
        why = f"'{metric}' moved against the hypothesis in arm '{a.arm}' ({_describe(a)}), and the move is "
        why += "significant."
        return judged("harm", why, "primary_against", [a.arm])
    breach = _guardrail_breach(guardrails, alpha)
    if breach is not None:
        return judged("harm", breach[1], "guardrail", [breach[0]])
    winners = [a for a in primary if _moved(a, direction, alpha, bayesian)]
    if winners:
        best = winners[0]
        why = (
            f"'{metric}' moved as predicted in arm '{best.arm}' ({_describe(best)}), significantly, with no "
            "guardrail breached."
        )
        return judged("ship", why, "significant", [a.arm for a in winners])
    arms = [a.arm for a in primary]
    if primary and all(
        a.tost_low is not None and a.tost_high is not None and -mde < a.tost_low and a.tost_high < mde
        for a in primary
    ):
        scale = "relative lift" if mde_relative else "effect"
        bound = f"{mde:.1%}" if mde_relative else f"{mde:g}"
        why = (
            f"Any effect on '{metric}' is smaller than the {scale} worth acting on (±{bound}): the channel "
            "does not move it enough to matter."
        )
        return judged("no-effect", why, "equivalent", arms)
    more = None
    if required_per_arm is not None and smallest_arm is not None:
        more = max(0, required_per_arm - smallest_arm)
    tail = (
        f" About {more:,} more customers per arm would settle it."
        if more
        else " A longer or larger pilot would settle it."
    )
    why = f"The data cannot yet tell whether '{metric}' moved by the amount worth acting on." + tail
    return judged("inconclusive", why, "underpowered", arms, more)


def _guardrail_breach(guardrails: list[GuardrailCheck], alpha: float) -> tuple[str, str] | None:
    """(arm, sentence) of the first breached guardrail: its point estimate past ``max_harm`` in the harmful
    direction, or a significant move (raw p < alpha) in that direction; None when every guardrail holds."""
    for g in guardrails:
        for a in g.arms:
            if a.reason is not None or a.effect is None:
                continue
            value = a.lift if g.relative else a.effect
            harmful = value is not None and (
                value > g.max_harm if g.direction == "increase" else value < -g.max_harm
            )
            significant = (
                a.p_value is not None
                and a.p_value < alpha
                and (a.effect > 0 if g.direction == "increase" else a.effect < 0)
            )
            if harmful or significant:
                why = "past the allowed harm" if harmful else "a significant move in the harmful direction"
                return a.arm, f"Guardrail '{g.metric}' was breached in arm '{a.arm}' ({_describe(a)}: {why})."
    return None


def _against(a: ArmResult, direction: str, alpha: float, bayesian: bool) -> bool:
    if bayesian and a.chance_to_beat is not None:
        sign_against = a.effect is not None and (a.effect < 0 if direction == "increase" else a.effect > 0)
        return sign_against and a.chance_to_beat <= alpha
    return _moved(a, _opposite(direction), alpha, False)


def _describe(a: ArmResult) -> str:
    if a.lift is not None:
        return f"lift {_pct(a.lift)}"
    return f"effect {a.effect:+.4g}"


# --------------------------------------------------------------------------- recommendation

RECOMMENDATIONS = ("scale", "rework", "extend", "stop", "fix")


@dataclass(frozen=True)
class Recommendation:
    """What to do next: the statistical decision weighed with the economics (DESIGN.md, `recommendation`).

    ``recommendation`` is one of ``RECOMMENDATIONS``; ``arm`` the arm to scale (or the arm that works, for
    ``rework``; the harmful arm for a ``stop`` on harm), else None; ``reason`` one sentence that names it."""

    recommendation: str
    arm: str | None
    reason: str


def recommendation_of(decision: str | None, roi: float | None) -> str | None:
    """The rule of :func:`recommend` alone, from a decision and the pilot's ROI (None: no budget, a zero
    cost or no value estimate — nothing to weigh). `labkit compare` uses it for runs recorded before the
    recommendation existed; None for an unknown decision (a failed run)."""
    if decision == "ship":
        return "rework" if roi is not None and roi < 0 else "scale"
    return {"harm": "stop", "no-effect": "stop", "inconclusive": "extend", "invalid": "fix"}.get(
        decision or ""
    )


def best_arm(arms: list[str], gains: dict[str, float | None]) -> str | None:
    """The arm to scale among ``arms`` (the arms that ship): the largest gain, i.e. the largest effect in the
    predicted direction. With one ``value_per_unit`` per pilot the value per customer is gain × value_per_unit,
    so this is also the arm whose roll-out is worth most per customer reached. Ties, and arms without a gain,
    go by arm name, so the choice never depends on the order the arms were analysed in."""
    if not arms:
        return None
    return min(arms, key=lambda a: (gains.get(a) is None, -(gains.get(a) or 0.0), a))


def _money(x: float, currency: str) -> str:
    return f"{x:,.0f}{f' {currency}' if currency else ''}"


def _roi_text(roi: Mapping) -> str:
    """``ROI −5.0 % [−61 %, +51 %]`` (the interval when both bounds are known)."""
    text = f"ROI {roi['roi'] * 100:+.1f} %"
    lo, hi = roi.get("roi_ci_low"), roi.get("roi_ci_high")
    if lo is not None and hi is not None:
        text += f" [{lo * 100:+.0f} %, {hi * 100:+.0f} %]"
    return text


def recommend(
    verdict: Verdict, *, roi: Mapping | None, gains: dict[str, float | None], metric: str, currency: str = ""
) -> Recommendation:
    """The recommendation of DESIGN.md: the verdict weighed with the pilot's ROI.

    - ``fix`` for ``invalid``, ``stop`` for ``harm`` and ``no-effect``, ``extend`` for ``inconclusive``;
    - for ``ship``: ``scale`` when ROI ≥ 0 (break-even counts as paying back), when no budget was given
      (``roi`` None: nothing to weigh) or when the budget's cost is 0 (nothing to pay back); ``rework`` when
      ROI < 0 — effective but not yet paying back. A budget whose value could not be estimated is read as
      no ROI to weigh (``scale``, and the sentence says the value is unknown); it cannot happen with ``ship``,
      which needs the primary's interval.

    The rule reads ROI's point estimate, the pilot's best guess, as the decision reads the effect's; its
    interval does not change the recommendation but the sentence says when it crosses 0 (a ``scale``
    that may not pay back, a ``rework`` that might). ROI is the pilot's: the value of every treatment arm
    against the whole cost (``labkit.roi.pilot_roi``). ``gains`` maps each primary arm to its effect in the
    predicted direction; the arm to scale is :func:`best_arm` of the arms that ship.
    """
    d = verdict.decision
    if d not in DECISIONS:
        raise ValueError(f"unknown decision '{d}'; allowed: {', '.join(DECISIONS)}")
    if d == "invalid":
        return Recommendation("fix", None, f"Fix the pilot before reading any effect: {verdict.reason}")
    if d == "harm":
        arm = verdict.arms[0] if verdict.arms else None
        return Recommendation(
            "stop", arm, f"Stop{f' arm {arm!r}' if arm else ''} and revert it for the treated customers: "
            f"{verdict.reason}",
        )  # fmt: skip
    if d == "no-effect":
        return Recommendation("stop", None, f"Stop spending on this change for '{metric}': {verdict.reason}")
    if d == "inconclusive":
        more = (
            f"about {verdict.more_per_arm:,} more customers per arm would settle it"
            if verdict.more_per_arm
            else "a longer or larger pilot would settle it"
        )
        return Recommendation(
            "extend", None, f"Extend the pilot before deciding: the data cannot tell yet, and {more}."
        )
    arm = best_arm(list(verdict.arms), gains)
    several = f" (the best of {len(verdict.arms)} arms that work)" if len(verdict.arms) > 1 else ""
    if roi is None:
        return Recommendation(
            "scale", arm, f"Scale arm {arm!r}{several} to the whole eligible population; no budget was given, "
            "so there is no ROI to weigh.",
        )  # fmt: skip
    value, cost, ratio = roi.get("value"), roi.get("cost"), roi.get("roi")
    if ratio is None:
        why = "it cost nothing" if not cost else "its value could not be estimated"
        return Recommendation(
            "scale", arm, f"Scale arm {arm!r}{several} to the whole eligible population; {why}, so there is "
            "no ROI to weigh.",
        )  # fmt: skip
    money = f"value {_money(value, currency)} against cost {_money(cost, currency)}, {_roi_text(roi)}"
    lo, hi = roi.get("roi_ci_low"), roi.get("roi_ci_high")
    if ratio >= 0:
        doubt = (
            "; break-even lies inside ROI's interval, so it may not pay back"
            if lo is not None and lo < 0
            else ""
        )
        return Recommendation(
            "scale", arm, f"Scale arm {arm!r}{several} to the whole eligible population: {money}{doubt}."
        )
    hope = (
        "; ROI's interval reaches break-even, so a cheaper or better-valued version may pay back"
        if hi is not None and hi >= 0
        else ""
    )
    return Recommendation(
        "rework", arm, f"Effective but not yet paying back: arm {arm!r}{several} moves '{metric}' as predicted, "
        f"but the pilot's {money}{hope}; cut the cost or raise the value per customer before scaling it.",
    )  # fmt: skip
