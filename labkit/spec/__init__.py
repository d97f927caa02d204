"""experiments/<id>.yaml: one pilot — its hypothesis, cohort, metrics, guardrails, analysis and budget.

``load_pilot`` reads a pilot through the strict YAML loader, validates its shape with pydantic
(``labkit.spec.models``) and its meaning against the lab (``labkit.spec.rules``), and returns a frozen
``Pilot`` (``labkit.spec.pilot``) whose ``settings`` already hold the lab defaults. Every problem of a
file is reported in one pass.
"""

from __future__ import annotations

from labkit.spec.models import (
    AGGREGATES,
    METRIC_TYPES,
    OPERATORS,
    WEIGHT_TOLERANCE,
    Amount,
    AnalysisOptions,
    Baseline,
    Budget,
    Cohort,
    ColumnRef,
    EventMatch,
    Filter,
    Guardrail,
    Hypothesis,
    ImportedAssignment,
    Metric,
    PilotSpec,
    Scalar,
    arm_weights,
)
from labkit.spec.pilot import (
    Pilot,
    Settings,
    cohort_dump,
    find_pilot_file,
    list_pilots,
    load_pilot,
    parse_pilot,
)
from labkit.spec.rules import check_pilot

__all__ = [
    "AGGREGATES",
    "METRIC_TYPES",
    "OPERATORS",
    "WEIGHT_TOLERANCE",
    "Amount",
    "AnalysisOptions",
    "Baseline",
    "Budget",
    "Cohort",
    "ColumnRef",
    "EventMatch",
    "Filter",
    "Guardrail",
    "Hypothesis",
    "ImportedAssignment",
    "Metric",
    "Pilot",
    "PilotSpec",
    "Scalar",
    "Settings",
    "arm_weights",
    "check_pilot",
    "cohort_dump",
    "find_pilot_file",
    "list_pilots",
    "load_pilot",
    "parse_pilot",
]
