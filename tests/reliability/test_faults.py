"""Faults during `labkit run` (RELIABILITY.md cases 21-25, 27, 30; issue #7): real kernels, real sqlite stores.

Every fault ends the same way: the MLflow run is FAILED or KILLED (the store is queried; nothing stays
RUNNING), the partial notebook is kept under ``results/<id>/runs/<stamp>/`` and attached, the CLI names
what happened in one line, the exit code says it, and once the fault is gone a re-run is FINISHED and
becomes the pilot's latest run.

The pilots here run one generated notebook, ``notebooks/fault.ipynb`` (:func:`fault_notebook`): it reads
``faults/<pilot id>`` in the lab and injects that fault — ``raise``, ``exit`` (``sys.exit(0)``),
``os_exit`` (``os._exit(1)``), ``sigkill`` (SIGKILL to its own kernel pid), ``sleep`` (``time.sleep(10**6)``),
``print`` (200 MB to stdout), ``wait`` (until ``faults/<id>.go`` exists) — or, with no file, writes
``results.json`` with the run token at once (a run costs a kernel start, no analysis). Deleting the file
is "fixing the fault"; the same command then succeeds.

Where each case is proved (what existing tests prove is not repeated here; ``::name`` is this file):

| case | fault | tests |
| --- | --- | --- |
| 21 | a cell raises | ::test_each_fault_fails_its_run_keeps_the_partial_notebook_and_says_so[raise] (the one line, FAILED, the partial notebook kept and attached with the error output), ::test_once_the_faults_are_fixed_a_rerun_is_finished_and_latest; in a batch of 50: tests/reliability/test_load.py; in the runner: tests/runner/test_runner.py::test_cell_that_raises_fails_naming_cell_and_error |
| 22 | ``os._exit(1)``; SIGKILL to the kernel pid | ::test_each_fault_...[os_exit] and [sigkill] (through `labkit run` into MLflow), tests/runner/test_runner.py::test_sigkill_of_the_kernel_is_a_dead_kernel (runner only) |
| 23 | ``time.sleep(10**6)`` | ::test_each_fault_...[sleep], ::test_a_hung_cell_stops_at_the_timeout, ::test_no_kernel_and_no_running_run_is_left |
| 24 | ``sys.exit(0)``; no results.json | ::test_each_fault_...[exit]; tests/test_pipeline.py::test_a_notebook_that_exits_early_is_failed_not_finished (beside the analysis notebook in a batch) |
| 25 | a cell prints 200 MB | tests/runner/test_runner.py::test_printing_200_mb_keeps_labkit_memory_bounded (peak RSS), ::test_output_is_capped_per_cell; ::test_200_mb_of_output_is_capped_and_the_run_finishes (through the CLI into MLflow) |
| 27, 40 | SIGINT/SIGTERM/SIGHUP to `labkit run` with 4 pilots in flight; SIGKILL, then rerun | ::test_a_signal_kills_all_four_runs_in_flight[SIGINT-130-0/SIGTERM-143-1/SIGHUP-129-2] (a single pilot goes through the same batch code, a pool of one), ::test_once_the_faults_are_fixed_a_rerun_is_finished_and_latest; SIGKILL and the sweep: tests/test_pipeline.py::test_sigkill_leaves_a_running_run_that_the_next_labkit_run_sweeps, tests/test_tracking.py::test_sweep_stale_kills_the_running_run_of_a_dead_process |
| 30 | results dir read-only, or full | ::test_a_read_only_results_dir_is_one_clear_error_and_no_running_run, ::test_a_full_results_disk_fails_the_run_cleanly — a real read-only bind mount and a real 1 MB tmpfs (`mount`, as root: root ignores file modes, so chmod would prove nothing) |
| 18 | an interrupted `labkit assign` (issue #7 lists it with the faults) | tests/assignment/test_assign.py::test_sigkill_mid_write_leaves_no_parquet_and_the_rerun_reclaims_the_lock, ::test_ctrl_c_mid_write_leaves_nothing_behind |

Case 28 (the tracking server stopped mid-run and restarted) and 33 are in test_shared_server.py, 29 in
test_concurrency.py, the 50-pilot batch in test_load.py (500-run compare: tests/tracking/test_compare.py).

The module fixture ``world`` builds one lab and runs, as ``python -m labkit.cli`` subprocesses: the
faults batch (every notebook fault, the 200 MB print and both disk faults, three workers) in one thread
while another sends SIGINT, then SIGTERM, then SIGHUP, to three batches of four sleeping pilots; then every fault is
removed and everything is run again. Tests read what it left.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import psutil
import pytest
from processes import gone
from test_pipeline import (
    PipelineLab,
    build_data,
    labkit_cli,
    labkit_popen,
    no_kernel_left,
    one_line_with,
    output,
    pilot_yaml,
)

import labkit
from labkit.tracking import metrics_from_results

from conftest import LAB_YAML

NOTEBOOK = "notebooks/fault.ipynb"
FAULT_ARTIFACTS = {"notebook/fault.ipynb", "notebook/fault.html"}
# a FINISHED run also keeps the notebook without code (report.html) and the per-arm table (effects.csv)
OK_ARTIFACTS = FAULT_ARTIFACTS | {"results.json", "figures/figure.png", "report.html", "effects.csv"}

# The cells after the parameters cell, as stored: cell 1 reads the fault, cells 2-8 inject one each.
FAULT_CELLS = [
    "import json, os, pathlib, signal, sys, time\n"
    "pilot = pathlib.Path(pilot_path).stem\n"
    'fault_file = pathlib.Path("faults", pilot)\n'
    'fault = fault_file.read_text().strip() if fault_file.exists() else ""',
    'if fault == "raise": raise ValueError("injected fault")',
    'if fault == "exit": sys.exit(0)',
    'if fault == "os_exit": os._exit(1)',
    'if fault == "sigkill": os.kill(os.getpid(), signal.SIGKILL)',
    'if fault == "sleep":\n    pathlib.Path(output_dir, "asleep").touch()  # the test signals once all sleep\n'
    "    time.sleep(10**6)",
    'if fault == "print": print("x" * 200_000_000)',
    'while fault == "wait" and not pathlib.Path("faults", pilot + ".go").exists(): time.sleep(0.05)',
    "import base64\n"
    "pathlib.Path(output_dir, 'figure.png').write_bytes(base64.b64decode("
    "'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='))\n"
    "results = {\n"
    '    "pilot": pilot, "decision": "inconclusive", "reason": "a fault-free run of the fault notebook",\n'
    '    "srm": {"p_value": 0.5, "ok": True, "counts": {"control": 5, "fast": 5}},\n'
    '    "metrics": [{"metric": "churned", "role": "primary", "arm": "fast", "control_arm": "control",\n'
    '                 "effect": -0.02, "ci_low": -0.1, "ci_high": 0.06, "p_value": 0.6}],\n'
    '    "roi": {"roi": -0.5, "cost": 1000.0, "value": 500.0},\n'
    '    "meta": {"run_token": run_token, "exposed": 10},\n'
    "}\n"
    'pathlib.Path(output_dir, "results.json").write_text(json.dumps(results))',
]
FAULT_CELL = {  # fault -> stored cell index
    "raise": 2, "exit": 3, "os_exit": 4, "sigkill": 5, "sleep": 6, "print": 7, "wait": 8,
}  # fmt: skip


def fault_notebook() -> str:
    """The fault notebook as nbformat v4 JSON: a tagged parameters cell, then FAULT_CELLS."""
    params = nbformat.v4.new_code_cell(
        'run_token = ""\noutput_dir = "."\npilot_path = ""\nlab_path = ""\nas_of = ""'
    )
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, *(nbformat.v4.new_code_cell(src) for src in FAULT_CELLS)])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nbformat.writes(nb)


class FaultLab(PipelineLab):
    """A PipelineLab whose pilots run the fault notebook; ``faults/<id>`` chooses each one's fault."""

    def set_fault(self, pid: str, fault: str | None) -> None:
        path = self.root / "faults" / pid
        if fault is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(fault)

    def clear_faults(self) -> None:
        shutil.rmtree(self.root / "faults", ignore_errors=True)

    def results_of(self, pid: str) -> dict:
        """The results.json of the pilot's newest run folder."""
        return json.loads((self.run_dirs(pid)[-1] / "results.json").read_text())


