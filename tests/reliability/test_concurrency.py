"""Eight `labkit run` processes at once (RELIABILITY.md case 29; issue #7 "Concurrency and load").

Three rounds of eight real ``labkit run`` processes in one lab: on a *fresh* sqlite store (no
``results/mlflow.db`` yet: MLflow's first-time table creation races, and raw MLflow lost 7 of 8 runs),
on the same store once it is *warm*, and against a real ``mlflow server`` on 127.0.0.1 (the session
fixture of tests/mlflow_server.py). Each process imports everything first, then waits at a barrier
file, so all eight open the store and record in the same moment. Four pilots, two processes each: two
concurrent runs of one pilot must both be recorded and agree on one ``labkit.latest``.

Each round asserts, from the store itself: every run recorded exactly once (one MLflow run per run
key, its id in ``recorded.json``), FINISHED, with all its metrics (``metrics_from_results`` of its
results.json), its artifacts and its datasets; no "database is locked" or traceback in any output;
nothing RUNNING. (This replaced a Tracker-level test of eight recorders without notebooks: the same
race, through less of the product, at the cost of eight more MLflow imports.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import OK_ARTIFACTS, FaultLab, make_lab, running
from test_pipeline import _cli_env, output

from labkit.tracking import metrics_from_results

PILOTS = ("c-1", "c-2", "c-3", "c-4")
PROCESSES = [pid for pid in PILOTS for _ in range(2)]  # eight: two per pilot

# ``labkit run`` as the console script runs it (labkit.cli.main), after the imports and a barrier.
LAUNCH = """\
import sys, time
from pathlib import Path
import mlflow, papermill, labkit.cli, labkit.pipeline, labkit.tracking  # noqa: F401 - before the barrier
ready, barrier = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
deadline = time.monotonic() + 300
while not barrier.exists():
    if time.monotonic() > deadline:
        sys.exit("the barrier never opened")
    time.sleep(0.01)
sys.exit(labkit.cli.main(sys.argv[3:]))
"""


def eight_at_once(lab: FaultLab, name: str, **env: str) -> list[subprocess.CompletedProcess]:
    """Eight `labkit run <pilot>` released together by a barrier file; their completed processes."""
    sync = lab.root.parent / f"{lab.root.name}-{name}"
    sync.mkdir()
    barrier = sync / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(sync / f"ready-{i}"), str(barrier), "run", pid],
            cwd=lab.root,
            env=_cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i, pid in enumerate(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 300
        while len(list(sync.glob("ready-*"))) < len(procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise AssertionError(f"the {name} processes never all got ready")
            time.sleep(0.02)
        barrier.touch()
        done = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
        return done
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, mlflow_server) -> dict:
    lab = make_lab(tmp_path_factory.mktemp("concurrency") / "lab", dict.fromkeys(PILOTS))
    assert not (lab.root / "results" / "mlflow.db").exists()
    got = {}
    for name, uri, env in (
        ("fresh", None, {}),
        ("warm", None, {}),
        ("server", str(mlflow_server), {"LABKIT_TRACKING_URI": str(mlflow_server)}),
    ):
        before = {pid: set(lab.run_dirs(pid)) for pid in PILOTS}
        procs = eight_at_once(lab, name, **env)
        folders = [d for pid in PILOTS for d in lab.run_dirs(pid) if d not in before[pid]]
        got[name] = {"procs": procs, "folders": folders, "uri": uri, "runs": lab.runs(uri=uri)}
    return got | {"lab": lab}


@pytest.mark.parametrize("name", ["fresh", "warm", "server"])
def test_eight_concurrent_runs_are_each_recorded_once_with_everything(rounds, name):
    lab, got = rounds["lab"], rounds[name]
    uri = got["uri"]
    for proc in got["procs"]:
        text = output(proc)
        assert proc.returncode == 0, text[-3000:]
        assert "database is locked" not in text and "Traceback" not in text, text[-3000:]
    assert len(got["folders"]) == 8
    by_id = {r.info.run_id: r for r in got["runs"]}
    keys = [r.data.tags["labkit.run_key"] for r in got["runs"]]
    assert len(keys) == len(set(keys)), "a run key was recorded twice"
    for folder in got["folders"]:
        pid = folder.parent.parent.name
        recorded = json.loads((folder / "recorded.json").read_text())
        run = by_id[recorded["run_id"]]
        assert run.data.tags["labkit.run_key"] == recorded["run_key"] == f"{pid}/{folder.name}"
        assert run.info.status == "FINISHED"
        results = json.loads((folder / "results.json").read_text())
        assert run.data.metrics == pytest.approx(metrics_from_results(results), rel=1e-12)
        assert lab.artifacts(run, uri=uri) == OK_ARTIFACTS | {f"pilot/{pid}.yaml"}
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"customers", "outcomes", "events"}
    assert running(lab, uri) == []


@pytest.mark.parametrize("name", ["fresh", "warm", "server"])
def test_concurrent_runs_of_one_pilot_agree_on_one_latest_run(rounds, name):
    runs = rounds[name]["runs"]
    for pid in PILOTS:
        mine = [r for r in runs if r.data.tags["labkit.pilot"] == pid]
        assert len(mine) == {"fresh": 2, "warm": 4, "server": 2}[name]
        newest = max(mine, key=lambda r: (r.info.start_time, r.info.end_time or 0, r.info.run_id))
        assert [r.info.run_id for r in mine if r.data.tags["labkit.latest"] == "true"] == [newest.info.run_id]


def test_the_fresh_store_was_created_by_the_round(rounds):
    # the first round really started on no store: its eight runs are the store's first eight
    fresh = {json.loads((f / "recorded.json").read_text())["run_id"] for f in rounds["fresh"]["folders"]}
    oldest = sorted(rounds["warm"]["runs"], key=lambda r: r.info.start_time)[:8]
    assert {r.info.run_id for r in oldest} == fresh
    assert Path(rounds["lab"].root / "results" / "mlflow.db").is_file()
