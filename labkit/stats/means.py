"""Mean metrics: Welch's t-test on arm moments, and the relative-lift interval every method shares.

Relative lift. lift = (m_t − m_c) / m_c. Its interval is the symmetric delta-method interval used by
GrowthBook (gbstats ``frequentist_variance``) and Eppo:

    Var(lift) ≈ v_t / m_c² + m_t² · v_c / m_c⁴,        lift ± crit · sqrt(Var(lift)),

where v_c, v_t are the variances of the two arm estimates (var/n for a mean) and ``crit`` is the same
critical value as the method's effect interval (Welch t, or normal). We chose it over tea-tasting's
log-ratio form, exp(log(m_t/m_c) ± crit·se_log) − 1, because the symmetric form stays defined when a
treatment mean is 0 or means are negative (counts of 0, net revenue), and because the sequential
widening (`labkit.stats.sequential`) and the Bayesian model (`labkit.stats.bayes`) need a normal
approximation on the lift scale anyway. `lift_interval` is the single implementation; means, proportions,
ratios, CUPED and quantiles all call it, and every `Estimate` keeps its standard error as ``lift_se``.

Welch's test: effect = m_t − m_c, se = sqrt(s_c²/n_c + s_t²/n_t), df by Welch–Satterthwaite, two-sided
p-value from Student's t. Zero variance in both arms gives reason ``zero_variance`` with the point
estimates but no se, interval or p-value, whether or not the means differ: with no sampling variance
in the data there is nothing to scale the difference by, and a p-value of 0 from two constant arms of
three customers would be a lie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from labkit.stats.moments import ArmMoments, Estimate, check_alpha


@dataclass(frozen=True)
class Lift:
    """Relative lift with its delta-method standard error and interval (None when that se is 0)."""

    lift: float
    se: float | None
    ci_low: float | None
    ci_high: float | None


def lift_interval(
    mean_control: float,
    mean_treatment: float,
    var_mean_control: float,
    var_mean_treatment: float,
    crit: float,
) -> Lift | None:
    """Delta-method lift (m_t − m_c)/m_c with Var ≈ v_t/m_c² + m_t²·v_c/m_c⁴ (GrowthBook/Eppo form).

    ``var_mean_*`` are variances of the arm estimates (not of customers). None when m_c = 0.
    """
    if mean_control == 0:
        return None
    lift = (mean_treatment - mean_control) / mean_control
    mc2 = mean_control * mean_control
    var = var_mean_treatment / mc2 + mean_treatment * mean_treatment * var_mean_control / (mc2 * mc2)
    se = math.sqrt(var)
    if not se > 0 or not math.isfinite(se):
        # a zero-width interval would claim a certainty the data do not have
        return Lift(lift=lift, se=None, ci_low=None, ci_high=None)
    return Lift(lift=lift, se=se, ci_low=lift - crit * se, ci_high=lift + crit * se)


def welch_df(var_mean_control: float, var_mean_treatment: float, n_control: int, n_treatment: int) -> float:
    """Welch–Satterthwaite df = (v_c + v_t)² / (v_c²/(n_c − 1) + v_t²/(n_t − 1)), v = s²/n."""
    total = var_mean_control + var_mean_treatment
    # shares instead of raw squares: squares of tiny variances underflow to 0/0
    a, b = var_mean_control / total, var_mean_treatment / total
    return 1.0 / (a * a / (n_control - 1) + b * b / (n_treatment - 1))


def point_only(method, n_c, n_t, mean_c, mean_t, reason, variance_reduction=None) -> Estimate:
    """An Estimate carrying only what degenerate data still support: means, effect and lift."""
    effect = mean_t - mean_c if mean_c is not None and mean_t is not None else None
    lift = effect / mean_c if effect is not None and mean_c != 0 else None
    return Estimate(
        method=method,
        n_control=n_c,
        n_treatment=n_t,
        mean_control=mean_c,
        mean_treatment=mean_t,
        effect=effect,
        se=None,
        ci_low=None,
        ci_high=None,
        lift=lift,
        lift_ci_low=None,
        lift_ci_high=None,
        p_value=None,
        variance_reduction=variance_reduction,
        reason=reason,
    )


def compare_arm_estimates(
    method: str,
    n_control: int,
    n_treatment: int,
    mean_control: float | None,
    mean_treatment: float | None,
    var_control: float | None,
    var_treatment: float | None,
    *,
    alpha: float,
    variance_reduction: float | None = None,
) -> Estimate:
    """Welch t on two arm estimates with per-customer variances var_*; shared by means, ratios and CUPED."""
    if n_control == 0 or n_treatment == 0:
        return point_only(method, n_control, n_treatment, mean_control, mean_treatment, "empty_arm")
    if n_control < 2 or n_treatment < 2 or var_control is None or var_treatment is None:
        return point_only(method, n_control, n_treatment, mean_control, mean_treatment, "too_few")
    if var_control == 0 and var_treatment == 0:
        return point_only(
            method, n_control, n_treatment, mean_control, mean_treatment, "zero_variance", variance_reduction
        )
    v_c, v_t = var_control / n_control, var_treatment / n_treatment
    se = math.sqrt(v_c + v_t)
    df = welch_df(v_c, v_t, n_control, n_treatment)
    crit = float(special.stdtrit(df, 1 - alpha / 2))
    effect = mean_treatment - mean_control
    p_value = float(2 * special.stdtr(df, -abs(effect) / se))
    lift = lift_interval(mean_control, mean_treatment, v_c, v_t, crit)
    return Estimate(
        method=method,
        n_control=n_control,
        n_treatment=n_treatment,
        mean_control=mean_control,
        mean_treatment=mean_treatment,
        effect=effect,
        se=se,
        ci_low=effect - crit * se,
        ci_high=effect + crit * se,
        lift=lift.lift if lift else None,
        lift_ci_low=lift.ci_low if lift else None,
        lift_ci_high=lift.ci_high if lift else None,
        p_value=min(p_value, 1.0),
        variance_reduction=variance_reduction,
        reason=None if lift else "zero_control_mean",
        lift_se=lift.se if lift else None,
    )


def welch(control: ArmMoments, treatment: ArmMoments, *, alpha: float = 0.05) -> Estimate:
    """Welch two-sample t-test on arm moments; df by Welch–Satterthwaite (Welch 1947)."""
    alpha = check_alpha(alpha)
    return compare_arm_estimates(
        "welch-t",
        control.n,
        treatment.n,
        control.mean,
        treatment.mean,
        control.var,
        treatment.var,
        alpha=alpha,
    )
