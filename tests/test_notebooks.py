"""What an analyst and a reader see of the lab's notebooks (issue #14, "Analysts: the notebooks").

- Every notebook in notebooks/ runs as is from its own folder, as JupyterLab's "Restart and Run All" runs
  it (the kernel's working directory is notebooks/), writes nothing inside notebooks/ and shows its figures
  inline: executed against the session's demo lab (tests/demo_lab.py) with nbclient and its defaults.
- The primary metric is a compact effect table (labkit.notebook.effect_table), the full rows below it.
- A run keeps, beside the notebook's html, report.html without code (nbconvert's --no-input) with the
  figures, in its folder and among its MLflow artifacts.
- Figures colour each result by what it means (labkit.notebook.meaning / row_meaning), with a legend and
  no overlapping text.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit
from labkit.notebook import (
    GUARDRAIL_LABEL,
    MEANING_COLOURS,
    MEANING_LABELS,
    effect_table,
    figure_effects,
    meaning,
    open_pilot,
    row_meaning,
    show_figure,
)

matplotlib.use("Agg")  # this test process draws figures without a display; the notebooks draw inline

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WINBACK = "marketing-facebook-winback"  # increase predicted; guardrail `unsubscribed` must not increase


def _body(html: str) -> str:
    """The html after <body: nbconvert's inline CSS names every class, the body only those it uses."""
    return html[html.index("<body") :]


def _code(nb: dict) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.fixture(scope="module")
def repo_lab():
    return labkit.load_lab(REPO / "configs" / "lab.yaml")


def _pilot(lab, pid: str = WINBACK):
    return labkit.load_pilot(lab.experiments_dir / f"{pid}.yaml", lab=lab)


def _row(role: str, metric: str, lo: float, hi: float, **extra) -> dict:
    """One `metric_rows` entry as labkit.analyze writes it: effect and lift intervals, raw and adjusted."""
    effect = extra.pop("effect", (lo + hi) / 2)
    mean_control = extra.pop("mean_control", 0.1)
    row = {
        "metric": metric, "role": role, "type": "proportion", "arm": "discount_post", "control_arm": "control",
        "mean_control": mean_control, "mean_treatment": mean_control + effect, "effect": effect,
        "ci_low": lo, "ci_high": hi, "lift": effect / abs(mean_control), "lift_ci_low": lo / abs(mean_control),
        "lift_ci_high": hi / abs(mean_control), "p_value": 0.01, "p_value_adjusted": 0.01, "method": "z-test",
        "ci_low_adjusted": lo, "ci_high_adjusted": hi, "lift_ci_low_adjusted": lo / abs(mean_control),
        "lift_ci_high_adjusted": hi / abs(mean_control),
    }  # fmt: skip
    return row | extra


class _Result:
    """What figure_effects reads of an Analysis: its rows and its decision."""

    def __init__(self, rows, decision="ship"):
        self.metric_rows, self.decision = rows, decision


# ----------------------------------------------------------------------------- stored notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_clean_draw_inline_and_find_the_lab_upward(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, path.name
    code = _code(nb)
    assert "%matplotlib inline" in code and 'matplotlib.use("Agg")' not in code
    assert "open_pilot(pilot_path, lab_path, output_dir)" in code
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert re.search(r'^lab_path = ""', "".join(params["source"]), re.M)  # found upward, as the CLI does
    assert re.search(r'^output_dir = ""', "".join(params["source"]), re.M)  # the lab's results/scratch/


