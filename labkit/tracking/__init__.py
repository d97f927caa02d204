"""MLflow tracking: every analysis run of a pilot becomes one MLflow run (DESIGN.md, "Runs and MLflow").

This package is the only part of labkit that talks to MLflow (tests/test_layers.py checks it), and it
imports mlflow inside its functions only. ``build_record`` makes a ``RunRecord`` (everything one run
records, also written to ``record.json`` so a run can be recorded again later), the pipeline hands it to
``Tracker.record``; `labkit compare` reads runs through ``reader`` and logs its report with
``Tracker.record_portfolio``. Its modules:

- ``record``: every ``labkit.*`` tag name, ``RunRecord``, params and metrics from a spec and results.json,
  ``build_record`` (pure); ``history`` (the effect over time as metric history, step = day; pure);
- ``rules``: MLflow's limits and names, splitting long params, packing batches, masking credentials (pure);
- ``store``: ``Tracker``: opening the store and the experiment, errors in one line, searching and reading;
  ``schema`` (sqlite state, building aside, probing a database), ``locks`` (the store lock);
- ``writer``: recording runs: statuses, the latest flag, the stale-run sweep, portfolio runs;
  ``owners`` (which process owns a RUNNING run); ``view`` (the leadership view saved in the experiment);
- ``reader``: runs for `labkit compare`, from sqlite tables directly where exact, else through MLflow.

Every public name is importable from ``labkit.tracking`` (loaded on first use).

What it settles, and why (RELIABILITY.md, "Facts"):

- **Stores.** ``http(s)://`` is a shared ``mlflow server``: the server chooses the artifact location
  (``mlflow-artifacts:/``). Any other URI (the default ``sqlite:///results/mlflow.db``) is a store this
  process writes straight to: ``prepare()`` creates and migrates it once, under an exclusive ``fcntl`` lock
  on ``results/.mlflow.lock`` (several processes opening a *fresh* sqlite store race in MLflow's table
  creation; opening a complete one is safe in parallel and happens outside the lock). A sqlite store is
  built aside (``results/.mlflow.db.<pid>.<random>.building``, migrated fully) and renamed into place, so
  a kill at any moment leaves no store or a complete one (RELIABILITY #38: built in place, a kill mid-way
  left "duplicate column" / "table already exists" for good); a half-built store (no schema version, made
  by an older labkit or another tool) is rebuilt when it holds no run and refused in one line otherwise.
  The new file starts as a copy of an empty store at this MLflow's schema kept in labkit's cache folder
  (``~/.cache/labkit/mlflow-store-<mlflow>-sqlalchemy-<version>-<revision>.sqlite``; ``LABKIT_CACHE_DIR``
  overrides), made from the first store a machine builds by the migrations: MLflow's ~100 migrations cost
  ~1 CPU-s per new store, the copy ~0.03. A copy that fails the checks (``store_template``) is not used. It
  also creates the
  experiment, under the lock, with an explicit absolute ``file://`` artifact location under
  ``results/mlruns/``. An experiment made through a server (``mlflow-artifacts:/``) or with a relative
  artifact location is refused for direct writes: mixing access modes loses artifacts. An out-of-date
  schema is reported with the ``mlflow db upgrade`` command rather than migrated behind the user's back.
- **Quiet and fast to fail.** ``Tracker()`` sets ``MLFLOW_DISABLE_TELEMETRY=true`` and
  ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true`` (the "View run" line corrupts JSON output); for an http
  store with ``fail_fast`` it lowers ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (2), ``..._BACKOFF_FACTOR`` (1) and
  ``..._TIMEOUT`` (5 s) unless the environment already sets them, so an unreachable server is a
  ``TrackingError`` within seconds instead of minutes of retries; a database server (``postgresql://``,
  ``mysql://``, ``mssql://``) gets one connection attempt with a 5 s timeout before MLflow's own engine,
  which retries for ~100 s. A URI is shown only through :func:`display_uri` and any other text through
  :func:`redact`: no credential of any shape reaches a message. MLflow's, alembic's and SQLAlchemy's log
  records go to ``results/mlflow.log``, not the terminal (on a read-only store MLflow logs a traceback
  before it raises; labkit's one line says it).
- **Statuses.** A run is created RUNNING and always ends FINISHED, FAILED or KILLED: any exception while
  finishing sets it FAILED (KILLED for KeyboardInterrupt/SystemExit) before the ``TrackingError`` is raised
  (an unreachable server cannot take that status either: the message says so). Runs carry ``labkit.sys.pid``,
  ``labkit.sys.pid_start`` (the process start time, so a reused pid is not mistaken for the owner) and
  ``labkit.sys.host`` (technical tags, kept apart from the business ones; runs of older labkits carry them
  as ``labkit.pid`` … and are still read, :func:`owner_tag`); ``sweep_stale()`` turns RUNNING runs of this host whose process is gone, and runs of
  other hosts RUNNING for more than 24 h, into KILLED.
- **Idempotency.** ``labkit.run_key`` identifies one analysis run; ``labkit.recorded=true`` is the last
  thing written before the status. ``record()`` returns an already-recorded run of the key, finishes a
  partial one (RUNNING/FAILED/KILLED without ``labkit.recorded``) instead of creating a second, and only
  then creates a new run. Re-finishing logs only what is missing, so metric histories stay single-valued.
- **Latest.** ``labkit.latest`` is ``"true"`` on exactly one run per pilot: the FINISHED run with the
  newest start time (ties: newest end time, then run id); every other run of the pilot carries ``"false"``.
  FAILED and KILLED runs never become latest: leadership compares completed analyses, and a failed re-run
  must not hide the last good one. A pilot with no FINISHED run has no latest run. The flag is recomputed
  from the store after every run (not "set mine, clear the previous one"), re-read and repeated until the
  store agrees, so concurrent recorders converge on the same answer; on a local store the fix-up also runs
  under the lock. A re-recorded old record keeps its own start time and so does not steal the flag.
- **Limits, never silent truncation** (RELIABILITY #31). Params, tags and metrics go in ``log_batch`` calls
  within MLflow's limits (100 params, 100 tags, 1000 metrics, 1000 entities, well under 1 MB per call).
  A param value over 6000 characters is split into ``<key>.part1of<n>`` … ``<key>.part<n>of<n>`` whose
  concatenation is the value, the split keys are listed in the ``labkit.params_split`` tag and a warning is
  added to ``Tracker.warnings`` (``latest_runs`` joins the parts back). A description over 8000 characters
  is attached whole as ``description.md`` and the note says, in its last line, that it continues there. Tag
  values over 8000 characters, keys over 250 and names MLflow rejects are refused with a TrackingError
  naming them. Metrics: ±inf become ±1.7976931348623157e308 (the largest float; MLflow cannot store inf),
  NaN and None are skipped, booleans are 0/1.
- **Effect over time**: results.json's ``over_time`` rows are metric history,
  ``over_time.<metric>.<arm>.effect``, ``.ci_low`` and ``.ci_high`` at step = day since the start and
  timestamp = that day's look, in the same batches; a day without an interval has no interval point. A run
  without ``over_time`` logs none; a partial run finished again logs each day once.
- **Artifacts**: ``*.yaml``/``*.yml`` under ``pilot/``; ``*.ipynb``/``*.html`` under ``notebook/``; images and
  PDFs under ``figures/``; anything else (``results.json``, ``report.html``, ``record.json``) at the root. A missing file or
  two files landing on the same artifact path is an error, not a silent skip or overwrite.
- **Datasets**: one MLflow dataset input per source (context ``analysis``) whose digest is labkit's own.
  MLflow's digest field holds at most 36 characters: a longer digest (a sha256 is 64) is stored as its first
  36 characters there, and in full in the dataset's profile (``{"digest": ...}``) and in the input tag
  ``labkit.digest``. Credentials in a source string are masked.

No customer identifier can reach MLflow through this module: it logs exactly what the record holds.
"""

