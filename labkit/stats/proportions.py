"""Proportion metrics: a test and intervals that are dual by construction, for large and small counts.

Input: `ArmMoments` with ``sum`` = successes (customers with a 1); ``sum_sq`` is ignored (Σy² = Σy for 0/1).

Every path reports a p-value and intervals (for the difference p_t − p_c and for the lift p_t/p_c − 1) that
invert *one* test statistic, so an interval excludes 0 exactly when p < alpha. Switching rule (reported in
``method``): the normal approximation only when every arm has at least 30 customers and at least 10
successes and 10 failures; otherwise a small-count path.

- ``"z-test"`` (large counts): the *unpooled* (Wald) z-test, z = (p_t − p_c)/sqrt(p_c(1 − p_c)/n_c +
  p_t(1 − p_t)/n_t), with the Wald interval from the same standard error (statsmodels
  ``test_proportions_2indep(method="wald")`` and ``confint_proportions_2indep(method="wald")``; GrowthBook
  tests proportions the same way). We chose it over the pooled z-test, whose Wald-interval companion could
  exclude 0 at p = 0.0513: with ≥ 10 successes and failures per arm the two tests differ in the third
  decimal, and the unpooled variance also gives the lift its Fieller interval (`labkit.stats.means.
  lift_interval`) at the same normal critical value, which agrees with this test exactly.
- ``"barnard"`` (small counts, n_c · n_t ≤ 2500): Barnard's exact unconditional test with the score
  statistic (the Farrington–Manning / Miettinen–Nurminen statistic with the restricted maximum-likelihood
  variance; at p_t = p_c it is the pooled z, scipy ``barnard_exact(pooled=True)``): the p-value is the
  largest, over the common nuisance proportion, probability of a table at least as extreme. The difference
  interval is that test inverted, {δ : p(δ) > alpha} (Chan & Zhang 1999; Agresti & Min 2001), and the
  lift interval inverts the same exact test of p_t = ρ·p_c (its score statistic at ρ = 1 is the same pooled
  z, so its p-value at ρ = 1 is the p-value reported). Exact: the size never exceeds alpha and the intervals
  cover at least 1 − alpha, whatever the counts. This replaces Boschloo's test with a Newcombe interval,
  which were not dual (one could exclude 0 while the other did not).
- ``"score"`` (rare events in large arms, n_c · n_t > 2500, where enumerating every table is too slow): the
  asymptotic Miettinen–Nurminen (1985) score test with its inverted intervals for the difference and the
  ratio (statsmodels ``test_proportions_2indep(method="score")`` / ``confint_proportions_2indep(
  method="score")``, with the n/(n − 1) variance correction), the recommended large-sample method for
  rare events (Newcombe 1998; Fagerland, Lydersen & Laake 2015).

Inversion: each bound is found by bisection between an accepted and a rejected value; the null value
itself (δ = 0, ρ = 1) is used as one end of the bracket, accepted exactly when the reported p ≥ alpha, so
the agreement between interval and p-value holds by construction, not only up to numerical tolerance. The
bound reported is the last accepted value (within ``_TOL_SCORE`` / ``_TOL_EXACT``); the interval is closed.

In every path ``se`` is the unpooled (Wald) standard error and ``lift_se`` the delta-method standard
error of the lift from the same variances; they feed the sequential widening and the Bayesian model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import special

from labkit.stats.means import lift_interval
from labkit.stats.moments import ArmMoments, Estimate, check_alpha

#: Normal approximation only with at least this many successes and failures in every arm ...
MIN_COUNT = 10
#: ... and at least this many customers in every arm.
MIN_N = 30
#: Barnard's test enumerates every table (n_c + 1)(n_t + 1); above this n_c·n_t use the asymptotic score test.
EXACT_MAX_CELLS = 2500
#: Kept for callers of the former name.
BOSCHLOO_MAX_CELLS = EXACT_MAX_CELLS
#: Nuisance proportions evaluated on a grid of this many points, then the best cell refined.
_GRID = 101
#: Bisection stops when the bracket is narrower than this (on the difference, or the log ratio): the score
#: statistic is cheap, each exact evaluation is not.
_TOL_SCORE = 1e-10
_TOL_EXACT = 1e-7
#: The largest ratio searched for an upper lift bound; beyond it the bound is reported as unbounded.
_RATIO_MAX = 1e9


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
    """Newcombe hybrid score interval for p_t − p_c from the two Wilson intervals (Newcombe 1998, no. 10).

    Not used by `compare_proportions` any more (it is not dual to any of its tests); kept for notebooks."""
    p_c, p_t = k_c / n_c, k_t / n_t
    low_c, high_c = wilson_interval(k_c, n_c, alpha)
    low_t, high_t = wilson_interval(k_t, n_t, alpha)
    diff = p_t - p_c
    low = diff - math.sqrt((p_t - low_t) ** 2 + (high_c - p_c) ** 2)
    high = diff + math.sqrt((high_t - p_t) ** 2 + (p_c - low_c) ** 2)
    return low, high


# --------------------------------------------------------------------------- score statistics


def _as_counts(k_c, n_c, k_t, n_t):
    """Counts as float arrays, the total, and the pooled rate: under the null hypothesis of no difference
    both restricted estimates equal it."""
    k_c = np.asarray(k_c, dtype=float)
    k_t = np.asarray(k_t, dtype=float)
    n = n_c + n_t
    return k_c, k_t, n, (k_c + k_t) / n


def _restricted_diff(k_c, n_c, k_t, n_t, delta: float):
    """Restricted MLE (p̃_c, p̃_t) under p_t − p_c = δ: the Miettinen–Nurminen (1985) cubic, vectorised."""
    k_c, k_t, n, pooled = _as_counts(k_c, n_c, k_t, n_t)
    if delta == 0:
        return pooled, pooled
    count = k_c + k_t
    t3 = n
    t2 = (n_t + 2 * n_c) * delta - n - count
    t1 = (k_c * delta - n - 2 * k_c) * delta + count
    t0 = k_c * delta * (1 - delta)
    q = (t2 / (3 * t3)) ** 3 - t1 * t2 / (6 * t3**2) + t0 / (2 * t3)
    p = np.sign(q) * np.sqrt(np.maximum((t2 / (3 * t3)) ** 2 - t1 / (3 * t3), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p != 0, q / np.where(p != 0, p, 1.0) ** 3, 0.0)
    a = (np.pi + np.arccos(np.clip(ratio, -1.0, 1.0))) / 3
    p_c = np.clip(2 * p * np.cos(a) - t2 / (3 * t3), 0.0, 1.0)
    p_t = np.clip(p_c + delta, 0.0, 1.0)
    return p_c, p_t


def _restricted_ratio(k_c, n_c, k_t, n_t, rho: float):
    """Restricted MLE (p̃_c, p̃_t) under p_t = ρ·p_c (Miettinen & Nurminen 1985; Koopman 1984), vectorised."""
    k_c, k_t, n, pooled = _as_counts(k_c, n_c, k_t, n_t)
    if rho == 1:
        return pooled, pooled
    a = n * rho
    b = -(n_t * rho + k_t + n_c + k_c * rho)
    c = k_c + k_t
    # the smaller root of a·p² + b·p + c, as 2c / (−b + √(b² − 4ac)): no cancellation when a·c is tiny
    denom = -b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_c = np.clip(np.where(denom > 0, 2 * c / np.where(denom > 0, denom, 1.0), 0.0), 0.0, 1.0)
    return p_c, np.clip(rho * p_c, 0.0, 1.0)


def _score_z(k_c, n_c, k_t, n_t, value: float, compare: str, correction: bool = False):
    """Score statistic of p_t − p_c = value (``diff``) or p_t = value·p_c (``ratio``); 0 where 0/0."""
    k_c = np.asarray(k_c, dtype=float)
    k_t = np.asarray(k_t, dtype=float)
    if compare == "diff":
        p_c0, p_t0 = _restricted_diff(k_c, n_c, k_t, n_t, value)
        num = k_t / n_t - k_c / n_c - value
        var = p_t0 * (1 - p_t0) / n_t + p_c0 * (1 - p_c0) / n_c
    else:
        p_c0, p_t0 = _restricted_ratio(k_c, n_c, k_t, n_t, value)
        num = k_t / n_t - value * k_c / n_c
        var = p_t0 * (1 - p_t0) / n_t + value * value * p_c0 * (1 - p_c0) / n_c
    if correction:
        var = var * (n_c + n_t) / (n_c + n_t - 1)
    num = np.where(np.abs(num) < 1e-14, 0.0, num)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(
            var > 0,
            num / np.sqrt(np.where(var > 0, var, 1.0)),
            np.where(num == 0, 0.0, np.inf * np.sign(num)),
        )
    return z


# --------------------------------------------------------------------------- exact unconditional test


class _Exact:
    """Barnard's exact unconditional test of p_t − p_c = δ or p_t = ρ·p_c with the score statistic."""

    def __init__(self, k_c: int, n_c: int, k_t: int, n_t: int):
        self.k_c, self.n_c, self.k_t, self.n_t = k_c, n_c, k_t, n_t
        self.x_c = np.arange(n_c + 1, dtype=float)
        self.x_t = np.arange(n_t + 1, dtype=float)
        self.grid_c, self.grid_t = np.meshgrid(self.x_c, self.x_t, indexing="ij")
        self._log_choose = {
            n: special.gammaln(n + 1) - special.gammaln(x + 1) - special.gammaln(n - x + 1)
            for n, x in ((n_c, self.x_c), (n_t, self.x_t))
        }

    def _pmf(self, n: int, p: np.ndarray) -> np.ndarray:
        """Binomial(n, p) probabilities of 0..n for each p (rows), with 0·log 0 = 0 at the ends."""
        x = np.arange(n + 1, dtype=float)[None, :]
        # xlogy(x, p) + xlog1py(n - x, -p) with each row's two logarithms taken once, not once a cell
        # (within 6e-14 relative of scipy's, all n < 60); 0·log 0 is 0 in the first column and the last
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p, log_q = np.log(p)[:, None], np.log1p(-p)[:, None]
            successes, failures = x * log_p, (n - x) * log_q
        successes[:, 0] = 0.0
        failures[:, n] = 0.0
        return np.exp(self._log_choose[n][None, :] + successes + failures)

    def p_value(self, value: float, compare: str) -> float:
        z = _score_z(self.grid_c, self.n_c, self.grid_t, self.n_t, value, compare)
        z_obs = abs(float(z[self.k_c, self.k_t]))
        # ties up to rounding count as "at least as extreme" (the observed table always does)
        reject = (np.abs(z) >= z_obs - 1e-9 * max(1.0, z_obs)).astype(float)
        if compare == "diff":
            lo, hi = max(0.0, -value), min(1.0, 1.0 - value)
            to_t = lambda p: p + value  # noqa: E731
        else:
            lo, hi = 0.0, min(1.0, 1.0 / value)
            to_t = lambda p: value * p  # noqa: E731

        def mass(p_c):
            p_c = np.atleast_1d(np.asarray(p_c, dtype=float))
            p_t = np.clip(to_t(p_c), 0.0, 1.0)
            # (P_c @ reject) · P_t summed per row: BLAS's product, not einsum's three-operand loop (which
            # took 5-30x as long at these sizes)
            return ((self._pmf(self.n_c, p_c) @ reject) * self._pmf(self.n_t, p_t)).sum(axis=1)

        if hi <= lo:
            return float(min(1.0, mass(lo)[0]))
        # a coarse grid over the nuisance proportion, then two finer grids around the best point: the
        # rejection mass is a smooth polynomial in it, and every evaluation is a true probability, so the
        # search can only fall short of the supremum, by far less than the reported precision
        grid = np.linspace(lo, hi, _GRID)
        values = mass(grid)
        for _ in range(2):
            best = int(np.argmax(values))
            left, right = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
            grid = np.concatenate([grid[best : best + 1], np.linspace(left, right, 41)])
            values = mass(grid)
        top = float(values.max())
        return float(min(1.0, top))


