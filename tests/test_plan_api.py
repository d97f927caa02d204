"""``labkit.plan(pilot)`` (DESIGN.md, Python API) against statsmodels' ``NormalIndPower``.

The plan's definitions (labkit/planning.py): the baseline is the primary metric over the eligible customers
(over the assigned ones once an assignment exists), intent-to-treat — a customer missing from a
per-customer table counts 0 for a proportion and is left out of a mean; the per-customer SD is sqrt(p(1 − p))
for a proportion and the sample SD (ddof 1) for a mean; a relative MDE is |baseline mean| × relative.
``required_by_arm`` sizes the arms for the planned allocation: the control arm is NormalIndPower's ``nobs1``
with ``ratio`` = w_treatment / w_control of the smallest treatment arm, each arm ceil(n_c · w_arm / w_control),
at alpha / (number of treatment arms) (Holm's worst case); ``required_per_arm`` is the smallest arm's
number (every arm's when they are equal) and ``required_total`` their sum. ``mde_at_cap`` is the effect reached at
``max_size`` split by the planned weights (control and the smallest treatment arm). So the reference is
``NormalIndPower`` with effect size = MDE / SD: one-sided at alpha/2 for the textbook
(z_{1−α/2} + z_{power}) formula labkit uses, and two-sided (which adds the far tail, < 1e-6 of power)
within a customer.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import optimize
from statsmodels.stats.power import NormalIndPower

import labkit

from conftest import LAB_YAML
from conftest import pilot_yaml as default_pilot_yaml

N = 5000
METRICS = [
    {"name": "converted", "type": "proportion", "source": "outcomes", "column": "converted"},
    {"name": "spend", "type": "mean", "source": "outcomes", "column": "spend"},
]


def pilot_yaml(pid: str, *, metric: str, mde: str, arms: str, max_size: int) -> str:
    """An email pilot of the default (tests/pilots.py); ``mde`` and ``arms`` as written in the file,
    ``"{control: 0.5, email: 0.5}"``, so that tests/assignment/test_weights.py can write weights as people do."""
    return default_pilot_yaml(
        id=pid, title="A pilot to plan", function="marketing", channel="email", stage="onboarding",
        hypothesis={"statement": f"The email moves {metric}.", "metric": metric, "direction": "increase",
                    "mde": yaml.safe_load(mde)},
        metrics=METRICS,
        **{"cohort.max_size": max_size, "cohort.arms": yaml.safe_load(arms)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    (root / "configs").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "data").mkdir()
    rng = np.random.default_rng(41)
    ids = [f"c{i:05d}" for i in range(N)]
    pd.DataFrame({"customer_id": ids, "has_twitter": rng.random(N) < 0.8}).to_parquet(
        root / "data" / "customers.parquet", index=False
    )
    out = pd.DataFrame(
        {
            "customer_id": ids,
            "converted": (rng.random(N) < 0.12).astype(int),
            "spend": rng.gamma(2.0, 30.0, N),
        }
    )
    out.loc[rng.random(N) < 0.05, "spend"] = np.nan  # null values: out of the mean
    out.loc[rng.random(N) >= 0.04].to_csv(root / "data" / "outcomes.csv", index=False)  # rows the CRM lacks
    return root


def load(lab: Path, text: str):
    pid = text.split("\n", 1)[0].removeprefix("id: ").strip()
    path = lab / "experiments" / f"{pid}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return labkit.load_pilot(path, lab=labkit.load_lab(lab / "configs" / "lab.yaml"))


def baseline(lab: Path, ids, column: str, kind: str) -> tuple[float, float, int]:
    """(mean, per-customer SD, n) of a column over these customers, by the intent-to-treat rules."""
    out = pd.read_csv(lab / "data" / "outcomes.csv")
    y = pd.DataFrame({"customer_id": list(ids)}).merge(out, on="customer_id", how="left")[column]
    if kind == "proportion":
        y = y.fillna(0.0)
        p = y.mean()
        return p, math.sqrt(p * (1 - p)), len(y)
    y = y.dropna()
    return y.mean(), y.std(ddof=1), len(y)


def eligible(lab: Path) -> pd.Series:
    customers = pd.read_parquet(lab / "data" / "customers.parquet")
    return customers.loc[customers["has_twitter"], "customer_id"]


def reference(sd: float, mde_abs: float, *, alpha: float, power: float, n_c: float, n_t: float,
              ratio: float = 1.0) -> dict:  # fmt: skip
    """required_per_arm and mde_at_cap from NormalIndPower's power function (see the module docstring),
    inverted by brentq to 1e-13: ``solve_power``'s own root finder stops ~1e-6 short (its power at the
    root it returns is 0.7999992), which would blur a check at 1e-6."""
    solver = NormalIndPower()

    def invert(f, lo, hi):
        return optimize.brentq(lambda x: f(x) - power, lo, hi, xtol=1e-13, rtol=1e-13)

    es = mde_abs / sd
    one = dict(alpha=alpha / 2, alternative="larger")
    n_one = invert(lambda n: solver.power(es, n, ratio=ratio, **one), 1.0, 1e9)
    n_two = invert(lambda n: solver.power(es, n, alpha, ratio=ratio), 1.0, 1e9)
    es_cap = invert(lambda d: solver.power(d, n_c, ratio=n_t / n_c, **one), 1e-9, 50.0)
    es_cap_two = invert(lambda d: solver.power(d, n_c, alpha, ratio=n_t / n_c), 1e-9, 50.0)
    return dict(required=math.ceil(n_one), required_two_sided=n_two, mde_cap=es_cap * sd,
                mde_cap_two_sided=es_cap_two * sd)  # fmt: skip


def check(plan, pilot, *, mean: float, sd: float, n: int, origin: str) -> None:
    s, hyp = pilot.settings, pilot.spec.hypothesis
    k = len(pilot.treatments)
    mde_abs = abs(mean) * hyp.mde.relative if hyp.mde.relative is not None else hyp.mde.absolute
    w_c, w_t = pilot.arms[pilot.control], min(pilot.arms[a] for a in pilot.treatments)
    cap = pilot.spec.cohort.max_size
    ref = reference(sd, mde_abs, alpha=s.alpha / k, power=s.power, n_c=cap * w_c, n_t=cap * w_t,
                    ratio=w_t / w_c)  # fmt: skip

    assert (plan.baseline_from, plan.baseline_n) == (origin, n)
    assert plan.baseline_mean == pytest.approx(mean, rel=1e-9)
    assert plan.baseline_sd == pytest.approx(sd, rel=1e-9)
    assert plan.mde_abs == pytest.approx(mde_abs, rel=1e-9)
    assert plan.alpha == s.alpha and plan.power == s.power
    n_control = plan.required_by_arm[pilot.control]
    assert n_control == ref["required"]
    assert abs(n_control - ref["required_two_sided"]) < 1
    assert plan.required_by_arm == {a: math.ceil(n_control * w / w_c - 1e-9) for a, w in pilot.arms.items()}
    assert plan.required_per_arm == min(plan.required_by_arm.values())
    assert plan.required_total == sum(plan.required_by_arm.values())
    assert plan.mde_at_cap == pytest.approx(ref["mde_cap"], rel=1e-9)
    assert plan.mde_at_cap == pytest.approx(ref["mde_cap_two_sided"], rel=1e-5)  # the far tail's share
    assert plan.mde_at_cap_relative == pytest.approx(ref["mde_cap"] / abs(mean), rel=1e-9)
    assert plan.powered is bool(ref["mde_cap"] <= mde_abs)
    assert plan.to_dict()["required_per_arm"] == plan.required_per_arm


def test_plan_of_a_proportion_on_the_eligible_customers(lab):
    pilot = load(lab, pilot_yaml("plan-rate", metric="converted", mde="{relative: 0.25}",
                                 arms="{control: 0.5, email: 0.5}", max_size=3000))  # fmt: skip
    plan = labkit.plan(pilot)
    mean, sd, n = baseline(lab, eligible(lab), "converted", "proportion")
    check(plan, pilot, mean=mean, sd=sd, n=n, origin="eligible")
    assert not plan.powered and any("underpowered" in w for w in plan.warnings)  # 12 % ± 3 points at 3,000


def test_plan_of_a_proportion_after_the_draw_rests_on_the_assigned_customers(lab):
    text = pilot_yaml("plan-drawn", metric="converted", mde="{relative: 0.25}",
                      arms="{control: 0.5, email: 0.5}", max_size=3000)  # fmt: skip
    pilot = load(lab, text)
    labkit.assign(pilot)
    assigned = pd.read_parquet(lab / "results" / "plan-drawn" / "assignment.parquet")["customer_id"]
    assert len(assigned) == 3000 < len(eligible(lab))
    mean, sd, n = baseline(lab, assigned, "converted", "proportion")
    before_start = dt.date(2026, 10, 1)  # the pilot starts 2026-11-01
    check(labkit.plan(pilot, today=before_start), pilot, mean=mean, sd=sd, n=n, origin="assignment")


@pytest.mark.parametrize("arms", ["{control: 0.5, email: 0.5}", "{control: 0.7, email: 0.3}"])
def test_plan_and_analyze_agree_once_the_pilot_has_started(lab, arms):
    """Issue 15 saw `plan` 7,550 and `analyze` 8,834 customers for one pilot: `plan` measured the baseline
    on the pre-period, `analyze` on the control arm's outcomes. Once the pilot has started, both plan from
    the control arm, through one computation: the same numbers, checked against NormalIndPower."""
    pid = "agree-" + ("equal" if "0.5" in arms else "unequal")
    pilot = load(lab, pilot_yaml(pid, metric="converted", mde="{relative: 0.25}", arms=arms, max_size=3000))
    labkit.assign(pilot)
    planned = labkit.plan(pilot, today=dt.date(2026, 12, 6))
    analysed = labkit.analyze(pilot).to_dict()["plan"]
    assert planned.baseline_from == analysed["baseline_from"] == "control arm"
    for key in ("required_per_arm", "required_by_arm", "required_total", "mde_at_cap", "baseline_sd"):
        assert planned.to_dict()[key] == analysed[key], key
    drawn = pd.read_parquet(lab / "results" / pid / "assignment.parquet")
    control = drawn.loc[drawn["arm"] == "control", "customer_id"]
    mean, sd, n = baseline(lab, control, "converted", "proportion")
    check(planned, pilot, mean=mean, sd=sd, n=n, origin="control arm")


def test_plan_of_a_mean_with_three_arms_and_unequal_weights(lab):
    """Holm's worst case alpha / 2 for two treatment arms; the cap splits 40/30/30, so the MDE at the cap is
    NormalIndPower's with nobs1 = 0.4·cap and ratio 0.3/0.4."""
    pilot = load(lab, pilot_yaml("plan-spend", metric="spend", mde="{absolute: 6.0}",
                                 arms="{control: 0.4, a: 0.3, b: 0.3}", max_size=3000))  # fmt: skip
    plan = labkit.plan(pilot)
    mean, sd, n = baseline(lab, eligible(lab), "spend", "mean")
    check(plan, pilot, mean=mean, sd=sd, n=n, origin="eligible")
    assert plan.alpha == 0.05 and plan.required_per_arm > 2