from __future__ import annotations

import importlib

# module -> the public names it defines; `from labkit.tracking import X` loads only X's module
_EXPORTS: dict[str, tuple[str, ...]] = {
    "record": (
        "STATUSES", "FLOAT_MAX", "TAG_PILOT", "TAG_FUNCTION", "TAG_RUN_KEY", "TAG_LATEST", "TAG_RECORDED",
        "TAG_PID", "TAG_PID_START", "TAG_HOST", "OLD_OWNER_TAGS", "TAG_PARAMS_SPLIT", "SPLIT_PART",
        "TAG_ERROR", "TAG_SWEPT", "TAG_KIND", "TAG_BY", "TAG_DIGEST", "TAG_CHANNEL", "TAG_STAGE", "TAG_OWNER",
        "TAG_TITLE", "TAG_PRIMARY", "TAG_DIRECTION", "TAG_DECISION", "TAG_SPEC_SHA", "TAG_PREREG",
        "TAG_SPEC_CHANGED", "TAG_CODE_VERSION", "TAG_NOTEBOOK", "TAG_DATA_DIGEST", "TAG_DATA_CHANGED",
        "TAG_RECOMMENDATION", "TAG_RECOMMENDATION_ARM", "TAG_LOOK", "NOTE", "RESERVED_TAGS", "PARAM_METRIC",
        "PARAM_DIRECTION", "PARAM_STATEMENT", "PARAM_ALPHA", "EFFECTS", "owner_tag", "RunRecord",
        "flatten_params", "HEADLINE_METRICS", "PCT_DIGITS", "PRIMARY_FIELDS", "metrics_from_results",
        "effects_csv", "metric_value", "build_record", "headline",
    ),
    "rules": (
        "MAX_PARAM_VALUE", "MAX_TAG_VALUE", "MAX_KEY", "MAX_PARAMS_TAGS_PER_BATCH", "MAX_METRICS_PER_BATCH",
        "MAX_ENTITIES_PER_BATCH", "MAX_BATCH_BYTES", "MAX_DATASET_DIGEST", "MAX_DATASET_NAME",
        "MAX_INPUT_TAG_VALUE", "FIGURE_SUFFIXES", "redact", "display_uri", "one_line", "bad_name", "quote",
        "split_params", "join_split_params", "check_tags", "checked_metrics", "checked_history", "batches",
        "artifact_dir", "run_entry",
    ),
    "history": (
        "OVER_TIME_PREFIX", "OVER_TIME_FIELDS", "over_time_rows", "day_ms", "over_time_history", "look_moment",
        "look_stamp",
    ),
    "view": (
        "LEADERSHIP_VIEW", "SHARED_VIEW_PREFIX", "RUN_NAME_COLUMN", "LEADERSHIP_COLUMNS", "leadership_view",
        "runs_url", "run_page",
    ),
    "owners": (
        "STALE_AFTER_HOURS", "this_process", "stale_reason",
    ),
    "locks": (
        "LOCK_TIMEOUT", "store_lock",
    ),
    "schema": (
        "BUILDING", "SQLITE_SIDE_FILES", "SQL_CONNECT_ARGS", "sqlite_state", "schema_head", "quiet_mlflow",
    ),
    "store": (
        "Tracker", "FAIL_FAST_ENV", "MLFLOW_LOG",
    ),
    "writer": (
        "RunWriter", "LATEST_ATTEMPTS", "PORTFOLIO",
    ),
    "reader": (
        "KNOWN_REVISIONS", "open_runs", "SqliteRuns", "TrackerRuns", "open_tracker", "check_store_exists",
        "running_since", "look_key", "results_meta",
    ),
}  # fmt: skip
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'labkit.tracking' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"labkit.tracking.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
