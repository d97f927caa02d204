"""Segments (issue #16): per-segment effects of the primary metric, the arm × segment interaction test, the
correction across segments × arms, small cells withheld, and segments added after the first run labelled
exploratory — each number recomputed from the raw files with pandas, scipy and statsmodels."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep
from statsmodels.stats.proportion import test_proportions_2indep as sm_test_2indep

import labkit

N = 1500
RARE = 14  # customers of the segment "rare": about 5 per arm, below privacy.min_cell_size (10)
# the treatment's effect on spend per segment: it works for "north" only (a real interaction)
SPEND_EFFECT = {"north": 6.0, "south": 0.5, "rare": 0.0}


def pilot_text(segments: str, metric: str = "spend", correction: str = "bh") -> str:
    return textwrap.dedent(
        f"""\
        id: seg
        title: Who answers fast replies
        function: service
        channel: twitter
        stage: retention
        owner: lab@example.com
        hypothesis:
          statement: Fast replies raise spend.
          metric: {metric}
          direction: increase
          mde: {{relative: 0.1}}
        cohort:
          source: customers
          id_column: customer_id
          max_size: {N}
          arms: {{control: 1, fast: 1, faster: 1}}
          control: control
          start: 2026-11-01
        metrics:
          - {{name: spend, type: mean, source: outcomes, column: spend}}
          - {{name: converted, type: proportion, source: outcomes, column: converted}}
        analysis: {{segments: {segments}, correction: {correction}}}
        """
    )


@pytest.fixture
def seg_lab(tiny_lab):
    """The tiny lab with customers in segments (north, south, rare; regions), assigned, and outcomes with
    an arm × segment interaction on spend. Returns (lab, customers with arm and outcomes)."""
    rng = np.random.default_rng(16)
    segment = np.array(
        ["north"] * ((N - RARE) // 2) + ["south"] * (N - RARE - (N - RARE) // 2) + ["rare"] * RARE
    )
    customers = pd.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in range(N)],
            "segment": segment,
            "region": rng.choice(["east", "west"], N),
            "tier": np.where(np.arange(N) % 5 == 0, None, "gold"),  # no tier for a fifth: the value null
        }
    )
    (tiny_lab.root / "data").mkdir(exist_ok=True)
    customers.to_parquet(tiny_lab.root / "data" / "customers.parquet", index=False)
    tiny_lab.write("data/outcomes.csv", "customer_id,spend,converted\n")
    path = tiny_lab.pilot(pilot_text("[segment]"), name="seg")
    labkit.assign(labkit.load_pilot(path))
    units = pd.read_parquet(tiny_lab.root / "results" / "seg" / "assignment.parquet")
    df = customers.merge(units[["customer_id", "arm"]], on="customer_id")
    treated = (df["arm"] != "control").to_numpy()
    df["spend"] = 50 + rng.normal(0, 10, len(df)) + treated * df["segment"].map(SPEND_EFFECT).to_numpy()
    df["converted"] = (rng.random(len(df)) < 0.3 + 0.08 * treated * (df["segment"] == "north")).astype(int)
    df[["customer_id", "spend", "converted"]].to_csv(tiny_lab.root / "data" / "outcomes.csv", index=False)
    k = rng.poisson(1.5, len(df))
    ts = pd.Timestamp("2026-11-01") + pd.to_timedelta(rng.integers(-40, 40, k.sum()), unit="D")
    pd.DataFrame(
        {
            "customer_id": np.repeat(df["customer_id"].to_numpy(), k),
            "ts": ts.astype("datetime64[us]"),
            "event_type": rng.choice(["reply", "like"], k.sum()),
        }
    ).to_parquet(tiny_lab.root / "data" / "events.parquet", index=False)
    return tiny_lab, df


def analyze(lab, segments: str, **kwargs) -> dict:
    path = lab.pilot(pilot_text(segments, **kwargs), name="seg")
    data = labkit.analyze(labkit.load_pilot(path)).to_dict()
    json.dumps(data, allow_nan=False)
    return data


def rows_of(data: dict, column: str) -> dict[tuple, dict]:
    return {(r["value"], r["arm"]): r for r in data["segments"] if r["column"] == column}


def test_per_segment_effects_are_welch_per_segment(seg_lab):
    lab, df = seg_lab
    data = analyze(lab, "[segment, region]")
    assert [k for k in data if k in ("segments", "heterogeneity")] == ["segments", "heterogeneity"]
    for column in ("segment", "region"):
        got = rows_of(data, column)
        for value, group in df.groupby(column):
            for arm in ("fast", "faster"):
                r = got[(value, arm)]
                if value == "rare":
                    continue
                c = group.loc[group["arm"] == "control", "spend"]
                t = group.loc[group["arm"] == arm, "spend"]
                welch = stats.ttest_ind(t, c, equal_var=False)
                ci = welch.confidence_interval(0.95)
                assert (r["n_control"], r["n_treatment"]) == (len(c), len(t))
                assert r["effect"] == pytest.approx(t.mean() - c.mean(), rel=1e-9)
                assert r["ci_low"] == pytest.approx(ci.low, rel=1e-7)
                assert r["ci_high"] == pytest.approx(ci.high, rel=1e-7)
                assert r["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
                assert r["lift"] == pytest.approx((t.mean() - c.mean()) / abs(c.mean()), rel=1e-9)
                assert r["metric"] == "spend" and r["exploratory"] is False


EVENTS = """\
  - {name: replies, type: mean, source: events, event: {column: event_type, equals: reply}, aggregate: count,
     window_days: 30, cuped: true}
  - {name: spend_median, type: quantile, quantile: 0.5, source: outcomes, column: spend}