def test_open_pilot_reads_relative_paths_from_the_lab_root_found_upward(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_LAB", raising=False)
    for folder in ("configs", "experiments"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "notebooks").mkdir()
    here = tmp_path / "notebooks"
    monkeypatch.chdir(here)  # where JupyterLab starts a notebook's kernel
    lab, pilot, out = open_pilot(f"experiments/{WINBACK}.yaml")
    assert lab.root == tmp_path and pilot.id == WINBACK
    assert out == tmp_path / "results" / "scratch" / WINBACK and out.is_dir()
    assert list(here.iterdir()) == []  # nothing beside the notebook
    # the same with the lab file and an output folder named relative to the root, and a pilot id
    lab2, pilot2, out2 = open_pilot(WINBACK, "configs/lab.yaml", "results/mine")
    assert (lab2.root, pilot2.id, out2) == (tmp_path, WINBACK, tmp_path / "results" / "mine")
    # absolute paths, as `labkit run` passes them, are taken as they are, whatever the working directory
    monkeypatch.chdir(tmp_path.parent)
    lab3, pilot3, out3 = open_pilot(str(pilot.path), str(lab.path), str(tmp_path / "run"))
    assert (lab3.root, pilot3.path, out3) == (tmp_path, pilot.path, tmp_path / "run")
    with pytest.raises(labkit.LabkitError, match="no lab found"):
        open_pilot(WINBACK)  # outside any lab: the CLI's own message


# ----------------------------------------------------------------------------- the colour rule


def _expected(low, high, good):
    """The rule as DESIGN.md states it, written out case by case."""
    if low > 0:
        moved = "up"
    elif high < 0:
        moved = "down"
    else:
        return "unclear"
    if good is None:
        return "changed"
    if good == "increase":
        return "good" if moved == "up" else "harmful"
    return "good" if moved == "down" else "harmful"


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-10, 10, allow_nan=False),
    st.floats(0, 10, allow_nan=False),
    st.sampled_from(["increase", "decrease", None]),
)
def test_meaning_is_good_harmful_changed_or_unclear_by_interval_and_good_direction(low, width, good):
    high = low + width
    assert meaning(low, high, good) == _expected(low, high, good)
    # flipping both the interval and the good direction keeps the meaning
    flip = {"increase": "decrease", "decrease": "increase", None: None}[good]
    assert meaning(-high, -low, flip) == meaning(low, high, good)
    assert meaning(None, high, good) == meaning(low, None, good) == "unclear"


def test_a_guardrail_that_improved_is_drawn_good_not_red(repo_lab):
    pilot = _pilot(repo_lab)  # guardrail: `unsubscribed` must not increase, max_harm 0.01 absolute
    improved = _row("guardrail", "unsubscribed", -0.008, -0.002)
    worse = _row("guardrail", "unsubscribed", 0.001, 0.007)
    past_harm = _row("guardrail", "unsubscribed", -0.004, 0.03, effect=0.013)  # spans 0, past max_harm
    unclear = _row("guardrail", "unsubscribed", -0.004, 0.006, effect=0.001)
    won = _row("primary", "reactivated_90d", 0.02, 0.05)
    lost = _row("primary", "reactivated_90d", -0.05, -0.02)
    secondary = _row("secondary", "post_clicked", 0.02, 0.05)
    got = [row_meaning(r, pilot) for r in (improved, worse, past_harm, unclear, won, lost, secondary)]
    assert got == ["good", "harmful", "harmful", "unclear", "good", "harmful", "changed"]
    # the adjusted interval is the one judged: here it spans 0 while the raw one does not
    adjusted = _row("primary", "reactivated_90d", 0.01, 0.05) | {
        "ci_low_adjusted": -0.001,
        "ci_high_adjusted": 0.06,
    }
    assert row_meaning(adjusted, pilot) == "unclear"

    fig = figure_effects(_Result([improved, worse]), pilot, role="other")
    colours = [
        matplotlib.colors.to_hex(line.get_color()) for line in fig.axes[0].lines if line.get_marker() == "s"
    ]
    assert colours == [matplotlib.colors.to_hex(MEANING_COLOURS[m]) for m in ("good", "harmful")]


def _texts(fig):
    ax = fig.axes[0]
    low, high = sorted(ax.get_xlim())
    shown = [t for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]  # not those off the axis
    texts = [*ax.get_yticklabels(), *shown, ax.xaxis.label, ax.title]
    for legend in fig.legends + ([ax.get_legend()] if ax.get_legend() else []):
        texts += legend.get_texts()
    return [t for t in texts if t.get_text() and t.get_visible()]


