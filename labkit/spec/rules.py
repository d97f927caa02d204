"""A pilot's meaning, beyond its shape: registries, sources, references, arms and the rules between fields.

``check_pilot`` runs every check over a validated spec, or over a loose one when the shape pass failed
elsewhere in the file (each check guarded), so that every problem of a file shows in one pass, each a
``SpecError`` at the line of the field it is about.
"""

from __future__ import annotations

import math

from labkit._validation import COLUMN, NAME, RESERVED_IDS, SLUG, bad_text
from labkit.errors import SpecError
from labkit.lab import Lab, resolve_inside
from labkit.spec.design import check_clusters, check_segments
from labkit.spec.models import AGGREGATES, WEIGHT_TOLERANCE, Filter, Metric, PilotSpec
from labkit.yamlfile import YamlDoc


def closest(name: str, allowed) -> str:
    """``"did you mean 'x'? "`` for the closest allowed name (difflib, cutoff 0.6), else ``""``."""
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
            err(loc, f"unknown {what} '{value}'; {closest(value, allowed)}allowed: {', '.join(allowed)}")

    def source(loc: tuple, name: str | None) -> bool:
        if name is None:
            return False
        if name not in lab.spec.sources:
            allowed = list(lab.spec.sources)
            err(
                loc,
                f"unknown source '{name}'; {closest(name, allowed)}allowed: {', '.join(allowed) or 'none'}",
            )
            return False
        return True

    def column(loc: tuple, name: str | None) -> None:
        if name is not None and not COLUMN.match(name):
            err(
                loc, f"'{name}' is not a plain column name (letters, digits and _, not starting with a digit)"
            )

    def identity():
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
        given = (
            ", ".join(k for k in ("rate", "mean", "sd", "pilot") if getattr(b, k) is not None) or "nothing"
        )
        if b.pilot is not None:
            if given != "pilot":
                err(loc, f"give a past pilot alone ({{pilot: id}}), or the numbers, not {given}")
            elif b.pilot == spec.id:
                err((*loc, "pilot"), "a pilot cannot be its own baseline; name a past pilot of this lab")
            return
        if b.icc is not None and spec.cohort.unit_column is None:
            err(
                (*loc, "icc"),
                "an ICC is assumed for cluster pilots only; give cohort.unit_column, or remove icc",
            )
        if given == "nothing" and b.icc is not None:
            return  # only the ICC is assumed: the rest of the baseline comes from the data
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
                f"unknown metric '{spec.hypothesis.metric}'; {closest(spec.hypothesis.metric, names)}"
                f"defined: {', '.join(names)}",
            )

    def guardrails():
        for i, g in enumerate(spec.guardrails):
            if g.metric not in names:
                err(
                    ("guardrails", i, "metric"),
                    f"unknown metric '{g.metric}'; {closest(g.metric, names)}defined: {', '.join(names)}",
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
                f"'{c.control}' is not an arm; {closest(c.control, c.arms)}arms: {', '.join(c.arms)}",
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
                    f"'{arm}' is not an arm; {closest(arm, c.arms)}arms: {', '.join(c.arms)}",
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

    def clusters():
        errors.extend(check_clusters(spec, doc, column))

    def segments():
        errors.extend(check_segments(spec, doc, column))

    def notebook():
        if spec.notebook is None:
            return
        loc = ("notebook",)
        if not spec.notebook.endswith(".ipynb"):
            err(loc, f"'{spec.notebook}' is not a notebook; give a .ipynb path inside the lab")
            return
        try:
            nb = resolve_inside(lab, spec.notebook, what="notebook")
        except SpecError:
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
        clusters,
        segments,
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
