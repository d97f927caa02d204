"""Mean metrics: Welch's t-test on arm moments, and the relative-lift interval every method shares.

Relative lift. lift = (m_t − m_c) / |m_c| — divided by the *absolute* control mean (GrowthBook's
convention), so its sign is the effect's sign also for metrics with negative means (net revenue).

Its interval is Fieller's (Fieller 1954; for a lift, e.g. Franz 2007, "Ratios: a short guide to confidence
limits and proper use"): the set of λ for which the hypothesis "lift = λ" is not rejected by the same
statistic and critical value as the effect's test,

    (e − λ·|m_c|)² ≤ crit² · (v_t + (1 + s·λ)² · v_c),      e = m_t − m_c,  s = sign(m_c),

(e − λ|m_c| = m_t − (1 + sλ)·m_c has variance v_t + (1 + sλ)²·v_c), where v_c, v_t are the variances of the
two arm estimates (var/n for a mean). At λ = 0 this is e² ≤ crit²·(v_c + v_t): exactly the effect's test,
so the lift interval excludes 0 exactly when the test rejects — which the symmetric delta-method interval
(lift ± crit·se) did not guarantee (a p = 0.02 result once showed a lift interval of [−3.5 %, +145 %]).
The quadratic's leading coefficient is m_c² − crit²·v_c: when it is ≤ 0 the control mean is not
significantly different from 0 at this level and the confidence set is unbounded (a whole line, or two
half-lines); then ``ci_low``/``ci_high`` are None — reported as JSON null — rather than a finite interval
that would claim a precision the data do not have, or an infinity JSON cannot carry.

The delta-method standard error Var(lift) ≈ v_t/m_c² + m_t²·v_c/m_c⁴ (gbstats ``frequentist_variance``)
is still computed and kept as ``lift_se``: the Bayesian model (`labkit.stats.bayes`) and the meta-analysis
of `labkit compare` need a normal approximation on the lift scale. `lift_interval` is the single
implementation; means, proportions (large counts), ratios and CUPED call it, and the sequential widening
calls it again with its own critical value.

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
    """Relative lift, its delta-method standard error, and its Fieller interval (None when unbounded)."""

    lift: float
    se: float | None
    ci_low: float | None
    ci_high: float | None


def fieller_bounds(
    mean_control: float,
    mean_treatment: float,
    var_mean_control: float,
    var_mean_treatment: float,
    crit: float,
) -> tuple[float, float] | None:
    """Fieller interval for λ = (m_t − m_c)/|m_c|: {λ : (e − λ|m_c|)² ≤ crit²·(v_t + (1 + sλ)²·v_c)}.

    Expanded: A·λ² − 2B·λ + C ≤ 0 with A = m_c² − crit²·v_c, B = e·|m_c| + s·crit²·v_c,
    C = e² − crit²·(v_c + v_t). None when A ≤ 0 (an unbounded set: m_c is not significantly ≠ 0).
    With A > 0 the set holds λ̂ = e/|m_c|, so B² − A·C ≥ 0 up to rounding; the roots are taken in the
    cancellation-free form q/A and C/q, q = B + sign(B)·√(B² − AC). C > 0 (the test rejects) puts both
    roots on one side of 0, C ≤ 0 puts 0 between them: the interval excludes 0 exactly when the test rejects.
    """
    c2 = crit * crit
    abs_c = abs(mean_control)
    sign = 1.0 if mean_control > 0 else -1.0
    effect = mean_treatment - mean_control
    a = mean_control * mean_control - c2 * var_mean_control
    if not a > 0:
        return None
    b = effect * abs_c + sign * c2 * var_mean_control
    c = effect * effect - c2 * (var_mean_control + var_mean_treatment)
    disc = max(b * b - a * c, 0.0)
    q = b + math.copysign(math.sqrt(disc), b)
    if q == 0:  # b = 0 and disc = 0: a single point
        return (0.0, 0.0)
    r1, r2 = q / a, c / q
    low, high = min(r1, r2), max(r1, r2)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def lift_interval(
    mean_control: float,
    mean_treatment: float,
    var_mean_control: float,
    var_mean_treatment: float,
    crit: float,
) -> Lift | None:
    """Lift (m_t − m_c)/|m_c| with its delta-method se and Fieller interval at ``crit`` (None when m_c = 0).

    ``var_mean_*`` are variances of the arm estimates (not of customers); ``crit`` must be the critical
    value of the effect's test (Welch t, normal, or a confidence-sequence multiplier) so that the interval
    and the test agree.
    """
    if mean_control == 0:
        return None
    abs_c = abs(mean_control)
    lift = (mean_treatment - mean_control) / abs_c
    if not math.isfinite(lift):  # a control mean so close to 0 that the lift overflows: undefined as at 0
        return None
    # sqrt(v_t/m_c² + m_t²·v_c/m_c⁴) written so that m_c² cannot underflow to 0 for a tiny control mean
    ratio = mean_treatment / mean_control
    se = math.sqrt(var_mean_treatment + ratio * ratio * var_mean_control) / abs_c
    if not se > 0 or not math.isfinite(se) or not var_mean_control + var_mean_treatment > 0:
        # a zero-width interval would claim a certainty the data do not have
        return Lift(lift=lift, se=None, ci_low=None, ci_high=None)
    bounds = fieller_bounds(mean_control, mean_treatment, var_mean_control, var_mean_treatment, crit)
    if bounds is None:
        return Lift(lift=lift, se=se, ci_low=None, ci_high=None)
    return Lift(lift=lift, se=se, ci_low=bounds[0], ci_high=bounds[1])


def welch_df(var_mean_control: float, var_mean_treatment: float, n_control: int, n_treatment: int) -> float:
    """Welch–Satterthwaite df = (v_c + v_t)² / (v_c²/(n_c − 1) + v_t²/(n_t − 1)), v = s²/n."""
    total = var_mean_control + var_mean_treatment
    # shares instead of raw squares: squares of tiny variances underflow to 0/0
    a, b = var_mean_control / total, var_mean_treatment / total
    return 1.0 / (a * a / (n_control - 1) + b * b / (n_treatment - 1))


def point_only(method, n_c, n_t, mean_c, mean_t, reason, variance_reduction=None) -> Estimate:
    """An Estimate carrying only what degenerate data still support: means, effect and lift."""
    effect = mean_t - mean_c if mean_c is not None and mean_t is not None else None
    lift = effect / abs(mean_c) if effect is not None and mean_c != 0 else None
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
        var_mean_control=v_c,
        var_mean_treatment=v_t,
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
