"""End to end: `labkit.assign` + `labkit.analyze` on a lab labkit has never seen, checked number by number.

Each test writes a tiny lab (customers parquet, outcomes csv, events parquet) into a temporary folder,
draws the arms with ``labkit.assign``, then simulates the pilot period from the drawn arms with seeded
numpy and real effects, as a CRM would record it. Every number of the analysis is then recomputed inside
the test from the raw files with pandas and scipy / statsmodels: unpooled z-test and Wald interval
(``test_proportions_2indep``, ``confint_proportions_2indep``, method "wald"), Fieller lift intervals, Welch
(``ttest_ind(equal_var=False)`` and its t interval), CUPED (OLS ``y ~ arm + x_centred``), the delta method for ratios (by hand from per-customer
values), Holm / BH (``multipletests``), SRM (``chisquare``), power (``NormalIndPower``), ROI arithmetic
and the Bayesian conjugate posterior (by numerical integration).
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import integrate, stats
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests as _multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep
from statsmodels.stats.proportion import test_proportions_2indep as sm_test_2indep

import labkit

from conftest import LAB_YAML
from conftest import pilot_yaml as default_pilot_yaml

REL = 1e-6
START = pd.Timestamp("2026-11-01")
WINDOW = 30
N_CUSTOMERS = 4000

LAB = LAB_YAML.replace(
    "  events: {format: parquet, path: data/events.parquet, timestamp: ts}\n",
    "  events: {format: parquet, path: data/events.parquet, timestamp: ts}\n"
    "  sends: {format: parquet, path: data/sends.parquet}\n",
)

METRICS = """\
metrics:
  - {name: converted, type: proportion, source: outcomes, column: converted}
  - {name: spend, type: mean, source: outcomes, column: spend}
  - {name: spend_adj, type: mean, source: outcomes, column: spend, covariate: pre_spend}
  - name: replies
    type: mean
    source: events
    event: {column: event_type, equals: reply}
    aggregate: count
    window_days: 30
    cuped: true
  - name: tickets_per_contact
    type: ratio
    numerator: {source: outcomes, column: tickets}
    denominator: {source: outcomes, column: contacts}
  - {name: minutes, type: quantile, quantile: 0.5, source: outcomes, column: minutes}
  - {name: unsubscribed, type: proportion, source: outcomes, column: unsubscribed}
guardrails:
  - {metric: unsubscribed, direction: increase, max_harm: {absolute: 0.03}}
"""


def pilot_yaml(
    pid: str,
    *,
    metric: str = "converted",
    direction: str = "increase",
    mde: str = "{relative: 0.15}",
    arms: str = "{control: 0.5, fast: 0.5}",
    max_size: int = 3000,
    analysis: str = "{}",
    metrics: str = METRICS,
    extra_cohort: str = "",
    budget: str = "{cost: 5000, value_per_unit: 120}",
) -> str:
    """The default pilot (tests/pilots.py) with this module's metrics; each text argument as written in the
    file: ``metrics`` the ``metrics:`` (and ``guardrails:``) lines, ``extra_cohort`` indented cohort lines,
    the others a value (``mde="{relative: 0.15}"``)."""
    cohort = yaml.safe_load(textwrap.dedent(extra_cohort)) or {}
    return default_pilot_yaml(**{
        "id": pid, "title": "A pilot labkit never saw",
        "hypothesis": {"statement": "Fast replies move the customers.", "metric": metric,
                       "direction": direction, "mde": yaml.safe_load(mde)},
        "cohort.max_size": max_size, "cohort.arms": yaml.safe_load(arms),
        **{f"cohort.{key}": value for key, value in cohort.items()},
        **yaml.safe_load(metrics),
        "analysis": yaml.safe_load(analysis), "budget": yaml.safe_load(budget),
    })  # fmt: skip


# ------------------------------------------------------------------------------------------ the lab


class Lab:
    """A tiny lab folder: base data written once, pilots assigned, the pilot period simulated from the arms."""

    def __init__(self, root: Path, seed: int, n: int = N_CUSTOMERS):
        self.root = root
        self.seed = seed
        (root / "configs").mkdir(parents=True, exist_ok=True)
        (root / "configs" / "lab.yaml").write_text(LAB)
        (root / "data").mkdir(exist_ok=True)
        rng = np.random.default_rng([seed, 0])
        self.customers = pd.DataFrame(
            {
                "customer_id": [f"c{i:05d}" for i in range(n)],
                "has_twitter": rng.random(n) < 0.85,
                "segment": rng.choice(["consumer", "smb"], n),
            }
        )
        self.customers.to_parquet(root / "data" / "customers.parquet", index=False)
        self.lab = labkit.load_lab(root / "configs" / "lab.yaml")

    def pilot(self, text: str, folder: str = "experiments"):
        """Write and load a pilot; a variant of a pilot (same id, other settings) goes to another folder."""
        pid = text.split("\n", 1)[0].removeprefix("id: ").strip()
        path = self.root / folder / f"{pid}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return labkit.load_pilot(path, lab=self.lab)

    def units(self, pid: str) -> pd.DataFrame:
        """The assignment as written: the intent-to-treat units."""
        u = pd.read_parquet(self.root / "results" / pid / "assignment.parquet")
        at = pd.to_datetime(u["assigned_at"])
        if at.dt.tz is not None:
            at = at.dt.tz_convert("UTC").dt.tz_localize(None)
        return u.assign(assigned_at=at.astype("datetime64[us]"))[["customer_id", "arm", "assigned_at"]]

    def simulate(self, units: pd.DataFrame, effects: dict[str, dict[str, float]], seed: int | None = None):
        """Outcomes and events of the pilot period; each assigned customer's arm shifts its outcomes."""
        c = self.customers
        n = len(c)
        rng = np.random.default_rng([self.seed if seed is None else seed, 1])
        arm = c["customer_id"].map(units.set_index("customer_id")["arm"]).fillna("").to_numpy()

        def fx(name: str) -> np.ndarray:
            return np.array([effects.get(a, {}).get(name, 0.0) for a in arm])

        pre_spend = rng.gamma(2.0, 25.0, n)
        converted = (rng.random(n) < 0.20 + fx("converted")).astype(int)
        spend = 20 + 0.8 * pre_spend + rng.normal(0, 15, n) + fx("spend")
        contacts = rng.poisson(3.0, n)
        tickets = rng.binomial(contacts, 0.30 + fx("ticket_rate"))
        minutes = rng.lognormal(np.log(60), 0.8, n) * (1 + fx("minutes"))
        unsubscribed = (rng.random(n) < 0.03 + fx("unsubscribed")).astype(int)
        out = pd.DataFrame(
            {
                "customer_id": c["customer_id"],
                "converted": converted,
                "spend": spend,
                "pre_spend": pre_spend,
                "tickets": tickets,
                "contacts": contacts,
                "minutes": minutes,
                "unsubscribed": unsubscribed,
                "const": 1.0,
                "zero": 0,
            }
        )
        out.loc[rng.random(n) < 0.03, "spend"] = np.nan  # a null value: excluded from means
        out.loc[rng.random(n) < 0.03, "pre_spend"] = np.nan  # a null covariate: x = 0
        out.loc[rng.random(n) < 0.02, ["contacts"]] = np.nan  # a ratio customer missing its denominator
        out = out.loc[rng.random(n) >= 0.04]  # customers the CRM lacks: 0 for proportions, out of means
        out.to_csv(self.root / "data" / "outcomes.csv", index=False)

        # replies: a per-customer rate; the pre-period [at - 30d, at) predicts the window [at, at + 30d)
        rate = rng.gamma(1.0, 0.08, n)  # per day: many customers have no event at all
        at = START.value // 1000  # microseconds
        day = 86_400_000_000
        chunks = []

        def burst(lam, lo, hi, kind):
            k = rng.poisson(lam)
            who = np.repeat(np.arange(n), k)
            ts = rng.integers(at + lo * day, at + hi * day, who.size)
            chunks.append(pd.DataFrame({"i": who, "ts": ts, "event_type": kind}))

        burst(rate * 30, -30, 0, "reply")
        burst(rate * 30 * (1 + fx("replies")), 0, 30, "reply")
        burst(rate * 30, 30, 60, "reply")  # after the window: never counted
        burst(rate * 30, -60, -30, "reply")  # before the pre-period
        burst(rate * 30, -30, 30, "like")  # another event type
        edge = np.arange(20)  # the half-open edges: at and at - 30d count, at + 30d does not
        for offset in (0, -30 * day, 30 * day):
            chunks.append(pd.DataFrame({"i": edge, "ts": at + offset, "event_type": "reply"}))
        ev = pd.concat(chunks, ignore_index=True)
        events = pd.DataFrame(
            {
                "customer_id": c["customer_id"].to_numpy()[ev["i"]],
                "ts": pd.to_datetime(ev["ts"], unit="us").astype("datetime64[us]"),
                "event_type": ev["event_type"].to_numpy(),
                "value": rng.random(len(ev)),
            }
        )
        events.to_parquet(self.root / "data" / "events.parquet", index=False)


