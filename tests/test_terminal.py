"""The command line at 80 and 100 columns, and piped: no number or name a reader needs is cut.

Each command runs as a process of its own (the real CLI, forked from the pre-imported fork server of
tests/cli_fork.py: its output goes to a file, not a terminal, as a pipe's does) on a small lab with data;
rich honours COLUMNS, so no pty is needed. Every key value (pilot id, metric names, decisions, numbers as
labkit prints them) must appear whole on one line, and no line may be longer than the width. Piped (no COLUMNS, not a terminal), the
output is plain text at full width: no escape codes, and a table's row stays on one line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cli_fork
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LAB_YAML
from conftest import pilot_yaml as default_pilot_yaml

PID = "service-twitter-fast-reply-weekend-shift"
METRICS = ("churned_within_ninety_days", "replies_sent_per_customer")


def pilot_yaml(pid: str, **overrides) -> str:
    """The default pilot (tests/pilots.py) with long names."""
    return default_pilot_yaml(
        id=pid, title="A pilot with long names", owner="customer-service-lab@example.com",
        metrics=[
            {"name": METRICS[0], "type": "proportion", "source": "outcomes", "column": "churned"},
            {"name": METRICS[1], "type": "mean", "source": "outcomes", "column": "replies"},
        ],
        **{"hypothesis.metric": METRICS[0], "hypothesis.mde": {"relative": 0.2}, "cohort.max_size": 3000},
        **overrides,
    )  # fmt: skip


def run(root: Path, *args: str, columns: int | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "LABKIT_LAB")}
    env.pop("LABKIT_TRACKING_URI", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    out = cli_fork.run(list(args), root, env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """3,000 customers assigned to one pilot with long names; outcomes drawn so that the arms differ."""
    import labkit

    root = tmp_path_factory.mktemp("terminal")
    (root / "configs").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "data").mkdir()
    rng = np.random.default_rng(15)
    n = 3000
    ids = [f"c{i:05d}" for i in range(n)]
    pd.DataFrame({"customer_id": ids, "has_twitter": True}).to_parquet(root / "data" / "customers.parquet")
    (root / "experiments").mkdir()
    path = root / "experiments" / f"{PID}.yaml"
    path.write_text(pilot_yaml(PID))
    second = root / "experiments" / "pr-linkedin-quarterly-thought-leadership.yaml"
    second.write_text(pilot_yaml("pr-linkedin-quarterly-thought-leadership", function="pr"))
    lab_ = labkit.load_lab(root / "configs" / "lab.yaml")
    labkit.assign(labkit.load_pilot(path, lab=lab_))
    arms = pd.read_parquet(root / "results" / PID / "assignment.parquet")[["customer_id", "arm"]]
    fast = (arms["arm"] == "fast").to_numpy()
    pd.DataFrame(
        {
            "customer_id": arms["customer_id"],
            "churned": (rng.random(len(arms)) < np.where(fast, 0.08, 0.14)).astype(int),
            "replies": rng.poisson(np.where(fast, 3.2, 2.5)),
        }
    ).to_csv(root / "data" / "outcomes.csv", index=False)
    record_run(labkit.load_pilot(path, lab=lab_))
    return root


def record_run(pilot) -> None:
    """The analysis recorded as `labkit run` records it (build_record, Tracker.record into sqlite), without
    running the notebook: `labkit compare` then has a finished run to show."""
    import time
    import types

    import labkit
    from labkit.tracking import Tracker, build_record

    results = json.loads(labkit.analyze(pilot).to_json())
    now = time.time()
    nb = types.SimpleNamespace(status="FINISHED", message=None, executed=None, html=None, results=None,
                               figures=[], started_at=now - 5, ended_at=now)  # fmt: skip
    record = build_record(pilot, nb, run_key="t/1", run_name="t 1", results=results, spec_changed=False,
                          code_version="test")  # fmt: skip
    Tracker(pilot.lab).record(record)


def check_width(text: str, width: int) -> None:
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, f"{len(long)} line(s) longer than {width}: {long[:3]}"


def assert_whole(text: str, values) -> None:
    lines = text.splitlines()
    for value in values:
        assert any(value in line for line in lines), f"{value!r} not whole on any line of:\n{text}"


@pytest.fixture(scope="module")
def analyzed(lab) -> dict:
    """`labkit analyze <pilot> --json`, run once: the numbers every other output of the analysis must show."""
    return json.loads(run(lab, "analyze", PID, "--json", columns=None).stdout)


@pytest.fixture(scope="module")
def planned(lab) -> dict:
    """`labkit plan <pilot> --json`, run once."""
    return json.loads(run(lab, "plan", PID, "--json", columns=None).stdout)


@pytest.fixture(scope="module")
def compared(lab) -> dict:
    """`labkit compare --format json`, run once."""
    return json.loads(run(lab, "compare", "--format", "json", columns=None).stdout)


def analysis_values(data: dict) -> list[str]:
    """The pilot id, the metric names, the decision and the numbers as labkit prints them (from --json)."""
    from labkit.render import _f

    values = [PID, data["decision"], *METRICS]
    for r in data["metrics"]:
        values += [r["arm"], _f(r["mean_control"]), _f(r["mean_treatment"]), _f(r["effect"], "+.4g")]
        values += [_f(r["p_value_adjusted"], ".3g"), f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]"]
    return values


@pytest.mark.parametrize("columns", [80, 100])
def test_analyze_reads_whole_at_80_and_100_columns(lab, analyzed, columns):
    out = run(lab, "analyze", PID, columns=columns).stdout
    check_width(out, columns)
    assert_whole(out, analysis_values(analyzed))
    assert "…" not in out


def test_analyze_piped_is_plain_text_at_full_width(lab, analyzed):
    out = run(lab, "analyze", PID, columns=None).stdout
    assert "\x1b[" not in out and "…" not in out
    assert_whole(out, analysis_values(analyzed))
    from labkit.render import _f

    row = analyzed["metrics"][0]  # one table row stays on one line: its metric, effect and p together
    effect, p = _f(row["effect"], "+.4g"), _f(row["p_value_adjusted"], ".3g")
    assert any(row["metric"] in line and effect in line and p in line for line in out.splitlines()), out


@pytest.mark.parametrize("columns", [80, 100])
def test_list_reads_whole_at_80_and_100_columns(lab, columns):
    out = run(lab, "list", columns=columns).stdout
    check_width(out, columns)
    assert_whole(out, [PID, "pr-linkedin-quarterly-thought-leadership", "customer-service-lab@example.com"])


def test_list_piped_is_one_line_per_pilot(lab):
    out = run(lab, "list", columns=None).stdout
    assert any(PID in line and "customer-service-lab@example.com" in line for line in out.splitlines()), out


@pytest.mark.parametrize("columns", [80, 100])
def test_plan_reads_whole_at_80_and_100_columns(lab, planned, columns):
    from labkit.render import _f

    out = run(lab, "plan", PID, columns=columns).stdout
    check_width(out, columns)
    assert_whole(out, [PID, METRICS[0], _f(planned["required_total"], ","), _f(planned["baseline_mean"])])


@pytest.mark.parametrize("columns", [80, 100])
def test_compare_reads_whole_at_80_and_100_columns(lab, compared, columns):
    out = run(lab, "compare", columns=columns).stdout
    check_width(out, columns)
    (row,) = compared["pilots"]
    assert_whole(out, [PID, METRICS[0], row["decision"], "service", f"{row['exposed']:,}"])
    assert "…" not in out


def test_compare_piped_keeps_each_pilot_on_its_line(lab):
    out = run(lab, "compare", columns=None).stdout
    assert "\x1b[" not in out
    assert any(PID in line and "service" in line for line in out.splitlines()), out


# ------------------------------------------------------------------ --format table|json|csv, --json an alias


def read_csv(text: str) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def same(cell: str, value) -> bool:
    """A CSV cell against the JSON value it stands for: empty for null, exact for numbers."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == ("true" if value else "false")
    if isinstance(value, (int, float)):
        return float(cell) == value
    if isinstance(value, (dict, list)):
        return json.loads(cell) == value
    return cell == str(value)


