"""labkit.tracking against real MLflow stores: a fresh sqlite store in tmp_path and a real `mlflow server`.

No mocks: every test records through ``Tracker`` and reads back with MLflow's own ``MlflowClient``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow_server import free_port, mlflow_server  # noqa: F401 -- the session fixture

from labkit.errors import TrackingError
from labkit.lab import load_lab
from labkit.tracking import (
    FLOAT_MAX,
    MAX_PARAM_VALUE,
    TAG_LOOK,
    RunRecord,
    Tracker,
    display_uri,
    flatten_params,
    look_moment,
    look_stamp,
    metrics_from_results,
    redact,
)

from conftest import LAB_YAML, PILOT_YAML

PLANTED_ID = "CUST-7Q4Z-93115-PLANTED"  # a fake customer identifier that must never reach MLflow

RESULTS = {
    "pilot": "p",
    "decision": "inconclusive",
    "reason": "not enough customers yet",
    "srm": {"p_value": 0.41, "ok": True, "counts": {"control": 1000, "fast": 996}},
    "metrics": [
        {"metric": "churned", "role": "primary", "type": "proportion", "arm": "fast", "control_arm": "control",
         "n_control": 1000, "n_treatment": 996, "mean_control": 0.081, "mean_treatment": 0.062,
         "effect": -0.019, "ci_low": -0.042, "ci_high": 0.004, "lift": -0.234, "lift_ci_low": float("-inf"),
         "lift_ci_high": 0.02, "p_value": 0.10, "p_value_adjusted": 0.10, "method": "z-test",
         "variance_reduction": None},
    ],
    "plan": {"required_per_arm": 4100, "mde_at_cap": 0.028, "powered": False},
    "roi": {"value": 3420.0, "value_ci_low": -720.0, "value_ci_high": 7560.0, "cost": 4000, "roi": -0.145},
    "meta": {"exposed": 1996},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_mlflow_env():
    """Tracker sets MLFLOW_* variables in os.environ; give every test the environment it started with."""
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)


def use_store(lab_root: Path, template: Path) -> None:
    (lab_root / "results").mkdir(exist_ok=True)
    shutil.copyfile(template, lab_root / "results" / "mlflow.db")


@pytest.fixture(params=["sqlite", "http"])
def backend(request, tiny_lab, monkeypatch, empty_store):
    """The tiny lab on a fresh sqlite store, or on the session's `mlflow server` in its own experiment."""
    experiment = f"tiny-{uuid.uuid4().hex[:8]}"
    tiny_lab.write(
        "configs/lab.yaml",
        LAB_YAML.replace("mlflow_experiment: tiny-pilots", f"mlflow_experiment: {experiment}"),
    )
    tiny_lab.write("data/customers.csv", f"customer_id,segment\n{PLANTED_ID},a\n")  # never recorded
    if request.param == "http":
        server = request.getfixturevalue("mlflow_server")
        monkeypatch.setenv("LABKIT_TRACKING_URI", str(server))
        tiny_lab.server = server
    else:
        use_store(tiny_lab.root, empty_store)
        tiny_lab.server = None
    tiny_lab.kind = request.param
    tiny_lab.lab = load_lab(tiny_lab.root)
    return tiny_lab


def client_for(lab):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=lab.tracking_uri)


def runs_of(tracker, query=""):
    tracker.prepare()
    client = client_for(tracker.lab)
    return client.search_runs([tracker.experiment_id], filter_string=query, max_results=1000)


def make_record(
    lab_dir: Path, pilot="p", key=None, status="FINISHED", started_at=None, **changes
) -> RunRecord:
    """A record with real files: pilot yaml, executed notebook (+html), results.json and a figure."""
    key = key or f"{pilot}/{uuid.uuid4().hex[:12]}"
    folder = lab_dir / "results" / pilot / "runs" / key.replace("/", "_")
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    files = {
        "pilot.yaml": PILOT_YAML.replace("id: p\n", f"id: {pilot}\n"),
        "analysis.ipynb": json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}),
        "analysis.html": "<html><body>analysis</body></html>",
        "results.json": json.dumps(RESULTS | {"pilot": pilot}, indent=2, default=str).replace(
            "-Infinity", "null"
        ),
        "figures/forest.png": "\x89PNG fake",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    started = time.time() if started_at is None else started_at
    base = dict(
        pilot=pilot, run_name=f"{pilot} {key[-6:]}", status=status, run_key=key,
        tags={"labkit.function": "service", "labkit.channel": "twitter", "labkit.decision": "inconclusive",
              "labkit.prereg_sha256": "a" * 64, "labkit.spec_sha256": "b" * 64},
        params={"hypothesis.metric": "churned", "cohort.arms.control": "0.5", "cohort.max_size": "2000"},
        metrics=metrics_from_results(RESULTS),
        description="Hypothesis: fast replies lower churn.\nDecision: inconclusive.",
        artifacts=[str(folder / n) for n in files],
        datasets=[{"name": "customers", "digest": "c" * 64, "source": "data/customers.parquet"},
                  {"name": "outcomes", "digest": "short-digest", "source": "postgresql://crm:hunter2@db/crm"}],
        started_at=started, ended_at=started + 2.0,
    )  # fmt: skip
    base.update(changes)
    return RunRecord(**base)


