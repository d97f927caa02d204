"""Shared fixtures: a tiny lab written into tmp_path, and a valid pilot to break one field at a time.

Under pytest-xdist (``make test`` runs ``-n 4 --dist loadscope``, the Makefile) each test module is one
unit of work, so a module's fixtures (its labs, its scenario threads) are built once, on one worker; the
modules that read the session's demo lab (tests/demo_lab.py) are one unit, so ``labkit demo`` runs once
(and Chromium starts once: tests/chromium.py).
The slowest units are sent first. The workers share one ``mlflow server`` (tests/mlflow_server.py: the first
that needs it starts it, the controller stops it at the end) and one labkit fork server (tests/cli_fork.py:
the controller starts it before the workers and stops it at the end); PostgreSQL (tests/pg_server.py, ~1 s
to start) is per worker.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from chromium import chromium  # noqa: F401 -- the session fixture: one headless Chromium
from demo_lab import demo_lab  # noqa: F401 -- the session fixture: `labkit demo` run once
from mlflow_server import mlflow_server, stop_shared_server  # noqa: F401 -- the session fixture, shared
from pilots import CHURNED, DROP, pilot_yaml  # noqa: F401 -- CHURNED, DROP: for the tests

from labkit.runner.lazy_iri import defer_iri_grammars

# As labkit does before it imports nbformat (labkit.runner.lazy_iri): jsonschema's IRI grammars load on
# first use, not when a test module imports nbformat at collection — ~1.8 CPU-s per worker (each collects
# every module) that no test needs; a schema that checks an IRI still gets the same verdict.
defer_iri_grammars()

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]

LAB_YAML = """\
lab: tiny-lab
tracking_uri: sqlite:///results/mlflow.db
mlflow_experiment: tiny-pilots
currency: USD
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
  events: {format: parquet, path: data/events.parquet, timestamp: ts}
