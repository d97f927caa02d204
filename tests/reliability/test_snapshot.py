"""One real `labkit run` whose pilot file is edited while its notebook runs (RELIABILITY.md case 39), and
the modes of every file that run leaves under results/<id>/ (case 52).

The notebook loads the pilot it is given, announces that it is running, waits until the test has edited
the pilot file in experiments/, loads the pilot again and writes what it analysed into results.json. The
run must analyse, log and hash one snapshot taken at its start: the notebook, the MLflow tags and params,
the pilot artifact and the description all agree on the pilot as it was when the run began.
"""

from __future__ import annotations

import json
import os
import stat
import time

import nbformat
import pytest
from test_faults import make_lab
from test_pipeline import labkit_popen, pilot_yaml

import labkit

NOTEBOOK = "notebooks/snapshot.ipynb"
PID = "snap"
CELLS = [
    "import json, pathlib, time\n"
    "import labkit\n"
    "from labkit._files import write_atomic\n"
    "lab = labkit.load_lab(lab_path)\n"
    "pathlib.Path(output_dir, 'waiting').touch()\n"
    "while not pathlib.Path(lab.root, 'edited').exists():\n"
    "    time.sleep(0.05)",
    "pilot = labkit.load_pilot(pilot_path, lab=lab)  # read after the edit of experiments/snap.yaml\n"
    "results = {\n"
    "    'pilot': pilot.id, 'decision': 'inconclusive', 'reason': 'what the notebook analysed',\n"
    "    'meta': {'run_token': run_token, 'direction': pilot.spec.hypothesis.direction,\n"
    "             'spec_sha256': pilot.spec_sha256, 'prereg_sha256': pilot.prereg_sha256,\n"
    "             'pilot_path': pilot_path},\n"
    "}\n"
    "write_atomic(pathlib.Path(output_dir, 'results.json'), json.dumps(results))  # labkit's own writer",
]


def snapshot_notebook() -> str:
    params = nbformat.v4.new_code_cell(
        'run_token = ""\noutput_dir = "."\npilot_path = ""\nlab_path = ""\nas_of = ""'
    )
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, *(nbformat.v4.new_code_cell(src) for src in CELLS)])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nbformat.writes(nb)


@pytest.fixture(scope="module")
def edited(tmp_path_factory) -> dict:
    """`labkit run snap`; once its notebook runs, the pilot's hypothesis is turned round in experiments/."""
    lab = make_lab(tmp_path_factory.mktemp("snapshot"), {PID: None})
    (lab.root / NOTEBOOK).write_text(snapshot_notebook())
    pilot_file = lab.root / "experiments" / f"{PID}.yaml"
    pilot_file.write_text(pilot_yaml(PID, notebook=NOTEBOOK))
    original = pilot_file.read_bytes()
    proc = labkit_popen(lab, "run", PID)
    try:
        deadline = time.monotonic() + 120
        while not (lab.run_dirs(PID) and (lab.run_dirs(PID)[-1] / "waiting").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=60)
            time.sleep(0.05)
        changed = original.replace(b"direction: decrease", b"direction: increase").replace(
            b"Fast replies lower churn.", b"Fast replies raise churn."
        )
        assert changed != original
        pilot_file.write_bytes(changed)
        (lab.root / "edited").touch()
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (folder,) = lab.run_dirs(PID)
    (run,) = lab.runs(PID)
    return {
        "lab": lab, "code": proc.returncode, "stdout": stdout, "stderr": stderr, "original": original,
        "folder": folder, "run": run,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ case 39


def test_an_edit_during_the_run_changes_nothing_in_it(edited):
    lab, run, folder = edited["lab"], edited["run"], edited["folder"]
    assert edited["code"] == 0, edited["stdout"] + edited["stderr"]
    snapshot = folder / f"{PID}.yaml"
    assert snapshot.read_bytes() == edited["original"]  # taken at the start, before the edit
    assert b"direction: increase" in (lab.root / "experiments" / f"{PID}.yaml").read_bytes()
    taken = labkit.load_pilot(snapshot, lab=labkit.load_lab(lab.root / "configs" / "lab.yaml"))

    analysed = json.loads((folder / "results.json").read_text())["meta"]
    assert analysed["pilot_path"] == str(snapshot)  # the notebook was given the snapshot ...
    assert analysed["direction"] == "decrease"  # ... and analysed it, not the edited file
    tags, params = run.data.tags, run.data.params
    assert tags["labkit.spec_sha256"] == analysed["spec_sha256"] == taken.spec_sha256
    assert tags["labkit.prereg_sha256"] == analysed["prereg_sha256"] == taken.prereg_sha256
    assert tags["labkit.spec_changed"] == "false"  # the first run: its own snapshot is the pre-registration
    assert params["hypothesis.direction"] == "decrease"
    assert params["hypothesis.statement"] == "Fast replies lower churn."
    assert "predicted to decrease" in tags["mlflow.note.content"]
    logged = lab.download(run, f"pilot/{PID}.yaml").read_bytes()
    assert logged == edited["original"]  # the artifact is the snapshot


# ------------------------------------------------------------------------------------------ case 52


def test_every_file_a_run_leaves_has_the_one_mode_policy(edited):
    """Files 0666 and folders 0777 less the umask (0644/0755 under the usual 022): results.json, record.json
    and recorded.json included, which labkit used to write 0600 through mkstemp."""
    assert edited["code"] == 0, edited["stdout"] + edited["stderr"]
    mask = os.umask(0)
    os.umask(mask)
    results = edited["lab"].root / "results" / PID
    modes = {
        str(p.relative_to(results)): stat.S_IMODE(p.stat().st_mode) for p in [results, *results.rglob("*")]
    }
    assert {"runs", f"runs/{edited['folder'].name}/results.json", f"runs/{edited['folder'].name}/record.json",
            f"runs/{edited['folder'].name}/recorded.json", "assignment.parquet"} <= set(modes)  # fmt: skip
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o777 if (results / name).is_dir() else 0o666) & ~mask
    }
    assert not wrong, wrong
