"""Quantile metrics (median first-response time, p90 order value) by a seeded, vectorised bootstrap.

Quantiles have no sufficient statistics, so this is the one method that takes raw per-customer values
(the data layer pulls them only for quantile metrics). The arms are resampled independently with
replacement, ``n_boot`` times, from one ``numpy.random.Generator(seed)`` (control first, then
treatment), so a result is reproducible bit for bit. Each replicate's quantile is drawn directly
through uniform order statistics (`bootstrap_quantiles`), which has the naive bootstrap's distribution
at O(n_boot) cost whatever the arm size. Sample quantiles use numpy's default linear
interpolation (Hyndman & Fan type 7), for the point estimate and for every replicate.

- ``mean_control`` / ``mean_treatment`` hold the arms' sample q-quantiles (the metric's value; the
  field names are shared with every other method), effect = q_t − q_c.
- Interval: percentile bootstrap, the alpha/2 and 1 − alpha/2 quantiles of the replicated differences.
- ``se``: standard deviation of the replicated differences.
- ``p_value``: the percentile-interval inversion, 2 · (1 + min(#{d* ≤ 0}, #{d* ≥ 0})) / (n_boot + 1),
  capped at 1 — the smallest level whose percentile interval excludes 0, with the +1 so a finite
  bootstrap never claims p = 0 (Davison & Hinkley 1997, §4.4).
- Lift: the shared delta-method helper (`labkit.stats.means.lift_interval`) with the bootstrap variances
  of the two arm quantiles and the normal critical value, so it is built like every other method's.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from labkit.stats.means import lift_interval, point_only
from labkit.stats.moments import Estimate, check_alpha


def _values(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


def bootstrap_quantiles(
    sorted_values: np.ndarray, q: float, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """The q-quantile of ``n_boot`` resamples of ``sorted_values``, drawn through uniform order statistics.

    Resampling n values with replacement is drawing indices floor(n·U_j), U_j ~ U(0, 1); sorted, the
    k-th smallest index is floor(n·U_(k)) with U_(k) ~ Beta(k, n + 1 − k), and the next order statistic
    is U_(k+1) = 1 − (1 − U_(k))·V^(1/(n − k)), V ~ U(0, 1) (David & Nagaraja 2003, §2.5). Only the two
    order statistics that the type-7 quantile interpolates are drawn, so the cost is O(n_boot), not
    O(n_boot · n), and the draws have exactly the naive bootstrap's distribution.
    """
    n = sorted_values.size
    position = (n - 1) * q
    lower = math.floor(position)
    fraction = position - lower
    rank = lower + 1  # 1-based rank of the lower order statistic
    u_low = rng.beta(rank, n + 1 - rank, size=n_boot)
    low = sorted_values[np.minimum((u_low * n).astype(np.int64), n - 1)]
    if fraction == 0 or rank == n:
        return low
    u_high = 1.0 - (1.0 - u_low) * rng.random(n_boot) ** (1.0 / (n - rank))
    high = sorted_values[np.minimum((u_high * n).astype(np.int64), n - 1)]
    return low + fraction * (high - low)


def bootstrap_quantile(
    control_values,
    treatment_values,
    *,
    q: float,
    alpha: float = 0.05,
    seed: int = 0,
    n_boot: int = 2000,
) -> Estimate:
    """Difference of q-quantiles with a seeded percentile bootstrap (Efron & Tibshirani 1993, ch. 13)."""
    alpha = check_alpha(alpha)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if int(n_boot) != n_boot or n_boot < 10:
        raise ValueError(f"n_boot must be a whole number >= 10, got {n_boot}")
    n_boot = int(n_boot)
    control = _values(control_values, "control_values")
    treatment = _values(treatment_values, "treatment_values")
    method = "bootstrap"
    n_c, n_t = control.size, treatment.size
    q_c = float(np.quantile(control, q)) if n_c else None
    q_t = float(np.quantile(treatment, q)) if n_t else None
    if n_c == 0 or n_t == 0:
        return point_only(method, n_c, n_t, q_c, q_t, "empty_arm")
    if n_c < 2 or n_t < 2:
        return point_only(method, n_c, n_t, q_c, q_t, "too_few")
    if np.ptp(control) == 0 and np.ptp(treatment) == 0:
        return point_only(method, n_c, n_t, q_c, q_t, "zero_variance")

    rng = np.random.default_rng(seed)
    boot_c = bootstrap_quantiles(np.sort(control), q, n_boot, rng)
    boot_t = bootstrap_quantiles(np.sort(treatment), q, n_boot, rng)
    diffs = boot_t - boot_c
    se = float(np.std(diffs, ddof=1))
    if not se > 0:
        # every replicate gave the same difference (e.g. a median stuck on a mass of zeros)
        return point_only(method, n_c, n_t, q_c, q_t, "zero_variance")
    ci_low, ci_high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    tail = min(np.count_nonzero(diffs <= 0), np.count_nonzero(diffs >= 0))
    p_value = min(1.0, 2 * (1 + tail) / (n_boot + 1))
    z = float(special.ndtri(1 - alpha / 2))
    lift = lift_interval(q_c, q_t, float(np.var(boot_c, ddof=1)), float(np.var(boot_t, ddof=1)), z)
    return Estimate(
        method=method,
        n_control=n_c,
        n_treatment=n_t,
        mean_control=q_c,
        mean_treatment=q_t,
        effect=q_t - q_c,
        se=se,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        lift=lift.lift if lift else None,
        lift_ci_low=lift.ci_low if lift else None,
        lift_ci_high=lift.ci_high if lift else None,
        p_value=p_value,
        reason=None if lift else "zero_control_mean",
        lift_se=lift.se if lift else None,
    )
