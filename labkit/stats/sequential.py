"""Always-valid inference for pilots that are looked at every day: asymptotic confidence sequences.

The fixed-horizon interval effect ± z·se is valid at one pre-planned look; looking daily and stopping
at the first p < alpha inflates the false-positive rate far above alpha. An asymptotic confidence
sequence (Waudby-Smith, Arnold, Wu, Wu & Ramdas 2023, "Time-uniform central limit theory", eq. 9 with
the tuning of their eq. 161; the normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon 2021) is
valid uniformly over all looks. GrowthBook and Eppo use the same construction. Its half-width is se · h:

    h(u) = sqrt((u + 1)/u · log((u + 1)/alpha²)),
    u    = n · (log(1 − 2·log alpha) − 2·log alpha) / n_tuning,

with n the customers analysed so far (both arms) and n_tuning the total the pilot plans to reach: the
sequence is tightest around n = n_tuning (h ≈ 3.04 at alpha = 0.05, against 1.96 fixed-horizon).

The always-valid p-value is the smallest alpha whose sequence excludes 0. Because alpha enters both
``u`` and the log term it has no closed form; h decreases monotonically in alpha (to sqrt(1 + n_tuning/(2n))
as alpha → 1), so it is the root of se · h(alpha) = |effect| in log alpha, found with Brent's method.

The lift's confidence sequence is Fieller's interval (`labkit.stats.means.lift_interval`) at the same
multiplier h in place of the fixed-horizon critical value, from the arm variances the estimate kept: at
lift 0 its boundary is |effect| = h·se, the effect's own boundary, so the effect sequence, the lift
sequence and the always-valid p-value all agree on whether 0 is excluded (p < alpha). When the estimate
carries no arm variances (an exact small-count path has no single variance to widen), the lift sequence
is reported as None rather than one that could disagree with the p-value.
"""

from __future__ import annotations

import math
from dataclasses import replace

from labkit.stats.means import lift_interval
from labkit.stats.moments import Estimate, check_alpha

# log(alpha) range searched for the always-valid p-value: below e^-700 doubles underflow, and just
# under 1 the boundary has reached its limit sqrt(1 + n_tuning / (2n)).
_LOG_ALPHA_MIN = -700.0
_LOG_ALPHA_MAX = -1e-9


def _multiplier_log_alpha(r: float, log_alpha: float) -> float:
    """h at n/n_tuning = r, written in log alpha so tiny alphas do not underflow."""
    two_log = -2.0 * log_alpha
    u = r * (math.log1p(two_log) + two_log)
    return math.sqrt((u + 1.0) / u * (math.log1p(u) + two_log))


def multiplier(n: float, n_tuning: float, alpha: float) -> float:
    """Confidence-sequence multiplier h(u) = sqrt((u+1)/u · log((u+1)/α²)) (Waudby-Smith et al. 2023, eq. 9)."""
    alpha = check_alpha(alpha)
    if not n > 0 or not n_tuning > 0:
        raise ValueError(f"n and n_tuning must be positive, got n={n}, n_tuning={n_tuning}")
    return _multiplier_log_alpha(n / n_tuning, math.log(alpha))


def always_valid_p_value(z: float, n: float, n_tuning: float) -> float:
    """Smallest alpha whose confidence sequence excludes 0, given |effect|/se = z (root of h(alpha) = z)."""
    r = n / n_tuning
    z = abs(z)
    if z <= _multiplier_log_alpha(r, _LOG_ALPHA_MAX):
        return 1.0
    if z >= _multiplier_log_alpha(r, _LOG_ALPHA_MIN):
        return 0.0  # beyond double precision: report 0 rather than a fake tiny number
    from scipy.optimize import brentq  # only for sequential pilots: scipy.optimize costs ~0.4 s of import

    root = brentq(
        lambda log_alpha: _multiplier_log_alpha(r, log_alpha) - z, _LOG_ALPHA_MIN, _LOG_ALPHA_MAX, xtol=1e-12
    )
    return math.exp(root)


def widens(estimate: Estimate) -> bool:
    """Whether a sequential pilot's estimate has an effect interval to widen: none of the degenerate
    reasons, or only a zero control mean (the lift is undefined, the effect's interval is not). Checking
    ``reason is None`` alone left a zero-control-mean day with Welch's fixed-horizon interval under the
    confidence-sequence label (tests/stats/test_over_time_validity.py)."""
    return estimate.reason in (None, "zero_control_mean")


def always_valid(estimate: Estimate, *, n: float, n_tuning: float, alpha: float) -> Estimate:
    """Widen an Estimate's effect and lift intervals to a confidence sequence; always-valid p-value; method+"+cs"."""
    alpha = check_alpha(alpha)
    h = multiplier(n, n_tuning, alpha)
    method = estimate.method + "+cs"
    if estimate.effect is None or estimate.se is None or not estimate.se > 0:
        # nothing to widen: keep the point estimates and say why there is no interval
        return replace(
            estimate,
            method=method,
            ci_low=None,
            ci_high=None,
            lift_ci_low=None,
            lift_ci_high=None,
            p_value=None,
            reason=estimate.reason or "zero_variance",
        )
    half = h * estimate.se
    lift_low = lift_high = None
    v_c, v_t = estimate.var_mean_control, estimate.var_mean_treatment
    if estimate.lift is not None and v_c is not None and v_t is not None:
        lift = lift_interval(estimate.mean_control, estimate.mean_treatment, v_c, v_t, h)
        if lift is not None:
            lift_low, lift_high = lift.ci_low, lift.ci_high
    return replace(
        estimate,
        method=method,
        ci_low=estimate.effect - half,
        ci_high=estimate.effect + half,
        lift_ci_low=lift_low,
        lift_ci_high=lift_high,
        p_value=always_valid_p_value(estimate.effect / estimate.se, n, n_tuning),
    )
