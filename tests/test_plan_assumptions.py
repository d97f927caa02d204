"""Planning before data exists: ``hypothesis.baseline`` (DESIGN.md) and arms sized for their allocation.

The reference is statsmodels' ``NormalIndPower`` with effect size mde / σ (σ = sqrt(p(1 − p)) for an assumed
rate, the assumed sd for a mean) and ``ratio`` = n_treatment / n_control of the smallest treatment arm, at
alpha / (number of treatment arms) (Holm's first step, Bonferroni). labkit uses the textbook
(z_{1−α/2} + z_{power}) formula, i.e. ``NormalIndPower`` one-sided at alpha / 2, which is the reference here
to the customer; the two-sided reference (which adds the far tail) is within one customer.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cli_fork
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize
from statsmodels.stats.power import NormalIndPower

import labkit
from labkit.errors import SpecErrors

from conftest import DROP, LAB_YAML
from conftest import pilot_yaml as default_pilot_yaml

LABKIT = [sys.executable, "-m", "labkit.cli"]


def pilot_yaml(pid: str, *, kind: str = "proportion", baseline: str | None = "{rate: 0.12}",
               mde: str = "{relative: 0.2}", arms: str = "{control: 0.5, email: 0.5}", max_size: int = 2000,
               **overrides) -> str:  # fmt: skip
    """An email pilot of the default (tests/pilots.py) with an assumed baseline (None: without one), on
    every customer; ``baseline``, ``mde`` and ``arms`` as written in the file (``"{rate: 0.12}"``)."""
    column = "converted" if kind == "proportion" else "spend"
    return default_pilot_yaml(**{
        "id": pid, "title": "A pilot planned before its data exists", "function": "marketing",
        "channel": "email", "stage": "onboarding",
        "hypothesis": {"statement": f"The email moves {column}.", "metric": column, "direction": "increase",
                       "mde": yaml.safe_load(mde),
                       "baseline": DROP if baseline is None else yaml.safe_load(baseline)},
        "cohort.where": DROP, "cohort.max_size": max_size, "cohort.arms": yaml.safe_load(arms),
        "metrics": [{"name": column, "type": kind, "source": "outcomes", "column": column}],
        **overrides,
    })  # fmt: skip


@pytest.fixture
def lab(tmp_path) -> Path:
    """A lab whose CRM has customers but no outcome table yet."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lab.yaml").write_text(LAB_YAML)
    (tmp_path / "data").mkdir()
    (tmp_path / "experiments").mkdir()
    n = 3000
    pd.DataFrame(
        {"customer_id": [f"c{i:05d}" for i in range(n)], "has_twitter": np.arange(n) % 2 == 0}
    ).to_parquet(tmp_path / "data" / "customers.parquet", index=False)
    return tmp_path


def load(lab: Path, text: str):
    pid = text.split("\n", 1)[0].removeprefix("id: ").strip()
    path = lab / "experiments" / f"{pid}.yaml"
    path.write_text(text)
    return labkit.load_pilot(path, lab=labkit.load_lab(lab / "configs" / "lab.yaml"))


def reference_control(
    sd: float, mde_abs: float, *, alpha: float, power: float, ratio: float
) -> tuple[float, float]:
    """(n_control one-sided at alpha/2, n_control two-sided) from NormalIndPower's power function, by brentq
    to 1e-12 (``solve_power``'s own root finder stops ~1e-6 short)."""
    solver = NormalIndPower()
    es = mde_abs / sd

    def invert(f):
        return optimize.brentq(lambda n: f(n) - power, 1.0, 1e12, xtol=1e-12, rtol=1e-14)

    one = invert(lambda n: solver.power(es, n, alpha / 2, ratio=ratio, alternative="larger"))
    two = invert(lambda n: solver.power(es, n, alpha, ratio=ratio))
    return one, two


