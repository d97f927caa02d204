"""The cluster draw (``cohort.unit_column``, ``max_clusters``, ``saturation``; issue #16).

The expected arms come from ``reference_cluster_draw`` below — an independent re-implementation of the module
docstring of ``labkit.assignment.cluster_rule`` with hashlib, fractions and plain Python (no labkit, no ibis).
Property tests (hypothesis) check the pure rule (``labkit.assignment.draw_clusters``) over weights, strata and
cluster sizes; the engine draw is checked on small labs, and once against PostgreSQL.
"""

from __future__ import annotations

import hashlib
import math
import textwrap
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_server import postgres_server  # noqa: F401 -- the session fixture

import labkit
from labkit.assignment import CLUSTER_METHOD, assign, draw_clusters
from labkit.errors import AssignmentError
from labkit.spec import arm_weights, load_pilot

from conftest import LAB_YAML

PILOT = """\
id: {id}
title: Community replies
function: service
channel: community
stage: retention
owner: lab@example.com
hypothesis:
  statement: Replies in the community lower churn.
  metric: churned
  direction: decrease
  mde: {{relative: 0.15}}
cohort:
  source: customers
  id_column: customer_id
  unit_column: community
  max_size: {max_size}
  arms: {arms}
  control: control
  start: 2026-11-01
{extra}metrics:
  - name: churned
    type: proportion
    source: outcomes
    column: churned
"""

US = "\x1f"


# --------------------------------------------------------------------------------------------------
# the independent reference


def reference_cluster_draw(
    rows,
    *,
    pilot_id: str,
    salt: str,
    weights: dict[str, float],
    control: str,
    max_size: int,
    max_clusters: int | None = None,
    saturation: list[float] | None = None,
) -> dict:
    """``rows``: (customer_id, cluster or None, stratum label) of the eligible customers ->
    {customer_id: (arm, cluster text, stratum, share or None)}.

    From the docstring of labkit.assignment.cluster_rule: clusters' strata by majority (ties to the smallest
    label); clusters in cap-hash order while both caps hold; per stratum (keyed by its smallest cluster)
    floor(w K) clusters per arm or level plus the extras by deficit + remainder (ties by the hash of key and
    arm); clusters in hash order take the arms in name order (levels in share order); in a saturation
    cluster the customers in hash order take the treatment for the first T_g (the same allocation, one
    stratum per cluster keyed by the cluster's hash).
    """

    def text(v) -> str:
        return v if isinstance(v, str) else str(int(v))

    def sha(s: str) -> str:
        return hashlib.sha256(s.encode("utf-8")).hexdigest()

    def largest_remainder(w: dict, sizes: dict) -> dict:
        names = sorted(w)
        deficit = {a: Fraction(0) for a in names}
        out = {}
        for key in sorted(sizes):
            n = sizes[key]
            base = {a: math.floor(w[a] * n) for a in names}
            rho = {a: w[a] * n - base[a] for a in names}
            extra = n - sum(base.values())
            line = sorted(
                (a for a in names if rho[a] > 0), key=lambda a: (-(deficit[a] + rho[a]), sha(key + US + a))
            )
            gets = set(line[:extra])
            out[key] = {a: base[a] + (a in gets) for a in names}
            for a in names:
                deficit[a] += rho[a] - (a in gets)
        return out

    members: dict[str, list] = {}
    labels: dict[str, dict[str, int]] = {}
    for cid, cluster, label in rows:
        if cluster is None:
            continue
        g = text(cluster)
        members.setdefault(g, []).append(cid)
        labels.setdefault(g, {}).setdefault(label, 0)
        labels[g][label] += 1
    stratum = {g: sorted(ls.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for g, ls in labels.items()}
    kept, total = [], 0
    for g in sorted(members, key=lambda g: (sha("cluster-cap" + US + salt + US + pilot_id + US + g), g)):
        if (max_clusters is not None and len(kept) == max_clusters) or total + len(members[g]) > max_size:
            break
        kept.append(g)
        total += len(members[g])
    by_stratum: dict[str, list[str]] = {}
    for g in kept:
        by_stratum.setdefault(stratum[g], []).append(g)
    keyed = {sha("stratum" + US + salt + US + pilot_id + US + min(gs)): gs for gs in by_stratum.values()}
    total_w = sum(Fraction(v) for v in weights.values())
    if saturation:
        names = [f"{i:03d}" for i in range(len(saturation))]
        w = {n: Fraction(1, len(names)) for n in names}
    else:
        w = {a: Fraction(v) / total_w for a, v in weights.items()}
        names = sorted(w)
    counts = largest_remainder(w, {k: len(gs) for k, gs in keyed.items()})
    hc = {g: sha("cluster" + US + salt + US + pilot_id + US + g) for g in kept}
    arm_of: dict[str, str] = {}
    for key, gs in keyed.items():
        ranked = sorted(gs, key=lambda g: (hc[g], g))
        i = 0
        for name in names:
            for g in ranked[i : i + counts[key][name]]:
                arm_of[g] = name
            i += counts[key][name]
    out = {}
    if not saturation:
        for g in kept:
            for c in members[g]:
                out[c] = (arm_of[g], g, stratum[g], None)
        return out
    treatment = next(a for a in weights if a != control)
    for i, s in enumerate(saturation):
        level = [g for g in kept if arm_of[g] == names[i]]
        if s in (0, 1):
            treated = {g: int(s) * len(members[g]) for g in level}
        else:
            share = Fraction(s)
            c = largest_remainder(
                {control: 1 - share, treatment: share}, {hc[g]: len(members[g]) for g in level}
            )
            treated = {g: c[hc[g]][treatment] for g in level}
        for g in level:
            ranked = sorted(members[g], key=lambda c: (sha(salt + US + pilot_id + US + text(c)), text(c)))
            for r, c in enumerate(ranked):
                out[c] = (treatment if r < treated[g] else control, g, stratum[g], float(s))
    return out


# --------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def lab(tiny_lab, monkeypatch):
    monkeypatch.setenv("LABKIT_ID_KEY", "test-key-0123456789abcdef")
    tiny_lab.write(
        "configs/lab.yaml",
        LAB_YAML.replace("sources:\n", "sources:\n  sends: {format: parquet, path: data/sends.parquet}\n"),
    )
    (tiny_lab.root / "data").mkdir(exist_ok=True)
    return tiny_lab


def crm(n: int = 600, clusters: int = 40, seed: int = 5, int_clusters: bool = False) -> pd.DataFrame:
    """Customers in communities of unequal sizes (a few large, many small), some without a community."""
    rng = np.random.default_rng(seed)
    sizes = rng.zipf(1.6, clusters).astype(float)
    community = rng.choice(clusters, n, p=sizes / sizes.sum())
    values = [int(c) * 37 + 1000 if int_clusters else f"com-{c:03d}" for c in community]
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "community": pd.array(values, dtype="Int64" if int_clusters else object),
            "segment": rng.choice(["consumer", "smb", "enterprise"], n),
        }
    )
    frame.loc[rng.random(n) < 0.03, "community"] = None
    return frame


