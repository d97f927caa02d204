"""Pure statistics on per-arm sufficient statistics: numpy and scipy only, no I/O.

Every comparison returns an `Estimate` (effect = treatment − control, lift = effect / control mean,
intervals at level 1 − alpha, a stable ``reason`` instead of NaN for degenerate data).
"""

from labkit.stats.bayes import BayesResult, bayes_lift
from labkit.stats.cuped import cuped
from labkit.stats.means import lift_interval, welch
from labkit.stats.meta import MetaResult, dersimonian_laird
from labkit.stats.moments import REASONS, ArmMoments, Estimate
from labkit.stats.multiplicity import adjust
from labkit.stats.power import mde_at_n, proportion_sd, sample_size_per_arm
from labkit.stats.proportions import compare_proportions, wilson_interval
from labkit.stats.quantiles import bootstrap_quantile
from labkit.stats.ratios import delta_ratio
from labkit.stats.sequential import always_valid, multiplier
from labkit.stats.srm import SrmResult, srm_test

__all__ = [
    "REASONS",
    "ArmMoments",
    "BayesResult",
    "Estimate",
    "MetaResult",
    "SrmResult",
    "adjust",
    "always_valid",
    "bayes_lift",
    "bootstrap_quantile",
    "compare_proportions",
    "cuped",
    "delta_ratio",
    "dersimonian_laird",
    "lift_interval",
    "mde_at_n",
    "multiplier",
    "proportion_sd",
    "sample_size_per_arm",
    "srm_test",
    "welch",
    "wilson_interval",
]
