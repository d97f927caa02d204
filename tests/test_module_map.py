"""README's "How the code is laid out" stays true: every module of labkit/ has its line, every line a module."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _map_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## How the code is laid out")
    end = text.find("\n## ", start + 3)
    return text[start : end if end > 0 else None]


def _named() -> set[str]:
    """Paths named at the start of a map line: `labkit/x.py`, or a package's `labkit/x/` with its modules."""
    names: set[str] = set()
    for line in _map_section().splitlines():
        m = re.match(r"^- `(labkit/[\w/]*?)(\w+\.py|)`(?: \(([^)]*)\))? — ", line)
        if not m:
            continue
        folder, module, inner = m.group(1), m.group(2), m.group(3)
        if module:
            names.add(folder + module)
        elif inner:  # - `labkit/pkg/` (a.py, b.py) — ...
            names.update(folder + part.strip() for part in inner.split(",") if part.strip())
    return names


def _modules() -> set[str]:
    return {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "labkit").rglob("*.py")
        if p.name != "__init__.py" or p.stat().st_size > 0 and p.parent != REPO / "labkit"
    } - {"labkit/__init__.py"}


def test_every_module_has_its_line_and_every_line_a_module():
    named, modules = _named(), _modules()
    assert named, "no map lines found"
    assert not modules - named, f"modules missing from README's map: {sorted(modules - named)}"
    assert not named - modules, f"README's map names modules that do not exist: {sorted(named - modules)}"


def test_no_module_exceeds_the_size_of_one_job():
    """Issue #17: a module past ~500 lines does several jobs; split it by job instead."""
    long = {p: n for p in _modules() if (n := len((REPO / p).read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long


def test_tests_mirror_the_package_with_unique_module_names():
    """tests/ has no __init__.py (pytest imports each test module by its name from its folder), so two test
    modules of one name would collide; the folders mirror labkit's packages (issue #17)."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for package in ("assignment", "data", "demo", "runner", "spec", "stats", "tracking"):
        assert any((REPO / "tests" / package).glob("test_*.py")), package
