"""Eight `labkit run` processes at once (RELIABILITY.md case 29; issue #7 "Concurrency and load").

Three rounds of eight ``labkit run`` processes in one lab: on a *fresh* sqlite store (no
``results/mlflow.db`` yet: MLflow's first-time table creation races, and raw MLflow lost 7 of 8 runs),
on the same store once it is *warm*, and against a real ``mlflow server`` on 127.0.0.1 (the session
fixture of tests/mlflow_server.py). Four pilots, two processes each: two concurrent runs of one pilot
must both be recorded and agree on one ``labkit.latest``.

One launcher process imports labkit, MLflow, papermill and what `labkit run` imports on its way, once
(tests/cli_fork.py's ``PREIMPORTS``, which also freezes that heap);
for each round it forks the eight: each child is its own process (its own sqlite connections, store lock,
MLflow client and kernel) running ``labkit.cli.main(["run", <pilot>])`` as the console script does, with
the round's environment, its stdout and stderr in files. All eight wait on one pipe that the launcher
closes once the last is forked, so they open the store and record in the same moment. (Eight interpreters
each importing the same modules cost ~5 CPU-s apiece before the barrier, and the imports are not what this
case is about: the race is in opening and writing the store. Raw MLflow forked the same way still lost 7
of 8 runs on a fresh store.)

Each round asserts, from the store itself: every run recorded exactly once (one MLflow run per run
key, its id in ``recorded.json``), FINISHED, with all its metrics (``metrics_from_results`` of its
results.json), its artifacts and its datasets; no "database is locked" or traceback in any output;
nothing RUNNING. (This replaced a Tracker-level test of eight recorders without notebooks: the same
race, through less of the product.)
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest
from cli_fork import PREIMPORTS
from test_faults import OK_ARTIFACTS, FaultLab, make_lab, running
from test_pipeline import _cli_env, output

from labkit.tracking import metrics_from_results

PILOTS = ("c-1", "c-2", "c-3", "c-4")
PROCESSES = [pid for pid in PILOTS for _ in range(2)]  # eight: two per pilot
ROUND_TIMEOUT_S = 300

# The launcher: the imports once; then, for each round it is sent (a line of JSON on stdin: the round's
# folder and environment), one forked child per process of PROCESSES, each running ``labkit run <pilot>``
# as the console script does (labkit.cli.main), released together by a pipe; it answers with their exit codes.
LAUNCH = (
    PREIMPORTS
    + """
pilots = sys.argv[1:]
for line in sys.stdin:
    round_ = json.loads(line)
    out = Path(round_["out"])
    assert threading.active_count() == 1, "the launcher must fork from a single thread"
    release, go = os.pipe()
    sys.stdout.flush(), sys.stderr.flush()
    children = {}
    for i, pilot in enumerate(pilots):
        child = os.fork()
        if child == 0:
            os.close(go)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, name in ((1, f"{i}.out"), (2, f"{i}.err")):
                os.dup2(os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            os.environ.update(round_["env"])
            os.read(release, 1)  # blocks until the launcher closes its end: every child is forked
            sys.exit(labkit.cli.main(["run", pilot]))
        children[child] = i
    os.close(go), os.close(release)
    codes = {}
    for _ in children:
        child, status = os.wait()
        codes[children[child]] = os.waitstatus_to_exitcode(status)
    print(json.dumps(codes), flush=True)
"""
)


class Launcher:
    """The launcher process of a lab; :meth:`eight_at_once` runs one round through it."""

    def __init__(self, lab: FaultLab):
        self.lab = lab
        self.stderr = lab.root.parent / f"{lab.root.name}-launcher.err"
        with open(self.stderr, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, *PROCESSES], cwd=lab.root, env=_cli_env({}),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip

    def eight_at_once(self, name: str, **env: str) -> list[subprocess.CompletedProcess]:
        """Eight `labkit run <pilot>` processes released together; their exit codes and outputs."""
        out = self.lab.root.parent / f"{self.lab.root.name}-{name}"
        out.mkdir()
        self.proc.stdin.write(json.dumps({"out": str(out), "env": env}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], ROUND_TIMEOUT_S)[0]:
            raise AssertionError(f"the {name} round did not end within {ROUND_TIMEOUT_S} s")
        answer = self.proc.stdout.readline()
        if not answer:
            self.proc.wait(timeout=60)
            raise AssertionError(
                f"the launcher ended ({self.proc.returncode}): {self.stderr.read_text()[-3000:]}"
            )
        codes = {int(i): code for i, code in json.loads(answer).items()}
        assert sorted(codes) == list(range(len(PROCESSES))), codes
        return [
            subprocess.CompletedProcess(
                ["labkit", "run", pid],
                codes[i],
                (out / f"{i}.out").read_text(),
                (out / f"{i}.err").read_text(),
            )
            for i, pid in enumerate(PROCESSES)
        ]

    def close(self) -> None:
        stdout, _ = self.proc.communicate(timeout=60)
        stderr = self.stderr.read_text()
        assert self.proc.returncode == 0 and stdout == stderr == "", (self.proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, mlflow_server) -> dict:
    lab = make_lab(tmp_path_factory.mktemp("concurrency") / "lab", dict.fromkeys(PILOTS))
    assert not (lab.root / "results" / "mlflow.db").exists()
    got = {}
    launcher = Launcher(lab)
    try:
        for name, uri, env in (
            ("fresh", None, {}),
            ("warm", None, {}),
            ("server", str(mlflow_server), {"LABKIT_TRACKING_URI": str(mlflow_server)}),
        ):
            before = {pid: set(lab.run_dirs(pid)) for pid in PILOTS}
            procs = launcher.eight_at_once(name, **env)
            folders = [d for pid in PILOTS for d in lab.run_dirs(pid) if d not in before[pid]]
            got[name] = {"procs": procs, "folders": folders, "uri": uri, "runs": lab.runs(uri=uri)}
        launcher.close()
    finally:
        if launcher.proc.poll() is None:
            launcher.proc.kill()
            launcher.proc.wait()
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