def multipletests(p_values, method: str):
    """statsmodels' multipletests, the reference. Its Holm branch calls gc.collect(), which walks the whole
    heap of a test worker (~0.35 s per call in a full session); with the heap frozen for the call it walks
    only what the call made. Nothing it computes changes."""
    gc.freeze()
    try:
        return _multipletests(p_values, method=method)
    finally:
        gc.unfreeze()


def analyze(pilot):
    result = labkit.analyze(pilot)
    data = result.to_dict()
    json.dumps(data, allow_nan=False)  # the contract: never NaN or infinity
    return result, data


def row(data: dict, metric: str, arm: str) -> dict:
    (r,) = [r for r in data["metrics"] if r["metric"] == metric and r["arm"] == arm]
    return r


# ------------------------------------------------------------------ independent reference computations


def per_customer(lab: Lab, units: pd.DataFrame, column: str, *, zero_if_missing: bool) -> pd.DataFrame:
    """Intent-to-treat values of a per-customer column: 0 (proportions) or dropped (means) when missing."""
    out = pd.read_csv(lab.root / "data" / "outcomes.csv")
    merged = units.merge(out[["customer_id", column]], on="customer_id", how="left")
    if zero_if_missing:
        return merged.assign(y=merged[column].fillna(0.0))
    return merged.dropna(subset=[column]).assign(y=lambda f: f[column])


def event_counts(lab: Lab, units: pd.DataFrame, kind: str = "reply", days: int = WINDOW) -> pd.DataFrame:
    """Events per assigned customer in [at, at + days) (y) and [at - days, at) (x); none counts 0."""
    ev = pd.read_parquet(lab.root / "data" / "events.parquet")
    ev = ev[ev["event_type"] == kind].merge(units, on="customer_id")
    span = pd.Timedelta(days=days)
    post = ev[(ev["ts"] >= ev["assigned_at"]) & (ev["ts"] < ev["assigned_at"] + span)]
    pre = ev[(ev["ts"] >= ev["assigned_at"] - span) & (ev["ts"] < ev["assigned_at"])]
    ids = units.set_index("customer_id")
    return units.assign(
        y=ids.index.map(post.groupby("customer_id").size()).fillna(0).to_numpy(float),
        x=ids.index.map(pre.groupby("customer_id").size()).fillna(0).to_numpy(float),
    )


def lift_ref(mc, mt, vc, vt, crit):
    """Lift (mt - mc)/|mc| with the delta-method se sqrt(vt/mc^2 + mt^2 vc/mc^4) and Fieller's interval: the
    textbook quadratic in rho = mt/mc, (mt - rho mc)^2 <= crit^2 (vt + rho^2 vc), solved by numpy.roots and
    mapped to sign(mc) (rho - 1); None bounds when it is unbounded (crit^2 vc / mc^2 >= 1)."""
    se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    lift = (mt - mc) / abs(mc)
    low = high = None
    if crit * crit * vc / (mc * mc) < 1:
        rho = np.real(np.roots([mc * mc - crit * crit * vc, -2 * mt * mc, mt * mt - crit * crit * vt]))
        low, high = sorted(float(np.sign(mc) * (r - 1)) for r in rho)
    return dict(lift=lift, lift_ci_low=low, lift_ci_high=high, lift_se=se)


