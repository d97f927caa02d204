"""Cluster-randomised pilots (``cohort.unit_column``) in the analysis: cluster totals -> estimates with the
ICC and design effect, the sample-ratio check on clusters, and a saturation design's ``spillover`` block.

The data are ``labkit.data.clusters.cluster_totals`` (one row per (cluster, arm), never a customer row);
the estimator is ``labkit.stats.cluster.cluster_contrast`` (per cell Σ cluster sums / Σ cluster sizes,
CR2 variance with Bell–McCaffrey t degrees of freedom). This module is the glue: it builds the cells of a
comparison, turns the contrast into the ``Estimate`` every other method returns (lift by the shared Fieller
``lift_interval`` on the per-arm variances at the contrast's t critical value, so the lift interval excludes
0 exactly when the test rejects), and says what the JSON adds (``ClusterSummary``, ``SpilloverRow``).

Choices (README "Statistics"):
- Proportions, means and ratios run on cluster totals (a ratio's n is its denominator total). Quantiles
  have no totals: their values come with their clusters (``labkit.data.cluster_values``) and get the
  cluster bootstrap of ``labkit.stats.cluster_bootstrap`` (whole clusters resampled within each arm; no
  interval below its ``MIN_CLUSTERS`` clusters per arm, where it under-covers), seeded like the
  customer-level bootstrap (``labkit.stats.quantiles.bootstrap_seed``). A quantile row has no ICC and no
  design effect (None, as for a ratio: the design effect 1 + (n̄ − 1)·ICC is a mean's); a plan with a
  quantile primary takes its values' ICC, a stand-in as the plan's SD is. Saturation designs refuse
  quantile metrics at validation (their direct and spillover effects are contrasts of cell totals).
- CUPED on cluster totals: θ is the slope of the cluster-level residual totals, pooled within the compared
  cells (all three cells of a saturation design), θ = Σ e_y·e_x / Σ e_x² with e_y = y_g − ȳ_c·n_g and e_x = x_g − x̄_c·n_g (the θ that minimises the
  cluster-robust variance the test uses, as the customer-level CUPED's θ minimises Welch's). The adjusted
  totals are y_g − θ·(x_g − x̄·n_g) with x̄ the covariate's mean over the compared cells: centring each cell
  at its own x̄_c would leave every cell mean, hence the effect, unadjusted (only the variance would shrink,
  an interval that lies). The adjusted effect is Δȳ − θ·Δx̄, as in ``labkit.stats.cuped``; the reported
  means are the adjusted ones; ``variance_reduction`` is 1 − Var(adjusted)/Var(unadjusted), both CR2.
- Sequential mode: the always-valid widening of ``labkit.stats.always_valid`` with the clusters as the
  sample size (tuned to ``max_clusters``, else to the clusters assigned).
- Saturation (Baird et al. 2018): cell 0 = customers of pure-control clusters (share 0), cell 1 = treated
  customers, cell 2 = untreated customers of treated clusters (share > 0). The main metric rows of such a
  pilot are the direct effect, cell 1 against cell 0; the ``spillover`` block adds cell 2 against cell 0.
- ICC: ``icc_anova`` within the compared cells (for a proportion Σy² = Σy); none for a ratio (its n is a
  denominator, not customers). Design effect: 1 + (n̄_w − 1)·ICC, n̄_w the size-weighted cluster size
  of the compared customers.
- SRM: clusters per arm against the arms' weights; in a saturation design clusters per saturation level
  against equal shares (the draw allocates levels equally).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import numpy

    from labkit.data.cluster_values import ClusterValues
    from labkit.data.clusters import ClusterTotals
    from labkit.data.sources import Engine
    from labkit.result import ClusterSummary, SpilloverRow
    from labkit.spec import Pilot
    from labkit.stats.cluster import ClusterCells
    from labkit.stats.moments import Estimate
    from labkit.stats.srm import SrmResult

METHOD = "cluster-robust t (CR2)"


@dataclass(frozen=True)
class ClusterData:
    """A cluster pilot's metric as the analysis reads a ``MetricData`` (per-arm moments summed over the
    clusters, counts, covariate), with the per-(cluster, arm) ``totals`` its estimates use and, in a
    saturation design, each cluster's treated share (``shares``)."""

    metric: str
    kind: str
    arms: dict
    assigned: dict[str, int]
    missing: dict[str, int]
    covariate: str | None
    totals: ClusterTotals
    shares: dict[str, float] | None = None
    values: dict | None = None  # a quantile's sorted values per arm (MetricData's field: the privacy floor)
    strata: None = None
    cluster_values: ClusterValues | None = None  # a quantile's values with their clusters
    # a quantile's bootstrap replicates per arm, reused at every level (labkit.stats.cluster_bootstrap)
    replicates: dict = field(default_factory=dict, compare=False, repr=False)


