"""Post-stratified difference in means, for assignments randomised within blocks (strata).

A channel tool that randomised within blocks (``cohort.assignment.strata``) may have used a different
treated share in each block; the pooled difference in means then mixes the arms' block compositions and
is biased. The post-stratified estimator compares the arms within each block and weights the blocks by
their share of the customers (Miratrix, Sekhon & Yu 2013; Imbens & Rubin 2015, ch. 9):

    τ̂ = Σ_s w_s (ȳ_t,s − ȳ_c,s),        w_s = n_s / N,
    Var(τ̂) = Σ_s w_s² (s²_t,s / n_t,s + s²_c,s / n_c,s),

with n_s the block's customers in both arms and s² the within-block sample variances (ddof 1). This is
the **fully interacted** regression estimator: the coefficient of the arm in the OLS fit of
y ~ arm + block dummies + arm × (block dummies centred at their shares) (Lin 2013), and Var(τ̂) is that
coefficient's HC2 heteroskedasticity-robust variance — which is what the tests check against statsmodels.
(With a common treated share in every block it equals the fixed-effects estimate y ~ arm + blocks.)

The reported arm means are the block-weighted means Σ_s w_s ȳ_a,s, so effect = mean_treatment −
mean_control as for every other method, and their variances Σ_s w_s² s²_a,s / n_a,s enter the lift
interval. Inference is Welch's t (``labkit.stats.means.compare_arm_estimates``) on those two weighted arm
estimates: df by Welch–Satterthwaite over the two arms, close to the normal limit at the sizes labkit's
pilots have; the standard error is the exact post-stratified one above.

A block in which either arm has fewer than two customers has no within-block variance; it cannot be
compared and is left out (its customers count neither in the weights nor in n_control / n_treatment, and
``strata_dropped`` says how many blocks). With no block left the result carries ``reason`` ``too_few``.
"""

from __future__ import annotations

from labkit.stats.means import compare_arm_estimates, point_only
from labkit.stats.moments import ArmMoments, Estimate, check_alpha

METHOD = "post-stratified"


def post_stratified(
    control: dict[str, ArmMoments], treatment: dict[str, ArmMoments], *, alpha: float = 0.05
) -> tuple[Estimate, int]:
    """Block-weighted difference in means (fully interacted; see the module docstring) and the number of
    blocks left out for having fewer than two customers in an arm."""
    alpha = check_alpha(alpha)
    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    blocks = sorted(set(control) | set(treatment))
    kept = [
        (control.get(b, empty), treatment.get(b, empty))
        for b in blocks
        if control.get(b, empty).n >= 2 and treatment.get(b, empty).n >= 2
    ]
    dropped = len(blocks) - len(kept)
    n_c = sum(c.n for c, _ in kept)
    n_t = sum(t.n for _, t in kept)
    if not kept:
        pooled_c = sum(control.values(), empty)
        pooled_t = sum(treatment.values(), empty)
        reason = "empty_arm" if pooled_c.n == 0 or pooled_t.n == 0 else "too_few"
        return point_only(METHOD, pooled_c.n, pooled_t.n, pooled_c.mean, pooled_t.mean, reason), dropped
    total = n_c + n_t
    mean_c = mean_t = var_mean_c = var_mean_t = 0.0
    for c, t in kept:
        w = (c.n + t.n) / total
        mean_c += w * c.mean
        mean_t += w * t.mean
        var_mean_c += w * w * c.var / c.n
        var_mean_t += w * w * t.var / t.n
    # compare_arm_estimates divides per-customer variances by n: hand it n × Var(weighted arm mean)
    est = compare_arm_estimates(
        METHOD, n_c, n_t, mean_c, mean_t, var_mean_c * n_c, var_mean_t * n_t, alpha=alpha
    )
    return est, dropped