def ref_proportion(yc, yt, alpha):
    """The unpooled (Wald) z-test and its interval: one standard error for both (statsmodels)."""
    kc, kt, nc, nt = yc.sum(), yt.sum(), len(yc), len(yt)
    p = sm_test_2indep(kt, nt, kc, nc, method="wald", compare="diff").pvalue
    low, high = confint_proportions_2indep(kt, nt, kc, nc, method="wald", compare="diff", alpha=alpha)
    pc, pt = kc / nc, kt / nt
    z = stats.norm.ppf(1 - alpha / 2)
    lift = lift_ref(pc, pt, pc * (1 - pc) / nc, pt * (1 - pt) / nt, z)
    return dict(n_control=nc, n_treatment=nt, mean_control=pc, mean_treatment=pt, effect=pt - pc,
                se=(high - low) / (2 * z), ci_low=low, ci_high=high, p_value=p, method="z-test", **lift)  # fmt: skip


def ref_welch(yc, yt, alpha, method="welch-t"):
    res = stats.ttest_ind(yt, yc, equal_var=False)
    ci = res.confidence_interval(1 - alpha)
    mc, mt = float(np.mean(yc)), float(np.mean(yt))
    crit = stats.t.ppf(1 - alpha / 2, res.df)
    lift = lift_ref(mc, mt, np.var(yc, ddof=1) / len(yc), np.var(yt, ddof=1) / len(yt), crit)
    return dict(n_control=len(yc), n_treatment=len(yt), mean_control=mc, mean_treatment=mt, effect=mt - mc,
                se=(mt - mc) / res.statistic, ci_low=ci.low, ci_high=ci.high, p_value=res.pvalue, method=method,
                **lift)  # fmt: skip


def ref_cuped(frame: pd.DataFrame, control: str, arm: str, alpha: float):
    """CUPED as ANCOVA: OLS y ~ 1 + arm + (x - mean x); Welch on y - theta (x - mean x) per arm."""
    f = frame[frame["arm"].isin([control, arm])]
    xc = f["x"] - f["x"].mean()
    design = np.column_stack([np.ones(len(f)), (f["arm"] == arm).to_numpy(float), xc])
    fit = OLS(f["y"].to_numpy(), design).fit()
    theta = fit.params[2]
    adjusted = f["y"] - theta * xc
    out = ref_welch(adjusted[f["arm"] == control].to_numpy(), adjusted[f["arm"] == arm].to_numpy(), alpha,
                    method="welch-t+cuped")  # fmt: skip
    unadjusted = ref_welch(f.loc[f["arm"] == control, "y"], f.loc[f["arm"] == arm, "y"], alpha)
    out["variance_reduction"] = 1 - (out["se"] / unadjusted["se"]) ** 2
    out["ols_effect"] = fit.params[1]
    return out


def ref_ratio(fc: pd.DataFrame, ft: pd.DataFrame, alpha):
    """Delta method by hand from per-customer (y, x): Var(R) = (s_y^2 - 2R s_xy + R^2 s_x^2) / (n xbar^2)."""

    def arm(f):
        y, x = f["y"].to_numpy(float), f["x"].to_numpy(float)
        r = y.sum() / x.sum()
        cov = np.cov(y, x, ddof=1)
        var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / x.mean() ** 2
        return r, var / len(y), len(y)

    rc, vc, nc = arm(fc)
    rt, vt, nt = arm(ft)
    se = math.sqrt(vc + vt)
    df = (vc + vt) ** 2 / (vc**2 / (nc - 1) + vt**2 / (nt - 1))
    crit = stats.t.ppf(1 - alpha / 2, df)
    effect = rt - rc
    lift = lift_ref(rc, rt, vc, vt, crit)
    return dict(n_control=nc, n_treatment=nt, mean_control=rc, mean_treatment=rt, effect=effect, se=se,
                ci_low=effect - crit * se, ci_high=effect + crit * se, p_value=2 * stats.t.sf(abs(effect) / se, df),
                method="delta-ratio", **lift)  # fmt: skip


def ratio_frame(lab: Lab, units: pd.DataFrame) -> pd.DataFrame:
    out = pd.read_csv(lab.root / "data" / "outcomes.csv")
    merged = units.merge(out[["customer_id", "tickets", "contacts"]], on="customer_id", how="left")
    return merged.dropna(subset=["tickets", "contacts"]).rename(columns={"tickets": "y", "contacts": "x"})


def assert_matches(got: dict, want: dict) -> None:
    for key, value in want.items():
        if key in ("method", "ols_effect"):
            continue
        if value is None:
            assert got[key] is None, key
            continue
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(float(value), rel=REL, abs=1e-12), key
    if "method" in want:
        assert got["method"] == want["method"]


def expected_rows(lab: Lab, pilot, alpha: float) -> dict[tuple[str, str], dict]:
    """Every (metric, treatment arm) of METRICS, recomputed from the raw files."""
    units = lab.units(pilot.id)
    control = pilot.control
    conv = per_customer(lab, units, "converted", zero_if_missing=True)
    unsub = per_customer(lab, units, "unsubscribed", zero_if_missing=True)
    spend = per_customer(lab, units, "spend", zero_if_missing=False)
    covariate = pd.read_csv(lab.root / "data" / "outcomes.csv")[["customer_id", "pre_spend"]]
    spend_adj = spend.merge(covariate, on="customer_id", how="left")
    spend_adj = spend_adj.assign(x=spend_adj["pre_spend"].fillna(0.0))  # a null covariate counts as 0
    replies = event_counts(lab, units)
    ratio = ratio_frame(lab, units)

    def split(frame, arm):
        y = frame.groupby("arm")["y"]
        return y.get_group(control).to_numpy(), y.get_group(arm).to_numpy()

    out = {}
    for arm in pilot.treatments:
        out[("converted", arm)] = ref_proportion(*split(conv, arm), alpha)
        out[("unsubscribed", arm)] = ref_proportion(*split(unsub, arm), alpha)
        out[("spend", arm)] = ref_welch(*split(spend, arm), alpha)
        out[("spend_adj", arm)] = ref_cuped(spend_adj, control, arm, alpha)
        out[("replies", arm)] = ref_cuped(replies, control, arm, alpha)
        out[("tickets_per_contact", arm)] = ref_ratio(
            *(ratio[ratio["arm"] == a] for a in (control, arm)), alpha
        )
        out[("minutes", arm)] = split(per_customer(lab, units, "minutes", zero_if_missing=False), arm)
    return out


