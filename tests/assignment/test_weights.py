"""Arm weights as people write them (issue #12 item 6): fractions within 0.001 of 1, and ratios, normalised.

Fractions used to need a sum within 1e-9 of 1, so thirds took 16 digits. Now weights summing to 1 within
``labkit.spec.WEIGHT_TOLERANCE`` (0.001) are fractions and weights with a sum away from 1 are ratios when
some weight is at least 1; both are normalised (w = v / sum v, exactly: ``labkit.spec.arm_weights``).
Weights all below 1 that do not add up (0.5 / 0.4) are refused: normalising them would silently change
what was written. Every consumer — the draw, the SRM check, planning, the notebook's pilot card — sees
the normalised weights (``Pilot.arms``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_plan_api import load, pilot_yaml

import labkit
from labkit.errors import SpecErrors
from labkit.spec import WEIGHT_TOLERANCE, arm_weights

from conftest import LAB_YAML


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """4,000 customers with twitter and a 12 % conversion (the shape of tests/test_plan_api.py's lab)."""
    root = tmp_path_factory.mktemp("weights")
    (root / "configs").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "data").mkdir()
    rng = np.random.default_rng(5)
    ids = [f"c{i:05d}" for i in range(4000)]
    pd.DataFrame({"customer_id": ids, "has_twitter": True}).to_parquet(root / "data" / "customers.parquet")
    pd.DataFrame(
        {
            "customer_id": ids,
            "converted": (rng.random(4000) < 0.12).astype(int),
            "spend": rng.gamma(2.0, 30.0, 4000),
        }
    ).to_csv(root / "data" / "outcomes.csv", index=False)
    return root


TAIL = (
    "; fractions must sum to 1 (within 0.001), or give ratios with a weight of at least 1, e.g. "
    "{control: 1, a: 1, b: 1}, which are normalised"
)


def arms_of(lab, arms: str, pid: str = "w"):
    return load(lab, pilot_yaml(pid, metric="converted", mde="{relative: 0.25}", arms=arms, max_size=3000))


@pytest.mark.parametrize(
    ("arms", "weights"),
    [
        ("{control: 0.333, a: 0.333, b: 0.333}", {"control": 1 / 3, "a": 1 / 3, "b": 1 / 3}),
        ("{control: 0.3333, a: 0.3333, b: 0.3333}", {"control": 1 / 3, "a": 1 / 3, "b": 1 / 3}),
        ("{control: 1, a: 1, b: 1}", {"control": 1 / 3, "a": 1 / 3, "b": 1 / 3}),
        ("{control: 2, a: 1}", {"control": 2 / 3, "a": 1 / 3}),
        ("{control: 50, a: 50}", {"control": 0.5, "a": 0.5}),
        ("{control: 33.4, a: 33.3, b: 33.3}", {"control": 0.334, "a": 0.333, "b": 0.333}),
        ("{control: 0.5, a: 0.5005}", {"control": 0.5 / 1.0005, "a": 0.5005 / 1.0005}),
        ("{control: 0.334, a: 0.333, b: 0.333}", {"control": 0.334, "a": 0.333, "b": 0.333}),
    ],
)
def test_fractions_near_one_and_ratios_are_normalised(lab, arms, weights):
    pilot = arms_of(lab, arms)
    assert pilot.arms == pytest.approx(weights, rel=1e-12)
    assert list(pilot.arms) == list(weights)  # in the order written
    assert sum(arm_weights(pilot.spec.cohort.arms).values()) == 1  # exactly


@pytest.mark.parametrize(
    ("arms", "total"),
    [
        ("{control: 0.5, a: 0.4}", "0.9"),
        ("{control: 0.6, a: 0.6}", "1.2"),
        ("{control: 0.33, a: 0.33, b: 0.33}", "0.99"),
        ("{control: 0.5, a: 0.4989}", "0.9989"),
    ],
)
def test_fractions_that_do_not_add_up_are_refused(lab, arms, total):
    with pytest.raises(SpecErrors) as info:
        arms_of(lab, arms)
    assert str(info.value).endswith(f"cohort.arms: weights sum to {total}{TAIL}"), str(info.value)


def test_the_tolerance_is_a_thousandth():
    assert WEIGHT_TOLERANCE == 1e-3
    assert arm_weights({"a": 1.0, "b": 2.0}) == {"a": Fraction(1, 3), "b": Fraction(2, 3)}
    # the exact binary values of what was written, normalised exactly: equal weights are exactly 1/k
    assert arm_weights({"a": 0.333, "b": 0.333, "c": 0.333}) == dict.fromkeys("abc", Fraction(1, 3))
    with pytest.raises(ValueError):
        arm_weights({"a": 0.0, "b": 1.0})


def test_ratios_and_fractions_allocate_alike(lab):
    ratio = load(lab, pilot_yaml("w-ratio", metric="converted", mde="{relative: 0.25}",
                                 arms="{control: 1, a: 1, b: 1}", max_size=3000).replace(
        "start: 2026-11-01", "start: 2026-11-01\n  salt: same-salt"))  # fmt: skip
    frac = load(lab, pilot_yaml("w-frac", metric="converted", mde="{relative: 0.25}",
                                arms="{control: 0.333, a: 0.333, b: 0.333}", max_size=3000).replace(
        "start: 2026-11-01", "start: 2026-11-01\n  salt: same-salt"))  # fmt: skip
    # other pilot ids hash the customers differently; the counts follow the same (exact) thirds
    a, b = labkit.assign(ratio), labkit.assign(frac)
    assert a.counts == b.counts == {"control": 1000, "a": 1000, "b": 1000}
    assert a.meta["weights"] == b.meta["weights"] == {"a": 1 / 3, "b": 1 / 3, "control": 1 / 3}


def test_planning_sees_the_normalised_weights(lab):
    ratio = labkit.plan(arms_of(lab, "{control: 2, a: 1, b: 1}", "w-plan-ratio"))
    frac = labkit.plan(arms_of(lab, "{control: 0.5, a: 0.25, b: 0.25}", "w-plan-frac"))
    assert ratio.mde_at_cap == pytest.approx(frac.mde_at_cap, rel=1e-12)
    assert ratio.required_total == frac.required_total


def test_the_srm_check_of_the_analysis_sees_the_normalised_weights(lab):
    pilot = arms_of(lab, "{control: 3, a: 1}", "w-srm")
    labkit.assign(pilot)
    srm = labkit.analyze(pilot).srm
    n = sum(srm["counts"].values())
    assert n == 3000 and srm["counts"] == {"control": 2250, "a": 750}
    assert srm["expected"] == pytest.approx({"control": 0.75 * n, "a": 0.25 * n}, rel=1e-12)
    assert srm["ok"] and srm["p_value"] == pytest.approx(1.0)


def test_the_pilot_card_shows_the_normalised_weights(lab):
    from labkit.notebook import pilot_card

    card = pilot_card(arms_of(lab, "{control: 3, a: 1}", "w-card"))
    assert "`control` 75%, `a` 25%" in card, card
