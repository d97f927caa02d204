"""The demo lab's synthetic CRM: declared schemas, seed determinism, the columns every pilot reads, the truth.

The real assignment module is not used here: ``draw_assignments`` filters customers by each pilot's
``where`` clauses in pandas, caps at ``max_size`` and draws arms by weight, which is all the generator
needs. One base build and one simulated pilot period are shared by the module (about 4 s each).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import zlib
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from labkit import demo
from labkit.errors import AssignmentError, LabkitError

REPO = Path(__file__).resolve().parents[2]
LAB = yaml.safe_load((REPO / "configs" / "lab.yaml").read_text())
SPECS = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((REPO / "experiments").glob("*.yaml"))}
BASE_FILES = ("customers", "engagement_events", "email_sends", "renewal_sends")
PERIOD_FILES = ("engagement_events", "outcomes", "pipeline", "media_coverage")
NUMERIC = {"BIGINT", "DOUBLE", "INTEGER"}


def _mask(frame: pd.DataFrame, where: list[dict]) -> pd.Series:
    ops = {
        "==": lambda c, v: c == v,
        "!=": lambda c, v: c != v,
        ">=": lambda c, v: c >= v,
        "<=": lambda c, v: c <= v,
        ">": lambda c, v: c > v,
        "<": lambda c, v: c < v,
        "in": lambda c, v: c.isin(v),
        "not_in": lambda c, v: ~c.isin(v),
        "not_null": lambda c, v: c.notna(),
        "is_null": lambda c, v: c.isna(),
    }
    keep = pd.Series(True, index=frame.index)
    for f in where:
        keep &= ops[f["op"]](frame[f["column"]], f.get("value")).fillna(False).astype(bool)
    return keep


def _isin(values: pd.Series, pool) -> pd.Series:
    """Membership through a Python set: Series.isin over pandas' string dtype is slow for large pools."""
    pool = set(pool)
    return pd.Series([v in pool for v in values], index=values.index)


def draw_assignments(root: Path, seed: int = 7) -> dict[str, pd.DataFrame]:
    """A stand-in for labkit assign: eligible customers, capped, arms drawn by weight (by cluster for a
    pilot with ``unit_column``); the import as is. The pilots added with the communities (#16) draw from
    their own generators, so the older pilots' draws stay as they were."""
    shared = np.random.default_rng(seed)
    customers = _read(root, "customers")
    out = {}
    for pilot_id, spec in SPECS.items():
        cohort = spec["cohort"]
        own = pilot_id in demo.AMBASSADOR_PILOTS
        rng = np.random.default_rng([seed, zlib.crc32(pilot_id.encode())]) if own else shared
        if "assignment" in cohort:
            out[pilot_id] = demo.imported_assignment(root, pilot_id)
            continue
        eligible = customers.loc[_mask(customers, cohort["where"])]
        arms = list(cohort["arms"])
        if "unit_column" in cohort:
            chosen, arm = _draw_clusters(rng, eligible, cohort)
        else:
            ids = eligible[cohort["id_column"]].to_numpy()
            chosen = np.sort(rng.choice(ids, min(len(ids), cohort["max_size"]), replace=False))
            arm = np.array(arms)[rng.choice(len(arms), chosen.size, p=list(cohort["arms"].values()))]
        out[pilot_id] = pd.DataFrame(
            {"customer_id": chosen, "arm": arm, "assigned_at": pd.Timestamp(cohort["start"])}
        )
    return out


def _draw_clusters(rng, eligible: pd.DataFrame, cohort: dict) -> tuple[np.ndarray, np.ndarray]:
    """Clusters in random order while within the caps, then equal numbers of clusters per arm; every
    customer takes the cluster's arm."""
    unit = eligible[cohort["unit_column"]]
    sizes = unit.value_counts().sample(frac=1, random_state=rng.integers(2**31))
    fits = (sizes.cumsum() <= cohort.get("max_size", np.inf)) & (
        np.arange(len(sizes)) < cohort.get("max_clusters", len(sizes))
    )
    kept = sizes.index[fits.cummin().to_numpy()]
    arms = np.array(list(cohort["arms"]))[rng.permutation(np.arange(len(kept)) % len(cohort["arms"]))]
    arm_of = dict(zip(kept, arms))
    drawn = eligible[unit.isin(kept)].sort_values(cohort["id_column"])
    return drawn[cohort["id_column"]].to_numpy(), drawn[cohort["unit_column"]].map(arm_of).to_numpy()


