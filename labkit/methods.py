"""Which statistics each metric gets: the dispatch from a metric's type and the pilot's settings to the pure
functions of ``labkit.stats`` (DESIGN.md, Statistics).

- proportions — unpooled z-test, or Barnard's exact test with its inverted intervals for small counts
  (``compare_proportions`` chooses); with a ``covariate`` a 0/1 outcome is a mean and gets CUPED;
- means — Welch, or CUPED when the metric has a covariate or ``cuped: true``;
- ratios — the delta method; quantiles — a seeded bootstrap (the seed derived from the pilot id and the
  metric name, so a re-run gives the same numbers);
- an imported assignment with ``cohort.assignment.strata``: proportions and means post-stratified over the
  tool's blocks (``labkit.stats.poststrat``);
- a cluster-randomised pilot (``cohort.unit_column``): the cluster-robust t on cluster totals
  (``labkit.clustered``);
- sequential mode: each interval and p-value made always-valid with the asymptotic confidence sequence
  tuned to the cap (``max_size``).

Quantile statistics of an arm smaller than the lab's ``privacy.min_cell_size`` are withheld
(:func:`suppress`): a median of a handful of customers is a person's value.
"""

from __future__ import annotations

from dataclasses import replace

from labkit.spec import Pilot

# Every number of an estimate that would show a withheld quantile (labkit.stats.Estimate's fields).
_WITHHELD = (
    "mean_control", "mean_treatment", "effect", "se", "ci_low", "ci_high", "lift", "lift_ci_low",
    "lift_ci_high", "lift_se", "var_mean_control", "var_mean_treatment", "p_value",
)  # fmt: skip


def estimate(pilot: Pilot, data, arm: str, *, alpha: float):
    """One (metric, treatment arm) comparison with the method the metric type calls for (module docstring)."""
    from labkit import stats
    from labkit.stats.cuped import cuped  # not stats.cuped: once the submodule is imported, that name is it

    c, t = data.arms[pilot.control], data.arms[arm]
    if getattr(data, "totals", None) is not None:  # a cluster-randomised pilot: on cluster totals
        from labkit.clustered import cluster_estimate

        return cluster_estimate(pilot, data, arm, alpha=alpha)  # always-valid there, on clusters
    if getattr(data, "strata", None) is not None and data.kind in ("proportion", "mean"):
        from labkit.stats.poststrat import post_stratified

        est, _ = post_stratified(data.strata.get(pilot.control, {}), data.strata.get(arm, {}), alpha=alpha)
    elif data.kind == "proportion" and data.covariate is not None:
        # a 0/1 outcome is a mean: regression adjustment (CUPED) applies to it as to any mean
        est = cuped(c, t, alpha=alpha)
    elif data.kind == "proportion":
        est = stats.compare_proportions(c, t, alpha=alpha)
    elif data.kind == "ratio":
        est = stats.delta_ratio(c, t, alpha=alpha)
    elif data.kind == "quantile":
        from labkit.stats.quantiles import bootstrap_seed

        metric = pilot.metric(data.metric)
        est = stats.bootstrap_quantile(
            data.values[pilot.control],
            data.values[arm],
            q=metric.quantile,
            alpha=alpha,
            seed=bootstrap_seed(pilot.id, data.metric),
            n_boot=pilot.settings.bootstrap_samples,
        )
    elif data.covariate is not None:
        est = cuped(c, t, alpha=alpha)
    else:
        est = stats.welch(c, t, alpha=alpha)
    if pilot.settings.sequential and stats.widens(est):
        est = stats.always_valid(est, n=c.n + t.n, n_tuning=pilot.cap or c.n + t.n, alpha=alpha)
    return est


def suppress(est, data, pilot: Pilot, arm: str):
    """The estimate, or for a quantile over fewer customers than the lab's minimum cell size in either arm,
    the estimate with every number withheld (None) and the reason ``suppressed_small_cell``."""
    if data.kind != "quantile":
        return est
    floor = pilot.lab.spec.privacy.min_cell_size
    if min(len(data.values[pilot.control]), len(data.values[arm])) >= floor:
        return est
    return replace(est, **dict.fromkeys(_WITHHELD), reason="suppressed_small_cell")


def shown_estimate(pilot: Pilot, data, arm: str, *, alpha: float):
    """:func:`estimate` as the analysis reports it: small quantile cells withheld (:func:`suppress`)."""
    return suppress(estimate(pilot, data, arm, alpha=alpha), data, pilot, arm)


def dropped_strata_warning(data, pilot: Pilot, arm: str) -> str | None:
    """The warning for the blocks a post-stratified estimate could not use (an arm with fewer than two
    customers in it), or None when every block was used or the metric is not post-stratified."""
    if getattr(data, "strata", None) is None or data.kind not in ("proportion", "mean"):
        return None
    from labkit.stats.poststrat import post_stratified

    _, dropped = post_stratified(data.strata.get(pilot.control, {}), data.strata.get(arm, {}))
    if not dropped:
        return None
    return (
        f"metric '{data.metric}', arm '{arm}': {dropped} of the imported blocks have fewer than two "
        f"customers in '{pilot.control}' or '{arm}' and are left out of the post-stratified estimate"
    )