"""


@pytest.mark.parametrize("metric", ["spend", "converted", "replies", "spend_median"])
def test_the_segments_of_a_column_add_up_to_the_whole(seg_lab, metric):
    """Every customer is in exactly one value of a column: the per-value statistics of the one (arm, value)
    query add up to the metric's per-arm statistics (events with their windows and CUPED, quantile values)."""
    from labkit.data.aggregate import aggregate_metric, units_table
    from labkit.data.sources import Engine
    from labkit.segments import segment_cells

    lab, _ = seg_lab
    text = pilot_text("[segment, region]", metric=metric).replace("analysis:", EVENTS + "analysis:")
    pilot = labkit.load_pilot(lab.pilot(text, name="seg"))
    engine = Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        whole = aggregate_metric(engine, pilot, pilot.primary, units)
        cells = segment_cells(engine, pilot, units, "region")
        tiers = segment_cells(engine, pilot, units, "tier")
    finally:
        engine.close()
    assert list(cells) == ["east", "west"] and list(tiers) == ["gold", None]
    assert tiers[None].assigned["control"] + tiers["gold"].assigned["control"] == whole.assigned["control"]
    for arm in pilot.arms:
        parts = [md.arms[arm] for md in cells.values()]
        for field in ("n", "sum", "sum_sq", "sum_x", "sum_x_sq", "sum_xy"):
            assert sum(getattr(p, field) for p in parts) == pytest.approx(getattr(whole.arms[arm], field))
        assert sum(md.assigned[arm] for md in cells.values()) == whole.assigned[arm]
        if metric == "spend_median":
            joined = np.sort(np.concatenate([md.values[arm] for md in cells.values()]))
            assert np.array_equal(joined, whole.values[arm])


def test_per_segment_proportions_are_z_tests(seg_lab):
    lab, df = seg_lab
    data = analyze(lab, "[segment]", metric="converted")
    got = rows_of(data, "segment")
    for value in ("north", "south"):
        g = df[df["segment"] == value]
        c, t = g.loc[g["arm"] == "control", "converted"], g.loc[g["arm"] == "fast", "converted"]
        r = got[(value, "fast")]
        args = (t.sum(), len(t), c.sum(), len(c))
        low, high = confint_proportions_2indep(*args, method="wald", compare="diff")
        assert r["effect"] == pytest.approx(t.mean() - c.mean(), rel=1e-9)
        assert (r["ci_low"], r["ci_high"]) == (pytest.approx(low, rel=1e-7), pytest.approx(high, rel=1e-7))
        assert r["p_value"] == pytest.approx(sm_test_2indep(*args, method="wald").pvalue, rel=1e-6)