# ----------------------------------------------------------------------------------------- fixtures


# per treatment arm: +6 points conversion, +6 spend, +50% replies, -5 points tickets per contact, -25% minutes
EFFECTS_2 = {"fast": dict(converted=0.06, spend=6.0, replies=0.5, ticket_rate=-0.05, minutes=-0.25)}
EFFECTS_3 = {
    "a": dict(converted=0.06, spend=6.0, replies=0.5, ticket_rate=-0.06, minutes=-0.25),
    "b": {},  # a null arm
}


@dataclass
class Case:
    lab: Lab
    pilot: object
    result: object  # the Analysis
    data: dict  # its to_dict()


@pytest.fixture(scope="module")
def two_arms(tmp_path_factory) -> Case:
    lab = Lab(tmp_path_factory.mktemp("two-arms"), seed=11)
    pilot = lab.pilot(pilot_yaml("p"))
    labkit.assign(pilot)
    lab.simulate(lab.units("p"), EFFECTS_2)
    return Case(lab, pilot, *analyze(pilot))


@pytest.fixture(scope="module")
def three_arms(tmp_path_factory) -> Case:
    lab = Lab(tmp_path_factory.mktemp("three-arms"), seed=12)
    text = pilot_yaml(
        "p3",
        metric="tickets_per_contact",
        direction="decrease",
        mde="{relative: 0.1}",
        arms="{control: 0.4, a: 0.3, b: 0.3}",
        analysis="{correction: bh}",
    )
    pilot = lab.pilot(text)
    labkit.assign(pilot)
    lab.simulate(lab.units("p3"), EFFECTS_3)
    return Case(lab, pilot, *analyze(pilot))


# -------------------------------------------------------------------------------- the number checks


@pytest.mark.parametrize("fixture", ["two_arms", "three_arms"])
def test_every_metric_matches_an_independent_computation(fixture, request):
    case = request.getfixturevalue(fixture)
    lab, pilot, data = case.lab, case.pilot, case.data
    alpha = pilot.settings.alpha
    expected = expected_rows(lab, pilot, alpha)
    assert len(data["metrics"]) == 7 * len(pilot.treatments)
    for (metric, arm), want in expected.items():
        got = row(data, metric, arm)
        assert got["control_arm"] == pilot.control
        if metric == "minutes":
            yc, yt = want
            qc, qt = np.quantile(yc, 0.5), np.quantile(yt, 0.5)
            assert (got["n_control"], got["n_treatment"]) == (len(yc), len(yt))
            assert got["mean_control"] == pytest.approx(qc, rel=REL)
            assert got["mean_treatment"] == pytest.approx(qt, rel=REL)
            assert got["effect"] == pytest.approx(qt - qc, rel=REL)
            assert got["lift"] == pytest.approx((qt - qc) / qc, rel=REL)
            assert got["ci_low"] < got["effect"] < got["ci_high"] and 0 < got["p_value"] <= 1
            assert got["method"] == "bootstrap"
            # an independent bootstrap (other seed, same replications) gives about the same interval width
            rng = np.random.default_rng(99)
            boots = [np.quantile(rng.choice(yt, len(yt)), 0.5) - np.quantile(rng.choice(yc, len(yc)), 0.5)
                     for _ in range(pilot.settings.bootstrap_samples)]  # fmt: skip
            width = np.subtract(*np.quantile(boots, [1 - alpha / 2, alpha / 2]))
            assert got["ci_high"] - got["ci_low"] == pytest.approx(width, rel=0.15)
            continue
        assert_matches(got, want)
        if "ols_effect" in want:
            assert got["effect"] == pytest.approx(want["ols_effect"], rel=REL)
        else:
            assert got["variance_reduction"] is None
        assert got["reason"] is None
    for arm in pilot.treatments:
        assert row(data, "spend_adj", arm)["covariate"] == "pre_spend"
        assert row(data, "replies", arm)["covariate"] == "pre-period count over 30 days"
    # the data-quality fields: intent-to-treat counts per arm
    units = lab.units(pilot.id)
    outcomes = pd.read_csv(lab.root / "data" / "outcomes.csv")
    absent = ~units["customer_id"].isin(outcomes["customer_id"])
    assigned = units["arm"].value_counts()
    for arm in pilot.treatments:
        conv = row(data, "converted", arm)
        assert conv["assigned_treatment"] == conv["n_treatment"] == assigned[arm]
        assert conv["missing_treatment"] == absent[units["arm"] == arm].sum()
        assert conv["missing_control"] == absent[units["arm"] == pilot.control].sum()
        rep = row(data, "replies", arm)
        assert rep["n_treatment"] == assigned[arm] and rep["missing_treatment"] == 0  # no events count 0
        spend = row(data, "spend", arm)
        assert spend["n_treatment"] + spend["missing_treatment"] == assigned[arm]
        assert spend["missing_treatment"] > conv["missing_treatment"]  # absent rows and null values
    assert data["data_quality"]["converted"]["assigned"] == {a: int(assigned[a]) for a in pilot.arms}


def test_some_customers_have_no_events_and_count_zero(two_arms):
    lab, data = two_arms.lab, two_arms.data
    counts = event_counts(lab, lab.units("p"))
    assert (counts["y"] == 0).mean() > 0.1  # the fixture really tests the zero-fill
    r = row(data, "replies", "fast")
    raw_c = counts.loc[counts["arm"] == "control", "y"]
    raw_t = counts.loc[counts["arm"] == "fast", "y"]
    assert r["n_control"] == len(raw_c) and r["n_treatment"] == len(raw_t)
    assert r["mean_control"] != pytest.approx(raw_c.mean())  # the CUPED-adjusted mean, not the raw one
    assert r["variance_reduction"] > 0.2  # the pre-period predicts the window


