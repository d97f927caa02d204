"""A pilot's status from its files and dates (labkit.listing.Status): shown by `labkit list`, and used by
`labkit analyze`, which before the start or while the outcome window is open says so in one line (exit 0,
no decision) instead of giving a verdict on data that does not exist yet."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
import labkit.cli
from labkit.listing import pilot_status

from conftest import PILOT_YAML

LABKIT = [sys.executable, "-m", "labkit.cli"]


@pytest.fixture
def today(monkeypatch) -> dt.date:
    """The UTC date at the test's start, and labkit's clock held on it for the test: a date read once at
    import made these tests fail when the suite crossed midnight UTC ("day 4 of 60" against "day 3")."""
    date = dt.datetime.now(dt.UTC).date()
    monkeypatch.setattr("labkit.listing.today_utc", lambda: date)
    return date


def run(lab, *args) -> subprocess.CompletedProcess:
    """``labkit ARGS`` in this process, in the lab: exit code, stdout and stderr are what a subprocess gives,
    without its ~1 CPU-s of imports; an escaping exception (a traceback) fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(lab.root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = labkit.cli.main(list(args))
    return subprocess.CompletedProcess(["labkit", *args], code, out.getvalue(), err.getvalue())


def customers(lab, n: int = 400) -> None:
    path = lab.root / "data" / "customers.parquet"
    path.parent.mkdir(exist_ok=True)
    ids = [f"c{i:04d}" for i in range(n)]
    pd.DataFrame({"customer_id": ids, "has_twitter": np.arange(n) % 4 != 0}).to_parquet(path, index=False)


def pilot_text(start: dt.date, window: int = 60) -> str:
    return (
        PILOT_YAML.replace("start: 2026-11-01", f"start: {start.isoformat()}")
        .replace("window_days: 30", f"window_days: {window}")
        .replace("max_size: 2000", "max_size: 200")
    )


def load(lab, start: dt.date, window: int = 60):
    path = lab.pilot(pilot_text(start, window))
    return labkit.load_pilot(path, lab=labkit.load_lab(lab.root / "configs" / "lab.yaml"))


def test_drafted_then_assigned_then_running_then_ready(tiny_lab):
    customers(tiny_lab)
    start = dt.date(2026, 12, 13)
    pilot = load(tiny_lab, start)
    assert pilot_status(pilot, today=dt.date(2026, 12, 6)).status == "drafted"
    labkit.assign(pilot)
    before = pilot_status(pilot, today=dt.date(2026, 12, 6))
    assert (before.status, before.line) == ("assigned", "starts 2026-12-13; no outcome data yet")
    running = pilot_status(pilot, today=dt.date(2026, 12, 15))
    assert running.status == "running" and (running.day, running.window_days) == (3, 60)
    assert running.analyse_after == dt.date(2027, 2, 10)  # the window [start, start + 60) ends the day before
    assert running.line == "running, day 3 of 60; analyse after 2027-02-10 (200 of 200 customers exposed)"
    assert (running.exposed, running.target) == (200, 200)
    assert pilot_status(pilot, today=dt.date(2027, 2, 10)).status == "running"  # the window's last day
    assert pilot_status(pilot, today=dt.date(2027, 2, 11)).status == "ready"


def test_a_recorded_run_makes_the_pilot_decided(tiny_lab):
    customers(tiny_lab)
    pilot = load(tiny_lab, dt.date(2026, 1, 5))
    labkit.assign(pilot)
    folder = tiny_lab.root / "results" / "p" / "runs" / "20260301T000000Z"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"pilot": "p", "decision": "ship"}))
    status = pilot_status(pilot, today=dt.date(2026, 12, 6))
    assert (status.status, status.decision) == ("decided", "ship")
    out = run(tiny_lab, "list")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("p "))
    assert "decided" in row and "ship" in row


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 10**6), st.none() | st.integers(-(10**6), 2 * 10**6), st.sampled_from("abcd")),
        min_size=1, max_size=6, unique_by=lambda r: r[0],
    )
)  # fmt: skip
def test_list_shows_the_decision_of_the_newest_look_as_latest_does(tmp_path_factory, runs):
    """`labkit list` reads the decision from the run folders as labkit.latest is chosen: the latest look (a
    run's as_of when it looked back, else its start; an as_of after the start is the start), then the latest
    start — a run `--as-of` an earlier date does not replace the decision of a run that looked later."""
    from labkit.listing import _latest_decision

    results = tmp_path_factory.mktemp("results")
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    for seconds, as_of, decision in runs:
        folder = results / "runs" / (base + dt.timedelta(seconds=seconds)).strftime("%Y%m%dT%H%M%S%fZ")
        folder.mkdir(parents=True)
        meta = (
            {}
            if as_of is None
            else {"as_of": (base + dt.timedelta(seconds=as_of)).replace(tzinfo=None).isoformat()}
        )
        (folder / "results.json").write_text(json.dumps({"decision": decision, "meta": meta}))
    look = lambda r: min(r[0], r[1]) if r[1] is not None else r[0]  # noqa: E731
    want = max(runs, key=lambda r: (look(r), r[0]))[2]
    assert _latest_decision(results) == want


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(days=st.integers(-400, 400), window=st.integers(1, 366))
def test_the_status_follows_the_outcome_window_for_every_date(tmp_path_factory, days, window):
    """For every start relative to today and every window length: assigned before the start, running on
    days 1..window of [start, start + window), ready to analyse from then on."""
    from conftest import LAB_YAML, TinyLab

    lab = TinyLab(tmp_path_factory.mktemp("status"))
    lab.write("configs/lab.yaml", LAB_YAML)
    start = dt.date(2026, 6, 1)
    pilot = load(lab, start, window)
    (pilot.results_dir).mkdir(parents=True)
    (pilot.results_dir / "assignment.parquet").write_bytes(b"")  # only its presence is read
    today = start + dt.timedelta(days=days)
    status = pilot_status(pilot, today=today)
    expected = "assigned" if days < 0 else "running" if days < window else "ready"
    assert status.status == expected
    assert status.analysable is (expected == "ready")
    if expected == "running":
        assert status.day == days + 1 and status.analyse_after == start + dt.timedelta(days=window - 1)