# ------------------------------------------------------------------------- pure functions


def test_flatten_params_of_a_pilot_spec(tiny_lab):
    from labkit.spec import load_pilot

    spec = load_pilot(tiny_lab.pilot(), lab=load_lab(tiny_lab.root)).spec.model_dump(mode="json")
    params = flatten_params(spec)
    assert params["cohort.arms.control"] == "0.5"
    assert params["cohort.max_size"] == "2000"
    assert params["hypothesis.mde.relative"] == "0.15"
    assert params["metrics.churned.type"] == "proportion"
    assert params["metrics.replies.event.equals"] == "reply"
    assert params["metrics.replies.cuped"] == "true"
    assert json.loads(params["cohort.where"]) == [{"column": "has_twitter", "op": "==", "value": True}]
    assert all(isinstance(v, str) and v != "None" for v in params.values())


def test_metrics_from_results_names_and_values():
    """Issue #14: a small headline set leads (percentages where people read them), then the primary
    metric's numbers per arm; no plan, SRM counts or secondary metrics among the metrics any more."""
    from mlflow.utils.validation import _validate_metric_name

    from labkit.tracking import HEADLINE_METRICS, PRIMARY_FIELDS

    results = RESULTS | {"meta": {"exposed": 1996, "direction": "decrease"}}
    results["roi"] = results["roi"] | {"roi_ci_low": -1.18, "roi_ci_high": 0.89}
    metrics = metrics_from_results(results)
    assert metrics["churned.fast.effect"] == -0.019
    assert metrics["churned.fast.n_control"] == 1000.0
    assert metrics["churned.fast.lift_ci_low"] == -FLOAT_MAX  # -inf: MLflow cannot store inf
    assert "churned.fast.variance_reduction" not in metrics  # None is skipped
    assert "churned.fast.method" not in metrics  # text is not a metric
    assert metrics["srm_p_value"] == 0.41 and metrics["exposed"] == 1996.0
    assert metrics["roi_pct"] == pytest.approx(-14.5) and metrics["cost"] == 4000.0
    assert (metrics["roi_pct_ci_low"], metrics["roi_pct_ci_high"]) == pytest.approx((-118.0, 89.0))
    assert metrics["value_ci_high"] == 7560.0
    # gain: the lift in the predicted direction (churn fell 23.4 %: a gain of +23.4 %); its interval is
    # unbounded below (-inf lift), so it is left out rather than logged as ±1.8e308 %
    assert metrics["gain_pct"] == pytest.approx(23.4) and metrics["lift_pct"] == pytest.approx(-23.4)
    assert "gain_pct_ci_low" not in metrics
    headline = [k for k in metrics if "." not in k]
    assert set(headline) <= set(HEADLINE_METRICS)
    assert headline == [k for k in HEADLINE_METRICS if k in metrics]  # logged in the headline order
    assert set(metrics) - set(headline) <= {f"churned.fast.{f}" for f in PRIMARY_FIELDS}
    assert not {"srm_ok", "plan.required_per_arm", "srm.counts.control", "roi", "gain"} & set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    for name in metrics:
        _validate_metric_name(name)  # MLflow's own rule


def test_per_arm_detail_is_a_csv_table_of_every_row():
    import csv
    import io

    from labkit.tracking import effects_csv

    secondary = dict(RESULTS["metrics"][0], metric="replies", role="secondary", effect=0.5, extra_field=3)
    text = effects_csv(RESULTS | {"metrics": [*RESULTS["metrics"], secondary]})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["metric"], r["role"], r["arm"]) for r in rows] == [
        ("churned", "primary", "fast"), ("replies", "secondary", "fast"),
    ]  # fmt: skip
    assert float(rows[0]["effect"]) == -0.019 and rows[0]["variance_reduction"] == ""
    assert list(rows[0])[:3] == ["metric", "role", "type"] and rows[1]["extra_field"] == "3"