@pytest.mark.parametrize("fixture", ["two_arms", "three_arms"])
def test_multiplicity_families(fixture, request):
    case = request.getfixturevalue(fixture)
    pilot, rows = case.pilot, case.data["metrics"]
    primary = [r for r in rows if r["role"] == "primary"]
    secondary = [r for r in rows if r["role"] == "secondary"]
    guard = [r for r in rows if r["role"] == "guardrail"]
    assert len(primary) == len(pilot.treatments) and len(guard) == len(pilot.treatments)
    want = multipletests([r["p_value"] for r in primary], method="holm")[1]
    assert [r["p_value_adjusted"] for r in primary] == pytest.approx(list(want), rel=REL)
    method = {"holm": "holm", "bh": "fdr_bh"}[pilot.settings.correction]
    want = multipletests([r["p_value"] for r in secondary], method=method)[1]
    assert [r["p_value_adjusted"] for r in secondary] == pytest.approx(list(want), rel=REL)
    assert all(r["p_value_adjusted"] == r["p_value"] for r in guard)


@pytest.mark.parametrize("fixture", ["two_arms", "three_arms"])
def test_srm_plan_roi_and_decision(fixture, request):
    case = request.getfixturevalue(fixture)
    lab, pilot, data = case.lab, case.pilot, case.data
    units = lab.units(pilot.id)
    counts = units["arm"].value_counts()
    observed = [counts[a] for a in pilot.arms]
    weights = np.array(list(pilot.arms.values()))
    chi = stats.chisquare(observed, weights / weights.sum() * sum(observed))
    assert data["srm"]["counts"] == {a: int(counts[a]) for a in pilot.arms}
    assert data["srm"]["p_value"] == pytest.approx(chi.pvalue, rel=REL)
    assert data["srm"]["ok"] is True and data["srm"]["method"] == "chi-square"
    assert data["meta"]["exposed"] == len(units) == pilot.spec.cohort.max_size  # capped at max_size

    # plan: power on the control arm's per-customer SD of the primary metric, Holm's alpha / k
    alpha, k = pilot.settings.alpha, len(pilot.treatments)
    if pilot.primary.type == "proportion":
        y = per_customer(lab, units, "converted", zero_if_missing=True)
        y = y.loc[y["arm"] == pilot.control, "y"]
        mean, sd = y.mean(), math.sqrt(y.mean() * (1 - y.mean()))
    else:  # the ratio's delta-method SD
        f = ratio_frame(lab, units)
        f = f[f["arm"] == pilot.control]
        mean = f["y"].sum() / f["x"].sum()
        sd = np.std(f["y"] - mean * f["x"], ddof=1) / f["x"].mean()
    plan = data["plan"]
    mde = abs(mean) * pilot.spec.hypothesis.mde.relative
    assert plan["baseline_mean"] == pytest.approx(mean, rel=REL)
    assert plan["baseline_sd"] == pytest.approx(sd, rel=REL)
    assert plan["mde_abs"] == pytest.approx(mde, rel=REL)
    power = NormalIndPower()
    w_c, w_t = pilot.arms[pilot.control], min(pilot.arms[a] for a in pilot.treatments)
    # arms sized for the allocation (issue 15): the control arm is nobs1 at ratio = w_t / w_c
    n_ref = power.solve_power(effect_size=mde / sd, alpha=alpha / k, power=0.8, ratio=w_t / w_c)
    by_arm = plan["required_by_arm"]
    assert abs(by_arm[pilot.control] - n_ref) < 1
    assert by_arm == {a: math.ceil(by_arm[pilot.control] * w / w_c - 1e-9) for a, w in pilot.arms.items()}
    assert plan["required_per_arm"] == min(by_arm.values())
    assert plan["required_total"] == sum(by_arm.values())
    cap = pilot.spec.cohort.max_size
    es = power.solve_power(nobs1=cap * w_c, ratio=w_t / w_c, alpha=alpha / k, power=0.8)
    assert plan["mde_at_cap"] == pytest.approx(es * sd, rel=1e-5)
    assert plan["powered"] == (plan["mde_at_cap"] <= mde)

    # ROI: effect x value per unit x assigned treatment customers, signed by the hypothesis' direction
    budget = pilot.spec.budget
    sign = 1 if pilot.spec.hypothesis.direction == "increase" else -1
    primary = [r for r in data["metrics"] if r["role"] == "primary"]
    value = sum(r["effect"] * budget.value_per_unit * counts[r["arm"]] * sign for r in primary)
    bounds = [sorted([r["ci_low"] * budget.value_per_unit * counts[r["arm"]] * sign,
                      r["ci_high"] * budget.value_per_unit * counts[r["arm"]] * sign]) for r in primary]  # fmt: skip
    roi = data["roi"]
    assert roi["value"] == pytest.approx(value, rel=REL)
    assert roi["value_ci_low"] == pytest.approx(sum(b[0] for b in bounds), rel=REL)
    assert roi["value_ci_high"] == pytest.approx(sum(b[1] for b in bounds), rel=REL)
    assert roi["cost"] == budget.cost
    assert roi["roi"] == pytest.approx((value - budget.cost) / budget.cost, rel=REL)

    # the verdict: the seeded effects are large, so the primary moved as predicted, significantly
    assert data["decision"] == "ship" and data["decision_code"] == "significant"
    winners = [r["arm"] for r in primary if r["p_value_adjusted"] < alpha and r["effect"] * sign > 0]
    assert winners == pilot.treatments[:1]  # the arm with effects, not the null arm "b"
    guard = [r for r in data["metrics"] if r["role"] == "guardrail"]
    assert all(r["effect"] < 0.03 and not (r["p_value"] < alpha and r["effect"] > 0) for r in guard)


