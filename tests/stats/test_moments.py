"""ArmMoments (the engine's GROUP BY row) and the Estimate contract: no NaN, stable reasons, plain JSON."""

import json
import math

import numpy as np
import pytest

from labkit.stats import REASONS, ArmMoments, Estimate
from labkit.stats.moments import ESTIMATE_FIELDS


def test_moments_built_by_hand_from_n_sum_sum_sq():
    # what the engine's GROUP BY arm returns for y = [1, 2, 3, 4]
    arm = ArmMoments(n=4, sum=10.0, sum_sq=30.0)
    assert arm.mean == pytest.approx(np.mean([1, 2, 3, 4]), rel=1e-12)
    assert arm.var == pytest.approx(np.var([1, 2, 3, 4], ddof=1), rel=1e-12)


@pytest.mark.parametrize("size", [2, 3, 17, 1000])
def test_from_values_matches_numpy(size):
    rng = np.random.default_rng(size)
    x = rng.normal(5, 2, size)
    y = 3 * x + rng.exponential(4, size)
    arm = ArmMoments.from_values(y, x)
    assert arm.n == size
    assert arm.mean == pytest.approx(y.mean(), rel=1e-12)
    assert arm.mean_x == pytest.approx(x.mean(), rel=1e-12)
    assert arm.var == pytest.approx(np.var(y, ddof=1), rel=1e-9)
    assert arm.var_x == pytest.approx(np.var(x, ddof=1), rel=1e-9)
    assert arm.cov_xy == pytest.approx(np.cov(x, y, ddof=1)[0, 1], rel=1e-9)


def test_add_pools_two_arms():
    rng = np.random.default_rng(1)
    y1, x1, y2, x2 = rng.normal(size=(4, 30))
    pooled = ArmMoments.from_values(y1, x1) + ArmMoments.from_values(y2, x2)
    direct = ArmMoments.from_values(np.r_[y1, y2], np.r_[x1, x2])
    for name in ("n", "sum", "sum_sq", "sum_x", "sum_x_sq", "sum_xy"):
        assert getattr(pooled, name) == pytest.approx(getattr(direct, name), rel=1e-12)
    assert pooled.var == pytest.approx(np.var(np.r_[y1, y2], ddof=1), rel=1e-9)


def test_empty_and_single_arm_have_no_mean_or_variance_instead_of_nan():
    empty, one = ArmMoments(n=0, sum=0.0, sum_sq=0.0), ArmMoments.from_values([7.0])
    assert (empty.mean, empty.var, empty.cov_xy) == (None, None, None)
    assert one.mean == 7.0
    assert (one.var, one.var_x, one.cov_xy) == (None, None, None)


def test_constant_values_with_a_large_mean_have_exactly_zero_variance():
    # Σy² − (Σy)²/n cancels catastrophically here; rounding noise must not pose as variance
    arm = ArmMoments.from_values(np.full(1000, 1e6 + 0.1))
    assert arm.var == 0.0


def test_small_real_variance_on_a_large_mean_survives():
    y = 1e4 + np.random.default_rng(2).normal(0, 1, 500)
    assert ArmMoments.from_values(y).var == pytest.approx(np.var(y, ddof=1), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1, "sum": 0.0, "sum_sq": 0.0}, r"n must be >= 0, got -1"),
        ({"n": 2.5, "sum": 0.0, "sum_sq": 0.0}, r"n must be a whole number"),
        ({"n": 2, "sum": math.nan, "sum_sq": 0.0}, r"ArmMoments\.sum must be finite"),
        ({"n": 2, "sum": 1.0, "sum_sq": math.inf}, r"ArmMoments\.sum_sq must be finite"),
        ({"n": 2, "sum": 1.0, "sum_sq": -1.0}, r"sum_sq is a sum of squares"),
    ],
)
def test_bad_moments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArmMoments(**kwargs)