def test_run_record_round_trips_through_json(tmp_path):
    record = make_record(tmp_path, description="x" * 10_000)
    assert RunRecord.from_json(record.to_json()) == record
    with pytest.raises(TrackingError, match="unknown field"):
        RunRecord.from_json(json.dumps(json.loads(record.to_json()) | {"extra": 1}))
    with pytest.raises(TrackingError, match="FINISHED, FAILED, KILLED"):
        make_record(tmp_path, status="DONE")


# ------------------------------------------------------------------------- recording, on both stores


def test_the_experiment_offers_the_leadership_view_of_its_runs(backend):
    """Issue #14: MLflow (3.15+) keeps an experiment's saved views of the runs table in experiment tags
    (``mlflow.sharedViewState.<key>``, an envelope whose ``state`` is the view as JSON); MLflow has no
    default columns per experiment. The store carries labkit's view, once, and `labkit ui`'s link opens it:
    its columns are the headline metrics and business tags a run records."""
    from labkit.tracking import HEADLINE_METRICS, LEADERSHIP_VIEW
    from labkit.ui import runs_url

    tracker = Tracker(backend.lab)
    tracker.record(make_record(backend.root))
    experiment = client_for(backend.lab).get_experiment(tracker.experiment_id)
    envelope = json.loads(experiment.tags[f"mlflow.sharedViewState.{LEADERSHIP_VIEW}"])
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    columns = state["selectedColumns"]
    assert columns[:5] == [
        "attributes.`Description`", "tags.`labkit.decision`", "tags.`labkit.recommendation`",
        "tags.`labkit.recommendation_arm`", "metrics.`roi_pct`",
    ]  # fmt: skip
    assert state["columnOrder"] == ["attributes.`Run Name`", *columns]  # in that order, not by kind
    metrics = [c[len("metrics.`") : -1] for c in columns if c.startswith("metrics.`")]
    assert set(metrics) <= set(HEADLINE_METRICS) and "roi_pct" in metrics and "gain_pct" in metrics
    assert (
        state["searchFilter"] == "tags.`labkit.latest` = 'true'"
        and state["orderByKey"] == "metrics.`roi_pct`"
    )
    assert "attributes.`Dataset`" not in columns  # the dataset hashes the default view shows
    # written once: a second tracker finds it equal and leaves it
    before = experiment.last_update_time
    Tracker(backend.lab).prepare()
    assert client_for(backend.lab).get_experiment(tracker.experiment_id).last_update_time == before
    assert runs_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
        f"&viewStateShareKey={LEADERSHIP_VIEW}"
    )


def test_owner_tags_of_older_runs_are_still_read():
    from labkit.tracking import TAG_HOST, TAG_PID, owner_tag

    assert owner_tag({"labkit.pid": "12", "labkit.host": "h"}, TAG_PID) == "12"
    assert owner_tag({"labkit.sys.host": "new", "labkit.host": "old"}, TAG_HOST) == "new"
    assert owner_tag({}, TAG_PID) is None


def test_record_reads_back_everything(backend, capfd):
    tracker = Tracker(backend.lab)
    record = make_record(backend.root)
    run_id = tracker.record(record)

    out, _ = capfd.readouterr()
    assert out == ""  # no "View run" line, no migration chatter: stdout stays clean for --json
    client = client_for(backend.lab)
    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["labkit.pilot"] == "p" and tags["labkit.run_key"] == record.run_key
    assert tags["labkit.latest"] == "true" and tags["labkit.recorded"] == "true"
    # the owner's process is technical: under labkit.sys., out of the business tags' way
    assert tags["labkit.sys.pid"] == str(os.getpid()) and tags["labkit.sys.host"]
    assert not {"labkit.pid", "labkit.host", "labkit.pid_start"} & set(tags)
    assert tags["labkit.function"] == "service"
    assert tags["mlflow.note.content"] == record.description
    assert run.data.params == record.params
    assert run.data.metrics == record.metrics
    assert run.info.start_time == round(record.started_at * 1000)
    assert run.info.end_time == round(record.ended_at * 1000)

    def listing(path=None):
        found = []
        for item in client.list_artifacts(run_id, path):
            found += listing(item.path) if item.is_dir else [item.path]
        return found

    assert sorted(listing()) == [
        "figures/forest.png", "notebook/analysis.html", "notebook/analysis.ipynb", "pilot/pilot.yaml",
        "results.json",
    ]  # fmt: skip
    downloaded = Path(client.download_artifacts(run_id, "results.json", str(backend.root)))
    assert downloaded.read_bytes() == Path(record.artifacts[3]).read_bytes()

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"customers", "outcomes"}
    customers = inputs["customers"]
    assert customers.dataset.digest == "c" * 36  # MLflow's digest field holds 36 characters …
    assert json.loads(customers.dataset.profile)["digest"] == "c" * 64  # … the full digest is kept
    assert {t.key: t.value for t in customers.tags} == {
        "mlflow.data.context": "analysis",
        "labkit.digest": "c" * 64,
    }
    assert inputs["outcomes"].dataset.digest == "short-digest"
    assert "hunter2" not in inputs["outcomes"].dataset.source

    # privacy: the planted identifier in an unrelated lab file is nowhere in the store
    if backend.kind == "sqlite":
        scanned = [p for p in (backend.root / "results").rglob("*") if p.is_file()]
    else:
        scanned = [p for p in backend.server.artifacts_dir.rglob("*") if p.is_file()]
        scanned += [p for p in backend.server.db_path.parent.glob("mlflow.db*")]
    blob = b"".join(p.read_bytes() for p in scanned)
    assert b"labkit.run_key" in blob  # the scan sees the store
    assert PLANTED_ID.encode() not in blob
    assert b"hunter2" not in blob


