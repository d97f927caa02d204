"""The effect over time wired through (labkit.over_time): `labkit analyze --over-time` (JSON, table, CSV),
``labkit.analyze(pilot, over_time=True)`` with a look, and `labkit run`, whose default notebook records the
curve as MLflow metric history.

One tiny lab, built once: 300 customers drawn into two arms on 2026-11-01, reply events around a 14-day
window (treated customers reply a little more), and two pilots — ``ev``, whose primary metric is that
event count (no CUPED, so the last day is the analysis itself), and ``tab``, whose primary is a
per-customer table column (no over-time). The statistics per day are tested in tests/stats and
tests/data; here: the shape, the agreement with the plain analysis, and the wiring.

A second lab holds cluster-randomised pilots (24 accounts, ``cohort.unit_column: account_id``): their curve
comes from cluster totals, and each day is checked against statsmodels OLS on that day's cumulative
per-customer values recomputed from the parquet files (effect; CR1 se of the pandas totals = statsmodels'
cluster-robust se), the CR2 se from its matrix definition, the interval by ``cluster_contrast`` on those
totals (CUPED, the confidence sequence and a saturation design's direct effect too), the last day = the
analysis, and `labkit analyze --over-time --json`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit
from labkit import cli
from labkit.errors import LabkitError

from conftest import LAB_YAML, pilot_yaml

REPO = Path(__file__).resolve().parents[1]
START = pd.Timestamp("2026-11-01")
WINDOW = 14
N = 300
ROW_KEYS = ["day", "as_of", "metric", "arm", "n_control", "n_treatment", "effect", "ci_low", "ci_high"]
REPLIES = {
    "name": "replies", "type": "mean", "source": "events", "event": {"column": "event_type", "equals": "reply"},
    "aggregate": "count", "window_days": WINDOW,
}  # fmt: skip
CHURNED = {"name": "churned", "type": "proportion", "source": "outcomes", "column": "churned"}
RATIO = {
    "name": "replies", "type": "ratio", "numerator": {"source": "outcomes", "column": "churned"},
    "denominator": {"source": "outcomes", "column": "churned"},
}  # fmt: skip


def _pilot(pid: str, primary: str, **overrides) -> str:
    return pilot_yaml(
        id=pid, metrics=[REPLIES, CHURNED], **{"hypothesis.metric": primary, "hypothesis.direction": "increase"},
        **overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory) -> Path:
    """The lab: customers and outcomes, the pilots assigned, then events drawn knowing each one's arm."""
    root = tmp_path_factory.mktemp("over-time-lab").resolve()
    for sub in ("configs", "experiments", "data", "notebooks"):
        (root / sub).mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    shutil.copy(REPO / "notebooks" / "pilot_analysis.ipynb", root / "notebooks" / "pilot_analysis.ipynb")
    rng = np.random.default_rng(16)
    ids = [f"C{i:04d}" for i in range(N)]
    pd.DataFrame({"customer_id": ids, "has_twitter": True}).to_parquet(root / "data" / "customers.parquet")
    pd.DataFrame({"customer_id": ids, "churned": (rng.random(N) < 0.2).astype(int)}).to_csv(
        root / "data" / "outcomes.csv", index=False
    )
    pilots = {
        "ev": _pilot("ev", "replies"),
        "seq": _pilot("seq", "replies", **{"analysis.sequential": True}),
        "tab": _pilot("tab", "churned"),
    }
    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    for pid, text in pilots.items():
        (root / "experiments" / f"{pid}.yaml").write_text(text)
        labkit.assign(labkit.load_pilot(root / "experiments" / f"{pid}.yaml", lab=lab))
    arms = pd.read_parquet(root / "results" / "ev" / "assignment.parquet").set_index("customer_id")["arm"]
    treated = np.array([arms.get(i) == "fast" for i in ids])
    k = rng.poisson(np.where(treated, 2.6, 2.0))
    who = np.repeat(np.arange(N), k)
    seconds = rng.integers(-5 * 86_400, (WINDOW + 5) * 86_400, who.size)
    write_events(root, np.asarray(ids)[who], seconds, rng)
    return root