def test_from_values_rejects_nan_and_mismatched_covariate():
    with pytest.raises(ValueError, match="finite"):
        ArmMoments.from_values([1.0, math.nan])
    with pytest.raises(ValueError, match="must match"):
        ArmMoments.from_values([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        ArmMoments.from_values([[1.0, 2.0]])


def test_numpy_scalars_become_plain_python_numbers():
    arm = ArmMoments(n=np.int64(3), sum=np.float32(1.5), sum_sq=np.float64(2.0))
    assert type(arm.n) is int and type(arm.sum) is float


def _estimate(**overrides):
    fields = dict(
        method="welch-t",
        n_control=10,
        n_treatment=10,
        mean_control=1.0,
        mean_treatment=1.5,
        effect=0.5,
        se=0.2,
        ci_low=0.1,
        ci_high=0.9,
        lift=0.5,
        lift_ci_low=0.1,
        lift_ci_high=0.9,
        p_value=0.02,
    )
    return Estimate(**(fields | overrides))


def test_estimate_to_dict_is_json_ready_with_every_field():
    est = _estimate(p_value=np.float64(0.02), n_control=np.int64(10))
    data = est.to_dict()
    assert tuple(data) == ESTIMATE_FIELDS
    assert json.loads(json.dumps(data)) == data
    assert type(data["p_value"]) is float and type(data["n_control"]) is int


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_estimate_refuses_nan_and_inf(bad):
    with pytest.raises(ValueError, match="degenerate data must give None and a reason"):
        _estimate(se=bad)


def test_estimate_reason_must_be_a_known_code():
    assert _estimate(reason="too_few").reason == "too_few"
    with pytest.raises(ValueError, match="unknown reason 'weird'"):
        _estimate(reason="weird")
    assert all(code == code.lower() and " " not in code for code in REASONS)


# --- impossible sums are refused, not clamped (issue 12, item 5) ------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        # Σy² = 20 < (Σy)²/n = 25: a variance of −5/3, which used to be read silently as 0
        ({"n": 4, "sum": 10.0, "sum_sq": 20.0}, r"Σy² = 20 is below \(Σy\)²/n = 25"),
        # the same for the covariate / ratio denominator
        ({"n": 4, "sum": 1.0, "sum_sq": 1.0, "sum_x": 10.0, "sum_x_sq": 24.0}, r"Σx² = 24 is below"),
        # a cross-product past Cauchy–Schwarz: |Σ(x − x̄)(y − ȳ)| = 3 > √(2·2)
        (
            {"n": 3, "sum": 0.0, "sum_sq": 2.0, "sum_x": 0.0, "sum_x_sq": 2.0, "sum_xy": 3.0},
            r"the cross-product Σxy is past the Cauchy–Schwarz bound",
        ),
        # an empty arm with sums
        ({"n": 0, "sum": 1.0, "sum_sq": 1.0}, r"an arm with n = 0 has non-zero sums"),
    ],
)
def test_impossible_sums_raise_a_clear_data_error(kwargs, what):
    from labkit.errors import LabkitError
    from labkit.stats.moments import MomentsError

    with pytest.raises(MomentsError, match=r"inconsistent sufficient statistics: " + what) as info:
        ArmMoments(**kwargs)
    # a LabkitError: the CLI prints its one line instead of a traceback; a ValueError for stats callers
    assert isinstance(info.value, LabkitError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scale", [1.0, 1e6, 1e-6])
def test_rounding_noise_below_the_tolerance_is_still_read_as_zero_variance(scale):
    # a constant column whose engine sums disagree in the last digits, either way: zero variance, no error
    n, value = 1000, 3.7 * scale
    total = n * value
    for wobble in (1 - 1e-12, 1 + 1e-12, 1 - 5e-10):
        arm = ArmMoments(n=n, sum=total, sum_sq=total * total / n * wobble)
        assert arm.var == 0.0 or arm.var == pytest.approx(0.0, abs=1e-9 * value * value)


def test_the_tolerance_is_relative_to_the_sums_magnitude():
    from labkit.stats.moments import IMPOSSIBLE_TOL, MomentsError

    n, total = 10, 1e8
    square = total * total / n
    ArmMoments(n=n, sum=total, sum_sq=square * (1 - 0.5 * IMPOSSIBLE_TOL))  # noise at this magnitude
    with pytest.raises(MomentsError):
        ArmMoments(n=n, sum=total, sum_sq=square * (1 - 2 * IMPOSSIBLE_TOL))


@pytest.mark.parametrize("seed", range(5))
def test_real_data_with_covariates_never_trips_the_check(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(1e5, 1.0, 5000)
    y = 3 * x + rng.normal(0, 1e-3, 5000)  # nearly collinear, large means: the hardest honest case
    arm = ArmMoments.from_values(y, x)
    assert arm.cov_xy == pytest.approx(np.cov(x, y)[0, 1], rel=1e-3)
