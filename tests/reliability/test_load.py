"""`labkit run experiments/` with 50 pilots (issue #7 "Concurrency and load").

One real ``labkit run experiments/`` over a lab of 50 assigned pilots (the fault notebook of
test_faults.py: a kernel start and a results.json each), four of which raise. The summary must be
right: one row per pilot with its own status, the failures named, exit 1, and the store must hold
exactly one run per pilot, FINISHED or FAILED as the notebook ended, with its metrics, nothing RUNNING,
``labkit.latest`` on each FINISHED run. ``labkit compare`` over 500 recorded runs is
tests/tracking/test_compare.py::test_five_hundred_runs_compare_correctly.
"""

from __future__ import annotations

import re

import pytest
from test_faults import OK_ARTIFACTS, make_lab, running
from test_pipeline import labkit_cli, no_kernel_left, one_line_with, output

from labkit.tracking import metrics_from_results

N = 50
FAILING = {"l-07", "l-21", "l-33", "l-48"}
PILOTS = [f"l-{i:02d}" for i in range(N)]


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    lab = make_lab(
        tmp_path_factory.mktemp("load") / "lab", {pid: "raise" if pid in FAILING else None for pid in PILOTS}
    )
    proc = labkit_cli(lab, "run", "experiments/", timeout=600)
    return {"lab": lab, "proc": proc, "runs": lab.runs(), "kernels_left": not no_kernel_left(lab)}


def test_the_summary_has_one_right_row_per_pilot(batch):
    proc = batch["proc"]
    text = output(proc)
    assert proc.returncode == 1, text[-3000:]  # four failed
    assert "Traceback" not in text
    assert f"{N} pilot run(s)" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^│ l-\d\d ", line)]
    assert sorted(line.split()[1] for line in rows) == PILOTS  # each pilot once
    for line in rows:
        pid = line.split()[1]
        assert ("FAILED" if pid in FAILING else "FINISHED") in line, line
    for pid in FAILING:
        assert "raised ValueError: injected fault" in one_line_with(proc.stdout, f"{pid}:")
    assert len([line for line in proc.stdout.splitlines() if "raised ValueError" in line]) == len(FAILING)


def test_the_store_holds_one_run_per_pilot_with_its_metrics(batch):
    lab, runs = batch["lab"], batch["runs"]
    assert sorted(r.data.tags["labkit.pilot"] for r in runs) == PILOTS
    for run in runs:
        pid = run.data.tags["labkit.pilot"]
        if pid in FAILING:
            assert (run.info.status, run.data.tags["labkit.latest"]) == ("FAILED", "false")
            continue
        assert (run.info.status, run.data.tags["labkit.latest"]) == ("FINISHED", "true")
        assert run.data.metrics == pytest.approx(metrics_from_results(lab.results_of(pid)), rel=1e-12)
        assert run.data.tags["labkit.run_key"] == f"{pid}/{lab.run_dirs(pid)[0].name}"
    sample = next(r for r in runs if r.data.tags["labkit.pilot"] == "l-49")
    assert lab.artifacts(sample) == OK_ARTIFACTS | {"pilot/l-49.yaml"}
    assert running(lab) == []
    assert not batch["kernels_left"]
