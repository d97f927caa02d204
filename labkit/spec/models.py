"""The pilot file's shape: pydantic models (``extra="forbid"``, strict types) of experiments/<id>.yaml.

These say what may be written where; what needs the whole document or the lab (registries, references,
weights that add up) is ``labkit.spec.rules``. ``arm_weights`` is the one reading of the arms' weights.
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import Field, field_validator

from labkit._validation import Strict

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
    proportion, ``{mean: m, sd: s}`` for a mean, or ``{pilot: id}``: a past pilot's recorded control arm.
    Measured data, when there is some, takes precedence."""

    rate: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    mean: float | None = Field(None, allow_inf_nan=False)
    sd: float | None = Field(None, gt=0, allow_inf_nan=False)
    # a cluster pilot's assumed intra-cluster correlation (labkit.planning), where its data give none
    icc: float | None = Field(None, ge=0, lt=1, allow_inf_nan=False)
    # a past pilot of this lab whose latest recorded run measured the same metric: its control arm's mean
    # and per-customer SD stand in (labkit.planning.assumed_baseline)
    pilot: str | None = Field(None, min_length=1)


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
    # Cluster randomisation (``labkit.assignment.clusters``): the column naming each customer's cluster
    # (account, community, region); clusters are drawn and every customer inherits its cluster's arm.
    unit_column: str | None = None
    max_clusters: int | None = Field(None, gt=0)  # a cap in clusters, besides max_size in customers
    # randomised saturation: the treated shares clusters draw (0: pure control clusters), sorted, distinct
    saturation: list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] | None = None


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
    # cohort-source columns whose per-segment effects are reported; part of the pre-registered hash
    segments: list[str] | None = None


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
