"""Verdicts and money end to end: `labkit.assign` + `labkit.analyze` on tiny labs with data, checked against
references computed here.

- ``no-effect`` (TOST): pilots with zero true effect and enough customers are ``no-effect``, and the
  1 − 2·alpha interval the verdict judged (``Analysis.verdict.equivalence``) is the delta-method lift
  interval at z_{1−α} for a relative MDE (by hand with scipy) and the Welch interval at 1 − 2·alpha for an
  absolute one (scipy ``ttest_ind``, statsmodels ``ttost_ind``).
- The edge of ``no-effect``: two datasets one converted customer apart, on either side of the MDE, built
  from the drawn arms so that the reference puts the upper bound just below and just at the MDE.
- ``inconclusive``: "about N more customers per arm", N = required_per_arm − the smallest arm, with
  required_per_arm from statsmodels ``NormalIndPower`` on the control arm's rate.
- Value and ROI (README, "Tour for leadership"): from the analysis' own effect and interval and the
  assigned counts, and independently from the raw files with statsmodels' Wald interval; then the same run
  recorded through labkit's real Tracker into a sqlite store and read back by `labkit compare`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import optimize, stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep
from statsmodels.stats.proportion import test_proportions_2indep as sm_test_2indep
from statsmodels.stats.weightstats import ttost_ind

import labkit

from conftest import LAB_YAML
from conftest import pilot_yaml as default_pilot_yaml

REL = 1e-9  # both sides compute the same closed forms in double precision

METRICS = [
    {"name": "converted", "type": "proportion", "source": "outcomes", "column": "converted"},
    {"name": "spend", "type": "mean", "source": "outcomes", "column": "spend"},
]


def pilot_yaml(pid: str, *, metric="converted", direction="increase", mde="{relative: 0.2}",
               arms="{control: 0.5, fast: 0.5}", max_size=6000, budget="null") -> str:  # fmt: skip
    """The default pilot (tests/pilots.py) on two metrics; ``mde``, ``arms`` and ``budget`` as written in
    the file (``"{relative: 0.2}"``)."""
    return default_pilot_yaml(
        id=pid, title="A pilot for the verdicts",
        hypothesis={"statement": f"Fast replies move {metric}.", "metric": metric, "direction": direction,
                    "mde": yaml.safe_load(mde)},
        metrics=METRICS, budget=yaml.safe_load(budget),
        **{"cohort.max_size": max_size, "cohort.arms": yaml.safe_load(arms)},
    )  # fmt: skip


class Lab:
    """A lab folder with customers; pilots are written and assigned, outcomes written from the drawn arms."""

    def __init__(self, root: Path, n: int, seed: int):
        self.root = root
        (root / "configs").mkdir(parents=True, exist_ok=True)
        (root / "configs" / "lab.yaml").write_text(LAB_YAML)
        (root / "data").mkdir(exist_ok=True)
        rng = np.random.default_rng([seed, 0])
        self.customers = pd.DataFrame(
            {"customer_id": [f"c{i:05d}" for i in range(n)], "has_twitter": rng.random(n) < 0.9}
        )
        self.customers.to_parquet(root / "data" / "customers.parquet", index=False)
        self.lab = labkit.load_lab(root / "configs" / "lab.yaml")

    def pilot(self, text: str):
        pid = text.split("\n", 1)[0].removeprefix("id: ").strip()
        path = self.root / "experiments" / f"{pid}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pilot = labkit.load_pilot(path, lab=self.lab)
        labkit.assign(pilot)
        return pilot

    def units(self, pid: str) -> pd.DataFrame:
        return pd.read_parquet(self.root / "results" / pid / "assignment.parquet")[["customer_id", "arm"]]

    def outcomes(self, frame: pd.DataFrame) -> None:
        frame.to_csv(self.root / "data" / "outcomes.csv", index=False)

    def itt(self, pid: str, column: str, *, zero_if_missing: bool) -> dict[str, np.ndarray]:
        """Per arm, the column's intent-to-treat values: 0 when missing (proportions), dropped (means)."""
        out = pd.read_csv(self.root / "data" / "outcomes.csv")
        merged = self.units(pid).merge(out[["customer_id", column]], on="customer_id", how="left")
        merged = merged.fillna({column: 0.0}) if zero_if_missing else merged.dropna(subset=[column])
        return {arm: g[column].to_numpy(float) for arm, g in merged.groupby("arm")}


