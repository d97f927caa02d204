"""`labkit run` end to end: a pilot YAML through the lab's papermill notebook into one MLflow run.

Real ipykernel kernels, real sqlite stores, a real `mlflow server` (the session fixture ``mlflow_server``);
no mocks. A tiny lab is built once (seeded customers parquet with ids, emails and handles, outcomes csv,
events parquet; every pilot but ``unassigned`` assigned with ``labkit.assign``; the repo's
``notebooks/pilot_analysis.ipynb`` and the fixture notebooks of ``tests/notebooks`` copied in), then copied
into one lab folder per scenario, so that each scenario has its own MLflow store, its own ``lab.yaml`` and
its own kernels (labkit starts every kernel in the lab root, which is how "no kernel left" is checked).

The scenarios are sequences of `labkit` commands, each its own process, as a user types them, at the
80 columns rich uses for a pipe: the history's first batch a new ``python -m labkit.cli`` interpreter, the
others forked from the pre-imported fork server of tests/cli_fork.py (the same command in a process of its
own, without ~3 CPU-s of imports each; so are the commands of the tests/reliability modules that import
these helpers). They run two at a time in worker threads from the module fixture ``scenarios`` (each is
~20-50 s of notebooks on a 2-core machine: one after the other the module takes twice as long); each test
waits for the scenario it reads:

- ``history``: ``main`` (default notebook) run as written, after a comments-only edit, after an MDE change;
  its first run is the parallel batch ``main``, ``bat-1`` (default notebook), ``bat-ok`` (ok.ipynb) and
  ``bat-exit`` (exits_early.ipynb) with ``--workers 2``, read by the batch tests as it stood then
- ``server``: ``srv`` through the `mlflow server`, then with the server unreachable, then ``--record-only``
  twice
- ``signals``: SIGKILL to a ``labkit run`` of sleeps.ipynb mid-cell, then a new ``labkit run`` (``k-after``,
  ok.ipynb) that sweeps the SIGKILLed run

A cell that raises, a kernel that dies, a hung cell (RELIABILITY #21-23) and SIGINT/SIGTERM to `labkit run`
(#27) are tests/reliability/test_faults.py's: one batch there carries every fault, through the same
``run_batch`` a single pilot goes through (a pool of one), so no scenario here repeats them.

The preflight refusals and ``labkit analyze --json`` call ``labkit.cli.main`` in this process instead (the
same code path, without a new interpreter's ~6 s of imports).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cli_fork
import numpy as np
import pandas as pd
import psutil
import pytest
from mlflow_server import free_port
from processes import gone

import labkit
from labkit import cli
from labkit.data.sources import file_digest
from labkit.privacy import scan_for_identifiers
from labkit.tracking import flatten_params, look_stamp, metrics_from_results

from conftest import LAB_YAML
from conftest import pilot_yaml as default_pilot_yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURE_NOTEBOOKS = Path(__file__).parent / "notebooks"
BASE_ENV = dict(os.environ)  # what every labkit subprocess starts from (threads must not race on os.environ)
N_CUSTOMERS = 400
START = pd.Timestamp("2026-11-01")
BUDGET = {"cost": 1000, "value_per_unit": 50}
DEFAULT_ARTIFACTS = {
    "results.json",
    "report.html",  # the notebook without code (tests/test_notebooks.py)
    "effects.csv",  # every (metric, arm) row: the per-arm detail as a table (labkit.tracking.effects_csv)
    "notebook/pilot_analysis.ipynb",
    "notebook/pilot_analysis.html",
    "figures/primary_effect.png",
    "figures/other_effects.png",
}
DEFAULT_PILOTS = ("main", "srv", "bat-1")
FIXTURE_PILOTS = {
    "bat-ok": "ok",
    "bat-exit": "exits_early",
    "k-kill": "sleeps",
    "k-after": "ok",
    "bad-noparams": "no_parameters",
}
BATCH = ("main", "bat-1", "bat-ok", "bat-exit")  # the first run of `main`


# ------------------------------------------------------------------------------------------ the labs


def pilot_yaml(pid: str, *, notebook: str | None = None) -> str:
    """The default pilot (tests/pilots.py) with a budget, and a notebook when given."""
    return default_pilot_yaml(id=pid, budget=BUDGET, **({"notebook": notebook} if notebook else {}))


class PipelineLab:
    """One lab folder and ways to read what runs left in it (its sqlite store, or a server)."""

    def __init__(self, root: Path, experiment: str, customers: pd.DataFrame):
        self.root = root
        self.experiment = experiment
        self.customers = customers
        self._clients: dict = {}

    @property
    def sqlite_uri(self) -> str:
        return f"sqlite:///{self.root / 'results' / 'mlflow.db'}"

    def pilot(self, pid: str):
        lab = labkit.load_lab(self.root / "configs" / "lab.yaml")
        return labkit.load_pilot(self.root / "experiments" / f"{pid}.yaml", lab=lab)

    def write_pilot(self, pid: str, text: str) -> None:
        (self.root / "experiments" / f"{pid}.yaml").write_text(text)

    def client(self, uri: str | None = None):
        from mlflow import MlflowClient

        uri = uri or self.sqlite_uri
        if uri not in self._clients:
            self._clients[uri] = MlflowClient(tracking_uri=uri)
        return self._clients[uri]

    def runs(self, pid: str | None = None, *, uri: str | None = None) -> list:
        """The pilot's runs (every run of the lab's experiment without ``pid``), oldest first."""
        if uri is None and not (self.root / "results" / "mlflow.db").is_file():
            return []
        client = self.client(uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return []
        query = f"tags.`labkit.pilot` = '{pid}'" if pid else ""
        found = client.search_runs([exp.experiment_id], filter_string=query, max_results=1000)
        return sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))

    def artifacts(self, run, *, uri: str | None = None, path: str | None = None) -> set[str]:
        out = set()
        for item in self.client(uri).list_artifacts(run.info.run_id, path):
            out |= self.artifacts(run, uri=uri, path=item.path) if item.is_dir else {item.path}
        return out

    def download(self, run, artifact: str, *, uri: str | None = None) -> Path:
        from mlflow.artifacts import download_artifacts

        target = self.root.parent / f"{self.root.name}-downloads" / uuid.uuid4().hex
        target.mkdir(parents=True)
        path = download_artifacts(
            run_id=run.info.run_id, artifact_path=artifact, dst_path=str(target),
            tracking_uri=uri or self.sqlite_uri,
        )  # fmt: skip
        return Path(path)

    def run_dirs(self, pid: str) -> list[Path]:
        folder = self.root / "results" / pid / "runs"
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def store_state(self) -> tuple[str | None, int]:
        """sha256 of mlflow.db (None when absent) and its number of runs: 'the store is unchanged'."""
        db = self.root / "results" / "mlflow.db"
        digest = hashlib.sha256(db.read_bytes()).hexdigest() if db.is_file() else None
        return digest, len(self.runs())


def build_data(root: Path) -> pd.DataFrame:
    """Seeded CRM extracts: customers (ids, emails, handles) parquet, outcomes csv, events parquet."""
    rng = np.random.default_rng(20261101)
    n = N_CUSTOMERS
    ids = [f"CU-{7000 + i}-{'ABCDEFGHJK'[i % 10]}Q" for i in range(n)]
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"ann.lee.{i}@example.org" for i in range(n)],
            "twitter_handle": [f"@annlee{i:x}z" for i in range(n)],
            "has_twitter": rng.random(n) < 0.9,
            "segment": rng.choice(["consumer", "smb"], n),
        }
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    customers.to_parquet(root / "data" / "customers.parquet", index=False)
    pd.DataFrame({"customer_id": ids, "churned": (rng.random(n) < 0.2).astype(int)}).to_csv(
        root / "data" / "outcomes.csv", index=False
    )
    k = rng.poisson(2.0, n)
    who = np.repeat(np.arange(n), k)
    seconds = rng.integers(-30 * 86_400, 30 * 86_400, who.size)
    pd.DataFrame(
        {
            "customer_id": np.asarray(ids)[who],
            "ts": (START + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us]"),
            "event_type": rng.choice(["reply", "like"], who.size),
        }
    ).to_parquet(root / "data" / "events.parquet", index=False)
    return customers


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The lab every scenario copies: data, notebooks, the pilots, all assigned but ``unassigned``."""
    root = tmp_path_factory.mktemp("template").resolve()
    (root / "configs").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "experiments").mkdir()
    (root / "notebooks" / "fixtures").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "pilot_analysis.ipynb", root / "notebooks" / "pilot_analysis.ipynb")
    for nb in FIXTURE_NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(nb, root / "notebooks" / "fixtures" / nb.name)
    (root / "notebooks" / "fixtures" / "plain_text.ipynb").write_text("these are notes, not a notebook\n")
    customers = build_data(root)
    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    pilots = {pid: pilot_yaml(pid) for pid in DEFAULT_PILOTS}
    pilots |= {
        pid: pilot_yaml(pid, notebook=f"notebooks/fixtures/{nb}.ipynb") for pid, nb in FIXTURE_PILOTS.items()
    }
    pilots["bad-text"] = pilot_yaml("bad-text", notebook="notebooks/fixtures/plain_text.ipynb")
    for pid, text in pilots.items():
        (root / "experiments" / f"{pid}.yaml").write_text(text)
        labkit.assign(labkit.load_pilot(root / "experiments" / f"{pid}.yaml", lab=lab))
    (root / "experiments" / "unassigned.yaml").write_text(pilot_yaml("unassigned"))
    assert not (root / "results" / "mlflow.db").exists()
    return root, customers


