"""The cluster draw's rule, in plain Python (``method: keyed-hash-cluster-largest-remainder/1``).

With ``cohort.unit_column`` a pilot randomises clusters (accounts, communities, regions), not customers:
social channels leak inside a cluster, so every customer of a cluster is in its cluster's arm. Let S, P,
US, ``sha256_hex`` and ``text`` be those of ``labkit.assignment.draw`` (a cluster value as text: a string
as it is, an integer in decimal; cluster values must be text or integers), and g a cluster.

1. Clusters: the distinct ``text(g)`` among the eligible customers (``cohort.where``). Eligible customers
   whose cluster value is NULL cannot inherit a cluster's arm: they are left out, counted in the metadata
   (``clusters.no_cluster``) and in a warning. n_g is the number of eligible customers of g.
2. A cluster's stratum: each customer has the stratum label of the customer draw (step 3 there: its
   ``stratify_by`` values as text joined by ``|``, or ``all``); the cluster's stratum is the label most
   of its customers have, ties to the smallest label (compared by code point, which is the order of the
   UTF-8 bytes). A cluster whose customers span strata is thus put in one; the ``stratum`` column of the
   assignment holds the cluster's stratum for each of its customers.
3. Caps: clusters ordered by ``sha256_hex("cluster-cap" + US + S + US + P + US + text(g))`` (ties by
   ``text(g)``) are taken one after the other while their number stays ≤ ``max_clusters`` (when given)
   and their customers' total stays ≤ ``max_size``; the first cluster that would break a cap ends the
   draw, so every cluster is equally likely to enter whatever its size (skipping a large cluster to fit
   a smaller one would favour small clusters). A random sample of clusters, deterministic.
4. Strata keys: ``stratum_key(S, P, m)`` of the customer draw, m the smallest ``text(g)`` of the
   stratum's kept clusters; strata are allocated in order of their keys.
5. Counts: ``allocate`` of the customer draw (largest remainder with a running deficit, exact integers)
   over the number of clusters of each stratum: with the arms' weights in name order — or, with
   ``cohort.saturation``, with equal weights over the saturation levels in increasing share (levels
   named ``"000"``, ``"001"``, … in that order). Each stratum gets ``floor(w K)`` or ``ceil(w K)``
   clusters of each arm (level), K its clusters.
6. Within each stratum the clusters, ordered by ``hc(g) = sha256_hex("cluster" + US + S + US + P + US +
   text(g))`` (ties by ``text(g)``), take the first c_1 the first arm (level), the next c_2 the second,
   and so on. Every customer of a cluster takes its cluster's arm.
7. Saturation (Baird, Bohren, McIntosh & Özler 2018): a cluster of level s has T_g treated customers —
   0 for s = 0 (pure control), n_g for s = 1, otherwise ``allocate({control: 1 − s, treatment: s})``
   over the level's clusters, each a stratum of n_g keyed by hc(g) (so T_g is ``floor(s n_g)`` or
   ``ceil(s n_g)``, the running deficit keeping the level's treated total near s Σn_g), s exactly the
   binary value written (``Fraction(s)``, as the weights). Its customers ordered by the customer draw's
   ``h(c)`` (ties by ``text(c)``) take the treatment for the first T_g, the control after. The
   treatment is the pilot's one non-control arm.

Only one row per (cluster, stratum label) comes to Python — sizes, never customer ids — and one row per
kept cluster goes back (``labkit.assignment.clusters``); SHA-256 of the cluster values is computed here,
so the rule is the same whatever the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from labkit.assignment.draw import US, allocate, sha256_text, stratum_key

CLUSTER_METHOD = "keyed-hash-cluster-largest-remainder/1"


@dataclass(frozen=True)
class ClusterDraw:
    """One kept cluster: its arm (the treatment of a saturation design when it has treated customers,
    else the control), its stratum label, customers, saturation share (None without saturation) and
    treated customers (the customers ranked below it take the treatment; None without saturation)."""

    cluster: str
    arm: str
    stratum: str
    size: int
    share: float | None = None
    treated: int | None = None


@dataclass(frozen=True)
class ClusterOutcome:
    """The draw's clusters in key order and what the caps left out."""

    clusters: list[ClusterDraw]
    eligible_clusters: int
    eligible_customers: int  # with a cluster value