def test_cli_json_equals_to_dict(two_arms):
    lab, data = two_arms.lab, two_arms.data
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "analyze", "p", "--json"],
        cwd=lab.root,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "LABKIT_LAB"},
    )
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    ours = json.loads(json.dumps(data))
    assert set(cli) >= {"pilot", "decision", "reason", "srm", "metrics", "plan", "roi"}
    assert cli["meta"].pop("analysed_at") and ours["meta"].pop("analysed_at")
    assert_same(cli, ours)


def assert_same(a, b, path: str = "") -> None:
    """Equal JSON, floats up to 1e-9 relative: DuckDB's multi-threaded sums may differ in the last bits
    from one run to the next (the combine order of its partial aggregates is not fixed)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), path
        assert a == pytest.approx(b, rel=1e-9, abs=1e-300), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# ------------------------------------------------------------------------------- engines and modes


def test_sequential_intervals_are_wider_confidence_sequences(two_arms):
    lab, pilot, fixed = two_arms.lab, two_arms.pilot, two_arms.data
    _, seq = analyze(lab.pilot(pilot_yaml("p", analysis="{sequential: true}"), folder="sequential"))
    alpha = pilot.settings.alpha
    for f, s in zip(fixed["metrics"], seq["metrics"]):
        assert (s["metric"], s["arm"]) == (f["metric"], f["arm"])
        assert s["method"] == f["method"] + "+cs"
        assert s["effect"] == pytest.approx(f["effect"], rel=REL)
        assert s["ci_low"] < f["ci_low"] and s["ci_high"] > f["ci_high"]
        assert s["lift_ci_low"] < f["lift_ci_low"] and s["lift_ci_high"] > f["lift_ci_high"]
        # always-valid p-values are never below the fixed-horizon normal ones (the bootstrap's own p-value
        # stops at its resolution, 2 / (replications + 1), so it is compared on the normal scale)
        assert s["p_value"] >= 2 * stats.norm.sf(abs(f["effect"]) / f["se"]) * (1 - 1e-9)
        if f["method"] != "bootstrap":
            assert s["p_value"] >= f["p_value"]
    # the z-test's half-width grows from z to the confidence-sequence multiplier (Waudby-Smith et al. eq. 9)
    f, s = row(fixed, "converted", "fast"), row(seq, "converted", "fast")
    n, cap = f["n_control"] + f["n_treatment"], pilot.spec.cohort.max_size
    u = n * (math.log(1 - 2 * math.log(alpha)) - 2 * math.log(alpha)) / cap
    h = math.sqrt((u + 1) / u * math.log((u + 1) / alpha**2))
    z = stats.norm.ppf(1 - alpha / 2)
    assert (s["ci_high"] - s["ci_low"]) / (f["ci_high"] - f["ci_low"]) == pytest.approx(h / z, rel=REL)

    # the plan uses the same boundary: power at the cap is P(Z > h_cap - mde/se), not P(Z > z - mde/se)
    fp, sp = fixed["plan"], seq["plan"]
    assert sp["baseline_sd"] == pytest.approx(fp["baseline_sd"], rel=REL)
    sd, k = sp["baseline_sd"], len(pilot.treatments)
    w_c, w_t = pilot.arms[pilot.control], min(pilot.arms[a] for a in pilot.treatments)
    n_c, n_t = cap * w_c, cap * w_t
    u = (n_c + n_t) * (math.log(1 - 2 * math.log(alpha / k)) - 2 * math.log(alpha / k)) / cap
    h_cap = math.sqrt((u + 1) / u * math.log((u + 1) / (alpha / k) ** 2))
    se_cap = sd * math.sqrt(1 / n_c + 1 / n_t)
    assert sp["mde_at_cap"] == pytest.approx((h_cap + stats.norm.ppf(0.8)) * se_cap, rel=REL)
    assert sp["mde_at_cap"] > fp["mde_at_cap"] and sp["required_per_arm"] > fp["required_per_arm"]


def expected_loss(post, good: int) -> float:
    """E[max(0, -good * lift)] under the posterior, by numerical integration."""
    mean, sd = post.mean(), post.std()
    lo, hi = mean - 12 * sd, mean + 12 * sd
    return integrate.quad(lambda x: max(0.0, -good * x) * post.pdf(x), lo, hi, points=[0.0], limit=200)[0]


def test_bayesian_posterior_is_the_conjugate_normal(two_arms):
    lab, freq = two_arms.lab, two_arms.data
    bayes_pilot = lab.pilot(pilot_yaml("p", analysis="{engine: bayesian}"), folder="bayesian")
    _, data = analyze(bayes_pilot)
    s = bayes_pilot.settings
    assert data["meta"]["engine"] == "bayesian"
    z = stats.norm.ppf(1 - s.alpha / 2)
    checked = 0
    for r in data["metrics"]:
        if r["lift_ci_low"] is None:
            continue
        f = row(freq, r["metric"], r["arm"])
        assert r["effect"] == pytest.approx(f["effect"], rel=REL)  # the data part is the frequentist one
        se = r["lift_se"]
        prec = 1 / se**2 + 1 / s.prior_sd**2
        mean = (r["lift"] / se**2 + s.prior_mean / s.prior_sd**2) / prec
        sd = math.sqrt(1 / prec)
        assert r["posterior_lift"] == pytest.approx(mean, rel=REL)
        assert r["posterior_lift_sd"] == pytest.approx(sd, rel=REL)
        assert r["credible_low"] == pytest.approx(mean - z * sd, rel=REL)
        assert r["credible_high"] == pytest.approx(mean + z * sd, rel=REL)
        good = 1 if r["role"] != "primary" or data["meta"]["direction"] == "increase" else -1
        post = stats.norm(mean, sd)
        chance = post.sf(0) if good == 1 else post.cdf(0)
        loss = expected_loss(post, good)
        assert r["chance_to_beat"] == pytest.approx(chance, rel=REL)
        assert r["expected_loss"] == pytest.approx(loss, rel=1e-5, abs=1e-12)
        checked += 1
    assert checked == 7  # every metric has a lift interval here
    primary = row(data, "converted", "fast")
    assert primary["chance_to_beat"] > 1 - s.alpha and data["decision"] == "ship"


# ------------------------------------------------------------------------------- degenerate and broken


CONVERTED = "  - {name: converted, type: proportion, source: outcomes, column: converted}\n"
DEGENERATE = {
    "zero_variance": "  - {name: target, type: mean, source: outcomes, column: const}\n",
    "zero_denominator": (
        "  - name: target\n    type: ratio\n    numerator: {source: outcomes, column: tickets}\n"
        "    denominator: {source: outcomes, column: zero}\n"
    ),
    "empty_arm": "  - {name: target, type: mean, source: outcomes, column: gap}\n",
}


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("degenerate"), seed=13, n=800)
    pilots = {}
    for code, metric in DEGENERATE.items():
        metrics = "metrics:\n" + metric + CONVERTED
        pilots[code] = lab.pilot(
            pilot_yaml(
                code.replace("_", "-"), metric="target", mde="{absolute: 1}", max_size=600, metrics=metrics
            )
        )
        labkit.assign(pilots[code])
    lab.simulate(lab.units("empty-arm"), {})
    # `gap`: the CRM holds no value for any treatment customer of the empty-arm pilot
    out = pd.read_csv(lab.root / "data" / "outcomes.csv")
    treated = set(lab.units("empty-arm").query("arm == 'fast'")["customer_id"])
    out["gap"] = np.where(out["customer_id"].isin(treated), np.nan, out["spend"].fillna(1.0))
    out.to_csv(lab.root / "data" / "outcomes.csv", index=False)
    return lab, pilots


@pytest.mark.parametrize("code", list(DEGENERATE))
def test_degenerate_primary_is_invalid_with_its_code_and_no_nan(degenerate, code):
    _, pilots = degenerate
    result, data = analyze(pilots[code])  # analyze() dumps with allow_nan=False
    assert data["decision"] == "invalid" and data["decision_code"] == code
    r = row(data, "target", "fast")
    assert r["reason"] == code
    assert r["p_value"] is None and r["ci_low"] is None and r["p_value_adjusted"] is None
    assert data["roi"]["value"] is None and data["roi"]["roi"] is None
    # the other metric is still estimated
    assert row(data, "converted", "fast")["p_value"] is not None
    assert result.to_json()  # the Analysis' own JSON too


def test_a_degenerate_secondary_stays_out_of_its_family(degenerate):
    lab, pilots = degenerate
    spend = "  - {name: spend, type: mean, source: outcomes, column: spend}\n"
    metrics = "metrics:\n" + CONVERTED + DEGENERATE["zero_variance"] + spend
    pilot = lab.pilot(pilot_yaml("secondary", metrics=metrics, mde="{absolute: 0.05}", max_size=600))
    labkit.assign(pilot)  # the outcomes hold every customer: no need to simulate again
    _, data = analyze(pilot)
    assert data["decision"] != "invalid"
    assert row(data, "target", "fast")["p_value_adjusted"] is None
    spend = row(data, "spend", "fast")
    # a family of one: the test that could not run does not count towards Holm's m
    assert spend["p_value_adjusted"] == spend["p_value"]


SMALL_METRICS = """\
metrics:
  - {name: converted, type: proportion, source: outcomes, column: converted}
  - {name: unsubscribed, type: proportion, source: outcomes, column: unsubscribed}