def write(lab, frame: pd.DataFrame, name: str = "customers") -> None:
    frame.to_parquet(lab.root / "data" / f"{name}.parquet", index=False)


def make_pilot(lab, *, pilot_id="p", max_size=2000, arms="{control: 0.5, fast: 0.5}", extra=""):
    lab.write(
        f"experiments/{pilot_id}.yaml",
        PILOT.format(id=pilot_id, max_size=max_size, arms=arms, extra=textwrap.indent(extra, "  ")),
    )
    return load_pilot(pilot_id)


def reference_for(frame: pd.DataFrame, pilot, strata: list[str] | None = None) -> dict:
    c = pilot.spec.cohort
    labels = frame[strata].astype(str).agg("|".join, axis=1) if strata else ["all"] * len(frame)
    clusters = [None if pd.isna(v) else v for v in frame.community]
    return reference_cluster_draw(
        zip(frame.customer_id, clusters, labels),
        pilot_id=pilot.id,
        salt=pilot.salt,
        weights=dict(c.arms),
        control=c.control,
        max_size=c.max_size,
        max_clusters=c.max_clusters,
        saturation=list(c.saturation) if c.saturation else None,
    )


def drawn(assignment) -> dict:
    f = assignment.frame()
    share = f.saturation if "saturation" in f else [None] * len(f)
    return {
        c: (a, g, s, None if x is None else float(x))
        for c, a, g, s, x in zip(f.customer_id, f.arm, f.cluster, f.stratum, share)
    }


# --------------------------------------------------------------------------------------------------
# against the reference


def test_a_stratified_capped_cluster_draw_matches_the_reference(lab):
    frame = crm()
    write(lab, frame)
    pilot = make_pilot(lab, max_size=450, extra="stratify_by: [segment]\nmax_clusters: 30\nsalt: k-1\n")
    a = assign(pilot)
    assert drawn(a) == reference_for(frame, pilot, ["segment"])
    meta = a.meta
    assert meta["method"] == CLUSTER_METHOD == "keyed-hash-cluster-largest-remainder/1"
    assert meta["clusters"]["unit_column"] == "community" and meta["clusters"]["assigned"] <= 30
    assert a.assigned <= 450 and meta["eligible"] == len(frame)


