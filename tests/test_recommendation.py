"""The recommendation (DESIGN.md): the statistical decision weighed with the ROI, and the arm it names.

scale (ship, and ROI ≥ 0, or no budget, or nothing to pay back), rework (ship but ROI < 0), extend
(inconclusive), stop (harm, no-effect), fix (invalid). Checked at its edges (ROI exactly 0, no budget, a
zero cost, several arms) and, as a property, over every decision and every budget.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.decision import DECISIONS, RECOMMENDATIONS, Verdict, best_arm, recommend


def verdict(decision: str, arms=("treat",), more: int | None = None) -> Verdict:
    return Verdict(decision, f"the {decision} reason.", "code", list(arms), more)


def roi(value: float, cost: float, lo: float | None = None, hi: float | None = None) -> dict:
    """A ``roi`` block as labkit.roi.pilot_roi builds it: ROI = (value − cost) / cost, None at cost 0."""

    def ratio(v):
        return None if v is None or not cost else (v - cost) / cost

    return {
        "value": value, "value_ci_low": lo, "value_ci_high": hi, "cost": cost, "roi": ratio(value),
        "roi_ci_low": ratio(lo), "roi_ci_high": ratio(hi), "value_per_unit": 1.0,
    }  # fmt: skip


def advise(d: str, budget: dict | None, arms=("treat",), gains=None, more=None):
    return recommend(
        verdict(d, arms, more), roi=budget, gains=gains or {a: 0.01 for a in arms}, metric="m", currency="EUR"
    )


def test_winback_pays_back_less_than_it_costs_so_rework_not_roll_out():
    """The demo's marketing-facebook-winback: ship, value 13,300 against cost 14,000 (ROI −5 %)."""
    r = advise("ship", roi(13_300, 14_000, 4_000, 22_600), arms=("discount_post", "story_post"),
               gains={"discount_post": 0.035, "story_post": 0.02})  # fmt: skip
    assert r.recommendation == "rework" and r.arm == "discount_post"
    assert r.reason.startswith("Effective but not yet paying back: arm 'discount_post'")
    assert "13,300 EUR" in r.reason and "14,000 EUR" in r.reason and "ROI -5.0 %" in r.reason
    assert "reaches break-even" in r.reason  # its interval [−71 %, +61 %] crosses 0: said, not hidden
    assert "Roll" not in r.reason and "whole eligible population" not in r.reason


def test_roi_exactly_zero_is_scale():
    r = advise("ship", roi(14_000, 14_000, 10_000, 18_000))
    assert r.recommendation == "scale" and r.arm == "treat"
    assert "ROI +0.0 %" in r.reason and "break-even lies inside ROI's interval" in r.reason


def test_roi_just_below_zero_is_rework_and_a_sure_payback_has_no_doubt():
    assert advise("ship", roi(13_999.99, 14_000)).recommendation == "rework"
    sure = advise("ship", roi(20_000, 14_000, 15_000, 25_000))
    assert sure.recommendation == "scale" and "break-even" not in sure.reason
    hopeless = advise("ship", roi(5_000, 14_000, 1_000, 9_000))
    assert hopeless.recommendation == "rework" and "reaches break-even" not in hopeless.reason


def test_no_budget_or_nothing_to_pay_back_is_scale():
    none = advise("ship", None)
    assert none.recommendation == "scale" and "no budget was given" in none.reason
    free = advise("ship", roi(-50.0, 0.0))  # a zero cost: ROI undefined, nothing to pay back
    assert free.recommendation == "scale" and "it cost nothing" in free.reason


def test_several_arms_scale_the_best_and_say_so():
    r = advise("ship", None, arms=("b", "a", "c"), gains={"a": 0.01, "b": 0.03, "c": 0.02})
    assert r.arm == "b" and "the best of 3 arms that work" in r.reason
    # a tie goes by name, whatever order the arms came in
    for order in itertools.permutations(("x", "y", "z")):
        assert best_arm(list(order), {"x": 0.02, "y": 0.05, "z": 0.05}) == "y"
    assert best_arm(["p", "q"], {"p": None, "q": -0.01}) == "q"  # an arm without a gain comes last
    assert best_arm([], {}) is None