def level_name(i: int) -> str:
    """A saturation level's name for ``allocate`` (name order = increasing share)."""
    return f"{i:03d}"


def cluster_strata(rows: Iterable[tuple[str, str, int]]) -> dict[str, tuple[str, int]]:
    """Step 2: {cluster: (its stratum label, its customers)} from (cluster, label, customers) rows."""
    by: dict[str, dict[str, int]] = {}
    for cluster, label, n in rows:
        if n:
            labels = by.setdefault(cluster, {})
            labels[label] = labels.get(label, 0) + int(n)
    out = {}
    for cluster, labels in by.items():
        label = min(labels, key=lambda s: (-labels[s], s))
        out[cluster] = (label, sum(labels.values()))
    return out


def capped_clusters(
    clusters: Mapping[str, tuple[str, int]], salt: str, pilot_id: str, max_size: int, max_clusters: int | None
) -> list[str]:
    """Step 3: the clusters kept by the caps, in cap order."""
    order = sorted(
        clusters, key=lambda g: (sha256_text("cluster-cap" + US + salt + US + pilot_id + US + g), g)
    )
    kept, total = [], 0
    for g in order:
        size = clusters[g][1]
        if (max_clusters is not None and len(kept) >= max_clusters) or total + size > max_size:
            break
        kept.append(g)
        total += size
    return kept


def draw_clusters(
    rows: Iterable[tuple[str, str, int]],
    *,
    salt: str,
    pilot_id: str,
    weights: Mapping[str, Fraction],
    max_size: int,
    max_clusters: int | None = None,
    saturation: list[float] | None = None,
    control: str | None = None,
) -> ClusterOutcome:
    """Steps 2–7 of the module docstring over (cluster text, stratum label, customers) rows."""
    clusters = cluster_strata(rows)
    kept = capped_clusters(clusters, salt, pilot_id, max_size, max_clusters)
    hc = {g: sha256_text("cluster" + US + salt + US + pilot_id + US + g) for g in kept}
    strata: dict[str, list[str]] = {}
    for g in kept:
        strata.setdefault(clusters[g][0], []).append(g)
    keyed = {stratum_key(salt, pilot_id, min(members)): members for members in strata.values()}
    if saturation:
        names = [level_name(i) for i in range(len(saturation))]
        shares = [Fraction(1, len(names))] * len(names)
        share_weights = dict(zip(names, shares))
    else:
        names = sorted(weights)
        share_weights = dict(weights)
    counts = allocate(share_weights, {key: len(members) for key, members in keyed.items()})
    chosen: dict[str, str] = {}
    for key, members in keyed.items():
        ranked = sorted(members, key=lambda g: (hc[g], g))
        i = 0
        for name in names:
            for g in ranked[i : i + counts[key][name]]:
                chosen[g] = name
            i += counts[key][name]
    if not saturation:
        out = [ClusterDraw(g, chosen[g], clusters[g][0], clusters[g][1]) for g in sorted(kept)]
    else:
        treatment = next(a for a in sorted(weights) if a != control)
        treated = _treated(saturation, chosen, {g: clusters[g][1] for g in kept}, hc, control, treatment)
        out = []
        for g in sorted(kept):
            share = saturation[names.index(chosen[g])]
            arm = treatment if treated[g] else control
            out.append(ClusterDraw(g, arm, clusters[g][0], clusters[g][1], float(share), treated[g]))
    eligible = sum(n for _, n in clusters.values())
    return ClusterOutcome(clusters=out, eligible_clusters=len(clusters), eligible_customers=eligible)


def _treated(
    saturation: list[float],
    level_of: Mapping[str, str],
    sizes: Mapping[str, int],
    hc: Mapping[str, str],
    control: str,
    treatment: str,
) -> dict[str, int]:
    """Step 7: each cluster's treated customers T_g."""
    out: dict[str, int] = {}
    for i, s in enumerate(saturation):
        members = [g for g, name in level_of.items() if name == level_name(i)]
        share = Fraction(s)
        if share in (0, 1):
            out.update({g: int(share) * sizes[g] for g in members})
            continue
        counts = allocate({control: 1 - share, treatment: share}, {hc[g]: sizes[g] for g in members})
        out.update({g: counts[hc[g]][treatment] for g in members})
    return out