def _digests(root: Path, names) -> dict[str, str]:
    files = {name: root / demo.PATHS[name] for name in names} | {"truth": root / demo.TRUTH}
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items() if p.exists()}


@functools.cache
def _read(root: Path, name: str) -> pd.DataFrame:
    """A source as a frame, read once per lab folder (the tests only read it)."""
    path = root / demo.PATHS[name]
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def _describe(root: Path, name: str) -> dict[str, str]:
    path = root / demo.PATHS[name]
    reader = "read_csv" if path.suffix == ".csv" else "read_parquet"
    with duckdb.connect() as con:
        return {
            row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {reader}('{path}')").fetchall()
        }


def _query(sql: str, params=None, **frames) -> pd.DataFrame:
    with duckdb.connect() as con:
        for name, frame in frames.items():
            con.register(name, frame)
        return con.execute(sql, params or []).df()


@functools.cache
def _events(root: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection holding a lab folder's events as table ``e``, loaded once."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE e AS SELECT * FROM read_parquet('{root / demo.PATHS['engagement_events']}')")
    return con


def _window_counts(root: Path, assignment: pd.DataFrame, metric: dict) -> pd.DataFrame:
    """Per assigned customer, events of the metric's kind in [at, at + w) ('post') and [at - w, at) ('pre')."""
    assert metric["source"] == "engagement_events"
    column, days = metric["event"]["column"], int(metric["window_days"])
    a = assignment[["customer_id", "assigned_at"]].assign(
        assigned_at=lambda f: pd.to_datetime(f["assigned_at"])
    )
    con = _events(root).cursor()
    con.register("a", a)
    counts = con.execute(
        f"""SELECT a.customer_id,
                   count(e.ts) FILTER (WHERE e.ts >= a.assigned_at AND e.ts < a.assigned_at + to_days({days})) AS post,
                   count(e.ts) FILTER (WHERE e.ts >= a.assigned_at - to_days({days}) AND e.ts < a.assigned_at) AS pre
            FROM a LEFT JOIN e ON e.customer_id = a.customer_id AND e."{column}" = $1
            GROUP BY a.customer_id""",
        [metric["event"]["equals"]],
    ).df()
    return counts.set_index("customer_id").reindex(assignment["customer_id"].to_numpy())


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("demo-base")
    summary = demo.build_base(root)
    return root, summary, _digests(root, BASE_FILES)


@pytest.fixture(scope="module")
def lab(base, tmp_path_factory) -> tuple[Path, dict, dict]:
    """A copy of the base with the pilot period simulated for the stand-in assignments."""
    root = tmp_path_factory.mktemp("demo-lab")
    shutil.copytree(base[0] / "data", root / "data")
    assignments = draw_assignments(root)
    result = demo.simulate_outcomes(root, assignments)
    return root, assignments, result


# ------------------------------------------------------------------------------------ the lab's files


def test_lab_sources_are_the_demo_files():
    sources = LAB["sources"]
    assert set(sources) == set(demo.PATHS) == set(demo.SCHEMAS)
    for name, src in sources.items():
        assert src["format"] == Path(src["path"]).suffix.lstrip(".")
        assert Path(src["path"]) == demo.PATHS[name]
        assert src["path"].startswith("data/crm/")
    assert sources["engagement_events"]["timestamp"] == "ts"
    assert sources["email_sends"]["timestamp"] == "sent_at"
    assert {s["format"] for s in sources.values()} == {"csv", "parquet"}  # no server in the demo
    assert LAB["privacy"] == {"pseudonymize": True, "key_env": "LABKIT_ID_KEY"}


def test_pilots_mirror_the_generator():
    assert set(SPECS) == set(demo.PILOTS)
    for pilot_id, spec in SPECS.items():
        gen = demo.PILOTS[pilot_id]
        assert spec["id"] == pilot_id
        assert (spec["function"], spec["channel"], spec["stage"]) == (gen.function, gen.channel, gen.stage)
        if "start" in spec["cohort"]:
            assert spec["cohort"]["start"] == gen.start and gen.start.year == 2026
        else:  # an imported, finished test: it starts at its first send (see the send-log tests)
            assert "assigned_at_column" in spec["cohort"]["assignment"] and gen.start.year == 2026
        assert spec["cohort"]["control"] == gen.control
        assert tuple(spec["cohort"]["arms"]) == gen.arms
        assert spec["cohort"].get("unit_column") == gen.unit
        assert spec["hypothesis"]["metric"] == gen.primary
        assert spec["hypothesis"]["direction"] == gen.direction
        primary = next(m for m in spec["metrics"] if m["name"] == gen.primary)
        assert primary["type"] == gen.metric_type
        assert 1500 <= spec["cohort"].get("max_size", 8000) <= 12000  # imported: its count
        assert spec["owner"].endswith("@example.com")
        assert "budget" in spec
        assert "notebook" not in spec or (REPO / spec["notebook"]).is_file()


def test_every_demo_pilot_validates_and_the_new_ones_against_the_data(lab, tmp_path):
    from labkit.validate import validate_paths

    problems, checked = validate_paths(sorted((REPO / "experiments").glob("*.yaml")), explicit_lab=str(REPO))
    assert [p.message for p in problems] == [] and checked == len(SPECS)
    # the built CRM, with the lab file: the columns the ambassador pilots name, community_id's type
    shutil.copytree(lab[0] / "data", tmp_path / "data")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "experiments").mkdir()
    paths = [
        shutil.copy(REPO / "experiments" / f"{p}.yaml", tmp_path / "experiments")
        for p in demo.AMBASSADOR_PILOTS
    ]
    problems, checked = validate_paths([Path(p) for p in paths], explicit_lab=str(tmp_path), data=True)
    assert [p.message for p in problems] == [] and checked == 2