def make_lab(root: Path, pilots: dict[str, str | None], *, lab_yaml_extra: str = "") -> FaultLab:
    """A lab at ``root``: seeded data, the fault notebook, one assigned pilot per id with its fault (or None)."""
    root = root.resolve()
    (root / "configs").mkdir(parents=True)
    experiment = f"reliability-{root.name}-{uuid.uuid4().hex[:8]}"  # unique on a shared server too
    text = LAB_YAML.replace("mlflow_experiment: tiny-pilots", f"mlflow_experiment: {experiment}")
    (root / "configs" / "lab.yaml").write_text(text + lab_yaml_extra)
    (root / "notebooks").mkdir()
    (root / NOTEBOOK).write_text(fault_notebook())
    (root / "experiments").mkdir()
    customers = build_data(root)
    lab = FaultLab(root, experiment, customers)
    config = labkit.load_lab(root / "configs" / "lab.yaml")
    for pid, fault in pilots.items():
        path = root / "experiments" / f"{pid}.yaml"
        path.write_text(pilot_yaml(pid, notebook=NOTEBOOK))
        labkit.assign(labkit.load_pilot(path, lab=config))
        lab.set_fault(pid, fault)
    return lab


def running(lab: PipelineLab, uri: str | None = None) -> list[str]:
    """Pilots with a RUNNING run in the lab's experiment (the store is asked, not labkit)."""
    return [r.data.tags.get("labkit.pilot") for r in lab.runs(uri=uri) if r.info.status == "RUNNING"]


