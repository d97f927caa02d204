"""The MLflow store itself under faults (RELIABILITY.md case 38): a kill -9 while a fresh lab's store is
being created, and a store left half-built by an older labkit or another tool.

Real processes get a real SIGKILL at several points of the creation; no mock of MLflow or sqlite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import cli_fork
import pytest
from test_tracking import _restore_mlflow_env, make_record, use_store  # noqa: F401 -- fixtures

from labkit.compare import portfolio
from labkit.errors import TrackingError
from labkit.lab import load_lab
from labkit.tracking import Tracker

CREATOR = textwrap.dedent(
    """
    import sys
    from labkit.lab import load_lab
    from labkit.tracking import Tracker

    Tracker(load_lab(sys.argv[1])).prepare()  # a fresh lab: this creates the store
    """
)
# When each try is killed, one after the other on the same lab: ``(after, seconds)`` -- that many seconds
# after the try first writes a store file ("file": MLflow is creating its tables) or a store file that
# holds alembic's version table ("migrating": MLflow runs its ~100 schema migrations). Each try has an empty
# cache folder, so that it builds the store by the migrations; the last ("copied") copies the cached empty
# store (labkit.tracking.schema.store_template) and is killed as soon as its file appears.
KILLS = (("file", 0.0), ("migrating", 0.0), ("migrating", 0.25), ("migrating", 0.6), ("copied", 0.0))


def _store_files(results: Path) -> list[Path]:
    """Any file of a sqlite store being made in results/ (the store itself, or one built beside it)."""
    return [p for p in results.glob("*mlflow.db*") if not p.name.endswith(("-journal", "-wal", "-shm"))]


def _state(results: Path) -> dict[Path, tuple[int, int]]:
    state = {}
    for p in _store_files(results):
        with contextlib.suppress(FileNotFoundError):  # a file built aside is renamed at any moment
            st = p.stat()
            state[p] = (st.st_mtime_ns, st.st_size)
    return state


def _written(results: Path, before: dict, *, migrating: bool) -> bool:
    """Whether a store file was created or changed since ``before`` (and, with ``migrating``, holds
    alembic's version table): this try's own process has got that far."""
    for path, state in _state(results).items():
        if before.get(path) == state:
            continue
        if not migrating:
            return True
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.05)
            ) as db:
                if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
                    return True
        except sqlite3.Error:
            pass
    return False


def _complete(db: Path) -> bool:
    """Whether ``db`` is a store at this MLflow's schema revision (what a finished creation leaves)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    if not db.is_file():
        return False
    with sqlite3.connect(db) as con:
        try:
            versions = [v for (v,) in con.execute("SELECT version_num FROM alembic_version")]
        except sqlite3.Error:
            return False
    return versions == [_get_latest_schema_revision()]


def _kill_while_creating(root: Path, after: str, delay: float, cache: Path) -> dict:
    """Start a process that opens the lab's store (creating it if needed); SIGKILL it ``delay`` s after
    ``after`` (see KILLS) -- unless it has finished by then."""
    before = _state(root / "results")
    # a process of its own, forked with MLflow already imported (tests/cli_fork.py): the kill lands in the
    # store's creation all the same; a new interpreter would only add ~2.5 CPU-s of imports before it
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_TRACKING_URI", "LABKIT_LAB")}
    env["LABKIT_CACHE_DIR"] = str(cache)
    proc = cli_fork.python(CREATOR, [str(root)], root, env)
    results = root / "results"
    deadline = time.monotonic() + 60
    while (
        not _written(results, before, migrating=after == "migrating")
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.005)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    return {
        "after": (after, delay),
        "killed": killed,
        "code": proc.returncode,
        "stderr": err,
    }


def test_a_kill_during_the_first_store_creation_leaves_a_usable_store(tiny_lab, tmp_path_factory, migrated):
    """Each try finds what the one before left (a half-built store, or files of one built aside) and is
    killed in turn; a try that is not killed must succeed, and the lab must record and compare after."""
    from labkit.tracking.schema import template_path

    results = tiny_lab.root / "results"
    kills = []
    for after, delay in KILLS:
        if _complete(results / "mlflow.db"):  # a try that was not killed: the next one creates it again
            (results / "mlflow.db").unlink()
        cache = tmp_path_factory.mktemp("cache")
        if after == "copied":  # the cache holds the empty store
            shutil.copyfile(migrated["template"], cache / template_path().name)
        kills.append(_kill_while_creating(tiny_lab.root, after, delay, cache))
        assert kills[-1]["killed"] or kills[-1]["code"] == 0, kills[-1]["stderr"][-2000:]
    assert sum(k["killed"] for k in kills) >= 2, kills  # the tries died mid-creation, not after it
    lab = load_lab(tiny_lab.root)
    tracker = Tracker(lab)
    run_id = tracker.record(make_record(tiny_lab.root))  # the next run records ...
    (row,) = tracker.latest_runs()
    assert (row["run_id"], row["status"]) == (run_id, "FINISHED")
    assert [p.pilot for p in portfolio(lab).pilots] == ["p"]  # ... and compare reads it
    leftovers = sorted(p.name for p in results.iterdir() if "mlflow.db" in p.name)
    assert leftovers == ["mlflow.db"], leftovers  # no half-built store left beside it


@pytest.fixture
def stored_lab(tiny_lab, empty_store):
    """The tiny lab on a complete, empty store."""
    use_store(tiny_lab.root, empty_store)
    tiny_lab.lab = load_lab(tiny_lab.root)
    return tiny_lab


def test_a_half_built_store_without_runs_is_rebuilt(stored_lab):
    """A store an older labkit left half-built (tables, no schema version): no run is lost by rebuilding."""
    db = stored_lab.root / "results" / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE alembic_version")
    tracker = Tracker(stored_lab.lab)
    run_id = tracker.record(make_record(stored_lab.root))
    assert tracker.latest_runs()[0]["run_id"] == run_id


def test_a_half_built_store_holding_runs_is_one_line_saying_what_to_do(stored_lab):
    Tracker(stored_lab.lab).record(make_record(stored_lab.root))
    db = stored_lab.root / "results" / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM alembic_version")
    before = db.read_bytes()
    with pytest.raises(TrackingError) as caught:
        Tracker(load_lab(stored_lab.root)).prepare()
    message = str(caught.value)
    assert "\n" not in message
    assert "half-built" in message and "holds 1 run" in message and "move it aside" in message, message
    assert db.read_bytes() == before  # runs are never thrown away


# ------------------------------------------------------------------------------------------ case 45


def test_a_read_only_store_is_one_line_on_stderr_and_mlflows_traceback_goes_to_its_log(stored_lab):
    """MLflow logs an ERROR with a whole traceback on a read-only store before raising; labkit's one line
    must be all the terminal shows, the detail kept in results/mlflow.log."""
    root = stored_lab.root
    stored_lab.pilot()
    Tracker(stored_lab.lab).prepare()  # the lab's experiment exists: the store has been used
    record = make_record(root)
    folder = root / "results" / "p" / "runs" / "20261206T000000000000Z"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(record.to_json())
    db = root / "results" / "mlflow.db"
    mounted = subprocess.run(["mount", "--bind", str(db), str(db)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(
            f"`mount --bind` failed ({mounted.stderr.strip()}): a read-only store needs a mount (root)"
        )
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(db)], check=True, capture_output=True)
        env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_TRACKING_URI", "LABKIT_LAB")}
        proc = cli_fork.run(["run", "--record-only", "p"], root, env, timeout=120)  # a process of its own
    finally:
        subprocess.run(["umount", "-l", str(db)], capture_output=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"MLflow store sqlite:///{db}: creating a run failed: attempt to write a readonly database"
    ), proc.stderr
    assert "Traceback" in (root / "results" / "mlflow.log").read_text()  # the detail is kept


# --------------------------------------------------------------- a new store from the cached empty store


def _dump(db: Path) -> tuple[list[list[str]], list[tuple]]:
    """A store's SQL dump without its experiments' rows, and those rows without their two timestamps.
    The statements sorted, and each one's clauses: MLflow's own migrations create some indexes, and some
    tables' constraints, in another order each time (two stores it builds itself differ so)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        lines = sorted(
            sorted(clause.strip() for clause in line.split(", \n"))
            for line in con.iterdump()
            if not line.startswith('INSERT INTO "experiments"')
        )
        rows = [r[:4] + r[6:] for r in con.execute("SELECT * FROM experiments ORDER BY experiment_id")]
    return lines, rows


def _migrations_counted(monkeypatch) -> list[str]:
    """MLflow's own creation of a new database (its tables, then every migration), counted as it runs."""
    import mlflow.store.db.utils as db_utils

    calls, real = [], db_utils._initialize_tables
    monkeypatch.setattr(
        db_utils, "_initialize_tables", lambda engine: (calls.append(str(engine.url)), real(engine))
    )
    return calls


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> dict[str, Path]:
    """A store built by MLflow alone (its migrations), and the cached empty store labkit kept from its own
    first build (with an empty cache folder: by the migrations too)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from labkit.tracking.schema import build_sqlite_store, store_template

    folder = tmp_path_factory.mktemp("migrated")
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflows.db'}", ART).engine.dispose()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_CACHE_DIR", str(folder / "cache"))
        build_sqlite_store(folder / "labkits.db", ART, lambda: None)
        template = store_template()
    assert template is not None
    return {"mlflows": folder / "mlflows.db", "labkits": folder / "labkits.db", "template": template}


ART = "file:///srv/artifacts"


def _cache_with(tmp_path: Path, template: Path, monkeypatch) -> Path:
    """A cache folder of this test's holding a copy of ``template``, named as labkit names it."""
    from labkit.tracking.schema import template_path

    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir(parents=True)
    shutil.copyfile(template, template_path())
    return template_path()


def test_a_new_store_is_a_copy_of_the_cached_empty_store_and_equals_mlflows_own(
    tmp_path, monkeypatch, migrated
):
    """labkit's first store, built with an empty cache, ran MLflow's migrations and left an empty copy in
    the cache; a later one copies it (no migration) and is, row for row, the store MLflow builds itself."""
    from labkit.tracking.schema import build_sqlite_store

    mlflows = _dump(migrated["mlflows"])
    assert mlflows[1] == [(0, "Default", f"{ART}/0", "active", "default")]
    assert _dump(migrated["labkits"]) == mlflows
    # nothing of the first lab, in freed pages either (labkit VACUUMs the copy; sqlite builds with secure_delete
    # on, as Debian's, would not have kept it anyway)
    assert b"artifacts" not in migrated["template"].read_bytes()
    template = _cache_with(tmp_path, migrated["template"], monkeypatch)
    migrations = _migrations_counted(monkeypatch)
    build_sqlite_store(tmp_path / "new" / "mlflow.db", ART, lambda: None)
    assert migrations == []  # the copy: no migration ran
    assert _dump(tmp_path / "new" / "mlflow.db") == mlflows
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["mlflow.db"]
    assert [p.name for p in template.parent.iterdir()] == [template.name]  # nothing left beside it


def _sql(db: Path, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute(statement)


UNUSABLE = {
    "not a database": lambda db: db.write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000),
    "half of one": lambda db: db.write_bytes(db.read_bytes()[: db.stat().st_size // 2]),
    "another revision": lambda db: _sql(db, "UPDATE alembic_version SET version_num = 'abc123'"),
    "holds an experiment": lambda db: _sql(
        db, "INSERT INTO experiments (experiment_id, name, lifecycle_stage) VALUES (7, 'x', 'active')"
    ),
    "no runs table": lambda db: _sql(db, "DROP TABLE runs"),
    "a folder": lambda db: (db.unlink(), db.mkdir()),
}


def test_an_unusable_cached_store_is_not_copied_and_is_made_anew(tmp_path, monkeypatch, migrated):
    """Each way the cached copy can be spoilt makes it unusable; a new store is then built by the
    migrations, as MLflow builds it, and the copy made anew."""
    from labkit.tracking.schema import build_sqlite_store, store_template

    for spoil, how in UNUSABLE.items():
        template = _cache_with(tmp_path / spoil, migrated["template"], monkeypatch)
        how(template)
        assert store_template() is None, spoil
    template = _cache_with(tmp_path / "spoilt", migrated["template"], monkeypatch)
    UNUSABLE["holds an experiment"](template)
    killed = template.with_name(
        f".{template.name}.{2**22 + 1}.0123abcd"
    )  # a writer killed mid-copy (no such pid)
    killed.write_bytes(b"half a copy")
    migrations = _migrations_counted(monkeypatch)
    build_sqlite_store(tmp_path / "new.db", ART, lambda: None)
    assert len(migrations) == 1  # built by the migrations, not from the spoilt copy
    assert _dump(tmp_path / "new.db") == _dump(migrated["mlflows"])
    assert store_template() == template  # made anew
    assert [p.name for p in template.parent.iterdir()] == [template.name]  # the killed writer's part removed


def test_an_unwritable_cache_folder_costs_only_the_migrations(tmp_path, monkeypatch, migrated):
    from labkit.tracking.schema import build_sqlite_store

    (tmp_path / "cache").write_text("a file where the folder should be")
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "cache"))
    migrations = _migrations_counted(monkeypatch)
    build_sqlite_store(tmp_path / "new.db", ART, lambda: None)
    assert len(migrations) == 1
    assert _dump(tmp_path / "new.db") == _dump(migrated["mlflows"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "new.db"]