@pytest.mark.parametrize(
    ("decision", "expected", "words"),
    [
        ("invalid", "fix", "Fix the pilot"),
        ("harm", "stop", "Stop arm 'treat'"),
        ("no-effect", "stop", "Stop spending"),
        ("inconclusive", "extend", "about 1,200 more customers per arm"),
    ],
)
def test_each_decision(decision, expected, words):
    # the budget cannot rescue a pilot that does not ship, nor sink one that is not decided yet
    for budget in (None, roi(1e6, 10.0), roi(0.0, 1e6)):
        r = advise(decision, budget, more=1_200)
        assert r.recommendation == expected and words in r.reason
        assert "the " + decision + " reason." in r.reason or decision == "inconclusive"


@settings(max_examples=300, deadline=None)
@given(
    decision=st.sampled_from(DECISIONS),
    budget=st.one_of(
        st.none(),
        st.tuples(st.floats(-1e7, 1e7, allow_nan=False), st.one_of(st.just(0.0), st.floats(0.01, 1e7))),
    ),
    gains=st.dictionaries(
        st.sampled_from("abcde"), st.one_of(st.none(), st.floats(-1, 1, allow_nan=False)), min_size=1
    ),
)
def test_the_rule_over_every_decision_and_budget(decision, budget, gains):
    block = None if budget is None else roi(*budget)
    arms = sorted(gains)
    r = advise(decision, block, arms=arms, gains=gains)
    # the rule, written out independently of labkit
    if decision != "ship":
        want = {"invalid": "fix", "harm": "stop", "no-effect": "stop", "inconclusive": "extend"}[decision]
    elif budget is None or budget[1] == 0 or (budget[0] - budget[1]) / budget[1] >= 0:
        want = "scale"
    else:
        want = "rework"
    assert r.recommendation == want and r.recommendation in RECOMMENDATIONS
    if decision == "ship":
        top = max((g for g in gains.values() if g is not None), default=None)
        chosen = gains[r.arm]
        assert chosen == top  # the best shipping arm
        assert f"'{r.arm}'" in r.reason  # the sentence names it


def test_analysis_carries_the_recommendation_in_its_json(tmp_path, capsys):
    """Through the real analysis: a pilot that works but costs more than it returns is `rework`, naming its
    arm, and results.json puts recommendation after roi (DESIGN.md's key order)."""
    from test_analysis import EFFECTS_2, Lab, pilot_yaml

    import labkit

    lab = Lab(tmp_path, seed=11, n=3000)
    metrics = "metrics:\n  - {name: converted, type: proportion, source: outcomes, column: converted}\n"
    pilot = lab.pilot(pilot_yaml("p", metrics=metrics, budget="{cost: 9000000, value_per_unit: 120}"))
    labkit.assign(pilot)
    lab.simulate(lab.units("p"), EFFECTS_2)
    result = labkit.analyze(pilot)
    data = json.loads(result.to_json())
    assert data["decision"] == "ship" and data["roi"]["roi"] < 0
    assert data["recommendation"] == "rework" and data["recommendation_arm"] == "fast"
    assert data["recommendation_reason"].startswith("Effective but not yet paying back: arm 'fast'")
    keys = list(data)
    assert keys.index("roi") + 1 == keys.index("recommendation") < keys.index("warnings")
    assert result.recommendation == "rework" and "**rework** (arm 'fast')" in result.recommendation_text
    from labkit.render import render_analysis

    render_analysis(result)  # `labkit analyze`'s table says it below the ROI line
    shown = " ".join(capsys.readouterr().out.split())
    assert "recommendation: rework (arm fast) — Effective but not yet paying back" in shown
    assert shown.index("ROI") < shown.index("recommendation: rework")
    assert "Recommendation: <b>rework</b>" in result._repr_html_()


@settings(max_examples=200, deadline=None)
@given(
    decision=st.sampled_from(DECISIONS),
    budget=st.one_of(st.none(), st.tuples(st.floats(-1e7, 1e7, allow_nan=False), st.floats(0.0, 1e7))),
)
def test_the_rule_alone_agrees_with_recommend(decision, budget):
    """`labkit compare` recomputes the recommendation of older runs from decision and ROI: the same rule."""
    from labkit.decision import recommendation_of

    block = None if budget is None else roi(*budget)
    assert recommendation_of(decision, block and block["roi"]) == advise(decision, block).recommendation
    assert recommendation_of("failed", None) is None and recommendation_of(None, 0.5) is None
