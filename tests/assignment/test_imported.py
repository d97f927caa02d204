"""Real experiments the lab did not draw itself (issue #12 item 6, RELIABILITY case 49).

Each test writes a tiny lab whose arms come from a channel tool's table (``cohort.assignment``) and checks
one path a published experiment takes: NULL outcomes (the ``missing`` policy), a covariate on a proportion,
data warnings in the JSON and the run description, 0/1 / float / capitalised arm columns with a value map
and NULL arms, an imported pilot without ``max_size`` or ``start``, and blocks (post-stratification). The
expected numbers are computed here independently (pandas, scipy, statsmodels).
"""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
import types

import numpy as np
import pandas as pd
import pytest
import yaml

import labkit
from labkit.errors import DataError, SpecErrors

from conftest import DROP, pilot_yaml

LAB = """\
lab: imported-lab
tracking_uri: sqlite:///results/mlflow.db
mlflow_experiment: imported
currency: USD
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
  sends: {format: parquet, path: data/sends.parquet}
functions: [sales, marketing, service, pr]
channels: [twitter, email]
stages: [retention]
defaults: {alpha: 0.05, power: 0.8, engine: frequentist, correction: holm, sequential: false}
privacy: {pseudonymize: true, key_env: LABKIT_ID_KEY}
"""

BOUGHT = "  - {name: bought, type: proportion, source: outcomes, column: bought}\n"
TIMED = "{source: sends, arm_column: treat, assigned_at_column: sent_at, arms: {'0': control, '1': voucher}}"


class Lab:
    def __init__(self, root):
        self.root = root
        (root / "configs").mkdir()
        (root / "configs" / "lab.yaml").write_text(LAB)
        (root / "data").mkdir()
        (root / "experiments").mkdir()

    def write(self, customers: pd.DataFrame, sends: pd.DataFrame, outcomes: pd.DataFrame) -> None:
        customers.to_parquet(self.root / "data" / "customers.parquet", index=False)
        sends.to_parquet(self.root / "data" / "sends.parquet", index=False)
        outcomes.to_csv(self.root / "data" / "outcomes.csv", index=False)

    def pilot(
        self,
        *,
        metrics: str = BOUGHT,
        assignment: str = TIMED,
        cohort: str = "",
        where: str = "",
    ) -> labkit.Pilot:
        """The default pilot (tests/pilots.py) of a voucher by email with an imported assignment and
        neither max_size nor start; each argument as written in the file (``metrics`` the list's lines,
        ``cohort`` and ``where`` indented cohort lines, ``assignment`` its value)."""
        extra = {
            **(yaml.safe_load(textwrap.dedent(where)) or {}),
            **(yaml.safe_load(textwrap.dedent(cohort)) or {}),
        }
        text = pilot_yaml(**{
            "title": "A voucher by email", "function": "marketing", "channel": "email",
            "hypothesis": {"statement": "A voucher raises purchases.", "metric": "bought", "direction": "increase",
                           "mde": {"relative": 0.1}},
            "cohort.where": DROP, "cohort.max_size": DROP, "cohort.start": DROP,
            "cohort.arms": {"control": 0.5, "voucher": 0.5}, "cohort.assignment": yaml.safe_load(assignment),
            **{f"cohort.{key}": value for key, value in extra.items()},
            "metrics": yaml.safe_load(metrics),
        })  # fmt: skip
        (self.root / "experiments" / "p.yaml").write_text(text)
        return labkit.load_pilot(
            self.root / "experiments" / "p.yaml", lab=labkit.load_lab(self.root / "configs/lab.yaml")
        )

    def analyze(self, pilot) -> dict:
        labkit.assign(pilot)
        return json.loads(labkit.analyze(pilot).to_json())


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABKIT_ID_KEY", "test-key-0123456789abcdef")
    monkeypatch.delenv("LABKIT_LAB", raising=False)
    return Lab(tmp_path)