def test_pilots_use_every_feature_of_the_design():
    metrics = [m for s in SPECS.values() for m in s["metrics"]]
    assert {m["type"] for m in metrics} == {"proportion", "mean", "ratio", "quantile"}
    assert {m.get("aggregate") for m in metrics if "event" in m} == {"count", "sum", "mean", "max", "any"}
    assert any(m.get("cuped") for m in metrics if "event" in m)
    assert any("covariate" in m for m in metrics)
    assert {s["function"] for s in SPECS.values()} == {"sales", "marketing", "service", "pr"}
    for function in ("sales", "marketing", "service", "pr"):
        assert sum(s["function"] == function for s in SPECS.values()) >= 2
    cohorts = [s["cohort"] for s in SPECS.values()]
    assert any(len(c["arms"]) == 3 for c in cohorts)
    imported = [c["assignment"] for c in cohorts if "assignment" in c]
    assert len(imported) == 2
    assert any("arms" in a and a.get("strata") for a in imported)  # 0/1 arms mapped, blocks post-stratified
    assert any("max_size" not in c and "start" not in c for c in cohorts if "assignment" in c)
    assert sum(bool(c.get("stratify_by")) for c in cohorts) >= 2
    clustered = [c for c in cohorts if "unit_column" in c]  # randomised by community (#16)
    assert clustered and all(c.get("max_clusters") for c in clustered)
    assert {f["op"] for c in cohorts for f in c["where"]} >= {"==", "in", ">=", "not_null"}
    analyses = [s.get("analysis", {}) for s in SPECS.values()]
    assert any(a.get("sequential") for a in analyses)
    assert any(a.get("engine") == "bayesian" for a in analyses)
    assert any(a.get("correction") == "bh" for a in analyses)
    assert any("max_harm" in g for s in SPECS.values() for g in s.get("guardrails", []))
    assert len({s["channel"] for s in SPECS.values()}) >= 5
    assert len({s["stage"] for s in SPECS.values()}) >= 5


# ---------------------------------------------------------------------------------------- the data


def test_every_source_has_its_declared_schema(lab):
    root = lab[0]
    for name in LAB["sources"]:
        assert _describe(root, name) == demo.SCHEMAS[name], name


