"""Cluster-randomised pilots: effects on cluster totals with a cluster-robust variance and few-cluster t.

Social channels leak: a treated customer's public reply is seen by control customers of the same account,
community or region. A pilot that randomises *clusters* (``cohort.unit_column``) removes the leak between
arms, and its analysis must then treat the cluster, not the customer, as the independent unit.

Estimator. Every group of customers being compared (an arm; in a randomised-saturation design a cell such as
"untreated customers of treated clusters") is a *cell*. Per cell the mean is Σ cluster sums / Σ cluster sizes
— the customer-level mean, so an effect is the plain difference of customer means — and its variance is the
delta-method (linearisation) variance over clusters: with e_g = y_g − m·n_g the residual total of cluster g,

    Var(m) = Σ_g e_g² / N²,         Var(m_a − m_b) = Var(m_a) + Var(m_b) − 2·Σ_g e_ga·e_gb / (N_a·N_b)

(the cross term is non-zero only where a cluster holds customers of both cells: saturation designs). For a
ratio metric y is the numerator and n the denominator; nothing else changes.

Small-sample choice (documented, README "Statistics"): pilots here have 10–60 clusters, where the plain
sandwich (CR0) under-covers. labkit uses the bias-reduced linearisation CR2 (Bell & McCaffrey 2002) with
Bell–McCaffrey's Satterthwaite degrees of freedom — the recommendation of Imbens & Kolesár (2016) and
Pustejovsky & Tipton (2018) for few or unequal clusters. For cell means CR2 has a closed form: the hat
matrix of cluster g in cell c is 11'/N_c, so (I − H_gg)^(−1/2) scales the residual total by
1/√(1 − n_gc/N_c); the degrees of freedom are (tr Q)²/tr Q² with Q = P'(I − H)P, P the CR2-weighted
contrast vectors, under the working model of independent customers: Q is diagonal plus rank one per cell, O(G). Where the two compared cells share clusters (a saturation design's treated and untreated
customers of one cluster — a contrast labkit does not report) the df fall back to G − k. With
``small_sample="cr1"`` the variance is statsmodels' ``OLS(...).fit(cov_type='cluster')`` default,
G/(G−1)·(N−1)/(N−k) times CR0, with G − k df (Donald & Lang 2007; statsmodels itself uses G − 1). Seeded
simulations (tests/stats/test_cluster.py) show CR1 covering 92–93 % at 10–30 clusters of 5–60 customers and
ICC 0.05–0.2 where CR2 with Bell–McCaffrey df covers 94–96 %. The tests match CR1 to statsmodels, and CR2
and its df to the matrix formulas computed on the customer-level design.

ICC and design effect. The intra-cluster correlation is the one-way ANOVA estimator (Donner & Koval 1980) within
cells: ρ = (MSB − MSW) / (MSB + (n₀ − 1)·MSW), n₀ = (N − Σn_g²/N)/(G − 1), pooled over cells, floored at 0.
The design effect reported is 1 + (n̄_w − 1)·ρ with n̄_w = Σn_g²/N, the size-weighted mean cluster size
(Kerry & Bland 2001: unequal clusters cost more than their plain mean says); planning uses the same formula.

Speed. A 1M-customer pilot has ~20,000 clusters and an analysis asks for several contrasts of one
``ClusterCells`` (each needing three variances), an over-time analysis for many more. So a ``ClusterCells``
factorises its cluster labels once (dense codes, which cells each cluster has rows in) and keeps the per-cell
means, residuals, CR2 scalings and variances it has computed: the arrays are never changed in place (the
class is frozen; derived cells are new objects via ``dataclasses.replace``). Sums of squares are plain numpy
reductions, not 1-D ``@`` products, which go through OpenBLAS threads and stall on a busy machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import special

from labkit.stats.moments import check_alpha


class ClusterError(ValueError):
    """Cluster data the estimator cannot use (too few clusters, a cell with no customers)."""


@dataclass(frozen=True)
class ClusterCells:
    """One row per (cluster, cell): the cluster's code, the cell's index, the outcome total, the size.

    ``y2`` (Σ y² per row) is needed only for the ICC; ``n`` is the customer count (the denominator total
    for a ratio metric)."""

    cluster: np.ndarray
    cell: np.ndarray
    y: np.ndarray
    n: np.ndarray
    y2: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        cluster: Sequence,
        cell: Sequence[int],
        y: Sequence[float],
        n: Sequence[float],
        y2: Sequence[float] | None = None,
    ) -> ClusterCells:
        _, codes = np.unique(np.asarray(cluster, dtype=object).astype(str), return_inverse=True)
        return cls(
            cluster=codes.astype(np.int64),
            cell=np.asarray(cell, dtype=np.int64),
            y=np.asarray(y, dtype=float),
            n=np.asarray(n, dtype=float),
            y2=None if y2 is None else np.asarray(y2, dtype=float),
        )

    @property
    def n_cells(self) -> int:
        return int(self.cell.max()) + 1 if self.cell.size else 0

    @property
    def n_clusters(self) -> int:
        return self._layout.n_clusters

    def clusters_in(self, cell: int) -> int:
        """Clusters with at least one customer in ``cell``."""
        counts = self._layout.customers_in
        return int(counts[cell]) if 0 <= cell < counts.size else 0

    @cached_property
    def _layout(self) -> _Layout:
        """The labels factorised once per object (module docstring "Speed")."""
        return _layout_of(self.cluster, self.cell, self.n, self.n_cells)

    @cached_property
    def _fit(self) -> _Fit:
        """Per-cell customer totals and means, and each row's residual total e = y − m·n."""
        k = self.n_cells
        ns = np.bincount(self.cell, weights=self.n, minlength=k)
        means = cell_means(self)
        return _Fit(ns, means, self.y - means[self.cell] * self.n)

    @cached_property
    def _memo(self) -> dict:
        """Results already computed for this object: CR2 scalings, per-cell df terms, variances."""
        return {}


