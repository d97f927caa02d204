"""The rules of a pilot's design beyond one arm per customer: cluster randomisation (``cohort.unit_column``,
``max_clusters``, ``saturation``; drawn by ``labkit.assignment.clusters``) and pre-registered segments
(``analysis.segments``). Called by ``labkit.spec.rules.check_pilot``; each problem is one ``SpecError`` at
the line of its field.

A saturation design (Baird, Bohren, McIntosh & Özler 2018) needs pure-control clusters to measure the
spillover against, so 0 must be among its shares; its one treatment arm is the pilot's non-control arm,
and the arms' weights have no effect there (the shares decide), so they must be equal. Quantile metrics
get a cluster bootstrap (``labkit.stats.cluster_bootstrap``) in a cluster pilot, but not in a saturation
design, whose cells are compared on cluster totals, nor as the primary metric of a cluster pilot with
``analysis.segments`` (each segment's estimate is on cluster totals, ``labkit.segments``).
"""

from __future__ import annotations

from collections.abc import Callable

from labkit.errors import SpecError
from labkit.spec.models import Cohort, PilotSpec
from labkit.yamlfile import YamlDoc

Column = Callable[[tuple, "str | None"], None]


def _located(doc: YamlDoc):
    """``err(loc, message)`` appending a ``SpecError`` at the line of ``loc`` to the list it returns."""
    errors: list[SpecError] = []

    def err(loc: tuple, message: str) -> None:
        errors.append(SpecError(doc.path, doc.line_of(loc), ".".join(map(str, loc)), message))

    return errors, err


def check_clusters(spec: PilotSpec, doc: YamlDoc, column: Column) -> list[SpecError]:
    """``cohort.unit_column``, ``max_clusters`` and ``saturation`` (``labkit.assignment.clusters``): each
    field's effect needs the others it builds on, and a saturation design has one treatment arm."""
    errors, err = _located(doc)
    c = spec.cohort
    here = ("cohort",)
    if c.unit_column is not None:
        column((*here, "unit_column"), c.unit_column)
        if c.unit_column == c.id_column:
            err(
                (*here, "unit_column"),
                f"'{c.unit_column}' is the id column: each customer would be its own cluster; name the "
                "cluster column (an account, community or region), or remove unit_column",
            )
    for key, what in (("max_clusters", "caps clusters"), ("saturation", "draws clusters' treated shares")):
        if getattr(c, key) is not None and c.unit_column is None:
            err(
                (*here, key),
                f"{key} {what}; give cohort.unit_column, the column naming each customer's cluster",
            )
        elif getattr(c, key) is not None and c.assignment is not None:
            err(
                (*here, key),
                f"an imported assignment was drawn by its tool, so {key} has no effect; remove it",
            )
    if c.saturation is not None:
        errors.extend(_check_saturation(c, doc))
    if c.unit_column is not None and c.saturation is not None:
        for i, m in enumerate(spec.metrics):
            if m.type == "quantile":  # a cluster bootstrap compares arms, not a saturation's cells
                err(
                    ("metrics", i, "type"),
                    "a saturation design estimates its direct and spillover effects on cluster totals, which "
                    "a quantile has none of; use a proportion, mean or ratio, or remove cohort.saturation",
                )
    return errors


def _check_saturation(c: Cohort, doc: YamlDoc) -> list[SpecError]:
    """Shares sorted and distinct, at least two, 0 among them; two arms of equal weight."""
    errors, err = _located(doc)
    loc = ("cohort", "saturation")
    shares = list(c.saturation)
    if len(shares) < 2:
        err(loc, f"give at least two treated shares, e.g. [0, 0.5, 1]; got {len(shares)}")
    elif shares != sorted(set(shares)):
        shown = ", ".join(f"{v:g}" for v in sorted(set(shares)))
        err(loc, f"treated shares must be sorted and distinct; write [{shown}]")
    elif shares[0] != 0:
        err(
            loc,
            "include 0: the spillover is measured against pure-control clusters; e.g. "
            f"[0, {', '.join(f'{v:g}' for v in shares)}]",
        )
    if len(c.arms) != 2:
        err(
            ("cohort", "arms"),
            f"a saturation pilot has exactly two arms, a control and the treatment; got {len(c.arms)}: "
            f"{', '.join(c.arms)}",
        )
    elif len(set(c.arms.values())) != 1:
        err(
            ("cohort", "arms"),
            "with cohort.saturation each cluster's treated share comes from the saturation, not from the "
            "weights; give the two arms equal weights, e.g. {control: 1, treatment: 1}",
        )
    return errors


def check_segments(spec: PilotSpec, doc: YamlDoc, column: Column) -> list[SpecError]:
    """``analysis.segments``: distinct plain column names of the cohort source, not the id column."""
    errors, err = _located(doc)
    segments = spec.analysis.segments
    if segments is None:
        return errors
    loc = ("analysis", "segments")
    if not segments:
        err(loc, "the list is empty; name at least one cohort-source column (e.g. [segment]), or remove it")
    primary = next((m for m in spec.metrics if m.name == spec.hypothesis.metric), None)
    if spec.cohort.unit_column is not None and primary is not None and primary.type == "quantile":
        err(  # labkit.segments estimates a cluster pilot's segments on cluster totals
            loc,
            f"the primary metric '{primary.name}' is a quantile: a cluster pilot's segments are estimated on "
            "cluster totals, which a quantile has none of; remove analysis.segments, or make the primary a "
            "proportion, mean or ratio",
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(segments):
        column((*loc, i), name)
        if name in seen:
            err(
                (*loc, i), f"'{name}' is listed twice (first at analysis.segments.{seen[name]}); list it once"
            )
        elif name == spec.cohort.id_column:
            err((*loc, i), f"'{name}' is the id column: every segment would hold one customer")
        seen.setdefault(name, i)
    return errors