def test_customers(base):
    root = base[0]
    customers = _read(root, "customers")
    assert len(customers) == base[1]["rows"]["customers"] >= 50_000
    assert customers["customer_id"].is_unique
    assert customers["customer_id"].str.fullmatch(r"CUST-\d{7}").all()
    assert (customers["twitter_handle"].notna() == customers["has_twitter"]).all()
    assert (customers["linkedin_url"].isna() | customers["has_linkedin"]).all()
    assert customers["email"].isna().mean() < 0.02
    assert (customers["pre_spend"] >= 0).all() and customers["pre_spend"].skew() > 2  # skewed spend
    assert set(customers["lifecycle_stage"]) == {"prospect", "onboarding", "active", "at_risk", "lapsed"}
    assert customers["nps_score"].isna().any() and customers["nps_score"].dropna().between(0, 10).all()


def test_history_ends_at_each_channels_first_pilot(base):
    path = base[0] / demo.PATHS["engagement_events"]
    span = _query(f"SELECT channel, min(ts) AS first, max(ts) AS last FROM '{path}' GROUP BY 1").set_index(
        "channel"
    )
    cutoffs = demo.channel_cutoffs()
    assert set(span.index) == set(cutoffs)
    for channel, cutoff in cutoffs.items():
        assert pd.Timestamp(cutoff, unit="us") - pd.Timedelta(days=1) < span.loc[channel, "last"]
        assert span.loc[channel, "last"] < pd.Timestamp(cutoff, unit="us")
        assert span.loc[channel, "first"] >= pd.Timestamp(demo.HISTORY_START)


def test_email_sends_are_the_tools_own_randomisation(base):
    spec = SPECS[demo.IMPORTED_PILOT]
    sends = _read(base[0], "email_sends")
    customers = _read(base[0], "customers")
    assignment = spec["cohort"]["assignment"]
    assert sends["customer_id"].is_unique
    assert len(sends) <= spec["cohort"]["max_size"]  # more would make the pilot invalid
    assert set(sends[assignment["arm_column"]]) == set(spec["cohort"]["arms"])
    counts = sends[assignment["arm_column"]].value_counts()
    assert abs(counts["control"] - counts["ugc_gallery"]) < 4 * np.sqrt(len(sends) / 4)
    assert (sends[assignment["assigned_at_column"]] >= pd.Timestamp(spec["cohort"]["start"])).all()
    ok = customers.loc[_mask(customers, spec["cohort"]["where"]), "customer_id"]
    failing = (~_isin(sends["customer_id"], ok)).sum()
    assert 0 < failing < 0.01 * len(sends)  # a few consents drifted after the tool drew its list


def test_renewal_sends_are_a_blocked_0_1_randomisation_with_null_arms(base):
    spec = SPECS[demo.RENEWAL_PILOT]
    sends = _read(base[0], "renewal_sends")
    assert sends["customer_id"].is_unique and len(sends) == demo.RENEWAL_SEND_SIZE
    assert sends["treat"].isna().sum() == demo.RENEWAL_NULL_ARMS
    assert set(sends["treat"].dropna()) == {0, 1}
    assert set(sends["block"]) == set(demo.SEGMENTS)
    drawn = sends.assign(treat=sends["treat"].astype("float64"))
    for _, g in drawn.groupby("block"):  # half of every block (before the NULLs were blanked)
        assert abs(g["treat"].mean() - 0.5) < 0.05
    first = sends["sent_at"].min()
    assert first.date() == demo.PILOTS[demo.RENEWAL_PILOT].start and "start" not in spec["cohort"]