# --------------------------------------------------------------------------- inversion


def _bisect(accept: Callable[[float], bool], inside: float, outside: float, tol: float) -> float:
    """The last accepted value between an accepted ``inside`` and a rejected ``outside`` (bisection)."""
    while abs(outside - inside) > tol:
        mid = 0.5 * (inside + outside)
        if accept(mid):
            inside = mid
        else:
            outside = mid
    return inside


def _invert(
    accept: Callable[[float], bool],
    estimate: float,
    low_end: float,
    high_end: float,
    null: float,
    null_accepted: bool,
    tol: float,
) -> tuple[float, float]:
    """{v : accept(v)} as [low, high] around ``estimate``; ``null`` is bracketed by its known verdict.

    A side whose ``end`` is still accepted reports ``end`` (the caller decides whether that is a natural
    limit, like a difference of −1, or an unbounded ratio)."""
    estimate = min(max(estimate, low_end), high_end)
    bounds = []
    for end in (low_end, high_end):
        inside, outside = estimate, end
        if min(estimate, end) < null < max(estimate, end):  # the null lies between the estimate and this end
            if null_accepted:
                inside = null
            else:
                outside = null
        if outside == end and accept(end):
            bounds.append(end)
            continue
        bounds.append(_bisect(accept, inside, outside, tol))
    return bounds[0], bounds[1]


