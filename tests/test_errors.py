"""The error family of labkit/errors.py, used: every class is raised somewhere in labkit/, never the bare
base class, and each one that escapes a command is one line on stderr and exit 1 — never a traceback.

The CLI cases drive the real commands in a tiny lab (``labkit.cli.main`` in this process); each runs twice:
as a user runs it (one line, exit 1), and with ``--debug``, which re-raises, to pin the class that escaped.
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import pytest

from labkit import errors
from labkit.cli import main
from labkit.errors import (
    AssignmentError,
    DataError,
    LabkitError,
    RunError,
    SpecError,
    SpecErrors,
    TrackingError,
)

from conftest import PILOT_YAML, REPO

PACKAGE = REPO / "labkit"
FAMILY = sorted(
    (
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, LabkitError) and c is not LabkitError
    ),
    key=lambda c: c.__name__,
)


def _called_name(node: ast.AST) -> str | None:
    """``X`` for ``X(...)``, ``errors.X(...)`` or a bare ``X``; else None."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


@functools.cache  # the package is parsed once per test process, not once per test
def _raised() -> dict[str, list[str]]:
    """Each name a ``raise`` statement in labkit/ raises -> the places (``file:line``)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                name = _called_name(node.exc)
                if name:
                    found.setdefault(name, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return {name: sorted(places) for name, places in found.items()}


def _base_constructed() -> list[str]:
    """Places in labkit/ that build the bare base class (``LabkitError(...)``), raised there or later."""
    places = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _called_name(node.func) == "LabkitError":
                places.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return sorted(places)


# ------------------------------------------------------------------------------------------ the scan


def test_the_family_is_the_documented_one():
    assert [c.__name__ for c in FAMILY] == [
        "AssignmentError",
        "DataError",
        "RunError",
        "SpecError",
        "SpecErrors",
        "TrackingError",
    ]
    for cls in FAMILY:
        assert cls.__name__ in errors.__doc__


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_every_class_of_the_family_is_raised_somewhere_in_labkit(cls):
    assert _raised().get(cls.__name__), f"{cls.__name__} is never raised in labkit/"


def test_the_bare_base_class_is_never_raised():
    """A problem is raised as the class it belongs to (a caller can catch DataError alone); the base is
    for ``except`` clauses only."""
    assert _raised().get("LabkitError", []) == []
    assert _base_constructed() == []


def test_the_scan_sees_raises_of_every_form():
    code = "def f():\n    raise A('x')\n    raise errors.B('y') from None\n    raise C\n    raise\n"
    tree = ast.parse(code)
    names = [_called_name(n.exc) for n in ast.walk(tree) if isinstance(n, ast.Raise) and n.exc is not None]
    assert names == ["A", "B", "C"]


# ----------------------------------------------------------------------------------- through the CLI


def test_every_class_of_the_family_has_a_case_through_the_cli():
    import re

    cases = [name for name in globals() if name.startswith("test_")]
    for cls in FAMILY:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()  # SpecErrors -> spec_errors
        assert any(name.startswith(f"test_{snake}_") for name in cases), cls.__name__


def _one_line(capsys, argv: list[str], cls: type[LabkitError]) -> str:
    """Run ``labkit ARGV``: one line on stderr, no traceback, exit 1; with --debug, ``cls`` escapes."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    with pytest.raises(cls) as info:
        main([*argv, "--debug"])
    assert type(info.value) is cls
    assert str(info.value) == lines[0]
    return lines[0]


def _data(root: Path, *, has_twitter: bool = True) -> None:
    """The tiny lab's three sources, two customers each way: enough to draw and to fail on a column."""
    import pandas as pd

    (root / "data").mkdir(exist_ok=True)
    ids = [f"c{i}" for i in range(20)]
    customers = {"customer_id": ids}
    if has_twitter:
        customers["has_twitter"] = [True] * len(ids)
    pd.DataFrame(customers).to_parquet(root / "data" / "customers.parquet")
    pd.DataFrame({"customer_id": ids, "churned": [i % 2 for i in range(20)]}).to_csv(
        root / "data" / "outcomes.csv", index=False
    )
    pd.DataFrame(
        {"customer_id": ids, "event_type": ["reply"] * 20, "ts": pd.to_datetime(["2026-11-02"] * 20)}
    ).to_parquet(root / "data" / "events.parquet")


@pytest.fixture
def quiet_env(monkeypatch):
    monkeypatch.setenv("LABKIT_ID_KEY", "k" * 32)
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)


def test_spec_error_a_pilot_file_that_does_not_exist(tiny_lab, capsys, quiet_env):
    line = _one_line(capsys, ["plan", "nope.yaml"], SpecError)
    assert line == "nope.yaml: no such pilot file"


def test_spec_error_a_bad_option(tiny_lab, capsys, quiet_env):
    tiny_lab.pilot()
    line = _one_line(capsys, ["run", "p", "--workers", "0"], SpecError)
    assert line.startswith("--workers: 0 is not allowed")


def test_spec_errors_a_bad_pilot_file(tiny_lab, capsys, quiet_env):
    tiny_lab.pilot(PILOT_YAML.replace("function: service", "function: legal"))
    line = _one_line(capsys, ["plan", "p"], SpecErrors)
    assert line.startswith("experiments/p.yaml:3: function: unknown function 'legal';")


def test_data_error_a_missing_column(tiny_lab, capsys, quiet_env):
    tiny_lab.pilot()
    _data(tiny_lab.root, has_twitter=False)
    line = _one_line(capsys, ["assign", "p"], DataError)
    assert line.startswith("source 'customers', column 'has_twitter': ")


def test_assignment_error_analysing_before_the_draw(tiny_lab, capsys, quiet_env):
    tiny_lab.pilot()
    _data(tiny_lab.root)
    line = _one_line(capsys, ["analyze", "p"], AssignmentError)
    assert line.startswith("p: ")


def test_tracking_error_a_broken_store(tiny_lab, capsys, quiet_env):
    tiny_lab.pilot()
    (tiny_lab.root / "results").mkdir()
    (tiny_lab.root / "results" / "mlflow.db").write_bytes(b"this is not a sqlite database\n" * 100)
    _one_line(capsys, ["compare"], TrackingError)


def test_run_error_a_notebook_that_cannot_run(tiny_lab, capsys, quiet_env):
    notebook = tiny_lab.root / "notebooks" / "no_parameters.ipynb"
    notebook.parent.mkdir()
    shutil.copy(REPO / "tests" / "notebooks" / "no_parameters.ipynb", notebook)
    tiny_lab.pilot(PILOT_YAML + "notebook: notebooks/no_parameters.ipynb\n")
    _data(tiny_lab.root)
    line = _one_line(capsys, ["run", "p", "--no-track"], RunError)
    assert line.startswith("p: ")