def experiment(n: int = 600, seed: int = 1, *, treat=None, bought_null: float = 0.0, null_in_voucher=None):
    """A voucher experiment: 0/1 `treat`, a purchase outcome with some NULLs, a pre-period covariate."""
    rng = np.random.default_rng(seed)
    ids = [f"K{i:05d}" for i in range(n)]
    arm = rng.permutation(np.arange(n) % 2) if treat is None else np.asarray(treat)
    pre = rng.binomial(1, 0.4, n).astype(float)
    p = 0.25 + 0.10 * (np.asarray(arm, dtype=float) == 1) + 0.30 * pre
    bought = rng.binomial(1, np.clip(p, 0, 1)).astype(float)
    rate = (
        np.full(n, bought_null)
        if null_in_voucher is None
        else np.where(arm == 1, null_in_voucher, bought_null)
    )
    bought[rng.random(n) < rate] = np.nan
    customers = pd.DataFrame({"customer_id": ids, "consent": rng.random(n) < 0.9})
    sends = pd.DataFrame(
        {
            "customer_id": ids,
            "treat": arm,
            "sent_at": pd.Timestamp("2026-03-02 10:00", tz="UTC") + pd.to_timedelta(np.arange(n), "s"),
        }
    )
    outcomes = pd.DataFrame({"customer_id": ids, "bought": bought, "pre_bought": pre})
    return customers, sends, outcomes


def row(data: dict, metric: str = "bought", arm: str = "voucher") -> dict:
    return next(r for r in data["metrics"] if r["metric"] == metric and r["arm"] == arm)


# --------------------------------------------------------------------------------------------------
# a. NULL outcome values follow a declared policy, counted per arm


def test_null_proportion_values_are_excluded_by_default_not_counted_as_zero(lab):
    customers, sends, outcomes = experiment(bought_null=0.1)
    # and 20 customers absent from the outcomes table: those count as 0 (DESIGN.md)
    absent = set(outcomes.customer_id[:20])
    lab.write(customers, sends, outcomes[~outcomes.customer_id.isin(absent)])
    data = lab.analyze(lab.pilot())
    f = sends.merge(outcomes, on="customer_id")
    f.loc[f.customer_id.isin(absent), "bought"] = 0.0  # absent -> 0; NULL inside the table -> excluded
    for code, side in ((0, "control"), (1, "treatment")):
        k = f[f.treat == code]
        r = row(data)
        assert r[f"mean_{side}"] == pytest.approx(k.bought.mean(), rel=1e-12)  # pandas skips NaN
        assert r[f"n_{side}"] == k.bought.notna().sum()
        missing = k.bought.isna().sum() + k.customer_id.isin(absent).sum()
        assert r[f"missing_{side}"] == missing and r[f"assigned_{side}"] == len(k)
    assert row(data)["missing_policy"] == "zero-if-absent"
    assert data["data_quality"]["bought"]["missing_policy"] == "zero-if-absent"


@pytest.mark.parametrize("policy", ["zero", "exclude"])
def test_a_declared_missing_policy_is_applied(lab, policy):
    customers, sends, outcomes = experiment(bought_null=0.1)
    lab.write(customers, sends, outcomes.iloc[10:])  # ten customers absent too
    metric = f"  - {{name: bought, type: proportion, source: outcomes, column: bought, missing: {policy}}}\n"
    data = lab.analyze(lab.pilot(metrics=metric))
    f = sends.merge(outcomes.iloc[10:], on="customer_id", how="left")
    y = f.bought.fillna(0) if policy == "zero" else f.bought
    k = y[f.treat == 0]
    assert row(data)["mean_control"] == pytest.approx(k.mean(), rel=1e-12)
    assert row(data)["n_control"] == k.notna().sum() and row(data)["missing_policy"] == policy


def test_differential_missingness_is_a_warning_at_alpha_0_01(lab):
    from statsmodels.stats.proportion import proportions_ztest

    customers, sends, outcomes = experiment(n=800, bought_null=0.02, null_in_voucher=0.12)
    lab.write(customers, sends, outcomes)
    data = lab.analyze(lab.pilot())
    r = row(data)
    _, p = proportions_ztest(
        [r["missing_control"], r["missing_treatment"]], [r["assigned_control"], r["assigned_treatment"]]
    )
    assert p < 0.01
    assert any("missing data differs between 'control'" in w for w in data["warnings"]), data["warnings"]


def test_missing_exclude_on_an_event_count_is_refused(lab):
    (lab.root / "configs" / "lab.yaml").write_text(
        LAB.replace(
            "sources:\n", "sources:\n  events: {format: parquet, path: data/events.parquet, timestamp: ts}\n"
        )
    )
    metric = (
        "  - {name: bought, type: mean, source: events, event: {column: kind, equals: buy}, aggregate: count,"
        " window_days: 7, missing: exclude}\n"
    )
    with pytest.raises(
        SpecErrors, match=r"metrics\.0\.missing: aggregate 'count' over events: a customer without"
    ):
        lab.pilot(metrics=metric)


