"""The README's test references are real: every ``tests/...py`` it names exists, and so does every
``tests/x.py::test_name`` (and every ``::test_name`` that continues the list of the file named last).
So does every ``<module>::<test>`` in the case tables of the reliability modules' docstrings.

The Guarantees section cites the tests that prove each promise; a renamed or deleted test would leave a
promise proved by nothing, silently. A name followed by ``*`` (``::test_hostile_*``) stands for the tests
whose names start with that prefix, and at least one must exist.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from conftest import REPO

# a file (optionally with a test), or a bare `::test` continuing the list of the file named before it
REFERENCE = re.compile(r"(?P<file>tests/[\w/]+\.py)(?:::(?P<named>\w+\*?))?|(?<![\w/.])::(?P<bare>\w+\*?)")


def references(text: str) -> list[tuple[int, str, str | None]]:
    """(line, file, test name or None) of every test reference, in order; a bare ``::name`` belongs to the
    file named last before it."""
    out, current = [], None
    for match in REFERENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match["file"]:
            current = match["file"]
            out.append((line, current, match["named"]))
        else:
            assert current is not None, f"README.md:{line}: '::{match['bare']}' names no file before it"
            out.append((line, current, match["bare"]))
    return out


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """Module-level test functions and the test methods of its classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return frozenset(n for n in names if n.startswith("test"))


def missing(text: str, repo: Path) -> list[str]:
    problems = []
    for line, file, name in references(text):
        path = repo / file
        if not path.is_file():
            problems.append(f"README.md:{line}: {file} does not exist")
        elif name is not None and not has_test(path, name):
            problems.append(f"README.md:{line}: {file}::{name} is not a test of that file")
    return problems


def has_test(path: Path, name: str) -> bool:
    have = defined_tests(path)
    return any(n.startswith(name[:-1]) for n in have) if name.endswith("*") else name in have


def test_every_test_the_readme_names_exists():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    refs = references(text)
    assert len([r for r in refs if r[2]]) >= 60  # the Guarantees section cites dozens of tests
    assert missing(text, REPO) == []


def test_the_check_finds_a_missing_test_file_and_a_bare_name_of_the_file_before_it():
    """The reference check itself: a renamed test, a bare continuation and a deleted file are all caught."""
    text = (
        "Tests: tests/reliability/test_guarantees.py::test_every_test_the_readme_names_exists,\n"
        "  ::test_no_such_thing; tests/test_nowhere.py (all of it);\n"
        "  tests/reliability/test_guarantees.py::test_the_check_*, ::test_every_*\n"
    )
    assert references(text) == [
        (1, "tests/reliability/test_guarantees.py", "test_every_test_the_readme_names_exists"),
        (2, "tests/reliability/test_guarantees.py", "test_no_such_thing"),
        (2, "tests/test_nowhere.py", None),
        (3, "tests/reliability/test_guarantees.py", "test_the_check_*"),
        (3, "tests/reliability/test_guarantees.py", "test_every_*"),
    ]
    assert missing(text, REPO) == [
        "README.md:2: tests/reliability/test_guarantees.py::test_no_such_thing is not a test of that file",
        "README.md:2: tests/test_nowhere.py does not exist",
    ]


def test_every_test_a_reliability_case_table_names_exists():
    """``test_input::test_x`` in a module docstring names the one test_input.py under tests/ (the folders
    mirror the package; a test module's name is unique, as pytest's rootdir imports need)."""
    tests = REPO / "tests"
    problems, checked = [], 0
    for module in sorted((tests / "reliability").glob("test_*.py")):
        doc = ast.get_docstring(ast.parse(module.read_text(encoding="utf-8"))) or ""
        for stem, name in re.findall(r"\b(test_\w+)::(test_\w+\*?)", doc):
            candidates = sorted(tests.rglob(f"{stem}.py"))  # test modules' names are unique in tests/
            path = candidates[0] if candidates else None
            checked += 1
            if path is None:
                problems.append(f"{module.name}: {stem}::{name}: no module {stem}.py")
            elif not has_test(path, name):
                problems.append(f"{module.name}: {stem}::{name} is not a test of {path.relative_to(REPO)}")
    assert checked >= 50
    assert problems == []