def test_the_interaction_p_value_is_the_ols_f_test(seg_lab):
    lab, df = seg_lab
    data = analyze(lab, "[segment, region]")
    het = {(h["column"], h["arm"]): h["p_value"] for h in data["heterogeneity"]}
    assert len(het) == 4 and all(h["metric"] == "spend" for h in data["heterogeneity"])
    for column in ("segment", "region"):
        for arm in ("fast", "faster"):
            d = df[
                df["arm"].isin(["control", arm]) & (df["segment"] != "rare" if column == "segment" else True)
            ]
            d = d.rename(columns={column: "seg"})
            full = smf.ols("spend ~ C(seg) * C(arm)", data=d).fit()
            additive = smf.ols("spend ~ C(seg) + C(arm)", data=d).fit()
            expected = anova_lm(additive, full)["Pr(>F)"].iloc[1]
            assert het[(column, arm)] == pytest.approx(expected, rel=1e-6)
    assert het[("segment", "fast")] < 0.01  # the planted interaction is found


@pytest.mark.parametrize("correction, method", [("bh", "fdr_bh"), ("holm", "holm")])
def test_the_correction_runs_across_segments_and_arms(seg_lab, correction, method):
    lab, _ = seg_lab
    data = analyze(lab, "[segment, region]", correction=correction)
    shown = [r for r in data["segments"] if r["p_value"] is not None]
    assert len(shown) == 8  # (north, south, east, west) x (fast, faster); rare is withheld
    expected = multipletests([r["p_value"] for r in shown], method=method)[1]
    assert [r["p_value_adjusted"] for r in shown] == pytest.approx(list(expected), rel=1e-9)


def test_small_cells_are_withheld_never_shown(seg_lab):
    lab, _ = seg_lab
    data = analyze(lab, "[segment]")
    for arm in ("fast", "faster"):
        r = rows_of(data, "segment")[("rare", arm)]
        numbers = (
            "n_control",
            "n_treatment",
            "effect",
            "ci_low",
            "ci_high",
            "lift",
            "p_value",
            "p_value_adjusted",
        )
        assert all(r[k] is None for k in numbers)
        assert r["reason"] == "suppressed_small_cell"
    (warning,) = [w for w in data["warnings"] if "privacy.min_cell_size" in w]
    assert "segment=rare (fast)" in warning and "segment=rare (faster)" in warning


def test_a_pilot_without_segments_has_neither_block(seg_lab):
    lab, _ = seg_lab
    path = lab.pilot(pilot_text("[segment]").replace("segments: [segment], ", ""), name="seg")
    data = labkit.analyze(labkit.load_pilot(path)).to_dict()
    assert "segments" not in data and "heterogeneity" not in data


def test_segments_added_after_the_first_run_are_exploratory(seg_lab):
    """The first run (recorded in a real local MLflow store) declared [segment]; region came later."""
    from labkit.tracking import RunRecord, Tracker, flatten_params

    lab, _ = seg_lab
    assert all(r["exploratory"] is False for r in analyze(lab, "[segment, region]")["segments"])  # no run yet
    first = labkit.load_pilot(lab.pilot(pilot_text("[segment]"), name="seg"))
    params = flatten_params(first.spec.model_dump(mode="json"))
    assert json.loads(params["analysis.segments"]) == ["segment"]
    record = RunRecord(
        pilot="seg", run_name="seg first", status="FINISHED", run_key="seg/first",
        tags={"labkit.function": "service"}, params=params,
    )  # fmt: skip
    Tracker(first.lab).record(record)
    data = analyze(lab, "[segment, region]")
    assert {r["column"]: r["exploratory"] for r in data["segments"]} == {"segment": False, "region": True}
    assert any("region was added after the pilot's first run" in w for w in data["warnings"])
    assert not math.isnan(data["heterogeneity"][0]["p_value"])


CLUSTER_PILOT = """\
id: cl
title: Community replies by tier
function: service
channel: community
stage: retention
owner: lab@example.com
hypothesis: {statement: Replies raise spend., metric: spend, direction: increase, mde: {relative: 0.1}}
cohort:
  source: customers
  id_column: customer_id
  unit_column: community
  max_size: 5000
  arms: {control: 1, fast: 1}
  control: control
  start: 2026-11-01
metrics:
  - {name: spend, type: mean, source: outcomes, column: spend}
analysis: {segments: [tier]}
"""


