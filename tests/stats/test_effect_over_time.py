"""The effect on each day (labkit.stats.over_time): Welch per day against scipy, the confidence sequence
against its formula, the labels, and degenerate days without NaN."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from labkit.stats.moments import ArmMoments
from labkit.stats.over_time import ROW_KEYS, effect_over_time

START = dt.date(2026, 11, 1)


def cumulative(rng, n: int, days: int, rate: float) -> list[ArmMoments]:
    """Customers' cumulative event counts on each day, as moments (each day one more Poisson draw)."""
    c = np.zeros(n)
    out = []
    for _ in range(days):
        c = c + rng.poisson(rate, n)
        out.append(ArmMoments.from_values(c))
    return out


def series(seed: int = 1, days: int = 5):
    rng = np.random.default_rng(seed)
    arms = {"control": cumulative(rng, 300, days, 0.3), "fast": cumulative(rng, 280, days, 0.36),
            "slow": cumulative(rng, 290, days, 0.25)}  # fmt: skip
    return list(range(1, days + 1)), [START + dt.timedelta(days=d) for d in range(1, days + 1)], arms


def welch_reference(c: ArmMoments, t: ArmMoments, alpha: float) -> tuple[float, float, float, float]:
    """effect, se, and the interval from scipy's t and the Welch–Satterthwaite df, computed here."""
    vc, vt = c.var / c.n, t.var / t.n
    df = (vc + vt) ** 2 / (vc**2 / (c.n - 1) + vt**2 / (t.n - 1))
    effect, se = t.mean - c.mean, math.sqrt(vc + vt)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return effect, se, effect - crit * se, effect + crit * se


def test_fixed_horizon_rows_are_welch_on_each_days_moments():
    days, as_of, arms = series()
    out = effect_over_time("replies", days, as_of, arms, control="control", alpha=0.1)
    assert out.interval == "fixed-horizon" and out.method == "welch-t"
    assert len(out.rows) == len(days) * 2
    for row in out.rows:
        assert tuple(row) == ROW_KEYS
        i = row["day"] - 1
        c, t = arms["control"][i], arms[row["arm"]][i]
        effect, _, low, high = welch_reference(c, t, 0.1)
        assert (row["n_control"], row["n_treatment"]) == (c.n, t.n)
        assert [row["effect"], row["ci_low"], row["ci_high"]] == pytest.approx([effect, low, high], rel=1e-9)
        assert row["as_of"] == (START + dt.timedelta(days=row["day"])).isoformat()
        assert row["metric"] == "replies"
    # day-major, then the treatment arms in order
    assert [(r["day"], r["arm"]) for r in out.rows[:4]] == [
        (1, "fast"),
        (1, "slow"),
        (2, "fast"),
        (2, "slow"),
    ]


def test_sequential_rows_are_the_confidence_sequence_tuned_to_the_cap():
    days, as_of, arms = series(2)
    alpha, cap = 0.05, 2000
    fixed = effect_over_time("replies", days, as_of, arms, control="control", alpha=alpha)
    cs = effect_over_time("replies", days, as_of, arms, control="control", alpha=alpha, sequential=True,
                          n_tuning=cap)  # fmt: skip
    assert cs.interval == "confidence sequence" and cs.method == "welch-t+cs"
    for f, row in zip(fixed.rows, cs.rows, strict=True):
        i = row["day"] - 1
        c, t = arms["control"][i], arms[row["arm"]][i]
        effect, se, _, _ = welch_reference(c, t, alpha)
        u = (c.n + t.n) * (math.log(1 - 2 * math.log(alpha)) - 2 * math.log(alpha)) / cap
        h = math.sqrt((u + 1) / u * math.log((u + 1) / alpha**2))
        assert [row["ci_low"], row["ci_high"]] == pytest.approx([effect - h * se, effect + h * se], rel=1e-9)
        assert row["effect"] == f["effect"]
        assert row["ci_low"] < f["ci_low"] and row["ci_high"] > f["ci_high"]  # wider than fixed-horizon