def check_sizes(plan, pilot, *, mean: float, sd: float) -> None:
    """Every arm's size against NormalIndPower with ratio = w_t / w_c of the smallest treatment arm."""
    w = pilot.arms
    w_c = w[pilot.control]
    w_t = min(w[a] for a in pilot.treatments)
    hyp = pilot.spec.hypothesis
    mde_abs = abs(mean) * hyp.mde.relative if hyp.mde.relative is not None else hyp.mde.absolute
    alpha = pilot.settings.alpha / len(pilot.treatments)
    one, two = reference_control(sd, mde_abs, alpha=alpha, power=pilot.settings.power, ratio=w_t / w_c)
    n_c = math.ceil(one - 1e-9)
    assert plan.required_by_arm[pilot.control] == n_c
    # the far tail's share, and statsmodels' own rounding at large n
    assert 0 <= plan.required_by_arm[pilot.control] - two <= 1 + 1e-5 * two
    for arm, weight in w.items():
        assert plan.required_by_arm[arm] == math.ceil(n_c * weight / w_c - 1e-9)
    assert plan.required_per_arm == min(plan.required_by_arm.values())
    assert plan.required_total == sum(plan.required_by_arm.values())
    # the binding comparison has the power asked for, and one customer fewer in control would not
    n_t = plan.required_by_arm[min(pilot.treatments, key=lambda a: w[a])]
    se = sd * math.sqrt(1 / n_c + 1 / n_t)
    assert NormalIndPower().power(mde_abs / sd, n_c, alpha, ratio=n_t / n_c) >= pilot.settings.power - 1e-6
    assert se > 0


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kind", "baseline", "message"),
    [
        ("proportion", "{mean: 0.1, sd: 0.3}",
         r"hypothesis\.baseline: the primary metric is a proportion: give \{rate: p\} with p in \(0, 1\), not mean, sd"),
        ("mean", "{rate: 0.1}",
         r"hypothesis\.baseline: the primary metric is a mean: give \{mean: m, sd: s\} \(both\), not rate"),
        ("mean", "{mean: 40}", r"hypothesis\.baseline: the primary metric is a mean: give \{mean: m, sd: s\} \(both\), not mean"),
        ("proportion", "{rate: 1.5}", r"hypothesis\.baseline\.rate: 1\.5 \(a number\) is out of range; it must be < 1"),
        ("mean", "{mean: 40, sd: 0}", r"hypothesis\.baseline\.sd: 0 \(a number\) is out of range; it must be > 0"),
        ("proportion", "{rate: 0.1, spread: 2}", r"hypothesis\.baseline\.spread: unknown field 'spread'"),
    ],
)  # fmt: skip
def test_an_assumed_baseline_that_does_not_fit_the_metric_is_refused(lab, kind, baseline, message):
    with pytest.raises(SpecErrors, match=message):
        load(lab, pilot_yaml("misfit", kind=kind, baseline=baseline))


def test_an_assumed_baseline_is_refused_for_a_ratio_metric(lab):
    ratio = {"name": "spend", "type": "ratio", "numerator": {"source": "outcomes", "column": "spend"},
             "denominator": {"source": "outcomes", "column": "visits"}}  # fmt: skip
    text = pilot_yaml("ratio", kind="mean", baseline="{mean: 1, sd: 1}", metrics=[ratio])
    with pytest.raises(
        SpecErrors, match=r"an assumed baseline is not available for a ratio metric; plan from data"
    ):
        load(lab, text)


def test_an_assumed_baseline_leaves_the_pre_registration_hash_alone(lab):
    with_it = load(lab, pilot_yaml("hashed"))
    without = load(lab, pilot_yaml("hashed", baseline=None))
    assert with_it.prereg_sha256 == without.prereg_sha256
    assert with_it.spec_sha256 != without.spec_sha256


# ------------------------------------------------------------------------------------------- planning


def test_no_outcome_table_yet_plans_from_the_assumed_rate(lab):
    pilot = load(lab, pilot_yaml("rate", baseline="{rate: 0.12}", mde="{relative: 0.25}"))
    plan = labkit.plan(pilot)
    assert plan.baseline_from == "assumption" and plan.baseline_n == 0
    assert plan.baseline_mean == 0.12 and plan.baseline_sd == pytest.approx(math.sqrt(0.12 * 0.88), rel=1e-12)
    assert any("no data yet (data/outcomes.csv does not exist)" in w for w in plan.warnings)
    check_sizes(plan, pilot, mean=0.12, sd=math.sqrt(0.12 * 0.88))


def test_an_empty_outcome_table_plans_from_the_assumed_mean_and_sd_with_unequal_arms(lab):
    (lab / "data" / "outcomes.csv").write_text("customer_id,spend\n")
    pilot = load(lab, pilot_yaml("spend", kind="mean", baseline="{mean: 50, sd: 20}", mde="{absolute: 4}",
                                 arms="{control: 0.7, email: 0.3}"))  # fmt: skip
    plan = labkit.plan(pilot)
    assert plan.baseline_from == "assumption"
    check_sizes(plan, pilot, mean=50.0, sd=20.0)
    assert plan.required_by_arm["control"] > plan.required_by_arm["email"]


def test_three_arms_use_the_primary_familys_correction(lab):
    pilot = load(lab, pilot_yaml("three", arms="{control: 0.5, a: 0.25, b: 0.25}", mde="{relative: 0.3}"))
    plan = labkit.plan(pilot)
    assert plan.alpha == 0.05  # reported as set; sized at 0.05 / 2 (checked by the reference)
    check_sizes(plan, pilot, mean=0.12, sd=math.sqrt(0.12 * 0.88))


