"""experiments/<id>.yaml: one pilot — its hypothesis, cohort, metrics, guardrails, analysis and budget.

``load_pilot`` reads a pilot through the strict YAML loader, validates its shape with pydantic and its
meaning against the lab (registries, sources, references), and returns a frozen ``Pilot`` whose
``settings`` already hold the lab defaults. Every problem of a file is reported in one pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from labkit._validation import (
    COLUMN,
    NAME,
    SLUG,
    Strict,
    bad_text,
    loose,
    merge_problems,
    one_line_errors,
    validate_model,
)
from labkit.errors import LabkitError, SpecError, SpecErrors
from labkit.lab import Lab, _dates_misplaced, load_lab, resolve_inside
from labkit.yamlfile import YamlDoc, load_yaml

Scalar = str | int | float | bool
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null")
AGGREGATES = ("count", "sum", "mean", "max", "any")
METRIC_TYPES = ("proportion", "mean", "ratio", "quantile")


class Amount(Strict):
    """An effect size given one way: relative (a fraction of the control mean) or absolute."""

    relative: float | None = Field(None, gt=0, allow_inf_nan=False)
    absolute: float | None = Field(None, gt=0, allow_inf_nan=False)


class Baseline(Strict):
    """An assumed baseline for planning before data exists (``labkit.planning``): ``{rate: p}`` for a
    proportion, ``{mean: m, sd: s}`` for a mean. Measured data, when there is some, takes precedence."""

    rate: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    mean: float | None = Field(None, allow_inf_nan=False)
    sd: float | None = Field(None, gt=0, allow_inf_nan=False)


class Hypothesis(Strict):
    statement: str = Field(min_length=1)
    metric: str
    direction: Literal["increase", "decrease"]
    mde: Amount
    baseline: Baseline | None = None  # an assumption for planning; never used by the analysis


class Filter(Strict):
    column: str
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null"]
    value: Scalar | list[Scalar] | None = None


class ImportedAssignment(Strict):
    """A channel tool's randomisation (``labkit.assignment``, "Imported assignments").

    ``arms`` maps the arm column's values, as text, to the pilot's arms (``{'0': control, '1': voucher}``);
    unquoted YAML numbers and true/false are accepted as keys and read as their text. Without it the
    column's values must be the arm names themselves. ``strata`` names the blocks the tool randomised
    within: the analysis then post-stratifies (``labkit.stats.poststrat``)."""

    source: str
    arm_column: str
    id_column: str | None = None  # default: cohort.id_column
    assigned_at_column: str | None = None  # default: cohort.start for every customer
    arms: dict[str, str] | None = None
    strata: list[str] = Field(default_factory=list)

    @field_validator("arms", mode="before")
    @classmethod
    def _keys_as_text(cls, value):
        """YAML reads ``{0: control}`` with an integer key; the map's keys are the column's values as text."""
        if not isinstance(value, dict):
            return value
        out = {}
        for key, arm in value.items():
            if isinstance(key, bool):
                key = str(key).lower()
            elif isinstance(key, int | float):
                key = repr(key) if isinstance(key, float) else str(key)
            out[key] = arm
        return out


class Cohort(Strict):
    source: str
    id_column: str
    where: list[Filter] = Field(default_factory=list)
    max_size: int | None = Field(None, gt=0)  # required unless imported: then the imported count
    arms: dict[str, Annotated[float, Field(allow_inf_nan=False)]]
    control: str
    stratify_by: list[str] = Field(default_factory=list)
    salt: str | None = None
    # required unless imported with an assigned_at_column: then the earliest assignment
    start: Annotated[dt.date | None, Field(strict=False)] = None
    assignment: ImportedAssignment | None = None


class EventMatch(Strict):
    column: str
    equals: Scalar


class ColumnRef(Strict):
    source: str
    column: str


class Metric(Strict):
    name: str
    type: Literal["proportion", "mean", "ratio", "quantile"]
    source: str | None = None
    column: str | None = None  # per-customer column, or the event value column for sum/mean/max
    event: EventMatch | None = None
    aggregate: Literal["count", "sum", "mean", "max", "any"] | None = None
    window_days: int | None = Field(None, gt=0, le=3660)
    cuped: bool = False
    covariate: str | None = None
    numerator: ColumnRef | None = None
    denominator: ColumnRef | None = None
    quantile: float | None = Field(None, gt=0, lt=1)
    # what a missing value means: None is the default of DESIGN.md (see `missing_policy`)
    missing: Literal["zero", "exclude"] | None = None

    @property
    def missing_policy(self) -> str:
        """The effective policy: ``zero``, ``exclude``, or ``zero-if-absent`` — the default for a
        per-customer proportion, where a customer absent from the table counts as 0 and a NULL value
        inside it is excluded (DESIGN.md, "Conventions"). Event count/sum/any metrics default to ``zero``
        (no event is a zero), every other metric to ``exclude``."""
        if self.missing is not None:
            return self.missing
        if self.event is not None:
            return "zero" if self.aggregate in ("count", "sum", "any") else "exclude"
        return "zero-if-absent" if self.type == "proportion" else "exclude"

    @property
    def is_event(self) -> bool:
        return self.event is not None


class Guardrail(Strict):
    metric: str
    direction: Literal["increase", "decrease"]  # the harmful direction
    max_harm: Amount


class AnalysisOptions(Strict):
    alpha: float | None = Field(None, gt=0, le=0.5)
    power: float | None = Field(None, gt=0, lt=1)
    engine: Literal["frequentist", "bayesian"] | None = None
    sequential: bool | None = None
    correction: Literal["holm", "bh", "none"] | None = None


class Budget(Strict):
    cost: float = Field(ge=0, allow_inf_nan=False)
    value_per_unit: float = Field(allow_inf_nan=False)


class PilotSpec(Strict):
    id: str
    title: str = Field(min_length=1)
    function: str
    channel: str
    stage: str
    owner: str
    hypothesis: Hypothesis
    cohort: Cohort
    metrics: list[Metric] = Field(min_length=1)
    guardrails: list[Guardrail] = Field(default_factory=list)
    analysis: AnalysisOptions = Field(default_factory=AnalysisOptions)
    budget: Budget | None = None
    notebook: str | None = None


@dataclass(frozen=True)
class Settings:
    """Analysis settings after lab defaults are applied."""

    alpha: float
    power: float
    engine: str
    sequential: bool
    correction: str
    prior_mean: float
    prior_sd: float
    bootstrap_samples: int


@dataclass(frozen=True)
class Pilot:
    """A validated pilot, bound to its lab."""

    spec: PilotSpec
    lab: Lab = field(repr=False)
    path: Path
    settings: Settings
    doc: YamlDoc = field(repr=False)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def salt(self) -> str:
        return self.spec.cohort.salt or self.spec.id

    @property
    def primary(self) -> Metric:
        return self.metric(self.spec.hypothesis.metric)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.spec.metrics if m.name == name)

    @property
    def arms(self) -> dict[str, float]:
        """The arms (in the order written) with their weights normalised to sum to 1 (``arm_weights``): what
        the SRM check, planning and the analysis use, so ``{a: 1, b: 1, c: 1}`` means thirds everywhere (the
        draw uses the exact ``arm_weights``)."""
        return {arm: float(w) for arm, w in arm_weights(self.spec.cohort.arms).items()}

    @property
    def control(self) -> str:
        return self.spec.cohort.control

    @property
    def treatments(self) -> list[str]:
        return [a for a in self.spec.cohort.arms if a != self.spec.cohort.control]

    @property
    def results_dir(self) -> Path:
        return self.lab.results_dir / self.spec.id

    @property
    def cap(self) -> int | None:
        """``cohort.max_size``; an imported assignment without one is capped at the customers it holds
        (read from the written ``assignment.json``; None before `labkit assign`)."""
        c = self.spec.cohort
        if c.max_size is not None or c.assignment is None:
            return c.max_size
        value = self._assigned_meta().get("max_size")
        return int(value) if isinstance(value, int) else None

    @property
    def start(self) -> dt.date | None:
        """``cohort.start``; an imported assignment without one starts on its earliest ``assigned_at``
        (UTC date, from the written ``assignment.json``; None before `labkit assign`)."""
        c = self.spec.cohort
        if c.start is not None or c.assignment is None:
            return c.start
        value = self._assigned_meta().get("start")
        try:
            return dt.date.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    def _assigned_meta(self) -> dict:
        """The written assignment's metadata when it belongs to this cohort, else {} (never raises)."""
        try:
            meta = json.loads((self.results_dir / "assignment.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) and meta.get("cohort_sha256") == self.cohort_sha256 else {}

    @property
    def notebook_path(self) -> Path:
        return resolve_inside(self.lab, self.spec.notebook or self.lab.spec.notebook, what="notebook")

    @property
    def spec_sha256(self) -> str:
        """Hash of the whole spec's meaning: comments and formatting do not change it."""
        return _sha(_hashed(self.spec.model_dump(mode="json")))

    @property
    def prereg_sha256(self) -> str:
        """Hash of what pre-registration fixes: the hypothesis, the metrics and the cohort."""
        s = _hashed(self.spec.model_dump(mode="json"))
        s["hypothesis"].pop("baseline", None)  # a planning assumption: the analysis never reads it
        return _sha({k: s[k] for k in ("hypothesis", "metrics", "guardrails", "cohort")})

    @property
    def cohort_sha256(self) -> str:
        """Hash of the cohort definition; an assignment drawn under another hash is stale."""
        return _sha(_hashed({"cohort": self.spec.cohort.model_dump(mode="json")})["cohort"])


#: Weights whose sum is this close to 1 are fractions (normalised, so 0.333 x 3 is thirds); further from 1,
#: they are ratios when some weight is at least 1 ({a: 1, b: 2}), and refused when all are below 1 (0.5 and
#: 0.4 are fractions that do not add up: normalising them silently would change what was written).
WEIGHT_TOLERANCE = 1e-3


def arm_weights(arms: dict[str, float]) -> dict[str, Fraction]:
    """The weights normalised to sum to exactly 1: w_a = v_a / sum(v), in exact rational arithmetic over the
    exact values of the numbers written (``Fraction(v)``), so every engine and re-implementation gets the
    same allocation. Fractions summing to 1 within ``WEIGHT_TOLERANCE`` and ratios are both normalised this
    way (validation refuses the ambiguous rest)."""
    exact = {arm: Fraction(v) for arm, v in arms.items()}
    total = sum(exact.values())
    if total <= 0 or any(v <= 0 for v in exact.values()):
        raise ValueError(f"weights must be positive, got {dict(arms)}")
    return {arm: v / total for arm, v in exact.items()}


#: Fields added to the pilot file after pilots were pre-registered and assigned, left out of the hashes while
#: unset: a labkit upgrade must not make every existing pilot look changed (pre-registration, `assign`).
_LATER_FIELDS = {
    "metric": {"missing": None},
    "assignment": {"arms": None, "strata": []},
    "hypothesis": {"baseline": None},
}


def _hashed(dump: dict) -> dict:
    """A spec dump (``model_dump(mode="json")``) without the `_LATER_FIELDS` that hold their default."""

    def drop(part, fields: dict):
        if isinstance(part, dict):
            for key, default in fields.items():
                if key in part and part[key] == default:
                    del part[key]

    for metric in dump.get("metrics") or []:
        drop(metric, _LATER_FIELDS["metric"])
    drop((dump.get("cohort") or {}).get("assignment"), _LATER_FIELDS["assignment"])
    drop(dump.get("hypothesis"), _LATER_FIELDS["hypothesis"])
    return dump


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _close(name: str, allowed) -> str:
    import difflib

    guess = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f"did you mean '{guess[0]}'? " if guess else ""


def check_pilot(spec: PilotSpec, doc: YamlDoc, lab: Lab, stem: str | None) -> list[SpecError]:
    """Every semantic problem of a pilot that its shape alone does not reveal."""
    errors: list[SpecError] = []

    def err(loc: tuple, message: str) -> None:
        errors.append(SpecError(doc.path, doc.line_of(loc), ".".join(map(str, loc)), message))

    def registry(loc: tuple, value: str, allowed: list[str], what: str) -> None:
        if value not in allowed:
            err(loc, f"unknown {what} '{value}'; {_close(value, allowed)}allowed: {', '.join(allowed)}")

    def source(loc: tuple, name: str | None) -> bool:
        if name is None:
            return False
        if name not in lab.spec.sources:
            allowed = list(lab.spec.sources)
            err(
                loc,
                f"unknown source '{name}'; {_close(name, allowed)}allowed: {', '.join(allowed) or 'none'}",
            )
            return False
        return True

    def column(loc: tuple, name: str | None) -> None:
        if name is not None and not COLUMN.match(name):
            err(
                loc, f"'{name}' is not a plain column name (letters, digits and _, not starting with a digit)"
            )

    def identity():
        from labkit._validation import RESERVED_IDS

        if not SLUG.match(spec.id):
            err(("id",), f"'{spec.id}' is not a slug; use lowercase letters, digits and single dashes")
        elif spec.id in RESERVED_IDS:
            err(("id",), f"'{spec.id}' is reserved: {RESERVED_IDS[spec.id]}; choose another id")
        elif stem is not None and spec.id != stem:
            err(("id",), f"'{spec.id}' must equal the file name '{stem}'")

    def texts():
        for loc in (("title",), ("owner",), ("hypothesis", "statement")):
            value = spec
            for part in loc:
                value = getattr(value, part)
            reason = bad_text(value)
            if reason:
                err(loc, reason)

    def registries():
        registry(("function",), spec.function, lab.spec.functions, "function")
        registry(("channel",), spec.channel, lab.spec.channels, "channel")
        registry(("stage",), spec.stage, lab.spec.stages, "stage")

    names = []

    def metrics():
        names.extend(m.name for m in spec.metrics)
        seen: dict[str, int] = {}
        for i, m in enumerate(spec.metrics):
            loc = ("metrics", i)
            if not NAME.match(m.name):
                err(
                    (*loc, "name"),
                    f"'{m.name}' must be lowercase letters, digits and _ (starting with a letter)",
                )
            if m.name in seen:
                err((*loc, "name"), f"duplicate metric name '{m.name}' (first is metrics.{seen[m.name]})")
            seen.setdefault(m.name, i)
            _guarded(lambda m=m, loc=loc: errors.extend(_check_metric(m, loc, doc, lab, source, column)))

    def mde():
        mde = spec.hypothesis.mde
        if (mde.relative is None) == (mde.absolute is None):
            err(("hypothesis", "mde"), "give the MDE one way: {relative: x} or {absolute: x}")

    def assumed_baseline():
        b = spec.hypothesis.baseline
        if b is None or spec.hypothesis.metric not in names:
            return
        kind = next(m.type for m in spec.metrics if m.name == spec.hypothesis.metric)
        loc = ("hypothesis", "baseline")
        given = ", ".join(k for k in ("rate", "mean", "sd") if getattr(b, k) is not None) or "nothing"
        if kind == "proportion" and given != "rate":
            err(loc, f"the primary metric is a proportion: give {{rate: p}} with p in (0, 1), not {given}")
        elif kind == "mean" and given != "mean, sd":
            err(loc, f"the primary metric is a mean: give {{mean: m, sd: s}} (both), not {given}")
        elif kind in ("ratio", "quantile"):
            err(
                loc,
                f"an assumed baseline is not available for a {kind} metric; plan from data "
                "(allowed: {rate: p} for a proportion, {mean: m, sd: s} for a mean)",
            )

    def references():
        if spec.hypothesis.metric not in names:
            err(
                ("hypothesis", "metric"),
                f"unknown metric '{spec.hypothesis.metric}'; {_close(spec.hypothesis.metric, names)}"
                f"defined: {', '.join(names)}",
            )

    def guardrails():
        for i, g in enumerate(spec.guardrails):
            if g.metric not in names:
                err(
                    ("guardrails", i, "metric"),
                    f"unknown metric '{g.metric}'; {_close(g.metric, names)}defined: {', '.join(names)}",
                )
            if (g.max_harm.relative is None) == (g.max_harm.absolute is None):
                err(("guardrails", i, "max_harm"), "give max_harm one way: {relative: x} or {absolute: x}")

    c = spec.cohort

    def cohort_refs():
        source(("cohort", "source"), c.source)
        column(("cohort", "id_column"), c.id_column)
        for i, name in enumerate(c.stratify_by):
            column(("cohort", "stratify_by", i), name)
        if c.salt is not None and (not c.salt or bad_text(c.salt) or "\n" in c.salt):
            err(("cohort", "salt"), "the salt must be non-empty plain text on one line")

    def arms():
        if len(c.arms) < 2:
            err(("cohort", "arms"), "a pilot needs at least two arms (a control and a treatment)")
        for arm, weight in c.arms.items():
            if not NAME.match(arm):
                err(("cohort", "arms", arm), _arm_name_problem(arm))
            if weight <= 0:
                err(("cohort", "arms", arm), f"weight {weight} must be > 0")
        total = sum(c.arms.values())
        # (1e-12: 0.333 * 3 is 0.999 in decimal but not quite in binary)
        if c.arms and abs(total - 1) > WEIGHT_TOLERANCE + 1e-12 and max(c.arms.values()) < 1:
            err(
                ("cohort", "arms"),
                f"weights sum to {total:g}; fractions must sum to 1 (within {WEIGHT_TOLERANCE:g}), or give "
                "ratios with a weight of at least 1, e.g. {control: 1, a: 1, b: 1}, which are normalised",
            )

    def control():
        if c.control not in c.arms:
            err(
                ("cohort", "control"),
                f"'{c.control}' is not an arm; {_close(c.control, c.arms)}arms: {', '.join(c.arms)}",
            )

    def where():
        for i, f in enumerate(c.where):
            _guarded(lambda f=f, i=i: errors.extend(_check_filter(f, ("cohort", "where", i), doc, column)))

    def drawn_needs():
        if c.assignment is not None:
            return
        for key, what in (("max_size", "the exposure cap"), ("start", "the assignment date, YYYY-MM-DD")):
            if getattr(c, key) is None:
                err(
                    ("cohort", key),
                    f"required field is missing ({what}; optional only with cohort.assignment)",
                )

    def imported():
        if c.assignment is None:
            return
        a = c.assignment
        loc = ("cohort", "assignment")
        source((*loc, "source"), a.source)
        column((*loc, "arm_column"), a.arm_column)
        column((*loc, "id_column"), a.id_column)
        column((*loc, "assigned_at_column"), a.assigned_at_column)
        for i, name in enumerate(a.strata):
            column((*loc, "strata", i), name)
        if c.stratify_by:
            err(
                ("cohort", "stratify_by"),
                "an imported assignment was randomised by its tool; name its blocks in "
                "cohort.assignment.strata instead of stratify_by",
            )
        if c.salt is not None:
            err(
                ("cohort", "salt"),
                "an imported assignment is not drawn by labkit, so a salt has no effect; remove it",
            )
        if c.start is None and a.assigned_at_column is None:
            err(
                ("cohort", "start"),
                "required field is missing: without assignment.assigned_at_column the start cannot come "
                "from the imported assignment; give cohort.start (YYYY-MM-DD) or an assigned_at_column",
            )
        if a.arms is not None:
            _imported_map(a.arms, loc)
        if a.strata:
            _imported_strata(loc)

    def _imported_map(mapping: dict[str, str], loc: tuple):
        if not mapping:
            err((*loc, "arms"), "the value map is empty; map each arm column value to an arm")
        for key, arm in mapping.items():
            if not key.strip() or "\x00" in key:
                err((*loc, "arms", key), "a map key must be a value of the arm column, as text")
            elif arm not in c.arms:
                err(
                    (*loc, "arms", key),
                    f"'{arm}' is not an arm; {_close(arm, c.arms)}arms: {', '.join(c.arms)}",
                )
        unmapped = [arm for arm in c.arms if arm not in mapping.values()]
        if mapping and unmapped and all(arm in c.arms for arm in mapping.values()):
            err((*loc, "arms"), f"no column value maps to arm(s) {', '.join(unmapped)}; every arm needs one")

    def _imported_strata(loc: tuple):
        # the post-stratified estimator covers differences in means and proportions; refuse what it does not
        for i, m in enumerate(spec.metrics):
            if m.type in ("ratio", "quantile"):
                err(
                    ("metrics", i, "type"),
                    f"a {m.type} metric cannot be post-stratified (cohort.assignment.strata); "
                    "use a proportion or mean metric",
                )
            elif m.cuped or m.covariate:
                err(
                    ("metrics", i, "cuped" if m.cuped else "covariate"),
                    "variance reduction is not combined with post-stratification (cohort.assignment.strata); "
                    "remove it, or the strata",
                )

    def notebook():
        if spec.notebook is None:
            return
        loc = ("notebook",)
        if not spec.notebook.endswith(".ipynb"):
            err(loc, f"'{spec.notebook}' is not a notebook; give a .ipynb path inside the lab")
            return
        try:
            nb = resolve_inside(lab, spec.notebook, what="notebook")
        except LabkitError:
            err(loc, f"'{spec.notebook}' lies outside the lab; notebooks must be inside {lab.root}")
        else:
            if not nb.is_file():
                err(loc, f"'{spec.notebook}' does not exist")

    for check in (
        identity,
        texts,
        registries,
        metrics,
        mde,
        references,
        assumed_baseline,
        guardrails,
        cohort_refs,
        arms,
        control,
        where,
        drawn_needs,
        imported,
        notebook,
    ):
        _guarded(check)
    return errors


def _arm_name_problem(arm: str) -> str:
    """An arm name starts with a lowercase letter; a tool's 0/1 or 'Control' values are mapped to names."""
    import re

    if re.fullmatch(r"[A-Za-z0-9_.]{1,40}", arm):  # a tool's value (0, 1.0, Control): say how to map it
        return (
            f"arm name '{arm}' must start with a lowercase letter (then lowercase letters, digits and _); "
            "map an imported arm column's values to arm names with cohort.assignment.arms, e.g. "
            "{'0': control, '1': treatment}"
        )
    return f"arm name '{arm}' must be lowercase letters, digits and _"


def _guarded(check) -> None:
    """Run one semantic check; a value of the wrong shape was already reported by the shape pass."""
    try:
        check()
    except (TypeError, AttributeError, ValueError, KeyError):
        pass


def _check_metric(m: Metric, loc: tuple, doc: YamlDoc, lab: Lab, source, column) -> list[SpecError]:
    errors: list[SpecError] = []

    def err(sub: tuple, message: str) -> None:
        full = (*loc, *sub)
        errors.append(SpecError(doc.path, doc.line_of(full), ".".join(map(str, full)), message))

    column((*loc, "column"), m.column)
    column((*loc, "covariate"), m.covariate)
    if m.type == "ratio":
        if m.numerator is None or m.denominator is None:
            err(
                ("denominator" if m.numerator else "numerator",),
                "a ratio metric needs numerator and denominator",
            )
        for key in ("source", "column", "event", "aggregate"):
            if getattr(m, key) is not None:
                err((key,), f"a ratio metric takes numerator and denominator, not '{key}'")
        for key in ("numerator", "denominator"):
            ref = getattr(m, key)
            if ref is not None:
                source((*loc, key, "source"), ref.source)
                column((*loc, key, "column"), ref.column)
        if m.cuped or m.covariate:
            err(("cuped",), "variance reduction is not available for ratio metrics")
        return errors
    for key in ("numerator", "denominator"):
        if getattr(m, key) is not None:
            err((key,), f"only ratio metrics take '{key}'")
    if m.source is None:
        err(("source",), "required field is missing")
        return errors
    is_source = source((*loc, "source"), m.source)
    if m.type == "quantile" and m.quantile is None:
        err(("quantile",), "a quantile metric needs 'quantile' in (0, 1), e.g. 0.5 for the median")
    if m.type != "quantile" and m.quantile is not None:
        err(("quantile",), "only quantile metrics take 'quantile'")
    if m.event is not None:
        column((*loc, "event", "column"), m.event.column)
        if is_source and lab.spec.sources[m.source].timestamp is None:
            err(
                ("source",),
                f"source '{m.source}' is not an event table (it has no 'timestamp' in the lab file)",
            )
        if m.aggregate is None:
            err(("aggregate",), f"an event metric needs 'aggregate'; allowed: {', '.join(AGGREGATES)}")
        if m.window_days is None:
            err(("window_days",), "an event metric needs 'window_days', the window length in days")
        if m.aggregate in ("sum", "mean", "max") and m.column is None:
            err(("column",), f"aggregate '{m.aggregate}' needs 'column', the event value to {m.aggregate}")
        if m.aggregate in ("count", "any") and m.column is not None:
            err(("column",), f"aggregate '{m.aggregate}' counts events; remove 'column'")
        if m.type == "proportion" and m.aggregate not in (None, "any"):
            err(
                ("aggregate",),
                "a proportion over events needs aggregate 'any' (did the customer do it at all)",
            )
        if m.type == "mean" and m.aggregate == "any":
            err(("type",), "aggregate 'any' gives a yes/no per customer; use type 'proportion'")
        if m.covariate is not None:
            err(("covariate",), "an event metric's covariate is its own pre-period: use 'cuped: true'")
    else:
        for key in ("aggregate", "window_days"):
            if getattr(m, key) is not None:
                err((key,), f"'{key}' applies to event metrics only (with 'event')")
        if m.column is None:
            err(("column",), "required field is missing (the per-customer column)")
        if m.cuped:
            err(
                ("cuped",),
                "'cuped: true' needs an event metric; a per-customer metric names 'covariate: COLUMN'",
            )
    if m.type == "quantile" and (m.cuped or m.covariate):
        err(("cuped",), "variance reduction is not available for quantile metrics")
    if m.event is not None and m.aggregate in ("count", "sum", "any") and m.missing == "exclude":
        err(
            ("missing",),
            f"aggregate '{m.aggregate}' over events: a customer without events has 0, not a missing value; "
            "allowed: zero (the default)",
        )
    return errors


def _check_filter(f: Filter, loc: tuple, doc: YamlDoc, column) -> list[SpecError]:
    errors: list[SpecError] = []

    def err(sub: tuple, message: str) -> None:
        full = (*loc, *sub)
        errors.append(SpecError(doc.path, doc.line_of(full), ".".join(map(str, full)), message))

    column((*loc, "column"), f.column)
    if f.op in ("is_null", "not_null"):
        if f.value is not None:
            err(("value",), f"'{f.op}' takes no value")
    elif f.op in ("in", "not_in"):
        if not isinstance(f.value, list) or not f.value:
            err(("value",), f"'{f.op}' needs a non-empty list of values")
    elif f.value is None or isinstance(f.value, list):
        err(("value",), f"'{f.op}' needs one value (text, number or true/false)")
    values = f.value if isinstance(f.value, list) else [f.value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            err(("value",), "values must be finite numbers")
        if isinstance(v, str) and "\x00" in v:
            err(("value",), "values must not contain NUL characters")
    return errors


def parse_pilot(path: Path, lab: Lab, display: str | None = None) -> tuple[Pilot | None, list[SpecError]]:
    """Load and validate one pilot file; every problem is returned, none raised."""
    try:
        doc = load_yaml(path, display=display or str(path))
    except SpecErrors as exc:
        partial = getattr(exc, "partial", None)
        if partial is None:  # a syntax error, an anchor, a second document: nothing more can be read
            return None, one_line_errors(list(exc.errors))
        # YAML-typing problems (`title: no`) are reported together with every other problem of the file:
        # the rest is judged on the document as YAML 1.2 reads it, minus what those problems already flag
        typing_problems = list(exc.errors)
        rest = [e for e in _problems(partial, lab, path)[1] if not _same_spot(e, typing_problems)]
        return None, one_line_errors(merge_problems(typing_problems, rest))
    spec, errors = _problems(doc, lab, path)
    if errors:
        return None, one_line_errors(errors)
    d, a = lab.spec.defaults, spec.analysis
    settings = Settings(
        alpha=a.alpha if a.alpha is not None else d.alpha,
        power=a.power if a.power is not None else d.power,
        engine=a.engine or d.engine,
        sequential=a.sequential if a.sequential is not None else d.sequential,
        correction=a.correction or d.correction,
        prior_mean=d.prior_mean,
        prior_sd=d.prior_sd,
        bootstrap_samples=d.bootstrap_samples,
    )
    return Pilot(spec=spec, lab=lab, path=Path(path).resolve(), settings=settings, doc=doc), []


def _same_spot(error: SpecError, typing_problems: list[SpecError]) -> bool:
    """Whether a YAML-typing problem already names this spot: a key YAML 1.1 reads as something else
    (``on: true``) is flagged on its mapping's field, so the shape pass's "unknown field 'on'" on the same
    line says nothing more."""
    return any(
        error.line == y.line
        and (not y.field or error.field == y.field or error.field.startswith(y.field + "."))
        for y in typing_problems
    )


def _problems(doc: YamlDoc, lab: Lab, path) -> tuple[PilotSpec | None, list[SpecError]]:
    """The validated spec (None when it has problems) and every shape and meaning problem (none raised)."""
    spec, errors = validate_model(PilotSpec, doc)
    errors += _dates_misplaced(doc, {("cohort", "start")})
    if isinstance(doc.data, dict):
        view = spec if spec is not None else loose(PilotSpec, doc.data)
        errors = merge_problems(errors, check_pilot(view, doc, lab, Path(path).stem))
    return spec, errors


def find_pilot_file(ref: str | os.PathLike, lab: Lab) -> Path:
    """``PILOT`` on the command line: a path to a pilot file, or a pilot id of the lab."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise LabkitError(f"{ref}: no such pilot file")
        return p
    if not SLUG.match(str(ref)):
        raise LabkitError(f"'{ref}' is neither a pilot file nor a pilot id")
    candidate = lab.experiments_dir / f"{ref}.yaml"
    if not candidate.is_file():
        known = sorted(q.stem for q in lab.experiments_dir.glob("*.yaml"))
        raise LabkitError(
            f"no pilot '{ref}' in {lab.display(lab.experiments_dir)}; {_close(str(ref), known)}"
            f"pilots: {', '.join(known) or 'none'}"
        )
    return candidate


def load_pilot(path: str | os.PathLike, lab: Lab | None = None) -> Pilot:
    """Load a pilot by path or id; raises SpecErrors listing every problem of the file."""
    lab = lab or load_lab()
    file = find_pilot_file(path, lab)
    pilot, errors = parse_pilot(file, lab, display=_display(file))
    if errors:
        raise SpecErrors(errors)
    return pilot


def list_pilots(lab: Lab) -> list[Path]:
    return sorted(lab.experiments_dir.glob("*.yaml"))


def _display(file: Path) -> str:
    try:
        return str(Path(file).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(file)