def kernel_children(proc: subprocess.Popen) -> list[int]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [
            p.pid
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "ipykernel_launcher" in " ".join(p.cmdline())
        ]
    return []


# ------------------------------------------------------------------------------------- the scenarios

FAULTS = ("raise", "exit", "os_exit", "sigkill", "sleep")
FAULT_PILOTS = {f"f-{f.replace('_', '')}": f for f in FAULTS} | {"f-print": "print"}
SLEEPERS = ("s-1", "s-2", "s-3", "s-4")
DISK = ("d-ro", "d-full")
TIMEOUT_S = 25  # long enough for four kernels to start and sleep together before the signal


def signal_batch(lab: FaultLab, signum: int) -> dict:
    """`labkit run` of the four sleepers; once all four sleep cells run, ``signum`` to labkit."""
    proc = labkit_popen(lab, "run", *SLEEPERS, "--workers", "4")
    try:
        deadline = time.monotonic() + 180
        seen = {pid: len(lab.run_dirs(pid)) for pid in SLEEPERS}
        while not all(
            len(lab.run_dirs(p)) > seen[p] and (lab.run_dirs(p)[-1] / "asleep").exists() for p in SLEEPERS
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"the four sleep cells never ran together: {proc.communicate(timeout=60)}"
                )
            time.sleep(0.05)
        kernels = kernel_children(proc)
        sent = time.monotonic()
        proc.send_signal(signum)
        kernels_gone = gone(kernels, within_s=5)
        kernels_seconds = time.monotonic() - sent
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        "code": proc.returncode, "stdout": stdout, "stderr": stderr, "kernels": kernels,
        "kernels_gone": kernels_gone, "kernels_seconds": kernels_seconds,
    }  # fmt: skip


def mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(
            f"`mount {' '.join(args)}` failed ({proc.stderr.strip()}): case 30 needs a real read-only or full "
            "filesystem, and as root file modes do not stop writes; run the suite where mounts are allowed"
        )


def faults_batch(lab: FaultLab) -> dict:
    """Every notebook fault in one batch of three workers, beside a pilot that prints 200 MB, and the disk
    faults: ``results/d-ro`` a read-only bind mount, ``results/d-full/runs`` a 1 MB tmpfs.

    The MLflow store (``results/mlflow.db``) stays on the normal disk: those faults are in the pilots'
    results. d-full's notebook prints 200 MB; the 10 MB the cap keeps do not fit, so its save fails mid-run.
    """
    ro = lab.root / "results" / "d-ro"
    full = lab.root / "results" / "d-full" / "runs"
    full.mkdir(parents=True)
    mounted = []
    try:
        mount("--bind", str(ro), str(ro))
        mounted.append(ro)
        mount("-o", "remount,bind,ro", str(ro))
        mount("-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", str(full))
        mounted.append(full)
        began = time.monotonic()
        proc = labkit_cli(lab, "run", *FAULT_PILOTS, *DISK, "--workers", "3")
        return {
            "proc": proc,
            "seconds": time.monotonic() - began,
            "ro_files": sorted(str(p.relative_to(ro)) for p in ro.rglob("*")),
            "full_files": {str(p.relative_to(full)): p.read_bytes() for p in full.rglob("*") if p.is_file()},
        }
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def signals_batches(lab: FaultLab) -> dict:
    return {name: signal_batch(lab, getattr(signal, name)) for name in ("SIGINT", "SIGTERM", "SIGHUP")}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """One lab; the faults batch beside the two signal batches; then every fault removed, and all rerun."""
    pilots = FAULT_PILOTS | dict.fromkeys(SLEEPERS, "sleep") | {"d-ro": None, "d-full": "print"}
    lab = make_lab(
        tmp_path_factory.mktemp("faults"),
        pilots,
        lab_yaml_extra=f"runner: {{timeout_seconds: {TIMEOUT_S}}}\n",
    )
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="faults") as pool:
        faults = pool.submit(faults_batch, lab)
        others = pool.submit(signals_batches, lab)
        got = {"faults": faults.result(), **others.result()}
    got["runs"] = {pid: lab.runs(pid) for pid in pilots}
    got["dirs"] = {pid: lab.run_dirs(pid) for pid in pilots}
    got["running"] = running(lab)
    got["kernels_left"] = not no_kernel_left(lab)
    lab.clear_faults()
    got["rerun"] = labkit_cli(lab, "run", *pilots, "--workers", "2")
    got["after"] = {pid: lab.runs(pid) for pid in pilots}
    got["running_after"] = running(lab)
    got["kernels_left_after"] = not no_kernel_left(lab)
    return got | {"lab": lab}


# ------------------------------------------------------------------------------------ cases 21-25