def test_every_column_a_pilot_reads_exists_with_a_suitable_type(lab):
    root = lab[0]
    types = {name: _describe(root, name) for name in LAB["sources"]}
    path = root / demo.PATHS["engagement_events"]
    kinds = _query(f"SELECT DISTINCT channel, event_type FROM '{path}'")
    logged = set(zip(kinds["channel"], kinds["event_type"]))

    def numeric(source, column, where):
        assert types[source].get(column) in NUMERIC, (
            f"{where}: {source}.{column} is {types[source].get(column)}"
        )

    for pilot_id, spec in SPECS.items():
        cohort = spec["cohort"]
        src = cohort["source"]
        assert types[src].get(cohort["id_column"]) == "VARCHAR"
        for f in cohort["where"]:
            kind = types[src].get(f["column"])
            values = f.get("value") if isinstance(f.get("value"), list) else [f.get("value")]
            if f["op"] in ("not_null", "is_null"):
                assert kind is not None, (pilot_id, f)
            elif isinstance(values[0], bool):
                assert kind == "BOOLEAN", (pilot_id, f)
            elif isinstance(values[0], int | float):
                assert kind in NUMERIC, (pilot_id, f)
            else:
                assert kind == "VARCHAR", (pilot_id, f)
                assert set(values) <= set(_read(root, src)[f["column"]].dropna()), (pilot_id, f)
        for column in cohort.get("stratify_by", []):
            assert types[src].get(column) in ("VARCHAR", "BOOLEAN"), (pilot_id, column)
        if "assignment" in cohort:
            a = cohort["assignment"]
            assert types[a["source"]].get(a.get("id_column", cohort["id_column"])) == "VARCHAR"
            kinds = ("VARCHAR", "BIGINT") if "arms" in a else ("VARCHAR",)  # 0/1 needs a value map
            assert types[a["source"]].get(a["arm_column"]) in kinds
            for column in a.get("strata", []):
                assert types[a["source"]].get(column) == "VARCHAR", (pilot_id, column)
            assert types[a["source"]].get(a["assigned_at_column"]) == "TIMESTAMP"
        for m in spec["metrics"]:
            where = f"{pilot_id}.{m['name']}"
            if m["type"] == "ratio":
                numeric(m["numerator"]["source"], m["numerator"]["column"], where)
                numeric(m["denominator"]["source"], m["denominator"]["column"], where)
                continue
            if "event" in m:
                assert LAB["sources"][m["source"]].get("timestamp") in types[m["source"]]
                assert types[m["source"]].get(m["event"]["column"]) == "VARCHAR", where
                assert m["event"]["column"] == "event_type", where
                assert (spec["channel"], m["event"]["equals"]) in logged, (
                    f"{where}: not logged on {spec['channel']}"
                )
                if "column" in m:
                    numeric(m["source"], m["column"], where)
                continue
            numeric(m["source"], m["column"], where)
            if m["type"] == "proportion":
                assert set(_read(root, m["source"])[m["column"]].dropna().unique()) <= {0, 1}, where
            if "covariate" in m:
                numeric(m["source"], m["covariate"], where)
                numeric(cohort["source"], m["covariate"], where)


def test_event_windows_have_data_before_and_after_assignment(lab):
    root, assignments, _ = lab
    for pilot_id, spec in SPECS.items():
        for m in (m for m in spec["metrics"] if "event" in m):
            counts = _window_counts(root, assignments[pilot_id], m)
            where = f"{pilot_id}.{m['name']}"
            assert 0 < (counts["post"] > 0).sum() < len(counts), where  # events, and customers without any
            if m.get("cuped"):
                assert (counts["pre"] > 0).mean() > 0.05, where


def test_assigned_customers_missing_from_a_table_are_few_and_balanced(lab):
    root, assignments, _ = lab
    for pilot_id in (
        "service-twitter-fast-reply",
        "marketing-facebook-winback",
        "sales-linkedin-social-selling",
    ):
        table = _read(root, SPECS[pilot_id]["metrics"][0]["source"])
        a = assignments[pilot_id]
        missing = ~_isin(a["customer_id"], table["customer_id"])
        by_arm = missing.groupby(a["arm"]).mean()
        assert missing.any() and (by_arm < 0.06).all(), (pilot_id, by_arm)


# ------------------------------------------------------------------------------------------ the truth