@pytest.mark.parametrize("n_rows", [1, 3, 12])
def test_the_effect_figure_has_a_legend_of_meanings_and_no_text_overlaps_or_leaves_it(repo_lab, n_rows):
    pilot = _pilot(repo_lab)
    kinds = [(-0.008, -0.002), (0.001, 0.007), (-0.004, 0.006)]
    rows = [
        _row("guardrail", "unsubscribed", *kinds[i % 3]) | {"arm": f"a_rather_long_arm_name_{i}"}
        for i in range(n_rows)
    ]
    fig = figure_effects(_Result(rows, decision="inconclusive"), pilot, role="other")
    fig.canvas.draw()
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert legend and set(legend) == {MEANING_LABELS[row_meaning(r, pilot)] for r in rows} | {GUARDRAIL_LABEL}
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    extents = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    for text, e in extents:
        assert e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y0 >= box.y0 - 1 and e.y1 <= box.y1 + 1, text
    for i, (a, ea) in enumerate(extents):
        for b, eb in extents[i + 1 :]:
            overlap_w = min(ea.x1, eb.x1) - max(ea.x0, eb.x0)
            overlap_h = min(ea.y1, eb.y1) - max(ea.y0, eb.y0)
            assert not (overlap_w > 1 and overlap_h > 1), (a, b)
    matplotlib.pyplot.close(fig)


def test_show_figure_shows_the_saved_png_once_at_the_inline_size(tmp_path):
    """The inline output is the saved file byte for byte (one drawing), as wide as the inline backend shows
    the figure, and the figure is closed so the cell's end does not show it a second time."""
    import base64

    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    fig, ax = matplotlib.pyplot.subplots(figsize=(5, 2))
    ax.plot([0, 1], [1, 0])
    with capture_output() as shown:
        assert show_figure(fig, tmp_path / "f.png") is None
    [out] = shown.outputs
    assert base64.b64decode(out.data["image/png"]) == (tmp_path / "f.png").read_bytes()
    assert out.metadata["image/png"]["width"] == 5 * fig.get_dpi()
    assert not matplotlib.pyplot.fignum_exists(fig.number)


# ----------------------------------------------------------------------------- the effect table

_P = st.one_of(st.none(), st.floats(0, 1, allow_nan=False))


@st.composite
def _rows(draw):
    rows = []
    for i in range(draw(st.integers(1, 6))):
        mean_control = draw(
            st.one_of(st.floats(0.01, 5000, allow_nan=False), st.sampled_from([999.4, 999.7]))
        )
        lo = draw(st.floats(-5, 5, allow_nan=False))
        hi = lo + draw(st.floats(0, 5, allow_nan=False))
        p = draw(_P)
        row = _row(
            draw(st.sampled_from(["primary", "secondary", "guardrail"])), f"m{i}", lo, hi,
            mean_control=mean_control, type=draw(st.sampled_from(["proportion", "mean", "ratio"])),
            p_value=p, p_value_adjusted=None if p is None else min(1.0, p * 2), method=f"method-{i}",
        )  # fmt: skip
        if draw(st.booleans()):  # no adjustment (a guardrail): the raw interval
            row.update(ci_low_adjusted=None, ci_high_adjusted=None)
            row.update(lift_ci_low_adjusted=None, lift_ci_high_adjusted=None)
        rows.append(row)
    return rows


def _pct(text: str) -> float:
    return float(text.strip().rstrip("%")) / 100


@settings(max_examples=150, deadline=None)
@given(_rows(), st.sampled_from(["primary", "other", "all"]))
def test_effect_table_is_one_short_row_per_comparison_agreeing_with_its_rows(rows, role):
    table = effect_table(rows, role=role)
    chosen = [r for r in rows if role == "all" or (role == "primary") == (r["role"] == "primary")]
    assert list(table.index.names) == ["metric", "arm"]
    assert list(table.columns) == ["control → treatment", "lift (interval)", "p", "method"]
    assert len(table) == len(chosen)
    for (metric, arm), line, r in zip(table.index, table.itertuples(index=False), chosen, strict=True):
        assert metric.startswith(r["metric"]) and arm == r["arm"] and line.method == r["method"]
        adjusted = r["ci_low_adjusted"] is not None
        lo = r["lift_ci_low_adjusted"] if adjusted else r["lift_ci_low"]
        hi = r["lift_ci_high_adjusted"] if adjusted else r["lift_ci_high"]
        m = re.fullmatch(r"([+-][\d.]+%) \(([+-][\d.]+%) to ([+-][\d.]+%)\)", line[1])
        assert m, line[1]
        for shown, value in zip(m.groups(), (r["lift"], lo, hi), strict=True):
            assert _pct(shown) == pytest.approx(value, abs=0.0005 + 1e-12)
        p = r["p_value_adjusted"] if r["p_value_adjusted"] is not None else r["p_value"]
        if p is None:
            assert line.p == "–"
        elif p < 0.001:
            assert line.p == "< 0.001"
        else:
            assert float(line.p) == pytest.approx(p, abs=0.0005)
        before, after = line[0].split(" → ")
        if r["type"] == "proportion":
            assert _pct(before) == pytest.approx(r["mean_control"], abs=0.0005)
        else:
            assert float(before.replace(",", "")) == pytest.approx(r["mean_control"], rel=0.01, abs=0.005)
            assert "e" not in before  # a plain number, never 1e+03


