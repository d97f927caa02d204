"""The verdict rules of DESIGN.md, one rule per test, on hand-built comparisons."""

from __future__ import annotations

from labkit.decision import ArmResult, GuardrailCheck, decide

BASE = dict(
    metric="churned",
    direction="decrease",
    mde=0.15,
    mde_relative=True,
    alpha=0.05,
    guardrails=[],
    srm_p=0.5,
    required_per_arm=4000,
    smallest_arm=1000,
)


def arm(effect, p, lift=None, low=-0.5, high=0.5, reason=None, arm="fast"):
    return ArmResult(
        arm=arm,
        effect=effect,
        lift=effect if lift is None else lift,
        p_value=p,
        reason=reason,
        tost_low=low,
        tost_high=high,
    )


def test_srm_makes_it_invalid_whatever_the_effect():
    v = decide(**{**BASE, "srm_p": 0.0009}, primary=[arm(-0.05, 1e-9)])
    assert (v.decision, v.code) == ("invalid", "srm")


def test_srm_at_the_threshold_is_valid():
    assert decide(**{**BASE, "srm_p": 0.001}, primary=[arm(-0.05, 1e-9)]).decision == "ship"


def test_broken_cap_is_invalid():
    v = decide(**BASE, primary=[arm(-0.05, 1e-9)], cap_exceeded=True)
    assert (v.decision, v.code) == ("invalid", "cap_exceeded")


def test_degenerate_primary_is_invalid_with_its_reason():
    v = decide(**BASE, primary=[arm(None, None, reason="zero_variance")])
    assert (v.decision, v.code) == ("invalid", "zero_variance") and "does not vary" in v.reason


def test_ship_when_significant_in_the_predicted_direction():
    v = decide(**BASE, primary=[arm(-0.05, 0.01)])
    assert v.decision == "ship" and v.arms == ["fast"]


def test_not_ship_when_p_equals_alpha():
    assert decide(**BASE, primary=[arm(-0.05, 0.05)]).decision == "inconclusive"


def test_harm_when_significant_against_the_hypothesis():
    v = decide(**BASE, primary=[arm(+0.05, 0.001)])
    assert (v.decision, v.code) == ("harm", "primary_against")


def test_guardrail_point_estimate_past_max_harm_is_harm_even_if_not_significant():
    g = GuardrailCheck("unsubscribed", "increase", 0.01, False, [arm(0.012, 0.4)])
    v = decide(**{**BASE, "guardrails": [g]}, primary=[arm(-0.05, 0.01)])
    assert (v.decision, v.code) == ("harm", "guardrail")


def test_guardrail_significant_harmful_move_is_harm():
    g = GuardrailCheck("unsubscribed", "increase", 0.01, False, [arm(0.004, 0.01)])
    assert decide(**{**BASE, "guardrails": [g]}, primary=[arm(-0.05, 0.01)]).decision == "harm"


def test_guardrail_move_in_the_good_direction_is_not_harm():
    g = GuardrailCheck("unsubscribed", "increase", 0.01, False, [arm(-0.004, 0.001)])
    assert decide(**{**BASE, "guardrails": [g]}, primary=[arm(-0.05, 0.01)]).decision == "ship"


def test_relative_guardrail_uses_the_lift():
    g = GuardrailCheck("unsubscribed", "increase", 0.10, True, [arm(0.001, 0.5, lift=0.2)])
    assert decide(**{**BASE, "guardrails": [g]}, primary=[arm(-0.05, 0.01)]).decision == "harm"


def test_no_effect_when_the_tost_interval_lies_inside_the_mde():
    v = decide(**BASE, primary=[arm(-0.01, 0.6, low=-0.10, high=0.12)])
    assert (v.decision, v.code) == ("no-effect", "equivalent")


def test_not_no_effect_when_the_interval_reaches_the_mde():
    v = decide(**BASE, primary=[arm(-0.01, 0.6, low=-0.15, high=0.12)])
    assert v.decision == "inconclusive"


def test_inconclusive_says_how_many_more_customers():
    v = decide(**BASE, primary=[arm(-0.01, 0.6, low=-0.3, high=0.3)])
    assert (
        v.decision == "inconclusive" and v.more_per_arm == 3000 and "3,000 more customers per arm" in v.reason
    )