# --------------------------------------------------------------------------------------------------
# b. a covariate on a proportion adjusts it


def test_a_covariate_on_a_proportion_is_applied_as_regression_adjustment(lab):
    import statsmodels.api as sm

    customers, sends, outcomes = experiment(n=1200)
    lab.write(customers, sends, outcomes)
    metric = "  - {name: bought, type: proportion, source: outcomes, column: bought, covariate: pre_bought}\n"
    data = lab.analyze(lab.pilot(metrics=metric))
    r = row(data)
    f = sends.merge(outcomes, on="customer_id")
    design = sm.add_constant(np.column_stack([f.treat, f.pre_bought - f.pre_bought.mean()]))
    ols = sm.OLS(f.bought, design).fit()
    assert r["method"] == "welch-t+cuped" and r["covariate"] == "pre_bought"
    assert r["effect"] == pytest.approx(ols.params.iloc[1], rel=1e-9)  # exactly the ANCOVA coefficient
    assert r["ci_high"] - r["ci_low"] == pytest.approx(
        2 * 1.96 * ols.get_robustcov_results("HC2").bse[1], rel=0.02
    )  # Welch-type variances: close to OLS's robust standard error
    assert r["variance_reduction"] > 0.05  # the covariate explains part of the outcome


def _model_fields(model) -> set[str]:
    return set(model.model_fields)


def test_every_spec_field_is_read_somewhere_outside_the_spec():
    """Every field validation accepts must have an effect: each is read by some module besides labkit/spec/"""
    import pathlib

    from labkit import spec

    spec_dir = pathlib.Path(spec.__file__).parent
    package = spec_dir.parent
    code = (
        "\n".join(
            p.read_text()
            for p in package.rglob("*.py")
            if spec_dir not in p.parents and p.name != "scaffold.py"
        )
        + (spec_dir / "pilot.py").read_text().split("class Settings")[1]
    )  # the Pilot helpers count
    models = [
        spec.Metric, spec.Cohort, spec.ImportedAssignment, spec.Hypothesis, spec.Filter, spec.EventMatch,
        spec.ColumnRef, spec.Guardrail, spec.AnalysisOptions, spec.Budget, spec.Amount, spec.PilotSpec,
    ]  # fmt: skip
    unused = [
        f"{m.__name__}.{name}"
        for m in models
        for name in _model_fields(m)
        if f".{name}" not in code and f'"{name}"' not in code
    ]
    assert unused == []


# --------------------------------------------------------------------------------------------------
# c. every data warning is in the JSON, the notebooks and the run description


def test_imported_customers_failing_where_are_warned_about_in_the_json(lab, capsys):
    from labkit import cli

    customers, sends, outcomes = experiment()
    lab.write(customers, sends, outcomes)
    pilot = lab.pilot(where="  where:\n    - {column: consent, op: '==', value: true}\n")
    labkit.assign(pilot)
    capsys.readouterr()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["analyze", "p", "--json"])
    assert code == 0, err.getvalue()
    data = json.loads(out.getvalue())
    failing = int((~customers.consent).sum())
    assert failing > 0
    assert (
        f"{failing} of 600 imported customers fail cohort.where; they are analysed in their arms (intent-to-treat)"
        in data["warnings"]
    )
    assert data["srm"]["counts"] == {"control": 300, "voucher": 300}  # analysed anyway: intent-to-treat


def test_the_run_description_lists_every_warning(lab):
    from labkit.tracking import build_record

    customers, sends, outcomes = experiment()
    sends.loc[:4, "treat"] = None
    lab.write(customers, sends, outcomes)
    pilot = lab.pilot(where="  where:\n    - {column: consent, op: '==', value: true}\n")
    labkit.assign(pilot)
    results = json.loads(labkit.analyze(pilot).to_json())
    assert len(results["warnings"]) >= 2
    nb = types.SimpleNamespace(status="FINISHED", message=None, executed=None, html=None, results=None,
                               figures=[], started_at=0.0, ended_at=1.0)  # fmt: skip
    record = build_record(pilot, nb, run_key="p/1", run_name="p 1", results=results, spec_changed=False,
                          code_version="test")  # fmt: skip
    for warning in results["warnings"]:
        assert f"- {warning}" in record.description


def test_every_notebook_shows_the_warnings():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "result.warnings" in code, path.name
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name