guardrails:
  - {metric: unsubscribed, direction: increase, max_harm: {absolute: 0.03}}
"""
IMPORTED = """\
  assignment: {source: sends, arm_column: variant}
"""


@pytest.mark.parametrize(
    ("n_control", "n_fast", "max_size", "code"),
    [(600, 400, 2000, "srm"), (700, 700, 1000, "cap_exceeded"), (530, 470, 2000, None)],
)
def test_imported_assignment_srm_and_cap(tmp_path, n_control, n_fast, max_size, code):
    lab = Lab(tmp_path, seed=14, n=2000)
    ids = lab.customers.loc[lab.customers["has_twitter"], "customer_id"].to_numpy()[: n_control + n_fast]
    assert len(ids) == n_control + n_fast
    variant = np.array(["control"] * n_control + ["fast"] * n_fast)
    np.random.default_rng(3).shuffle(variant)
    pd.DataFrame({"customer_id": ids, "variant": variant}).to_parquet(tmp_path / "data" / "sends.parquet")
    pilot = lab.pilot(pilot_yaml("imp", max_size=max_size, extra_cohort=IMPORTED, metrics=SMALL_METRICS))
    labkit.assign(pilot)
    lab.simulate(lab.units("imp"), EFFECTS_2)
    _, data = analyze(pilot)
    if code is None:  # a 53/47 split is within chance (p about 0.06): the pilot counts
        assert data["decision"] != "invalid" and data["srm"]["p_value"] > 0.001
    else:
        assert data["decision"] == "invalid" and data["decision_code"] == code
    assert data["srm"]["counts"] == {"control": n_control, "fast": n_fast}
    chi = stats.chisquare([n_control, n_fast])
    assert data["srm"]["p_value"] == pytest.approx(chi.pvalue, rel=REL)
    assert data["srm"]["ok"] is (code != "srm")
    assert data["meta"]["exposed"] == n_control + n_fast


# ------------------------------------------------------------------------------------ A/A simulation


def aa_false_positives(tmp_path: Path, reps: int, seed: int) -> tuple[int, float]:
    """assign + analyze of `reps` null pilots (a fresh salt and fresh outcomes each): ship/harm count."""
    lab = Lab(tmp_path, seed=seed, n=1200)
    metrics = "metrics:\n" + CONVERTED
    hits, started = 0, time.perf_counter()
    for i in range(reps):
        pilot = lab.pilot(pilot_yaml(f"aa-{i}", metrics=metrics, max_size=1000, budget="null"))
        labkit.assign(pilot)
        rng = np.random.default_rng([seed, i])
        converted = (rng.random(len(lab.customers)) < 0.2).astype(int)  # no effect: the null is true
        frame = pd.DataFrame({"customer_id": lab.customers["customer_id"], "converted": converted})
        frame.to_csv(tmp_path / "data" / "outcomes.csv", index=False)
        _, data = analyze(pilot)
        hits += data["decision"] in ("ship", "harm")
    return hits, (time.perf_counter() - started) / reps


def aa_bound(reps: int, alpha: float) -> int:
    """The binomial 99.9% upper bound of false ship/harm verdicts at rate alpha."""
    return int(stats.binom.ppf(0.999, reps, alpha))


@pytest.mark.slow
def test_aa_false_positive_rate_through_the_whole_pipeline(tmp_path):
    # One run of 50 null pilots (~0.2 CPU-s each). It also ran as a second test of 20 pilots (seed 21), the
    # same claim with less power: at a 99.9% binomial bound (5 of 20, 8 of 50) a true ship/harm rate of 20%
    # fails 20 pilots with chance 0.20, 50 with 0.69; the 20 added no check the 50 do not make. The
    # stats-level A/A tests run thousands of replications.
    reps, alpha = 50, 0.05
    hits, per_rep = aa_false_positives(tmp_path, reps, seed=22)
    bound = aa_bound(reps, alpha)
    assert hits <= bound, f"{hits}/{reps} null pilots shipped or harmed; alpha {alpha}, 99.9% bound {bound}"
    print(f"A/A: {hits}/{reps} ship/harm, {per_rep:.2f} s per assign+analyze")


# ----------------------------------------------- issue 12: negative means (item 3), adjusted intervals (item 4)

NET_METRICS = """\
metrics:
  - {name: net, type: mean, source: outcomes, column: net}
  - {name: balance, type: mean, source: outcomes, column: balance}
