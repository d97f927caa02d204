"""Sufficient statistics of one arm (`ArmMoments`) and the result of every two-arm comparison (`Estimate`).

The data layer reduces a metric to n, Σy, Σy², Σx, Σx², Σxy per arm where the data lives (one
``GROUP BY arm``); every method in `labkit.stats` starts from those sums, so customer rows never have to
leave the engine. ``y`` is the metric value (or a ratio's numerator), ``x`` the CUPED covariate (or a
ratio's denominator).

Bad input raises `ValueError` (a negative n, a non-finite sum); sums no data set can have (Σy² < (Σy)²/n,
or Σxy² > Σ(x − x̄)²·Σ(y − ȳ)², beyond rounding noise) raise `MomentsError`, a `ValueError` that is also a
`labkit.errors.LabkitError`, so the CLI prints it as one line instead of analysing a clamped zero variance.
Degenerate data (an empty arm, one customer, no variance) is not an error: the methods return an `Estimate` with a stable ``reason`` and
``None`` for what cannot be computed, so no NaN or inf ever reaches the JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from labkit.errors import LabkitError

# Centred sums computed as Σa² − (Σa)²/n lose about log10(mean²/var) digits to cancellation; anything
# smaller than this fraction of Σa² is rounding noise, so it is read as exactly zero variance.
CANCELLATION_TOL = 1e-12
#: A centred sum of squares below −IMPOSSIBLE_TOL·Σa² (or a Cauchy–Schwarz excess beyond IMPOSSIBLE_TOL·Σx²·Σy²)
#: is not rounding: the engine's sums come from different rows or a broken query. Naive summation of n doubles
#: is off by at most about n·2⁻⁵³ relatively, so 1e-8 tolerates ~10⁸ rows of worst-case rounding, while any
#: real inconsistency (a sum of squares over other customers than the sum) is far larger.
IMPOSSIBLE_TOL = 1e-8


class MomentsError(LabkitError, ValueError):
    """Sufficient statistics that no data set can produce (a negative variance beyond rounding noise)."""


#: The reason codes an `Estimate` can carry; `decision.py` maps them to `invalid` or `inconclusive`.
REASONS = (
    "empty_arm",  # an arm has no customers
    "too_few",  # an arm has fewer than 2 customers: no variance estimate
    "zero_variance",  # no sampling variance at all (both arms constant): no interval, no p-value
    "zero_denominator",  # a ratio metric whose denominator sums to 0 in an arm
    "zero_control_mean",  # the control mean is 0: the relative lift is undefined
    "suppressed_small_cell",  # a quantile over fewer customers than the lab's privacy.min_cell_size: withheld
)


def _centred(sum_ab: float, sum_a: float, sum_b: float, n: int) -> float:
    """Σ(a − ā)(b − b̄) from raw sums."""
    return sum_ab - sum_a * sum_b / n


def _centred_sq(sum_sq: float, total: float, n: int) -> float:
    """Σ(a − ā)² from raw sums, read as 0 where cancellation leaves only rounding noise.

    Only noise is ever read as 0: `ArmMoments` refuses sums whose centred value is negative beyond
    ``IMPOSSIBLE_TOL`` (`MomentsError`), so nothing impossible is clamped silently."""
    value = sum_sq - total * total / n
    return 0.0 if value <= CANCELLATION_TOL * sum_sq else value


def _check_possible(arm: ArmMoments) -> None:
    """Raise `MomentsError` for sums no data can have: Σ(y − ȳ)² < 0 or Σ(x − x̄)² < 0 beyond rounding noise,
    or a cross-product past Cauchy–Schwarz, (Σ(x − x̄)(y − ȳ))² > Σ(x − x̄)²·Σ(y − ȳ)² (tolerance relative to the
    raw sums' magnitude, `IMPOSSIBLE_TOL`)."""
    if arm.n == 0:
        if arm.sum or arm.sum_sq or arm.sum_x or arm.sum_x_sq or arm.sum_xy:
            raise MomentsError("inconsistent sufficient statistics: an arm with n = 0 has non-zero sums")
        return
    for label, sq, total in (("y", arm.sum_sq, arm.sum), ("x", arm.sum_x_sq, arm.sum_x)):
        centred = sq - total * total / arm.n
        if centred < -IMPOSSIBLE_TOL * sq:
            raise MomentsError(
                f"inconsistent sufficient statistics: Σ{label}² = {sq:.10g} is below (Σ{label})²/n = "
                f"{total * total / arm.n:.10g} (n = {arm.n}), a negative variance; the sums must come from the "
                "same rows"
            )
    ss_y = max(arm.sum_sq - arm.sum * arm.sum / arm.n, 0.0)
    ss_x = max(arm.sum_x_sq - arm.sum_x * arm.sum_x / arm.n, 0.0)
    sp = arm.sum_xy - arm.sum_x * arm.sum / arm.n
    if sp * sp - ss_x * ss_y > IMPOSSIBLE_TOL * arm.sum_sq * arm.sum_x_sq:
        raise MomentsError(
            "inconsistent sufficient statistics: the cross-product Σxy is past the Cauchy–Schwarz bound "
            f"(|Σ(x − x̄)(y − ȳ)| = {abs(sp):.10g} > √(Σ(x − x̄)²·Σ(y − ȳ)²) = {math.sqrt(ss_x * ss_y):.10g}); "
            "the sums must come from the same rows"
        )


@dataclass(frozen=True)
class ArmMoments:
    """Sufficient statistics of one arm: n, Σy, Σy², and for CUPED or ratios Σx, Σx², Σxy."""

    n: int
    sum: float
    sum_sq: float
    sum_x: float = 0.0
    sum_x_sq: float = 0.0
    sum_xy: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not float(self.n).is_integer():
            raise ValueError(f"ArmMoments.n must be a whole number, got {self.n!r}")
        if self.n < 0:
            raise ValueError(f"ArmMoments.n must be >= 0, got {self.n}")
        # numpy scalars from the engine become plain Python numbers, so to_dict()/JSON stay clean
        object.__setattr__(self, "n", int(self.n))
        for name in ("sum", "sum_sq", "sum_x", "sum_x_sq", "sum_xy"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"ArmMoments.{name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        for name in ("sum_sq", "sum_x_sq"):
            if getattr(self, name) < 0:
                raise ValueError(f"ArmMoments.{name} is a sum of squares and cannot be negative")
        _check_possible(self)

    @classmethod
    def from_values(cls, y, x=None) -> ArmMoments:
        """Moments of raw values (tests, notebooks, exact methods); the engine builds them by GROUP BY."""
        y_arr = np.asarray(y, dtype=float)
        if y_arr.ndim != 1:
            raise ValueError(f"values must be one-dimensional, got shape {y_arr.shape}")
        if not np.all(np.isfinite(y_arr)):
            raise ValueError("values must be finite (no NaN or inf)")
        if x is None:
            return cls(n=y_arr.size, sum=float(y_arr.sum()), sum_sq=float(y_arr @ y_arr))
        x_arr = np.asarray(x, dtype=float)
        if x_arr.shape != y_arr.shape:
            raise ValueError(f"x has shape {x_arr.shape}, y has shape {y_arr.shape}; they must match")
        if not np.all(np.isfinite(x_arr)):
            raise ValueError("covariate values must be finite (no NaN or inf)")
        return cls(
            n=y_arr.size,
            sum=float(y_arr.sum()),
            sum_sq=float(y_arr @ y_arr),
            sum_x=float(x_arr.sum()),
            sum_x_sq=float(x_arr @ x_arr),
            sum_xy=float(x_arr @ y_arr),
        )

    def __add__(self, other: ArmMoments) -> ArmMoments:
        if not isinstance(other, ArmMoments):
            return NotImplemented
        return ArmMoments(
            n=self.n + other.n,
            sum=self.sum + other.sum,
            sum_sq=self.sum_sq + other.sum_sq,
            sum_x=self.sum_x + other.sum_x,
            sum_x_sq=self.sum_x_sq + other.sum_x_sq,
            sum_xy=self.sum_xy + other.sum_xy,
        )

    @property
    def mean(self) -> float | None:
        """ȳ = Σy / n; None for an empty arm."""
        return self.sum / self.n if self.n > 0 else None

    @property
    def mean_x(self) -> float | None:
        """x̄ = Σx / n; None for an empty arm."""
        return self.sum_x / self.n if self.n > 0 else None

    @property
    def ss(self) -> float:
        """Σ(y − ȳ)², 0 for an empty arm."""
        return _centred_sq(self.sum_sq, self.sum, self.n) if self.n > 0 else 0.0

    @property
    def ss_x(self) -> float:
        """Σ(x − x̄)², 0 for an empty arm."""
        return _centred_sq(self.sum_x_sq, self.sum_x, self.n) if self.n > 0 else 0.0

    @property
    def sp_xy(self) -> float:
        """Σ(x − x̄)(y − ȳ), 0 for an empty arm."""
        return _centred(self.sum_xy, self.sum_x, self.sum, self.n) if self.n > 0 else 0.0

    @property
    def var(self) -> float | None:
        """Sample variance of y (ddof=1); None when n < 2."""
        return self.ss / (self.n - 1) if self.n >= 2 else None

    @property
    def var_x(self) -> float | None:
        """Sample variance of x (ddof=1); None when n < 2."""
        return self.ss_x / (self.n - 1) if self.n >= 2 else None

    @property
    def cov_xy(self) -> float | None:
        """Sample covariance of x and y (ddof=1); None when n < 2."""
        return self.sp_xy / (self.n - 1) if self.n >= 2 else None


_FLOAT_FIELDS = (
    "mean_control",
    "mean_treatment",
    "effect",
    "se",
    "ci_low",
    "ci_high",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "p_value",
    "variance_reduction",
    "lift_se",
    "var_mean_control",
    "var_mean_treatment",
)


@dataclass(frozen=True)
class Estimate:
    """Treatment vs control on one metric: effect = treatment − control, lift = effect / |mean_control|.

    The lift divides by the *absolute* control mean (GrowthBook's convention), so its sign is always the
    effect's: a net-revenue metric going from −10 to −5 has effect +5 and lift +50 %.

    Intervals are at level 1 − alpha, and each agrees with the p-value: it excludes 0 exactly when
    p < alpha (the effect interval inverts the same statistic; the lift interval is Fieller's, see
    `labkit.stats.means.lift_interval`). ``lift_ci_low``/``lift_ci_high`` are both None when the lift's
    confidence set is unbounded (the control mean is not significantly different from 0 at this level): a
    finite lift interval would then be a lie, and JSON has no infinity. ``reason`` is None for a complete
    result, else one of `REASONS`, with None in every field that could not be computed. ``lift_se`` is the
    delta-method standard error of the lift (for the Bayesian model and meta-analysis);
    ``var_mean_control``/``var_mean_treatment`` are the variances of the two arm estimates the test used,
    kept so that the sequential widening can rebuild the same Fieller interval at its own critical value.
    """

    method: str
    n_control: int
    n_treatment: int
    mean_control: float | None
    mean_treatment: float | None
    effect: float | None
    se: float | None
    ci_low: float | None
    ci_high: float | None
    lift: float | None
    lift_ci_low: float | None
    lift_ci_high: float | None
    p_value: float | None
    variance_reduction: float | None = None
    reason: str | None = None
    lift_se: float | None = None
    var_mean_control: float | None = None
    var_mean_treatment: float | None = None

    def __post_init__(self) -> None:
        # The contract is "never NaN or inf in any field": enforce it here so a slip in any method
        # fails loudly in the tests instead of leaking into results.json.
        for name in ("n_control", "n_treatment"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"Estimate.{name} is {value}; degenerate data must give None and a reason")
            object.__setattr__(self, name, value)
        if self.reason is not None and self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}; allowed: {', '.join(REASONS)}")

    def to_dict(self) -> dict:
        """Plain dict of the fields (JSON-ready: Python floats, ints, str or None)."""
        return asdict(self)


ESTIMATE_FIELDS = tuple(f.name for f in fields(Estimate))


def check_alpha(alpha: float) -> float:
    """Validate a significance level in (0, 1)."""
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


class PlainRecord:
    """A frozen dataclass result whose JSON is its fields as they are (``BayesResult``, ``SrmResult``)."""

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        from dataclasses import asdict

        return asdict(self)