def test_a_cluster_pilots_segments_are_cluster_robust(tiny_lab, monkeypatch):
    """Within a segment the clusters' parts stay the independent units: each value's estimate is the
    overall cluster-robust one (CR2, labkit.stats.cluster) on that segment's cluster totals (pandas here)."""
    from labkit.stats.cluster import ClusterCells, cluster_contrast

    monkeypatch.setenv("LABKIT_ID_KEY", "test-key-0123456789abcdef")
    rng = np.random.default_rng(7)
    community = np.repeat([f"com-{g:03d}" for g in range(30)], rng.integers(8, 30, 30))
    customers = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(community.size)],
            "community": community,
            "tier": rng.choice(["gold", "silver"], community.size),
        }
    )
    (tiny_lab.root / "data").mkdir(exist_ok=True)
    customers.to_parquet(tiny_lab.root / "data" / "customers.parquet", index=False)
    tiny_lab.write("data/outcomes.csv", "customer_id,spend\n")
    tiny_lab.write("experiments/cl.yaml", CLUSTER_PILOT)
    frame = labkit.assign(labkit.load_pilot("cl")).frame()
    rows = customers.merge(frame[["customer_id", "arm"]], on="customer_id")
    u = rng.normal(0, 3, 30)[pd.factorize(rows.community)[0]]
    treated = (rows.arm == "fast").to_numpy()
    rows["spend"] = 40 + u + treated * np.where(rows.tier == "gold", 4.0, 0.0) + rng.normal(0, 4, len(rows))
    rows[["customer_id", "spend"]].to_csv(tiny_lab.root / "data" / "outcomes.csv", index=False)
    data = labkit.analyze(labkit.load_pilot("cl")).to_dict()
    assert data["heterogeneity"] == [{"column": "tier", "metric": "spend", "arm": "fast", "p_value": None}]
    for r in data["segments"]:
        d = rows[rows.tier == r["value"]].assign(cell=lambda x: (x.arm == "fast").astype(int))
        g = d.groupby(["community", "cell"], as_index=False).agg(y=("spend", "sum"), n=("spend", "size"))
        ref = cluster_contrast(ClusterCells.of(g.community, g.cell, g.y, g.n), 1, 0)
        assert r["method"] == "cluster-robust t (CR2)"
        assert r["effect"] == pytest.approx(ref.effect, rel=1e-9)
        assert (r["ci_low"], r["ci_high"], r["p_value"]) == pytest.approx(
            (ref.ci_low, ref.ci_high, ref.p_value)
        )


def test_segment_numbers_go_to_mlflow_and_the_forest_figure():
    import matplotlib

    matplotlib.use("Agg")
    from labkit.notebook import segment_forest
    from labkit.tracking import metrics_from_results

    rows = [
        {"column": "segment", "value": "north & co", "metric": "spend", "arm": "fast", "n_control": 300,
         "n_treatment": 310, "effect": 6.1, "ci_low": 4.0, "ci_high": 8.2, "lift": 0.12, "p_value": 1e-6,
         "p_value_adjusted": 4e-6, "exploratory": False},
        {"column": "region", "value": None, "metric": "spend", "arm": "fast", "n_control": 90,
         "n_treatment": 95, "effect": 0.4, "ci_low": -2.0, "ci_high": 2.8, "lift": 0.01, "p_value": 0.7,
         "p_value_adjusted": 0.7, "exploratory": True},
        {"column": "segment", "value": "rare", "metric": "spend", "arm": "fast", **dict.fromkeys(
            ("n_control", "n_treatment", "effect", "ci_low", "ci_high", "lift", "p_value", "p_value_adjusted")),
         "exploratory": False, "reason": "suppressed_small_cell"},
    ]  # fmt: skip
    metrics = metrics_from_results({"metrics": [], "segments": rows})
    assert metrics["segment.segment.north _ co.fast.effect"] == 6.1
    assert metrics["segment.region.null.fast.exploratory"] == 1.0
    assert metrics["segment.segment.rare.fast.exploratory"] == 0.0
    assert not any(
        k.startswith("segment.segment.rare.fast.") and not k.endswith("exploratory") for k in metrics
    )
    fig = segment_forest(rows, good="increase")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "segment = rare · fast — withheld" in labels and "region = (none) · fast (exploratory)" in labels
