"""The effect over time wired through (labkit.over_time): `labkit analyze --over-time` (JSON, table, CSV),
``labkit.analyze(pilot, over_time=True)`` with a look, and `labkit run`, whose default notebook records the
curve as MLflow metric history.

One tiny lab, built once: 300 customers drawn into two arms on 2026-11-01, reply events around a 14-day
window (treated customers reply a little more), and two pilots — ``ev``, whose primary metric is that
event count (no CUPED, so the last day is the analysis itself), and ``tab``, whose primary is a
per-customer table column (no over-time). The statistics per day are tested in tests/stats and
tests/data; here: the shape, the agreement with the plain analysis, and the wiring.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import labkit
from labkit import cli

from conftest import LAB_YAML, pilot_yaml

REPO = Path(__file__).resolve().parents[1]
START = pd.Timestamp("2026-11-01")
WINDOW = 14
N = 300
ROW_KEYS = ["day", "as_of", "metric", "arm", "n_control", "n_treatment", "effect", "ci_low", "ci_high"]
REPLIES = {
    "name": "replies", "type": "mean", "source": "events", "event": {"column": "event_type", "equals": "reply"},
    "aggregate": "count", "window_days": WINDOW,
}  # fmt: skip
CHURNED = {"name": "churned", "type": "proportion", "source": "outcomes", "column": "churned"}


def _pilot(pid: str, primary: str, **overrides) -> str:
    return pilot_yaml(
        id=pid, metrics=[REPLIES, CHURNED], **{"hypothesis.metric": primary, "hypothesis.direction": "increase"},
        **overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory) -> Path:
    """The lab: customers and outcomes, the pilots assigned, then events drawn knowing each one's arm."""
    root = tmp_path_factory.mktemp("over-time-lab").resolve()
    for sub in ("configs", "experiments", "data", "notebooks"):
        (root / sub).mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    shutil.copy(REPO / "notebooks" / "pilot_analysis.ipynb", root / "notebooks" / "pilot_analysis.ipynb")
    rng = np.random.default_rng(16)
    ids = [f"C{i:04d}" for i in range(N)]
    pd.DataFrame({"customer_id": ids, "has_twitter": True}).to_parquet(root / "data" / "customers.parquet")
    pd.DataFrame({"customer_id": ids, "churned": (rng.random(N) < 0.2).astype(int)}).to_csv(
        root / "data" / "outcomes.csv", index=False
    )
    pilots = {
        "ev": _pilot("ev", "replies"),
        "seq": _pilot("seq", "replies", **{"analysis.sequential": True}),
        "tab": _pilot("tab", "churned"),
    }
    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    for pid, text in pilots.items():
        (root / "experiments" / f"{pid}.yaml").write_text(text)
        labkit.assign(labkit.load_pilot(root / "experiments" / f"{pid}.yaml", lab=lab))
    arms = pd.read_parquet(root / "results" / "ev" / "assignment.parquet").set_index("customer_id")["arm"]
    treated = np.array([arms.get(i) == "fast" for i in ids])
    k = rng.poisson(np.where(treated, 2.6, 2.0))
    who = np.repeat(np.arange(N), k)
    seconds = rng.integers(-5 * 86_400, (WINDOW + 5) * 86_400, who.size)
    pd.DataFrame(
        {
            "customer_id": np.asarray(ids)[who],
            "ts": (START + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us]"),
            "event_type": rng.choice(["reply", "reply", "like"], who.size),
        }
    ).to_parquet(root / "data" / "events.parquet", index=False)
    return root