def write_events(root: Path, customers: np.ndarray, seconds: np.ndarray, rng) -> None:
    """The lab's events file: one event per (customer, seconds after START), two replies to a like."""
    pd.DataFrame(
        {
            "customer_id": customers,
            "ts": (START + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us]"),
            "event_type": rng.choice(["reply", "reply", "like"], customers.size),
        }
    ).to_parquet(root / "data" / "events.parquet", index=False)


def run_cli(root: Path, *args: str) -> tuple[int, str, str]:
    """``labkit.cli.main`` in this process, stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--lab", str(root), *args])
    return code, out.getvalue(), err.getvalue()


def load(root: Path, pid: str):
    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    return labkit.load_pilot(root / "experiments" / f"{pid}.yaml", lab=lab)


def primary_row(data: dict) -> dict:
    (row,) = [m for m in data["metrics"] if m["role"] == "primary"]
    return row


def test_analyze_over_time_json_has_one_row_per_day_ending_at_the_analysis(lab_root):
    code, out, err = run_cli(lab_root, "analyze", "ev", "--over-time", "--json")
    assert code == 0, err
    data = json.loads(out)
    rows = data["over_time"]
    assert data["over_time_interval"] == "fixed-horizon"
    assert [r["day"] for r in rows] == list(range(1, WINDOW + 1))  # every window closed on day 14
    assert [r["as_of"] for r in rows] == [
        (START + pd.Timedelta(days=d)).date().isoformat() for d in range(1, 15)
    ]
    assert all(list(r) == ROW_KEYS and r["metric"] == "replies" and r["arm"] == "fast" for r in rows)
    want = primary_row(data)
    last = rows[-1]
    assert (last["n_control"], last["n_treatment"]) == (want["n_control"], want["n_treatment"])
    assert last["effect"] == pytest.approx(want["effect"], rel=1e-12, abs=1e-12)
    assert (last["ci_low"], last["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]), rel=1e-9)
    assert rows[0]["effect"] != pytest.approx(last["effect"])  # a curve, not one number repeated

    # asked for only: without --over-time the JSON is the one it always was
    code, plain, _ = run_cli(lab_root, "analyze", "ev", "--json")
    plain = json.loads(plain)
    assert "over_time" not in plain and "over_time_interval" not in plain
    for d in (data, plain):
        d["meta"].pop("analysed_at")
    assert {k: v for k, v in data.items() if not k.startswith("over_time")} == plain
    assert list(data)[-3:] == ["over_time", "over_time_interval", "meta"]


def test_the_terminal_shows_the_days_in_80_columns_and_csv_gives_the_curve(lab_root, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(lab_root, "analyze", "ev", "--over-time")
    assert code == 0, err
    tail = out[out.index("effect over time: replies") :].splitlines()
    assert tail[0] == "effect over time: replies (fixed-horizon, welch-t)"  # 14 days: every day shown
    assert len(tail) == 2 + WINDOW and all(len(line) <= 80 for line in tail)
    assert tail[-1].split()[:3] == ["14", "2026-11-15", "fast"]
    code, out, err = run_cli(lab_root, "analyze", "ev", "--over-time", "--format", "csv")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == ["pilot", *ROW_KEYS] and list(frame.day) == list(range(1, WINDOW + 1))


def test_a_table_metric_says_no_over_time_in_one_line(lab_root):
    code, out, err = run_cli(lab_root, "analyze", "tab", "--over-time")
    assert code == 0, err
    notes = [line for line in out.splitlines() if "over-time" in line]
    assert notes == ["no over-time for 'churned': its per-customer table has no event time"]
    code, out, err = run_cli(lab_root, "analyze", "tab", "--over-time", "--json")
    assert code == 0 and "over_time" not in json.loads(out)  # stdout stays the contract; the note on stderr
    assert err.strip() == notes[0]


@settings(max_examples=300, deadline=None)
@given(
    start=st.dates(dt.date(2000, 1, 1), dt.date(2090, 12, 31)),
    offset_s=st.integers(-3 * 86400, 3 * 86400),
    zone_min=st.none() | st.integers(-14 * 60, 14 * 60),
    as_text=st.booleans(),
)
def test_a_look_is_refused_exactly_when_it_is_not_after_the_start_in_any_zone(
    start, offset_s, zone_min, as_text
):
    """Any start, any look near it, naive (UTC) or in any UTC offset, as text (the CLI's) or a datetime: refused
    iff the look's UTC instant is at or before the start's midnight UTC (computed here from the instant)."""
    from labkit.analysis import as_of_problem

    instant = dt.datetime.combine(start, dt.time(), dt.UTC) + dt.timedelta(seconds=offset_s)
    look = (
        instant.replace(tzinfo=None)
        if zone_min is None
        else instant.astimezone(dt.timezone(dt.timedelta(minutes=zone_min)))
    )
    problem = as_of_problem(SimpleNamespace(start=start), look.isoformat() if as_text else look)
    assert (problem is not None) == (offset_s <= 0), (look, problem)
    if problem:
        assert problem.endswith(f"give a date after {start.isoformat()}")
    if offset_s % 86400 == 0 and zone_min is None:  # a date alone is its midnight UTC
        assert (as_of_problem(SimpleNamespace(start=start), instant.date()) is None) == (offset_s > 0)


def test_a_look_stops_at_its_day_and_sequential_mode_gives_confidence_sequences(lab_root):
    ev = load(lab_root, "ev")
    look = labkit.analyze(ev, as_of="2026-11-08", over_time=True).to_dict()
    assert [r["day"] for r in look["over_time"]] == list(range(1, 8))  # the look at 11-08 is day 7
    assert look["over_time"][-1]["effect"] == pytest.approx(primary_row(look)["effect"], rel=1e-12, abs=1e-12)
    # half of the start day seen: no day's look yet; a look at the start itself sees nothing and is refused
    assert labkit.analyze(ev, as_of="2026-11-01T12:00", over_time=True).over_time.note.endswith(
        "before day 1"
    )
    with pytest.raises(
        LabkitError, match=r"^ev: as_of 2026-11-01 is not after the pilot's start \(2026-11-01"
    ):
        labkit.analyze(ev, as_of="2026-11-01")

    seq = labkit.analyze(load(lab_root, "seq"), over_time=True).to_dict()
    assert seq["over_time_interval"] == "confidence sequence"
    last, want = seq["over_time"][-1], primary_row(seq)
    assert (last["ci_low"], last["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]), rel=1e-9)
    fixed = labkit.analyze(ev, over_time=True).to_dict()["over_time"][-1]
    assert last["ci_high"] - last["ci_low"] > fixed["ci_high"] - fixed["ci_low"]


def test_labkit_run_records_the_curve_as_metric_history(lab_root, tmp_path, monkeypatch):
    """A real `labkit run` of ``ev`` (the default notebook, its ``over_time`` parameter left at True) in a
    copy of the lab: results.json carries the rows, MLflow a point per day at step = day. The console
    script's ``main`` runs in this process (its kernel is still a process of its own): a new interpreter
    would add only its imports."""
    from mlflow import MlflowClient

    root = tmp_path / "lab"
    shutil.copytree(lab_root, root)
    for name in ("LABKIT_LAB", "LABKIT_TRACKING_URI", "COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(root)
    code, out, err = run_cli(root, "run", "ev")
    assert code == 0, (out + err)[-3000:]
    (folder,) = (root / "results" / "ev" / "runs").iterdir()
    results = json.loads((folder / "results.json").read_text())
    rows = results["over_time"]
    assert [r["day"] for r in rows] == list(range(1, WINDOW + 1))
    assert (folder / "effect_over_time.png").is_file()

    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    client = MlflowClient(lab.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(lab.spec.mlflow_experiment).experiment_id])
    history = sorted(
        client.get_metric_history(run.info.run_id, "over_time.replies.fast.effect"), key=lambda m: m.step
    )
    assert [m.step for m in history] == [r["day"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["effect"] for r in rows], rel=1e-12, abs=1e-12)
    midnight = [dt.datetime.fromisoformat(r["as_of"]).replace(tzinfo=dt.UTC).timestamp() * 1000 for r in rows]
    assert [m.timestamp for m in history] == midnight
    assert history[-1].value == pytest.approx(primary_row(results)["effect"], rel=1e-12, abs=1e-12)

    # A look back (`--as-of` a week in): a newer run whose look is older keeps labkit.latest off, so the
    # leadership view stays on the run that looked later.
    code, out, err = run_cli(root, "run", "ev", "--as-of", "2026-11-08")
    assert code == 0, (out + err)[-3000:]
    runs = {r.info.run_id: r for r in client.search_runs([run.info.experiment_id])}
    (back,) = set(runs) - {run.info.run_id}
    assert runs[back].data.tags["labkit.look"] == "2026-11-08T00:00:00.000Z"
    assert runs[back].info.start_time > run.info.start_time
    assert {i: r.data.tags["labkit.latest"] for i, r in runs.items()} == {
        run.info.run_id: "true",
        back: "false",
    }


def test_which_primary_metrics_have_no_over_time_and_the_days_the_terminal_shows(lab_root, tmp_path):
    from labkit.over_time import shown_days, unavailable

    lab = labkit.load_lab(lab_root / "configs" / "lab.yaml")
    cases = {
        "cluster": ({"cohort.unit_column": "account_id"}, None),  # from cluster totals (tests below)
        "cluster-ratio": (
            {"cohort.unit_column": "account_id", "metrics.0": RATIO},
            "no over-time for 'replies': a ratio metric has no daily history (proportions and means have)",
        ),
        "top": (
            {"metrics.0": REPLIES | {"aggregate": "max", "column": "value"}},
            "no over-time for 'replies': its 'max' aggregate does not add up day by day (count, sum, any do)",
        ),
        "ok": ({}, None),
    }
    for pid, (overrides, want) in cases.items():
        path = tmp_path / f"why-{pid}.yaml"  # beside the lab: the shared lab stays as built
        path.write_text(_pilot(f"why-{pid}", "replies", **overrides))
        assert unavailable(labkit.load_pilot(path, lab=lab)) == want, pid
    assert shown_days(list(range(1, 15))) == list(range(1, 15))
    assert shown_days(list(range(1, 31))) == [1, 7, 14, 21, 28, 30]


# --------------------------------------------------------------------------------------------------
# cluster-randomised pilots (cohort.unit_column): the curve from cluster totals, each day checked against
# statsmodels on that day's cumulative per-customer values, recomputed here from the raw rows

N_ACCOUNTS = 24
CLUSTER_PILOTS = {
    "cl": {},
    "clseq": {"analysis.sequential": True, "cohort.max_clusters": 40},  # tuned to 40 clusters, 24 drawn
    "clcuped": {"metrics.0": REPLIES | {"cuped": True}},
    "clany": {"metrics.0": REPLIES | {"type": "proportion", "aggregate": "any"}},
    "clsat": {"cohort.saturation": [0, 0.5, 1]},
}


@pytest.fixture(scope="module")
def cluster_root(tmp_path_factory) -> Path:
    """A lab of 24 accounts of 3–20 customers, the cluster pilots drawn, then reply events with an account
    effect (ICC well above 0), more for treated accounts, in and before the windows."""
    root = tmp_path_factory.mktemp("over-time-clusters").resolve()
    for sub in ("configs", "experiments", "data"):
        (root / sub).mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    rng = np.random.default_rng(61)
    sizes = rng.integers(3, 21, N_ACCOUNTS)
    accounts = np.repeat([f"A{g:02d}" for g in range(N_ACCOUNTS)], sizes)
    ids = [f"K{i:04d}" for i in range(accounts.size)]
    pd.DataFrame({"customer_id": ids, "account_id": accounts, "has_twitter": True}).to_parquet(
        root / "data" / "customers.parquet"
    )
    pd.DataFrame({"customer_id": ids, "churned": 0}).to_csv(root / "data" / "outcomes.csv", index=False)
    lab = labkit.load_lab(root / "configs" / "lab.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_ID_KEY", "test-key-0123456789abcdef")
        for pid, overrides in CLUSTER_PILOTS.items():
            text = _pilot(pid, "replies", **{"cohort.unit_column": "account_id"}, **overrides)
            (root / "experiments" / f"{pid}.yaml").write_text(text)
            labkit.assign(labkit.load_pilot(root / "experiments" / f"{pid}.yaml", lab=lab))
    arms = pd.read_parquet(root / "results" / "cl" / "assignment.parquet").set_index("customer_id")["arm"]
    treated = np.array([arms.get(i) == "fast" for i in ids])
    account_rate = rng.gamma(2.0, 0.5, N_ACCOUNTS)[pd.factorize(accounts)[0]]
    k = rng.poisson(account_rate * np.where(treated, 2.6, 2.0))
    who = np.repeat(np.arange(accounts.size), k)
    seconds = rng.integers(-10 * 86_400, (WINDOW + 3) * 86_400, who.size)
    write_events(root, np.asarray(ids)[who], seconds, rng)
    return root


@pytest.fixture(scope="module")
def analysed(cluster_root):
    """``analysed(pid)``: the cluster pilot's analysis with its over-time, computed once for the module."""
    done = {}

    def get(pid: str):
        if pid not in done:
            done[pid] = labkit.analyze(load(cluster_root, pid), over_time=True)
        return done[pid]

    return get


def cumulative_customers(root: Path, pid: str, day: int) -> pd.DataFrame:
    """Each assigned customer on ``day``: arm, account, replies in [at, min(at + window, start + day)) and
    in the pre-period [at − window, at), straight from the parquet files."""
    units = pd.read_parquet(root / "results" / pid / "assignment.parquet")
    units["assigned_at"] = pd.to_datetime(units["assigned_at"]).dt.tz_localize(None)
    accounts = pd.read_parquet(root / "data" / "customers.parquet")[["customer_id", "account_id"]]
    ev = pd.read_parquet(root / "data" / "events.parquet")
    ev = ev[ev.event_type == "reply"].merge(units[["customer_id", "assigned_at"]], on="customer_id")
    window = pd.Timedelta(days=WINDOW)
    look = START + pd.Timedelta(days=day)
    post = ev[(ev.ts >= ev.assigned_at) & (ev.ts < ev.assigned_at + window) & (ev.ts < look)]
    pre = ev[(ev.ts >= ev.assigned_at - window) & (ev.ts < ev.assigned_at)]
    out = units[["customer_id", "arm"]].merge(accounts, on="customer_id")
    out["y"] = out.customer_id.map(post.groupby("customer_id").size()).fillna(0).astype(float)
    out["x"] = out.customer_id.map(pre.groupby("customer_id").size()).fillna(0).astype(float)
    return out


def cr2_reference(y: np.ndarray, X: np.ndarray, groups: np.ndarray) -> float:
    """The CR2 standard error of the arm's coefficient (Bell & McCaffrey 2002), from its matrix definition."""
    bread = np.linalg.inv(X.T @ X)
    e = y - X @ (bread @ X.T @ y)
    meat = np.zeros((X.shape[1], X.shape[1]))
    for g in np.unique(groups):
        s = groups == g
        w, v = np.linalg.eigh(np.eye(s.sum()) - X[s] @ bread @ X[s].T)
        u = X[s].T @ (v @ np.diag(1 / np.sqrt(np.clip(w, 1e-12, None))) @ v.T) @ e[s]
        meat += np.outer(u, u)
    return float(np.sqrt((bread @ meat @ bread)[1, 1]))


@pytest.mark.parametrize("pid", ["cl", "clany"])
def test_a_cluster_pilots_days_match_statsmodels_on_each_days_customers(cluster_root, analysed, pid):
    """Each day: the effect is OLS's arm coefficient on that day's cumulative per-customer values, the CR1
    se of the same day's cluster totals (computed here by pandas) is statsmodels' cluster-robust se (so the
    totals are right), and the interval is the CR2 one labkit states (se from the matrix definition, t with
    Bell–McCaffrey df, by ``cluster_contrast`` on the pandas totals)."""
    import statsmodels.api as sm

    from labkit.stats.cluster import ClusterCells, cluster_contrast

    result = analysed(pid).to_dict()
    rows = result["over_time"]
    assert result["over_time_interval"] == "fixed-horizon" and [r["day"] for r in rows] == list(range(1, 15))
    effects = []
    for r in rows:
        d = cumulative_customers(cluster_root, pid, r["day"])
        if pid == "clany":
            d["y"] = (d.y > 0).astype(float)
        treat = (d.arm == "fast").to_numpy(dtype=float)
        X, y, groups = sm.add_constant(treat), d.y.to_numpy(), pd.factorize(d.account_id)[0]
        ols = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups})
        assert r["effect"] == pytest.approx(ols.params[1], rel=1e-9, abs=1e-12)
        assert (r["n_control"], r["n_treatment"]) == (int((treat == 0).sum()), int(treat.sum()))
        g = d.groupby(["account_id", "arm"], as_index=False).agg(y=("y", "sum"), n=("y", "size"))
        cells = ClusterCells.of(g.account_id, (g.arm == "fast").astype(int), g.y, g.n)
        assert cluster_contrast(cells, 1, 0, small_sample="cr1").se == pytest.approx(ols.bse[1], rel=1e-9)
        ref = cluster_contrast(cells, 1, 0)
        assert ref.se == pytest.approx(cr2_reference(y, X, groups), rel=1e-9)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-9, abs=1e-12)
        effects.append(r["effect"])
    assert len(set(np.round(effects, 9))) > 3  # a curve, not one number repeated