def test_effect_table_falls_back_to_the_absolute_effect_when_the_lift_is_undefined():
    row = _row("primary", "net_revenue", -2.0, 4.0) | {"mean_control": 0.0, "type": "mean", "lift": None}
    row.update(lift_ci_low=None, lift_ci_high=None, lift_ci_low_adjusted=None, lift_ci_high_adjusted=None)
    assert effect_table([row]).iloc[0]["lift (interval)"] == "Δ +1 (-2 to +4)"


def test_the_verdict_recommends_rework_not_roll_out_for_a_pilot_that_does_not_pay_back(repo_lab):
    """marketing-facebook-winback in the issue: ship, value 13,300 against cost 14,000 (ROI −5 %)."""
    from labkit.analysis import Analysis
    from labkit.decision import Verdict, recommend
    from labkit.notebook import verdict_text

    pilot = _pilot(repo_lab)
    verdict = Verdict(
        "ship", "'reactivated_90d' moved as predicted.", "significant", ["story_post", "discount_post"]
    )
    roi = {
        "value": 13_300.0,
        "value_ci_low": 2_000.0,
        "value_ci_high": 25_000.0,
        "cost": 14_000.0,
        "roi": -0.05,
    }
    gains = {"discount_post": 0.05, "story_post": 0.01}
    advice = recommend(verdict, roi=roi, gains=gains, metric="reactivated_90d", currency="USD")
    result = Analysis(WINBACK, "ship", verdict.reason, verdict, {}, [], {}, roi, advice=advice)
    text = verdict_text(result, pilot)
    assert (
        "Roll the change out" not in text and "**Recommendation:** **rework** (arm 'discount_post')" in text
    )
    assert "ROI -5%" in text.replace("−", "-")
    advice = recommend(verdict, roi=roi | {"cost": 10_000.0, "roi": 0.33}, gains=gains, metric="m")
    assert "**Recommendation:** **scale**" in verdict_text(
        Analysis(WINBACK, "ship", verdict.reason, verdict, {}, [], {}, roi, advice=advice), pilot
    )


# ----------------------------------------------------------------------------- the report without code


def test_the_report_export_has_the_outputs_and_no_code(tmp_path):
    from labkit.runner import execute

    run = execute(
        REPO / "tests" / "notebooks" / "ok.ipynb", tmp_path / "out", {}, cwd=tmp_path, run_token="t-1"
    )
    assert run.status == "FINISHED", run.message
    assert run.report == tmp_path / "out" / "report.html" and run.to_dict()["report"] == str(run.report)
    report, full = _body(run.report.read_text()), _body(run.html.read_text())
    assert "hello from ok" in report and "hello from ok" in full
    assert "jp-InputPrompt" in full and "jp-InputArea-editor" in full and "pathlib" in full
    assert "jp-InputArea-editor" not in report and "jp-InputPrompt" not in report
    assert "jp-OutputPrompt" not in report and "pathlib" not in report
    # a failed run keeps its notebook and html for the analyst, and no reader's report of a partial analysis
    failed = execute(
        REPO / "tests" / "notebooks" / "raises.ipynb", tmp_path / "f", {}, cwd=tmp_path, run_token="t-2"
    )
    assert failed.status == "FAILED" and failed.html is not None and failed.report is None
    assert not (tmp_path / "f" / "report.html").exists()