def is_clustered(data) -> bool:
    return getattr(data, "totals", None) is not None


def cluster_data(engine: Engine, pilot: Pilot, units: ibis.Table, *, as_of=None) -> dict[str, ClusterData]:
    """Every metric of a cluster pilot, in the order of the pilot file, batched as a plain pilot's
    (``labkit.data.clusters.pilot_totals``: one query for the per-customer metrics, one per event metric)."""
    from labkit.data.cluster_values import cluster_values
    from labkit.data.clusters import pilot_totals

    unit = pilot.spec.cohort.unit_column
    shares = _shares(engine, units) if pilot.spec.cohort.saturation else None
    batched = [m for m in pilot.spec.metrics if m.type != "quantile"]  # a quantile: its values, one query
    totals = pilot_totals(engine, pilot, batched, units, unit, as_of=as_of) if batched else {}
    return {
        m.name: of_values(pilot, cluster_values(engine, pilot, m, units, unit, as_of=as_of))
        if m.type == "quantile"
        else of_totals(pilot, totals[m.name], shares)
        for m in pilot.spec.metrics
    }


def _shares(engine: Engine, units: ibis.Table) -> dict[str, float]:
    """Each cluster's drawn treated share, from the assignment's ``cluster`` and ``saturation`` columns."""
    pairs = units.select("cluster", "saturation").distinct()
    return {str(r["cluster"]): float(r["saturation"]) for r in engine.con.to_pyarrow(pairs).to_pylist()}


def of_totals(pilot: Pilot, totals: ClusterTotals, shares: dict[str, float] | None = None) -> ClusterData:
    """The totals with their per-arm sums (the moments a customer-level query would give: sums add up)."""
    from labkit.stats.moments import ArmMoments

    t = totals
    arms = list(pilot.arms) + sorted({str(a) for a in t.arm} - set(pilot.arms))

    def moments(arm: str) -> ArmMoments:
        s = t.arm == arm
        return ArmMoments(
            n=int(t.n[s].sum()), sum=float(t.y[s].sum()), sum_sq=float(t.y2[s].sum()),
            sum_x=float(t.x[s].sum()), sum_x_sq=float(t.x2[s].sum()), sum_xy=float(t.xy[s].sum()),
        )  # fmt: skip

    return ClusterData(
        metric=t.metric,
        kind=t.kind,
        arms={a: moments(a) for a in arms},
        assigned={a: int(t.assigned[t.arm == a].sum()) for a in arms},
        missing={a: int(t.missing[t.arm == a].sum()) for a in arms},
        covariate=t.covariate,
        totals=t,
        shares=shares,
    )


def of_values(pilot: Pilot, values: ClusterValues) -> ClusterData:
    """A quantile's values with their clusters as ``ClusterData``: the per-arm moments of its totals, the
    sorted values per arm (the privacy floor of ``labkit.methods.suppress`` counts them)."""
    import numpy as np

    data = of_totals(pilot, values.totals)
    arms = {a: np.sort(values.of(a)[0]) for a in data.arms}
    return replace(data, values=arms, cluster_values=values)


# --------------------------------------------------------------------------------------------------
# the cells of a comparison


@dataclass(frozen=True)
class _Rows:
    """The compared rows: their cells (0 control, 1 treatment, 2 spillover), y, n, Σy², x, customers."""

    cells: ClusterCells
    x: numpy.ndarray
    customers: numpy.ndarray


def _rows(pilot: Pilot, data: ClusterData, arm: str) -> _Rows:
    import numpy as np

    from labkit.stats.cluster import ClusterCells

    t = data.totals
    keep = (t.arm == arm) | (t.arm == pilot.control)
    if data.shares is None:
        cell = np.where(t.arm == arm, 1, 0)
    else:
        share = np.array([data.shares.get(str(g), 0.0) for g in t.cluster], dtype=float)
        cell = np.where(t.arm == arm, 1, np.where(share > 0, 2, 0))
    ratio = data.kind == "ratio"
    # no customer-level ICC for a ratio (n is a denominator) nor a quantile (its design effect is no mean's)
    y2 = None if ratio or data.kind == "quantile" else (t.y if data.kind == "proportion" else t.y2)[keep]
    n = (t.x if ratio else t.n)[keep]
    cells = ClusterCells.of(t.cluster[keep], cell[keep], t.y[keep], n, y2)
    return _Rows(cells, np.zeros(n.size) if ratio else t.x[keep].astype(float), t.n[keep].astype(float))