@pytest.mark.parametrize("pid", ["cl", "clseq", "clcuped", "clany", "clsat"])
def test_a_cluster_pilots_last_day_is_its_analysis(analysed, pid):
    """The windows close on day 14, so the last row is the analysis' own primary row: effect, interval and
    counts (CUPED on cluster totals, and the confidence sequence with clusters as the sample size, too)."""
    result = analysed(pid).to_dict()
    last, want = result["over_time"][-1], primary_row(result)
    assert want["method"].startswith("cluster-robust t (CR2)")
    assert (last["n_control"], last["n_treatment"]) == (want["n_control"], want["n_treatment"])
    assert last["effect"] == pytest.approx(want["effect"], rel=1e-9, abs=1e-12)
    assert (last["ci_low"], last["ci_high"]) == pytest.approx((want["ci_low"], want["ci_high"]), rel=1e-9)
    sequential = pid == "clseq"
    assert result["over_time_interval"] == ("confidence sequence" if sequential else "fixed-horizon")
    block = analysed(pid).over_time
    assert block.method == want["method"]


def test_a_cluster_pilots_cuped_days_adjust_with_the_cluster_theta(cluster_root, analysed):
    """Each CUPED day against the cluster-total CUPED of labkit.clustered's docstring, computed here in
    numpy on pandas totals (θ from the residual totals pooled within arms, x centred at the pooled mean)."""
    from labkit.stats.cluster import ClusterCells, cluster_contrast

    rows = analysed("clcuped").to_dict()["over_time"]
    for r in rows[::4]:
        d = cumulative_customers(cluster_root, "clcuped", r["day"])
        g = d.groupby(["account_id", "arm"], as_index=False).agg(
            y=("y", "sum"), x=("x", "sum"), n=("y", "size")
        )
        cell = (g.arm == "fast").astype(int).to_numpy()
        y, x, n = g.y.to_numpy(), g.x.to_numpy(), g.n.to_numpy(dtype=float)
        my = np.array([y[cell == c].sum() / n[cell == c].sum() for c in (0, 1)])
        mx = np.array([x[cell == c].sum() / n[cell == c].sum() for c in (0, 1)])
        ey, ex = y - my[cell] * n, x - mx[cell] * n
        theta = (ey @ ex) / (ex @ ex)
        adjusted = y - theta * (x - x.sum() / n.sum() * n)
        ref = cluster_contrast(ClusterCells.of(g.account_id, cell, adjusted, n), 1, 0)
        assert r["effect"] == pytest.approx(ref.effect, rel=1e-9, abs=1e-12)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-9, abs=1e-12)