def test_a_pilot_without_event_metrics_is_ready_from_its_start(tiny_lab):
    text = PILOT_YAML.split("  - name: replies")[0]
    path = tiny_lab.pilot(text)
    pilot = labkit.load_pilot(path, lab=labkit.load_lab(tiny_lab.root / "configs" / "lab.yaml"))
    pilot.results_dir.mkdir(parents=True)
    (pilot.results_dir / "assignment.parquet").write_bytes(b"")
    assert pilot_status(pilot, today=dt.date(2026, 11, 1)).status == "ready"
    assert pilot_status(pilot, today=dt.date(2026, 10, 31)).status == "assigned"


# ----------------------------------------------------------------------------- through the command line


def test_analyze_before_the_start_says_so_in_one_line(tiny_lab, today):
    customers(tiny_lab)
    start = today + dt.timedelta(days=7)
    tiny_lab.pilot(pilot_text(start))
    assert run(tiny_lab, "assign", "p").returncode == 0
    out = run(tiny_lab, "analyze", "p")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"p: starts {start.isoformat()}; no outcome data yet\n"
    assert "invalid" not in out.stdout and "ROI" not in out.stdout
    data = json.loads(run(tiny_lab, "analyze", "p", "--json").stdout)
    assert data["pilot"] == "p" and data["status"] == "assigned" and data["decision"] is None
    assert data["start"] == start.isoformat()


def test_run_and_analyze_refuse_a_pilot_that_has_not_started(tiny_lab):
    """Before its start a pilot has no outcome, but its per-customer tables can be read as they are today:
    `labkit run` gave a verdict ("no-effect → stop"), recorded it as the latest run, and `labkit compare`
    showed it. Now `labkit run` refuses in one line before any run or folder exists, ``labkit.analyze``
    (the notebook's) raises that line, and `labkit analyze` and `list` keep saying when it starts."""
    from labkit.errors import DataError

    customers(tiny_lab)
    start = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=5)
    pilot = load(tiny_lab, start)
    labkit.assign(pilot)
    line = f"p: the pilot starts {start} (UTC) and nothing of it has happened yet: no outcome to analyse"
    out = run(tiny_lab, "run", "p")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(line), out.stderr
    assert not (tiny_lab.root / "results" / "p" / "runs").exists()
    assert not (tiny_lab.root / "results" / "mlflow.db").exists()
    with pytest.raises(DataError, match=f"^{re.escape(line)}"):
        labkit.analyze(pilot)
    assert run(tiny_lab, "analyze", "p").stdout == f"p: starts {start}; no outcome data yet\n"


def test_a_folder_run_leaves_out_the_pilots_that_have_not_started_and_names_them(tiny_lab):
    """`labkit run` over the lab's folder: a pilot that starts next week is left out with one line saying when,
    and the others go on (here to their preflight: this lab has no notebook); all waiting is exit 0."""
    customers(tiny_lab)
    later = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=7)
    labkit.assign(load(tiny_lab, later))
    tiny_lab.pilot(pilot_text(dt.date(2026, 1, 5)).replace("id: p\n", "id: q\n"), name="q")
    out = run(tiny_lab, "run")
    assert f"p: not run: it starts {later} (UTC); nothing of it has happened yet" in out.stdout.splitlines()
    assert out.returncode == 1 and out.stderr.startswith("q: ") and "notebook" in out.stderr, out.stderr
    (tiny_lab.root / "experiments" / "q.yaml").unlink()
    out = run(tiny_lab, "run", "experiments")
    assert (
        out.returncode == 0
        and out.stdout.splitlines()[-1] == "no pilot in experiments has started yet: nothing to run"
    )
    assert not (tiny_lab.root / "results" / "p" / "runs").exists()