def run_cli(root: Path, *args: str) -> tuple[int, str, str]:
    """``labkit.cli.main`` in this process, stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--lab", str(root), *args])
    return code, out.getvalue(), err.getvalue()


def load(root: Path, pid: str):
    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    return labkit.load_pilot(root / "experiments" / f"{pid}.yaml", lab=lab)


def primary_row(data: dict) -> dict:
    (row,) = [m for m in data["metrics"] if m["role"] == "primary"]
    return row


def test_analyze_over_time_json_has_one_row_per_day_ending_at_the_analysis(lab_root):
    code, out, err = run_cli(lab_root, "analyze", "ev", "--over-time", "--json")
    assert code == 0, err
    data = json.loads(out)
    rows = data["over_time"]
    assert data["over_time_interval"] == "fixed-horizon"
    assert [r["day"] for r in rows] == list(range(1, WINDOW + 1))  # every window closed on day 14
    assert [r["as_of"] for r in rows] == [
        (START + pd.Timedelta(days=d)).date().isoformat() for d in range(1, 15)
    ]
    assert all(list(r) == ROW_KEYS and r["metric"] == "replies" and r["arm"] == "fast" for r in rows)
    want = primary_row(data)
    last = rows[-1]
    assert (last["n_control"], last["n_treatment"]) == (want["n_control"], want["n_treatment"])
    assert last["effect"] == pytest.approx(want["effect"], rel=1e-12, abs=1e-12)
    assert (last["ci_low"], last["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]), rel=1e-9)
    assert rows[0]["effect"] != pytest.approx(last["effect"])  # a curve, not one number repeated

    # asked for only: without --over-time the JSON is the one it always was
    code, plain, _ = run_cli(lab_root, "analyze", "ev", "--json")
    plain = json.loads(plain)
    assert "over_time" not in plain and "over_time_interval" not in plain
    for d in (data, plain):
        d["meta"].pop("analysed_at")
    assert {k: v for k, v in data.items() if not k.startswith("over_time")} == plain
    assert list(data)[-3:] == ["over_time", "over_time_interval", "meta"]


def test_the_terminal_shows_the_days_in_80_columns_and_csv_gives_the_curve(lab_root, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(lab_root, "analyze", "ev", "--over-time")
    assert code == 0, err
    tail = out[out.index("effect over time: replies") :].splitlines()
    assert tail[0] == "effect over time: replies (fixed-horizon, welch-t)"  # 14 days: every day shown
    assert len(tail) == 2 + WINDOW and all(len(line) <= 80 for line in tail)
    assert tail[-1].split()[:3] == ["14", "2026-11-15", "fast"]
    code, out, err = run_cli(lab_root, "analyze", "ev", "--over-time", "--format", "csv")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == ["pilot", *ROW_KEYS] and list(frame.day) == list(range(1, WINDOW + 1))


def test_a_table_metric_says_no_over_time_in_one_line(lab_root):
    code, out, err = run_cli(lab_root, "analyze", "tab", "--over-time")
    assert code == 0, err
    notes = [line for line in out.splitlines() if "over-time" in line]
    assert notes == ["no over-time for 'churned': its per-customer table has no event time"]
    code, out, err = run_cli(lab_root, "analyze", "tab", "--over-time", "--json")
    assert code == 0 and "over_time" not in json.loads(out)  # stdout stays the contract; the note on stderr
    assert err.strip() == notes[0]


def test_a_look_stops_at_its_day_and_sequential_mode_gives_confidence_sequences(lab_root):
    ev = load(lab_root, "ev")
    look = labkit.analyze(ev, as_of="2026-11-08", over_time=True).to_dict()
    assert [r["day"] for r in look["over_time"]] == list(range(1, 8))  # the look at 11-08 is day 7
    assert look["over_time"][-1]["effect"] == pytest.approx(primary_row(look)["effect"], rel=1e-12, abs=1e-12)
    assert labkit.analyze(ev, as_of="2026-11-01", over_time=True).over_time.note.endswith("before day 1")

    seq = labkit.analyze(load(lab_root, "seq"), over_time=True).to_dict()
    assert seq["over_time_interval"] == "confidence sequence"
    last, want = seq["over_time"][-1], primary_row(seq)
    assert (last["ci_low"], last["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]), rel=1e-9)
    fixed = labkit.analyze(ev, over_time=True).to_dict()["over_time"][-1]
    assert last["ci_high"] - last["ci_low"] > fixed["ci_high"] - fixed["ci_low"]


def test_labkit_run_records_the_curve_as_metric_history(lab_root, tmp_path):
    """A real `labkit run` of ``ev`` (the default notebook, its ``over_time`` parameter left at True) in a
    copy of the lab: results.json carries the rows, MLflow a point per day at step = day."""
    from mlflow import MlflowClient

    root = tmp_path / "lab"
    shutil.copytree(lab_root, root)
    drop = {"LABKIT_LAB", "LABKIT_TRACKING_URI", "COLUMNS", "LINES"}
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "labkit.cli", "run", "ev"], cwd=root, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (folder,) = (root / "results" / "ev" / "runs").iterdir()
    results = json.loads((folder / "results.json").read_text())
    rows = results["over_time"]
    assert [r["day"] for r in rows] == list(range(1, WINDOW + 1))
    assert (folder / "effect_over_time.png").is_file()

    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    client = MlflowClient(lab.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(lab.spec.mlflow_experiment).experiment_id])
    history = sorted(
        client.get_metric_history(run.info.run_id, "over_time.replies.fast.effect"), key=lambda m: m.step
    )
    assert [m.step for m in history] == [r["day"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["effect"] for r in rows], rel=1e-12, abs=1e-12)
    midnight = [dt.datetime.fromisoformat(r["as_of"]).replace(tzinfo=dt.UTC).timestamp() * 1000 for r in rows]
    assert [m.timestamp for m in history] == midnight
    assert history[-1].value == pytest.approx(primary_row(results)["effect"], rel=1e-12, abs=1e-12)


def test_which_primary_metrics_have_no_over_time_and_the_days_the_terminal_shows(lab_root, tmp_path):
    from labkit.over_time import shown_days, unavailable

    lab = labkit.load_lab(lab_root / "configs" / "lab.yaml")
    cases = {
        "cluster": (
            {"cohort.unit_column": "account_id"},
            "no over-time for 'replies': a cluster pilot's daily intervals need cluster totals (not computed yet)",
        ),
        "top": (
            {"metrics.0": REPLIES | {"aggregate": "max", "column": "value"}},
            "no over-time for 'replies': its 'max' aggregate does not add up day by day (count, sum, any do)",
        ),
        "ok": ({}, None),
    }
    for pid, (overrides, want) in cases.items():
        path = tmp_path / f"why-{pid}.yaml"  # beside the lab: the shared lab stays as built
        path.write_text(_pilot(f"why-{pid}", "replies", **overrides))
        assert unavailable(labkit.load_pilot(path, lab=lab)) == want, pid
    assert shown_days(list(range(1, 15))) == list(range(1, 15))
    assert shown_days(list(range(1, 31))) == [1, 7, 14, 21, 28, 30]
