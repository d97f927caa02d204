"""What one analysis run records, in MLflow's words: every ``labkit.*`` tag name, the ``RunRecord``, and
the pilot spec and results.json flattened into params and metrics (DESIGN.md, "Runs and MLflow").

Pure: no MLflow here. The tag vocabulary lives in this one module because the writer (``store``), the
readers (``reader``, `labkit compare`) and the pipeline's ``build_record`` must agree on every name.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.errors import TrackingError
from labkit.tracking.history import look_stamp, over_time_history

if TYPE_CHECKING:  # pragma: no cover
    from labkit.spec import Pilot

STATUSES = ("FINISHED", "FAILED", "KILLED")
FLOAT_MAX = sys.float_info.max  # "1.8e308": what an infinite metric is stored as

# --------------------------------------------------------------------------- the tag vocabulary

# identity and bookkeeping: set by the tracker itself
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
TAG_PARAMS_SPLIT = "labkit.params_split"  # the params logged in parts, named as SPLIT_PART says
SPLIT_PART = re.compile(r"^(?P<key>.+)\.part(?P<i>\d+)of(?P<n>\d+)$")
TAG_ERROR = "labkit.error"
TAG_SWEPT = "labkit.swept"
TAG_KIND = "labkit.kind"  # "portfolio" on a `labkit compare --log` run, which is no pilot's
TAG_BY = "labkit.by"  # the grouping of a portfolio run
TAG_DIGEST = "labkit.digest"  # a dataset input's full digest (MLflow's field holds 36 characters)
# the business tags of a pilot's run (build_record)
TAG_CHANNEL = "labkit.channel"
TAG_STAGE = "labkit.stage"
TAG_OWNER = "labkit.owner"
TAG_TITLE = "labkit.title"
TAG_PRIMARY = "labkit.primary_metric"
TAG_DIRECTION = "labkit.direction"  # read only: runs of older labkits
TAG_DECISION = "labkit.decision"
TAG_SPEC_SHA = "labkit.spec_sha256"
TAG_PREREG = "labkit.prereg_sha256"
TAG_SPEC_CHANGED = "labkit.spec_changed"
TAG_CODE_VERSION = "labkit.code_version"
TAG_NOTEBOOK = "labkit.notebook"
TAG_DATA_DIGEST = "labkit.data_digest"
TAG_DATA_CHANGED = "labkit.data_changed"
TAG_RECOMMENDATION = "labkit.recommendation"
TAG_RECOMMENDATION_ARM = "labkit.recommendation_arm"
# When the run's analysis looked at the data (look_stamp): labkit.latest goes to the newest look, then the
# newest start (writer._newest_finished; `labkit list`, labkit.listing._latest_decision)
TAG_LOOK = "labkit.look"
NOTE = "mlflow.note.content"
RESERVED_TAGS = (TAG_LATEST, TAG_RECORDED)  # labkit manages these; a record cannot set them

# params of the flattened pilot spec that readers look up by name
PARAM_METRIC = "hypothesis.metric"
PARAM_DIRECTION = "hypothesis.direction"
PARAM_STATEMENT = "hypothesis.statement"
PARAM_ALPHA = "analysis.alpha"

EFFECTS = "effects.csv"  # every (metric, arm) row of results.json: the run's per-arm table artifact


def owner_tag(tags: dict[str, str], key: str) -> str | None:
    """An owner tag (``TAG_PID``, ``TAG_PID_START``, ``TAG_HOST``) of a run, under its name before
    ``labkit.sys.`` for runs recorded by an older labkit."""
    value = tags.get(key)
    return value if value is not None else tags.get(OLD_OWNER_TAGS.get(key, key))


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class RunRecord:
    """Everything one analysis run records; ``record.json`` holds it so the run can be recorded again.

    ``run_key`` (e.g. ``"<pilot>/<UTC stamp>"``) makes recording idempotent; ``started_at``/``ended_at``
    are epoch seconds; ``artifacts`` are absolute file paths; ``datasets`` are
    ``{"name", "digest", "source"}`` (optional ``"source_type"``, ``"rows"``) per data source used;
    ``history`` are metric-history points ``{"key", "value", "step", "timestamp"}`` (epoch ms): the effect
    over time (``labkit.tracking.history``).
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
    history: list[dict] = field(default_factory=list)

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
        """JSON with every field; infinite or NaN metrics are refused (convert them first). An empty
        ``history`` is left out: the record of a run without the effect over time reads as before it."""
        data = {k: v for k, v in asdict(self).items() if k != "history" or v}
        try:
            return json.dumps(data, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
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
        shapes = {
            "tags": dict, "params": dict, "metrics": dict, "artifacts": list, "datasets": list,
            "history": list,
        }  # fmt: skip
        wrong = [name for name, shape in shapes.items() if not isinstance(data.get(name, shape()), shape)]
        if wrong:
            raise TrackingError(f"not a labkit run record: wrong type for {', '.join(wrong)}")
        return cls(**data)


# --------------------------------------------------------------------------- params and metrics


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
        number = metric_value(value)
        if number is not None:
            out[name] = number

    out.update(_gain(results))
    roi = results.get("roi") or {}
    for key in ("roi", "roi_ci_low", "roi_ci_high"):
        number = metric_value(roi.get(key))
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
    for row in results.get("segments") or []:  # analysis.segments (labkit.segments); withheld cells: None
        for key in SEGMENT_FIELDS:
            put(f"{segment_prefix(row)}.{key}", row.get(key))
    return out


# A segments row's numbers logged as ``segment.<column>.<value>.<arm>.<field>`` (exploratory as 0/1).
SEGMENT_FIELDS = ("effect", "ci_low", "ci_high", "p_value_adjusted", "exploratory")


def segment_prefix(row: dict) -> str:
    """``segment.<column>.<value>.<arm>`` of a ``segments`` row: a value's characters other than letters,
    digits, ``_``, ``-`` and spaces are ``_`` (MLflow's name rules, and dots keep separating the parts), a
    value cut at 100 characters; a customer without a value is in ``null``."""
    value = "null" if row.get("value") is None else re.sub(r"[^\w\- ]", "_", str(row["value"]))[:100]
    return f"segment.{row.get('column')}.{value}.{row.get('arm')}"


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
        if r.get("role") == "primary" and metric_value(r.get("lift")) is not None
    ]  # fmt: skip
    if sign is None or not rows:
        return {}
    best = min(rows, key=lambda r: (-sign * r["lift"], str(r.get("arm"))))
    out = {"gain_pct": sign * best["lift"] * 100, "lift_pct": best["lift"] * 100}
    low, high = metric_value(best.get("lift_ci_low")), metric_value(best.get("lift_ci_high"))
    if low is not None and high is not None and max(abs(low), abs(high)) < FLOAT_MAX:
        out["lift_pct_ci_low"], out["lift_pct_ci_high"] = low * 100, high * 100
        out["gain_pct_ci_low"], out["gain_pct_ci_high"] = sorted((sign * low * 100, sign * high * 100))
    return {k: round(v, PCT_DIGITS) for k, v in out.items() if math.isfinite(v)}


