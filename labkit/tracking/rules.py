"""MLflow's limits and names, and labkit's rules for living within them (RELIABILITY #31: never silent
truncation): which names MLflow accepts, how long params are split and joined back, how entities are
packed into ``log_batch`` calls, where an artifact goes, and how any text shown to a user is stripped of
credentials. Pure functions; the writer (``store``/``writer``) applies them to every run it logs,
pilot runs and portfolio runs alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from labkit.errors import TrackingError
from labkit.tracking.record import FLOAT_MAX, SPLIT_PART, TAG_PARAMS_SPLIT, TAG_PILOT, metric_value

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

FIGURE_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp", ".pdf"}
_NAME_OK = re.compile(r"^[/\w.\- :]*\Z")  # MLflow's rule for param, metric and tag names (POSIX)
_FILTER_VALUE_OK = re.compile(r"^[\w.:/@+\- ]+\Z")  # what may sit between quotes in a search filter
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)[^\s/?#]*@")  # greedy: the last @ ends it
# A credential given as a name=value pair: in a query string (?password=, &token=, X-Amz-Signature=, sig=),
# or in a libpq-style DSN (password='…'). Any name holding one of these words is masked, even if harmless.
_CREDENTIAL_PAIR = re.compile(
    r"(?i)(?<![\w.-])(?P<name>[\w.-]*(?:pass|pwd|token|secret|key|sig|auth|credential|session)[\w.-]*=)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&#;'\"]*)"
)
_QUERY = re.compile(r"[?#].*\Z", re.S)

# --------------------------------------------------------------------------- text fit for a user


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


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, credentials masked, driver prefixes and links dropped, capped."""
    text = " ".join(str(exc).split())
    text = text.split(" [SQL: ", 1)[0]  # the statement and its parameters: long, and not for a terminal
    text = re.sub(r"\(raised as a result of [^)]*\) ?", "", text)  # SQLAlchemy's autoflush preamble
    text = re.sub(r"\((?:\w+\.)+\w+\) ", "", text)  # driver prefixes: "(sqlite3.OperationalError) "
    text = re.sub(r" ?\(Background on this error at: [^)]*\)", "", text)
    text = redact(text.strip()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


# --------------------------------------------------------------------------- names and values


def bad_name(name: str) -> str | None:
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


def quote(value: str) -> str:
    """``value`` quoted for an MLflow search filter; refused when it holds anything a filter could misread."""
    if not isinstance(value, str) or not _FILTER_VALUE_OK.match(value):
        raise TrackingError(f"'{value}' cannot be used in an MLflow search; use letters, digits and -_.:/")
    return f"'{value}'"


def ms(seconds: float | None) -> int | None:
    """Epoch seconds as MLflow's epoch milliseconds; None (MLflow's "now") for 0 or None."""
    return int(round(seconds * 1000)) if seconds else None


def split_params(params: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Params as MLflow can hold them: a value over ``MAX_PARAM_VALUE`` characters becomes
    ``<key>.part<i>of<n>`` parts; returns them and the split keys. Names MLflow rejects are refused."""
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
    bad = {k: why for k in out if (why := bad_name(k))}
    if bad:
        listed = "; ".join(f"'{k[:80]}': {why}" for k, why in sorted(bad.items())[:5])
        raise TrackingError(f"param name(s) MLflow cannot store: {listed}")
    clash = sorted(k for k in params if SPLIT_PART.match(k) and SPLIT_PART.match(k)["key"] in split)
    if clash:
        raise TrackingError(f"param name(s) {', '.join(clash)} collide with the parts of a long param")
    return out, split


def join_split_params(params: dict[str, str], split: str) -> dict[str, str]:
    """Undo the split of long params: ``k.part1of2`` + ``k.part2of2`` -> ``k`` for the keys listed in ``split``."""
    keys = {k for k in split.split(",") if k}
    if not keys:
        return params
    parts: dict[str, dict[int, str]] = {}
    out = {}
    for name, value in params.items():
        m = SPLIT_PART.match(name)
        if m and m["key"] in keys:
            parts.setdefault(m["key"], {})[int(m["i"])] = value
        else:
            out[name] = value
    for key, pieces in parts.items():
        out[key] = "".join(pieces[i] for i in sorted(pieces))
    return dict(sorted(out.items()))


def note_of(text: str, pilot: str) -> tuple[str | None, str | None, str | None]:
    """The run description as MLflow's note: ``(note, full text when it continues in description.md,
    the warning that says so)``."""
    if not text:
        return None, None, None
    if len(text) <= MAX_TAG_VALUE:
        return text, None, None
    tail = f"\n\n… continued in the artifact description.md ({len(text)} characters in full)"
    warning = (
        f"{pilot}: the run description has {len(text)} characters, more than MLflow's "
        f"{MAX_TAG_VALUE} for a note; the note shows the start and description.md holds all of it"
    )
    return text[: MAX_TAG_VALUE - len(tail)] + tail, text, warning


def check_tags(tags: dict[str, str]) -> None:
    """Refuse tags MLflow would reject or cut: bad names, values over ``MAX_TAG_VALUE``."""
    problems = []
    for key, value in tags.items():
        why = bad_name(key)
        if why:
            problems.append(f"'{key[:80]}': {why}")
        elif len(value) > MAX_TAG_VALUE:
            problems.append(f"'{key}': value of {len(value)} characters, more than MLflow's {MAX_TAG_VALUE}")
    if problems:
        raise TrackingError(f"tag(s) MLflow cannot store without losing them: {'; '.join(problems[:5])}")


def checked_metrics(metrics: dict) -> dict[str, float]:
    """Metrics as MLflow stores them (:func:`labkit.tracking.record.metric_value`); bad names refused."""
    out, bad = {}, []
    for key, value in metrics.items():
        why = bad_name(key)
        if why:
            bad.append(f"'{key[:80]}': {why}")
            continue
        number = metric_value(value)
        if number is not None:
            out[key] = number
    if bad:
        raise TrackingError(f"metric name(s) MLflow cannot store: {'; '.join(bad[:5])}")
    return out


def checked_history(points: list[dict]) -> list[dict]:
    """Metric-history points (``RunRecord.history``) as MLflow stores them: finite values at whole steps and
    timestamps; names MLflow rejects, or a point of another shape, refused — never a point silently lost."""
    out, bad = [], []
    for point in points:
        key, value, step, stamp = (point.get(k) for k in ("key", "value", "step", "timestamp"))
        number = metric_value(value)
        why = bad_name(key) if isinstance(key, str) else "not a name"
        if why is None and (number is None or abs(number) == FLOAT_MAX):
            why = f"value {value!r} is not a finite number"
        if why is None and not all(isinstance(x, int) and not isinstance(x, bool) for x in (step, stamp)):
            why = f"step {step!r} and timestamp {stamp!r} must be whole numbers"
        if why:
            bad.append(f"'{str(key)[:80]}': {why}")
        else:
            out.append({"key": key, "value": number, "step": step, "timestamp": stamp})
    if bad:
        raise TrackingError(f"metric history MLflow cannot store: {'; '.join(bad[:5])}")
    return out


def batches(params: list, tags: list, metrics: list) -> list[dict]:
    """Pack entities into ``log_batch`` calls within MLflow's per-call limits (count and size)."""
    out: list[dict] = []
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
                out.append(current)
                current = {"params": [], "tags": [], "metrics": []}
                size = count = 0
            current[kind].append(item)
            size += weight
            count += 1
    if count:
        out.append(current)
    return out


def artifact_dir(path: Path) -> str | None:
    """The artifact folder of a file: ``pilot/``, ``notebook/``, ``figures/``, or None for the root."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "pilot"
    if suffix in (".ipynb", ".html") and path.name != "report.html":  # the no-code report: at the root
        return "notebook"
    if suffix in FIGURE_SUFFIXES or path.name == "figures":
        return "figures"
    return None


def run_entry(
    run_id: str, run_name: str | None, status: str, start_ms, end_ms, tags: dict[str, str],
    params: dict[str, str], metrics: dict[str, float], artifact_uri: str | None,
) -> dict:  # fmt: skip
    """One run as both readers return it (``Tracker.latest_runs``, ``reader.SqliteRuns``): epoch seconds,
    split params joined back."""
    return {
        "run_id": run_id,
        "run_name": run_name,
        "pilot": tags.get(TAG_PILOT),
        "status": status,
        "start_time": start_ms / 1000 if start_ms else None,
        "end_time": end_ms / 1000 if end_ms else None,
        "tags": tags,
        "params": join_split_params(params, tags.get(TAG_PARAMS_SPLIT, "")),
        "metrics": metrics,
        "artifact_uri": artifact_uri,
    }