def test_analyze_over_time_json_of_a_cluster_pilot(cluster_root):
    """`labkit analyze --over-time --json` on a cluster pilot: the contract's rows, the label, and the rest
    of the JSON as without --over-time; a look stops at its day."""
    code, out, err = run_cli(cluster_root, "analyze", "cl", "--over-time", "--json")
    assert code == 0, err
    data = json.loads(out)
    rows = data["over_time"]
    assert data["over_time_interval"] == "fixed-horizon"
    assert [r["day"] for r in rows] == list(range(1, WINDOW + 1))
    assert all(list(r) == ROW_KEYS and r["metric"] == "replies" and r["arm"] == "fast" for r in rows)
    assert rows[-1]["effect"] == pytest.approx(primary_row(data)["effect"], rel=1e-9, abs=1e-12)
    code, plain, _ = run_cli(cluster_root, "analyze", "cl", "--json")
    plain = json.loads(plain)
    for d in (data, plain):
        d["meta"].pop("analysed_at")
    assert {k: v for k, v in data.items() if not k.startswith("over_time")} == plain
    code, out, err = run_cli(cluster_root, "analyze", "cl", "--over-time")
    assert code == 0, err
    assert "effect over time: replies (fixed-horizon, cluster-robust t (CR2))" in out
    look = labkit.analyze(load(cluster_root, "cl"), as_of="2026-11-06", over_time=True).to_dict()
    assert [r["day"] for r in look["over_time"]] == list(range(1, 6))
    assert look["over_time"][-1]["effect"] == pytest.approx(primary_row(look)["effect"], rel=1e-9, abs=1e-12)