guardrails:
  - {metric: balance, direction: decrease, max_harm: {relative: 0.05}}
"""


@pytest.mark.parametrize("engine", ["frequentist", "bayesian"])
def test_a_net_revenue_metric_with_negative_means_ships_end_to_end(tmp_path, engine):
    # net revenue around −60 moved up by +6: lift +10 %, not −10 %; a relative guardrail on a negative
    # balance that improved is not breached; the Bayesian chance to beat is ≈ 1, not ≈ 0
    lab = Lab(tmp_path, seed=31)
    spec = pilot_yaml("net", metric="net", mde="{relative: 0.05}", metrics=NET_METRICS, budget="null",
                      analysis=f"{{engine: {engine}}}")  # fmt: skip
    pilot = lab.pilot(spec)
    labkit.assign(pilot)
    lab.simulate(lab.units("net"), {"fast": {"spend": 6.0}})
    out = pd.read_csv(tmp_path / "data" / "outcomes.csv")
    out.assign(net=out["spend"] - 120, balance=out["spend"] - 110).to_csv(tmp_path / "data" / "outcomes.csv")
    _, data = analyze(pilot)
    r = row(data, "net", "fast")
    assert r["mean_control"] < -40 and r["effect"] > 0 and r["p_value"] < 0.05
    assert r["lift"] == pytest.approx(r["effect"] / abs(r["mean_control"]), rel=1e-12)
    assert 0 < r["lift_ci_low"] < r["lift"] < r["lift_ci_high"]
    g = row(data, "balance", "fast")
    assert g["lift"] > 0.05  # improved past max_harm's size: read with the signed mean it was "harm"
    assert data["decision"] == "ship", data["reason"]
    if engine == "bayesian":
        assert r["chance_to_beat"] > 0.99 and r["expected_loss"] < 1e-3


@pytest.mark.parametrize("fixture", ["two_arms", "three_arms"])
def test_intervals_at_the_adjusted_level_agree_with_the_adjusted_p_values(fixture, request):
    case = request.getfixturevalue(fixture)
    alpha = case.pilot.settings.alpha
    checked = 0
    for r in case.data["metrics"]:
        keys = ("ci_low_adjusted", "ci_high_adjusted", "lift_ci_low_adjusted", "lift_ci_high_adjusted")
        assert all(k in r for k in keys)
        if r["p_value"] is None:
            assert all(r[k] is None for k in keys)
            continue
        low, high = r["ci_low_adjusted"], r["ci_high_adjusted"]
        assert (low > 0 or high < 0) == (r["p_value_adjusted"] < alpha), r["metric"]
        assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["p_value"] < alpha), r["metric"]
        if r["lift_ci_low_adjusted"] is not None:
            lift_low, lift_high = r["lift_ci_low_adjusted"], r["lift_ci_high_adjusted"]
            assert (lift_low > 0 or lift_high < 0) == (r["p_value_adjusted"] < alpha), r["metric"]
        if r["p_value_adjusted"] == r["p_value"]:  # guardrails, one-member families: the same interval
            assert (low, high) == (r["ci_low"], r["ci_high"])
        else:  # a stricter level: the interval widens around the same estimate
            assert low <= r["ci_low"] and r["ci_high"] <= high
            checked += 1
    assert checked > 0


def test_sequential_mode_says_when_an_event_window_is_longer_than_its_sequences_were_shown_for(two_arms):
    """Daily looks at a fixed cohort over a window beyond 90 days can exceed alpha (test_over_time_validity):
    sequential mode says so for such a metric; a fixed-horizon pilot, or a 30-day window, does not."""
    lab = two_arms.lab
    long = METRICS.replace("window_days: 30", "window_days: 120")
    for analysis, metrics, said in [
        ("{sequential: true}", long, True),
        ("{}", long, False),
        ("{sequential: true}", METRICS, False),
    ]:
        folder = f"window-{said}-{len(metrics)}-{len(analysis)}"
        _, result = analyze(lab.pilot(pilot_yaml("p", analysis=analysis, metrics=metrics), folder=folder))
        found = [w for w in result["warnings"] if "confidence sequences were shown" in w]
        assert found == (
            ["metric 'replies': its 120-day window is longer than the 90 days over which sequential mode's "
             "confidence sequences were shown to keep alpha for a fixed cohort read daily (over 730 days of "
             "rare events, ~6 % at alpha 5 %); weigh daily looks accordingly"] if said else []
        )  # fmt: skip