def test_any_winning_arm_ships_when_none_harms():
    v = decide(**BASE, primary=[arm(-0.01, 0.6, arm="a"), arm(-0.06, 0.001, arm="b")])
    assert v.decision == "ship" and v.arms == ["b"]


def test_a_harmful_arm_beats_a_winning_arm():
    v = decide(**BASE, primary=[arm(-0.06, 0.001, arm="a"), arm(0.06, 0.001, arm="b")])
    assert v.decision == "harm" and v.arms == ["b"]


def test_bayesian_ship_needs_chance_to_beat_at_least_one_minus_alpha():
    def b(ctb):
        return ArmResult(
            arm="fast",
            effect=-0.05,
            lift=-0.1,
            p_value=None,
            tost_low=-0.3,
            tost_high=0.1,
            chance_to_beat=ctb,
        )

    assert decide(**BASE, primary=[b(0.96)], bayesian=True).decision == "ship"
    assert decide(**BASE, primary=[b(0.90)], bayesian=True).decision == "inconclusive"


def test_every_verdict_past_the_data_checks_names_the_intervals_the_equivalence_rule_judged():
    primary = [arm(-0.01, 0.6, low=-0.10, high=0.12, arm="a"), arm(-0.02, 0.5, low=-0.3, high=0.2, arm="b")]
    v = decide(**BASE, primary=primary)
    assert v.decision == "inconclusive"  # arm b's interval reaches past -0.15
    assert v.equivalence == (("a", -0.10, 0.12), ("b", -0.3, 0.2))
    assert v.to_dict()["equivalence"] == [
        {"arm": "a", "low": -0.10, "high": 0.12},
        {"arm": "b", "low": -0.3, "high": 0.2},
    ]
    assert decide(**BASE, primary=[arm(-0.05, 0.01, low=-0.4, high=-0.1)]).equivalence == (
        ("fast", -0.4, -0.1),
    )
    broken = decide(**BASE, primary=[arm(None, None, reason="zero_variance")])
    assert broken.decision == "invalid" and broken.equivalence == ()


def _net_revenue_estimate(shift: float):
    """Welch on a net-revenue metric around −10 (negative means), treatment moved by ``shift``."""
    import numpy as np

    from labkit.stats import ArmMoments, welch

    rng = np.random.default_rng(7)
    return welch(
        ArmMoments.from_values(rng.normal(-10, 2, 400)),
        ArmMoments.from_values(rng.normal(-10 + shift, 2, 400)),
    )


def test_a_relative_guardrail_on_a_negative_metric_that_improved_is_not_breached():
    # net revenue is a guardrail against a decrease, max_harm 5 % relative; it went from −10 to −9: lift
    # +10 % (effect / |control mean|). Divided by the signed mean it read −10 %, "past the allowed harm".
    est = _net_revenue_estimate(+1.0)
    guard = ArmResult(arm="fast", effect=est.effect, lift=est.lift, p_value=est.p_value)
    assert est.lift > 0.05
    g = GuardrailCheck("net_revenue", "decrease", 0.05, True, [guard])
    v = decide(**{**BASE, "guardrails": [g]}, primary=[arm(-0.05, 0.01)])
    assert (v.decision, v.code) == ("ship", "significant")


def test_a_relative_guardrail_on_a_negative_metric_that_fell_is_breached():
    est = _net_revenue_estimate(-1.0)  # −10 to −11: lift −10 %, past a 5 % harm in the harmful direction
    guard = ArmResult(arm="fast", effect=est.effect, lift=est.lift, p_value=est.p_value)
    g = GuardrailCheck("net_revenue", "decrease", 0.05, True, [guard])
    v = decide(**{**BASE, "guardrails": [g]}, primary=[arm(-0.05, 0.01)])
    assert (v.decision, v.code) == ("harm", "guardrail") and est.lift < -0.05


def test_equivalence_needs_a_bounded_lift_interval():
    # an unbounded Fieller set (control mean not significantly ≠ 0) is reported as None: never "no-effect"
    v = decide(**BASE, primary=[arm(-0.01, 0.6, low=None, high=None)])
    assert v.decision == "inconclusive"
