"""Eight `labkit run` processes at once (RELIABILITY.md case 29; issue #7 "Concurrency and load").

Three rounds of eight ``labkit run`` processes in one lab: on a *fresh* sqlite store (no
``results/mlflow.db`` yet: MLflow's first-time table creation races, and raw MLflow lost 7 of 8 runs),
on the same store once it is *warm*, and against a real ``mlflow server`` on 127.0.0.1 (the session
fixture of tests/mlflow_server.py). Four pilots, two processes each: two concurrent runs of one pilot
must both be recorded and agree on one ``labkit.latest``.

Each of the eight is forked by tests/cli_fork.py's server, which imported labkit, MLflow, papermill and
what `labkit run` imports on its way once: a process of its own (its own sqlite connections, store lock,
MLflow client and kernel) running ``labkit.cli.main(["run", <pilot>])`` as the console script does, with
the round's environment, its stdout and stderr in files. All eight wait on a shared lock of one file that
the test holds exclusively until the eighth is waiting, so they open the store and record in the same
moment. (Eight interpreters each importing the same modules cost ~5 CPU-s apiece before the barrier, and the
imports are not what this case is about: the race is in opening and writing the store. Raw MLflow forked
the same way still lost 7 of 8 runs on a fresh store.)

Each round asserts, from the store itself: every run recorded exactly once (one MLflow run per run
key, its id in ``recorded.json``), FINISHED, with all its metrics (``metrics_from_results`` of its
results.json), its artifacts and its datasets; no "database is locked" or traceback in any output;
nothing RUNNING. (This replaced a Tracker-level test of eight recorders without notebooks: the same
race, through less of the product.)
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import time
from pathlib import Path

import cli_fork
import pytest
from test_faults import OK_ARTIFACTS, FaultLab, make_lab, running
from test_pipeline import _cli_env, output

from labkit.tracking import metrics_from_results

PILOTS = ("c-1", "c-2", "c-3", "c-4")
PROCESSES = [pid for pid in PILOTS for _ in range(2)]  # eight: two per pilot
ROUND_TIMEOUT_S = 300

# One of the eight: says it is waiting (its own file beside the barrier), waits for the shared lock of the
# barrier file — granted to all eight at once when the test lets go of its exclusive one —, then runs
# ``labkit run <pilot>`` as the console script does.
RUNNER = """\
import fcntl, os, sys
import labkit.cli
barrier, pilot = sys.argv[1], sys.argv[2]
held = os.open(barrier, os.O_RDONLY)
open(f"{barrier}.{os.getpid()}", "w").close()
fcntl.flock(held, fcntl.LOCK_SH)
sys.exit(labkit.cli.main(["run", pilot]))
"""


def eight_at_once(lab: FaultLab, name: str, **env: str) -> list[subprocess.CompletedProcess]:
    """Eight `labkit run <pilot>` processes released together; their exit codes and outputs."""
    barrier = lab.root.parent / f"{lab.root.name}-{name}.barrier"
    barrier.touch()
    with open(barrier) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [cli_fork.python(RUNNER, [str(barrier), pid], lab.root, _cli_env(env)) for pid in PROCESSES]
        deadline = time.monotonic() + 120
        while len(list(barrier.parent.glob(f"{barrier.name}.*"))) < len(procs):
            ended = [p.args for p in procs if p.poll() is not None]
            assert not ended and time.monotonic() < deadline, f"not all eight reached the barrier: {ended}"
            time.sleep(0.02)
    # the lock is let go: the eight run
    done = []
    for pid, proc in zip(PROCESSES, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=ROUND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"the {name} round did not end within {ROUND_TIMEOUT_S} s") from None
        done.append(subprocess.CompletedProcess(["labkit", "run", pid], proc.returncode, out, err))
    return done


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
