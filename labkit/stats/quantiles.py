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
- ``p_value``: 2 · (1 + min(#{d* ≤ 0}, #{d* ≥ 0})) / (n_boot + 1), capped at 1, with the +1 so a finite
  bootstrap never claims p = 0 (Davison & Hinkley 1997, §4.4).
- Interval: the percentile interval that inverts exactly that p-value, the order statistics
  [d*_(k), d*_(B+1−k)] of the B = n_boot replicated differences with k = ⌈alpha·(B + 1)/2⌉ − 1 (the
  (B + 1)·alpha/2-th order statistic of Davison & Hinkley, rounded inwards). d*_(k) > 0 exactly when
  #{d* ≤ 0} ≤ k − 1, i.e. when 2·(1 + #{d* ≤ 0})/(B + 1) < alpha: the interval excludes 0 exactly when
  p < alpha (numpy's interpolated quantiles, used before, did not quite). When k < 1 (too few replicates
  for the level: 2/(B + 1) ≥ alpha, so p ≥ alpha anyway) the interval is unbounded and reported as None.
- Lift: the same order statistics of the replicated lifts (q*_t − q*_c)/|q*_c|, whose signs are the
  differences' signs, so the lift interval agrees with the same p-value; None when some replicate's
  control quantile is 0 (a lift undefined in part of the bootstrap distribution). ``lift_se`` is the
  delta-method standard error from the bootstrap variances of the two arm quantiles (for the Bayesian model).
- ``se`` = sqrt(Var*(q_c) + Var*(q_t)), the arms being resampled independently; those two bootstrap
  variances are kept as ``var_mean_control``/``var_mean_treatment``, from which the sequential mode builds
  its effect and Fieller lift confidence sequences (consistent with its always-valid p-value).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from scipy import special

from labkit.stats.means import lift_interval, point_only
from labkit.stats.moments import Estimate, check_alpha


def bootstrap_seed(pilot_id: str, metric: str) -> int:
    """The bootstrap's seed for one metric of one pilot, customer-level or cluster: the same numbers on
    every run, other numbers for another metric or pilot."""
    return int.from_bytes(hashlib.sha256(f"{pilot_id}\x1f{metric}".encode()).digest()[:4], "big")


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
    return replicate_estimate(method, n_c, n_t, q_c, q_t, boot_c, boot_t, alpha)


def replicate_estimate(
    method: str,
    n_c: int,
    n_t: int,
    q_c: float,
    q_t: float,
    boot_c: np.ndarray,
    boot_t: np.ndarray,
    alpha: float,
) -> Estimate:
    """The ``Estimate`` of the arms' quantiles ``q_c``, ``q_t`` from their replicates (module docstring: the
    p-value, the percentile interval that inverts it, the lift, se and the arm variances); shared with the
    cluster bootstrap (``labkit.stats.cluster_bootstrap``)."""
    diffs = boot_t - boot_c
    v_c, v_t = float(np.var(boot_c, ddof=1)), float(np.var(boot_t, ddof=1))
    se = math.sqrt(v_c + v_t)
    if not float(np.ptp(diffs)) > 0 or not se > 0:
        # every replicate gave the same difference (e.g. a median stuck on a mass of zeros)
        return point_only(method, n_c, n_t, q_c, q_t, "zero_variance")
    tail = min(np.count_nonzero(diffs <= 0), np.count_nonzero(diffs >= 0))
    p_value = min(1.0, 2 * (1 + tail) / (diffs.size + 1))
    ci_low, ci_high = percentile_bounds(diffs, alpha)
    z = float(special.ndtri(1 - alpha / 2))
    lift = lift_interval(q_c, q_t, v_c, v_t, z)
    lift_low = lift_high = None
    if lift is not None and np.all(boot_c != 0):
        with np.errstate(over="ignore"):
            lifts = diffs / np.abs(boot_c)
        if np.all(np.isfinite(lifts)):  # a denormal control replicate would overflow: no lift interval
            lift_low, lift_high = percentile_bounds(lifts, alpha)
    return Estimate(
        method=method,
        n_control=n_c,
        n_treatment=n_t,
        mean_control=q_c,
        mean_treatment=q_t,
        effect=q_t - q_c,
        se=se,
        ci_low=ci_low,
        ci_high=ci_high,
        lift=lift.lift if lift else None,
        lift_ci_low=lift_low,
        lift_ci_high=lift_high,
        p_value=p_value,
        reason=None if lift else "zero_control_mean",
        lift_se=lift.se if lift else None,
        var_mean_control=v_c,
        var_mean_treatment=v_t,
    )


def percentile_bounds(replicates: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    """[d_(k), d_(B+1−k)], k = ⌈alpha·(B + 1)/2⌉ − 1: excludes 0 exactly when 2(1 + tail)/(B + 1) < alpha."""
    b = replicates.size
    k = math.ceil(alpha * (b + 1) / 2) - 1
    if k < 1:
        return None, None
    ordered = np.sort(replicates)
    return float(ordered[k - 1]), float(ordered[b - k])