functions: [sales, marketing, service, pr]
channels: [twitter, linkedin, community, email]
stages: [acquisition, onboarding, service, retention]
defaults: {alpha: 0.05, power: 0.8, engine: frequentist, correction: holm, sequential: false}
privacy: {pseudonymize: true, key_env: LABKIT_ID_KEY}
"""

PILOT_YAML = pilot_yaml()  # the default pilot as text, for tests that break one line of it


class TinyLab:
    def __init__(self, root: Path):
        self.root = root

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def pilot(self, text: str = PILOT_YAML, name: str = "p") -> Path:
        return self.write(f"experiments/{name}.yaml", text)


# Under pytest-xdist each test module is one unit of work, and the modules that read the session's demo
# lab (tests/demo_lab.py) are one unit together, so that a module's fixtures and `labkit demo` are built
# once, on one worker. (Found by name, not by fixture: the controller that schedules sees node ids only.
# A module missing here still passes, on a worker that builds its own demo lab.)
DEMO_LAB_MODULES = {
    "tests/test_browser.py",
    "tests/demo/test_demo_e2e.py",
    "tests/demo/test_demo_truth.py",
    "tests/test_jupyterlab.py",
    "tests/test_notebooks.py",
}
# Units that take longest (wall per unit in a profiled `make test`, 2026-12-07), slowest first: they
# start first, so that the run ends on short units and no worker is left running a long one alone (before
# the list reached past the 18th unit, the last ~15 s ran on one core's worth of load or less: test_tracking,
# test_terminal and test_over_time_cli went last in file order). A name missing here only loses its place.
SLOWEST_FIRST = (
    "demo_lab",
    "tests/data/test_spark.py",
    "tests/test_pipeline.py",
    "tests/runner/test_runner.py",
    "tests/reliability/test_faults.py",
    "tests/test_analysis.py",
    "tests/reliability/test_load.py",
    "tests/reliability/test_shared_server.py",
    "tests/demo/test_demo.py",
    "tests/reliability/test_concurrency.py",
    "tests/test_bench_smoke.py",
    "tests/stats/test_proportions.py",
    "tests/test_tracking.py",
    "tests/tracking/test_compare.py",
    "tests/test_terminal.py",
    "tests/runner/test_warm_kernels.py",
    "tests/reliability/test_input.py",
    "tests/data/test_postgres.py",
    "tests/reliability/test_security.py",
    "tests/test_over_time_cli.py",
    "tests/tracking/test_ui.py",
    "tests/reliability/test_properties.py",
    "tests/data/test_over_time.py",
    "tests/assignment/test_assign.py",
    "tests/test_segments.py",
    "tests/data/test_clusters.py",
    "tests/data/test_aggregate.py",
    "tests/stats/test_consistency.py",
    "tests/stats/test_cluster.py",
    "tests/reliability/test_store.py",
    "tests/reliability/test_commands.py",
    "tests/data/test_timezone.py",
    "tests/test_cluster_analysis.py",
    "tests/test_verdicts.py",
)


def _unit(nodeid: str) -> str:
    """The unit of work of a test: its module, or ``demo_lab`` for the demo lab's readers."""
    module = nodeid.split("::", 1)[0]
    return "demo_lab" if module in DEMO_LAB_MODULES else module


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: unknown, and unused, under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` by :func:`_unit` (xdist's own loadscope splits a module by class, and its
    loadgroup does not group under pytest 9: it rewrites ``item._nodeid``, which pytest 9 no longer reads)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_finish(session):
    """Freeze what the imports and the collection built (hundreds of thousands of objects on a worker):
    the interpreter's full collections, which statsmodels and others also call, then skip them. Only the
    collector's work changes; nothing frozen was garbage."""
    import gc

    gc.collect()
    gc.freeze()


def _xdist_controller(config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config):
    """The xdist controller starts the run's one labkit fork server (tests/cli_fork.py) before the workers
    exist, and names its socket in the environment they inherit: its imports are paid once, not per worker."""
    if _xdist_controller(config):
        import shutil

        import cli_fork

        folder = cli_fork.server_folder("labkit-cli-fork-run-")
        config._cli_fork = (cli_fork.start_server(folder), folder)
        config.add_cleanup(lambda: (cli_fork.stop_server(config._cli_fork[0]), shutil.rmtree(folder, True)))
        os.environ[cli_fork.SHARED_SOCKET] = str(folder / "socket")


def pytest_sessionfinish(session):
    """The xdist controller, once every worker has ended, stops the run's shared mlflow server."""
    if _xdist_controller(session.config):
        stop_shared_server(session.config._tmp_path_factory.getbasetemp())


def pytest_collection_modifyitems(config, items):
    """On an xdist worker, the slowest units first (the controller keeps this order when given
    ``--no-loadscope-reorder``); run alone, the tests keep their file order."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))  # stable: file order within


@pytest.fixture
def tiny_lab(tmp_path, monkeypatch) -> TinyLab:
    """An empty lab with configs/lab.yaml; the cwd is its root so messages show relative paths."""
    lab = TinyLab(tmp_path)
    lab.write("configs/lab.yaml", LAB_YAML)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABKIT_LAB", raising=False)
    monkeypatch.delenv("LABKIT_TRACKING_URI", raising=False)
    return lab


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory, _labkit_cache) -> Path:
    """An empty sqlite store at this MLflow's schema (its Default experiment only), made once a session as
    labkit makes a lab's first store: a copy of the cached empty store (labkit.tracking.schema), which the
    run's first store built by MLflow's migrations. Tests copy it into their labs.

    The creation path itself runs, eight `labkit run` processes at once, in
    tests/reliability/test_concurrency.py (the fresh round), and with and without the cached copy in
    tests/reliability/test_store.py."""
    from labkit.tracking.schema import build_sqlite_store

    folder = tmp_path_factory.mktemp("template")
    build_sqlite_store(folder / "mlflow.db", (folder / "mlruns").as_uri(), lambda: None)
    return folder / "mlflow.db"


@pytest.fixture(scope="session", autouse=True)
def _labkit_cache(tmp_path_factory):
    """labkit's cache folder (the file digests, labkit.data.sources.DigestCache; the empty MLflow store,
    labkit.tracking.schema) of the whole session and of every labkit subprocess it starts, in a folder of
    the session instead of the user's ~/.cache. Under xdist the workers share one, as a user's parallel
    commands share ~/.cache/labkit (its writes are atomic renames): the empty store is built by MLflow's
    migrations once a run, not once a worker (~1 CPU-s each)."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' base folders share the run's parent
        folder = tmp_path_factory.getbasetemp().parent / "labkit-cache"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("labkit-cache")
    os.environ["LABKIT_CACHE_DIR"] = str(folder)
    yield