def test_truth_covers_every_pilot_with_exactly_one_harmful(lab):
    truth = demo.load_truth(lab[0])
    pilots = truth["pilots"]
    assert set(pilots) == set(SPECS)
    classes = [t["expected"] for t in pilots.values()]
    assert classes.count("harmful") == 1 and classes.count("positive") >= 3 and classes.count("null") >= 2
    for pilot_id, t in pilots.items():
        spec = SPECS[pilot_id]
        assert t["primary_metric"] == spec["hypothesis"]["metric"]
        assert set(t["arms"]) == set(spec["cohort"]["arms"]) - {spec["cohort"]["control"]}
        sign = 1 if spec["hypothesis"]["direction"] == "increase" else -1
        for arm in t["arms"].values():
            assert arm["lift"] == pytest.approx(arm["effect"] / t["control_mean"], abs=1e-5)
            if arm["expected"] == "null":
                assert arm["effect"] == 0
            elif arm["expected"] == "positive":
                assert sign * arm["effect"] > 0
            else:
                assert sign * arm["effect"] < 0
    harmful = next(t for t in pilots.values() if t["expected"] == "harmful")
    gr = SPECS[demo.IMPORTED_PILOT]["guardrails"][0]
    assert harmful is pilots[demo.IMPORTED_PILOT]
    assert harmful["guardrails"][gr["metric"]]["arms"]["ugc_gallery"]["effect"] > gr["max_harm"]["absolute"]


def _primary_values(root: Path, spec: dict, assignment: pd.DataFrame) -> pd.Series:
    """Per-customer primary metric under DESIGN's intent-to-treat rules (0 for no events / missing proportions)."""
    m = next(m for m in spec["metrics"] if m["name"] == spec["hypothesis"]["metric"])
    if "event" in m:
        post = _window_counts(root, assignment, m)["post"].to_numpy()
        y = (post > 0) * 1.0 if m["aggregate"] == "any" else post * 1.0
        return pd.Series(y, index=assignment.index)
    table = _read(root, m["source"]).set_index("customer_id")[m["column"]]
    y = assignment["customer_id"].map(table)
    if m["type"] == "proportion":  # DESIGN's default: no row is a 0, a NULL value is excluded
        return y.where(_isin(assignment["customer_id"], table.index), 0.0)
    return y


def _mean_se(y: pd.Series, clusters: pd.Series | None) -> tuple[float, float]:
    """The mean and its standard error: over customers, or over clusters (Σ sums / Σ sizes, the delta
    method on cluster totals) when the pilot randomised clusters."""
    y = y.dropna()
    if clusters is None:
        return y.mean(), np.sqrt(y.var() / len(y))
    g = y.groupby(clusters[y.index]).agg(["sum", "size"])
    mean = g["sum"].sum() / g["size"].sum()
    k = len(g)
    return mean, np.sqrt(k / (k - 1) * ((g["sum"] - mean * g["size"]) ** 2).sum()) / g["size"].sum()


def test_true_effects_are_recovered_by_a_plain_itt_analysis(lab):
    root, assignments, _ = lab
    truth = demo.load_truth(root)["pilots"]
    customers = _read(root, "customers").set_index("customer_id")
    for pilot_id, spec in SPECS.items():
        a = assignments[pilot_id]
        arm = a["arm"]
        y = _primary_values(root, spec, a)
        unit = spec["cohort"].get("unit_column")
        clusters = a["customer_id"].map(customers[unit]) if unit else None
        control_mean, control_se = _mean_se(y[arm == spec["cohort"]["control"]], clusters)
        for name, t in truth[pilot_id]["arms"].items():
            treated_mean, treated_se = _mean_se(y[arm == name], clusters)
            effect = treated_mean - control_mean
            se = np.hypot(treated_se, control_se)
            interference = truth[pilot_id].get("interference")
            if interference and interference["bias"]:  # randomised by customer inside leaking communities
                expected = interference["expected_estimate"]
                assert t["effect"] - effect > 3 * se, (pilot_id, name, effect, t["effect"], se)  # it misses
            else:
                expected = t["effect"]
            assert abs(effect - expected) < 3.5 * se, (pilot_id, name, effect, expected, se)
            z = effect / se
            if t["expected"] == "null":
                assert abs(z) < 3, (pilot_id, name, z)
            else:  # positive and harmful effects are plain to see at the cap
                assert abs(z) > 3.5 and np.sign(z) == np.sign(t["effect"]), (pilot_id, name, z)


# ------------------------------------------------------------------------ communities and spillover