def metric_value(value) -> float | None:
    """A number as MLflow stores it: None and NaN skipped (None), booleans 0/1, ±inf as ±FLOAT_MAX."""
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


# --------------------------------------------------------------------------- a pilot's run


def build_record(
    pilot: Pilot,
    nb,
    *,
    run_key: str,
    run_name: str,
    results: dict | None,
    spec_changed: bool,
    code_version: str,
    previous_digest: str | None = None,
    started_at: float | None = None,
) -> RunRecord:
    """The RunRecord of one notebook run: tags, params, metrics, description, artifacts, datasets.

    ``started_at`` is the run's start as the store holds it (`labkit run` opens the RUNNING run before the
    notebook starts); by default the notebook's. ``labkit.look`` is taken from it and the results' ``as_of``,
    so that among runs without one the newest look is the newest start.

    ``labkit.data_changed`` is "true" when the data digest differs from the pilot's previous latest run
    (rows changed, reordered or appended since), so `labkit compare` can flag it."""
    from labkit.analysis import sources_used
    from labkit.data.sources import DigestCache

    s = pilot.spec
    decision = results.get("decision") if results else None
    meta = (results or {}).get("meta", {})
    tags = {
        TAG_FUNCTION: s.function,
        TAG_CHANNEL: s.channel,
        TAG_STAGE: s.stage,
        TAG_OWNER: s.owner,
        TAG_TITLE: s.title,
        TAG_PRIMARY: s.hypothesis.metric,
        TAG_DECISION: decision or ("failed" if nb.status == "FAILED" else nb.status.lower()),
        TAG_SPEC_SHA: pilot.spec_sha256,
        TAG_PREREG: pilot.prereg_sha256,
        TAG_SPEC_CHANGED: "true" if spec_changed else "false",
        TAG_CODE_VERSION: code_version,
        TAG_NOTEBOOK: pilot.lab.display(pilot.notebook_path),
    }
    if meta.get("data_digest"):
        tags[TAG_DATA_DIGEST] = meta["data_digest"]
        changed = previous_digest is not None and previous_digest != meta["data_digest"]
        tags[TAG_DATA_CHANGED] = "true" if changed else "false"
    start = nb.started_at if started_at is None else started_at
    if results and start:
        tags[TAG_LOOK] = look_stamp(meta.get("as_of"), start)
    if nb.message:
        tags[TAG_ERROR] = nb.message[:5000]
    advice = (results or {}).get("recommendation")
    if advice:
        tags[TAG_RECOMMENDATION] = advice
        if results.get("recommendation_arm"):
            tags[TAG_RECOMMENDATION_ARM] = results["recommendation_arm"]
    h = s.hypothesis
    # the runs table shows the description's first line, unrendered: decision, recommendation and ROI
    # first, in plain words (no Markdown); the run page renders the rest
    lines = [
        headline(results) if results else f"Run {nb.status.lower()}: no decision",
        "",
        f"**{s.title}** ({s.function} · {s.channel} · {s.stage})",
    ]
    if results and advice:
        lines += ["", f"**Recommendation: {advice}.** {results.get('recommendation_reason') or ''}"]
    if results:
        lines += ["", f"**Decision: {decision}.** {results.get('reason', '')}"]
    lines += [
        "",
        f"**Hypothesis.** {h.statement}",
        f"Primary metric `{h.metric}`, predicted to {h.direction}.",
    ]
    if results:
        # every data warning of the analysis (DESIGN.md): in results.json, the notebook and here
        warned = [str(w) for w in results.get("warnings") or []]
        if warned:
            lines += ["", "**Warnings.**", *(f"- {w}" for w in warned)]
    else:
        lines += ["", f"**Run {nb.status.lower()}.** {nb.message or ''}"]
    artifacts = [str(pilot.path)]
    for path in (nb.executed, nb.html, getattr(nb, "report", None), nb.results):  # report.html: no code
        if path is not None and Path(path).is_file():
            artifacts.append(str(path))
    effects = Path(nb.results).parent / EFFECTS if nb.results is not None else None
    if effects is not None and effects.is_file():
        artifacts.append(str(effects))
    artifacts += [str(f) for f in nb.figures]
    datasets = []
    digests = DigestCache.load(pilot.lab)  # the notebook's analysis has just hashed these files
    for name in sorted(sources_used(pilot)):
        src = pilot.lab.source(name)
        if src.format in ("csv", "parquet"):
            path = pilot.lab.source_path(name)
            if path.is_file():
                datasets.append(
                    {"name": name, "digest": digests.digest(path), "source": pilot.lab.display(path)}
                )
    return RunRecord(
        pilot=pilot.id, run_name=run_name, status=nb.status, run_key=run_key, tags=tags,
        params=flatten_params(s.model_dump(mode="json")), metrics=metrics_from_results(results) if results else {},
        description="\n".join(lines), artifacts=artifacts, datasets=datasets, started_at=start,
        ended_at=nb.ended_at, history=over_time_history(results) if results else [],
    )  # fmt: skip


def headline(results: dict) -> str:
    """The first line of a run's description, in plain words: ``Decision ship · Recommendation rework
    (discount_post) · ROI -5.0 % [-71 %, +61 %]`` — what the runs table shows of the description."""
    parts = [f"Decision {results.get('decision') or '?'}"]
    if results.get("recommendation"):
        arm = results.get("recommendation_arm")
        parts.append(f"Recommendation {results['recommendation']}" + (f" ({arm})" if arm else ""))
    roi = results.get("roi") or {}
    if roi.get("roi") is not None:
        text = f"ROI {roi['roi'] * 100:+.1f} %"
        if roi.get("roi_ci_low") is not None and roi.get("roi_ci_high") is not None:
            text += f" [{roi['roi_ci_low'] * 100:+.0f} %, {roi['roi_ci_high'] * 100:+.0f} %]"
        parts.append(text)
    else:
        parts.append("no budget, no ROI" if not roi else "ROI unknown")
    return " · ".join(parts)