def _exact_intervals(k_c, n_c, k_t, n_t, alpha):
    """p-value, difference interval and lift interval of Barnard's score test and its inversion."""
    exact = _Exact(k_c, n_c, k_t, n_t)
    p = exact.p_value(0.0, "diff")
    null_accepted = not p < alpha
    diff = k_t / n_t - k_c / n_c
    edge = 1.0 - 1e-9
    low, high = _invert(
        lambda d: exact.p_value(d, "diff") >= alpha, diff, -edge, edge, 0.0, null_accepted, _TOL_EXACT
    )
    low, high = (-1.0 if low <= -edge else low), (1.0 if high >= edge else high)  # natural limits
    lift = _ratio_lift(
        lambda r: exact.p_value(r, "ratio") >= alpha, k_c, n_c, k_t, n_t, null_accepted, _TOL_EXACT
    )
    return p, (low, high), lift


def _score_intervals(k_c, n_c, k_t, n_t, alpha):
    """Miettinen–Nurminen score test (with the n/(n − 1) correction) and its inverted intervals."""
    crit = float(special.ndtri(1 - alpha / 2))
    z0 = float(_score_z(k_c, n_c, k_t, n_t, 0.0, "diff", correction=True))
    p = float(2 * special.ndtr(-abs(z0)))
    null_accepted = not p < alpha
    diff = k_t / n_t - k_c / n_c
    edge = 1.0 - 1e-9

    def accept_diff(d):
        return abs(float(_score_z(k_c, n_c, k_t, n_t, d, "diff", correction=True))) <= crit

    def accept_ratio(r):
        return abs(float(_score_z(k_c, n_c, k_t, n_t, r, "ratio", correction=True))) <= crit

    low, high = _invert(accept_diff, diff, -edge, edge, 0.0, null_accepted, _TOL_SCORE)
    low, high = (-1.0 if low <= -edge else low), (1.0 if high >= edge else high)  # natural limits
    return p, (low, high), _ratio_lift(accept_ratio, k_c, n_c, k_t, n_t, null_accepted, _TOL_SCORE)


