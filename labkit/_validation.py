"""Shared machinery for the lab and pilot models: strict pydantic base, error mapping to file:line.

Validation runs in two passes over one file and reports every problem of both at once:
pydantic checks shapes, types and ranges (``extra="forbid"``, strict types), then a semantic pass checks
what needs the whole document or the lab (registries, references, sums). Each problem becomes a
``SpecError(file, line, field, message)`` whose line comes from the YAML node the field was read from.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from labkit.errors import SpecError, SpecErrors
from labkit.yamlfile import YamlDoc, load_yaml, one_line, shorten

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*\Z")
# Each pilot writes into its own folder results/<id>/, beside what labkit, MLflow and the lab's tools keep
# in results/: a pilot named like one of those would write into it (RELIABILITY.md case 47). Only these can
# collide: the other names there hold a dot (mlflow.db, mlflow.log, mlflow-ui-<port>.log, .mlflow.lock,
# .labkit-id-key, .duckdb-tmp), and an id is a slug, which has none.
# (results/browser and results/bench are the test suite's and `make bench`'s folders in this repository's
# own lab, not in a user's lab: a pilot may be called `bench`, and the benchmark lab's pilot is.)
RESERVED_IDS = {
    "mlruns": "MLflow keeps every run's artifacts in results/mlruns",
    "mlartifacts": "an MLflow server keeps artifacts in mlartifacts by default",
}
NAME = re.compile(r"^[a-z][a-z0-9_]*\Z")
COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Text shown to people may hold newlines and tabs, never other control or bidi-override characters.
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069\u200e\u200f]")


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors and values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def bad_text(value: str) -> str | None:
    """A reason the free text is refused, or None."""
    match = _BAD_TEXT.search(value)
    if match:
        return f"contains the control character U+{ord(match.group()):04X}; plain text only"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return f"'{shorten(value)}' (text)"
    return f"{value!r} (a number)"


_EXPECTED = {
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "string_type": "text",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "date_type": "a date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "a date (YYYY-MM-DD)",
    "date_parsing": "a date (YYYY-MM-DD)",
}


def _message(err: dict, model: type[BaseModel] | None, loc: tuple) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        name = str(loc[-1])
        guess = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6) if len(name) <= 100 else []
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        return f"unknown field '{shorten(name)}'{hint} allowed: {', '.join(allowed)}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(value)}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        hint = did_you_mean(value, re.findall(r"'([^']*)'", expected))
        return f"{_describe(value)} is not allowed; {hint}allowed: {expected.replace(chr(39), '')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
            kind
        ]
        bound = next(iter(ctx.values()))
        return f"{_describe(value)} is out of range; it must be {sign} {bound:g}"
    if kind == "finite_number":
        return f"{_describe(value)} is not a finite number"
    if kind in ("too_short", "too_long"):
        return err["msg"][0].lower() + err["msg"][1:]
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = err["msg"]
    return msg[0].lower() + msg[1:]


def did_you_mean(value: Any, allowed: list[str]) -> str:
    """``"did you mean 'x'? "`` for the allowed value closest to a misspelt one (difflib, cutoff 0.6), else
    ``""``: every enumerated value's message offers it (a metric type 'proprtion' -> 'proportion')."""
    if not isinstance(value, str) or len(value) > 100:
        return ""
    guess = difflib.get_close_matches(value, list(allowed), n=len(allowed), cutoff=0.6)
    if guess:  # of equally close values, the first allowed ('=' -> '==', not '>=')
        best = difflib.SequenceMatcher(None, value, guess[0]).ratio()
        guess = [
            a for a in allowed if a in guess and difflib.SequenceMatcher(None, value, a).ratio() == best
        ][:1]
    else:  # a case slip ('Proportion') is closer than difflib's ratio says
        guess = [a for a in allowed if a.lower() == value.lower()][:1]
    return f"did you mean '{guess[0]}'? " if guess else ""


