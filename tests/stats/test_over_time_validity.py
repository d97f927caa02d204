"""Is the over-time confidence sequence time-uniformly valid? A seeded A/A simulation (issue #16).

In `labkit analyze --over-time` the customers are fixed: every assigned customer is counted in its arm on
every day (a 0 before its first event), and what grows from day to day is each customer's accumulated
outcome, not the sample. So n, and with it the confidence sequence's multiplier h
(``labkit.stats.sequential.multiplier(n_c + n_t, cap, alpha)``), is the same on every day: the always-valid
guarantee of Waudby-Smith et al. (a sample of independent customers that grows) does not carry over as
such, and this file measures what holds.

How labkit builds the curve, reproduced: c_i(d) is customer i's value on day d as
``labkit.data.over_time`` defines it (converted by day d for ``any``, events so far for ``count``, spend so
far for ``sum``); per (arm, day) the deltas Σ_i c_i(d) − c_i(d−1) and Σ_i c_i(d)² − c_i(d−1)² are summed
over customers and cumulated over days in float64 in day order, as ``_cumulated`` does; n is the arm's
customers every day and the cap is the customers assigned (the tightest tuning labkit uses: n never
exceeds the cap). The per-day statistics are labkit's own, ``effect_over_time(..., sequential=True/False,
n_tuning=cap)`` as ``labkit.over_time`` calls it; over thousands of pilots a vectorised copy of it (Welch's
t on the moments, the sequence's half-width h·se) is used, checked equal to ``effect_over_time`` on the
first pilots.

Found (A/A, alpha 0.05, 2000 pilots per kind, the seeds below; "ever" = some day's interval excludes 0):

* 30-day windows (30 or 44 daily looks): the confidence sequence is ever wrong in 1.4–3.1 % of pilots
  (converted 3.1 %, replies with a 14-day ramp 2.5 %, spend 1.4 %) — within alpha; fixed-horizon intervals
  read every day are ever wrong in 27–34 %, and on the last day alone in 4.5–5.1 % (valid at one
  pre-planned look) — hence the two labels.
* A day whose control arm has no event yet was not widened before 2026-12-06 (``KEEPS_WELCH_…`` below): with
  the ramp, 26 % of pilots have such an early day (and an event in treatment), and the curve was ever wrong
  in 4.9 % instead of 2.5 %. Now widened (``labkit.stats.sequential.widens``).
* Long windows are not covered: with a constant h the curve is a constant threshold over looks whose
  information keeps growing (corr(Z_d, Z_d') ≈ sqrt(V_d / V_d'), V the variance of the accumulated
  outcome), and the chance that some day crosses grows with log(V_last / V_first). Widened every day, a
  conversion of 0.5 %/day over a 730-day window is ever wrong in 6.1 % of 20 000 pilots (bound 5.6 %);
  1 %/day over 365 days ~5.9 % (40 000 pilots of 500 per arm); 5 %/day over 90 days 3.9–5.1 %.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pytest
from scipy import special, stats

from labkit.stats.moments import CANCELLATION_TOL, ArmMoments
from labkit.stats.over_time import effect_over_time
from labkit.stats.sequential import multiplier

ALPHA = 0.05
# labkit.stats.over_time widens every day with an effect interval, a day whose control arm has no event yet
# (mean 0: reason "zero_control_mean", only the lift is undefined) included (labkit.stats.sequential.widens);
# until 2026-12-06 that day kept Welch's fixed-horizon interval. The copy below does the same.
KEEPS_WELCH_WITHOUT_CONTROL_EVENTS = False
PILOTS = 2000  # simulated A/A pilots per outcome kind
START = dt.date(2026, 11, 1)


# --------------------------------------------------------------------------------------------------
# per-(arm, day) moments, built as labkit.data.over_time builds them


def cumulated(dy: np.ndarray, dy2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-(pilot, arm, day) deltas of Σc and Σc² cumulated over days (the last axis) in day order."""
    return np.cumsum(dy, axis=-1), np.cumsum(dy2, axis=-1)


def converted_by_day(rng, pilots: int, n: int, days: int, hazard: float):
    """``any``: converted by day d, a first-event day geometric with a daily ``hazard``; the deltas are the
    customers converting that day (c² = c)."""
    day = np.minimum(rng.geometric(hazard, (pilots, 2, n)), days + 1)  # days + 1: after the window
    flat = (np.arange(2 * pilots, dtype=np.int64).reshape(pilots, 2, 1) * (days + 2) + day).ravel()
    per_day = np.bincount(flat, minlength=2 * pilots * (days + 2)).reshape(pilots, 2, days + 2)
    dy = per_day[:, :, 1 : days + 1].astype(np.float64)
    return cumulated(dy, dy)