def clone(template, tmp_path_factory, name: str, lab_yaml_extra: str = "") -> PipelineLab:
    """A copy of the template lab with its own MLflow experiment (a fresh store is made by the first run)."""
    source, customers = template
    root = tmp_path_factory.mktemp(name).resolve()
    shutil.copytree(source, root, dirs_exist_ok=True)
    experiment = f"pipeline-{name}-{uuid.uuid4().hex[:8]}"  # unique on the session's shared server too
    text = LAB_YAML.replace("mlflow_experiment: tiny-pilots", f"mlflow_experiment: {experiment}")
    (root / "configs" / "lab.yaml").write_text(text + lab_yaml_extra)
    return PipelineLab(root, experiment, customers)


# ------------------------------------------------------------------------------------ running labkit


def _cli_env(env: dict[str, str]) -> dict[str, str]:
    """The test's environment without lab and store overrides or a terminal size (a pipe: 80 columns)."""
    drop = {"LABKIT_LAB", "LABKIT_TRACKING_URI", "COLUMNS", "LINES"}
    out = {k: v for k, v in BASE_ENV.items() if k not in drop and not k.startswith("MLFLOW_HTTP_REQUEST")}
    out["MLFLOW_DISABLE_TELEMETRY"] = "true"
    out.update(env)
    return out