def test_a_saturation_draw_matches_the_reference(lab):
    frame = crm(n=800, clusters=30, seed=8)
    write(lab, frame)
    pilot = make_pilot(lab, arms="{control: 1, fast: 1}", extra="saturation: [0, 0.3, 0.5, 1]\n")
    a = assign(pilot)
    assert drawn(a) == reference_for(frame, pilot)
    assert list(a.frame().columns) == [
        "customer_id",
        "arm",
        "stratum",
        "assigned_at",
        "cluster",
        "saturation",
    ]
    assert set(a.meta["clusters"]["saturation"]) == {"0", "0.3", "0.5", "1"}


def test_integer_cluster_values_hash_as_decimal_text(lab):
    frame = crm(n=300, clusters=25, int_clusters=True)
    write(lab, frame)
    pilot = make_pilot(lab, max_size=250)
    a = assign(pilot)
    assert drawn(a) == reference_for(frame, pilot)
    assert all(g.isdigit() for g in a.frame().cluster)


# --------------------------------------------------------------------------------------------------
# the promises


def test_the_draw_depends_on_the_customers_only_not_the_row_order(lab):
    frame = crm()
    write(lab, frame)
    first = assign(make_pilot(lab, max_size=500, extra="stratify_by: [segment]\n")).path.read_bytes()
    write(lab, frame.sample(frac=1, random_state=1))
    again = assign(make_pilot(lab, max_size=500, extra="stratify_by: [segment]\n"), force=True)
    assert again.path.read_bytes() == first


def test_every_customer_of_a_cluster_has_its_clusters_arm_and_null_clusters_are_left_out_with_a_warning(lab):
    frame = crm()
    write(lab, frame)
    a = assign(make_pilot(lab))
    f = a.frame()
    assert (f.groupby("cluster").arm.nunique() == 1).all()
    no_cluster = int(frame.community.isna().sum())
    assert no_cluster > 0 and a.assigned == len(frame) - no_cluster
    assert a.meta["clusters"]["no_cluster"] == no_cluster
    assert (
        f"{no_cluster} of {len(frame)} eligible customers have no community (NULL)" in a.meta["warnings"][0]
    )
    # arms of clusters within one of the weights (one stratum)
    per_arm = f.groupby("arm").cluster.nunique()
    assert abs(per_arm["control"] - per_arm["fast"]) <= 1


def test_caps_in_customers_and_clusters_are_honoured(lab):
    frame = crm(n=1000, clusters=60)
    write(lab, frame)
    a = assign(make_pilot(lab, max_size=400, extra="max_clusters: 25\n"))
    f = a.frame()
    assert len(f) <= 400 and f.cluster.nunique() <= 25 and a.meta["capped"]
    assert any(
        "were left out by the cap (max_size 400, max_clusters 25), at random" in w for w in a.meta["warnings"]
    )
    b = assign(make_pilot(lab, pilot_id="q", max_size=5000, extra="max_clusters: 12\n"))
    assert b.frame().cluster.nunique() == 12


def test_a_cluster_larger_than_the_cap_is_one_clear_error(lab):
    write(lab, pd.DataFrame({"customer_id": [f"C{i}" for i in range(50)], "community": ["big"] * 50}))
    with pytest.raises(AssignmentError, match="no cluster fits the cap: .* max_size 10"):
        assign(make_pilot(lab, max_size=10))


def test_a_mixed_imported_assignment_is_refused_with_the_count(lab):
    frame = crm(n=200, clusters=10)
    write(lab, frame)
    sends = frame[["customer_id"]].assign(variant=np.where(np.arange(len(frame)) % 2 == 0, "control", "fast"))
    write(lab, sends, "sends")
    text = PILOT.format(id="imp", max_size=1000, arms="{control: 0.5, fast: 0.5}", extra="")
    text = text.replace("  max_size: 1000\n", "  assignment: {source: sends, arm_column: variant}\n")
    lab.write("experiments/imp.yaml", text)
    pilot = load_pilot("imp")
    with pytest.raises(AssignmentError) as info:
        assign(pilot)
    mixed = int((frame.dropna().assign(v=sends.variant).groupby("community").v.nunique() > 1).sum())
    assert str(info.value) == (
        f"imp: {mixed} clusters have customers in more than one arm; with cohort.unit_column: community every "
        "customer of a cluster must be in its cluster's arm"
    )
    # constant within clusters: imported as is
    arm = frame.community.map(lambda g: "fast" if isinstance(g, str) and int(g[-3:]) % 2 else "control")
    write(lab, frame[["customer_id"]].assign(variant=arm), "sends")
    a = assign(pilot)
    assert a.assigned == len(frame) and a.meta["method"] == "imported/1"
    f = a.frame().set_index("customer_id")
    community = frame.set_index("customer_id").community
    assert f.cluster.fillna("-").to_dict() == community.fillna("-").to_dict()
    no_cluster = int(community.isna().sum())
    assert (
        no_cluster
        and (
            f"{no_cluster} of {len(frame)} imported customers have no community in source 'customers'; a "
            "cluster-randomised analysis cannot place them"
        )
        in a.meta["warnings"]
    )


