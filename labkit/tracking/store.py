"""The lab's MLflow store: ``Tracker`` opens it (creating a local one once, aside and under the lock),
creates the experiment, turns MLflow's failures into one line, searches and reads runs. Recording runs
(``RunWriter``: statuses, limits, the latest flag, the sweep, portfolio runs) is in ``writer``.

``Tracker(lab, read_only=True)`` is the reading side of `labkit compare` and `labkit segments` where MLflow
reads the store (a tracking server, a database server, a sqlite schema ``reader.SqliteRuns`` does not
know): it writes nothing — no store created or rebuilt, no experiment created, no leadership view saved;
a missing (or deleted) experiment reads as one without runs, as ``SqliteRuns`` reads it."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from labkit.errors import TrackingError
from labkit.lab import sqlite_file
from labkit.tracking.locks import store_lock
from labkit.tracking.record import TAG_FUNCTION, TAG_LATEST, TAG_PILOT, TAG_PREREG
from labkit.tracking.rules import display_uri, one_line, quote, run_entry
from labkit.tracking.schema import (
    SQL_CONNECT_ARGS,
    build_sqlite_store,
    probe_database,
    quiet_mlflow,
    remove_builds,
    sqlite_state,
)
from labkit.tracking.view import leadership_view
from labkit.tracking.writer import RunWriter

FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
MLFLOW_LOG = "mlflow.log"  # MLflow's own log lines, in results/
_env_set_by_us: set[str] = set()


class Tracker(RunWriter):
    """Records pilot runs in the lab's MLflow store and reads them back for ``labkit compare``."""

    def __init__(self, lab, *, fail_fast: bool = True, read_only: bool = False):
        self.lab = lab
        self.read_only = read_only
        self.uri: str = lab.tracking_uri
        self.experiment_name: str = lab.spec.mlflow_experiment
        self.fail_fast = fail_fast
        self.is_http = urlsplit(self.uri).scheme in ("http", "https")
        self.display_uri = display_uri(self.uri)
        self.warnings: list[str] = []  # what was recorded differently from the record (split params …)
        self.experiment_id: str | None = None
        self._client = None
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self._quiet_mlflow()
        for key, value in FAIL_FAST_ENV.items():
            if self.is_http and fail_fast:
                if key not in os.environ:
                    os.environ[key] = value
                    _env_set_by_us.add(key)
            elif key in _env_set_by_us:  # a fail-fast tracker earlier in this process set it
                os.environ.pop(key, None)
                _env_set_by_us.discard(key)

    # ---------------------------------------------------------------- store and experiment

    @property
    def artifact_root(self) -> Path:
        """Where a local store keeps artifacts: ``results/mlruns/`` of the lab."""
        return self.lab.results_dir / "mlruns"

    @property
    def lock_path(self) -> Path:
        return self.lab.results_dir / ".mlflow.lock"

    @property
    def log_path(self) -> Path:
        """Where MLflow's own log lines go (``results/mlflow.log``) instead of the terminal."""
        return self.lab.results_dir / MLFLOW_LOG

    def _quiet_mlflow(self) -> None:
        """MLflow's, alembic's and SQLAlchemy's log records to ``results/mlflow.log`` (``schema.quiet_mlflow``)."""
        quiet_mlflow(self.log_path)

    def prepare(self) -> None:
        """Open the store (creating a local one once, aside and under the lock) and the experiment."""
        if self.experiment_id is not None or (self.read_only and self._client is not None):
            return
        if self.read_only:
            self._open_for_reading()
            return
        if self.is_http:
            self._client = self._call("connecting", self._new_client)
            self.experiment_id = self._experiment(artifact_location=None)
            return
        if self.fail_fast and self.sql_dialect is not None:
            # before MLflow's own connection loop (~100 s of retries)
            probe_database(self.uri, self.sql_dialect, self.display_uri)
        import mlflow  # noqa: F401 -- seconds of import, better spent before taking the lock

        self._quiet_mlflow()
        # Creating a store is the racy part: one process does it while holding the lock, so any other
        # process that gets the lock sees no store or a complete one. Opening a complete store (~1-2 s
        # of schema checks) is safe in parallel and happens outside the lock.
        with self._locked():
            if self.sqlite_path is not None:
                self._ensure_sqlite_store(self.sqlite_path)
            else:
                self._client = self._call("creating the store", self._new_client)
        if self._client is None:
            self._client = self._call("opening the store", self._new_client)
        with self._locked():
            self.experiment_id = self._experiment(artifact_location=self.artifact_root.resolve().as_uri())

    def _open_for_reading(self) -> None:
        """Open the store and find the experiment, writing nothing (the module docstring): a sqlite store
        that is missing or half-built is reported, not made (MLflow would create its tables)."""
        path = self.sqlite_path
        if path is not None:
            state, _ = sqlite_state(path)
            if state == "missing":
                raise TrackingError(
                    f"no MLflow store at {self.display_uri} yet: no pilot has been run; record runs with `labkit run`"
                )
            if state == "half":
                raise TrackingError(
                    f"the MLflow store {self.display_uri} is half-built (it has no schema version: its creation or "
                    "an upgrade was interrupted), so there is nothing to read; `labkit run` rebuilds it when it "
                    "holds no run, else says what to do"
                )
        elif self.fail_fast and self.sql_dialect is not None:
            probe_database(self.uri, self.sql_dialect, self.display_uri)
        self._client = self._call("opening the store", self._new_client)
        exp = self._call("reading the experiment", self._client.get_experiment_by_name, self.experiment_name)
        if exp is not None and exp.lifecycle_stage == "active":
            self.experiment_id = exp.experiment_id

    @property
    def sqlite_path(self) -> Path | None:
        """The file of a ``sqlite:///`` store, else None."""
        return sqlite_file(self.uri)

    @property
    def sql_dialect(self) -> str | None:
        """``postgresql``, ``mysql`` or ``mssql`` for a database server URI (``postgresql+psycopg://`` …)."""
        dialect = urlsplit(self.uri).scheme.split("+", 1)[0].lower()
        return dialect if dialect in SQL_CONNECT_ARGS else None

    def _ensure_sqlite_store(self, path: Path) -> None:
        """Under the lock: a missing store is built aside and renamed into place; a half-built one
        (interrupted by an older labkit or another tool) is rebuilt when it holds no run, else refused in
        one line. A store that is complete, or an older MLflow's with runs, is left as it is (MLflow says
        when it needs ``mlflow db upgrade``)."""
        state, runs = sqlite_state(path)
        remove_builds(path)  # a builder killed mid-way left its file: it is not any store
        if state in ("ready", "unknown"):
            return
        if runs:
            if state == "old":
                return  # MLflow's schema check names the upgrade
            raise TrackingError(
                f"the MLflow store {self.display_uri} is half-built (it has no schema version: its creation "
                f"or an upgrade was interrupted) and holds {runs} run(s), so labkit will not rebuild it; move "
                f"it aside (mv {path} {path}.broken) and run again to start a new store, or restore it from a "
                "backup"
            )
        self._client = self._call("creating the store", self._build_store, path)

    def _build_store(self, path: Path):
        build_sqlite_store(path, self.artifact_root.resolve().as_uri(), self._quiet_mlflow)
        return self._new_client()

    def _new_client(self):
        from mlflow import MlflowClient

        self._quiet_mlflow()  # importing mlflow installs its own stderr handler
        return MlflowClient(tracking_uri=self.uri)  # opening a fresh store creates and migrates it

    def _experiment(self, *, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client
        name = self.experiment_name
        exp = self._call("reading the experiment", client.get_experiment_by_name, name)
        if exp is None:
            try:
                client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # else: another process was quicker
                    raise self._error("creating the experiment", exc) from exc
            except Exception as exc:
                raise self._error("creating the experiment", exc) from exc
            exp = self._call("reading the experiment", client.get_experiment_by_name, name)
        if exp is None:
            raise TrackingError(f"MLflow store {self.display_uri}: experiment '{name}' could not be created")
        if exp.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment '{name}' is deleted in {self.display_uri}; restore it "
                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set another "
                "mlflow_experiment in configs/lab.yaml"
            )
        if not self.is_http:
            location = exp.artifact_location or ""
            scheme = urlsplit(location).scheme
            if scheme == "mlflow-artifacts":
                raise TrackingError(
                    f"MLflow experiment '{name}' was created through an MLflow server (artifacts at "
                    f"{location}), which a client writing straight to {self.display_uri} cannot use; set "
                    "tracking_uri (or LABKIT_TRACKING_URI) to that server's http:// URI, or use another "
                    "mlflow_experiment"
                )
            if not scheme and not os.path.isabs(location):
                raise TrackingError(
                    f"MLflow experiment '{name}' keeps artifacts at the relative location '{location}', "
                    "which depends on the working directory; use another mlflow_experiment"
                )
        self._ensure_view(exp)
        return exp.experiment_id

    def _ensure_view(self, exp) -> None:
        """Save the leadership view (:func:`leadership_view`) in the experiment, once: the UI lists it under
        Views and `labkit ui` prints the link that opens it. Best effort: a store that refuses the tag (a
        read-only user) still records runs; the view is then just not offered."""
        key, value = leadership_view(created_ms=getattr(exp, "creation_time", None) or 0)
        if (exp.tags or {}).get(key) == value:
            return
        try:
            self._client.set_experiment_tag(exp.experiment_id, key, value)
        except Exception as exc:  # noqa: BLE001 -- anything MLflow raised: a warning, never a failed run
            self.warnings.append(f"the leadership view could not be saved in the experiment: {one_line(exc)}")

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive fcntl lock on results/.mlflow.lock (re-entrant, thread-safe); no-op over http."""
        if self.is_http:
            yield
            return
        with store_lock(self.lock_path):
            yield

    # ---------------------------------------------------------------- errors

    def _error(self, what: str, exc: BaseException) -> TrackingError:
        """One clear line for an MLflow failure: unreachable server, out-of-date schema, or the reason."""
        text = " ".join(str(exc).split())
        chain, seen = [], exc
        while seen is not None and len(chain) < 10:
            chain.append(type(seen).__name__)
            seen = seen.__cause__ or seen.__context__
        unreachable = any(
            marker in text
            for marker in ("Max retries exceeded", "Failed to establish a new connection", "Connection refused",
                           "timed out", "NameResolutionError", "Connection aborted", "RemoteDisconnected")
        ) or any(name in ("ConnectionError", "ConnectTimeout", "ReadTimeout") for name in chain)  # fmt: skip
        if self.is_http and unreachable:
            reason = "connection refused" if "refused" in text else "timed out" if "timed out" in text else ""
            reason = reason or ("host not found" if "NameResolution" in text else "no answer")
            error = TrackingError(
                f"cannot reach the MLflow tracking server at {self.display_uri} ({reason}) while {what}; "
                "start it, or point tracking_uri in configs/lab.yaml (or LABKIT_TRACKING_URI) at a running one"
            )
            error.unreachable = True
            return error
        if "out-of-date database schema" in text:
            return TrackingError(
                f"the MLflow store {self.display_uri} was made by an older MLflow; back it up, then run "
                f"`mlflow db upgrade {self.display_uri}`"
            )
        return TrackingError(f"MLflow store {self.display_uri}: {what} failed: {one_line(exc)}")

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from exc

    # ---------------------------------------------------------------- searching and reading

    def _search(
        self, filter_string: str, *, order_by: list[str] | None = None, max_results: int | None = None
    ):
        """Runs of the lab's experiment matching ``filter_string`` (AND only), all pages unless ``max_results``."""
        self.prepare()
        if self.experiment_id is None:  # read-only, and the experiment is not in the store
            return []
        runs, token = [], None
        page = min(max_results or 1000, 1000)
        while True:
            batch = self._call(
                "searching runs", self._client.search_runs, [self.experiment_id], filter_string=filter_string,
                max_results=page, order_by=order_by, page_token=token,
            )  # fmt: skip
            runs.extend(batch)
            token = batch.token
            if not token or (max_results is not None and len(runs) >= max_results):
                return runs[:max_results] if max_results is not None else runs

    def _pilot_filter(self, pilot: str) -> str:
        return f"tags.`{TAG_PILOT}` = {quote(pilot)}"

    def first_prereg(self, pilot: str) -> str | None:
        """The ``labkit.prereg_sha256`` of the pilot's first run that recorded one (its pre-registration)."""
        runs = self._search(
            f"{self._pilot_filter(pilot)} and tags.`{TAG_PREREG}` LIKE '%'",
            order_by=["attributes.start_time ASC"], max_results=1,
        )  # fmt: skip
        return runs[0].data.tags.get(TAG_PREREG) if runs else None

    def latest_tag(self, pilot: str, key: str) -> str | None:
        """Tag ``key`` of the pilot's current latest (newest FINISHED) run, e.g. its data digest."""
        quote(key)
        runs = self._search(
            f"{self._pilot_filter(pilot)} and tags.`{TAG_LATEST}` = 'true'", max_results=1,
        )  # fmt: skip
        return runs[0].data.tags.get(key) if runs else None

    def latest_runs(self, *, function: str | None = None) -> list[dict]:
        """The latest FINISHED run of every pilot (of one function), sorted by function and pilot.

        Each: ``run_id``, ``run_name``, ``pilot``, ``status``, ``start_time``/``end_time`` (epoch seconds),
        ``tags``, ``params`` (split params joined back), ``metrics``, ``artifact_uri``.
        """
        query = f"tags.`{TAG_LATEST}` = 'true' and attributes.status = 'FINISHED'"
        if function is not None:
            query += f" and tags.`{TAG_FUNCTION}` = {quote(function)}"
        by_pilot: dict[str, dict] = {}
        for run in self._search(query, order_by=["attributes.start_time DESC"]):
            pilot = run.data.tags.get(TAG_PILOT)
            if pilot and pilot not in by_pilot:  # only one, unless a concurrent recorder is mid-way
                by_pilot[pilot] = _run_dict(run)
        return sorted(by_pilot.values(), key=lambda r: (r["tags"].get(TAG_FUNCTION, ""), r["pilot"]))

    def pilot_runs(self, *, status: str | None = None, function: str | None = None) -> list[dict]:
        """Every run with a ``labkit.pilot`` tag (of that status and function), newest first, as dicts."""
        query = f"tags.`{TAG_PILOT}` LIKE '%'"
        if status is not None:
            query += f" and attributes.status = {quote(status)}"
        if function is not None:
            query += f" and tags.`{TAG_FUNCTION}` = {quote(function)}"
        return [_run_dict(run) for run in self._search(query, order_by=["attributes.start_time DESC"])]

    def results_json(self, run_id: str) -> dict:
        """The run's results.json artifact, parsed; {} when it cannot be read."""
        import tempfile

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr stays one clean line
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = self._call(
                    "reading results.json", self._client.download_artifacts, run_id, "results.json", folder
                )
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh)
        except (TrackingError, OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _run_dict(run) -> dict:
    info = run.info
    return run_entry(
        info.run_id, info.run_name, info.status, info.start_time, info.end_time, dict(run.data.tags),
        dict(run.data.params), dict(run.data.metrics), info.artifact_uri,
    )  # fmt: skip
