"""CUPED: variance reduction with a pre-period covariate (Deng, Xu, Kohavi & Walker 2013).

Each arm's ``ArmMoments`` carries y (the metric) and x (the same metric over the pre-period, or a named
covariate). With the pooled within-arm slope

    θ = (S_xy,c + S_xy,t) / (S_xx,c + S_xx,t),      S = centred sums of (cross-)products within an arm,

the adjusted arm mean is ȳ_a − θ·(x̄_a − x̄), x̄ the mean of x over both arms, and its per-customer
variance is s_y² − 2θ·s_xy + θ²·s_x². Welch's test then runs on the adjusted means and variances.

θ is pooled *within* arms (the ANCOVA slope) rather than over the stacked data, so the point estimate is
exactly the treatment coefficient of the OLS regression y ~ arm + (x − x̄), and a treatment effect on y
cannot leak into θ. The interval ignores θ's own sampling error (O(1/n), as in the CUPED paper and
gbstats). When x has no within-arm variance θ is 0 and the result equals plain Welch.

The reported ``mean_control`` / ``mean_treatment`` are the *adjusted* means (on the metric's scale, since
the covariate is centred at its overall mean), so effect = mean_treatment − mean_control and
lift = effect / |mean_control| (Fieller interval at the same t critical value) hold as for every other method. ``variance_reduction`` is
1 − Var(adjusted effect) / Var(unadjusted effect) = 1 − se_cuped² / se_welch², a fraction (≈ ρ² for a
balanced pilot; it can be slightly negative when the covariate is useless).
"""

from __future__ import annotations

from labkit.stats.means import compare_arm_estimates, welch
from labkit.stats.moments import CANCELLATION_TOL, ArmMoments, Estimate, check_alpha


def cuped_theta(control: ArmMoments, treatment: ArmMoments) -> float:
    """θ = Σ_arms S_xy / Σ_arms S_xx, the pooled within-arm regression slope of y on x (0 if x is constant)."""
    ss_x = control.ss_x + treatment.ss_x
    return (control.sp_xy + treatment.sp_xy) / ss_x if ss_x > 0 else 0.0


def _adjusted_var(arm: ArmMoments, theta: float) -> float | None:
    """Per-customer variance of y − θx: (S_yy − 2θ·S_xy + θ²·S_xx)/(n − 1)."""
    if arm.n < 2:
        return None
    ss = arm.ss - 2 * theta * arm.sp_xy + theta * theta * arm.ss_x
    # ≥ 0 for possible sums (`ArmMoments` enforces Cauchy–Schwarz): only rounding noise is read as 0
    if ss <= CANCELLATION_TOL * (arm.ss + theta * theta * arm.ss_x):
        ss = 0.0
    return ss / (arm.n - 1)


def cuped(control: ArmMoments, treatment: ArmMoments, *, alpha: float = 0.05) -> Estimate:
    """Welch t on CUPED-adjusted means, θ pooled within arms (Deng et al. 2013); reports variance_reduction."""
    alpha = check_alpha(alpha)
    method = "welch-t+cuped"
    n_c, n_t = control.n, treatment.n
    if n_c == 0 or n_t == 0:
        return compare_arm_estimates(method, n_c, n_t, control.mean, treatment.mean, None, None, alpha=alpha)
    theta = cuped_theta(control, treatment)
    mean_x = (control.sum_x + treatment.sum_x) / (n_c + n_t)
    adjusted_c = control.mean - theta * (control.mean_x - mean_x)
    adjusted_t = treatment.mean - theta * (treatment.mean_x - mean_x)
    var_c, var_t = _adjusted_var(control, theta), _adjusted_var(treatment, theta)
    unadjusted = welch(control, treatment, alpha=alpha)
    variance_reduction = None
    if unadjusted.se is not None and var_c is not None and var_t is not None:
        adjusted_var = var_c / n_c + var_t / n_t
        variance_reduction = 1.0 - adjusted_var / (unadjusted.se * unadjusted.se)
    return compare_arm_estimates(
        method,
        n_c,
        n_t,
        adjusted_c,
        adjusted_t,
        var_c,
        var_t,
        alpha=alpha,
        variance_reduction=variance_reduction,
    )