def test_community_members_belong_to_uneven_communities_nested_in_regions(base):
    customers = _read(base[0], "customers")
    assert list(customers.columns)[-1] == "community_id"  # appended: the columns before it are as they were
    assert (customers["community_id"].notna() == customers["community_member"]).all()
    members = customers.dropna(subset=["community_id"])
    sizes = members["community_id"].value_counts()
    assert 40 <= len(sizes) <= 80 and sizes.min() >= 30 and sizes.max() > 5 * sizes.min()
    assert (members.groupby("community_id")["region"].nunique() == 1).all()
    assert members["community_id"].str.split("-").str[0].eq(members["region"]).all()


# The digests of what existed before the communities, as the generator made it before them (#16): the
# customer table without community_id, and every older pilot's outcome block for fixed arms. A change here
# moves an older pilot's data, so its analysis, and the truth its tests check.
CUSTOMERS_BEFORE_COMMUNITIES = "f225b8d87fda5e96"
OUTCOME_BLOCKS = {
    "marketing-community-cocreation": "527c0069fb16e994",
    "marketing-facebook-winback": "ec0af79c5418ecca",
    "pr-facebook-advocate-stories": "e11193dd888241bd",
    "sales-community-expert-answers": "98e4669d1725ead2",
    "sales-email-renewal-voucher": "2aa0f00b0fb2a267",
    "sales-linkedin-social-selling": "fe482acf946f3b3d",
    "service-community-onboarding": "b3403f93d3ad0f48",
    "service-twitter-fast-reply": "72bc9225d5d6ddf1",
}


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for x in arrays:
        x = np.asarray(x)
        x = np.round(x, 9) if x.dtype.kind == "f" else x.astype(np.int64) if x.dtype == bool else x
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:16]


def test_the_community_column_changes_no_other_customer_column(base):
    customers = _read(base[0], "customers").drop(columns=["community_id"])
    rows = pd.util.hash_pandas_object(customers, index=False).to_numpy()
    assert _digest(rows) == CUSTOMERS_BEFORE_COMMUNITIES


def _block_digests() -> dict[str, str]:
    from labkit.demo.catalog import STREAM_OUTCOMES, pilot_stream, stream_rng
    from labkit.demo.outcomes import BLOCKS
    from labkit.demo.population import daily_rates

    pop = demo.Population(demo.DEMO_SEED)
    rates = daily_rates(pop)
    out = {}
    for pilot_id, (_, block) in sorted(BLOCKS.items()):
        arm = np.arange(pop.n) % len(demo.PILOTS[pilot_id].arms)
        cols, mus = block(
            stream_rng(demo.DEMO_SEED, STREAM_OUTCOMES, pilot_stream(pilot_id)), pop, rates, arm
        )
        values = [np.asarray(cols[k], dtype=float) for k in sorted(cols)]
        values += [m for k in sorted(mus) for m in np.atleast_2d(mus[k])]
        out[pilot_id] = _digest(*values)
    return out


def test_older_pilots_outcome_blocks_are_unchanged():
    assert _block_digests() == OUTCOME_BLOCKS


def test_the_ambassador_pilots_move_no_other_pilots_data(base, lab, tmp_path):
    """The period without the two ambassador pilots: every other file and truth as with them, but for the
    new outcome column and the community events of the ambassador cohorts."""
    shutil.copytree(base[0] / "data", tmp_path / "data")
    others = {k: v for k, v in lab[1].items() if k not in demo.AMBASSADOR_PILOTS}
    result = demo.simulate_outcomes(tmp_path, others)
    same = ("pipeline", "media_coverage")
    assert {
        k: (tmp_path / demo.PATHS[k]).read_bytes() == (lab[0] / demo.PATHS[k]).read_bytes() for k in same
    } == {k: True for k in same}
    without, with_ = (pd.read_csv(r / demo.PATHS["outcomes"]) for r in (tmp_path, lab[0]))
    new = ["purchased_90d"]  # without ambassadors, drawn as if nobody were one
    pd.testing.assert_frame_equal(without.drop(columns=new), with_.drop(columns=new))
    truth = demo.load_truth(lab[0])["pilots"]
    assert result["truth"]["pilots"] == {k: v for k, v in truth.items() if k in others}
    cohorts = set(pd.concat([lab[1][k]["customer_id"] for k in demo.AMBASSADOR_PILOTS]))
    without, with_ = (pd.read_parquet(r / demo.PATHS["engagement_events"]) for r in (tmp_path, lab[0]))
    # rows compared whole, by a 64-bit hash of every column (an outer merge on all columns: 3.5 CPU-s)
    rows_without, rows_with = (pd.util.hash_pandas_object(e, index=False) for e in (without, with_))
    assert rows_without.isin(rows_with).all()  # only added, nothing changed or removed
    added = with_[~rows_with.isin(rows_without).to_numpy()]
    assert set(added["customer_id"]) <= cohorts and set(added["channel"]) == {"community"}