def test_latest_is_the_newest_finished_run_of_each_pilot(backend):
    tracker = Tracker(backend.lab)
    now = time.time()
    first = tracker.record(make_record(backend.root, started_at=now - 300))
    second = tracker.record(make_record(backend.root, started_at=now - 200))
    failed = tracker.record(make_record(backend.root, started_at=now - 100, status="FAILED"))
    old = tracker.record(make_record(backend.root, started_at=now - 400))  # a late re-record of an old run
    other = tracker.record(
        make_record(backend.root, pilot="q", started_at=now - 50, tags={"labkit.function": "sales"})
    )

    flags = {r.info.run_id: r.data.tags.get("labkit.latest") for r in runs_of(tracker)}
    assert flags == {first: "false", second: "true", failed: "false", old: "false", other: "true"}
    latest = tracker.latest_runs()
    assert [(r["pilot"], r["run_id"]) for r in latest] == [("q", other), ("p", second)]  # by function
    assert latest[1]["metrics"] == make_record(backend.root).metrics
    assert latest[1]["status"] == "FINISHED" and latest[1]["tags"]["labkit.function"] == "service"
    assert [r["run_id"] for r in tracker.latest_runs(function="service")] == [second]
    assert tracker.latest_runs(function="pr") == []


def test_a_look_back_never_takes_latest_from_a_later_look(backend):
    """`labkit run --as-of` an earlier date is a newer run that looked back: labkit.latest stays on the run
    that looked later, and the leadership view on the newest evidence. A look is its as_of, else its start;
    an as_of after the start (a date still to come) is the start; a run without the tag (an older labkit's)
    comes after every run with one; a FAILED run never holds the flag. Each step against the rule."""
    tracker = Tracker(backend.lab)
    now = time.time()

    def record(started: float, as_of: str | None = None, *, status: str = "FINISHED", look: bool = True):
        made = make_record(backend.root, started_at=started, status=status)
        tags = made.tags | ({TAG_LOOK: look_stamp(as_of, started)} if look else {})
        return tracker.record(dataclasses.replace(made, tags=tags))

    def latest() -> set[str]:
        return {r.info.run_id for r in runs_of(tracker) if r.data.tags.get("labkit.latest") == "true"}

    def iso(seconds: float) -> str:  # meta.as_of's form: naive UTC
        return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None).isoformat()

    older = record(now - 600, look=False)
    today = record(now - 500)
    assert latest() == {today}
    back = record(now - 400, iso(now - 10 * 86400))  # newer run, looking ten days back
    assert latest() == {today}
    ahead = record(now - 300, "2099-01-01T00:00:00")  # a year mistyped: looks at its start, not in 2099
    assert latest() == {ahead}
    record(now - 200, status="FAILED")
    between = record(now - 100, iso(now - 250))  # looked back to a moment after `ahead` started
    assert latest() == {between}
    record(now - 50, look=False)  # an older labkit's run: after every tagged one
    assert latest() == {between}
    assert older not in latest() and back not in latest()


