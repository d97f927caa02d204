"""Reading a lab's runs for `labkit compare`: from a local MLflow sqlite store directly, else through MLflow.

Importing MLflow and opening its SQLAlchemy store (with its schema check) costs two to four seconds
before a single run is read, and `labkit compare` only reads. For a ``sqlite:///`` store whose schema
is a revision this module was checked against (``KNOWN_REVISIONS``, MLflow's alembic revision), the
runs are read with plain SELECTs on MLflow's own tables — ``experiments``, ``runs``, ``tags``,
``params``, ``latest_metrics`` — over a read-only connection (``mode=ro``: it can neither write nor
migrate), with MLflow's search semantics: active runs of the active experiment, ordered by start time
(newest first) then run id, metrics as their latest value (NaN where MLflow stored NaN). Anything else
— a tracking server, another schema revision, a store being migrated — goes through MLflow
(``store.Tracker``), so an MLflow upgrade can cost speed, never correctness.
``tests/test_compare.py`` checks that both readers give the same runs and the same portfolio.

Both readers offer the same three calls: ``latest_runs`` (the latest FINISHED run of every pilot),
``pilot_runs`` (every run carrying a pilot tag, optionally of one status and function) and
``results_json`` (a run's results.json artifact, parsed).

Also the read side of `labkit compare`: the one ``Tracker`` per process (``open_tracker``), whether the
store exists at all, which pilots have a live RUNNING run (``owners.stale_reason``), and results.json's
``meta``.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.parse
import urllib.request
from pathlib import Path

from labkit.errors import TrackingError
from labkit.lab import sqlite_file
from labkit.tracking.history import look_stamp
from labkit.tracking.owners import stale_reason
from labkit.tracking.record import TAG_FUNCTION, TAG_LATEST, TAG_LOOK, TAG_PILOT
from labkit.tracking.rules import display_uri, run_entry
from labkit.tracking.store import Tracker

# MLflow schema revisions (alembic_version.version_num) whose tables this reader was checked against.
# mlflow 3.17; 3.18 (its three migrations add skill-registry and issue tables and change MCP server versions:
# none of the tables read here)
KNOWN_REVISIONS = frozenset({"dc11669786a5", "f4a9b2c7d1e6"})

_TRACKERS: dict[tuple[str, str, bool], Tracker] = {}


def open_runs(lab):
    """The fastest reader that is exact for the lab's store: ``SqliteRuns`` when possible, else
    ``TrackerRuns`` (MLflow)."""
    return SqliteRuns.open(lab) or TrackerRuns(lab)


class SqliteRuns:
    """MLflow's sqlite tables, read-only; ``open`` returns None when the store is not one it knows."""

    def __init__(self, lab, con: sqlite3.Connection, experiment_id: str | None):
        self._lab = lab
        self._con = con
        self._experiment = experiment_id

    @classmethod
    def open(cls, lab, *, any_revision: bool = False) -> SqliteRuns | None:
        """The reader of the lab's sqlite store when its one schema revision is in ``KNOWN_REVISIONS`` (any
        one revision with ``any_revision``: the tests check the reader against the installed MLflow's own
        search before a revision is added), else None."""
        tracking_uri, experiment = lab.tracking_uri, lab.spec.mlflow_experiment
        path = sqlite_file(tracking_uri)
        if path is None or not path.is_file():
            return None
        try:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            return None
        try:
            revisions = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
            if len(revisions) == 1 and (any_revision or revisions[0] in KNOWN_REVISIONS):  # not mid-migration
                row = con.execute(
                    "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                    (experiment,),
                ).fetchone()
                return cls(lab, con, str(row[0]) if row else None)
        except sqlite3.Error:
            pass
        con.close()
        return None

    def close(self) -> None:
        self._con.close()

    def latest_runs(self, *, function: str | None = None) -> list[dict]:
        """As ``Tracker.latest_runs``: one FINISHED ``labkit.latest`` run per pilot, sorted by function, pilot."""
        by_pilot: dict[str, dict] = {}
        tags = {TAG_LATEST: "true", **({TAG_FUNCTION: function} if function is not None else {})}
        for run in self._runs(status="FINISHED", tags=tags):
            pilot = run["tags"].get(TAG_PILOT)
            if pilot and pilot not in by_pilot:  # newest first
                by_pilot[pilot] = run
        return sorted(by_pilot.values(), key=lambda r: (r["tags"].get(TAG_FUNCTION, ""), r["pilot"]))

    def pilot_runs(self, *, status: str | None = None, function: str | None = None) -> list[dict]:
        """Every active run with a ``labkit.pilot`` tag (of that status and function), newest first."""
        tags = {TAG_FUNCTION: function} if function is not None else {}
        return self._runs(status=status, tags=tags, tagged=TAG_PILOT)

    def results_json(self, run: dict) -> dict:
        """The run's results.json ({} when unreadable): read in place when the artifacts are local files."""
        path = _local_path(run.get("artifact_uri") or "")
        if path is None:  # artifacts behind a server or in object storage: MLflow fetches them
            return TrackerRuns(self._lab).results_json(run)
        try:
            data = json.loads((path / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _runs(self, *, status: str | None, tags: dict[str, str], tagged: str | None = None) -> list[dict]:
        if self._experiment is None:
            return []
        where = ["r.experiment_id = ?", "r.lifecycle_stage = 'active'"]
        args: list = [self._experiment]
        if status is not None:
            where.append("r.status = ?")
            args.append(status)
        for key, value in tags.items():
            where.append(
                "EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?)"
            )
            args += [key, value]
        if tagged is not None:
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ?)")
            args.append(tagged)
        rows = self._con.execute(
            "SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time, r.artifact_uri FROM runs r "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY r.start_time IS NULL, r.start_time DESC, r.run_uuid",
            args,
        ).fetchall()
        if not rows:
            return []
        ids = [r[0] for r in rows]
        tag_map = self._children("SELECT run_uuid, key, value FROM tags", ids)
        param_map = self._children("SELECT run_uuid, key, value FROM params", ids)
        metric_map = self._children(
            "SELECT run_uuid, key, CASE WHEN is_nan THEN 'nan' ELSE value END FROM latest_metrics", ids
        )
        return [
            run_entry(
                run_id, name, run_status, start, end, tag_map.get(run_id, {}), param_map.get(run_id, {}),
                {k: float(v) for k, v in metric_map.get(run_id, {}).items()}, artifact_uri,
            )
            for run_id, name, run_status, start, end, artifact_uri in rows
        ]  # fmt: skip

    def _children(self, select: str, ids: list[str]) -> dict[str, dict[str, str]]:
        """run id -> {key: value} of a child table, in chunks under sqlite's parameter limit."""
        out: dict[str, dict[str, str]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for run_id, key, value in self._con.execute(f"{select} WHERE run_uuid IN ({marks})", chunk):
                out.setdefault(run_id, {})[key] = value
        return out


class TrackerRuns:
    """The same three calls through MLflow (``labkit.tracking.Tracker``), for servers and unknown schemas."""

    def __init__(self, lab):
        self._tracker = open_tracker(lab, read_only=True)

    def latest_runs(self, *, function: str | None = None) -> list[dict]:
        return self._tracker.latest_runs(function=function)

    def pilot_runs(self, *, status: str | None = None, function: str | None = None) -> list[dict]:
        return self._tracker.pilot_runs(status=status, function=function)

    def results_json(self, run: dict) -> dict:
        return self._tracker.results_json(run["run_id"])

    @property
    def experiment_id(self) -> str | None:
        """The lab's experiment in the store (for links to its runs in the UI)."""
        return self._tracker.experiment_id

    def close(self) -> None:
        pass


def _local_path(uri: str) -> Path | None:
    """A ``file:`` URI or a plain absolute path as a Path; None for any other scheme."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def open_tracker(lab, *, read_only: bool = False) -> Tracker:
    """The lab's ``Tracker``, opened once per process (opening a store costs seconds of schema checks); the
    readers' one writes nothing (``Tracker(read_only=True)``), `labkit compare --log` writes with the other."""
    key = (lab.tracking_uri, lab.spec.mlflow_experiment, read_only)
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(lab, read_only=read_only)
    return _TRACKERS[key]


def check_store_exists(lab) -> None:
    """A sqlite store that does not exist yet is reported, not created (compare only reads)."""
    uri = lab.tracking_uri
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        raise TrackingError(
            f"no MLflow store at {display_uri(uri)} yet: no pilot has been run; record runs with `labkit run`"
        )


def look_key(run: dict) -> str:
    """A run's look as ``labkit.latest`` orders them (``labkit.look``; a run without the tag: its start)."""
    return run["tags"].get(TAG_LOOK) or look_stamp(None, run["start_time"] or 0.0)


def running_since(store, function: str | None) -> dict[str, str]:
    """Pilot -> the look (:func:`look_key`) of its newest live RUNNING run, filtered in the search itself.

    A RUNNING run that ``Tracker.sweep_stale`` would kill (its process on this host is gone, or another
    host's run is older than ``STALE_AFTER_HOURS``) is abandoned, not running: it raises no flag. `labkit run`
    tags a RUNNING run with its look when it opens it, so a look back in flight compares as the look it is.
    """
    host, now = socket.gethostname(), time.time()
    newest: dict[str, str] = {}
    for run in store.pilot_runs(status="RUNNING", function=function):
        if stale_reason(run["tags"], run["start_time"] or 0.0, now=now, host=host) is not None:
            continue
        if run["pilot"] and look_key(run) >= newest.get(run["pilot"], ""):
            newest[run["pilot"]] = look_key(run)
    return newest


def results_meta(store, run: dict) -> dict:
    """``meta`` of the run's results.json artifact: only read when tags and params lack the primary metric."""
    data = store.results_json(run)
    meta = data.get("meta") if isinstance(data, dict) else None
    meta = dict(meta) if isinstance(meta, dict) else {}
    if isinstance(data, dict) and data.get("decision"):
        meta.setdefault("decision", data["decision"])
    return meta