def accumulating(rng, pilots: int, n: int, days: int, increment: Callable, ramp: int = 0, window: int = 30):
    """``count``/``sum``: each day a customer adds ``increment(rng, shape)`` inside its window; customers are
    assigned over the first ``ramp`` days (0 before their window opens, nothing after it closes)."""
    entry = rng.integers(0, ramp + 1, (pilots, 2, n))
    c = np.zeros((pilots, 2, n))
    dy, dy2 = np.empty((pilots, 2, days)), np.empty((pilots, 2, days))
    for d in range(days):
        x = increment(rng, c.shape) * ((entry <= d) & (d < entry + window))
        new = c + x
        dy[:, :, d], dy2[:, :, d] = x.sum(axis=2), (new * new - c * c).sum(axis=2)
        c = new
    return cumulated(dy, dy2)


def replies(rng, shape):
    return (rng.random(shape, dtype=np.float32) < 0.1).astype(np.float64)


def spend(rng, shape):
    return (rng.random(shape, dtype=np.float32) < 0.05) * np.round(rng.lognormal(3.0, 1.0, shape), 2)


SCENARIOS = {  # name: (customers per arm, days, simulate(rng, pilots, n, days))
    "converted-5%-a-day": (200, 30, lambda rng, p, n, d: converted_by_day(rng, p, n, d, 0.05)),
    "replies-ramp-14-days": (150, 44, lambda rng, p, n, d: accumulating(rng, p, n, d, replies, ramp=14)),
    "spend": (150, 30, lambda rng, p, n, d: accumulating(rng, p, n, d, spend)),
}


@pytest.fixture(scope="module", params=list(SCENARIOS))
def curves(request):
    n, days, simulate = SCENARIOS[request.param]
    rng = np.random.default_rng(20261216 + list(SCENARIOS).index(request.param))
    total, total_sq = simulate(rng, PILOTS, n, days)
    return request.param, n, total, total_sq


# --------------------------------------------------------------------------------------------------
# the per-day intervals: labkit's, and a vectorised copy checked against it


def intervals(total, total_sq, n: int, cap: int, alpha: float = ALPHA, sequential: bool = False, *,
              every_day: bool = False):  # fmt: skip
    """(ci_low, ci_high) per (pilot, day) of treatment (arm 1) minus control (arm 0), NaN where labkit gives
    no interval: ``welch`` on the moments (df by Welch–Satterthwaite), widened to h·se in sequential mode
    (``every_day``: on every day with a variance, as a confidence sequence should be)."""
    ss = total_sq - total * total / n
    ss = np.where(ss <= CANCELLATION_TOL * total_sq, 0.0, ss)  # labkit.stats.moments reads noise as 0
    v = ss / (n - 1) / n
    v_c, v_t = v[:, 0], v[:, 1]
    se = np.sqrt(v_c + v_t)
    effect = total[:, 1] / n - total[:, 0] / n
    some = (v_c > 0) | (v_t > 0)
    half = np.full(se.shape, np.nan)
    welch_days = some
    if sequential:
        widened = some if every_day or not KEEPS_WELCH_WITHOUT_CONTROL_EVENTS else some & (total[:, 0] != 0)
        half[widened] = multiplier(2 * n, cap, alpha) * se[widened]
        welch_days = some & ~widened
    if welch_days.any():
        a, b = v_c[welch_days], v_t[welch_days]
        a, b = a / (a + b), b / (a + b)
        df = 1.0 / (a * a / (n - 1) + b * b / (n - 1))
        half[welch_days] = special.stdtrit(df, 1 - alpha / 2) * se[welch_days]
    return effect - half, effect + half


def ever_excludes_zero(low, high) -> np.ndarray:
    """Per pilot: some day's interval lies wholly above or below 0."""
    return ((low > 0) | (high < 0)).any(axis=1)


