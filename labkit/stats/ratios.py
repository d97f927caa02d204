"""Ratio metrics R = Σy / Σx per arm (tickets per contact, revenue per order) by the delta method.

The customer is the randomisation unit but the ratio's denominator (contacts, orders) is not, so the
naive per-event variance is wrong. The delta method linearises R around the arm means (Deng, Knoblich &
Lu 2018, "Applying the Delta Method in Metric Analytics"):

    Var(R̂) ≈ (s_y² − 2R·s_xy + R²·s_x²) / (n · x̄²),

with s² and s_xy the per-customer sample (co)variances (ddof=1). The difference R_t − R_c is then tested
like a Welch t on the linearised variances (Welch–Satterthwaite df, as gbstats does); the lift
(R_t − R_c)/|R_c| gets Fieller's interval from the same variances and critical value
(`labkit.stats.means.lift_interval`), so it excludes 0 exactly when the test rejects. An arm whose denominator sums to 0 has no
ratio: reason ``zero_denominator``.
"""

from __future__ import annotations

from labkit.stats.means import compare_arm_estimates, point_only
from labkit.stats.moments import CANCELLATION_TOL, ArmMoments, Estimate, check_alpha


def ratio_variance(arm: ArmMoments) -> float | None:
    """Per-customer linearised variance (s_y² − 2R·s_xy + R²·s_x²)/x̄²; None when n < 2 or Σx = 0."""
    if arm.n < 2 or arm.sum_x == 0:
        return None
    ratio = arm.sum / arm.sum_x
    ss = arm.ss - 2 * ratio * arm.sp_xy + ratio * ratio * arm.ss_x
    # Σ(y − R·x)² is never negative for possible sums (`ArmMoments` refuses a cross-product past
    # Cauchy–Schwarz): what cancellation leaves below the tolerance is rounding noise, read as 0
    if ss <= CANCELLATION_TOL * (arm.ss + ratio * ratio * arm.ss_x):
        ss = 0.0
    mean_x = arm.sum_x / arm.n
    return ss / (arm.n - 1) / (mean_x * mean_x)


def delta_ratio(control: ArmMoments, treatment: ArmMoments, *, alpha: float = 0.05) -> Estimate:
    """Difference of ratios Σy/Σx by the delta method (Deng et al. 2018); Welch df on linearised variances."""
    alpha = check_alpha(alpha)
    method = "delta-ratio"
    n_c, n_t = control.n, treatment.n
    ratio_c = control.sum / control.sum_x if control.sum_x != 0 else None
    ratio_t = treatment.sum / treatment.sum_x if treatment.sum_x != 0 else None
    if n_c == 0 or n_t == 0:
        return point_only(method, n_c, n_t, ratio_c, ratio_t, "empty_arm")
    if n_c < 2 or n_t < 2:
        return point_only(method, n_c, n_t, ratio_c, ratio_t, "too_few")
    if ratio_c is None or ratio_t is None:
        return point_only(method, n_c, n_t, ratio_c, ratio_t, "zero_denominator")
    return compare_arm_estimates(
        method,
        n_c,
        n_t,
        ratio_c,
        ratio_t,
        ratio_variance(control),
        ratio_variance(treatment),
        alpha=alpha,
    )
