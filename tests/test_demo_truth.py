"""The demo lab against its own truth: labkit's analysis must find the effects the generator applied.

The module reads the session's demo lab after ``labkit demo`` (tests/demo_lab.py): the CRM before the
pilots (``demo.build_base``), every pilot's cohort drawn by the real ``labkit.assign``, the pilot period
simulated from those arms (``demo.simulate_outcomes``, which writes ``data/truth.json``), and every
pilot analysed by its own notebook. Each analysis is compared with the truth. The truth is stated on the intent-to-treat scale the
analysis estimates (demo.py: the mean over the assigned cohort of each customer's expected outcome
under each arm, missing per-customer rows counted as the analysis counts them), so the primary
interval of every treatment arm must contain the true effect.

This is one fixed seed (``demo.DEMO_SEED``), not a coverage study: with ten 95% intervals a different
seed could miss one honestly; the coverage of the methods is checked by simulation elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit import demo

REPO = Path(__file__).resolve().parents[1]
PILOT_IDS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))


@pytest.fixture(scope="module")
def demo_truth(demo_lab):
    """The session's demo lab after `labkit demo` (tests/demo_lab.py): the truth its generator wrote, and
    each pilot's results.json as its notebook wrote it (equal to ``labkit.analyze``, tested elsewhere)."""
    demo_lab.check()
    root = demo_lab.root
    analyses = {}
    for path in sorted((root / "experiments").glob("*.yaml")):
        (results,) = sorted((root / "results" / path.stem / "runs").glob("*/results.json"))
        analyses[path.stem] = json.loads(results.read_text())
    return demo.load_truth(root), analyses


def primary_rows(data: dict) -> dict[str, dict]:
    return {r["arm"]: r for r in data["metrics"] if r["role"] == "primary"}


def test_every_demo_pilot_has_a_truth(demo_truth):
    truth, analyses = demo_truth
    assert sorted(truth["pilots"]) == PILOT_IDS == sorted(analyses)
    assert truth["seed"] == demo.DEMO_SEED


@pytest.mark.parametrize("pilot_id", PILOT_IDS)
def test_primary_interval_contains_the_true_effect(demo_truth, pilot_id):
    truth, analyses = demo_truth
    t, data = truth["pilots"][pilot_id], analyses[pilot_id]
    rows = primary_rows(data)
    assert data["meta"]["primary_metric"] == t["primary_metric"]
    assert sorted(rows) == sorted(t["arms"])  # every treatment arm the generator knows
    # the truth is about the very cohort the analysis counts
    assert data["srm"]["counts"] == t["n_assigned"]
    for arm, r in rows.items():
        true = t["arms"][arm]["effect"]
        assert r["control_arm"] == t["control_arm"]
        assert r["ci_low"] <= true <= r["ci_high"], (
            f"{pilot_id}/{arm}: true effect {true:.5g} outside [{r['ci_low']:.5g}, {r['ci_high']:.5g}] "
            f"({r['method']}, estimate {r['effect']:.5g})"
        )


@pytest.mark.parametrize("pilot_id", PILOT_IDS)
def test_decision_matches_what_the_generator_did(demo_truth, pilot_id):
    truth, analyses = demo_truth
    expected, data = truth["pilots"][pilot_id]["expected"], analyses[pilot_id]
    assert data["srm"]["ok"], data["reason"]
    if expected == "harmful":
        assert data["decision"] == "harm", data["reason"]
    elif expected == "positive":
        assert data["decision"] == "ship", data["reason"]
        # the arm(s) that ship are among those the generator made positive
        positive = {a for a, v in truth["pilots"][pilot_id]["arms"].items() if v["expected"] == "positive"}
        direction = 1 if data["meta"]["direction"] == "increase" else -1
        shipped = {
            a
            for a, r in primary_rows(data).items()
            if r["p_value_adjusted"] < data["meta"]["alpha"] and r["effect"] * direction > 0
        }
        assert shipped and shipped <= positive
    else:
        assert expected == "null"
        assert data["decision"] not in ("ship", "harm"), data["reason"]
