"""Proportion metrics: two-sample z-test for large counts, exact test + Newcombe interval for small ones.

Input: `ArmMoments` with ``sum`` = successes (customers with a 1); ``sum_sq`` is ignored (Σy² = Σy for 0/1).

Switching rule (reported in ``method``). The normal approximation is used only when every arm has at
least 30 customers and at least 10 successes and 10 failures; otherwise the small-count path runs:

- ``"z-test"`` (large counts): p-value from the *pooled* z statistic
  (p̂ = (k_c + k_t)/(n_c + n_t), se₀ = sqrt(p̂(1 − p̂)(1/n_c + 1/n_t)); statsmodels ``proportions_ztest``),
  interval from the *unpooled* Wald standard error sqrt(p_c(1 − p_c)/n_c + p_t(1 − p_t)/n_t)
  (statsmodels ``confint_proportions_2indep(method="wald")``). The reported ``se`` is the unpooled one.
- ``"boschloo+newcombe"`` / ``"fisher+newcombe"`` (small counts): the p-value is Boschloo's exact
  unconditional test (Boschloo 1970; uniformly more powerful than Fisher's) while the table is small
  enough for it to be quick (n_c · n_t ≤ 2500); beyond that (large arms with a rare event) Fisher's exact
  test, which is conservative but instant. The interval for the difference is Newcombe's hybrid score
  interval built from the two Wilson intervals (Newcombe 1998, method 10). The p-value and the interval
  come from different constructions, so in rare borderline cases one can exclude 0 and the other not.

In both paths the relative lift uses the shared delta-method helper (`labkit.stats.means.lift_interval`)
with the unpooled arm variances p(1 − p)/n and the normal critical value.
"""

from __future__ import annotations

import math

from scipy import special, stats

from labkit.stats.means import lift_interval
from labkit.stats.moments import ArmMoments, Estimate, check_alpha

#: Normal approximation only with at least this many successes and failures in every arm ...
MIN_COUNT = 10
#: ... and at least this many customers in every arm.
MIN_N = 30
#: Boschloo's test enumerates every table with the observed margins; above this n_c·n_t use Fisher.
BOSCHLOO_MAX_CELLS = 2500


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (Wilson 1927)."""
    alpha = check_alpha(alpha)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be between 0 and n={n}, got {k}")
    z = float(special.ndtri(1 - alpha / 2))
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    # at k = 0 (k = n) the lower (upper) bound is exactly 0 (1); rounding would leave it a hair off
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def newcombe_interval(k_c: int, n_c: int, k_t: int, n_t: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe hybrid score interval for p_t − p_c from the two Wilson intervals (Newcombe 1998, no. 10)."""
    p_c, p_t = k_c / n_c, k_t / n_t
    low_c, high_c = wilson_interval(k_c, n_c, alpha)
    low_t, high_t = wilson_interval(k_t, n_t, alpha)
    diff = p_t - p_c
    low = diff - math.sqrt((p_t - low_t) ** 2 + (high_c - p_c) ** 2)
    high = diff + math.sqrt((high_t - p_t) ** 2 + (p_c - low_c) ** 2)
    return low, high


def _successes(arm: ArmMoments, name: str) -> int:
    k = arm.sum
    if not float(k).is_integer() or not 0 <= k <= arm.n:
        raise ValueError(f"{name}: successes (sum) must be a whole number between 0 and n={arm.n}, got {k}")
    return int(k)


def proportions_method(k_c: int, n_c: int, k_t: int, n_t: int) -> str:
    """The switching rule: exact path if any arm has n < 30 or fewer than 10 successes or failures."""
    if min(n_c, n_t) >= MIN_N and min(k_c, n_c - k_c, k_t, n_t - k_t) >= MIN_COUNT:
        return "z-test"
    return "boschloo+newcombe" if n_c * n_t <= BOSCHLOO_MAX_CELLS else "fisher+newcombe"


def compare_proportions(control: ArmMoments, treatment: ArmMoments, *, alpha: float = 0.05) -> Estimate:
    """Difference of proportions: pooled z-test + Wald interval, or exact test + Newcombe interval."""
    alpha = check_alpha(alpha)
    k_c, k_t = _successes(control, "control"), _successes(treatment, "treatment")
    n_c, n_t = control.n, treatment.n
    method = proportions_method(k_c, n_c, k_t, n_t)
    if n_c == 0 or n_t == 0:
        return Estimate(
            method=method,
            n_control=n_c,
            n_treatment=n_t,
            mean_control=control.mean,
            mean_treatment=treatment.mean,
            effect=None,
            se=None,
            ci_low=None,
            ci_high=None,
            lift=None,
            lift_ci_low=None,
            lift_ci_high=None,
            p_value=None,
            reason="empty_arm",
        )
    p_c, p_t = k_c / n_c, k_t / n_t
    effect = p_t - p_c
    v_c, v_t = p_c * (1 - p_c) / n_c, p_t * (1 - p_t) / n_t
    se = math.sqrt(v_c + v_t)
    z = float(special.ndtri(1 - alpha / 2))
    if method != "z-test":
        table = [[k_t, k_c], [n_t - k_t, n_c - k_c]]  # columns are the two independent binomial samples
        exact_test = stats.boschloo_exact if method == "boschloo+newcombe" else stats.fisher_exact
        p_value = min(float(exact_test(table, alternative="two-sided").pvalue), 1.0)
        ci_low, ci_high = newcombe_interval(k_c, n_c, k_t, n_t, alpha)
    else:
        p_pool = (k_c + k_t) / (n_c + n_t)
        se_null = math.sqrt(p_pool * (1 - p_pool) * (1 / n_c + 1 / n_t))
        p_value = float(2 * special.ndtr(-abs(effect) / se_null))
        ci_low, ci_high = effect - z * se, effect + z * se
    lift = lift_interval(p_c, p_t, v_c, v_t, z)
    return Estimate(
        method=method,
        n_control=n_c,
        n_treatment=n_t,
        mean_control=p_c,
        mean_treatment=p_t,
        effect=effect,
        # both arms at 0% or 100%: the Wald se is 0 and says nothing; the exact interval still stands
        se=se if se > 0 else None,
        ci_low=ci_low,
        ci_high=ci_high,
        lift=lift.lift if lift else None,
        lift_ci_low=lift.ci_low if lift else None,
        lift_ci_high=lift.ci_high if lift else None,
        p_value=p_value,
        reason=None if lift else "zero_control_mean",
        lift_se=lift.se if lift else None,
    )
