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
    mods = loaded_after(
        "import labkit.cli\nfrom labkit.cli_parser import build_parser\nbuild_parser().format_help()"
    )
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


def test_the_tracking_package_imports_mlflow_only_when_it_talks_to_it():
    """Every name of labkit.tracking loads without MLflow (seconds of import): mlflow is imported inside the
    functions that call it, so `labkit compare` on a sqlite store never pays for it."""
    code = "import labkit.tracking as t, labkit.compare, labkit.report\n[getattr(t, n) for n in t.__all__]"
    assert "mlflow" not in loaded_after(code)


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


# --------------------------------------------------------------------------- the static import graph

PACKAGE = REPO / "labkit"


def _module_names() -> dict[str, Path]:
    """Every module of labkit by dotted name (a package by its own name, for its ``__init__.py``)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_checking_only(tree) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:``: annotations only, never executed."""
    import ast

    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The labkit modules one module imports anywhere: at the top, inside functions (lazy), relative.
    ``from package import name`` counts as importing the submodule ``package.name`` when there is one, else
    the package; importing a submodule is not counted as importing its parent package's ``__init__``."""
    import ast

    def module_of(dotted: str) -> str:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out |= {module_of(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else module_of(base))
    return out - {"", name}


def _mlflow_imported(path: Path) -> bool:
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """labkit's modules -> the labkit modules each imports (:func:`_imports`)."""
    modules = _module_names()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_module_import_graph_has_no_cycle():
    """Static, so a cycle hidden by an import inside a function (compare <-> runstore was one) shows too."""
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_tracking_package_imports_mlflow():
    """labkit/tracking/ is the one owner of MLflow (issue #17); anything else goes through its API."""
    speaking = sorted(name for name, path in _module_names().items() if _mlflow_imported(path))
    assert speaking and all(name.startswith("labkit.tracking.") for name in speaking), speaking