EXPECTED = {  # fault -> what the CLI line and the labkit.error tag say
    "raise": 'cell 2 (if fault == "raise": raise ValueError("injected fault")) raised ValueError: injected fault',
    "exit": "the notebook ended without writing results.json (a cell exited early?): "
    'cell 3 (if fault == "exit": sys.exit(0)) raised SystemExit',
    "os_exit": 'the kernel died in cell 4 (if fault == "os_exit": os._exit(1)) (os._exit, a crash, SIGKILL',
    "sigkill": 'the kernel died in cell 5 (if fault == "sigkill": os.kill(os.getpid(), signal.SIGKILL)) '
    "(os._exit, a crash, SIGKILL",
    "sleep": f'cell 6 (if fault == "sleep":) ran longer than the {TIMEOUT_S} s cell timeout (CellTimeoutError)',
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_fails_its_run_keeps_the_partial_notebook_and_says_so(world, fault):
    lab, proc = world["lab"], world["faults"]["proc"]
    pid = f"f-{fault.replace('_', '')}"
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    line = one_line_with(proc.stdout, f"{pid}:")
    assert line.startswith(f"{pid}: {EXPECTED[fault]}"), line
    assert "FAILED" in one_line_with(proc.stdout, f"│ {pid} ")
    (run,) = world["runs"][pid]
    assert run.info.status == "FAILED"
    assert EXPECTED[fault] in run.data.tags["labkit.error"]
    assert (run.data.tags["labkit.decision"], run.data.tags["labkit.latest"]) == ("failed", "false")
    assert run.data.metrics == {}
    (folder,) = world["dirs"][pid]
    assert run.data.tags["labkit.run_key"] == f"{pid}/{folder.name}"
    assert not (folder / "results.json").exists()
    partial = nbformat.read(folder / "fault.ipynb", as_version=4)  # kept, whole, with the cells that ran
    nbformat.validate(partial)
    assert [c for c in partial.cells if c.cell_type == "code" and c.get("execution_count")]
    banner = "An Exception was encountered" if fault == "raise" else "labkit: this run FAILED"
    assert banner in json.dumps(partial)
    assert lab.artifacts(run) == FAULT_ARTIFACTS | {f"pilot/{pid}.yaml"}
    assert "<html" in lab.download(run, "notebook/fault.html").read_text().lower()
    if fault == "raise":  # the attached notebook shows the error, as the kernel raised it
        attached = json.loads(lab.download(run, "notebook/fault.ipynb").read_text())
        errors = [
            o for c in attached["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"
        ]
        assert [(e["ename"], e["evalue"]) for e in errors] == [("ValueError", "injected fault")]


def test_a_hung_cell_stops_at_the_timeout(world):
    (run,) = world["runs"]["f-sleep"]
    (folder,) = world["dirs"]["f-sleep"]
    cells = json.loads((folder / "fault.ipynb").read_text())["cells"]
    (sleeping,) = [c for c in cells if "time.sleep(10**6)" in "".join(c["source"])]
    started = dt.datetime.fromisoformat(sleeping["metadata"]["papermill"]["start_time"]).timestamp()
    assert TIMEOUT_S <= run.info.end_time / 1000 - started < TIMEOUT_S + 5


def test_200_mb_of_output_is_capped_and_the_run_finishes(world):
    lab, proc = world["lab"], world["faults"]["proc"]
    (run,) = world["runs"]["f-print"]
    assert run.info.status == "FINISHED"
    assert "FINISHED" in one_line_with(proc.stdout, "│ f-print ")
    (folder,) = world["dirs"]["f-print"]
    assert (folder / "fault.ipynb").stat().st_size < 11 * 2**20  # the 10 MB cap, not 200 MB
    assert "this cell's output passed the 10.0 MB cap" in (folder / "fault.ipynb").read_text()
    assert run.data.metrics == pytest.approx(metrics_from_results(lab.results_of("f-print")))


def test_no_kernel_and_no_running_run_is_left(world):
    assert not world["kernels_left"] and not world["kernels_left_after"]
    assert world["running"] == [] and world["running_after"] == []


def test_once_the_faults_are_fixed_a_rerun_is_finished_and_latest(world):
    lab, rerun = world["lab"], world["rerun"]
    assert rerun.returncode == 0, output(rerun)
    for pid, runs in world["after"].items():
        before = [r.info.run_id for r in world["runs"][pid]]
        assert [r.info.run_id for r in runs[:-1]] == before  # the failed and killed runs are kept
        assert [r.data.tags["labkit.latest"] for r in runs] == ["false"] * len(before) + ["true"], pid
        last = runs[-1]
        assert last.info.status == "FINISHED", (pid, last.data.tags.get("labkit.error"))
        assert last.data.metrics == pytest.approx(metrics_from_results(lab.results_of(pid)))
        assert lab.artifacts(last) == OK_ARTIFACTS | {f"pilot/{pid}.yaml"}
        assert "FINISHED" in one_line_with(rerun.stdout, f"│ {pid} ")


# ------------------------------------------------------------------------------------------ case 27


@pytest.mark.parametrize(
    ("name", "code", "nth"), [("SIGINT", 130, 0), ("SIGTERM", 143, 1), ("SIGHUP", 129, 2)]
)  # SIGHUP (a closed terminal, RELIABILITY #40) as SIGTERM; its exit code is 128 + 1
def test_a_signal_kills_all_four_runs_in_flight(world, name, code, nth):
    lab, got = world["lab"], world[name]
    text = got["stdout"] + got["stderr"]
    assert got["code"] == code, text
    assert "Traceback" not in text
    assert len(got["kernels"]) == 4, "four kernels were in flight"
    assert got["kernels_gone"], f"kernels still alive {got['kernels_seconds']:.1f} s after {name}"
    for pid in SLEEPERS:
        run = world["runs"][pid][nth]
        assert run.info.status == "KILLED"
        assert run.data.tags["labkit.decision"] == "killed"
        line = one_line_with(got["stdout"], f"{pid}:")
        assert line == f'{pid}: interrupted by {name} in cell 6 (if fault == "sleep":)'
        assert "KILLED" in one_line_with(got["stdout"], f"│ {pid} ")
        folder = world["dirs"][pid][nth]
        assert run.data.tags["labkit.run_key"] == f"{pid}/{folder.name}"
        assert "labkit: this run KILLED" in (folder / "fault.ipynb").read_text()
        assert not (folder / "results.json").exists()
        assert lab.artifacts(run) == FAULT_ARTIFACTS | {f"pilot/{pid}.yaml"}


# ------------------------------------------------------------------------------------------ case 30


def test_a_read_only_results_dir_is_one_clear_error_and_no_running_run(world):
    proc = world["faults"]["proc"]
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    line = one_line_with(proc.stdout, "d-ro:")
    assert line.startswith("d-ro: cannot create the run folder results/d-ro/runs/"), line
    assert line.endswith(": Read-only file system; nothing was run"), line
    assert "NOT-RUN" in one_line_with(proc.stdout, "│ d-ro ")
    assert world["faults"]["ro_files"] == ["assignment.json", "assignment.parquet"]  # nothing written
    assert world["runs"]["d-ro"] == []  # refused before an MLflow run was created


def test_a_full_results_disk_fails_the_run_cleanly(world):
    lab, proc = world["lab"], world["faults"]["proc"]
    assert "Traceback" not in output(proc)
    line = one_line_with(proc.stdout, "d-full:")
    assert line == (
        'd-full: the run stopped in cell 7 (if fault == "print": print("x" * 200_000_000)): '
        "OSError: [Errno 28] No space left on device"
    ), line
    (run,) = world["runs"]["d-full"]
    assert run.info.status == "FAILED"
    assert "No space left on device" in run.data.tags["labkit.error"]
    files = world["faults"]["full_files"]
    # nothing half-written: every file left on the full disk is whole (JSON parses), no temp file is left
    assert not [name for name in files if ".tmp" in name]
    for name, data in files.items():
        if name.endswith((".json", ".ipynb")):
            json.loads(data)
    # the partial notebook is the last complete save, from before the cell whose output filled the disk
    # (papermill's own save leaves the first 1 MB of the 10 MB notebook, which is not JSON)
    (notebook,) = [json.loads(data) for name, data in files.items() if name.endswith("fault.ipynb")]
    ran = ["".join(c["source"]) for c in notebook["cells"] if c.get("execution_count")]
    assert any(source.startswith('if fault == "sleep"') for source in ran)
    assert "x" * 1000 not in json.dumps(notebook)
    assert lab.artifacts(run) >= {"notebook/fault.ipynb", "pilot/d-full.yaml"}
