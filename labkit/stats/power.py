"""Planning: customers per arm for a minimum detectable effect, and the effect detectable at a cap.

Normal approximation for a two-sample comparison with equal arms (Chow, Shao & Wang 2008, §3.2):

    n per arm = (z_{1−α/2} + z_{power})² · (σ_c² + σ_t²) / mde²,

z_{1−α} instead of z_{1−α/2} for a one-sided test. It ignores the probability of rejecting in the wrong
tail (< 1e-6 at usual settings; statsmodels ``NormalIndPower`` counts it, which moves n by far less
than one customer) and the t correction, which adds one or two customers per arm (``TTestIndPower``). For proportions pass
``proportion_sd(p)`` for each arm's planned rate, so the unequal Bernoulli variances are honoured.
"""

from __future__ import annotations

import math

from scipy import special

from labkit.stats.moments import check_alpha

# A result within this relative distance of a whole number is that number: the formula is exact in
# theory and float rounding must not add a customer (e.g. 100.00000000001 -> 100).
_CEIL_TOL = 1e-9


def _check_power(power: float) -> float:
    power = float(power)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    return power


def proportion_sd(p: float) -> float:
    """Bernoulli standard deviation sqrt(p(1 − p))."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion must be in [0, 1], got {p}")
    return math.sqrt(p * (1.0 - p))


def sample_size_per_arm(
    *,
    sd_control: float,
    sd_treatment: float | None = None,
    mde_abs: float,
    alpha: float,
    power: float,
    two_sided: bool = True,
) -> int:
    """Customers per arm n = (z_{1−α/2} + z_{1−β})²(σ_c² + σ_t²)/mde², rounded up (at least 2)."""
    alpha, power = check_alpha(alpha), _check_power(power)
    sd_treatment = sd_control if sd_treatment is None else sd_treatment
    if not (sd_control >= 0 and sd_treatment >= 0 and sd_control + sd_treatment > 0):
        raise ValueError(f"standard deviations must be >= 0 and not both 0, got {sd_control}, {sd_treatment}")
    if not (math.isfinite(mde_abs) and mde_abs != 0):
        raise ValueError(f"mde_abs must be a non-zero finite number, got {mde_abs}")
    z_alpha = special.ndtri(1 - alpha / 2) if two_sided else special.ndtri(1 - alpha)
    z_power = special.ndtri(power)
    ratio = float(z_alpha + z_power) / abs(mde_abs)  # squared by multiplying: overflow is inf, not an error
    n = ratio * ratio * (sd_control**2 + sd_treatment**2)
    if not math.isfinite(n):  # an mde of ~1e-160 or less: no number of customers reaches it
        raise ValueError(f"no sample size reaches mde_abs={mde_abs:g}")
    # Welch needs two customers per arm to estimate a variance at all
    return max(2, math.ceil(n * (1 - _CEIL_TOL)))


def mde_at_n(*, sd: float, n_per_arm: float, alpha: float, power: float) -> float:
    """Smallest absolute effect detectable two-sided with n per arm: (z_{1−α/2} + z_{1−β})·σ·sqrt(2/n)."""
    alpha, power = check_alpha(alpha), _check_power(power)
    if not sd >= 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    if not n_per_arm > 0:
        raise ValueError(f"n_per_arm must be positive, got {n_per_arm}")
    return float((special.ndtri(1 - alpha / 2) + special.ndtri(power)) * sd * math.sqrt(2.0 / n_per_arm))


# -- sequential mode ---------------------------------------------------------------------------------
# With always-valid intervals (labkit.stats.sequential) a pilot rejects when |effect| > h·se instead of
# z_{1−α/2}·se, where h depends on how many customers have been analysed relative to the tuning size
# (the cap). At the final look power ≈ Φ(mde/se − h), so the plan replaces z_{1−α/2} by h:
#     mde at n = (h(n_analysed/n_tuning) + z_{1−β}) · σ · sqrt(2/n),
# and the customers needed per arm are the smallest n with that mde <= the target (h ≈ 3.04 near the
# tuning size at α = 0.05: about 1.9 times the fixed-horizon n for 80% power).


def mde_at_n_sequential(
    *, sd: float, n_per_arm: float, n_analysed: float, n_tuning: float, alpha: float, power: float
) -> float:
    """Smallest absolute effect an always-valid test detects at the look with ``n_analysed`` customers."""
    from labkit.stats.sequential import multiplier

    alpha, power = check_alpha(alpha), _check_power(power)
    if not n_per_arm > 0:
        raise ValueError(f"n_per_arm must be positive, got {n_per_arm}")
    h = multiplier(n_analysed, n_tuning, alpha)
    return float((h + special.ndtri(power)) * sd * math.sqrt(2.0 / n_per_arm))


def sample_size_per_arm_sequential(
    *, sd: float, mde_abs: float, alpha: float, power: float, n_tuning: float
) -> int:
    """Customers per arm (two arms analysed together, n_analysed = 2n) for the always-valid test to reach
    ``power`` at ``mde_abs``; the mde is decreasing in n, so the smallest such n is found by bisection."""
    if not (sd > 0 and math.isfinite(mde_abs) and mde_abs != 0):
        raise ValueError(f"need sd > 0 and a non-zero finite mde, got sd={sd}, mde_abs={mde_abs}")
    target = abs(mde_abs)

    def enough(n: int) -> bool:
        mde = mde_at_n_sequential(
            sd=sd, n_per_arm=n, n_analysed=2 * n, n_tuning=n_tuning, alpha=alpha, power=power
        )
        return mde <= target * (1 + _CEIL_TOL)

    lo, hi = 1, 2
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > 10**15:
            raise ValueError("no sample size reaches that mde")
    while hi - lo > 1:  # enough(hi) and not enough(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return max(2, hi)