def test_analyze_formats_agree_and_json_is_an_alias(lab, analyzed):
    data = json.loads(run(lab, "analyze", PID, "--format", "json", columns=None).stdout)
    assert analyzed["metrics"] == data["metrics"]  # --json is --format json
    rows = read_csv(run(lab, "analyze", PID, "--format", "csv", columns=None).stdout)
    assert len(rows) == len(data["metrics"]) == 2  # one row per metric and arm
    for row, want in zip(rows, data["metrics"]):
        assert row["pilot"] == PID and row["decision"] == data["decision"]
        for key, value in want.items():
            assert same(row[key], value), (key, row[key], value)
    assert METRICS[0] in run(lab, "analyze", PID, "--format", "table", columns=None).stdout


def test_plan_formats_agree_and_json_is_an_alias(lab, planned):
    data = json.loads(run(lab, "plan", PID, "--format", "json", columns=None).stdout)
    assert planned == data  # --json is --format json
    rows = read_csv(run(lab, "plan", PID, "--format", "csv", columns=None).stdout)
    assert [r["arm"] for r in rows] == list(data["required_by_arm"]) == ["control", "fast"]  # one row per arm
    for row in rows:
        assert int(row["required"]) == data["required_by_arm"][row["arm"]]
        for key, value in data.items():
            if not isinstance(value, (dict, list)):
                assert same(row[key], value), (key, row[key], value)