def lift_interval(yc: np.ndarray, yt: np.ndarray, crit: float) -> tuple[float, float, float]:
    """(lift, low, high): lift (m_t − m_c)/|m_c| with Fieller's interval, the textbook quadratic in ρ = m_t/m_c,
    (m_t − ρ·m_c)² ≤ crit²·(v_t + ρ²·v_c), v = p(1 − p)/n, solved by numpy.roots (labkit: issue 12, item 4)."""
    mc, mt = yc.mean(), yt.mean()
    vc, vt = mc * (1 - mc) / len(yc), mt * (1 - mt) / len(yt)
    rho = np.sort(np.real(np.roots([mc * mc - crit * crit * vc, -2 * mt * mc, mt * mt - crit * crit * vt])))
    lift = (mt - mc) / abs(mc)
    return lift, float(np.sign(mc) * (rho[0] - 1)), float(np.sign(mc) * (rho[1] - 1))


def equivalence(result) -> dict[str, tuple[float, float]]:
    return {arm: (low, high) for arm, low, high in result.verdict.equivalence}


def primary_row(data: dict, arm: str) -> dict:
    (row,) = [r for r in data["metrics"] if r["role"] == "primary" and r["arm"] == arm]
    return row


# ------------------------------------------------------------------------------ no-effect, by TOST


@pytest.fixture(scope="module")
def null_lab(tmp_path_factory) -> Lab:
    """8,000 customers, 6,000 in each pilot; outcomes that ignore the arms: the true effect is zero."""
    lab = Lab(tmp_path_factory.mktemp("null"), n=8000, seed=31)
    rng = np.random.default_rng([31, 1])
    n = len(lab.customers)
    out = pd.DataFrame(
        {
            "customer_id": lab.customers["customer_id"],
            "converted": (rng.random(n) < 0.30).astype(int),
            "spend": rng.normal(50.0, 15.0, n),
        }
    )
    out.loc[rng.random(n) < 0.03, "spend"] = np.nan  # a null value: out of the mean
    lab.outcomes(out.loc[rng.random(n) >= 0.03])  # customers the CRM lacks: 0 converted, out of the mean
    return lab


def test_zero_true_effect_is_no_effect_on_the_lift_scale(null_lab):
    """Relative MDE: the 1 − 2α interval judged is the Fieller lift interval at z_{1−α}, inside ±MDE."""
    pilot = null_lab.pilot(pilot_yaml("null-rate", mde="{relative: 0.2}"))
    result = labkit.analyze(pilot)
    alpha, mde = pilot.settings.alpha, pilot.spec.hypothesis.mde.relative
    y = null_lab.itt("null-rate", "converted", zero_if_missing=True)
    assert len(y["control"]) + len(y["fast"]) == 6000
    lift, low, high = lift_interval(y["control"], y["fast"], stats.norm.ppf(1 - alpha))
    assert -mde < low < lift < high < mde  # the reference says: equivalent
    assert result.decision == "no-effect" and result.verdict.code == "equivalent"
    assert equivalence(result)["fast"] == pytest.approx((low, high), rel=REL)
    assert "±20.0%" in result.reason
    # and the usual 1 − α row is the wider interval at z_{1−α/2}, not significant
    row = primary_row(result.to_dict(), "fast")
    _, low95, high95 = lift_interval(y["control"], y["fast"], stats.norm.ppf(1 - alpha / 2))
    assert (row["lift_ci_low"], row["lift_ci_high"]) == pytest.approx((low95, high95), rel=REL)
    assert row["method"] == "z-test" and row["p_value_adjusted"] >= alpha


