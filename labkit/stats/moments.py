"""Sufficient statistics of one arm (`ArmMoments`) and the result of every two-arm comparison (`Estimate`).

The data layer reduces a metric to n, Σy, Σy², Σx, Σx², Σxy per arm where the data lives (one
``GROUP BY arm``); every method in `labkit.stats` starts from those sums, so customer rows never have to
leave the engine. ``y`` is the metric value (or a ratio's numerator), ``x`` the CUPED covariate (or a
ratio's denominator).

Bad input raises `ValueError` (a negative n, a non-finite sum); degenerate data (an empty arm, one
customer, no variance) is not an error: the methods return an `Estimate` with a stable ``reason`` and
``None`` for what cannot be computed, so no NaN or inf ever reaches the JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

# Centred sums computed as Σa² − (Σa)²/n lose about log10(mean²/var) digits to cancellation; anything
# smaller than this fraction of Σa² is rounding noise, so it is read as exactly zero variance.
CANCELLATION_TOL = 1e-12

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
    """Σ(a − ā)² from raw sums, clamped to 0 where cancellation leaves only rounding noise."""
    value = sum_sq - total * total / n
    return 0.0 if value <= CANCELLATION_TOL * sum_sq else value


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
)


@dataclass(frozen=True)
class Estimate:
    """Treatment vs control on one metric: effect = treatment − control, lift = effect / mean_control.

    Intervals are at level 1 − alpha. ``reason`` is None for a complete result, else one of `REASONS`,
    with None in every field that could not be computed. ``lift_se`` is the delta-method standard error
    of the lift, kept so that sequential and Bayesian analyses can reuse it.
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
