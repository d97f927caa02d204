"""The CLI as a user meets it: exit codes, one-line messages, no tracebacks, help for every command."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

from labkit.cli import COMMANDS, main
from labkit.cli_parser import build_parser

from conftest import PILOT_YAML, REPO

LABKIT = [sys.executable, "-m", "labkit.cli"]


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    """``labkit ARGS`` in this process, in ``cwd``: what these tests check (exit code, stdout, stderr) is the
    same as a subprocess's, without ~1 CPU-s of imports each; an escaping exception (a traceback) fails the
    test. What only a real process shows (the traceback of --debug on its stderr) uses ``run_process``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or "."), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["labkit", *args], code, out.getvalue(), err.getvalue())


def run_process(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*LABKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_validate_clean_lab_exits_zero(tiny_lab):
    tiny_lab.pilot()
    out = run("validate", cwd=tiny_lab.root)
    assert out.returncode == 0, out.stderr
    assert "ok: 2 file(s) valid" in out.stdout


def test_validate_reports_every_problem_without_traceback(tiny_lab):
    tiny_lab.pilot(
        PILOT_YAML.replace("function: service", "function: legal").replace("max_size: 2000", "max_size: 0")
    )
    out = run("validate", "experiments/p.yaml", cwd=tiny_lab.root)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("experiments/p.yaml:3: function: unknown function 'legal'")
    assert lines[1].startswith("experiments/p.yaml:17: cohort.max_size:")
    assert lines[2] == "2 problem(s) in 1 file(s)"


def test_validate_yaml_syntax_error_one_line(tiny_lab):
    tiny_lab.pilot("id: p\ntitle: [unclosed\n")
    out = run("validate", "experiments/p.yaml", cwd=tiny_lab.root)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[0].startswith("experiments/p.yaml:")
    assert "syntax" in out.stderr.splitlines()[0]


def test_validate_missing_file(tiny_lab):
    out = run("validate", "experiments/nope.yaml", cwd=tiny_lab.root)
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == "experiments/nope.yaml: no such file or folder"


def test_validate_takes_a_pilot_id_as_run_and_analyze_do(tiny_lab):
    # an id finds experiments/<id>.yaml from anywhere in the lab, as `labkit run <id>` does
    pilot = PILOT_YAML.replace("id: p\n", "id: svc-fast-reply\n", 1)
    tiny_lab.pilot(pilot, name="svc-fast-reply")
    out = run("validate", "svc-fast-reply", cwd=tiny_lab.root / "configs")
    assert (out.returncode, out.stdout.strip()) == (0, "ok: 1 file(s) valid"), out.stderr
    tiny_lab.pilot(pilot.replace("function: service", "function: legal"), name="svc-fast-reply")
    out = run("validate", "svc-fast-reply", cwd=tiny_lab.root)
    assert out.returncode == 1
    assert out.stderr.splitlines()[0].startswith(
        "experiments/svc-fast-reply.yaml:3: function: unknown function"
    )
    out = run("validate", "svc-fast-rply", cwd=tiny_lab.root)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[0] == (
        "no pilot 'svc-fast-rply' in experiments; did you mean 'svc-fast-reply'? pilots: svc-fast-reply"
    )


@pytest.mark.parametrize("how", ["interrupt", "sigint"])
def test_a_query_interrupted_inside_a_command_ends_it_as_ctrl_c_does(tiny_lab, monkeypatch, how):
    """DuckDB ends an interrupted query with its own exception and the KeyboardInterrupt is gone: a SIGINT
    that lands while it executes becomes RuntimeError('Query interrupted') (duckdb 2.0; `labkit demo`
    stopped in its draw printed that traceback), an interrupt of the connection InterruptException. Both
    end the command as Ctrl-C does. The interrupt here is DuckDB's own ``interrupt()`` of a running query,
    or, for the SIGINT form, the exception DuckDB raises then: a real SIGINT reaches DuckDB only between its
    tasks, and now and then not before the query ends (duckdb#10216, #15925), too uncertain for a test."""
    import threading

    import duckdb

    def busy(args):
        con = duckdb.connect()
        if how == "sigint":
            raise RuntimeError("Query interrupted")
        threading.Timer(0.2, con.interrupt).start()
        con.sql("select sum(range % 7) from range(100000000000)").fetchall()  # minutes unless interrupted

    monkeypatch.setitem(COMMANDS, "list", busy)
    out = run("list", cwd=tiny_lab.root)
    assert (out.returncode, out.stdout, out.stderr) == (130, "", "interrupted\n")
    other = RuntimeError("something else")
    monkeypatch.setitem(COMMANDS, "list", lambda args: (_ for _ in ()).throw(other))
    with pytest.raises(RuntimeError, match="something else"):  # any other error stays a bug's traceback
        run("list", cwd=tiny_lab.root)


def test_an_engines_interrupt_is_an_interrupt_not_a_data_error(tiny_lab):
    import duckdb

    import labkit
    from labkit.data.sources import Engine

    engine = Engine.for_lab(labkit.load_lab(tiny_lab.root / "configs" / "lab.yaml"))
    try:
        for exc in (
            RuntimeError("Query interrupted"),
            duckdb.InterruptException("INTERRUPT Error: Interrupted!"),
        ):
            assert isinstance(engine.error(exc), KeyboardInterrupt), exc
        other = RuntimeError("something else")
        assert engine.error(other) is other
    finally:
        engine.close()


def test_outside_a_lab_is_one_message(tmp_path):
    out = run("list", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("no lab found")


def test_new_writes_a_pilot_that_validates(tiny_lab):
    out = run(
        "new", "sales-linkedin-intro", "--function", "sales", "--channel", "linkedin", cwd=tiny_lab.root
    )
    assert out.returncode == 0, out.stderr
    path = tiny_lab.root / "experiments" / "sales-linkedin-intro.yaml"
    assert path.is_file() and "#" in path.read_text()
    assert run("validate", str(path), cwd=tiny_lab.root).returncode == 0
    again = run(
        "new", "sales-linkedin-intro", "--function", "sales", "--channel", "linkedin", cwd=tiny_lab.root
    )
    assert again.returncode == 1 and "exists already" in again.stderr


@pytest.mark.parametrize("zone", ["Etc/GMT-14", "Etc/GMT+12"])  # UTC+14 and UTC-12
def test_new_suggests_a_start_a_week_after_the_utc_date_in_any_zone(tiny_lab, monkeypatch, zone):
    """`labkit new` dates the suggested start as labkit dates everything, in UTC: it used the host's local
    date, a day off in one of these two zones at any hour (UTC+14 is a day ahead from 10:00 UTC, UTC-12 a day
    behind until 12:00 UTC)."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        before = dt.datetime.now(dt.UTC).date()
        out = run("new", "x", "--function", "sales", "--channel", "linkedin", cwd=tiny_lab.root)
        after = dt.datetime.now(dt.UTC).date()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert out.returncode == 0, out.stderr
    (start,) = re.findall(r"^ +start: (\S+)", (tiny_lab.root / "experiments" / "x.yaml").read_text(), re.M)
    assert start in {(day + dt.timedelta(days=7)).isoformat() for day in (before, after)}


def test_new_refuses_unknown_channel(tiny_lab):
    out = run("new", "x", "--function", "sales", "--channel", "tiktok", cwd=tiny_lab.root)
    assert out.returncode == 1
    assert "channel: unknown channel 'tiktok'" in out.stderr
    assert not (tiny_lab.root / "experiments" / "x.yaml").exists()
    assert list((tiny_lab.root / "experiments").glob(".*")) == []


def test_list_shows_pilots(tiny_lab):
    tiny_lab.pilot()
    out = run("list", cwd=tiny_lab.root)
    assert out.returncode == 0, out.stderr
    assert "service" in out.stdout and "twitter" in out.stdout and "draft" in out.stdout


def test_every_command_has_help_with_an_example_and_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for name, parser in sub.choices.items():
        assert parser.description and "example: labkit" in (parser.epilog or ""), name
        assert f"`labkit {name}" in readme, f"README lacks `labkit {name}`"


def test_debug_shows_traceback(tmp_path):
    out = run_process("--debug", "list", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" in out.stderr


# ----------------------------------------------------------------- `labkit new` plans as written (issue 15)


def test_new_then_plan_works_on_the_demo_labs_configs_before_any_data(tmp_path):
    """A fresh clone has the demo lab's configs and no data: the scaffold's assumed baseline plans it."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lab.yaml").write_text((REPO / "configs" / "lab.yaml").read_text())
    pid = "sales-linkedin-warm-intro"
    out = run("new", pid, "--function", "sales", "--channel", "linkedin", "--metric", "outcomes.churned_60d",
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = run("plan", pid, "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["baseline_from"] == "assumption" and data["required_per_arm"] > 2


def _crm(root):
    import numpy as np
    import pandas as pd

    (root / "data").mkdir(exist_ok=True)
    n = 2000
    ids = [f"c{i:05d}" for i in range(n)]
    rng = np.random.default_rng(3)
    pd.DataFrame({"customer_id": ids, "has_twitter": rng.random(n) < 0.7,
                  "consent_contact": rng.random(n) < 0.9}).to_parquet(root / "data" / "customers.parquet")  # fmt: skip
    pd.DataFrame({"customer_id": ids, "converted": (rng.random(n) < 0.2).astype(int)}).to_csv(
        root / "data" / "outcomes.csv", index=False
    )


def test_new_names_only_columns_the_sources_have_and_plans_on_the_data(tiny_lab):
    _crm(tiny_lab.root)
    out = run(
        "new", "x", "--function", "sales", "--channel", "email", "--metric", "converted", cwd=tiny_lab.root
    )
    assert out.returncode == 0, out.stderr
    text = (tiny_lab.root / "experiments" / "x.yaml").read_text()
    assert "source: outcomes" in text and "column: converted" in text
    assert "{column: consent_contact" in text  # the cohort source has it, so the filter is offered
    assert "# columns of outcomes: customer_id, converted" in text
    plan = run("plan", "x", "--json", cwd=tiny_lab.root)
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["baseline_from"] == "eligible" and abs(data["baseline_mean"] - 0.2) < 0.03


def test_new_refuses_a_metric_column_the_source_lacks(tiny_lab):
    _crm(tiny_lab.root)
    out = run("new", "x", "--function", "sales", "--channel", "email", "--metric", "outcomes.convrted",
              cwd=tiny_lab.root)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "--metric: source 'outcomes' has no column 'convrted'; did you mean 'converted'? "
        "columns: customer_id, converted"
    )
    assert not (tiny_lab.root / "experiments" / "x.yaml").exists()


def _data(tiny_lab, *, churned, ts, has_twitter=True) -> None:
    import pandas as pd

    (tiny_lab.root / "data").mkdir(exist_ok=True)
    ids = ["c1", "c2"]
    pd.DataFrame({"customer_id": ids, "has_twitter": [has_twitter] * 2}).to_parquet(
        tiny_lab.root / "data" / "customers.parquet"
    )
    pd.DataFrame({"customer_id": ids, "churned": churned}).to_csv(
        tiny_lab.root / "data" / "outcomes.csv", index=False
    )
    pd.DataFrame({"customer_id": ids, "event_type": ["reply"] * 2, "ts": ts}).to_parquet(
        tiny_lab.root / "data" / "events.parquet"
    )


def test_validate_data_passes_a_pilot_that_fits_its_sources(tiny_lab):
    import pandas as pd

    tiny_lab.pilot()
    _data(tiny_lab, churned=[0, 1], ts=pd.to_datetime(["2026-11-02", "2026-11-03"]))
    out = run("validate", "--data", cwd=tiny_lab.root)
    assert out.returncode == 0, out.stderr
    assert run("validate", cwd=tiny_lab.root).returncode == 0


def test_validate_data_reports_each_missing_column_and_misfit_type_at_its_line(tiny_lab):
    tiny_lab.pilot(PILOT_YAML.replace("column: has_twitter", "column: has_twiter"))
    _data(tiny_lab, churned=["high", "low"], ts=["2026-11-02", "2026-11-03"])
    assert run("validate", cwd=tiny_lab.root).returncode == 0  # the schema is not looked at without --data
    out = run("validate", "--data", cwd=tiny_lab.root)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith(
        "experiments/p.yaml:16: cohort.where.0.column: no column 'has_twiter' in source 'customers'; its columns: "
    ), lines
    assert lines[1].startswith(
        "experiments/p.yaml:25: metrics.0.column: column 'churned' of source 'outcomes' is "
    )
    assert lines[1].endswith("allowed: a boolean or 0/1 numeric column")
    assert lines[2].startswith(
        "experiments/p.yaml:31: metrics.1.window_days: column 'ts' of source 'events' is "
    )
    assert lines[2].endswith("allowed: a timestamp or date column")
    assert lines[3] == "3 problem(s) in 2 file(s)"


def test_validate_data_says_when_a_source_cannot_be_read(tiny_lab):
    tiny_lab.pilot()
    out = run("validate", "--data", "experiments/p.yaml", cwd=tiny_lab.root)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("experiments/p.yaml:13: cohort.source: source 'customers' cannot be read: ")


def test_a_command_forked_by_the_test_fork_server_ends_as_a_new_interpreter_does(tiny_lab, tmp_path_factory):
    """tests/cli_fork.py stands in for ``python -m labkit.cli`` in the modules that start many commands:
    the same exit codes, stdout and stderr (a traceback ends the same way; its frames above labkit differ)."""

    import cli_fork

    tiny_lab.pilot()
    tmp_path = tmp_path_factory.mktemp("no-lab")
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_LAB", "LABKIT_TRACKING_URI")}
    for args, cwd in (
        (["--version"], tmp_path),
        (["list"], tmp_path),  # no lab: one line, exit 1
        (["validate"], tiny_lab.root),
        (["list", "--format", "json"], tiny_lab.root),
        (["plan", "nope"], tiny_lab.root),
    ):
        real, forked = run_process(*args, cwd=cwd), cli_fork.run(args, cwd, env)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            real.returncode,
            real.stdout,
            real.stderr,
        )
    real, forked = (
        run_process("--debug", "list", cwd=tmp_path),
        cli_fork.run(["--debug", "list"], tmp_path, env),
    )
    assert forked.returncode == real.returncode == 1
    assert (
        forked.stderr.splitlines()[0] == real.stderr.splitlines()[0] == "Traceback (most recent call last):"
    )
    assert forked.stderr.splitlines()[-1] == real.stderr.splitlines()[-1]