def test_zero_true_effect_is_no_effect_by_welch_tost(null_lab):
    """Absolute MDE on a mean: the interval judged is Welch's at 1 − 2α; statsmodels' TOST agrees."""
    pilot = null_lab.pilot(pilot_yaml("null-spend", metric="spend", mde="{absolute: 2.0}"))
    result = labkit.analyze(pilot)
    alpha, mde = pilot.settings.alpha, pilot.spec.hypothesis.mde.absolute
    y = null_lab.itt("null-spend", "spend", zero_if_missing=False)
    ci = stats.ttest_ind(y["fast"], y["control"], equal_var=False).confidence_interval(1 - 2 * alpha)
    p_tost, _, _ = ttost_ind(y["fast"], y["control"], -mde, mde, usevar="unequal")
    assert p_tost < alpha and -mde < ci.low < ci.high < mde
    assert result.decision == "no-effect"
    assert equivalence(result)["fast"] == pytest.approx((ci.low, ci.high), rel=1e-7)
    assert "±2" in result.reason


# ------------------------------------------------------------------- the edge: no-effect or not


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """600 customers per arm, ~30 % converting in control; treatment counts chosen around the MDE's edge."""
    lab = Lab(tmp_path_factory.mktemp("edge"), n=1500, seed=32)
    pilot = lab.pilot(pilot_yaml("edge", mde="{relative: 0.2}", max_size=1200))
    units = lab.units("edge").sort_values("customer_id")
    ids = {arm: g["customer_id"].to_numpy() for arm, g in units.groupby("arm")}
    n_c, n_t = len(ids["control"]), len(ids["fast"])
    alpha, mde = pilot.settings.alpha, pilot.spec.hypothesis.mde.relative
    k_c = round(0.30 * n_c)

    def bounds(k_t: int) -> tuple[float, float, float]:
        yc, yt = np.r_[np.ones(k_c), np.zeros(n_c - k_c)], np.r_[np.ones(k_t), np.zeros(n_t - k_t)]
        return lift_interval(yc, yt, stats.norm.ppf(1 - alpha))

    # the fewest treatment conversions whose 1 − 2α upper bound reaches the MDE (the rule is strict: < MDE)
    k_edge = next(k for k in range(round(k_c * n_t / n_c), n_t) if bounds(k)[2] >= mde)

    def analyse(k_t: int):
        """The outcomes file: the first k customers of each arm (by id) converted; then analyze."""
        converted = set(ids["control"][:k_c]) | set(ids["fast"][:k_t])
        frame = lab.customers[["customer_id"]].assign(
            converted=lab.customers["customer_id"].isin(converted).astype(int), spend=1.0
        )
        lab.outcomes(frame)
        return labkit.analyze(pilot)

    return types.SimpleNamespace(lab=lab, pilot=pilot, n_c=n_c, n_t=n_t, k_c=k_c, k_edge=k_edge,
                                 bounds=bounds, analyse=analyse, alpha=alpha, mde=mde)  # fmt: skip


def test_one_converted_customer_below_the_mde_edge_is_no_effect(edge):
    k_t = edge.k_edge - 1
    lift, low, high = edge.bounds(k_t)
    assert -edge.mde < low and high < edge.mde
    result = edge.analyse(k_t)
    assert result.decision == "no-effect"
    assert equivalence(result)["fast"] == pytest.approx((low, high), rel=REL)
    assert primary_row(result.to_dict(), "fast")["lift"] == pytest.approx(lift, rel=REL)


def test_one_more_converted_customer_reaches_the_mde_and_is_not_no_effect(edge):
    """The near miss: the point estimate is well inside ±MDE, the 1 − 2α interval just reaches it."""
    lift, low, high = edge.bounds(edge.k_edge)
    assert 0 < lift < edge.mde <= high
    # the unpooled (Wald) z-test, dual to the Wald interval (issue 12, item 4)
    p_value = sm_test_2indep(edge.k_edge, edge.n_t, edge.k_c, edge.n_c, method="wald").pvalue
    assert p_value >= edge.alpha  # not significant either: the verdict is left to the power rule
    result = edge.analyse(edge.k_edge)
    assert result.decision == "inconclusive" and result.verdict.code == "underpowered"
    assert equivalence(result)["fast"] == pytest.approx((low, high), rel=REL)
    assert primary_row(result.to_dict(), "fast")["p_value"] == pytest.approx(p_value, rel=REL)