def test_a_cluster_pilots_sequential_days_widen_with_clusters_as_the_sample_size(cluster_root, analysed):
    """In sequential mode each day's interval is the cluster-robust se (pandas totals, ``cluster_contrast``)
    times the confidence-sequence multiplier h (Waudby-Smith et al. 2023, eq. 9, written out here) at n =
    the clusters of both arms, tuned to ``max_clusters``."""
    from labkit.stats.cluster import ClusterCells, cluster_contrast

    rows = analysed("clseq").to_dict()["over_time"]
    for r in rows[::3]:
        d = cumulative_customers(cluster_root, "clseq", r["day"])
        g = d.groupby(["account_id", "arm"], as_index=False).agg(y=("y", "sum"), n=("y", "size"))
        ref = cluster_contrast(ClusterCells.of(g.account_id, (g.arm == "fast").astype(int), g.y, g.n), 1, 0)
        two = -2 * math.log(0.05)
        u = d.account_id.nunique() / 40 * (math.log1p(two) + two)
        h = math.sqrt((u + 1) / u * (math.log1p(u) + two))
        assert r["effect"] == pytest.approx(ref.effect, rel=1e-9, abs=1e-12)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx(
            (ref.effect - h * ref.se, ref.effect + h * ref.se)
        )


def test_a_saturation_pilots_days_are_the_direct_effect(cluster_root, analysed):
    """A saturation design's curve is its direct effect (treated customers against pure-control clusters'),
    each day OLS's coefficient of the treated cell on that day's customers with the cluster-robust CR2
    interval of the three cells' pandas totals."""
    import statsmodels.api as sm

    from labkit.stats.cluster import ClusterCells, cluster_contrast

    rows = analysed("clsat").to_dict()["over_time"]
    units = pd.read_parquet(cluster_root / "results" / "clsat" / "assignment.parquet")
    share = units.set_index("customer_id")["saturation"]
    for r in rows[::4] + rows[-1:]:
        d = cumulative_customers(cluster_root, "clsat", r["day"])
        cell = np.where(d.arm == "fast", 1, np.where(d.customer_id.map(share) > 0, 2, 0))
        X = np.column_stack([np.ones(len(d)), cell == 1, cell == 2]).astype(float)
        ols = sm.OLS(d.y.to_numpy(), X).fit()
        assert r["effect"] == pytest.approx(ols.params[1], rel=1e-9, abs=1e-12)
        assert (r["n_control"], r["n_treatment"]) == (int((cell == 0).sum()), int((cell == 1).sum()))
        g = (
            d.assign(cell=cell)
            .groupby(["account_id", "cell"], as_index=False)
            .agg(y=("y", "sum"), n=("y", "size"))
        )
        ref = cluster_contrast(ClusterCells.of(g.account_id, g.cell, g.y, g.n), 1, 0)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-9, abs=1e-12)