# --------------------------------------------------------------------------------------------------
# d. arm columns that are not labels: a value map, and NULL arms skipped and counted


@pytest.mark.parametrize(
    ("values", "mapping"),
    [
        ([0, 1], "{'0': control, '1': voucher}"),
        ([0, 1], "{0: control, 1: voucher}"),  # unquoted YAML numbers
        ([0.0, 1.0], "{'0': control, '1.0': voucher}"),  # a float column; '1' and '1.0' both match 1.0
        (["Control", "Joke"], "{Control: control, Joke: voucher}"),  # capitalised labels
        ([False, True], "{false: control, true: voucher}"),
    ],
)
def test_a_value_map_reads_arm_columns_that_are_not_labels(lab, values, mapping):
    customers, sends, outcomes = experiment(n=40)
    code = sends.treat.to_numpy()
    sends["treat"] = pd.Series(
        [values[int(c)] for c in code], dtype=object if isinstance(values[0], str) else None
    )
    lab.write(customers, sends, outcomes)
    a = labkit.assign(lab.pilot(assignment=TIMED.replace("{'0': control, '1': voucher}", mapping)))
    got = a.frame().set_index("customer_id").arm
    want = dict(zip(sends.customer_id, np.where(code == 1, "voucher", "control")))
    assert got.to_dict() == want


def test_without_a_map_a_0_1_column_is_refused_with_the_map_that_fixes_it(lab):
    customers, sends, outcomes = experiment(n=40)
    lab.write(customers, sends, outcomes)
    pilot = lab.pilot(assignment="{source: sends, arm_column: treat, assigned_at_column: sent_at}")
    with pytest.raises(
        DataError,
        match=r"not arms of the pilot: '0' \(20 rows\), '1' \(20 rows\); arms: control, "
        r"voucher; map the column's values to arms with cohort.assignment.arms",
    ):
        labkit.assign(pilot)


def test_rows_with_a_null_arm_are_skipped_and_counted(lab):
    customers, sends, outcomes = experiment(n=60)
    sends["treat"] = sends.treat.astype("float64")
    sends.loc[[3, 7, 11], "treat"] = np.nan
    lab.write(customers, sends, outcomes)
    pilot = lab.pilot()
    a = labkit.assign(pilot)
    assert a.assigned == 57 and a.meta["imported"]["arm_null"] == 3 and a.meta["imported"]["rows"] == 60
    data = json.loads(labkit.analyze(pilot).to_json())
    assert sum(data["srm"]["counts"].values()) == 57
    assert (
        "3 of 60 rows of the imported assignment 'sends' have no arm (NULL treat); they are skipped, not analysed"
        in data["warnings"]
    )


def test_a_map_to_an_unknown_arm_and_an_unmapped_arm_are_refused(lab):
    customers, sends, outcomes = experiment(n=10)
    lab.write(customers, sends, outcomes)
    with pytest.raises(SpecErrors) as info:
        lab.pilot(assignment=TIMED.replace("'1': voucher", "'1': vouchers"))
    assert "cohort.assignment.arms.1: 'vouchers' is not an arm; did you mean 'voucher'?" in str(info.value)
    with pytest.raises(SpecErrors) as info:
        lab.pilot(assignment=TIMED.replace("'1': voucher", "'1': control"))
    assert "cohort.assignment.arms: no column value maps to arm(s) voucher; every arm needs one" in str(
        info.value
    )


# --------------------------------------------------------------------------------------------------
# e. max_size and start are optional for an imported, finished experiment


def test_an_imported_pilot_needs_neither_max_size_nor_start(lab):
    customers, sends, outcomes = experiment(n=100)
    lab.write(customers, sends, outcomes)
    pilot = lab.pilot()  # neither max_size nor start in the file
    assert pilot.spec.cohort.max_size is None and pilot.spec.cohort.start is None
    assert pilot.cap is None and pilot.start is None  # known once assigned
    a = labkit.assign(pilot)
    assert a.meta["max_size"] == 100 and a.meta["start"] == "2026-03-02" and not a.meta["cap_exceeded"]
    assert pilot.cap == 100 and str(pilot.start) == "2026-03-02"
    data = json.loads(labkit.analyze(pilot).to_json())
    assert data["meta"]["cap"] == 100 and data["decision"] != "invalid"
    assert labkit.plan(pilot).mde_at_cap is not None