def test_inconclusive_says_how_many_more_customers_per_arm(edge):
    """N = required_per_arm − smallest arm; required_per_arm by NormalIndPower on the control arm's rate,
    effect size mde_abs / sqrt(p(1 − p)), two arms of equal size (the plan's definition)."""
    result = edge.analyse(edge.k_edge)
    assert result.decision == "inconclusive"
    p = edge.k_c / edge.n_c  # the analysis plans on the control arm's baseline
    mde_abs = p * edge.mde
    effect_size = mde_abs / math.sqrt(p * (1 - p))
    power = edge.pilot.settings.power
    # z_{1−α/2} + z_{power}, one tail: NormalIndPower one-sided at α/2 (the two-sided one adds the
    # wrong tail's ~1e-6 of power, far less than a customer: checked below). Its power function is
    # inverted with a tight brentq: solve_power's root finder stops ~1e-6 short.
    solver = NormalIndPower()

    def customers(**kw) -> float:
        return optimize.brentq(lambda n: solver.power(effect_size, n, ratio=1.0, **kw) - power, 2.0, 1e9,
                               xtol=1e-12, rtol=1e-13)  # fmt: skip

    one_tail = customers(alpha=edge.alpha / 2, alternative="larger")
    two_sided = customers(alpha=edge.alpha)
    required = math.ceil(one_tail)
    assert abs(required - two_sided) < 1
    more = required - min(edge.n_c, edge.n_t)
    assert more > 0, "the fixture must be underpowered for the sentence to carry a number"
    assert result.plan["required_per_arm"] == required
    assert result.verdict.more_per_arm == more
    said = re.search(r"About ([\d,]+) more customers per arm would settle it\.", result.reason)
    assert said, result.reason
    assert int(said[1].replace(",", "")) == more


# ------------------------------------------------------------------------------ value and ROI


@pytest.fixture(autouse=True)
def _restore_mlflow_env():
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)


def roi_reference(pilot, arms: dict[str, tuple[float, float, float]], counts: dict[str, int]) -> dict:
    """README: value = effect × value_per_unit × customers in the treatment arms, signed by the direction;
    its interval from the effect's (bounds add over arms); ROI = (value − cost) / cost."""
    budget = pilot.spec.budget
    sign = 1.0 if pilot.spec.hypothesis.direction == "increase" else -1.0
    value = low = high = 0.0
    for arm, (effect, lo, hi) in arms.items():
        unit = budget.value_per_unit * counts[arm] * sign
        value += effect * unit
        low += min(lo * unit, hi * unit)
        high += max(lo * unit, hi * unit)
    cost = budget.cost
    return {"value": value, "value_ci_low": low, "value_ci_high": high, "cost": cost,
            "roi": (value - cost) / cost, "roi_ci_low": (low - cost) / cost, "roi_ci_high": (high - cost) / cost}  # fmt: skip


ROI_FIELDS = ("value", "value_ci_low", "value_ci_high", "roi", "roi_ci_low", "roi_ci_high")


@pytest.fixture(scope="module")
def roi_case(tmp_path_factory):
    """A churn pilot (direction decrease; the churn flag sits in the column ``converted``) with two treatment
    arms, one cutting churn from 20 % to 15 %, analysed on its files."""
    lab = Lab(tmp_path_factory.mktemp("roi"), n=4000, seed=33)
    text = pilot_yaml("roi", direction="decrease", mde="{relative: 0.15}", max_size=3000,
                      arms="{control: 0.4, a: 0.3, b: 0.3}", budget="{cost: 4000, value_per_unit: 180}")  # fmt: skip
    pilot = lab.pilot(text)
    arm = lab.customers["customer_id"].map(lab.units("roi").set_index("customer_id")["arm"])
    rng = np.random.default_rng([33, 1])
    n = len(lab.customers)
    frame = lab.customers[["customer_id"]].assign(
        converted=(rng.random(n) < np.where(arm == "a", 0.15, 0.20)).astype(int), spend=1.0
    )
    lab.outcomes(frame.loc[rng.random(n) >= 0.03])  # some customers missing: they count as not churned
    result = labkit.analyze(pilot)
    return types.SimpleNamespace(lab=lab, pilot=pilot, result=result, data=result.to_dict())