@settings(max_examples=150, deadline=None)
# no CR: Python's csv writer quotes only what is in its "\n" line terminator, and pilot text cannot hold one
# (labkit._validation.bad_text refuses U+000B-U+001F)
@given(text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r"), max_size=16))
def test_a_csv_text_cell_never_starts_a_formula_and_a_number_stays_a_number(text):
    """The CSV of `list`, `analyze` and `plan` (labkit.render.print_csv): text that starts with = + - @, a
    tab or a carriage return, which a spreadsheet runs as a formula (CSV injection), reads back with a
    leading apostrophe; other text as written; a negative number stays a number."""
    import contextlib
    import io

    from labkit.render import FORMULA_START, print_csv

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_csv([{"owner": text, "effect": -0.05, "p": 0.5}])
    (row,) = read_csv(out.getvalue())
    assert row["owner"] == ("'" + text if text.startswith(FORMULA_START) and text not in ("+", "-") else text)
    assert not row["owner"].startswith(("=", "+", "-", "@", "\t", "\r")) or row["owner"] in ("+", "-")
    assert row["effect"] == "-0.05" and row["p"] == "0.5"


def test_list_formats_agree_and_json_is_an_alias(lab):
    data = json.loads(run(lab, "list", "--format", "json", columns=None).stdout)
    assert json.loads(run(lab, "list", "--json", columns=None).stdout) == data
    rows = read_csv(run(lab, "list", "--format", "csv", columns=None).stdout)
    assert rows == data["pilots"]  # one row per pilot, every field a string
    assert sorted(r["pilot"] for r in rows) == sorted([PID, "pr-linkedin-quarterly-thought-leadership"])


# ------------------------------------------------------------------ every width, in process


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(40, 220),  # from 40: an indented key (12) and the longest value (28) fit a line
    rows=st.lists(
        st.fixed_dictionaries(
            {key: st.text("abcdefghij-.@0123456789", min_size=1, max_size=28) for key in ("pilot", "owner")}
            | {
                key: st.sampled_from(["service", "ready to analyse", "running (day 3 of 60)", "-"])
                for key in ("function", "channel", "stage", "status", "decision")
            }  # fmt: skip
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_list_keeps_every_value_whole_at_every_width(width, rows):
    """For any rows whose values fit a stacked line, at any width from 40: each value whole, no line wider."""
    import io

    from labkit.listing import render_rows

    out = io.StringIO()
    render_rows(rows, out=out, width=width)
    text = out.getvalue()
    check_width(text, width)
    for row in rows:
        assert_whole(text, [str(v) for v in row.values()])


def test_analyze_keeps_every_value_whole_at_every_width(lab, analyzed):
    """`render_analysis` at every width from 60 to 160 columns (COLUMNS, as rich reads it)."""
    import contextlib
    import io

    import labkit
    from labkit.render import render_analysis

    result = labkit.analyze(
        labkit.load_pilot(
            lab / "experiments" / f"{PID}.yaml", lab=labkit.load_lab(lab / "configs" / "lab.yaml")
        )
    )
    values = analysis_values(analyzed)
    saved = os.environ.get("COLUMNS")
    try:
        for width in range(60, 161, 5):
            os.environ["COLUMNS"] = str(width)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                render_analysis(result)
            check_width(out.getvalue(), width)
            assert_whole(out.getvalue(), values)
    finally:
        os.environ.pop("COLUMNS", None) if saved is None else os.environ.__setitem__("COLUMNS", saved)


LONG_PILOTS = ("marketing-ambassadors-by-community", "pr-linkedin-quarterly-thought-leadership")


def _outcomes():
    from labkit.pipeline import Outcome

    return [
        Outcome(pilot=p, function="marketing", status="FINISHED", decision="inconclusive", recommendation="extend",
                run_id=f"{i}" * 32, seconds=12.3, folder=f"results/{p}/runs/20261206T091721459745Z")
        for i, p in enumerate(LONG_PILOTS, start=1)
    ]  # fmt: skip


@pytest.mark.parametrize("columns", [80, 100, None])
def test_the_run_summary_reads_whole_at_80_and_100_columns_and_piped(columns, monkeypatch):
    """`labkit run`'s summary: at 80 and 100 columns (and piped: full width, plain) every pilot id, status,
    decision, recommendation, the run ids and the folders are whole. The table (or its stacked blocks) fits
    the width; the run and folder lines after it are one line each by design, never broken inside an id or a
    path (the terminal folds them)."""
    import io

    from rich.console import Console

    from labkit.pipeline import render_outcomes

    out = io.StringIO()
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
        monkeypatch.setattr("sys.stdout", out)
        render_outcomes(_outcomes())
    else:
        render_outcomes(_outcomes(), console=Console(file=out, width=columns, force_terminal=True))
    text = out.getvalue()
    if columns:
        check_width(
            "\n".join(line for line in text.splitlines() if not line.startswith(LONG_PILOTS)), columns
        )
    else:
        assert "\x1b[" not in text
    assert "…" not in text
    values = [*LONG_PILOTS, "FINISHED", "inconclusive", "extend", "1" * 32, "2" * 32]
    assert_whole(text, values + [f"results/{p}/runs/20261206T091721459745Z" for p in LONG_PILOTS])


@pytest.mark.parametrize("columns", [80, 100])
def test_assign_reads_whole_at_80_and_100_columns(lab, columns):
    """`labkit assign`'s line, drawn anew (--force) and kept: wrapped at spaces, so the pilot id, the counts
    and the file's path are whole at 80 and 100 columns."""
    meta = json.loads((lab / "results" / PID / "assignment.json").read_text())
    total = f"{meta['assigned']:,}"
    path = f"results/{PID}/assignment.parquet"
    drawn = run(lab, "assign", PID, "--force", columns=columns).stdout
    kept = run(lab, "assign", PID, columns=columns).stdout
    for out in (drawn, kept):
        check_width(out, columns)
        assert_whole(out, [PID, total, path])
    assert "kept the existing assignment" in kept