@settings(max_examples=200, deadline=None)
@given(
    a=st.tuples(
        st.floats(1e9, 4e9), st.none() | st.datetimes(dt.datetime(2001, 1, 1), dt.datetime(2096, 1, 1))
    ),
    b=st.tuples(
        st.floats(1e9, 4e9), st.none() | st.datetimes(dt.datetime(2001, 1, 1), dt.datetime(2096, 1, 1))
    ),
    zone=st.timezones() | st.none(),
)
def test_the_look_tags_text_order_is_the_order_of_the_looks(a, b, zone):
    """MLflow sorts labkit.look as text: for any two runs (any start, an as_of or none, naive UTC or in any
    zone), the tags' order is the order of the looks (to the millisecond), and a look is never after its
    run's start as the store keeps it."""
    stamps, moments = [], []
    for started, as_of in (a, b):
        text = None if as_of is None else (as_of if zone is None else as_of.replace(tzinfo=zone)).isoformat()
        moment = look_moment(text, started)
        assert moment <= dt.datetime.fromtimestamp(round(started * 1000) / 1000, dt.UTC) + dt.timedelta(
            microseconds=1
        )
        stamps.append(look_stamp(text, started))
        moments.append(moment.replace(microsecond=moment.microsecond // 1000 * 1000))
    assert (stamps[0] < stamps[1]) == (moments[0] < moments[1])
    assert (stamps[0] == stamps[1]) == (moments[0] == moments[1])
    assert dt.datetime.strptime(stamps[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC) == moments[0]


def test_latest_among_runs_started_the_same_millisecond(backend):
    """Ties on start go to the later end, then to the larger run id — the store's order (one run read)
    against the rule computed here over every run."""
    tracker = Tracker(backend.lab)
    start = time.time() - 60
    ids = [
        tracker.record(make_record(backend.root, started_at=start, ended_at=start + end))
        for end in (5.0, 9.0, 9.0, 1.0)
    ]
    runs = runs_of(tracker)
    want = max(runs, key=lambda r: (r.info.start_time, r.info.end_time, r.info.run_id)).info.run_id
    assert want in ids[1:3]
    assert {r.info.run_id for r in runs if r.data.tags["labkit.latest"] == "true"} == {want}


def test_concurrent_recorders_agree_on_one_latest_run(backend):
    """Threads with their own trackers (no shared lock over http): the flag still settles on the newest."""
    from concurrent.futures import ThreadPoolExecutor

    now = time.time()
    records = [make_record(backend.root, started_at=now - 10 * i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:  # also races the experiment's creation on the server
        ids = list(pool.map(lambda r: Tracker(backend.lab).record(r), records))
    tracker = Tracker(backend.lab)
    flags = {r.info.run_id: r.data.tags["labkit.latest"] for r in runs_of(tracker)}
    assert flags == {run_id: ("true" if run_id == ids[0] else "false") for run_id in ids}


def test_recording_one_key_twice_gives_one_run(backend):
    tracker = Tracker(backend.lab)
    record = make_record(backend.root)
    run_id = tracker.record(record)
    assert Tracker(backend.lab).record(record) == run_id
    runs = runs_of(tracker, f"tags.`labkit.run_key` = '{record.run_key}'")
    assert [r.info.run_id for r in runs] == [run_id]
    history = client_for(backend.lab).get_metric_history(run_id, "churned.fast.effect")
    assert len(history) == 1


def test_first_prereg_is_the_first_runs_hash(backend):
    tracker = Tracker(backend.lab)
    now = time.time()
    for i, sha in enumerate(["1" * 64, "2" * 64]):
        tags = make_record(backend.root).tags | {"labkit.prereg_sha256": sha}
        tracker.record(make_record(backend.root, started_at=now - 100 + i, tags=tags))
    assert tracker.first_prereg("p") == "1" * 64
    assert tracker.first_prereg("nobody") is None


# ------------------------------------------------------------------------- failures and limits (sqlite)


@pytest.fixture
def fresh_lab(tiny_lab):
    """The tiny lab on a sqlite store that does not exist yet."""
    tiny_lab.lab = load_lab(tiny_lab.root)
    return tiny_lab


@pytest.fixture
def sqlite_lab(tiny_lab, empty_store):
    use_store(tiny_lab.root, empty_store)
    tiny_lab.lab = load_lab(tiny_lab.root)
    return tiny_lab


def test_a_failure_mid_finish_leaves_the_run_failed_and_a_rerecord_completes_it(sqlite_lab):
    tracker = Tracker(sqlite_lab.lab)
    good = make_record(sqlite_lab.root)
    broken = dataclasses.replace(good, artifacts=[*good.artifacts, "/nonexistent/figure.png"])
    with pytest.raises(TrackingError, match=r"artifact /nonexistent/figure\.png .* does not exist"):
        tracker.record(broken)
    (run,) = runs_of(tracker)
    assert run.info.status == "FAILED"  # never RUNNING
    assert "does not exist" in run.data.tags["labkit.error"]
    assert "labkit.recorded" not in run.data.tags
    assert run.data.metrics  # params and metrics went in before the artifacts failed

    assert tracker.record(good) == run.info.run_id  # the partial run is finished, not duplicated
    (run,) = runs_of(tracker)
    assert run.info.status == "FINISHED" and run.data.tags["labkit.latest"] == "true"
    assert len(client_for(sqlite_lab.lab).get_metric_history(run.info.run_id, "roi_pct")) == 1


def test_long_values_are_split_or_moved_never_truncated(sqlite_lab):
    tracker = Tracker(sqlite_lab.lab)
    statement = "".join(f"{i:05d} " for i in range(2_000))  # 12,000 characters
    metrics = {f"m{i}.fast.effect": i / 7 for i in range(2_000)} | {"up": float("inf")}
    record = make_record(
        sqlite_lab.root,
        params={"hypothesis.statement": statement, "cohort.max_size": "2000"},
        metrics=metrics,
        description="Hypothesis: " + statement,
    )
    run_id = tracker.record(record)
    run = client_for(sqlite_lab.lab).get_run(run_id)

    parts = {k: v for k, v in run.data.params.items() if k.startswith("hypothesis.statement.")}
    assert sorted(parts) == [f"hypothesis.statement.part{i}of2" for i in (1, 2)]
    assert all(len(v) <= MAX_PARAM_VALUE for v in parts.values())
    assert parts["hypothesis.statement.part1of2"] + parts["hypothesis.statement.part2of2"] == statement
    assert run.data.tags["labkit.params_split"] == "hypothesis.statement"
    assert any("hypothesis.statement" in w for w in tracker.warnings)
    assert tracker.latest_runs()[0]["params"]["hypothesis.statement"] == statement

    note = run.data.tags["mlflow.note.content"]
    assert len(note) <= 8000 and note.endswith("(12012 characters in full)")
    full = Path(client_for(sqlite_lab.lab).download_artifacts(run_id, "description.md", str(sqlite_lab.root)))
    assert full.read_text() == record.description

    assert len(run.data.metrics) == 2_001 and run.data.metrics["up"] == FLOAT_MAX
    assert run.data.metrics["m1999.fast.effect"] == pytest.approx(1999 / 7)


def test_names_mlflow_would_reject_are_refused_by_name(sqlite_lab):
    tracker = Tracker(sqlite_lab.lab)
    record = make_record(sqlite_lab.root, metrics={"ok.metric": 1.0, "../escape": 2.0, "what?": 3.0})
    with pytest.raises(TrackingError, match=r"metric name\(s\) MLflow cannot store: '\.\./escape'.*'what\?'"):
        tracker.record(record)
    (run,) = runs_of(tracker)
    assert run.info.status == "FAILED"


def test_a_server_made_experiment_is_refused_for_direct_writes(sqlite_lab):
    from mlflow import MlflowClient

    MlflowClient(sqlite_lab.lab.tracking_uri).create_experiment(
        "served", artifact_location="mlflow-artifacts:/9"
    )
    sqlite_lab.write("configs/lab.yaml", LAB_YAML.replace("tiny-pilots", "served"))
    with pytest.raises(TrackingError, match=r"created through an MLflow server .* set tracking_uri"):
        Tracker(load_lab(sqlite_lab.root)).prepare()


def test_an_unreachable_server_fails_fast_without_credentials(tiny_lab, monkeypatch):
    for key in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    ):
        monkeypatch.delenv(key, raising=False)
    import mlflow  # noqa: F401 -- import time is not what this test measures

    port = free_port()  # nobody listens there
    monkeypatch.setenv("LABKIT_TRACKING_URI", f"http://analyst:s3cret-pw@127.0.0.1:{port}")
    tracker = Tracker(load_lab(tiny_lab.root))
    began = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        tracker.prepare()
    assert time.monotonic() - began < 10
    message = str(caught.value)
    assert f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in message
    assert "s3cret" not in message and "analyst" not in message
    assert "\n" not in message


# RELIABILITY #42: every credential shape of a tracking URI, wherever labkit prints one
_LOWER = "abcdefghijklmnopqrstuvwxyz"
CREDENTIAL_NAMES = (
    "password", "PASSWORD", "passwd", "pwd", "token", "access_token", "key", "api_key", "AccountKey",
    "secret", "client_secret", "sig", "X-Amz-Signature", "sas_token", "auth", "credential",
)  # fmt: skip


@st.composite
def uris_with_a_secret(draw) -> tuple[str, str]:
    """A tracking URI holding one secret (as user:secret@ or name=secret in its query), and the secret.

    Hosts, users and paths are lowercase letters; every secret starts with "Z9~", so finding it in the
    output can only mean it leaked. The secret is percent-encoded as a URI requires."""
    scheme = draw(st.sampled_from(
        ["postgresql", "postgresql+psycopg", "mysql+pymysql", "mssql+pyodbc", "http", "https", "sqlite"]
    ))  # fmt: skip
    word = st.text(_LOWER, min_size=1, max_size=8)
    secret = "Z9~" + draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=3, max_size=20))
    encoded = quote(secret, safe="")
    host, path, user = draw(word), draw(word), draw(word)
    port = draw(st.sampled_from(["", ":5432", ":5000"]))
    others = draw(st.lists(st.sampled_from(["sslmode=require", "connect_timeout=10", "a=b"]), max_size=2))
    if draw(st.booleans()):
        query = [*others, f"{draw(st.sampled_from(CREDENTIAL_NAMES))}={encoded}"]
        query = draw(st.permutations(query))
        who = draw(st.sampled_from(["", f"{user}@"]))
        return f"{scheme}://{who}{host}{port}/{path}?{'&'.join(query)}", encoded
    query = f"?{'&'.join(others)}" if others else ""
    return f"{scheme}://{user}:{encoded}@{host}{port}/{path}{query}", encoded


@settings(max_examples=300, deadline=None)
@given(uris_with_a_secret())
def test_no_credential_of_a_tracking_uri_is_ever_printed(uri_secret):
    uri, secret = uri_secret
    shown = display_uri(uri)
    in_text = redact(f"could not connect to {uri}: connection refused (retrying {uri})")
    for text in (shown, in_text):
        assert secret not in text and unquote(secret) not in text, text
    assert "?" not in shown and "@" not in shown
    assert shown.split("://")[0] == uri.split("://")[0]


def test_an_unreachable_sql_store_fails_fast_in_one_line_without_the_password(tiny_lab):
    """`labkit compare` and `labkit run --record-only` on a PostgreSQL URI nobody answers: one line within
    seconds (MLflow alone retries ~100 s and prints the URI with its ?password=)."""
    tiny_lab.pilot()
    port = free_port()  # nobody listens there
    uri = f"postgresql://bob@127.0.0.1:{port}/mlflow?password=hunter2-s3cret&sslmode=disable"
    env = {k: v for k, v in os.environ.items() if k != "LABKIT_LAB"} | {"LABKIT_TRACKING_URI": uri}
    for args in (["compare"], ["run", "--record-only", "p"]):
        began = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "labkit.cli", *args], cwd=tiny_lab.root, capture_output=True, text=True,
            env=env, timeout=120,
        )  # fmt: skip
        assert time.monotonic() - began < 15, args
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, text
        assert "hunter2" not in text and "s3cret" not in text and "Traceback" not in text
        assert proc.stderr.strip() == (
            f"cannot reach the MLflow tracking database at postgresql://127.0.0.1:{port}/mlflow (connection "
            f'failed: connection to server at "127.0.0.1", port {port} failed: Connection refused Is the server '
            "running on that host and accepting TCP/IP connections?); start it or check its address and login, "
            "or point tracking_uri in configs/lab.yaml (or LABKIT_TRACKING_URI) at a running one"
        ), args