def _allowed_fields(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names of the sub-model that ``loc`` points into, following the annotations."""
    current: Any = model
    for part in loc:
        if not _is_model(_strip_optional(current)):
            current = _inner(current)  # a list index or a dict key: step into the element type
            continue
        field = _strip_optional(current).model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
    current = _inner(current)
    return list(current.model_fields) if _is_model(current) else []


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if (
        typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None))
        and len(args) == 1
    ):
        return args[0]
    return annotation


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _inner(annotation: Any) -> Any:
    """The model inside Optional[...] / list[...] / dict[..., ...] annotations, else the annotation."""
    for _ in range(5):
        if annotation is None or _is_model(annotation):
            return annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if not args:
            return annotation
        models = [a for a in args if _is_model(a)]
        annotation = models[0] if models else args[-1]
    return annotation


def pydantic_errors(exc: ValidationError, doc: YamlDoc, model: type[BaseModel]) -> list[SpecError]:
    """Map each pydantic error to ``file:line: field.path: message`` using the YAML node's line."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(
            part for part in err["loc"] if not (isinstance(part, str) and part.startswith("function-"))
        )
        out.append(SpecError(doc.path, doc.line_of(loc), field_path(loc), _message(err, model, loc)))
    return out


def validate_model(model: type[BaseModel], doc: YamlDoc, context: dict | None = None):
    """(instance or None, errors) — pydantic pass over a loaded YAML document."""
    if not isinstance(doc.data, dict):
        what = "empty" if doc.data is None else f"{_describe(doc.data)}"
        return None, [SpecError(doc.path, 1, "", f"the file must be a mapping of fields; it is {what}")]
    try:
        return model.model_validate(doc.data, context=context), []
    except ValidationError as exc:
        return None, pydantic_errors(exc, doc, model)


def loose(model: type[BaseModel], data: Any) -> Any:
    """Build ``model`` from raw data without validation, recursively, for the semantic pass to run even
    when the shape pass failed somewhere else in the file. Fields may hold values of the wrong type:
    callers guard each check (see ``guarded``) and drop problems the shape pass already reported."""
    if not isinstance(data, dict):
        return data
    values = {}
    for name, info in model.model_fields.items():
        if name not in data:
            values[name] = None if info.is_required() else info.get_default(call_default_factory=True)
            continue
        raw = data[name]
        inner = _inner(info.annotation)
        origin = typing.get_origin(_strip_optional(info.annotation))
        if _is_model(inner) and isinstance(raw, dict) and origin is not dict:
            values[name] = loose(inner, raw)
        elif _is_model(inner) and isinstance(raw, list):
            values[name] = [loose(inner, item) for item in raw]
        elif _is_model(inner) and isinstance(raw, dict) and origin is dict:
            values[name] = {k: loose(inner, v) for k, v in raw.items()}
        else:
            values[name] = raw
    return model.model_construct(**values)


MAX_DETAIL = 1_000  # characters of one problem's message, past which it is cut (a last guard)
# A quoted span with no blank in it is a name, value or path the message quotes, never prose; past
# MAX_QUOTED characters it is shortened. One shortened already holds a blank ('kkk… (900,000 characters)').
MAX_QUOTED = 200  # a path is quoted whole up to here; a key or value is shortened at QUOTE_LIMIT already
_QUOTED = re.compile(rf"'([^'\s]{{{MAX_QUOTED + 1},}})'")
_FIELD_PART_LIMIT = 80  # characters of one part of a field path (a key: an arm, a source, a metric)
MAX_FIELD = 300  # characters of a field path (a spec's own paths are a few parts of a few words)


def capped(message: str) -> str:
    """``message`` with each quoted name or value shortened (``yamlfile.shorten``), then cut at MAX_DETAIL."""
    message = _QUOTED.sub(lambda m: f"'{shorten(m.group(1), MAX_QUOTED)}'", message)
    return shorten(message, MAX_DETAIL)


