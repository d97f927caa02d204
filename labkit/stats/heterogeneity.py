"""For whom does it work? The arm × segment interaction test on per-cell moments.

Per-segment effects are ordinary two-arm comparisons (means, proportions) on a segment's customers; what is
new is the question whether the effect *differs* between segments. The test is the F test of the
interaction terms of the customer-level OLS ``y ~ segment * arm`` against ``y ~ segment + arm``
(statsmodels ``anova_lm``/``compare_f_test`` on the two fits), computed from each (segment, arm) cell's
n, mean and sum of squared deviations — the sufficient statistics the data layer returns — so no row leaves
the engine:

    RSS_full = Σ cells M2            (the interaction model fits every cell mean)
    RSS_add  = RSS_full + Σ n·(ȳ_cell − fitted_cell)²,   fitted by weighted least squares on the cell means
    F = ((RSS_add − RSS_full) / q) / (RSS_full / (N − S·A)),   q = (S − 1)(A − 1) minus empty cells.

Cells without customers are dropped (the interaction model then has fewer parameters, and q shrinks with
them, as OLS on the customer rows would do). Proportions use the same linear-probability F test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special


@dataclass(frozen=True)
class Heterogeneity:
    f_statistic: float
    df_num: int
    df_den: int
    p_value: float


def interaction_test(
    segment: Sequence, arm: Sequence, n: Sequence[float], mean: Sequence[float], m2: Sequence[float]
) -> Heterogeneity | None:
    """The F test of arm × segment on one row per (segment, arm) cell; None when it is not estimable
    (fewer than two segments with both arms, or no residual degrees of freedom)."""
    seg_codes = np.unique(np.asarray(segment, dtype=object).astype(str), return_inverse=True)[1]
    arm_codes = np.unique(np.asarray(arm, dtype=object).astype(str), return_inverse=True)[1]
    n, mean, m2 = (np.asarray(v, dtype=float) for v in (n, mean, m2))
    keep = n > 0
    seg_codes, arm_codes, n, mean, m2 = seg_codes[keep], arm_codes[keep], n[keep], mean[keep], m2[keep]
    s = int(seg_codes.max()) + 1 if seg_codes.size else 0
    a = int(arm_codes.max()) + 1 if arm_codes.size else 0
    # the additive model's design on the cells: intercept, segment dummies, arm dummies (first level out)
    x = np.column_stack(
        [np.ones(n.size)]
        + [(seg_codes == j).astype(float) for j in range(1, s)]
        + [(arm_codes == j).astype(float) for j in range(1, a)]
    )
    rank_add = int(np.linalg.matrix_rank(x))
    q = n.size - rank_add
    df_den = int(round(n.sum())) - n.size
    if s < 2 or a < 2 or q < 1 or df_den < 1:
        return None
    w = np.sqrt(n)
    beta, *_ = np.linalg.lstsq(x * w[:, None], mean * w, rcond=None)
    extra = float(np.sum(n * (mean - x @ beta) ** 2))
    rss_full = float(m2.sum())
    if rss_full <= 0:
        return None
    f = (extra / q) / (rss_full / df_den)
    p = float(special.fdtrc(q, df_den, f))
    return Heterogeneity(f_statistic=f, df_num=q, df_den=df_den, p_value=p)