def test_value_and_roi_from_the_effect_interval_and_the_assigned_counts(roi_case):
    lab, pilot, data = roi_case.lab, roi_case.pilot, roi_case.data
    counts = lab.units("roi")["arm"].value_counts().to_dict()
    assert sum(counts.values()) == pilot.spec.cohort.max_size
    # 1) from the analysis' own primary rows and the assignment's counts
    own = {a: (primary_row(data, a)["effect"], primary_row(data, a)["ci_low"], primary_row(data, a)["ci_high"])
           for a in pilot.treatments}  # fmt: skip
    want = roi_reference(pilot, own, counts)
    # 2) independently from the raw files: ITT rates and statsmodels' Wald interval at 1 − α
    y = lab.itt("roi", "converted", zero_if_missing=True)
    alpha = pilot.settings.alpha
    kc, nc = y["control"].sum(), len(y["control"])
    ref = {}
    for a in pilot.treatments:
        kt, nt = y[a].sum(), len(y[a])
        assert nt == counts[a] and primary_row(data, a)["method"] == "z-test"
        lo, hi = confint_proportions_2indep(kt, nt, kc, nc, method="wald", compare="diff", alpha=alpha)
        ref[a] = (kt / nt - kc / nc, lo, hi)
    independent = roi_reference(pilot, ref, counts)
    roi = data["roi"]
    for key in ROI_FIELDS:
        assert roi[key] == pytest.approx(want[key], rel=1e-12), key
        assert roi[key] == pytest.approx(independent[key], rel=1e-6), key
    assert roi["cost"] == 4000 and roi["value_per_unit"] == 180
    # a cut in churn is worth money: signed by the direction, the value is positive
    assert roi["value_ci_low"] < roi["value"] < roi["value_ci_high"] and roi["value"] > 0
    assert roi["roi_ci_low"] < roi["roi"] < roi["roi_ci_high"]

    # the CLI's `labkit analyze --json` carries the same roi block
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "analyze", "roi", "--json"], cwd=lab.root, capture_output=True,
        text=True, timeout=120, env={k: v for k, v in os.environ.items() if k not in ("LABKIT_LAB", "LABKIT_TRACKING_URI")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)["roi"]
    for key in ROI_FIELDS:
        assert cli[key] == pytest.approx(independent[key], rel=1e-6), key


def test_compare_reads_the_recorded_value_and_roi_of_a_real_analysis(roi_case):
    """The run as `labkit run` records it (tracking.build_record, Tracker.record into sqlite): compare's row
    and its function's group carry the same value and ROI with their intervals."""
    from labkit.compare import portfolio
    from labkit.tracking import Tracker, build_record

    lab, pilot, data = roi_case.lab, roi_case.pilot, roi_case.data
    results = json.loads(roi_case.result.to_json())
    now = time.time()
    nb = types.SimpleNamespace(status="FINISHED", message=None, executed=None, html=None, results=None,
                               figures=[], started_at=now - 5, ended_at=now)  # fmt: skip
    record = build_record(pilot, nb, run_key="roi/1", run_name="roi 1", results=results, spec_changed=False,
                          code_version="test")  # fmt: skip
    Tracker(lab.lab).record(record)
    folio = portfolio(lab.lab)
    (row,) = folio.pilots
    counts = lab.units("roi")["arm"].value_counts().to_dict()
    own = {a: (primary_row(data, a)["effect"], primary_row(data, a)["ci_low"], primary_row(data, a)["ci_high"])
           for a in pilot.treatments}  # fmt: skip
    want = roi_reference(pilot, own, counts)
    for key in ROI_FIELDS:
        assert getattr(row, key) == pytest.approx(want[key], rel=1e-12), key
    assert row.cost == 4000 and row.exposed == sum(counts.values())
    (group,) = folio.groups
    for key in ROI_FIELDS:  # a group of one pilot: its totals are that pilot's
        assert getattr(group, key) == pytest.approx(want[key], rel=1e-12), key