@settings(max_examples=300, deadline=None)
@given(
    start=st.dates(dt.date(2020, 1, 1), dt.date(2030, 12, 31)),
    now=st.datetimes(dt.datetime(2020, 1, 1), dt.datetime(2030, 12, 31), timezones=st.timezones()),
)
def test_a_pilot_has_started_exactly_when_a_look_as_of_now_would_be_allowed(start, now):
    """`labkit run` without --as-of looks now: it is refused exactly when `--as-of` that moment would be (on
    or before the start's midnight UTC), in any zone the moment is given in."""
    from types import SimpleNamespace

    from labkit.analysis import as_of_problem
    from labkit.listing import not_started

    pilot = SimpleNamespace(start=start, id="p")
    assert (not_started(pilot, now) is None) == (as_of_problem(pilot, now) is None)
    assert (not_started(pilot, now) is None) == (now > dt.datetime.combine(start, dt.time(), dt.UTC))


def test_a_new_pilot_runs_day_three_of_sixty_after_plan_and_assign(tiny_lab, today):
    """The issue's day one: plan from an assumed baseline (no outcome table yet), assign, and see the
    status, without touching a data file by hand after the customers."""
    customers(tiny_lab)
    start = today - dt.timedelta(days=2)
    last = start + dt.timedelta(days=59)
    text = pilot_text(start).replace(
        "  mde: {relative: 0.15}\n", "  mde: {relative: 0.15}\n  baseline: {rate: 0.12}\n"
    )
    tiny_lab.pilot(text)
    plan = run(tiny_lab, "plan", "p", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["baseline_from"] == "assumption"
    assert run(tiny_lab, "assign", "p").returncode == 0
    out = run(tiny_lab, "analyse", "p")  # the British spelling is the same command
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"p: running, day 3 of 60; analyse after {last.isoformat()} (200 of 200 customers exposed)"
    )
    listed = run(tiny_lab, "list")
    assert "running (day 3 of 60)" in listed.stdout


def test_assign_on_an_existing_assignment_says_it_kept_it(tiny_lab):
    customers(tiny_lab)
    tiny_lab.pilot(pilot_text(dt.date(2026, 11, 1)))
    first = run(tiny_lab, "assign", "p")
    assert first.returncode == 0, first.stderr
    meta = json.loads((tiny_lab.root / "results" / "p" / "assignment.json").read_text())
    again = run(tiny_lab, "assign", "p")
    assert again.returncode == 0, again.stderr
    assert (
        " ".join(again.stdout.split())
        == (  # wrapped at spaces where COLUMNS is set (pytest sets 80)
            f"p: kept the existing assignment results/p/assignment.parquet (drawn {meta['created_at'][:10]}, "
            "200 customers); `labkit assign p --force` archives it and draws anew"
        )
    )


def test_version():
    out = subprocess.run([*LABKIT, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == f"labkit {labkit.__version__}\n"


@pytest.mark.parametrize("spelling", ["analyze", "analyse"])
def test_analyse_is_analyze(spelling):
    from labkit.cli import COMMANDS
    from labkit.cli_parser import build_parser

    args = build_parser().parse_args([spelling, "p", "--json"])
    assert COMMANDS[args.command] is COMMANDS["analyze"] and args.json


def test_labkit_plan_records_the_planned_status_until_the_pilot_file_changes(tiny_lab):
    """drafted → `labkit plan` → planned (with the customers per arm it printed) → the pilot edited →
    drafted again → planned anew → assigned: a plan counts only for the pilot file it was made for."""
    customers(tiny_lab)
    text = pilot_text(dt.date(2026, 12, 13))  # no outcome data yet: planned on an assumed baseline
    path = tiny_lab.pilot(
        text.replace("mde: {relative: 0.15}", "mde: {relative: 0.15}\n  baseline: {rate: 0.12}")
    )
    assert "drafted" in run(tiny_lab, "list").stdout

    out = run(tiny_lab, "plan", path.stem, "--json")
    assert out.returncode == 0, out.stderr
    need = json.loads(out.stdout)["required_per_arm"]
    pilot = labkit.load_pilot(path, lab=labkit.load_lab(tiny_lab.root / "configs" / "lab.yaml"))
    status = pilot_status(pilot, today=dt.date(2026, 12, 6))
    assert status.status == "planned"
    assert status.line == f"planned: {need:,} customers per arm needed; run `labkit assign {pilot.id}`"
    assert "planned" in run(tiny_lab, "list").stdout

    path.write_text(path.read_text().replace("mde: {relative: 0.15}", "mde: {relative: 0.25}"))
    edited = labkit.load_pilot(path, lab=labkit.load_lab(tiny_lab.root / "configs" / "lab.yaml"))
    assert edited.spec_sha256 != pilot.spec_sha256
    assert pilot_status(edited, today=dt.date(2026, 12, 6)).status == "drafted"

    assert run(tiny_lab, "plan", path.stem).returncode == 0
    assert pilot_status(edited, today=dt.date(2026, 12, 6)).status == "planned"
    labkit.assign(edited)
    assert pilot_status(edited, today=dt.date(2026, 12, 6)).status == "assigned"