@dataclass(frozen=True)
class _Layout:
    """Dense cluster codes 0..G−1 per row, G, and which clusters have rows (customers) in each cell."""

    codes: np.ndarray
    n_clusters: int
    has_rows: np.ndarray  # bool (cells, G)
    customers_in: np.ndarray  # per cell, clusters with n > 0 there


@dataclass(frozen=True)
class _Fit:
    ns: np.ndarray
    means: np.ndarray
    e: np.ndarray


def _dense_codes(cluster: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's cluster as 0..G−1 (in label order) and G; one O(rows) pass for the codes ``of`` makes."""
    if cluster.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    if cluster.dtype.kind in "iu" and cluster.min() >= 0 and cluster.max() < 4 * cluster.size + 1024:
        index = np.cumsum(np.bincount(cluster) > 0) - 1
        return index[cluster], int(index[-1]) + 1
    labels, inverse = np.unique(cluster, return_inverse=True)
    return inverse.ravel(), int(labels.size)


def _layout_of(cluster: np.ndarray, cell: np.ndarray, n: np.ndarray, k: int) -> _Layout:
    codes, g = _dense_codes(cluster)
    has_rows = np.zeros((k, g), dtype=bool)
    has_rows[cell, codes] = True
    has_customers = np.zeros((k, g), dtype=bool)
    some = n > 0
    has_customers[cell[some], codes[some]] = True
    return _Layout(codes, g, has_rows, np.count_nonzero(has_customers, axis=1))


@dataclass(frozen=True)
class ClusterContrast:
    """m_treatment − m_control over clusters: estimate, cluster-robust se, t interval and p-value."""

    mean_control: float
    mean_treatment: float
    var_mean_control: float
    var_mean_treatment: float
    effect: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    p_value: float
    statistic: float
    n_clusters: int
    method: str = "cluster-robust t"


def cell_means(cells: ClusterCells) -> np.ndarray:
    """Per cell, Σ y / Σ n over its rows (NaN where a cell has no customers)."""
    k = cells.n_cells
    ys = np.bincount(cells.cell, weights=cells.y, minlength=k)
    ns = np.bincount(cells.cell, weights=cells.n, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ys / ns


def cr1_factor(n_clusters: int, n_customers: float, n_cells: int) -> float:
    """statsmodels' cluster correction G/(G−1)·(N−1)/(N−k) (``use_correction=True``)."""
    g, n, k = n_clusters, n_customers, n_cells
    return g / (g - 1) * (n - 1) / (n - k)


def _contrast_variance(
    cells: ClusterCells, treatment: int, control: int, small_sample: str, n_customers: float
) -> tuple[float, float]:
    """The variance of m_treatment − m_control and its degrees of freedom (see the module docstring)."""
    key = ("variance", treatment, control, small_sample, n_customers)
    if key not in cells._memo:
        cells._memo[key] = _compute_variance(cells, treatment, control, small_sample, n_customers)
    return cells._memo[key]


def _cr2_scaling(cells: ClusterCells) -> np.ndarray:
    """Per row 1/√(1 − n_gc/N_c), the CR2 scaling of its residual total (module docstring)."""
    if "cr2" not in cells._memo:
        ns = cells._fit.ns
        cells._memo["cr2"] = 1.0 / np.sqrt(np.clip(1.0 - cells.n / ns[cells.cell], 1e-12, None))
    return cells._memo["cr2"]


def _cr2_cell_terms(cells: ClusterCells, cell: int) -> tuple[float, float, float, float]:
    """Σd, v·v, d·d and (d∘v)·v of Q_c = diag(d) − v v'/N_c (d = n·adj², v = n·adj over the cell's rows)."""
    key = ("terms", cell)
    if key not in cells._memo:
        sel = cells.cell == cell
        adj = _cr2_scaling(cells)[sel]
        d, v = cells.n[sel] * adj**2, cells.n[sel] * adj
        cells._memo[key] = (
            float(d.sum()),
            float((v * v).sum()),
            float((d * d).sum()),
            float((d * v * v).sum()),
        )
    return cells._memo[key]


def _compute_variance(
    cells: ClusterCells, treatment: int, control: int, small_sample: str, n_customers: float
) -> tuple[float, float]:
    k = cells.n_cells
    layout, fit = cells._layout, cells._fit
    g, ns = layout.n_clusters, fit.ns
    w = np.zeros(k)
    if treatment == control:  # one cell's mean alone: Var(m_c)
        w[control] = 1.0 / ns[control]
    else:
        w[treatment], w[control] = 1.0 / ns[treatment], -1.0 / ns[control]
    if small_sample == "cr1":
        factor, scaled = cr1_factor(g, n_customers, k), w[cells.cell] * fit.e
    elif small_sample == "cr2":
        factor, scaled = 1.0, w[cells.cell] * fit.e * _cr2_scaling(cells)
    else:
        raise ValueError(f"small_sample must be 'cr1' or 'cr2', got {small_sample!r}")
    totals = np.bincount(layout.codes, weights=scaled, minlength=g)  # per cluster, rows added in order
    var = float((totals * totals).sum()) * factor
    inside = 0 <= treatment < k and 0 <= control < k  # a cell index past the cells has no rows
    shared = inside and bool(np.any(layout.has_rows[treatment] & layout.has_rows[control]))
    if small_sample == "cr1" or (shared and treatment != control):
        return var, float(g - k)
    tr1 = tr2 = 0.0
    for c in sorted({treatment, control}):
        d_sum, vv, dd, dvv = _cr2_cell_terms(cells, c)
        big_n = ns[c]
        tr1 += (d_sum - vv / big_n) * w[c] ** 2
        tr2 += (dd - 2.0 * dvv / big_n + vv * vv / big_n**2) * w[c] ** 4
    return var, tr1 * tr1 / tr2


def cluster_contrast(
    cells: ClusterCells,
    treatment: int,
    control: int,
    alpha: float = 0.05,
    small_sample: str = "cr2",
    n_customers: float | None = None,
) -> ClusterContrast:
    """The difference of two cells' customer means with a cluster-robust variance and few-cluster t.

    ``small_sample``: "cr2" (default; Bell–McCaffrey df) or "cr1" (statsmodels' default, G − k df).
    ``n_customers`` is N in the CR1 factor; by default Σ n (pass the customer count for ratio metrics,
    whose n is a denominator total)."""
    alpha = check_alpha(alpha)
    k = cells.n_cells
    g = cells.n_clusters
    if g - k < 1:
        raise ClusterError(f"{g} clusters for {k} groups: at least {k + 1} clusters are needed")
    ns, means = cells._fit.ns, cells._fit.means
    if ns[treatment] <= 0 or ns[control] <= 0:
        raise ClusterError("a compared group has no customers")
    n_total = float(cells.n.sum() if n_customers is None else n_customers)
    var, df = _contrast_variance(cells, treatment, control, small_sample, n_total)
    v_c = _contrast_variance(cells, control, control, small_sample, n_total)[0]
    v_t = _contrast_variance(cells, treatment, treatment, small_sample, n_total)[0]
    effect = float(means[treatment] - means[control])
    se = math.sqrt(max(var, 0.0))
    crit = float(special.stdtrit(df, 1.0 - alpha / 2.0))
    if se > 0:
        stat = effect / se
        p = float(2.0 * special.stdtr(df, -abs(stat)))
    else:
        stat, p = (math.nan, math.nan)
    low, high = effect - crit * se, effect + crit * se
    return ClusterContrast(
        float(means[control]),
        float(means[treatment]),
        v_c,
        v_t,
        effect,
        se,
        df,
        low,
        high,
        p_value=p,
        statistic=stat,
        n_clusters=cells.clusters_in(treatment) + cells.clusters_in(control),
        method="cluster-robust t (CR2)" if small_sample == "cr2" else "cluster-robust t (CR1)",
    )


def icc_anova(cells: ClusterCells) -> float:
    """The one-way ANOVA intra-cluster correlation within cells, floored at 0 (needs ``y2``).

    Each (cluster, cell) row is a group; the between/within sums of squares are pooled over cells so a
    treatment effect does not pass for clustering."""
    if cells.y2 is None:
        raise ClusterError("the ICC needs Σ y² per cluster")
    keep = cells.n > 0
    y, n, y2, cell = cells.y[keep], cells.n[keep], cells.y2[keep], cells.cell[keep]
    means = cell_means(ClusterCells(cells.cluster[keep], cell, y, n))
    ssw = float(np.sum(y2 - y * y / n))
    ssb = float(np.sum(y * y / n - 2 * means[cell] * y + means[cell] ** 2 * n))
    n_total = float(n.sum())
    groups = int(y.size)
    k = int(np.unique(cell).size)
    if groups - k < 1 or n_total - groups < 1:
        return 0.0
    msb = ssb / (groups - k)
    msw = ssw / (n_total - groups)
    n0 = (n_total - float(np.sum(n * n)) / n_total) / (groups - k)
    denom = msb + (n0 - 1.0) * msw
    if denom <= 0:
        return 0.0
    return max((msb - msw) / denom, 0.0)


def weighted_cluster_size(sizes: Sequence[float]) -> float:
    """Σ n_g² / Σ n_g: the size-weighted mean cluster size (equals n for equal clusters)."""
    s = np.asarray(sizes, dtype=float)
    return float((s * s).sum() / s.sum())


def design_effect(icc: float, cluster_size: float) -> float:
    """1 + (m − 1)·ρ: the variance of a cluster-randomised mean over that of an individually randomised one."""
    if not 0.0 <= icc <= 1.0:
        raise ValueError(f"an ICC must be in [0, 1], got {icc}")
    if cluster_size < 1:
        raise ValueError(f"a cluster size must be at least 1, got {cluster_size}")
    return 1.0 + (cluster_size - 1.0) * icc


def clusters_per_arm(
    mde: float,
    sd: float,
    icc: float,
    cluster_size: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Clusters per arm for a two-sided t-test on cluster means with 2K − 2 degrees of freedom.

    A cluster mean of m customers has variance σ²·(1 + (m − 1)ρ)/m; K clusters per arm detect ``mde``
    with the given power when the noncentral-t power reaches it. Solved by search over K (the t quantile
    moves with K), matching statsmodels' ``TTestIndPower`` with the standardised effect
    mde / (σ·√(DE/m))."""
    alpha = check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if mde <= 0 or sd <= 0:
        raise ValueError("mde and sd must be positive")
    sd_cluster_mean = sd * math.sqrt(design_effect(icc, cluster_size) / cluster_size)
    d = mde / sd_cluster_mean
    for k in range(2, 1_000_000):
        df = 2 * k - 2
        crit = special.stdtrit(df, 1.0 - alpha / 2.0)
        nc = d * math.sqrt(k / 2.0)
        achieved = special.nctdtr(df, nc, -crit) + 1.0 - special.nctdtr(df, nc, crit)
        if achieved >= power:
            return k
    raise ValueError("no feasible number of clusters")  # pragma: no cover
