"""A CSV source with a header and no rows means zero rows, not an error (RELIABILITY.md case 46).

With no value to infer types from, DuckDB reads every column of such a file as text, and the analysis
refused it ("type string is not a timestamp"). Now the columns a metric reads get the types it needs
(``labkit.data.sources.Engine.no_rows``, ``labkit.data.query._declared``): an events file with no
events yet gives 0 for count, sum and any; an outcomes file with no rows leaves every customer missing.
Through ``labkit analyze --json`` as a user runs it (a subprocess).
"""

from __future__ import annotations

import json
import os

import cli_fork
import pyarrow as pa
import pyarrow.parquet as pq

import labkit
from labkit.assignment import assign
from labkit.data.sources import Engine

from conftest import DROP, pilot_yaml

LAB = """\
lab: empty
functions: [service]
channels: [twitter]
stages: [retention]
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
  events: {format: csv, path: data/events.csv, timestamp: ts}
"""
PILOT = pilot_yaml(
    title="No events yet",
    hypothesis={"statement": "Replies rise.", "metric": "replies", "direction": "increase", "mde": {"relative": 0.2}},
    metrics=[
        {"name": "replies", "type": "mean", "source": "events", "event": {"column": "kind", "equals": "reply"},
         "aggregate": "count", "window_days": 14, "cuped": True},
        {"name": "spent", "type": "mean", "source": "events", "event": {"column": "code", "equals": 3},
         "column": "value", "aggregate": "sum", "window_days": 14},
        {"name": "any_flag", "type": "proportion", "source": "events", "event": {"column": "flag", "equals": True},
         "aggregate": "any", "window_days": 14},
        {"name": "spend", "type": "mean", "source": "outcomes", "column": "spend"},
    ],
    **{"cohort.where": DROP, "cohort.max_size": 100},
)  # fmt: skip


def test_header_only_csv_files_are_zero_rows_through_the_cli(tmp_path):
    for folder in ("configs", "experiments", "data"):
        (tmp_path / folder).mkdir()
    (tmp_path / "configs" / "lab.yaml").write_text(LAB)
    (tmp_path / "experiments" / "p.yaml").write_text(PILOT)
    ids = [f"C-{i:03d}" for i in range(60)]
    pq.write_table(pa.table({"customer_id": ids}), tmp_path / "data" / "customers.parquet")
    (tmp_path / "data" / "events.csv").write_text("customer_id,ts,kind,code,flag,value\n\n")
    (tmp_path / "data" / "outcomes.csv").write_text("customer_id,spend\r\n")
    lab = labkit.load_lab(tmp_path)
    engine = Engine.for_lab(lab)
    try:
        assert engine.no_rows("events") and engine.no_rows("outcomes") and not engine.no_rows("customers")
    finally:
        engine.close()
    assign(labkit.load_pilot("p", lab=lab))

    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_DEBUG", "LABKIT_LAB")}
    done = cli_fork.run(["analyze", "p", "--json"], tmp_path, env, timeout=120)  # a process of its own
    assert done.returncode == 0, done.stderr
    metrics = {m["metric"]: m for m in json.loads(done.stdout)["metrics"]}
    for name in ("replies", "spent", "any_flag"):  # no event: 0 for everyone, nobody missing
        m = metrics[name]
        assert (m["mean_control"], m["mean_treatment"]) == (0.0, 0.0), name
        assert (m["n_control"], m["n_treatment"]) == (30, 30), name
        assert (m["missing_control"], m["missing_treatment"]) == (0, 0), name
    spend = metrics["spend"]  # no row: every customer missing
    assert (spend["missing_control"], spend["missing_treatment"]) == (30, 30)
    assert (spend["n_control"], spend["n_treatment"]) == (0, 0)


def test_a_file_with_rows_or_without_a_header_is_not_taken_for_empty(tmp_path):
    from labkit.data.rawfiles import header_only

    cases = {
        "header.csv": ("a,b\n", True),
        "blank-after.csv": ("a,b\n\n  \n", True),
        "crlf.csv": ("a,b\r\n", True),
        "row.csv": ("a,b\n1,2\n", False),
        "row-after-blank.csv": ("a,b\n\n1,2", False),
        "nothing.csv": ("", False),
    }
    for name, (text, empty) in cases.items():
        (tmp_path / name).write_text(text)
        assert header_only(tmp_path / name) is empty, name