def test_a_day_without_variance_has_the_point_effect_and_no_interval():
    zero = ArmMoments(n=10, sum=0.0, sum_sq=0.0)
    one = ArmMoments.from_values([0, 1, 2, 0, 1, 0, 0, 3, 1, 0])
    arms = {"control": [zero, one], "fast": [zero, one]}
    for sequential in (False, True):
        rows = effect_over_time("m", [1, 2], ["2026-11-02", "2026-11-03"], arms, control="control",
                                sequential=sequential).rows  # fmt: skip
        assert rows[0]["effect"] == 0.0 and rows[0]["ci_low"] is None and rows[0]["ci_high"] is None
        assert rows[1]["ci_low"] is not None
        assert rows[0]["as_of"] == "2026-11-02"


def test_an_empty_arm_gives_no_effect():
    empty = ArmMoments(n=0, sum=0.0, sum_sq=0.0)
    row = effect_over_time("m", [1], [START], {"control": [empty], "fast": [empty]}, control="control").rows[
        0
    ]
    assert row["effect"] is None and row["ci_low"] is None and row["n_control"] == 0


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(control="nobody"), "no moments for the control arm 'nobody'"),
        (dict(control="control", alpha=1.5), "alpha must be in"),
    ],
)
def test_bad_input_raises(kw, message):
    days, as_of, arms = series(days=2)
    with pytest.raises(ValueError, match=message):
        effect_over_time("m", days, as_of, arms, **kw)


def test_days_and_moments_must_line_up():
    days, as_of, arms = series(days=3)
    with pytest.raises(ValueError, match="3 days but 2 as_of"):
        effect_over_time("m", days, as_of[:2], arms, control="control")
    arms["fast"] = arms["fast"][:2]
    with pytest.raises(ValueError, match="arm 'fast' has 2 days of moments for 3 days"):
        effect_over_time("m", days, as_of, arms, control="control")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.floats(0.01, 0.3))
def test_each_sequence_contains_the_fixed_interval_and_both_contain_the_effect(seed, days, alpha):
    d, as_of, arms = series(seed, days)
    fixed = effect_over_time("m", d, as_of, arms, control="control", alpha=alpha)
    cs = effect_over_time("m", d, as_of, arms, control="control", alpha=alpha, sequential=True, n_tuning=900)
    for f, s in zip(fixed.rows, cs.rows, strict=True):
        if f["ci_low"] is None:
            assert s["ci_low"] is None
            continue
        assert s["ci_low"] <= f["ci_low"] <= f["effect"] <= f["ci_high"] <= s["ci_high"]


def test_a_row_of_any_estimator_has_the_contracts_keys_and_the_label_follows_the_mode():
    """``over_time_row`` turns a day's estimate (here a point-only one, as a day without clusters enough
    gives) into the block's row; ``interval_kind`` labels the curve as ``effect_over_time`` does."""
    from labkit.stats.means import point_only
    from labkit.stats.over_time import interval_kind, over_time_row

    est = point_only("cluster-robust t (CR2)", 40, 38, 1.5, 1.75, "too_few")
    row = over_time_row(3, START + dt.timedelta(days=3), "replies", "fast", est)
    assert tuple(row) == ROW_KEYS
    assert row == {"day": 3, "as_of": "2026-11-04", "metric": "replies", "arm": "fast", "n_control": 40,
                   "n_treatment": 38, "effect": 0.25, "ci_low": None, "ci_high": None}  # fmt: skip
    assert over_time_row(3, "2026-11-04T12:00:00", "replies", "fast", est)["as_of"] == "2026-11-04T12:00:00"
    days, as_of, arms = series(days=2)
    for sequential in (False, True):
        kind = effect_over_time(
            "replies", days, as_of, arms, control="control", sequential=sequential
        ).interval
        assert interval_kind(sequential) == kind == ("confidence sequence" if sequential else "fixed-horizon")