def labkit_rows(total, total_sq, n: int, cap: int, sequential: bool) -> list[dict]:
    """One pilot's curve through labkit (``effect_over_time`` fed as ``labkit.over_time`` feeds it)."""
    days = range(1, total.shape[-1] + 1)
    arms = {
        arm: [ArmMoments(n=n, sum=s, sum_sq=q) for s, q in zip(total[i], total_sq[i], strict=True)]
        for i, arm in enumerate(("control", "fast"))
    }
    as_of = [START + dt.timedelta(days=d) for d in days]
    curve = effect_over_time(
        "m", list(days), as_of, arms, control="control", alpha=ALPHA, sequential=sequential, n_tuning=cap
    )
    return curve.to_list()


def upper_bound(pilots: int, alpha: float = ALPHA) -> float:
    """The largest count of pilots in error a true rate alpha gives (two-sided 99.99 % binomial)."""
    return stats.binom.interval(0.9999, pilots, alpha)[1]


# --------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("sequential", [False, True])
def test_the_simulated_curves_are_labkits_effect_over_time(curves, sequential):
    _, n, total, total_sq = curves
    low, high = intervals(total, total_sq, n, 2 * n, sequential=sequential)
    for pilot in range(3):
        rows = labkit_rows(total[pilot], total_sq[pilot], n, 2 * n, sequential)
        got_low = np.array([np.nan if r["ci_low"] is None else r["ci_low"] for r in rows])
        got_high = np.array([np.nan if r["ci_high"] is None else r["ci_high"] for r in rows])
        np.testing.assert_allclose(got_low, low[pilot], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got_high, high[pilot], rtol=1e-12, atol=1e-15)


def test_the_confidence_sequence_read_every_day_keeps_alpha(curves):
    name, n, total, total_sq = curves
    wrong = int(ever_excludes_zero(*intervals(total, total_sq, n, 2 * n, sequential=True)).sum())
    assert wrong <= upper_bound(PILOTS), (
        f"{name}: the confidence sequence excluded 0 on some day in {wrong}/{PILOTS} A/A pilots "
        f"(alpha {ALPHA}, bound {upper_bound(PILOTS):.0f})"
    )


def test_fixed_horizon_intervals_read_every_day_exceed_alpha_but_hold_it_on_the_last_day(curves):
    name, n, total, total_sq = curves
    low, high = intervals(total, total_sq, n, 2 * n)
    ever = int(ever_excludes_zero(low, high).sum())
    last = int(ever_excludes_zero(low[:, -1:], high[:, -1:]).sum())
    lo, hi = stats.binom.interval(0.9999, PILOTS, ALPHA)
    assert ever > hi and ever > 3 * ALPHA * PILOTS, f"{name}: {ever}/{PILOTS} ever, bound {hi:.0f}"
    assert lo <= last <= hi, f"{name}: {last}/{PILOTS} on the last day, bounds {lo:.0f}..{hi:.0f}"


def test_a_day_without_control_events_gets_the_confidence_sequence_too():
    n = 150
    control = ArmMoments(n=n, sum=0.0, sum_sq=0.0)  # day 1: no control customer has replied yet
    treatment = ArmMoments(n=n, sum=6.0, sum_sq=8.0)
    row = labkit_rows(
        np.array([[control.sum], [treatment.sum]]), np.array([[0.0], [8.0]]), n, 2 * n, sequential=True
    )[0]
    se = np.sqrt(treatment.var / n)
    assert row["ci_high"] - row["ci_low"] == pytest.approx(
        2 * multiplier(2 * n, 2 * n, ALPHA) * se, rel=1e-12
    )


@pytest.mark.xfail(
    strict=True,
    reason="one multiplier h every day for fixed customers whose outcomes accumulate: over a 730-day window "
    "(0.5 %/day converting) some day's sequence excludes 0 in ~6.1 % of A/A pilots at alpha 5 % "
    "(module docstring)",
)
def test_the_confidence_sequence_keeps_alpha_over_a_two_year_window():
    pilots, n, days, chunk = 20_000, 200, 730, 2000
    rng = np.random.default_rng(730)
    wrong = 0
    for _ in range(pilots // chunk):  # in chunks: a pilot's curve is 730 days long
        total, total_sq = converted_by_day(rng, chunk, n, days, 0.005)
        low, high = intervals(total, total_sq, n, 2 * n, sequential=True, every_day=True)
        wrong += int(ever_excludes_zero(low, high).sum())
    assert wrong <= upper_bound(pilots), f"{wrong}/{pilots} ever excluded 0; bound {upper_bound(pilots):.0f}"
