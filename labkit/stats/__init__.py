"""Pure statistics on per-arm sufficient statistics: numpy and scipy only, no I/O.

Every comparison returns an `Estimate` (effect = treatment − control, lift = effect / |control mean|,
intervals at level 1 − alpha that exclude 0 exactly when p < alpha, a stable ``reason`` instead of NaN for
degenerate data).
"""

import importlib

# name -> submodule. Imported on first use (PEP 562), so `from labkit.stats.meta import ...` (compare) does
# not pay for scipy.stats, which the tests and bayes/proportions need.
_WHERE = {
    "BayesResult": "bayes", "bayes_lift": "bayes", "cuped": "cuped", "lift_interval": "means", "welch": "means",
    "MetaResult": "meta", "dersimonian_laird": "meta", "REASONS": "moments", "ArmMoments": "moments",
    "Estimate": "moments", "adjust": "multiplicity", "mde_at_n": "power", "proportion_sd": "power",
    "sample_size_per_arm": "power", "compare_proportions": "proportions", "wilson_interval": "proportions",
    "bootstrap_quantile": "quantiles", "delta_ratio": "ratios", "always_valid": "sequential",
    "multiplier": "sequential", "widens": "sequential", "SrmResult": "srm", "srm_test": "srm",
}  # fmt: skip


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'labkit.stats' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"labkit.stats.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


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
    "widens",
    "wilson_interval",
]