def _ratio_lift(accept, k_c, n_c, k_t, n_t, null_accepted, tol) -> tuple[float | None, float | None] | None:
    """Lift interval ρ − 1 from the accepted set of ratios ρ = p_t/p_c, bisected on log ρ; None if k_c = 0."""
    if k_c == 0:
        return None
    rho_hat = (k_t / n_t) / (k_c / n_c)

    def accept_log(t):
        return accept(math.exp(t))

    if k_t == 0:
        # ρ̂ = 0: every ratio down to 0 is accepted; search upwards from the smallest ratio searched
        start, low = math.log(1e-12), 0.0
        if not accept_log(start):
            return None
    else:
        start, low = math.log(rho_hat), None
    lo_t, hi_t = _invert(accept_log, start, math.log(1e-12), math.log(_RATIO_MAX), 0.0, null_accepted, tol)
    high = None if hi_t >= math.log(_RATIO_MAX) else math.exp(hi_t) - 1.0
    if low is None:
        low = math.exp(lo_t) if lo_t > math.log(1e-12) else 0.0
    return low - 1.0, high


# --------------------------------------------------------------------------- the comparison


def _successes(arm: ArmMoments, name: str) -> int:
    k = arm.sum
    if not float(k).is_integer() or not 0 <= k <= arm.n:
        raise ValueError(f"{name}: successes (sum) must be a whole number between 0 and n={arm.n}, got {k}")
    return int(k)


def proportions_method(k_c: int, n_c: int, k_t: int, n_t: int) -> str:
    """The switching rule: z-test with ≥ 30 customers and ≥ 10 successes and failures per arm; else exact
    (Barnard) while n_c·n_t ≤ 2500, else the asymptotic score test."""
    if min(n_c, n_t) >= MIN_N and min(k_c, n_c - k_c, k_t, n_t - k_t) >= MIN_COUNT:
        return "z-test"
    return "barnard" if n_c * n_t <= EXACT_MAX_CELLS else "score"


def compare_proportions(control: ArmMoments, treatment: ArmMoments, *, alpha: float = 0.05) -> Estimate:
    """Difference of proportions: unpooled z-test + Wald/Fieller intervals, or Barnard's exact test / the
    Miettinen–Nurminen score test with their inverted intervals (module docstring)."""
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
    delta_lift = lift_interval(p_c, p_t, v_c, v_t, z)  # the point lift and its delta-method se
    if method == "z-test":
        p_value = float(2 * special.ndtr(-abs(effect) / se))
        ci_low, ci_high = effect - z * se, effect + z * se
        lift_low = delta_lift.ci_low if delta_lift else None
        lift_high = delta_lift.ci_high if delta_lift else None
    else:
        invert = _exact_intervals if method == "barnard" else _score_intervals
        p_value, (ci_low, ci_high), lift_bounds = invert(k_c, n_c, k_t, n_t, alpha)
        lift_low, lift_high = lift_bounds if lift_bounds else (None, None)
        if lift_low is None or lift_high is None:
            lift_low = lift_high = None
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
        lift=delta_lift.lift if delta_lift else None,
        lift_ci_low=lift_low if delta_lift else None,
        lift_ci_high=lift_high if delta_lift else None,
        p_value=min(p_value, 1.0),
        reason=None if delta_lift else "zero_control_mean",
        lift_se=delta_lift.se if delta_lift else None,
        var_mean_control=v_c,
        var_mean_treatment=v_t,
    )
