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

from dataclasses import dataclass, field

DECISIONS = ("ship", "harm", "no-effect", "inconclusive", "invalid")

_PLAIN_REASONS = {
    "empty_arm": "an arm has no customers",
    "too_few": "an arm has too few customers to estimate anything",
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
    against = [a for a in primary if _against(a, direction, alpha, bayesian)]
    if against:
        a = against[0]
        return Verdict(
            "harm",
            f"'{metric}' moved against the hypothesis in arm '{a.arm}' "
            f"({_describe(a)}), and the move is significant.",
            "primary_against",
            [a.arm],
            equivalence=equivalence,
        )
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
                return Verdict(
                    "harm",
                    f"Guardrail '{g.metric}' was breached in arm '{a.arm}' ({_describe(a)}: {why}).",
                    "guardrail",
                    [a.arm],
                    equivalence=equivalence,
                )

    winners = [a for a in primary if _moved(a, direction, alpha, bayesian)]
    if winners:
        best = winners[0]
        return Verdict(
            "ship",
            f"'{metric}' moved as predicted in arm '{best.arm}' ({_describe(best)}), "
            "significantly, with no guardrail breached.",
            "significant",
            [a.arm for a in winners],
            equivalence=equivalence,
        )

    if primary and all(
        a.tost_low is not None and a.tost_high is not None and -mde < a.tost_low and a.tost_high < mde
        for a in primary
    ):
        scale = "relative lift" if mde_relative else "effect"
        bound = f"{mde:.1%}" if mde_relative else f"{mde:g}"
        return Verdict(
            "no-effect",
            f"Any effect on '{metric}' is smaller than the {scale} worth acting on "
            f"(±{bound}): the channel does not move it enough to matter.",
            "equivalent",
            [a.arm for a in primary],
            equivalence=equivalence,
        )

    more = None
    if required_per_arm is not None and smallest_arm is not None:
        more = max(0, required_per_arm - smallest_arm)
    tail = (
        f" About {more:,} more customers per arm would settle it."
        if more
        else " A longer or larger pilot would settle it."
    )
    return Verdict(
        "inconclusive",
        f"The data cannot yet tell whether '{metric}' moved by the amount worth acting on." + tail,
        "underpowered",
        [a.arm for a in primary],
        more,
        equivalence=equivalence,
    )


def _against(a: ArmResult, direction: str, alpha: float, bayesian: bool) -> bool:
    if bayesian and a.chance_to_beat is not None:
        sign_against = a.effect is not None and (a.effect < 0 if direction == "increase" else a.effect > 0)
        return sign_against and a.chance_to_beat <= alpha
    return _moved(a, _opposite(direction), alpha, False)


def _describe(a: ArmResult) -> str:
    if a.lift is not None:
        return f"lift {_pct(a.lift)}"
    return f"effect {a.effect:+.4g}"
