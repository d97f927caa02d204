"""MLflow tracking: every analysis run of a pilot becomes one MLflow run (DESIGN.md, "Runs and MLflow").

This is the only module that talks to MLflow, and it imports mlflow inside its functions only. The
pipeline builds a ``RunRecord`` (everything one run records, also written to ``record.json`` so a run can
be recorded again later) and hands it to ``Tracker.record``; the leadership view reads ``latest_runs``.

What it settles, and why (RELIABILITY.md, "Facts"):

- **Stores.** ``http(s)://`` is a shared ``mlflow server``: the server chooses the artifact location
  (``mlflow-artifacts:/``). Any other URI (the default ``sqlite:///results/mlflow.db``) is a store this
  process writes straight to: ``prepare()`` creates and migrates it once, under an exclusive ``fcntl`` lock
  on ``results/.mlflow.lock`` (several processes opening a *fresh* sqlite store race in MLflow's table
  creation; opening a complete one is safe in parallel and happens outside the lock). A sqlite store is
  built aside (``results/.mlflow.db.<pid>.<random>.building``, migrated fully) and renamed into place, so
  a kill at any moment leaves no store or a complete one (RELIABILITY #38: built in place, a kill mid-way
  left "duplicate column" / "table already exists" for good); a half-built store (no schema version, made
  by an older labkit or another tool) is rebuilt when it holds no run and refused in one line otherwise. It
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

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import random
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit

from labkit.errors import TrackingError

STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow 3.17's limits (mlflow/utils/validation.py)
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_BYTES = 500_000  # MLflow allows 1e6 per request; JSON escaping can grow a value
MAX_DATASET_DIGEST = 36
MAX_DATASET_NAME = 500
MAX_INPUT_TAG_VALUE = 500
FLOAT_MAX = sys.float_info.max  # "1.8e308": what an infinite metric is stored as

TAG_PILOT = "labkit.pilot"
TAG_FUNCTION = "labkit.function"
TAG_RUN_KEY = "labkit.run_key"
TAG_LATEST = "labkit.latest"
TAG_RECORDED = "labkit.recorded"
# the process that owns a run: technical, under labkit.sys. so the business tags (labkit.decision,
# labkit.function, ...) lead the UI's tag list; the names before 0.x ("labkit.pid", ...) are still read
TAG_PID = "labkit.sys.pid"
TAG_PID_START = "labkit.sys.pid_start"
TAG_HOST = "labkit.sys.host"
OLD_OWNER_TAGS = {TAG_PID: "labkit.pid", TAG_PID_START: "labkit.pid_start", TAG_HOST: "labkit.host"}
TAG_PREREG = "labkit.prereg_sha256"
TAG_PARAMS_SPLIT = "labkit.params_split"
TAG_ERROR = "labkit.error"
TAG_SWEPT = "labkit.swept"
NOTE = "mlflow.note.content"

FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
# Connecting to a database server: a short timeout per driver (seconds), checked before MLflow's retry loop
SQL_CONNECT_ARGS: dict[str, dict] = {
    "postgresql": {"connect_timeout": 5},
    "mysql": {"connect_timeout": 5},
    "mssql": {"timeout": 5},
}
MLFLOW_LOG = "mlflow.log"  # MLflow's own log lines, in results/
BUILDING = ".building"  # suffix of a sqlite store being built beside its final name
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
LOCK_TIMEOUT = 120.0  # seconds to wait for another process holding the store lock
LATEST_ATTEMPTS = 6
STALE_AFTER_HOURS = 24.0  # a RUNNING run of another host older than this is considered abandoned

FIGURE_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp", ".pdf"}
_NAME_OK = re.compile(r"^[/\w.\- :]*\Z")  # MLflow's rule for param, metric and tag names (POSIX)
_FILTER_VALUE_OK = re.compile(r"^[\w.:/@+\- ]+\Z")  # what may sit between quotes in a search filter
_SPLIT_PART = re.compile(r"^(?P<key>.+)\.part(?P<i>\d+)of(?P<n>\d+)$")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^\s/?#]*@")  # greedy: the last @ ends it
# A credential given as a name=value pair: in a query string (?password=, &token=, X-Amz-Signature=, sig=),
# or in a libpq-style DSN (password='…'). Any name holding one of these words is masked, even if harmless.
_CREDENTIAL_PAIR = re.compile(
    r"(?i)(?<![\w.-])(?P<name>[\w.-]*(?:pass|pwd|token|secret|key|sig|auth|credential|session)[\w.-]*=)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&#;'\"]*)"
)
_QUERY = re.compile(r"[?#].*\Z", re.S)
_env_set_by_us: set[str] = set()
_LOCKS: dict[str, list] = {}  # lock path -> [RLock, depth, open file holding the flock]
_LOCKS_GUARD = threading.Lock()
RESERVED_TAGS = (TAG_LATEST, TAG_RECORDED)  # labkit manages these; a record cannot set them


@dataclass(frozen=True)
class RunRecord:
    """Everything one analysis run records; ``record.json`` holds it so the run can be recorded again.

    ``run_key`` (e.g. ``"<pilot>/<UTC stamp>"``) makes recording idempotent; ``started_at``/``ended_at``
    are epoch seconds; ``artifacts`` are absolute file paths; ``datasets`` are
    ``{"name", "digest", "source"}`` (optional ``"source_type"``, ``"rows"``) per data source used.
    """

    pilot: str
    run_name: str
    status: str
    run_key: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    description: str = ""
    artifacts: list[str] = field(default_factory=list)
    datasets: list[dict] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise TrackingError(f"run status '{self.status}' is not one of {', '.join(STATUSES)}")
        for name in ("tags", "params"):
            bad = [
                k for k, v in getattr(self, name).items() if not isinstance(k, str) or not isinstance(v, str)
            ]
            if bad:
                raise TrackingError(
                    f"run record {name} must map text to text; not: {', '.join(map(str, bad))}"
                )

    def to_json(self) -> str:
        """JSON with every field; infinite or NaN metrics are refused (convert them first)."""
        try:
            return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
        except ValueError as exc:
            raise TrackingError(f"run record of '{self.pilot}' holds a non-finite number: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrackingError(f"not a labkit run record: invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise TrackingError("not a labkit run record: the JSON is not an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted({"pilot", "run_name", "status", "run_key"} - set(data))
        if unknown or missing:
            problems = [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            problems += [f"missing field(s) {', '.join(missing)}"] if missing else []
            raise TrackingError(f"not a labkit run record: {'; '.join(problems)}")
        shapes = {"tags": dict, "params": dict, "metrics": dict, "artifacts": list, "datasets": list}
        wrong = [name for name, shape in shapes.items() if not isinstance(data.get(name, shape()), shape)]
        if wrong:
            raise TrackingError(f"not a labkit run record: wrong type for {', '.join(wrong)}")
        return cls(**data)


# --------------------------------------------------------------------------- pure helpers


def flatten_params(spec: dict, prefix: str = "") -> dict[str, str]:
    """A pilot spec (``model_dump(mode="json")``) as MLflow params: ``{"cohort.arms.control": "0.5", ...}``.

    Nested mappings join their keys with dots; a list of mappings that all carry a distinct ``name`` (the
    pilot's metrics) nests under those names (``metrics.churned.type``); any other list is one JSON value.
    Strings stay as they are, other scalars are JSON (``true``, ``0.5``); ``None`` is left out (the spec's
    default), an empty mapping is ``{}``.
    """
    out: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, dict):
            if value:
                out.update(flatten_params(value, prefix=f"{name}."))
            else:
                out[name] = "{}"
        elif isinstance(value, list) and _named_items(value):
            for item in value:
                rest = {k: v for k, v in item.items() if k != "name"}
                out.update(flatten_params(rest, prefix=f"{name}.{item['name']}."))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return out


def _named_items(items: list) -> bool:
    names = [i.get("name") for i in items if isinstance(i, dict)]
    return (
        bool(items)
        and len(names) == len(items)
        and all(isinstance(n, str) and n for n in names)
        and len(set(names)) == len(names)
    )


# The headline metrics every run has (DESIGN.md, "Runs and MLflow"): what leads the runs table. Shares
# people read as percentages are logged as percentages (``_pct``: 12.5 means +12.5 %); money as money.
HEADLINE_METRICS = (
    "gain_pct", "gain_pct_ci_low", "gain_pct_ci_high", "lift_pct", "lift_pct_ci_low", "lift_pct_ci_high",
    "roi_pct", "roi_pct_ci_low", "roi_pct_ci_high", "value", "value_ci_low", "value_ci_high", "cost",
    "exposed", "srm_p_value",
)  # fmt: skip
# Percentages are for reading: rounded to hundredths of a percentage point (the UI prints every digit it
# gets, 77.45098039215685); the exact numbers are the primary's fields below and results.json.
PCT_DIGITS = 2
# The primary metric's numbers per treatment arm that stay metrics (`labkit compare` reads them back from
# the store: the best arm's effect, lift and their intervals, lift_se for the pooled gain); every other
# per-arm number is in results.json and in the effects.csv table artifact (:func:`effects_csv`).
PRIMARY_FIELDS = (
    "n_control", "n_treatment", "mean_control", "mean_treatment", "effect", "ci_low", "ci_high", "lift",
    "lift_ci_low", "lift_ci_high", "lift_se", "p_value", "p_value_adjusted",
)  # fmt: skip


def metrics_from_results(results: dict) -> dict[str, float]:
    """The numbers of a results.json (the ``labkit analyze --json`` contract) as MLflow metrics: a small set.

    A few hundred metrics made the runs table and its chart view (one chart per metric) unreadable, so a run
    logs the ``HEADLINE_METRICS`` — ``gain_pct`` with its interval (:func:`_gain`), ``lift_pct`` (the same
    arm's lift, unsigned), ``roi_pct`` with its interval, ``value`` with its interval, ``cost`` (money, in
    the lab's currency), ``exposed`` (customers in the pilot), ``srm_p_value`` — then the primary metric's
    ``PRIMARY_FIELDS`` per treatment arm as ``<primary>.<arm>.<field>``. Everything else (secondary metrics
    and guardrails per arm, the plan, the SRM counts) is in results.json and the effects.csv artifact.
    None and NaN are skipped, booleans are 0/1, ±inf is ±1.7976931348623157e308.
    """
    out: dict[str, float] = {}

    def put(name: str, value) -> None:
        number = _metric_value(value)
        if number is not None:
            out[name] = number

    out.update(_gain(results))
    roi = results.get("roi") or {}
    for key in ("roi", "roi_ci_low", "roi_ci_high"):
        number = _metric_value(roi.get(key))
        if number is not None and abs(number) < FLOAT_MAX:
            out[key.replace("roi", "roi_pct", 1)] = round(number * 100, PCT_DIGITS)
    for key in ("value", "value_ci_low", "value_ci_high", "cost"):
        put(key, roi.get(key))
    put("exposed", (results.get("meta") or {}).get("exposed"))
    put("srm_p_value", (results.get("srm") or {}).get("p_value"))
    out = {k: out[k] for k in HEADLINE_METRICS if k in out}  # in the headline's order
    for row in results.get("metrics") or []:
        if row.get("role") != "primary":
            continue
        for key in PRIMARY_FIELDS:
            put(f"{row.get('metric')}.{row.get('arm')}.{key}", row.get(key))
    return out


LEADERSHIP_VIEW = "labkit-leadership"  # the saved view's key: ?viewStateShareKey=labkit-leadership
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # MLflow ≥ 3.15 keeps an experiment's saved views in its tags
RUN_NAME_COLUMN = "attributes.`Run Name`"
LEADERSHIP_COLUMNS = (  # in reading order: what to do first, then the money, then where it ran
    "attributes.`Description`", "tags.`labkit.decision`", "tags.`labkit.recommendation`",
    "tags.`labkit.recommendation_arm`", "metrics.`roi_pct`", "metrics.`gain_pct`", "metrics.`value`",
    "metrics.`cost`", "metrics.`exposed`", "tags.`labkit.function`", "tags.`labkit.channel`",
    "tags.`labkit.stage`", "metrics.`roi_pct_ci_low`", "metrics.`roi_pct_ci_high`",
    "metrics.`gain_pct_ci_low`", "metrics.`gain_pct_ci_high`", "metrics.`srm_p_value`",
)  # fmt: skip


def leadership_view(*, created_ms: int = 0) -> tuple[str, str]:
    """The experiment tag holding the runs table's leadership view, as MLflow's UI saves one (MLflow 3.15's
    "Views → Save as new view"; read by the UI of 3.17): ``mlflow.sharedViewState.<key>`` whose value is
    ``{"name", "createdAt", "updatedAt", "state"}`` and ``state`` the view as JSON text — the columns
    (:data:`LEADERSHIP_COLUMNS`: description, decision, recommendation, ROI, gain, value, cost, exposed,
    SRM p, in the UI's ``<type>.`<name>``` keys), the latest run of each pilot only, highest ROI first.
    MLflow offers no way to preset an experiment's *default* columns, so the view is saved here and opened
    by the link `labkit ui` prints (``?viewStateShareKey=labkit-leadership``). ``created_ms`` keeps the
    value stable (the experiment's creation time), so it is written once."""
    state = {
        "selectedColumns": list(LEADERSHIP_COLUMNS),
        # the grid otherwise orders columns by kind (attributes, metrics, tags) and renders only those in
        # sight: the decision and recommendation tags would sit off-screen to the right
        "columnOrder": [RUN_NAME_COLUMN, *LEADERSHIP_COLUMNS],
        "columnWidths": {
            "attributes.`Description`": 300,
            "tags.`labkit.decision`": 110,
            "tags.`labkit.recommendation`": 170,
            "tags.`labkit.recommendation_arm`": 150,
        },  # fmt: skip
        "searchFilter": f"tags.`{TAG_LATEST}` = 'true'",
        "orderByKey": "metrics.`roi_pct`",
        "orderByAsc": False,
    }
    envelope = {
        "name": "Leadership (labkit): latest run of each pilot",
        "createdAt": int(created_ms),
        "updatedAt": int(created_ms),
        "state": json.dumps(state, separators=(",", ":")),
    }
    return SHARED_VIEW_PREFIX + LEADERSHIP_VIEW, json.dumps(envelope, separators=(",", ":"))


def effects_csv(results: dict) -> str:
    """Every (metric, arm) row of results.json as CSV: the per-arm detail of a run, as a table artifact
    (the MLflow UI shows a .csv artifact as a table). Columns: the contract's fields in their order, then
    any other field of the rows in order of appearance."""
    import csv
    import io

    from labkit.analysis import METRIC_FIELDS

    rows = results.get("metrics") or []
    columns = list(METRIC_FIELDS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def _gain(results: dict) -> dict[str, float]:
    """``gain_pct`` with ``gain_pct_ci_low``/``_high``, and ``lift_pct`` with its interval: the gain of
    `labkit compare` under one name for every pilot, so the MLflow UI shows one column for the whole lab —
    the primary metric's relative lift of its best treatment arm (ties: by arm), in percent, signed so that
    positive is the direction the hypothesis predicted (``gain``), and as measured (``lift``)."""
    meta = results.get("meta") or {}
    sign = {"increase": 1.0, "decrease": -1.0}.get(meta.get("direction"))
    rows = [
        r for r in results.get("metrics") or []
        if r.get("role") == "primary" and _metric_value(r.get("lift")) is not None
    ]  # fmt: skip
    if sign is None or not rows:
        return {}
    best = min(rows, key=lambda r: (-sign * r["lift"], str(r.get("arm"))))
    out = {"gain_pct": sign * best["lift"] * 100, "lift_pct": best["lift"] * 100}
    low, high = _metric_value(best.get("lift_ci_low")), _metric_value(best.get("lift_ci_high"))
    if low is not None and high is not None and max(abs(low), abs(high)) < FLOAT_MAX:
        out["lift_pct_ci_low"], out["lift_pct_ci_high"] = low * 100, high * 100
        out["gain_pct_ci_low"], out["gain_pct_ci_high"] = sorted((sign * low * 100, sign * high * 100))
    return {k: round(v, PCT_DIGITS) for k, v in out.items() if math.isfinite(v)}


def _metric_value(value) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        return FLOAT_MAX if value > 0 else -FLOAT_MAX
    return value


def redact(text: str) -> str:
    """Mask every credential shape in ``text``: ``user:password@`` of any URL (the whole user part goes),
    and the value of any ``name=value`` pair whose name says password, token, key, secret, sig(nature),
    auth, credential or session (query strings, DSNs). Over-masking a harmless value is the accepted cost."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _CREDENTIAL_PAIR.sub(r"\g<name>***", text)


def display_uri(uri: str) -> str:
    """A tracking URI fit for messages, whatever its scheme: no user part, no query string or fragment (a
    SQL URI may carry ``?password=``), then :func:`redact` for anything left. Every message of labkit that
    shows a tracking URI shows it through this function."""
    shown = _URL_CREDENTIALS.sub(r"\g<scheme>", uri.strip())
    return redact(_QUERY.sub("", shown))


def _bad_name(name: str) -> str | None:
    """Why MLflow would reject ``name`` as a param/metric/tag key, or None."""
    import posixpath

    if not name:
        return "empty name"
    if len(name) > MAX_KEY:
        return f"longer than {MAX_KEY} characters"
    if not _NAME_OK.match(name):
        return "only letters, digits, _ - . : / and spaces are allowed"
    normal = posixpath.normpath(name)
    if normal != name or normal == "." or normal.startswith(("..", "/")):
        return "it would resolve to another path"
    return None


def _quote(value: str) -> str:
    if not isinstance(value, str) or not _FILTER_VALUE_OK.match(value):
        raise TrackingError(f"'{value}' cannot be used in an MLflow search; use letters, digits and -_.:/")
    return f"'{value}'"


def _ms(seconds: float | None) -> int | None:
    return int(round(seconds * 1000)) if seconds else None


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_alive(pid: int, started: str | None) -> bool:
    """Whether the process that tagged a run still runs: the pid exists, is no zombie, is not a reused pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True  # no /proc: the pid exists, trust it
    if state in ("Z", "X"):
        return False
    return started is None or _process_start(pid) == started


def _artifact_dir(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "pilot"
    if suffix in (".ipynb", ".html") and path.name != "report.html":  # the no-code report: at the root
        return "notebook"
    if suffix in FIGURE_SUFFIXES or path.name == "figures":
        return "figures"
    return None


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, credentials masked, driver prefixes and links dropped, capped."""
    text = " ".join(str(exc).split())
    text = text.split(" [SQL: ", 1)[0]  # the statement and its parameters: long, and not for a terminal
    text = re.sub(r"\(raised as a result of [^)]*\) ?", "", text)  # SQLAlchemy's autoflush preamble
    text = re.sub(r"\((?:\w+\.)+\w+\) ", "", text)  # driver prefixes: "(sqlite3.OperationalError) "
    text = re.sub(r" ?\(Background on this error at: [^)]*\)", "", text)
    text = redact(text.strip()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def _sqlite_state(path: Path) -> tuple[str, int]:
    """``(state, runs)`` of a sqlite store: ``missing``, ``ready`` (MLflow's tables at this MLflow's schema
    revision), ``old`` (another revision), ``half`` (no schema version) or ``unknown`` (unreadable),
    with the number of rows in its ``runs`` table (0 where there is none)."""
    import sqlite3

    if not path.is_file():
        return "missing", 0
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        ) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
            versions = (
                [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
                if "alembic_version" in tables
                else []
            )
    except sqlite3.Error:
        return "unknown", 0  # locked, or not a database: never replaced; MLflow's own error will say
    if len(versions) != 1 or not {"experiments", "runs"} <= tables:
        return "half", runs
    return ("ready" if versions[0] == _schema_head() else "old"), runs


@functools.cache
def _schema_head() -> str:
    """The schema revision this MLflow creates (~0.5 s to compute: once per process)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _remove_builds(path: Path) -> None:
    """Files of a store being built beside ``path`` by a process that died (only called under the lock)."""
    for leftover in path.parent.glob(f".{path.name}.*{BUILDING}*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _MlflowLog(logging.Handler):
    """Appends log records (with their tracebacks), credentials masked, to a file; never raises."""

    def __init__(self, path: Path):
        super().__init__(logging.WARNING)
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact(self.format(record))
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except Exception:  # noqa: BLE001 -- a read-only or full results/ loses MLflow's log, nothing else
            pass


# --------------------------------------------------------------------------- the tracker


class Tracker:
    """Records pilot runs in the lab's MLflow store and reads them back for ``labkit compare``."""

    def __init__(self, lab, *, fail_fast: bool = True):
        self.lab = lab
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
        """Send the log records of MLflow, alembic and SQLAlchemy to ``results/mlflow.log``, not stderr.

        On a read-only store or a full disk MLflow logs an ERROR with a whole traceback (and the SQL with
        its parameters) before raising; labkit then says the same thing in one line. So their stream
        handlers are removed and records of WARNING and above are appended, credentials masked, to the log
        file (best effort: a read-only results/ just loses them). Importing mlflow installs its handler and
        resets its level, so this runs again after every import (``prepare``, ``_new_client``)."""
        handler = _MlflowLog(self.log_path)
        with _LOCKS_GUARD:  # the batch's MLflow threads open clients at once: one handler each, not two
            for name in ("mlflow", "alembic", "sqlalchemy"):
                logger = logging.getLogger(name)
                for old in list(logger.handlers):
                    if isinstance(old, _MlflowLog) or type(old) is logging.StreamHandler:
                        logger.removeHandler(old)
                logger.addHandler(handler)
                logger.setLevel(logging.WARNING)
                logger.propagate = False

    def prepare(self) -> None:
        """Open the store (creating a local one once, aside and under the lock) and the experiment."""
        if self.experiment_id is not None:
            return
        if self.is_http:
            self._client = self._call("connecting", self._new_client)
            self.experiment_id = self._experiment(artifact_location=None)
            return
        if self.fail_fast and self.sql_dialect is not None:
            self._probe_database()  # before MLflow's own connection loop (~100 s of retries)
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

    @property
    def sqlite_path(self) -> Path | None:
        """The file of a ``sqlite:///`` store, else None."""
        prefix = "sqlite:///"
        if not self.uri.startswith(prefix):
            return None
        return Path(unquote(self.uri[len(prefix) :].split("?", 1)[0]))

    @property
    def sql_dialect(self) -> str | None:
        """``postgresql``, ``mysql`` or ``mssql`` for a database server URI (``postgresql+psycopg://`` …)."""
        dialect = urlsplit(self.uri).scheme.split("+", 1)[0].lower()
        return dialect if dialect in SQL_CONNECT_ARGS else None

    def _probe_database(self) -> None:
        """One connection attempt with a short timeout, so an unreachable database or a refused login is
        one line within seconds. MLflow's own engine retries a failing connection about 15 times with
        exponential back-off (~100 s) and cannot be told otherwise."""
        try:
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            engine = sqlalchemy.create_engine(
                self.uri, poolclass=NullPool, connect_args=SQL_CONNECT_ARGS[self.sql_dialect]
            )
        except Exception as exc:  # an unknown driver, a malformed URI
            raise TrackingError(
                f"cannot use the MLflow tracking database {self.display_uri}: {_one_line(exc)}"
            ) from None
        try:
            with engine.connect():
                pass
        except Exception as exc:
            raise TrackingError(
                f"cannot reach the MLflow tracking database at {self.display_uri} ({_one_line(exc)}); start "
                "it or check its address and login, or point tracking_uri in configs/lab.yaml (or "
                "LABKIT_TRACKING_URI) at a running one"
            ) from None
        finally:
            engine.dispose()

    def _ensure_sqlite_store(self, path: Path) -> None:
        """Under the lock: a missing store is built aside and renamed into place; a half-built one
        (interrupted by an older labkit or another tool) is rebuilt when it holds no run, else refused in
        one line. A store that is complete, or an older MLflow's with runs, is left as it is (MLflow says
        when it needs ``mlflow db upgrade``)."""
        state, runs = _sqlite_state(path)
        _remove_builds(path)  # a builder killed mid-way left its file: it is not any store
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
        """Create and migrate a sqlite store beside ``path``, then rename it into place (atomic: a kill at
        any point leaves no store or a complete one), with an explicit, percent-encoded artifact root.

        Left to itself MLflow inserts its Default experiment with ``./mlruns`` of the working directory as a
        raw path quoted with a backslash, which is invalid SQL in sqlite when the path holds a ``'``."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{BUILDING}")
        try:
            SqlAlchemyStore(f"sqlite:///{aside}", self.artifact_root.resolve().as_uri()).engine.dispose()
            self._quiet_mlflow()
            with open(aside, "rb+") as fh:
                os.fsync(fh.fileno())
            for suffix in SQLITE_SIDE_FILES:  # a broken store's journal must not be replayed into the new one
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            os.replace(aside, path)
            _fsync_dir(path.parent)
        finally:
            for leftover in (aside, *(Path(f"{aside}{suffix}") for suffix in SQLITE_SIDE_FILES)):
                leftover.unlink(missing_ok=True)
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
            self.warnings.append(
                f"the leadership view could not be saved in the experiment: {_one_line(exc)}"
            )

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive fcntl lock on results/.mlflow.lock (re-entrant, thread-safe); no-op over http."""
        if self.is_http:
            yield
            return
        key = str(self.lock_path.resolve())
        with _LOCKS_GUARD:
            local = _LOCKS.setdefault(key, [threading.RLock(), 0, None])
        with local[0]:  # threads of this process queue here; processes queue on the file lock
            if local[1] == 0:
                local[2] = self._acquire_file_lock()
            local[1] += 1
            try:
                yield
            finally:
                local[1] -= 1
                if local[1] == 0:
                    handle, local[2] = local[2], None
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()

    def _acquire_file_lock(self):
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+")  # noqa: SIM115 -- closed by _locked
        except OSError as exc:
            raise TrackingError(
                f"cannot open the MLflow store lock {self.lock_path}: {exc.strerror}"
            ) from None
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise TrackingError(
                        f"another process has held the MLflow store lock {self.lock_path} for {LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.05)

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
        return TrackingError(f"MLflow store {self.display_uri}: {what} failed: {_one_line(exc)}")

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from exc

    # ---------------------------------------------------------------- searching

    def _search(
        self, filter_string: str, *, order_by: list[str] | None = None, max_results: int | None = None
    ):
        """Runs of the lab's experiment matching ``filter_string`` (AND only), all pages unless ``max_results``."""
        self.prepare()
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
        return f"tags.`{TAG_PILOT}` = {_quote(pilot)}"

    # ---------------------------------------------------------------- recording

    def start(
        self, pilot: str, run_name: str, run_key: str, tags: dict, *, started_at: float | None = None
    ) -> str:
        """Create the run RUNNING with labkit's identity tags; returns its id."""
        self.prepare()
        _quote(pilot)
        _quote(run_key)
        given = {str(k): str(v) for k, v in tags.items() if k not in RESERVED_TAGS}
        own = {TAG_PILOT: pilot, TAG_RUN_KEY: run_key, TAG_LATEST: "false", **self._owner_tags()}
        all_tags = given | own
        self._check_tags(all_tags)
        run = self._call(
            "creating a run", self._client.create_run, self.experiment_id, start_time=_ms(started_at),
            tags=all_tags, run_name=run_name,
        )  # fmt: skip
        return run.info.run_id

    @staticmethod
    def _owner_tags() -> dict[str, str]:
        tags = {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}
        started = _process_start(os.getpid())
        if started is not None:
            tags[TAG_PID_START] = started
        return tags

    def finish(self, run_id: str, record: RunRecord) -> None:
        """Log everything the record holds, set its status, then settle ``labkit.latest`` for the pilot.

        Any exception before the status is set leaves the run FAILED (KILLED on KeyboardInterrupt or
        SystemExit) and raises a TrackingError; a failure while settling the latest flag afterwards raises
        a TrackingError but leaves the (complete) run as recorded.
        """
        self.prepare()
        try:
            self._log(run_id, record)
            self._call(
                "setting the run status", self._client.set_terminated, run_id, status=record.status,
                end_time=_ms(record.ended_at),
            )  # fmt: skip
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
            error = exc if isinstance(exc, TrackingError) else self._error("recording the run", exc)
            # An unreachable server will not take the FAILED status either: do not wait for it twice more.
            reachable = not getattr(error, "unreachable", False)
            marked = reachable and self._mark_ended(
                run_id, "KILLED" if interrupted else "FAILED", error.message
            )
            if interrupted:
                raise
            if not marked:
                error = TrackingError(
                    f"{error.message}; the run could not be marked FAILED either and stays RUNNING until "
                    "the next `labkit run` sweeps it"
                )
            raise error from exc
        self._settle_latest(record.pilot)

    def abandon(self, run_id: str, status: str, reason: str) -> bool:
        """End a run that will not be recorded (its notebook could not run or be saved) as ``status``, with
        ``reason`` in ``labkit.error``; best effort, True when the store accepted it."""
        return self._mark_ended(run_id, status, reason)

    def _mark_ended(self, run_id: str, status: str, reason: str) -> bool:
        """Best effort: end a run that could not be recorded; True when the store accepted it."""
        from mlflow.entities import RunTag

        try:
            self._client.log_batch(run_id, tags=[RunTag(TAG_ERROR, reason[:MAX_TAG_VALUE])])
        except Exception:
            pass
        try:
            self._client.set_terminated(run_id, status=status)
            return True
        except Exception:
            return False

    def _log(self, run_id: str, record: RunRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run = self._call("reading the run", self._client.get_run, run_id)
        owner = run.data.tags.get(TAG_PILOT)
        if owner != record.pilot:
            raise TrackingError(f"run {run_id} belongs to pilot '{owner}', not to '{record.pilot}'")

        key = run.data.tags.get(TAG_RUN_KEY)
        if key != record.run_key:
            raise TrackingError(f"run {run_id} was started for run key '{key}', not '{record.run_key}'")
        params, split = self._split_params(record.params)
        given = {k: v for k, v in record.tags.items() if k not in RESERVED_TAGS}
        tags = {**given, TAG_PILOT: record.pilot, TAG_RUN_KEY: record.run_key}
        if split:
            tags[TAG_PARAMS_SPLIT] = ",".join(split)
            self.warnings.append(
                f"{record.pilot}: param(s) {', '.join(split)} longer than {MAX_PARAM_VALUE} characters were "
                f"logged in parts (<key>.part1of<n> …); their concatenation is the value"
            )
        note, note_overflow = self._note(record)
        if note is not None:
            tags[NOTE] = note
        self._check_tags(tags)
        metrics = self._metrics(record)

        # Params are immutable in MLflow and metrics keep a history: log only what is not there yet.
        have_params, have_metrics = run.data.params, run.data.metrics
        clash = sorted(k for k, v in params.items() if k in have_params and have_params[k] != v)
        if clash:
            raise TrackingError(f"run {run_id} already holds other values for param(s) {', '.join(clash)}")
        stamp = _ms(record.ended_at) or int(time.time() * 1000)
        batches = _batches(
            [Param(k, v) for k, v in params.items() if k not in have_params],
            [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v],
            [Metric(k, v, stamp, 0) for k, v in metrics.items() if have_metrics.get(k) != v],
        )
        for batch in batches:
            self._call("logging params, metrics and tags", self._client.log_batch, run_id, **batch)

        self._log_artifacts(run_id, record, note_overflow)
        self._log_datasets(run_id, record)
        self._call(
            "marking the run recorded", self._client.log_batch, run_id, tags=[RunTag(TAG_RECORDED, "true")]
        )

    def _split_params(self, params: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        out: dict[str, str] = {}
        split: list[str] = []
        for key, value in params.items():
            if len(value) <= MAX_PARAM_VALUE:
                out[key] = value
                continue
            parts = [value[i : i + MAX_PARAM_VALUE] for i in range(0, len(value), MAX_PARAM_VALUE)]
            for i, part in enumerate(parts, 1):
                out[f"{key}.part{i}of{len(parts)}"] = part
            split.append(key)
        bad = {k: why for k in out if (why := _bad_name(k))}
        if bad:
            listed = "; ".join(f"'{k[:80]}': {why}" for k, why in sorted(bad.items())[:5])
            raise TrackingError(f"param name(s) MLflow cannot store: {listed}")
        clash = sorted(k for k in params if _SPLIT_PART.match(k) and _SPLIT_PART.match(k)["key"] in split)
        if clash:
            raise TrackingError(f"param name(s) {', '.join(clash)} collide with the parts of a long param")
        return out, split

    def _note(self, record: RunRecord) -> tuple[str | None, str | None]:
        """The run description, and the full text when it had to continue in ``description.md``."""
        text = record.description
        if not text:
            return None, None
        if len(text) <= MAX_TAG_VALUE:
            return text, None
        tail = f"\n\n… continued in the artifact description.md ({len(text)} characters in full)"
        self.warnings.append(
            f"{record.pilot}: the run description has {len(text)} characters, more than MLflow's "
            f"{MAX_TAG_VALUE} for a note; the note shows the start and description.md holds all of it"
        )
        return text[: MAX_TAG_VALUE - len(tail)] + tail, text

    @staticmethod
    def _check_tags(tags: dict[str, str]) -> None:
        problems = []
        for key, value in tags.items():
            why = _bad_name(key)
            if why:
                problems.append(f"'{key[:80]}': {why}")
            elif len(value) > MAX_TAG_VALUE:
                problems.append(
                    f"'{key}': value of {len(value)} characters, more than MLflow's {MAX_TAG_VALUE}"
                )
        if problems:
            raise TrackingError(f"tag(s) MLflow cannot store without losing them: {'; '.join(problems[:5])}")

    @staticmethod
    def _metrics(record: RunRecord) -> dict[str, float]:
        out, bad = {}, []
        for key, value in record.metrics.items():
            why = _bad_name(key)
            if why:
                bad.append(f"'{key[:80]}': {why}")
                continue
            number = _metric_value(value)
            if number is not None:
                out[key] = number
        if bad:
            raise TrackingError(f"metric name(s) MLflow cannot store: {'; '.join(bad[:5])}")
        return out

    def _log_artifacts(self, run_id: str, record: RunRecord, note_overflow: str | None) -> None:
        planned: dict[str, Path] = {}
        for name in record.artifacts:
            path = Path(name)
            if not path.exists():
                raise TrackingError(f"artifact {path} of run {record.run_key} does not exist")
            folder = _artifact_dir(path)
            target = f"{folder}/{path.name}" if folder and path.name != folder else (folder or path.name)
            if target in planned:
                raise TrackingError(
                    f"artifacts {planned[target]} and {path} would both be stored as '{target}'"
                )
            planned[target] = path
        for target, path in planned.items():
            folder = target.rsplit("/", 1)[0] if "/" in target else None
            if path.is_dir():
                self._call("uploading artifacts", self._client.log_artifacts, run_id, str(path), target)
            else:
                self._call("uploading artifacts", self._client.log_artifact, run_id, str(path), folder)
        if note_overflow is not None:
            self._call(
                "uploading the description", self._client.log_text, run_id, note_overflow, "description.md"
            )

    def _log_datasets(self, run_id: str, record: RunRecord) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for item in record.datasets:
            name, digest = str(item.get("name") or ""), str(item.get("digest") or "")
            if not name or not digest or len(name) > MAX_DATASET_NAME:
                raise TrackingError(
                    f"dataset {item!r} needs a name (≤{MAX_DATASET_NAME} characters) and a digest"
                )
            source = redact(str(item.get("source") or name))
            profile = {"digest": digest, **({"rows": item["rows"]} if item.get("rows") is not None else {})}
            tags = [InputTag("mlflow.data.context", "analysis")]
            if len(digest) > MAX_DATASET_DIGEST:
                tags.append(InputTag("labkit.digest", digest[:MAX_INPUT_TAG_VALUE]))
            dataset = Dataset(
                name=name, digest=digest[:MAX_DATASET_DIGEST], source_type=str(item.get("source_type", "labkit")),
                source=json.dumps({"uri": source}), schema=None, profile=json.dumps(profile),
            )  # fmt: skip
            inputs.append(DatasetInput(dataset=dataset, tags=tags))
        if not inputs:
            return
        # Two runs logging the same new dataset at once collide on MLflow's unique dataset row (a UNIQUE
        # constraint on sqlite, BAD_REQUEST over http): serialise on a local store, and retry once —
        # the second attempt finds the row the other run created.
        for attempt in (1, 2):
            try:
                with self._locked():
                    self._call("logging datasets", self._client.log_inputs, run_id, datasets=inputs)
                return
            except TrackingError as exc:
                if attempt == 2 or not re.search(r"UNIQUE|unique|IntegrityError|BAD_REQUEST", str(exc)):
                    raise
                time.sleep(0.2 + random.random() * 0.5)

    # ---------------------------------------------------------------- latest flag

    def _newest_finished(self, pilot: str):
        runs = self._search(
            f"{self._pilot_filter(pilot)} and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=20,
        )  # fmt: skip
        if not runs:
            return None
        top = runs[0].info.start_time
        return max(
            (r for r in runs if r.info.start_time == top), key=lambda r: (r.info.end_time or 0, r.info.run_id)
        )

    def _settle_latest(self, pilot: str) -> None:
        """Make ``labkit.latest`` true on the pilot's newest FINISHED run and false on all others."""
        for attempt in range(LATEST_ATTEMPTS):
            with self._locked():
                newest = self._newest_finished(pilot)
                newest_id = newest.info.run_id if newest else None
                flagged = self._search(f"{self._pilot_filter(pilot)} and tags.`{TAG_LATEST}` = 'true'")
                if newest is not None and newest.data.tags.get(TAG_LATEST) != "true":
                    self._call("setting labkit.latest", self._client.set_tag, newest_id, TAG_LATEST, "true")
                for run_id in {r.info.run_id for r in flagged} - {newest_id}:
                    self._call("clearing labkit.latest", self._client.set_tag, run_id, TAG_LATEST, "false")
                # Re-read: a concurrent recorder may have acted on an older view of the store.
                again = self._newest_finished(pilot)
                flagged = self._search(f"{self._pilot_filter(pilot)} and tags.`{TAG_LATEST}` = 'true'")
                want = {again.info.run_id} if again else set()
                if {r.info.run_id for r in flagged} == want:
                    return
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
        self.warnings.append(
            f"{pilot}: labkit.latest did not settle under concurrent recording; record again"
        )

    # ---------------------------------------------------------------- whole runs

    def record(self, record: RunRecord) -> str:
        """Start and finish one run, idempotent on ``record.run_key``; returns the run id."""
        self.prepare()
        with self._locked():  # on a local store, two recorders of one key cannot both create a run
            runs = self._search(
                f"tags.`{TAG_RUN_KEY}` = {_quote(record.run_key)}", order_by=["attributes.start_time ASC"]
            )
            done = [r for r in runs if r.data.tags.get(TAG_RECORDED) == "true" and r.info.status != "RUNNING"]
            if not done:
                run_id = self._resume(runs[0].info.run_id) if runs else None
                run_id = run_id or self.start(
                    record.pilot, record.run_name, record.run_key, record.tags, started_at=record.started_at
                )
        if done:  # recorded before; settling the flag again repairs a recorder interrupted after the status
            self._settle_latest(record.pilot)
            return done[0].info.run_id
        self.finish(run_id, record)
        return run_id

    def _resume(self, run_id: str) -> str:
        """Take over a partial run of this key (owner tags -> this process), so no sweep kills it mid-way."""
        self._call("taking over the run", self._client.log_batch, run_id, tags=_run_tags(self._owner_tags()))
        return run_id

    def sweep_stale(self, *, max_age_hours: float = STALE_AFTER_HOURS) -> list[str]:
        """RUNNING labkit runs that nobody will finish -> KILLED; returns their ids.

        A run of this host is stale when its process is gone (or the pid now belongs to another process);
        a run of another host when it has been RUNNING for more than ``max_age_hours``.
        """
        host = socket.gethostname()
        now = time.time()
        swept = []
        for run in self._search(f"attributes.status = 'RUNNING' and tags.`{TAG_PILOT}` LIKE '%'"):
            tags = run.data.tags
            age_hours = (now - run.info.start_time / 1000) / 3600
            reason = None
            if owner_tag(tags, TAG_HOST) == host:  # here we can ask the process itself
                pid_text = owner_tag(tags, TAG_PID) or ""
                pid = int(pid_text) if pid_text.isdigit() else 0
                if pid != os.getpid() and not _pid_alive(pid, owner_tag(tags, TAG_PID_START)):
                    reason = f"process {pid} on {host} is gone"
            elif age_hours > max_age_hours:  # another host's run: only its age tells
                reason = f"RUNNING for {age_hours:.1f} h on {owner_tag(tags, TAG_HOST) or 'an unknown host'}"
            if reason is None:
                continue
            self._call("sweeping a stale run", self._client.set_tag, run.info.run_id, TAG_SWEPT, reason)
            self._call("sweeping a stale run", self._client.set_terminated, run.info.run_id, status="KILLED")
            swept.append(run.info.run_id)
        return swept

    # ---------------------------------------------------------------- reading

    def first_prereg(self, pilot: str) -> str | None:
        """The ``labkit.prereg_sha256`` of the pilot's first run that recorded one (its pre-registration)."""
        runs = self._search(
            f"{self._pilot_filter(pilot)} and tags.`{TAG_PREREG}` LIKE '%'",
            order_by=["attributes.start_time ASC"], max_results=1,
        )  # fmt: skip
        return runs[0].data.tags.get(TAG_PREREG) if runs else None

    def latest_tag(self, pilot: str, key: str) -> str | None:
        """Tag ``key`` of the pilot's current latest (newest FINISHED) run, e.g. its data digest."""
        _quote(key)
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
            query += f" and tags.`{TAG_FUNCTION}` = {_quote(function)}"
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
            query += f" and attributes.status = {_quote(status)}"
        if function is not None:
            query += f" and tags.`{TAG_FUNCTION}` = {_quote(function)}"
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


def owner_tag(tags: dict[str, str], key: str) -> str | None:
    """An owner tag (``TAG_PID``, ``TAG_PID_START``, ``TAG_HOST``) of a run, under its name before
    ``labkit.sys.`` for runs recorded by an older labkit."""
    value = tags.get(key)
    return value if value is not None else tags.get(OLD_OWNER_TAGS.get(key, key))


def _run_tags(tags: dict[str, str]):
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _run_dict(run) -> dict:
    tags = dict(run.data.tags)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "pilot": tags.get(TAG_PILOT),
        "status": run.info.status,
        "start_time": run.info.start_time / 1000 if run.info.start_time else None,
        "end_time": run.info.end_time / 1000 if run.info.end_time else None,
        "tags": tags,
        "params": join_split_params(dict(run.data.params), tags.get(TAG_PARAMS_SPLIT, "")),
        "metrics": dict(run.data.metrics),
        "artifact_uri": run.info.artifact_uri,
    }


def join_split_params(params: dict[str, str], split: str) -> dict[str, str]:
    """Undo the split of long params: ``k.part1of2`` + ``k.part2of2`` -> ``k`` for the keys listed in ``split``."""
    keys = {k for k in split.split(",") if k}
    if not keys:
        return params
    parts: dict[str, dict[int, str]] = {}
    out = {}
    for name, value in params.items():
        m = _SPLIT_PART.match(name)
        if m and m["key"] in keys:
            parts.setdefault(m["key"], {})[int(m["i"])] = value
        else:
            out[name] = value
    for key, pieces in parts.items():
        out[key] = "".join(pieces[i] for i in sorted(pieces))
    return dict(sorted(out.items()))


def _batches(params: list, tags: list, metrics: list) -> list[dict]:
    """Pack entities into ``log_batch`` calls within MLflow's per-call limits (count and size)."""
    batches: list[dict] = []
    current = {"params": [], "tags": [], "metrics": []}
    size = count = 0
    limits = {
        "params": MAX_PARAMS_TAGS_PER_BATCH,
        "tags": MAX_PARAMS_TAGS_PER_BATCH,
        "metrics": MAX_METRICS_PER_BATCH,
    }
    for kind, items in (("params", params), ("tags", tags), ("metrics", metrics)):
        for item in items:
            weight = 64 + len(json.dumps(item.key)) + len(json.dumps(str(item.value)))
            if (
                len(current[kind]) >= limits[kind]
                or count >= MAX_ENTITIES_PER_BATCH
                or size + weight > MAX_BATCH_BYTES
            ):
                batches.append(current)
                current = {"params": [], "tags": [], "metrics": []}
                size = count = 0
            current[kind].append(item)
            size += weight
            count += 1
    if count:
        batches.append(current)
    return batches