def _default_signals() -> None:  # in the child: Ctrl-C works even if this process was started ignoring it
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # and SIGHUP, even if the tests run under nohup


def labkit_cli(
    lab: PipelineLab, *args: str, timeout: float = 300, fork: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """``labkit ARGS`` in the lab folder, as a user runs it; stdout and stderr captured. Forked from the
    pre-imported fork server of tests/cli_fork.py, or with ``fork=False`` a new ``python -m labkit.cli``."""
    if fork:
        return cli_fork.run(list(args), lab.root, _cli_env(env), timeout=timeout)
    return subprocess.run(
        [sys.executable, "-m", "labkit.cli", *args], cwd=lab.root, env=_cli_env(env), capture_output=True,
        text=True, timeout=timeout, preexec_fn=_default_signals,
    )  # fmt: skip


def labkit_popen(lab: PipelineLab, *args: str, **env: str) -> cli_fork.ForkedProcess:
    """``labkit ARGS`` started in the lab folder (forked, as :func:`labkit_cli`); stdout and stderr kept."""
    return cli_fork.popen(list(args), lab.root, _cli_env(env))


def labkit_here(lab: PipelineLab, *args: str) -> tuple[int, str, str]:
    """``labkit.cli.main`` in this process (main thread only: it redirects sys.stdout and sys.stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--lab", str(lab.root), *args])
    return code, out.getvalue(), err.getvalue()


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def lab_kernels(lab: PipelineLab) -> list[int]:
    """Live ipykernel processes working in this lab (labkit starts every kernel with cwd = the lab root)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if (
                "ipykernel_launcher" in " ".join(proc.info["cmdline"] or [])
                and proc.info["cwd"] == str(lab.root)
                and proc.info["status"] != psutil.STATUS_ZOMBIE
            ):
                found.append(proc.pid)
    return found


def no_kernel_left(lab: PipelineLab, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while lab_kernels(lab):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def running_in_store(lab: PipelineLab, pid: str) -> bool:
    """Whether the pilot has a RUNNING run, read from the sqlite file without MLflow: an MlflowClient opened
    while labkit is still creating the store would race its migrations."""
    import sqlite3

    db = lab.root / "results" / "mlflow.db"
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
            rows = con.execute(
                "SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE r.status = 'RUNNING' AND t.key = 'labkit.pilot' AND t.value = ?",
                (pid,),
            ).fetchall()
    except sqlite3.Error:  # no store yet, or its tables not created yet
        return False
    return bool(rows)


def wait_for(condition, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := condition():
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what}: not there after {timeout_s} s")


def wait_for_sleep_cell(
    lab: PipelineLab, pid: str, proc: subprocess.Popen, timeout_s: float = 180
) -> list[int]:
    """Until the pilot's sleeps.ipynb is saved with its time.sleep cell running; returns the kernel pids."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"labkit run {pid} ended early ({proc.returncode}): {proc.communicate()}")
        for folder in lab.run_dirs(pid):
            try:
                cells = json.loads((folder / "sleeps.ipynb").read_text())["cells"]
            except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
                continue
            if any(
                "time.sleep" in "".join(c["source"])
                and c["metadata"].get("papermill", {}).get("status") == "running"
                for c in cells
            ):
                return [
                    p.pid
                    for p in psutil.Process(proc.pid).children(recursive=True)
                    if "ipykernel_launcher" in " ".join(p.cmdline())
                ]
        time.sleep(0.05)
    raise AssertionError(f"{pid}: the sleep cell never started")


def one_line_with(text: str, *needles: str) -> str:
    lines = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line holds all of {needles}:\n{text}"
    return lines[0]


def without_volatile(results: dict) -> dict:
    out = json.loads(json.dumps(results))
    for key in ("analysed_at", "run_token"):
        out["meta"].pop(key, None)
    return out


# ------------------------------------------------------------------------------------- the scenarios


def history_scenario(lab: PipelineLab) -> dict:
    """``labkit run main`` three times: as written (in the batch of BATCH, two at a time), after a comments-only
    edit, after changing the MDE. The batch's runs and folders are read right after it."""
    text = (lab.root / "experiments" / "main.yaml").read_text()
    first = labkit_cli(lab, "run", *BATCH, "--workers", "2", fork=False)  # a new interpreter, as typed
    batch = {
        "lab": lab, "proc": first, "runs": {pid: lab.runs(pid) for pid in BATCH},
        "dirs": {pid: lab.run_dirs(pid) for pid in BATCH}, "kernels_left": not no_kernel_left(lab),
    }  # fmt: skip
    reformatted = (
        "# Pilot main: reply fast to complaint tweets.\n"
        + text.replace(
            "mde: {relative: 0.15}", "mde:   # the smallest effect worth acting on\n    relative: 0.15"
        )
        + "# end of file\n"
    )
    lab.write_pilot("main", reformatted)
    comments = labkit_cli(lab, "run", "main")
    lab.write_pilot("main", reformatted.replace("relative: 0.15", "relative: 0.2"))
    changed = labkit_cli(lab, "run", "main")
    return {
        "lab": lab, "procs": [first, comments, changed], "batch": batch, "kernels_left": not no_kernel_left(lab)
    }  # fmt: skip


def server_scenario(lab: PipelineLab, server) -> dict:
    """``srv`` recorded through the server; then run with the server unreachable; then ``--record-only``."""
    uri = str(server)
    direct = labkit_cli(lab, "run", "srv", LABKIT_TRACKING_URI=uri)
    after_direct = lab.runs("srv", uri=uri)
    closed = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    down = labkit_cli(
        lab, "run", "srv", LABKIT_TRACKING_URI=closed, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )  # fmt: skip
    down_seconds = time.monotonic() - began
    kept = lab.run_dirs("srv")[-1]
    kept_files = {p.name for p in kept.iterdir()}
    after_down = lab.runs("srv", uri=uri)
    record = labkit_cli(lab, "run", "--record-only", "srv", LABKIT_TRACKING_URI=uri)
    after_record = lab.runs("srv", uri=uri)
    again = labkit_cli(lab, "run", "--record-only", "srv", LABKIT_TRACKING_URI=uri)
    return {
        "lab": lab, "server": server, "direct": direct, "after_direct": after_direct, "down": down,
        "down_seconds": down_seconds, "kept": kept, "kept_files": kept_files, "after_down": after_down,
        "record": record, "after_record": after_record, "again": again,
        "after_again": lab.runs("srv", uri=uri), "kernels_left": not no_kernel_left(lab),
    }  # fmt: skip


def signals_scenario(lab: PipelineLab) -> dict:
    """SIGKILL to a `labkit run` mid-cell, once its MLflow run is RUNNING; then a new `labkit run` sweeps."""
    proc = labkit_popen(lab, "run", "k-kill")
    try:
        kernels = wait_for_sleep_cell(lab, "k-kill", proc)
        wait_for(lambda: running_in_store(lab, "k-kill"), "k-kill's RUNNING run")
        proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
        # ipykernel's parent poller ends the SIGKILLed labkit's orphan within seconds
        done = {"code": proc.returncode, "stdout": stdout, "stderr": stderr, "kernels": kernels}
        done["kernels_gone"] = gone(kernels, within_s=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = lab.runs("k-kill")
    rerun = labkit_cli(lab, "run", "k-after")
    return {"lab": lab, "done": done, "left": left, "rerun": rerun, "kernels_left": not no_kernel_left(lab)}


@pytest.fixture(scope="module")
def scenarios(template, tmp_path_factory, mlflow_server) -> dict[str, Future]:
    """Every scenario, two at a time (2 cores), each in its own copy of the lab; tests wait for theirs."""
    labs = {
        "history": clone(template, tmp_path_factory, "history"),
        "server": clone(template, tmp_path_factory, "server"),
        "signals": clone(template, tmp_path_factory, "signals"),
    }
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scenario")
    futures = {
        "history": pool.submit(history_scenario, labs["history"]),
        "server": pool.submit(server_scenario, labs["server"], mlflow_server),
        "signals": pool.submit(signals_scenario, labs["signals"]),
    }
    yield futures
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def history(scenarios) -> dict:
    got = scenarios["history"].result()
    lab = got["lab"]
    return got | {"runs": lab.runs("main"), "dirs": lab.run_dirs("main")}


# ---------------------------------------------------------------- FINISHED runs on the sqlite store


def test_each_run_is_one_finished_mlflow_run_and_one_results_folder(history):
    procs, runs, dirs = history["procs"], history["runs"], history["dirs"]
    # the first is the batch, which exits 1 for bat-exit alone (test_a_parallel_batch_records_each_pilot_once_...)
    assert [p.returncode for p in procs] == [1, 0, 0], [output(p) for p in procs]
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert len(dirs) == 3
    for run, folder in zip(runs, dirs, strict=True):
        assert run.data.tags["labkit.run_key"] == f"main/{folder.name}"
        assert {p.name for p in folder.iterdir()} >= {
            "pilot_analysis.ipynb", "pilot_analysis.html", "results.json", "record.json", "recorded.json",
            "primary_effect.png", "other_effects.png", "effects.csv",
        }  # fmt: skip
        assert json.loads((folder / "recorded.json").read_text())["run_id"] == run.info.run_id
    for proc, run, folder in zip(procs, runs, dirs, strict=True):
        assert "Traceback" not in output(proc)
        row = one_line_with(proc.stdout, "│ main ")  # the summary table: pilot, function, status, ...
        assert "FINISHED" in row and "service" in row and run.data.tags["labkit.decision"] in row
        assert run.data.tags["labkit.recommendation"] in row
        # issue #14: the run id in full, how to open it (a local store: `labkit ui`), and the output folder
        assert f"main: MLflow run {run.info.run_id} — open it with `labkit ui`" in proc.stdout
        assert f"main: outputs in results/main/runs/{folder.name}/" in proc.stdout
    assert not history["kernels_left"]


def test_latest_is_true_on_exactly_one_run_the_newest(history):
    assert [r.data.tags["labkit.latest"] for r in history["runs"]] == ["false", "false", "true"]


def test_tags_and_description(history):
    lab, run = history["lab"], history["runs"][-1]
    results = json.loads((history["dirs"][-1] / "results.json").read_text())
    pilot = lab.pilot("main")
    tags = run.data.tags
    assert {k: tags[f"labkit.{k}"] for k in ("pilot", "function", "channel", "stage", "owner")} == {
        "pilot": "main", "function": "service", "channel": "twitter", "stage": "retention",
        "owner": "lab@example.com",
    }  # fmt: skip
    assert results["decision"] in {"ship", "harm", "no-effect", "inconclusive", "invalid"}
    assert tags["labkit.decision"] == results["decision"]
    assert tags["labkit.spec_sha256"] == pilot.spec_sha256 == results["meta"]["spec_sha256"]
    assert tags["labkit.prereg_sha256"] == pilot.prereg_sha256
    assert (
        tags["labkit.data_digest"] == results["meta"]["data_digest"] and len(tags["labkit.data_digest"]) >= 16
    )
    assert tags["labkit.code_version"].startswith(labkit.__version__)
    assert tags["labkit.notebook"] == "notebooks/pilot_analysis.ipynb"
    assert "labkit.error" not in tags
    note = tags["mlflow.note.content"]
    assert pilot.spec.hypothesis.statement in note
    assert f"Decision: {results['decision']}" in note and results["reason"] in note
    # issue #14: the description starts with decision, recommendation and ROI, in plain words (the runs
    # table shows its first line unrendered), and says the recommendation's sentence
    assert results["recommendation"] in ("scale", "rework", "extend", "stop", "fix")
    assert tags["labkit.recommendation"] == results["recommendation"]
    first = note.splitlines()[0]
    assert first.startswith(f"Decision {results['decision']} · Recommendation {results['recommendation']}")
    assert f"ROI {results['roi']['roi'] * 100:+.1f} %" in first and "**" not in first
    assert results["recommendation_reason"] in note


def test_params_are_the_flattened_spec_of_each_run(history):
    first, _, last = history["runs"]
    assert last.data.params == flatten_params(history["lab"].pilot("main").spec.model_dump(mode="json"))
    assert first.data.params["hypothesis.mde.relative"] == "0.15"
    assert last.data.params["hypothesis.mde.relative"] == "0.2"
    assert first.data.params["cohort.arms.fast"] == "0.5"
    assert first.data.params["metrics.replies.window_days"] == "30"


def test_metrics_are_every_number_of_results_json(history):
    run = history["runs"][-1]
    results = json.loads((history["dirs"][-1] / "results.json").read_text())
    metrics = run.data.metrics
    assert metrics == pytest.approx(metrics_from_results(results), rel=1e-12)
    row = next(r for r in results["metrics"] if r["metric"] == "churned" and r["arm"] == "fast")
    assert metrics["churned.fast.effect"] == pytest.approx(row["effect"])
    assert metrics["churned.fast.p_value"] == pytest.approx(row["p_value"])
    assert metrics["srm_p_value"] == pytest.approx(results["srm"]["p_value"])
    assert metrics["cost"] == 1000
    assert results["roi"]["roi"] is not None and metrics["roi_pct"] == pytest.approx(
        100 * results["roi"]["roi"], abs=0.005
    )
    assert "exposed" in metrics and len(metrics) < 40  # a headline set, not every number (issue #14)
    assert not any(k.startswith("replies.") for k in metrics)  # secondaries: in effects.csv, not metrics
    effects = pd.read_csv(history["lab"].download(run, "effects.csv"))
    assert len(effects) == len(results["metrics"])
    row = effects[(effects.metric == "replies") & (effects.arm == "fast")].iloc[0]
    want = next(r for r in results["metrics"] if r["metric"] == "replies" and r["arm"] == "fast")
    assert row.effect == pytest.approx(want["effect"]) and row.variance_reduction == pytest.approx(
        want["variance_reduction"]
    )
    client = history["lab"].client()  # logged once: one value in each metric's history
    assert [len(client.get_metric_history(run.info.run_id, k)) for k in ("churned.fast.effect", "cost")] == [
        1,
        1,
    ]


def test_artifacts_are_the_pilot_the_executed_notebook_results_and_figures(history):
    lab, run, folder = history["lab"], history["runs"][-1], history["dirs"][-1]
    assert lab.artifacts(run) == DEFAULT_ARTIFACTS | {"pilot/main.yaml"}
    assert (
        lab.download(run, "pilot/main.yaml").read_text()
        == (lab.root / "experiments" / "main.yaml").read_text()
    )
    assert json.loads(lab.download(run, "results.json").read_text()) == json.loads(
        (folder / "results.json").read_text()
    )
    executed = json.loads(lab.download(run, "notebook/pilot_analysis.ipynb").read_text())
    code = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in code)
    assert all(c["metadata"]["papermill"]["status"] == "completed" for c in code)
    assert "Decision:" in json.dumps(executed)
    html = lab.download(run, "notebook/pilot_analysis.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "Decision:" in html
    assert lab.download(run, "figures/primary_effect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_datasets_are_logged_with_labkits_own_digests(history):
    lab, run = history["lab"], history["runs"][-1]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"customers", "outcomes", "events"}
    for name, file in {
        "customers": "customers.parquet",
        "outcomes": "outcomes.csv",
        "events": "events.parquet",
    }.items():
        digest = file_digest(lab.root / "data" / file)
        tags = {t.key: t.value for t in inputs[name].tags}
        assert inputs[name].dataset.digest == digest[:36]
        assert tags["labkit.digest"] == digest and tags["mlflow.data.context"] == "analysis"
        assert json.loads(inputs[name].dataset.profile)["digest"] == digest


def test_results_json_equals_labkit_analyze_json(history):
    code, stdout, stderr = labkit_here(history["lab"], "analyze", "main", "--json")
    assert code == 0, stderr
    notebook = json.loads((history["dirs"][-1] / "results.json").read_text())
    assert notebook["meta"]["run_token"]  # the completion sentinel
    assert without_volatile(notebook) == without_volatile(json.loads(stdout))


def test_pre_registration_flags_a_changed_hypothesis_not_a_comment(history):
    first, comments, changed = history["runs"]
    assert first.data.tags["labkit.spec_changed"] == "false"
    assert comments.data.tags["labkit.spec_changed"] == "false"
    assert comments.data.tags["labkit.spec_sha256"] == first.data.tags["labkit.spec_sha256"]
    assert comments.data.tags["labkit.prereg_sha256"] == first.data.tags["labkit.prereg_sha256"]
    assert changed.data.tags["labkit.spec_changed"] == "true"
    assert changed.data.tags["labkit.prereg_sha256"] != first.data.tags["labkit.prereg_sha256"]
    first_out, comments_out, changed_out = (p.stdout for p in history["procs"])
    line = one_line_with(changed_out, "main:", "changed since the first run")
    assert "labkit.spec_changed=true" in line
    assert "changed since" not in first_out and "changed since" not in comments_out


# ------------------------------------------------------------------------ the real `mlflow server`


@pytest.fixture(scope="module")
def server_flow(scenarios) -> dict:
    return scenarios["server"].result()


def test_a_run_through_the_mlflow_server_records_everything(server_flow):
    lab, uri = server_flow["lab"], str(server_flow["server"])
    direct = server_flow["direct"]
    assert direct.returncode == 0, output(direct)
    (run,) = server_flow["after_direct"]
    folder = lab.run_dirs("srv")[0]
    results = json.loads((folder / "results.json").read_text())
    pilot = lab.pilot("srv")
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server chose where artifacts go
    tags = run.data.tags
    assert (tags["labkit.pilot"], tags["labkit.latest"], tags["labkit.decision"]) == (
        "srv",
        "true",
        results["decision"],
    )
    assert tags["labkit.spec_sha256"] == pilot.spec_sha256
    assert tags["labkit.data_digest"] == results["meta"]["data_digest"]
    assert pilot.spec.hypothesis.statement in tags["mlflow.note.content"]
    assert run.data.params == flatten_params(pilot.spec.model_dump(mode="json"))
    assert run.data.metrics == pytest.approx(metrics_from_results(results), rel=1e-12)
    # issue #14: on a tracking server `labkit run` prints the run's own page, the id in full
    link = f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"srv: MLflow run {run.info.run_id} — {link}" in direct.stdout
    assert lab.artifacts(run, uri=uri) == DEFAULT_ARTIFACTS | {"pilot/srv.yaml"}
    assert json.loads(lab.download(run, "results.json", uri=uri).read_text()) == results
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"customers", "outcomes", "events"}
    assert lab.runs("srv") == []  # nothing of it in a local sqlite store
    assert not server_flow["kernels_left"]


def test_an_unreachable_server_keeps_the_outputs_and_says_how_to_record_them(server_flow):
    down = server_flow["down"]
    text = output(down)
    assert down.returncode == 1, text
    assert "Traceback" not in text
    line = one_line_with(down.stdout, "srv:", "not recorded in MLflow")
    assert "labkit run --record-only srv" in line and "connection refused" in line
    assert "NOT-RECORDED" in one_line_with(down.stdout, "│ srv ")
    assert server_flow["down_seconds"] < 120, "an unreachable server must fail fast, not retry for minutes"
    assert server_flow["kept_files"] >= {
        "pilot_analysis.ipynb", "pilot_analysis.html", "results.json", "record.json", "primary_effect.png",
    }  # fmt: skip
    assert "recorded.json" not in server_flow["kept_files"]
    assert len(server_flow["after_down"]) == 1  # nothing new on the server


def test_record_only_records_the_kept_run_exactly_once(server_flow):
    lab, uri, kept = server_flow["lab"], str(server_flow["server"]), server_flow["kept"]
    record = server_flow["record"]
    assert record.returncode == 0, output(record)
    first, recorded = server_flow["after_record"]
    assert recorded.info.status == "FINISHED"
    assert recorded.data.tags["labkit.run_key"] == f"srv/{kept.name}"
    assert one_line_with(record.stdout, "│ srv ").count("FINISHED") == 1
    assert json.loads((kept / "recorded.json").read_text())["run_id"] == recorded.info.run_id
    results = json.loads((kept / "results.json").read_text())
    assert recorded.data.metrics == pytest.approx(metrics_from_results(results), rel=1e-12)
    assert lab.artifacts(recorded, uri=uri) == DEFAULT_ARTIFACTS | {"pilot/srv.yaml"}
    # the newer analysis takes the latest flag, on exactly one run
    assert (first.data.tags["labkit.latest"], recorded.data.tags["labkit.latest"]) == ("false", "true")
    again = server_flow["again"]
    assert again.returncode == 0, output(again)
    assert "nothing to record" in again.stdout
    assert [r.info.run_id for r in server_flow["after_again"]] == [first.info.run_id, recorded.info.run_id]


# ------------------------------------------------------------------------------ a parallel batch


@pytest.fixture(scope="module")
def batch(scenarios) -> dict:
    return scenarios["history"].result()["batch"]


def test_a_parallel_batch_records_each_pilot_once_and_fails_for_the_failing_one(batch):
    lab, proc, runs = batch["lab"], batch["proc"], batch["runs"]
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert {pid: [r.info.status for r in rs] for pid, rs in runs.items()} == {
        "main": ["FINISHED"], "bat-1": ["FINISHED"], "bat-ok": ["FINISHED"], "bat-exit": ["FAILED"],
    }  # fmt: skip
    assert "4 pilot run(s)" in proc.stdout
    for pid, (run,) in runs.items():
        row = one_line_with(proc.stdout, f"│ {pid} ")  # the summary table: pilot, function, status, ...
        assert run.info.status in row and "service" in row
        assert len(batch["dirs"][pid]) == 1
        assert run.data.tags["labkit.latest"] == ("false" if pid == "bat-exit" else "true")
    for pid in ("main", "bat-1"):
        assert lab.artifacts(runs[pid][0]) == DEFAULT_ARTIFACTS | {f"pilot/{pid}.yaml"}
    # --workers 2: two notebooks at a time, never more
    spans = [(r.info.start_time, r.info.end_time) for (r,) in runs.values()]
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) == 2, spans
    assert not batch["kernels_left"]


def test_a_notebook_that_exits_early_is_failed_not_finished(batch):
    lab, proc = batch["lab"], batch["proc"]
    (run,) = batch["runs"]["bat-exit"]
    assert run.info.status == "FAILED"
    line = one_line_with(proc.stdout, "bat-exit:", "without writing results.json")
    assert "cell 2 (sys.exit(0)) raised SystemExit" in line
    assert "without writing results.json" in run.data.tags["labkit.error"]
    assert lab.artifacts(run) == {
        "pilot/bat-exit.yaml",
        "notebook/exits_early.ipynb",
        "notebook/exits_early.html",
    }


# ------------------------------------------------------------------------------------------ signals


@pytest.fixture(scope="module")
def signals(scenarios) -> dict:
    return scenarios["signals"].result()


def test_sigkill_leaves_a_running_run_that_the_next_labkit_run_sweeps(signals):
    lab, got = signals["lab"], signals["done"]
    assert got["code"] == -signal.SIGKILL
    assert len(got["kernels"]) == 1 and got["kernels_gone"]
    (left,) = signals["left"]
    assert left.info.status == "RUNNING"  # MLflow has no heartbeat: only a later sweep can end it
    # tagged with its look from its start (`labkit compare` tells a look back in flight from a re-run)
    assert left.data.tags["labkit.look"] == look_stamp(None, left.info.start_time / 1000)
    rerun = signals["rerun"]
    assert rerun.returncode == 0, output(rerun)
    assert "swept 1 stale RUNNING run(s) to KILLED" in rerun.stderr
    (run,) = lab.runs("k-kill")
    assert run.info.run_id == left.info.run_id and run.info.status == "KILLED"
    assert "is gone" in run.data.tags["labkit.swept"]
    (folder,) = lab.run_dirs("k-kill")
    assert (folder / "sleeps.ipynb").is_file()  # the cells before the kill, kept
    assert [r.info.status for r in lab.runs("k-after")] == ["FINISHED"]
    assert [r.data.tags["labkit.pilot"] for r in lab.runs() if r.info.status == "RUNNING"] == []
    assert not signals["kernels_left"]


# ------------------------------------------------------------------------------------------ preflight


@pytest.mark.parametrize(
    ("pid", "message"),
    [
        ("bad-text", "notebooks/fixtures/plain_text.ipynb: not a notebook: invalid JSON"),
        ("bad-noparams", "no code cell is tagged 'parameters'"),
        ("unassigned", "no assignment for unassigned; run `labkit assign unassigned` first"),
    ],
)
def test_preflight_refuses_before_any_run_is_created(history, pid, message):
    lab = history["lab"]  # a lab with a store and runs in it, which must not change
    before = lab.store_state()
    code, stdout, stderr = labkit_here(lab, "run", pid)
    assert code == 1
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert stdout == ""
    assert lab.store_state() == before
    assert lab.runs(pid) == [] and lab.run_dirs(pid) == []


def test_preflight_of_one_pilot_stops_the_whole_batch(history):
    lab = history["lab"]
    before = lab.store_state()
    code, _, stderr = labkit_here(lab, "run", "k-after", "unassigned")
    assert code == 1 and "labkit assign unassigned" in stderr
    assert lab.store_state() == before
    assert lab.run_dirs("k-after") == []


# ---------------------------------------------------------------------------- nothing left behind


def test_no_customer_identifier_reaches_mlflow_or_the_run_outputs(scenarios, template):
    results = {name: future.result() for name, future in scenarios.items()}
    _, customers = template
    identifiers = set(customers["customer_id"]) | set(customers["email"]) | set(customers["twitter_handle"])
    labs = [r["lab"] for r in results.values()]
    # the scanner finds them where they are: the lab's own data
    assert len(scan_for_identifiers([labs[0].root / "data" / "outcomes.csv"], identifiers)) == N_CUSTOMERS
    server = results["server"]["server"]
    scanned = [server.db_path, server.artifacts_dir]
    for lab in labs:
        scanned += [
            p for p in (lab.root / "results" / "mlflow.db", lab.root / "results" / "mlruns") if p.exists()
        ]
        scanned += [folder for pid in (*DEFAULT_PILOTS, *FIXTURE_PILOTS) for folder in lab.run_dirs(pid)]
    # executed notebooks were scanned: the 10 run folders' and the 9 attached to MLflow runs (at least)
    assert sum(1 for p in scanned for _ in Path(p).rglob("*.ipynb")) >= 19
    assert scan_for_identifiers(scanned, identifiers) == []
    for lab in labs:  # and nothing is left RUNNING anywhere
        assert [r.data.tags["labkit.pilot"] for r in lab.runs() if r.info.status == "RUNNING"] == []