def test_a_long_title_wraps_at_80_columns_and_a_short_one_stays_one_line():
    """A sequential CUPED cluster pilot over 30 days names a long test: its title wraps, indented; the
    plain title of a per-customer pilot is the one line it always was."""
    from labkit.over_time import OverTime, over_time_lines

    rows = tuple(
        dict(zip(ROW_KEYS, (d, f"2026-11-{d:02d}", "replies", "fast", 150, 176, 0.1, -0.2, 0.4), strict=True))
        for d in range(1, 31)
    )
    long = OverTime("replies", rows, "confidence sequence", "cluster-robust t (CR2)+cuped+cs")
    lines = over_time_lines(long)
    assert lines[:2] == [
        "effect over time: replies (confidence sequence, cluster-robust t (CR2)+cuped+cs;",
        "  every 7th day and the last)",
    ]
    assert all(len(line) <= 80 for line in lines) and len(lines) == 3 + 6
    short = over_time_lines(OverTime("replies", rows[:14], "fixed-horizon", "welch-t"))
    assert short[0] == "effect over time: replies (fixed-horizon, welch-t)"


def test_a_cluster_pilots_curve_is_metric_history_and_the_notebooks_figure(analysed):
    """What `labkit run` records of a cluster pilot's curve, without running it: the MLflow points of its
    results.json (``labkit.tracking.history``, unchanged: a point per day at step = day, stamped at the
    day's midnight) and the notebook's figure of the rows (a confidence sequence here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.notebook import over_time_figure, over_time_of
    from labkit.tracking.history import over_time_history

    results = json.loads(json.dumps(analysed("clseq").to_dict()))
    rows = results["over_time"]
    points = [p for p in over_time_history(results) if p["key"] == "over_time.replies.fast.ci_high"]
    assert [p["step"] for p in points] == [r["day"] for r in rows]
    assert [p["value"] for p in points] == [r["ci_high"] for r in rows]
    midnight = [dt.datetime.fromisoformat(r["as_of"]).replace(tzinfo=dt.UTC).timestamp() * 1000 for r in rows]
    assert [p["timestamp"] for p in points] == midnight
    assert over_time_of(results) == (rows, "confidence sequence")
    fig = over_time_figure(rows, "confidence sequence", good="increase")
    assert fig.axes[0].get_title(loc="left") == "replies: effect over time, with its confidence sequence"
    plt.close(fig)
