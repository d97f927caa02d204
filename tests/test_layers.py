"""The layering of STYLE.md, checked in fresh interpreters: who may import what."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("mlflow", "papermill", "pandas", "ibis", "duckdb", "nbclient", "scipy")


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_labkit_is_light():
    assert not loaded_after("import labkit") & set(HEAVY)


def test_validating_a_lab_imports_nothing_heavy():
    mods = loaded_after("import labkit.cli, labkit.validate, labkit.spec, labkit.lab, labkit.listing")
    assert not mods & set(HEAVY)


def test_analysis_never_imports_mlflow_or_papermill():
    mods = loaded_after("import labkit.analysis, labkit.decision, labkit.planning, labkit.data.aggregate")
    assert not mods & {"mlflow", "papermill", "nbclient"}


def test_runner_does_not_import_mlflow_and_tracking_not_papermill():
    assert "mlflow" not in loaded_after("import labkit.runner")
    assert "papermill" not in loaded_after("import labkit.tracking")


def test_public_api_names():
    import labkit

    assert {"load_lab", "load_pilot", "plan", "assign", "analyze"} <= set(labkit.__all__)
    for name in labkit.__all__:
        assert getattr(labkit, name) is not None


def test_api_functions_survive_their_modules_being_imported():
    """A submodule named like an API function would replace it on import (labkit.assign was one)."""
    code = (
        "import labkit, labkit.assignment, labkit.analysis, labkit.planning, labkit.spec, labkit.lab\n"
        "assert all(callable(getattr(labkit, n)) for n in ('assign', 'analyze', 'plan', 'load_pilot', 'load_lab'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