def _cuped(rows: _Rows) -> ClusterCells:
    """The cells with CUPED-adjusted totals y − θ·(x − x̄·n) (module docstring)."""
    import numpy as np

    c = rows.cells
    k = c.n_cells
    ns = np.bincount(c.cell, weights=c.n, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        my = np.nan_to_num(np.bincount(c.cell, weights=c.y, minlength=k) / ns)
        mx = np.nan_to_num(np.bincount(c.cell, weights=rows.x, minlength=k) / ns)
    ey, ex = c.y - my[c.cell] * c.n, rows.x - mx[c.cell] * c.n
    sxx = float(ex @ ex)
    theta = float(ey @ ex) / sxx if sxx > 0 else 0.0
    xbar = float(rows.x.sum() / c.n.sum()) if c.n.sum() > 0 else 0.0
    return replace(c, y=c.y - theta * (rows.x - xbar * c.n), y2=None)


def adjusted_cells(
    pilot: Pilot, data: ClusterData, arm: str, rows: _Rows | None = None
) -> tuple[ClusterCells, ClusterCells | None]:
    """(the cells the estimate uses, the unadjusted cells when CUPED adjusted them, else None)."""
    rows = rows or _rows(pilot, data, arm)
    if data.covariate is not None and data.kind in ("mean", "proportion"):
        return _cuped(rows), rows.cells
    return rows.cells, None


# --------------------------------------------------------------------------------------------------
# estimates


def cluster_estimate(pilot: Pilot, data: ClusterData, arm: str, *, alpha: float) -> Estimate:
    """The (metric, arm) comparison on cluster totals as an ``Estimate`` (the direct effect in a saturation
    design), always-valid in sequential mode."""
    from labkit import stats

    rows = _rows(pilot, data, arm)
    if data.kind == "quantile":
        est = quantile_estimate(pilot, data, arm, alpha=alpha)
        cells = rows.cells
    else:
        cells, raw = adjusted_cells(pilot, data, arm, rows)
        counts = (
            int(rows.customers[rows.cells.cell == 0].sum()),
            int(rows.customers[rows.cells.cell == 1].sum()),
        )
        est = contrast_estimate(cells, 1, 0, alpha=alpha, raw=raw, counts=counts)
    if pilot.settings.sequential and stats.widens(est):
        n = cells.clusters_in(0) + cells.clusters_in(1)
        tuning = pilot.spec.cohort.max_clusters or len(set(data.totals.cluster))
        est = stats.always_valid(est, n=n, n_tuning=max(tuning, n), alpha=alpha)
    return est


def quantile_estimate(pilot: Pilot, data: ClusterData, arm: str, *, alpha: float) -> Estimate:
    """A quantile's (arm vs control) cluster bootstrap (module docstring), seeded by the pilot id and the
    metric name as the customer-level bootstrap is (``labkit.stats.quantiles.bootstrap_seed``)."""
    from labkit.stats.cluster_bootstrap import cluster_bootstrap_quantile
    from labkit.stats.quantiles import bootstrap_seed

    if data.shares is not None:  # pragma: no cover - validation refuses quantiles in saturation designs
        raise ValueError(f"metric '{data.metric}': a quantile has no saturation-design estimate")
    seed = bootstrap_seed(pilot.id, data.metric)
    values = data.cluster_values
    return cluster_bootstrap_quantile(
        *values.of(pilot.control), *values.of(arm), q=pilot.metric(data.metric).quantile, alpha=alpha,
        seed=seed, n_boot=pilot.settings.bootstrap_samples, memo=data.replicates.setdefault(arm, {}),
    )  # fmt: skip


def few_clusters_warning(pilot: Pilot, data, arm: str) -> str | None:
    """The warning for a quantile whose cluster bootstrap has fewer than ``MIN_CLUSTERS`` clusters with a
    value in an arm (no interval: it would under-cover), else None."""
    if getattr(data, "cluster_values", None) is None:
        return None
    import numpy as np

    from labkit.stats.cluster_bootstrap import MIN_CLUSTERS

    counts = {a: int(np.unique(data.cluster_values.of(a)[1]).size) for a in (pilot.control, arm)}
    if min(counts.values()) >= MIN_CLUSTERS:
        return None
    return (
        f"metric '{data.metric}', arm '{arm}': {counts[pilot.control]} clusters in '{pilot.control}' and "
        f"{counts[arm]} in '{arm}'; a quantile's cluster bootstrap needs at least {MIN_CLUSTERS} clusters per "
        "arm for an interval (with fewer it under-covers), so only the quantiles are shown"
    )


def contrast_estimate(
    cells: ClusterCells,
    treatment: int,
    control: int,
    *,
    alpha: float,
    raw: ClusterCells | None = None,
    counts: tuple[int, int] | None = None,
) -> Estimate:
    """``cluster_contrast`` of two cells as an ``Estimate``; ``raw`` (the unadjusted cells of a CUPED
    estimate) gives the variance reduction; ``counts`` the customers (control, treatment) when the cells'
    n are not customers (a ratio's denominators). Too few clusters or an empty cell give a reason, not an
    error."""
    import numpy as np
    from scipy import special

    from labkit.stats.cluster import ClusterError, cell_means, cluster_contrast
    from labkit.stats.means import lift_interval, point_only

    method = METHOD + ("+cuped" if raw is not None else "")
    ns = np.bincount(cells.cell, weights=cells.n, minlength=max(treatment, control) + 1)
    n_c, n_t = counts or (int(round(ns[control])), int(round(ns[treatment])))
    try:
        con = cluster_contrast(cells, treatment, control, alpha=alpha)
    except ClusterError:
        means = cell_means(cells) if cells.n_cells else np.array([])
        m_c = float(means[control]) if ns[control] > 0 else None
        m_t = float(means[treatment]) if ns[treatment] > 0 else None
        reason = "empty_arm" if m_c is None or m_t is None else "too_few"
        return point_only(method, n_c, n_t, m_c, m_t, reason)
    vr = None
    if raw is not None:
        base = cluster_contrast(raw, treatment, control, alpha=alpha).se
        vr = 1.0 - con.se**2 / base**2 if base > 0 else None
    if not con.se > 0 or not math.isfinite(con.df):
        return point_only(method, n_c, n_t, con.mean_control, con.mean_treatment, "zero_variance", vr)
    from labkit.stats.moments import Estimate

    crit = float(special.stdtrit(con.df, 1.0 - alpha / 2.0))
    lift = lift_interval(
        con.mean_control, con.mean_treatment, con.var_mean_control, con.var_mean_treatment, crit
    )
    return Estimate(
        method=method, n_control=n_c, n_treatment=n_t, mean_control=con.mean_control,
        mean_treatment=con.mean_treatment, effect=con.effect, se=con.se, ci_low=con.ci_low,
        ci_high=con.ci_high, lift=lift.lift if lift else None, lift_ci_low=lift.ci_low if lift else None,
        lift_ci_high=lift.ci_high if lift else None, p_value=min(con.p_value, 1.0), variance_reduction=vr,
        reason=None if lift else "zero_control_mean", lift_se=lift.se if lift else None,
        var_mean_control=con.var_mean_control, var_mean_treatment=con.var_mean_treatment,
    )  # fmt: skip


def cluster_summary(pilot: Pilot, data, arm: str) -> ClusterSummary | None:
    """The JSON's cluster fields of one (metric, arm) row; None for a metric that is not clustered."""
    if not is_clustered(data):
        return None
    import numpy as np

    from labkit.result import ClusterSummary
    from labkit.stats.cluster import design_effect, icc_anova, weighted_cluster_size

    rows = _rows(pilot, data, arm)
    c = rows.cells
    icc = icc_anova(c) if c.y2 is not None and c.n_clusters > c.n_cells else None
    sizes = np.bincount(c.cluster, weights=rows.customers)
    sizes = sizes[sizes > 0]
    de = design_effect(icc, weighted_cluster_size(sizes)) if icc is not None and sizes.size else None
    return ClusterSummary(c.clusters_in(0), c.clusters_in(1), icc, de)


# --------------------------------------------------------------------------------------------------
# the sample-ratio check and the spillover


def cluster_srm(pilot: Pilot, data: ClusterData) -> SrmResult:
    """The sample-ratio check on clusters (module docstring): per arm, or per saturation level."""
    from labkit import stats

    t = data.totals
    if data.shares is None:
        counts = {a: t.clusters(a) for a in pilot.arms}
        srm = stats.srm_test(counts, pilot.arms)
    else:
        present = {str(g) for g, n in zip(t.cluster, t.assigned) if n > 0}
        levels = [f"{s:g}" for s in pilot.spec.cohort.saturation]
        counts = dict.fromkeys(levels, 0)
        for g in present:
            counts[f"{data.shares.get(g, 0.0):g}"] = counts.get(f"{data.shares.get(g, 0.0):g}", 0) + 1
        srm = stats.srm_test(counts, dict.fromkeys(counts, 1.0))
    return replace(srm, method=f"{srm.method} on clusters")


def spillover(pilot: Pilot, data: ClusterData, *, alpha: float) -> tuple[SpilloverRow, ...] | None:
    """The primary metric's direct effect (cell 1 vs 0) and spillover (cell 2 vs 0) per treatment arm, each
    cluster-robust (CR2, Bell–McCaffrey t); None without a saturation design."""
    if not is_clustered(data) or data.shares is None or data.kind == "quantile":
        return None  # a quantile: refused with a saturation design at validation (module docstring)
    from labkit.result import SpilloverRow

    out = []
    for arm in pilot.treatments:
        cells, _ = adjusted_cells(pilot, data, arm)
        direct = contrast_estimate(cells, 1, 0, alpha=alpha)
        spill = contrast_estimate(cells, 2, 0, alpha=alpha) if cells.n_cells > 2 else None
        out.append(
            SpilloverRow(
                metric=data.metric, arm=arm, direct_effect=direct.effect, direct_ci_low=direct.ci_low,
                direct_ci_high=direct.ci_high, spillover_effect=spill.effect if spill else None,
                spillover_ci_low=spill.ci_low if spill else None,
                spillover_ci_high=spill.ci_high if spill else None, n_clusters=cells.n_clusters,
            )
        )  # fmt: skip
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# planning


#: The ICC a cluster pilot is planned with when neither its data nor ``hypothesis.baseline.icc`` gives one
#: (social clusters commonly show 0.01–0.1; the plan says it assumed this value).
DEFAULT_ICC = 0.05


@dataclass(frozen=True)
class ClusterDesign:
    """What sizing a cluster pilot needs: the ICC (``icc_from``: "data", "assumption" or "default") and
    the clusters' customers, plain mean n̄ and size-weighted n̄_w (None when no cluster was measured)."""

    icc: float
    icc_from: str
    mean_size: float | None
    weighted_size: float | None

    @property
    def design_effect(self) -> float | None:
        from labkit.stats.cluster import design_effect

        return design_effect(self.icc, self.weighted_size) if self.weighted_size else None


def plan_design(pilot: Pilot, data) -> ClusterDesign | None:
    """A cluster pilot's ICC and cluster sizes from its primary metric's cluster totals (every arm, the
    arm a cell of the ICC); the ICC assumed in ``hypothesis.baseline.icc``, else ``DEFAULT_ICC``, where the
    data give none (a ratio metric, too few clusters, no totals). None for any other pilot."""
    if pilot.spec.cohort.unit_column is None:
        return None
    import numpy as np

    from labkit.stats.cluster import icc_anova

    icc = mean = weighted = None
    if is_clustered(data):
        t = data.totals
        arms = sorted({str(a) for a in t.arm})
        cells = t.cells(arms)
        sizes = np.bincount(cells.cluster, weights=t.n.astype(float))
        sizes = sizes[sizes > 0]
        if sizes.size:
            mean, weighted = float(sizes.mean()), float((sizes * sizes).sum() / sizes.sum())
        if data.kind == "proportion":
            cells = replace(cells, y2=cells.y)
        if cells.y2 is not None and cells.n_clusters > cells.n_cells and cells.n.sum() > cells.n.size:
            icc = icc_anova(cells)
    if icc is not None:
        return ClusterDesign(icc, "data", mean, weighted)
    baseline = pilot.spec.hypothesis.baseline
    assumed = getattr(baseline, "icc", None) if baseline is not None else None
    if assumed is not None:
        return ClusterDesign(float(assumed), "assumption", mean, weighted)
    return ClusterDesign(DEFAULT_ICC, "default", mean, weighted)