def test_data_when_it_exists_wins_over_the_assumption(lab):
    n = 3000
    converted = (np.arange(n) % 5 == 0).astype(int)  # 20 %, not the assumed 12 %
    pd.DataFrame({"customer_id": [f"c{i:05d}" for i in range(n)], "converted": converted}).to_csv(
        lab / "data" / "outcomes.csv", index=False
    )
    plan = labkit.plan(load(lab, pilot_yaml("measured")))
    assert plan.baseline_from == "eligible" and plan.baseline_n == n
    assert plan.baseline_mean == pytest.approx(0.2)


def test_a_misspelt_column_is_still_an_error_with_an_assumption(lab):
    (lab / "data" / "outcomes.csv").write_text("customer_id,other\nc00001,1\n")
    with pytest.raises(labkit.errors.DataError, match="converted"):
        labkit.plan(load(lab, pilot_yaml("typo")))


def test_without_an_assumption_the_plan_says_how_to_give_one(lab):
    (lab / "data" / "outcomes.csv").write_text("customer_id,converted\n")
    plan = labkit.plan(load(lab, pilot_yaml("bare", baseline=None)))
    assert plan.required_per_arm is None
    assert any("give an assumed one in hypothesis.baseline" in w for w in plan.warnings)


@pytest.fixture(scope="module")
def bare_lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("assumed")
    (root / "configs").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "experiments").mkdir()
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rate=st.floats(0.01, 0.9),
    relative=st.floats(0.02, 1.0),
    weights=st.sampled_from(
        [
            "{control: 0.5, email: 0.5}",
            "{control: 0.8, email: 0.2}",
            "{control: 0.2, email: 0.8}",
            "{control: 1, a: 2, b: 1}",
        ]
    ),  # fmt: skip
)
def test_every_assumed_rate_and_allocation_is_sized_as_statsmodels_does(bare_lab, rate, relative, weights):
    """Over assumed rates, relative MDEs and allocations (control larger, smaller, three arms): the pure
    planning arithmetic (no data read) sizes every arm as NormalIndPower with ``ratio`` does."""
    from labkit.planning import _make_plan

    text = pilot_yaml("prop", baseline=f"{{rate: {rate!r}}}", mde=f"{{relative: {relative!r}}}", arms=weights,
                      max_size=10**9)  # fmt: skip
    pilot = load(bare_lab, text)
    plan, problem = _make_plan(pilot, None, "eligible", missing="no outcome data yet")
    assert problem is None and plan.baseline_from == "assumption"
    check_sizes(plan, pilot, mean=rate, sd=math.sqrt(rate * (1 - rate)))


# ---------------------------------------------------------------------------------------- the command


def test_plan_command_says_the_baseline_is_assumed(lab):
    load(lab, pilot_yaml("cli", baseline="{rate: 0.12}"))
    table = cli_fork.run(["plan", "cli"], lab, dict(os.environ), timeout=120)  # processes of their own
    assert table.returncode == 0, table.stderr
    assert "assumed (hypothesis.baseline)" in table.stdout
    out = cli_fork.run(["plan", "cli", "--json"], lab, dict(os.environ), timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (
        data["baseline_from"] == "assumption"
        and data["required_by_arm"]["control"] == data["required_per_arm"]
    )


def test_a_past_pilots_recorded_control_arm_is_the_baseline(lab):
    """`hypothesis.baseline: {pilot: id}`: the control mean and per-customer SD of the same metric in that
    pilot's latest recorded run (results/<id>/runs/*/results.json) plan the new pilot exactly as the same
    numbers given by hand; a past pilot without a run, or a pilot naming itself, is one clear message."""
    import json as _json

    from_past = load(lab, pilot_yaml("from-past", kind="mean", baseline="{pilot: old-pilot}"))
    with pytest.raises(labkit.LabkitError, match=r"has no recorded run in results/old-pilot/runs/"):
        labkit.plan(from_past)
    folder = lab / "results" / "old-pilot" / "runs" / "20261101T000000Z"
    folder.mkdir(parents=True)
    row = {
        "metric": "spend",
        "type": "mean",
        "mean_control": 5.0,
        "n_control": 400,
        "var_mean_control": 6.25 / 400,
    }
    (folder / "results.json").write_text(_json.dumps({"metrics": [row]}))
    by_hand = labkit.plan(
        load(lab, pilot_yaml("numbers", kind="mean", baseline="{mean: 5.0, sd: 2.5}"))
    ).to_dict()
    planned = labkit.plan(from_past).to_dict()
    assert planned["required_per_arm"] == by_hand["required_per_arm"] is not None
    assert planned["mde_at_cap"] == pytest.approx(by_hand["mde_at_cap"])
    assert any("pilot 'old-pilot''s latest recorded control arm" in w for w in planned["warnings"])

    (lab / "experiments" / "self.yaml").write_text(pilot_yaml("self", kind="mean", baseline="{pilot: self}"))
    out = subprocess.run([*LABKIT, "validate"], cwd=lab, capture_output=True, text=True, timeout=120)
    assert "hypothesis.baseline.pilot: a pilot cannot be its own baseline" in out.stdout + out.stderr