def test_without_an_assigned_at_column_the_start_is_still_required(lab):
    with pytest.raises(
        SpecErrors,
        match=r"cohort\.start: required field is missing: without "
        r"assignment\.assigned_at_column the start cannot come from the imported assignment",
    ):
        lab.pilot(assignment="{source: sends, arm_column: treat, arms: {'0': control, '1': voucher}}")


def test_a_drawn_pilot_still_needs_max_size_and_start(lab):
    with pytest.raises(SpecErrors) as info:
        lab.pilot(assignment="null")
    text = str(info.value)
    assert (
        "cohort.max_size: required field is missing (the exposure cap; optional only with cohort.assignment)"
        in text
    )
    assert "cohort.start: required field is missing (the assignment date, YYYY-MM-DD; optional only" in text


# --------------------------------------------------------------------------------------------------
# f. blocks: an imported assignment randomised within strata is post-stratified


def blocked(seed: int = 5):
    """Two blocks with different treated shares and baselines: the pooled difference is biased."""
    rng = np.random.default_rng(seed)
    sizes, shares, base = (300, 200), (0.8, 0.3), (0.6, 0.2)
    frames = []
    for b, (n, share, p0) in enumerate(zip(sizes, shares, base)):
        treat = rng.permutation((np.arange(n) < round(share * n)).astype(int))
        y = rng.binomial(1, p0 + 0.05 * treat).astype(float)
        frames.append(pd.DataFrame({"block": f"b{b}", "treat": treat, "bought": y}))
    f = pd.concat(frames, ignore_index=True)
    f["customer_id"] = [f"K{i:05d}" for i in range(len(f))]
    f["sent_at"] = pd.Timestamp("2026-03-02", tz="UTC")
    return f


def test_a_blocked_import_is_post_stratified_as_the_fully_interacted_ols(lab):
    import statsmodels.formula.api as smf

    f = blocked()
    customers = pd.DataFrame({"customer_id": f.customer_id, "consent": True})
    lab.write(customers, f[["customer_id", "treat", "block", "sent_at"]], f[["customer_id", "bought"]])
    pilot = lab.pilot(assignment=TIMED[:-1] + ", strata: [block]}")
    data = lab.analyze(pilot)
    r = row(data)
    d = f.assign(c=(f.block == "b1").astype(float))
    d["c"] -= d["c"].mean()
    ols = smf.ols("bought ~ treat * c", data=d).fit(cov_type="HC2")
    assert r["method"] == "post-stratified"
    assert not any("post-stratified" in w for w in data["warnings"]), data["warnings"]  # no block dropped
    assert r["effect"] == pytest.approx(ols.params["treat"], rel=1e-9)
    assert r["ci_high"] - r["ci_low"] == pytest.approx(2 * 1.96 * ols.bse["treat"], rel=0.01)
    pooled = f[f.treat == 1].bought.mean() - f[f.treat == 0].bought.mean()
    assert abs(pooled - r["effect"]) > 0.1  # the design's imbalance: the pooled estimate would be wrong
    assert set(pd.read_parquet(lab.root / "results" / "p" / "assignment.parquet").stratum) == {"b0", "b1"}


def test_stratify_by_on_an_imported_assignment_points_at_assignment_strata(lab):
    with pytest.raises(
        SpecErrors,
        match=r"cohort\.stratify_by: an imported assignment was randomised by its tool; "
        r"name its blocks in cohort\.assignment\.strata",
    ):
        lab.pilot(cohort="  stratify_by: [block]\n")


def test_a_salt_on_an_imported_assignment_is_refused(lab):
    with pytest.raises(
        SpecErrors, match=r"cohort\.salt: an imported assignment is not drawn by labkit, so a salt"
    ):
        lab.pilot(cohort="  salt: s-2026\n")


def test_a_suppressed_small_cell_is_a_warning(lab):
    customers, sends, outcomes = experiment(n=16)
    lab.write(customers, sends, outcomes.assign(spend=np.arange(16.0)))
    metric = (
        BOUGHT + "  - {name: spend_p50, type: quantile, quantile: 0.5, source: outcomes, column: spend}\n"
    )
    data = lab.analyze(lab.pilot(metrics=metric))
    assert row(data, "spend_p50")["reason"] == "suppressed_small_cell"
    assert (
        "metric 'spend_p50', arm 'voucher': fewer than 10 customers in an arm, so the quantile is withheld "
        "(privacy.min_cell_size)" in data["warnings"]
    )
