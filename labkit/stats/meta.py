"""Random-effects meta-analysis of pilots (DerSimonian & Laird 1986), for `labkit compare`'s pooled lift.

With study effects y_i, variances v_i and fixed-effect weights w_i = 1/v_i:

    Q    = Σ w_i (y_i − ȳ_FE)²,          ȳ_FE = Σ w_i y_i / Σ w_i,
    τ²   = max(0, (Q − (k − 1)) / (Σ w_i − Σ w_i² / Σ w_i)),
    w*_i = 1/(v_i + τ²),   pooled = Σ w*_i y_i / Σ w*_i,   se = 1/sqrt(Σ w*_i),
    I²   = max(0, (Q − (k − 1)) / Q),

normal interval and two-sided p-value. τ² is truncated at 0 as in the original paper (statsmodels'
``combine_effects`` does not truncate, so its "random effect" row differs when Q < k − 1; there the
truncated estimate equals the fixed-effect one). With one study the result is that study as is:
τ² = 0, Q = 0, and I² None (heterogeneity needs two studies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from labkit.stats.moments import check_alpha


@dataclass(frozen=True)
class MetaResult:
    """Pooled random-effects estimate with heterogeneity (τ², I², Cochran's Q)."""

    k: int
    pooled: float
    se: float
    ci_low: float
    ci_high: float
    tau2: float
    i2: float | None
    q: float
    p_value: float

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def dersimonian_laird(
    effects: Sequence[float], variances: Sequence[float], *, alpha: float = 0.05
) -> MetaResult:
    """DerSimonian–Laird random-effects pooling with τ² truncated at 0 (DerSimonian & Laird 1986)."""
    alpha = check_alpha(alpha)
    y = np.asarray(effects, dtype=float)
    v = np.asarray(variances, dtype=float)
    if y.ndim != 1 or y.shape != v.shape:
        raise ValueError(f"effects and variances must be 1-D of the same length, got {y.shape} and {v.shape}")
    if y.size == 0:
        raise ValueError("a meta-analysis needs at least one study")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(v)) and np.all(v > 0)):
        raise ValueError("effects must be finite and variances finite and positive")
    k = int(y.size)
    w = 1.0 / v
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2)) if k > 1 else 0.0
    c = float(np.sum(w) - np.sum(w * w) / np.sum(w))
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    i2 = (max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0) if k > 1 else None
    w_re = 1.0 / (v + tau2)
    pooled = float(np.sum(w_re * y) / np.sum(w_re))
    se = float(1.0 / math.sqrt(np.sum(w_re)))
    z = float(special.ndtri(1 - alpha / 2))
    return MetaResult(
        k=k,
        pooled=pooled,
        se=se,
        ci_low=pooled - z * se,
        ci_high=pooled + z * se,
        tau2=float(tau2),
        i2=i2,
        q=q,
        p_value=float(2 * special.ndtr(-abs(pooled) / se)),
    )