# ------------------------------------------------------------------------- processes


WORKER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from test_tracking import make_record
    from labkit.lab import load_lab
    from labkit.tracking import Tracker

    root, pilot, mode = sys.argv[2], sys.argv[3], sys.argv[4]
    tracker = Tracker(load_lab(root))
    tracker.prepare()  # every process, at once, on a fresh store: the lock makes one create it
    if mode == "start-and-die":
        print(tracker.start(pilot, "doomed", f"{pilot}/doomed", {}), flush=True)
        os._exit(0)  # no finish, no status: the run stays RUNNING
    record = make_record(Path(root), pilot=pilot, started_at=time.time())
    print(tracker.record(record), flush=True)
    """
).replace("import os, sys, time", "import os, sys, time\nfrom pathlib import Path")


def run_workers(root: Path, jobs: list[tuple[str, str]]) -> list[subprocess.CompletedProcess]:
    script = root / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_TRACKING_URI", "LABKIT_LAB")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(Path(__file__).parent), str(root), pilot, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
            env=env,
        )  # fmt: skip
        for pilot, mode in jobs
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_sweep_stale_kills_the_running_run_of_a_dead_process(sqlite_lab):
    (died,) = run_workers(sqlite_lab.root, [("p", "start-and-die")])
    assert died.returncode == 0, died.stderr[-2000:]
    stale_id = died.stdout.strip()
    tracker = Tracker(sqlite_lab.lab)
    alive_id = tracker.start("p", "in flight", "p/alive", {})  # this process is alive: not swept

    assert tracker.sweep_stale() == [stale_id]
    client = client_for(sqlite_lab.lab)
    stale = client.get_run(stale_id)
    assert stale.info.status == "KILLED" and "is gone" in stale.data.tags["labkit.swept"]
    assert client.get_run(alive_id).info.status == "RUNNING"
    assert tracker.sweep_stale() == []


# ------------------------------------------------------------------------- the effect over time


def over_time_block() -> list[dict]:
    """Three days of `replies` (fast vs control) from labkit.stats.over_time; day 1 has no events yet, so
    its effect has no interval."""
    import datetime as dt

    from labkit.stats.moments import ArmMoments
    from labkit.stats.over_time import effect_over_time

    arms = {
        "control": [ArmMoments.from_values(v) for v in ([0] * 10, [0, 1] * 5, [0, 1, 2] * 4)],
        "fast": [ArmMoments.from_values(v) for v in ([0] * 12, [1, 1, 0] * 4, [1, 2, 2] * 4)],
    }
    as_of = [dt.date(2026, 11, 1) + dt.timedelta(days=d) for d in (1, 2, 3)]
    return effect_over_time("replies", [1, 2, 3], as_of, arms, control="control").to_list()


def midnight_ms(day: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp() * 1000)


def test_over_time_rows_become_history_points_and_leave_the_headline_alone():
    from labkit.tracking import day_ms, over_time_history

    rows = over_time_block()
    results = RESULTS | {"over_time": rows}
    points = over_time_history(results)
    by_key: dict[str, list] = {}
    for p in points:
        by_key.setdefault(p["key"], []).append((p["step"], p["timestamp"], p["value"]))
    stamps = {r["day"]: midnight_ms(r["as_of"]) for r in rows}
    assert by_key["over_time.replies.fast.effect"] == [
        (r["day"], stamps[r["day"]], r["effect"]) for r in rows
    ]
    for field in ("ci_low", "ci_high"):  # day 1 has no interval: a gap, never a NaN
        assert by_key[f"over_time.replies.fast.{field}"] == [
            (r["day"], stamps[r["day"]], r[field]) for r in rows[1:]
        ]
    assert set(by_key) == {f"over_time.replies.fast.{f}" for f in ("effect", "ci_low", "ci_high")}
    assert metrics_from_results(results) == metrics_from_results(RESULTS)  # the headline: nothing new
    assert over_time_history(RESULTS) == []
    assert over_time_history(RESULTS | {"over_time": {"interval": "fixed-horizon", "rows": rows}}) == points
    assert day_ms("2026-11-02T06:00:00") == midnight_ms("2026-11-02") + 6 * 3_600_000


def test_the_effect_over_time_is_metric_history_with_one_value_per_day(sqlite_lab):
    """results.json's over_time -> build_record -> MLflow: each day once at its step and timestamp, also
    when a partial run is finished again; a run without over_time logs none."""
    import types

    from mlflow import MlflowClient

    from labkit.spec import load_pilot
    from labkit.tracking import build_record

    sqlite_lab.pilot()
    pilot = load_pilot("p", lab=sqlite_lab.lab)
    rows = over_time_block()
    now = time.time()

    def record_of(results: dict, key: str) -> RunRecord:
        nb = types.SimpleNamespace(status="FINISHED", message=None, executed=None, html=None, results=None,
                                   figures=[], started_at=now - 5, ended_at=now)  # fmt: skip
        return build_record(pilot, nb, run_key=key, run_name=key, results=results, spec_changed=False,
                            code_version="test")  # fmt: skip

    tracker = Tracker(sqlite_lab.lab)
    good = record_of(RESULTS | {"pilot": "p", "over_time": rows}, "p/over-time")
    assert RunRecord.from_json(good.to_json()) == good  # record.json carries the history
    broken = dataclasses.replace(good, artifacts=[*good.artifacts, "/nonexistent/figure.png"])
    with pytest.raises(TrackingError, match="does not exist"):
        tracker.record(broken)
    client = MlflowClient(tracking_uri=sqlite_lab.lab.tracking_uri)
    (partial,) = runs_of(tracker)
    assert len(client.get_metric_history(partial.info.run_id, "over_time.replies.fast.effect")) == len(rows)
    run_id = tracker.record(good)  # finishes the partial run: each day stays logged once
    assert run_id == partial.info.run_id
    for field in ("effect", "ci_low", "ci_high"):
        history = client.get_metric_history(run_id, f"over_time.replies.fast.{field}")
        expected = [r for r in rows if r[field] is not None]
        assert [(m.step, m.timestamp) for m in sorted(history, key=lambda m: m.step)] == [
            (r["day"], midnight_ms(r["as_of"])) for r in expected
        ]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [r[field] for r in expected]
        )
    assert client.get_run(run_id).data.metrics["over_time.replies.fast.effect"] == pytest.approx(
        rows[-1]["effect"]
    )

    plain_record = record_of(RESULTS | {"pilot": "p"}, "p/plain")
    assert "history" not in json.loads(plain_record.to_json())  # record.json as before the effect over time
    plain = tracker.record(plain_record)
    assert not [k for k in client.get_run(plain).data.metrics if k.startswith("over_time.")]
    assert client.get_metric_history(plain, "over_time.replies.fast.effect") == []