# ----------------------------------------------------------------------------- on the demo lab


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_runs_as_is_from_its_folder_with_its_figures_inline(demo_lab, path):
    """JupyterLab's Restart and Run All: the stored notebook, its defaults, the kernel in notebooks/."""
    import nbformat
    from nbclient import NotebookClient

    from labkit.runner.export import render_html

    demo_lab.check()
    folder = demo_lab.root / "notebooks"
    before = _tree(folder)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute(env=demo_lab.env())  # raises CellExecutionError, naming the cell, if a cell fails
    assert _tree(folder) == before  # nothing written, changed or left beside the notebook

    images = [
        (i, out)
        for i, cell in enumerate(nb.cells)
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    saved = re.findall(r'show_figure\(fig, out / "(\w+\.png)"\)', _code(nb))
    scratch = demo_lab.root / "results" / "scratch" / "service-twitter-fast-reply"
    blocks = json.loads((scratch / "results.json").read_text())
    for block, figure in (("over_time", "effect_over_time.png"), ("segments", "segments.png")):
        if not blocks.get(block):  # drawn only with the block
            saved = [name for name in saved if name != figure]
    assert len(images) >= len(saved) >= 2, "every figure the notebook saves is also shown inline"
    for heading in ("## The primary metric", "## First-response time by arm"):
        at = next((i for i, c in enumerate(nb.cells) if "".join(c.source).startswith(heading)), None)
        if at is not None:  # the section's figure is in its first code cell
            assert any(i == at + 1 for i, _ in images), heading
    html = render_html(nb)
    assert _body(html).count("<img") >= len(saved)

    # the default pilot exists in the demo lab and has data; its outputs went to the lab's results/
    out = demo_lab.root / "results" / "scratch" / "service-twitter-fast-reply"
    results = json.loads((out / "results.json").read_text())
    primary = [m for m in results["metrics"] if m["role"] == "primary"]
    assert primary and all(m["n_control"] > 0 and m["n_treatment"] > 0 for m in primary)
    assert all((out / name).is_file() for name in saved)
    if path.stem == "pilot_analysis":  # the compact table first, not the 27 columns cut with "…"
        at = next(i for i, c in enumerate(nb.cells) if "".join(c.source).startswith("## The primary metric"))
        shown = "".join(o["data"].get("text/html", "") for o in nb.cells[at + 1].outputs if "data" in o)
        assert "lift (interval)" in shown and "variance_reduction" not in shown and "…" not in shown


@pytest.mark.slow
def test_a_run_keeps_a_report_without_code_with_its_figures_in_its_folder_and_in_mlflow(demo_lab, tmp_path):
    """The session demo lab's run of one pilot: `labkit demo` runs every pilot through ``run_batch``, the
    code of `labkit run`, with the repo's notebooks as they are now and the lab's own sqlite store — so its
    run folder and MLflow run are those of a real `labkit run` (a run of our own would cost a kernel and
    ~10 CPU-s to show the same). Only read here: the demo store keeps exactly one run per pilot."""
    from mlflow import MlflowClient

    demo_lab.check()
    pid = "service-twitter-fast-reply"
    root = demo_lab.root
    (folder,) = (root / "results" / pid / "runs").iterdir()
    report = _body((folder / "report.html").read_text())
    assert "jp-InputArea-editor" not in report and "jp-InputPrompt" not in report
    assert "open_pilot(" not in report and "Decision:" in report
    figures = len(list(folder.glob("*.png")))
    assert figures >= 2 and report.count("<img") >= figures
    lab = demo_lab.lab
    client = MlflowClient(lab.tracking_uri)
    experiment = client.get_experiment_by_name(lab.spec.mlflow_experiment).experiment_id
    (run,) = client.search_runs([experiment], filter_string=f"tags.`labkit.pilot` = '{pid}'")
    assert run.data.tags["labkit.run_key"] == f"{pid}/{folder.name}"  # the run of that folder
    assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    logged = Path(client.download_artifacts(run.info.run_id, "report.html", str(tmp_path)))
    assert logged.read_bytes() == (folder / "report.html").read_bytes()


@pytest.mark.slow
@pytest.mark.browser
def test_chromium_shows_every_figure_of_the_notebook_html_and_the_report(demo_lab, chromium):
    """The demo's run of a pilot with guardrails, opened as a reader opens its artifacts: every figure the
    run saved is an image Chromium decoded, in the notebook's html and in report.html (which shows no code).
    Full-page screenshots go to the lab's and the repository's results/browser/ (git-ignored)."""
    import os

    demo_lab.check()
    folder = sorted((demo_lab.root / "results" / WINBACK / "runs").iterdir())[-1]
    figures = sorted(folder.glob("*.png"))
    assert len(figures) >= 2
    shots = demo_lab.root / "results" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    published = REPO / "results" / "browser"
    published.mkdir(parents=True, exist_ok=True)
    page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    try:
        for name in ("pilot_analysis.html", "report.html"):
            page.goto((folder / name).as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            assert len(images) == len(figures), name
            assert all(done and width > 200 and height > 100 for done, width, height in images), images
            code = page.locator(".jp-InputArea-editor").count()
            assert (code == 0) if name == "report.html" else (code > 0), name
            shot = shots / f"notebook-{Path(name).stem}-{WINBACK}.png"
            page.screenshot(path=str(shot), full_page=True)
            partial = published / f".{shot.name}.{os.getpid()}.tmp"
            shutil.copyfile(shot, partial)
            os.replace(partial, published / shot.name)
    finally:
        page.context.close()


# ----------------------------------------------------------------------------- the effect over time


def _over_time(sequential: bool):
    """Ten days of a two-arm-plus-control pilot from labkit.stats.over_time; day 0 has no events yet."""
    import datetime as dt

    import numpy as np

    from labkit.stats.moments import ArmMoments
    from labkit.stats.over_time import effect_over_time

    rng = np.random.default_rng(7)
    arms = {}
    for arm, rate in (("control", 0.3), ("fast", 0.45), ("slow", 0.3)):
        counts, arms[arm] = np.zeros(300), []
        for day in range(10):
            counts = counts + (rng.poisson(rate, 300) if day else 0)
            arms[arm].append(ArmMoments.from_values(counts))
    as_of = [dt.date(2026, 11, 1) + dt.timedelta(days=d) for d in range(10)]
    return effect_over_time("replies", list(range(10)), as_of, arms, control="control", sequential=sequential)


@pytest.mark.parametrize("sequential", [True, False], ids=["confidence-sequence", "fixed-horizon"])
def test_the_over_time_figure_renders_its_bands_zero_line_and_kind_of_interval(sequential):
    import io

    from labkit.notebook import over_time_figure, over_time_of

    effect = _over_time(sequential)
    rows = effect.to_list()
    fig = over_time_figure(rows, effect.interval, good="increase")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80)
    assert png.getvalue().startswith(b"\x89PNG\r\n\x1a\n")
    ax = fig.axes[0]
    kind = "confidence sequence" if sequential else "fixed-horizon interval"
    assert ax.get_title(loc="left") == f"replies: effect over time, with its {kind}"
    assert ax.get_xlabel() == "day since the start"
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())  # the zero line
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    last = {r["arm"]: r for r in rows if r["day"] == 9}
    for arm in ("fast", "slow"):  # coloured by what its last day means
        what = meaning(last[arm]["ci_low"], last[arm]["ci_high"], "increase")
        assert f"{arm}: {MEANING_LABELS[what]}" in legend
        (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(f"{arm}:")]
        assert matplotlib.colors.to_hex(line.get_color()) == matplotlib.colors.to_hex(MEANING_COLOURS[what])
        assert list(line.get_xdata()) == list(range(10))
    matplotlib.pyplot.close(fig)

    results = {"over_time": rows, "meta": {"sequential": sequential}}
    assert over_time_of(results) == (rows, effect.interval)
    assert over_time_of({"over_time": {"interval": "fixed-horizon", "rows": rows}}) == (rows, "fixed-horizon")
    assert over_time_of({"meta": {"sequential": sequential}}) is None
    with pytest.raises(ValueError, match="not one of"):
        over_time_figure(rows, "bayesian")