# --------------------------------------------------------------------------------------------------
# properties of the pure rule


def _weights():
    two = st.sampled_from([(1, 1), (1, 2), (0.3, 0.7), (0.499, 0.501), (1, 3)])
    three = st.sampled_from([(0.334, 0.333, 0.333), (1, 1, 1), (0.5, 0.25, 0.25), (2, 1, 1)])
    return st.one_of(two, three).map(lambda ws: dict(zip(["control", "a", "b"], ws)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    weights=_weights(),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=120),
    n_strata=st.integers(1, 6),
    salt=st.text("abcxyz", min_size=1, max_size=4),
)
def test_clusters_per_arm_are_within_one_of_the_weights_in_every_stratum(weights, sizes, n_strata, salt):
    rows = [(f"g{i}", f"s{i % n_strata}", n) for i, n in enumerate(sizes)]
    w = arm_weights(weights)
    out = draw_clusters(rows, salt=salt, pilot_id="p", weights=w, max_size=10**9)
    assert len(out.clusters) == len(sizes)
    for s in {r[1] for r in rows}:
        mine = [d for d in out.clusters if d.stratum == s]
        for arm, wa in w.items():
            got = sum(d.arm == arm for d in mine)
            assert abs(got - wa * len(mine)) < 1, (s, arm, got, float(wa), len(mine))


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=2, max_size=80),
    levels=st.sampled_from([[0, 0.5, 1], [0, 0.3], [0, 0.25, 0.5, 0.75], [0, 0.1, 0.333, 1]]),
    max_clusters=st.one_of(st.none(), st.integers(1, 40)),
    max_size=st.integers(60, 3000),
)
def test_saturation_shares_and_caps_hold_in_every_cluster(sizes, levels, max_clusters, max_size):
    rows = [(f"g{i:03d}", "all", n) for i, n in enumerate(sizes)]
    w = arm_weights({"control": 1, "t": 1})
    out = draw_clusters(
        rows, salt="s", pilot_id="p", weights=w, max_size=max_size, max_clusters=max_clusters,
        saturation=levels, control="control",
    )  # fmt: skip
    kept = out.clusters
    assert sum(d.size for d in kept) <= max_size and (max_clusters is None or len(kept) <= max_clusters)
    for d in kept:
        assert d.share in levels and abs(d.treated - d.share * d.size) < 1
        assert d.arm == ("t" if d.treated else "control")
    for level in levels:  # clusters per level within one of an equal share
        assert abs(sum(d.share == level for d in kept) - len(kept) / len(levels)) < 1


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def test_postgres_writes_the_same_cluster_assignment(tmp_path, postgres_server, monkeypatch):  # noqa: F811
    frame = crm(n=400, clusters=30, seed=11)
    customers = pa.Table.from_pandas(frame, preserve_index=False)
    url = postgres_server.create_database("crm_clusters")
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CREATE TABLE customers (customer_id text, community text, segment text)")
        with con.cursor() as cur, cur.copy("COPY customers FROM STDIN") as copy:
            for row in customers.to_pylist():
                copy.write_row(list(row.values()))
    monkeypatch.setenv("CLUSTER_CRM_URL", url)
    pilot_text = (
        PILOT.format(
            id="cl",
            max_size=300,
            arms="{control: 1, fast: 1}",
            extra="  stratify_by: [segment]\n  saturation: [0, 0.5, 1]\n",
        )
        .replace("    source: outcomes\n", "    source: customers\n")
        .replace("column: churned", "column: segment")
    )
    paths = {}
    for kind in ("files", "postgres"):
        root = tmp_path / kind
        (root / "configs").mkdir(parents=True)
        (root / "experiments").mkdir()
        if kind == "files":
            (root / "data").mkdir()
            pq.write_table(customers, root / "data" / "customers.parquet")
            source = "  customers: {format: parquet, path: data/customers.parquet}\n"
        else:
            source = "  customers: {format: postgres, url_env: CLUSTER_CRM_URL, table: customers}\n"
        (root / "configs" / "lab.yaml").write_text(
            f"lab: cl\nfunctions: [service]\nchannels: [community]\nstages: [retention]\nsources:\n{source}"
        )
        (root / "experiments" / "cl.yaml").write_text(pilot_text)
        pilot = labkit.load_pilot("cl", lab=labkit.load_lab(root))
        paths[kind] = assign(pilot).path
    assert paths["postgres"].read_bytes() == paths["files"].read_bytes()
