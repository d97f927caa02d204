"""The layering of STYLE.md, checked in fresh interpreters: who may import what."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("mlflow", "papermill", "pandas", "ibis", "duckdb", "nbclient", "scipy")
REPO = Path(__file__).resolve().parent.parent


def loaded_after(code: str, cwd: Path | None = None) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=cwd)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def cli_run(*args: str) -> str:
    """Code running `labkit ARGS` in-process (output swallowed), to probe what the command imported."""
    return (
        "import contextlib, io\nfrom labkit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"    assert main({list(args)!r}) == 0"
    )


def test_import_labkit_is_light():
    assert not loaded_after("import labkit") & set(HEAVY)


def test_validating_a_lab_imports_nothing_heavy():
    mods = loaded_after("import labkit.cli, labkit.validate, labkit.spec, labkit.lab, labkit.listing")
    assert not mods & set(HEAVY)


def test_help_imports_neither_pydantic_nor_yaml():
    """`labkit --help` answers from argparse alone (benchmarks/cli.py times it)."""
    mods = loaded_after("from labkit.cli import _parser\n_parser().format_help()")
    assert not mods & {*HEAVY, "pydantic", "yaml", "rich"}


def test_validate_and_list_on_the_demo_lab_import_nothing_heavy():
    """The whole commands, not only their modules: nothing heavy and no rich on the way (< 0.5 s, issue #8)."""
    for command in ("validate", "list"):
        mods = loaded_after(cli_run(command), cwd=REPO)
        assert not mods & {*HEAVY, "rich", "numpy", "pyarrow"}, command


def test_the_cli_skips_pydantic_plugin_discovery_for_its_own_models():
    """The entry-point scan costs 0.1-0.2 s; cli._without_pydantic_plugins skips it and restores the env."""
    code = (
        cli_run("validate") + "\nimport os\nfrom pydantic.plugin import _loader\n"
        "assert _loader._plugins is None, 'plugins were discovered'\n"
        "assert 'PYDANTIC_DISABLE_PLUGINS' not in os.environ"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


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