def test_the_customer_randomised_ambassador_pilot_misses_the_spillover(lab):
    truth = demo.load_truth(lab[0])["pilots"]
    by_community, by_customer = (truth[k] for k in demo.AMBASSADOR_PILOTS)
    for t in (by_community, by_customer):
        effect = t["arms"]["ambassador"]["effect"]
        i = t["interference"]
        assert effect > 0 and i["direct"] > 0 and i["spillover"] > 0
        assert i["direct"] + i["spillover"] == pytest.approx(effect, abs=2e-6)
    assert by_community["interference"]["randomised_by"] == "community_id"
    assert by_community["interference"]["bias"] == 0
    i = by_customer["interference"]
    assert i["randomised_by"] == "customer"
    # its control arm reads the ambassadors' posts too: it sees about the direct effect, half the truth
    assert -0.7 < i["relative_bias"] < -0.4
    assert i["expected_estimate"] == pytest.approx(i["direct"], rel=0.1)


# ------------------------------------------------------------------------------------ determinism


def test_same_seed_same_files_and_a_rerun_changes_nothing(base, lab, tmp_path):
    summary = demo.build_base(tmp_path)
    assert summary == base[1]
    assert _digests(tmp_path, BASE_FILES) == base[2]
    demo.simulate_outcomes(tmp_path, lab[1])
    expected = _digests(lab[0], PERIOD_FILES)
    assert _digests(tmp_path, PERIOD_FILES) == expected
    reordered = {k: v.sample(frac=1, random_state=1) for k, v in reversed(lab[1].items())}
    demo.simulate_outcomes(tmp_path, reordered)  # again, in another order: the history is not duplicated
    assert _digests(tmp_path, PERIOD_FILES) == expected


def test_another_seed_gives_other_data(base, tmp_path):
    demo.build_base(tmp_path, seed=demo.DEMO_SEED + 1)
    a, b = _read(base[0], "customers"), _read(tmp_path, "customers")
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    assert not a.equals(b)
    assert (a["segment"] != b["segment"]).mean() > 0.2
    assert _digests(tmp_path, BASE_FILES)["engagement_events"] != base[2]["engagement_events"]


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {"no-such-pilot": a}, "not a demo pilot"),
        (lambda a: {"pr-blogger-early-access": a.assign(arm="vip")}, "unknown arm"),
        (
            lambda a: {"pr-blogger-early-access": a.assign(assigned_at=pd.Timestamp("2026-01-05"))},
            "before the pilot",
        ),
        (lambda a: {"pr-blogger-early-access": pd.concat([a, a])}, "twice"),
        (lambda a: {"pr-blogger-early-access": a.assign(customer_id="CUST-9999999")}, "not in the demo CRM"),
    ],
)
def test_bad_assignments_are_refused(base, change, message):
    a = pd.DataFrame(
        {"customer_id": ["CUST-0000021"], "arm": ["control"], "assigned_at": pd.Timestamp("2026-07-06")}
    )
    with pytest.raises(AssignmentError, match=message):
        demo.simulate_outcomes(base[0], change(a))


def test_simulate_needs_the_base_and_its_seed(base, tmp_path):
    with pytest.raises(LabkitError, match="build it first"):
        demo.simulate_outcomes(tmp_path, {})
    with pytest.raises(LabkitError, match="built with seed"):
        demo.simulate_outcomes(base[0], {}, seed=1)
    with pytest.raises(LabkitError, match="no truth yet"):
        demo.load_truth(tmp_path)