def one_line_errors(errors: list[SpecError]) -> list[SpecError]:
    """Each problem as one short printable line, the one place every problem of a pilot or lab file passes
    before it is shown: values quoted in a message (a column name, an arm, a key) may hold line breaks, NUL
    or bidi marks, which are shown escaped (``yamlfile.one_line``), never raw; and they may be a megabyte
    long, so each quoted value and each part of the field path (shortened here only) is cut to its start,
    '…' and its length (``yamlfile.shorten``, RELIABILITY.md case 48)."""
    out = []
    for e in errors:
        field = ".".join(shorten(part, _FIELD_PART_LIMIT) for part in e.field.split("."))
        field = shorten(field, MAX_FIELD)  # a key of 450,000 dots has parts that are all short
        parts = (one_line(e.file), field, capped(one_line(e.detail)))
        same = parts == (e.file, e.field, e.detail)
        out.append(e if same else SpecError(parts[0], e.line, parts[1], parts[2], e.column))
    return out


def merge_problems(shape: list[SpecError], meaning: list[SpecError]) -> list[SpecError]:
    """Shape errors plus the semantic ones about fields the shape pass did not already flag."""
    flagged = [e.field for e in shape]

    def related(field: str) -> bool:
        return any(field == f or field.startswith(f + ".") or f.startswith(field + ".") for f in flagged)

    return shape + [e for e in meaning if not related(e.field)]


def read_yaml(path: Path, display: str | None) -> tuple[YamlDoc | None, list[SpecError]]:
    """(document, the problems of reading it): none, or the scalar and key problems with the document as
    read (``SpecErrors.partial``, for the caller to judge the rest in the same pass), or a stop (a syntax
    error, an anchor, a second document) with None."""
    try:
        return load_yaml(path, display=display or str(path)), []
    except SpecErrors as exc:
        return getattr(exc, "partial", None), list(exc.errors)


def dates_misplaced(doc: YamlDoc, allowed: set[tuple]) -> list[SpecError]:
    """An unquoted ISO date (``YamlDoc.implicit_dates``) anywhere but at the ``allowed`` locations: YAML 1.1
    tools read it as a date, labkit as text, so a field meant as text must quote it."""
    out = []
    for loc in sorted(doc.implicit_dates, key=str):
        if loc not in allowed:
            value = _get(doc.data, loc)
            out.append(
                SpecError(
                    doc.path,
                    doc.line_of(loc),
                    ".".join(map(str, loc)),
                    f"'{value}' is read as a date by YAML 1.1; quote it if it is text",
                )
            )
    return out


def _get(data, loc):
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def validate_doc(
    model: type[BaseModel], doc: YamlDoc, check: Callable[[Any], list[SpecError]], dated: set[tuple]
) -> tuple[Any, list[SpecError]]:
    """(instance or None, every problem): the shape pass, unquoted dates outside ``dated``, and the meaning
    pass ``check`` over the instance, or over a ``loose`` one when the shape failed elsewhere in the file."""
    spec, errors = validate_model(model, doc)
    errors += dates_misplaced(doc, dated)
    if isinstance(doc.data, dict):
        view = spec if spec is not None else loose(model, doc.data)
        meaning: list[SpecError] = []
        try:
            meaning = check(view)
        except (TypeError, AttributeError, ValueError, KeyError):
            pass  # a value of the wrong shape, already reported by the shape pass
        errors = merge_problems(errors, meaning)
    return spec, errors


def display_path(path: Path) -> str:
    """A path as messages show it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def unlocated(message: str, *, file: str = "", field: str = "") -> SpecError:
    """A ``SpecError`` whose one line is ``message`` as written, with no ``file:line:`` before it: a pilot
    id or lab folder typed on the command line, or the lab as a whole, has no line to point at. ``file``
    and ``field`` still say, for a caller, what the problem is about."""
    error = SpecError(file, None, field, message)
    error.message = message
    error.args = (message,)
    return error
