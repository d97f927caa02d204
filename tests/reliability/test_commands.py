"""Commands given impossible arguments, or run on a full disk (RELIABILITY.md cases 43-45, 47, 48; issue #13).

Each case runs the CLI's ``main`` (what the console script calls) in this process, in a lab with data, an
assigned pilot and an MLflow store, and expects one line on stderr, exit 1, no traceback (an exception
escaping ``main`` fails the test), and ``results/`` byte-identical before and after: a bad argument is
refused before a kernel starts, a run is created or a file is written. In this process rather than a
subprocess: what is checked is the same, without ~1-2 CPU-s of imports per command.

| case | input | tests |
| --- | --- | --- |
| 40, 41 | `labkit ui`: SIGHUP, SIGKILL; a busy or invalid port | tests/tracking/test_ui.py::test_ui_binds_localhost_and_its_server_ends_with_it_on_sigkill, ::test_ui_on_a_busy_port_is_one_line_and_no_link, ::test_ui_on_an_invalid_port_or_host_is_one_line_and_no_link, tests/test_browser.py::test_labkit_ui_ends_with_its_server_on_sighup |
| 43 | `run --workers -1`, `run --as-of 2026-13-45`, `compare --output <folder>`, a 300-character pilot argument; a read-only folder met by any command | ::test_a_bad_argument_is_one_line_and_creates_nothing, ::test_a_read_only_folder_met_by_any_command_is_one_line |
| 44 | `plan` with `max_size: 1` or `mde: {relative: 1.0e-300}` | ::test_plan_refuses_an_impossible_pilot_in_one_line, ::test_make_plan_never_raises_and_refuses_exactly_the_unreachable |
| 45 | `assign` on a full disk (a real 8 kB tmpfs) | ::test_assign_on_a_full_disk_is_one_line_and_leaves_nothing |
| 47 | a pilot id `mlruns`, `mlartifacts` | ::test_a_reserved_pilot_id_is_refused_at_validate |
| 48 | a 900 kB key or value in a YAML file; a 900 kB column name quoted by a data error | ::test_a_900_kb_key_or_value_is_quoted_short, ::test_every_problem_line_is_short_whatever_it_quotes, ::test_an_error_quoting_a_900_kb_column_name_is_cut_by_the_cli |
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_faults import mount
from test_pipeline import REPO, PipelineLab, build_data, pilot_yaml

import labkit
import labkit.cli
from labkit._validation import RESERVED_IDS, one_line_errors
from labkit.errors import SpecError

from conftest import LAB_YAML

LONG = "a" * 300  # a pilot argument no file system names (NAME_MAX is 255 bytes)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> PipelineLab:
    """A lab with data, the analysis notebook, pilot ``p`` assigned, and an MLflow store with no run yet."""
    from labkit.tracking import Tracker

    root = tmp_path_factory.mktemp("commands").resolve()
    (root / "configs").mkdir()
    experiment = f"commands-{uuid.uuid4().hex[:8]}"
    text = LAB_YAML.replace("mlflow_experiment: tiny-pilots", f"mlflow_experiment: {experiment}")
    (root / "configs" / "lab.yaml").write_text(text)
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "pilot_analysis.ipynb", root / "notebooks" / "pilot_analysis.ipynb")
    (root / "experiments").mkdir()
    customers = build_data(root)
    (root / "experiments" / "p.yaml").write_text(pilot_yaml("p"))
    config = labkit.load_lab(root / "configs" / "lab.yaml")
    labkit.assign(labkit.load_pilot(root / "experiments" / "p.yaml", lab=config))
    Tracker(config).prepare()  # a store exists: compare gets as far as its --output
    return PipelineLab(root, experiment, customers)


@pytest.fixture
def cli(lab, monkeypatch):
    """``labkit ARGS`` in the lab folder through ``labkit.cli.main`` in this process, with the environment a
    user's shell would give it (no lab or store override, no terminal size): a CompletedProcess."""
    for name in ("LABKIT_LAB", "LABKIT_TRACKING_URI", "COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(lab.root)

    def call(*args: str) -> subprocess.CompletedProcess:
        out, err = io.StringIO(), io.StringIO()
        # A process with no logging handler prints WARNING records on stderr (Python's last resort); under
        # pytest its own handler takes them, so this one shows them where the process would.
        shown = logging.StreamHandler(err)
        shown.setLevel(logging.WARNING)
        logging.getLogger().addHandler(shown)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = labkit.cli.main(list(args))
        finally:
            logging.getLogger().removeHandler(shown)
        return subprocess.CompletedProcess(["labkit", *args], code, out.getvalue(), err.getvalue())

    return call


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (dot files too) with the sha256 of its bytes; folders as 'dir'."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line_exit_1(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused command printed on stderr (and nothing on stdout)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", proc.stdout
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.rstrip("\n")


# ------------------------------------------------------------------------------------------ case 43

BAD_ARGUMENTS = {
    "run-workers": (
        ("run", "--workers", "-1", "p"),
        "--workers: -1 is not allowed; give a whole number of 1 or more (default: the number of cores + 2)",
    ),
    "run-as-of": (
        ("run", "--as-of", "2026-13-45", "p"),
        "--as-of: '2026-13-45' is not an ISO date (YYYY-MM-DD, e.g. 2026-11-15)",
    ),
    "run-as-of-before-the-start": (  # a mistyped year: the run saw no event and still gave a verdict
        ("run", "--as-of", "2025-11-15", "p"),
        "p: --as-of: 2025-11-15 is not after the pilot's start (2026-11-01, UTC): nothing of the pilot had "
        "happened yet; give a date after 2026-11-01",
    ),
    "compare-output-folder": (
        ("compare", "--output", "results"),
        "--output: results is a folder; give a file name, e.g. results/report.html",
    ),
    "compare-output-in-a-file": (
        ("compare", "--output", "results/p/assignment.json/report.html"),
        "--output: results/p/assignment.json is a file, not a folder; give another path",
    ),
    **{
        f"{command}-long-pilot": (
            (command, LONG),
            f"PILOT: '{'a' * 39}… (300 characters)' is too long for a file name (305 bytes in one part; "
            "the limit is 255)",
        )
        for command in ("plan", "assign", "analyze", "run")
    },
    "validate-long-path": (
        ("validate", LONG),
        f"PATH: '{'a' * 39}… (300 characters)' is too long for a file name (300 bytes in one part; "
        "the limit is 255)",
    ),
    "new-long-id": (
        ("new", LONG, "--function", "sales", "--channel", "twitter"),
        f"the pilot id: '{'a' * 39}… (300 characters)' is too long for a file name (305 bytes in one part; "
        "the limit is 255)",
    ),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_a_bad_argument_is_one_line_and_creates_nothing(lab, cli, case):
    """Every argument is checked before anything is created: today `run --as-of 2026-13-45` started a
    kernel and left a FAILED run, `--workers -1` and `compare --output <folder>` ended in a traceback."""
    args, message = BAD_ARGUMENTS[case]
    before = snapshot(lab.root)
    assert one_line_exit_1(cli(*args)) == message
    assert snapshot(lab.root) == before  # no run folder, no MLflow run, no report, no pilot file


# ------------------------------------------------------------------------------------------ case 44


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("max_size: 2000", "max_size: 1"),
            "experiments/{pid}.yaml:17: cohort.max_size: a cap of 1 leaves fewer than 2 customers per arm, so "
            "no effect is detectable; plan with a cap of at least 4",
        ),
        (
            ("relative: 0.15", "relative: 1.0e-300"),
            "experiments/{pid}.yaml:11: hypothesis.mde.relative: an MDE of 1e-300 ({scale} on the metric's "
            "scale) needs more than 10^15 customers per arm, which no pilot reaches; give the smallest effect "
            "worth detecting",
        ),
    ],
    ids=["max_size-1", "mde-1e-300"],
)
def test_plan_refuses_an_impossible_pilot_in_one_line(lab, cli, change, message):
    """Today a TypeError (formatting the None "MDE at the cap") and an OverflowError (ceil of infinity)."""
    import pandas as pd

    pid = f"imp-{uuid.uuid4().hex[:6]}"
    path = lab.root / "experiments" / f"{pid}.yaml"
    path.write_text(pilot_yaml(pid).replace(*change))
    # the baseline of an unassigned pilot: the churn rate of the eligible customers (has_twitter)
    outcomes = pd.read_csv(lab.root / "data" / "outcomes.csv")
    eligible = lab.customers.loc[lab.customers.has_twitter, "customer_id"]
    mean = outcomes.set_index("customer_id").loc[eligible, "churned"].mean()
    try:
        before = snapshot(lab.root / "results")
        line = one_line_exit_1(cli("plan", pid))
        assert line == message.format(pid=pid, scale=f"{mean * 1e-300:.3g}")
        assert snapshot(lab.root / "results") == before
    finally:
        path.unlink()


def _write_pilot(folder: Path, pid: str, *, cap: int, relative: float, sequential: bool, arms: str) -> Path:
    text = (
        pilot_yaml(pid)
        .replace("max_size: 2000", f"max_size: {cap}")
        .replace("relative: 0.15", f"relative: {relative:.17e}")  # '1.00…e-300': YAML 1.1 and 1.2 agree
        .replace("arms: {control: 0.5, fast: 0.5}", arms)
    )
    if sequential:
        text += "analysis: {sequential: true}\n"
    path = folder / f"{pid}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def plan_lab(tmp_path_factory):
    """A bare lab (no data needed: make_plan is pure) for the property test's pilots."""
    root = tmp_path_factory.mktemp("plans").resolve()
    (root / "configs").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "experiments").mkdir()
    return labkit.load_lab(root / "configs" / "lab.yaml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cap=st.one_of(st.integers(1, 12), st.integers(1, 10**12)),
    relative=st.one_of(
        st.floats(min_value=5e-324, max_value=1e-100, allow_subnormal=True),
        st.floats(min_value=1e-12, max_value=10.0),
    ),
    sequential=st.booleans(),
    arms=st.sampled_from(
        [
            "arms: {control: 0.5, fast: 0.5}",
            "arms: {control: 0.2, fast: 0.8}",
            "arms: {control: 0.5, a: 0.25, b: 0.25}",
        ]
    ),
)
def test_make_plan_never_raises_and_refuses_exactly_the_unreachable(
    plan_lab, cap, relative, sequential, arms
):
    """Over every cap >= 1, relative MDE > 0 (subnormal ones too), allocation and mode: ``make_plan`` (which
    the analysis calls) returns a plan, and ``plan``'s refusal is exactly: fewer than 2 customers per arm
    at the cap, or more than 10^15 per arm needed — the latter checked against the textbook formula
    n = (z_{1-α/2k} + z_{1-β})² · 2σ² / mde², computed here in log space with scipy (fixed horizon)."""
    from scipy import stats

    from labkit.planning import MAX_PER_ARM, _make_plan
    from labkit.stats.moments import ArmMoments

    pid = "prop"
    path = _write_pilot(
        plan_lab.experiments_dir, pid, cap=cap, relative=relative, sequential=sequential, arms=arms
    )
    pilot = labkit.load_pilot(path, lab=plan_lab)
    baseline = ArmMoments(n=400, sum=80.0, sum_sq=80.0)  # a proportion of 0.2: sd = 0.4
    plan, problem = _make_plan(pilot, baseline, "eligible")
    assert plan.required_per_arm is None or 2 <= plan.required_per_arm <= MAX_PER_ARM
    if problem is not None:
        assert problem.detail in plan.warnings
    weights = pilot.arms
    w_c = weights[pilot.control]
    w_t = min(weights[a] for a in pilot.treatments)
    n_eff = 2 / (1 / (cap * w_c) + 1 / (cap * w_t))
    mde_abs = 0.2 * pilot.spec.hypothesis.mde.relative
    if not sequential:
        alpha = 0.05 / len(pilot.treatments)
        z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(0.8)
        log_n = (
            2 * math.log10(z) + math.log10(2 * 0.4**2) - 2 * math.log10(mde_abs) if mde_abs > 0 else math.inf
        )
        if abs(log_n - 15) > 1e-6:  # away from the boundary, where rounding may go either way
            unreachable = log_n > 15
            assert (plan.required_per_arm is None) == unreachable
            if unreachable:
                assert problem is not None and problem.field == "hypothesis.mde.relative"
    if problem is None:
        assert n_eff >= 2 and plan.required_per_arm is not None
    elif problem.field == "cohort.max_size":
        assert n_eff < 2 and plan.required_per_arm is not None


# ------------------------------------------------------------------------------------------ case 45


def test_assign_on_a_full_disk_is_one_line_and_leaves_nothing(lab, cli):
    """A real 8 kB tmpfs on the pilot's results folder: the draw does not fit. One line, nothing half-written
    (no temporary file, no lock), and once there is room the same command draws the assignment."""
    pid = "full"
    (lab.root / "experiments" / f"{pid}.yaml").write_text(pilot_yaml(pid))
    folder = lab.root / "results" / pid
    folder.mkdir(parents=True)
    try:
        mount("-t", "tmpfs", "-o", "size=8k,nr_inodes=64", "tmpfs", str(folder))
        try:
            proc = cli("assign", pid)
            left = sorted(p.name for p in folder.iterdir())
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        assert one_line_exit_1(proc) == (
            f"{pid}: cannot write the assignment in results/{pid}: No space left on device; nothing was written"
        )
        assert left == []
        done = cli("assign", pid)
        assert done.returncode == 0, done.stderr
        assert (folder / "assignment.parquet").is_file()
    finally:
        (lab.root / "experiments" / f"{pid}.yaml").unlink()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_read_only_folder_met_by_any_command_is_one_line(lab, cli):
    """The CLI's last guard for the machine's state: `labkit new` into a read-only experiments/ (a real
    read-only bind mount) is one line naming the folder, not a traceback naming a temporary file."""
    folder = lab.root / "experiments"
    mount("--bind", str(folder), str(folder))
    try:
        mount("-o", "remount,bind,ro", str(folder))
        proc = cli("new", "ro-pilot", "--function", "sales", "--channel", "twitter")
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    assert one_line_exit_1(proc) == "labkit new: cannot write in experiments: Read-only file system"
    assert not (folder / "ro-pilot.yaml").exists()


# ------------------------------------------------------------------------------------------ case 47


def test_a_reserved_pilot_id_is_refused_at_validate(lab, cli, tmp_path):
    """`mlruns` would put a pilot's assignment and runs inside MLflow's artifact folder; every name used
    inside results/ that a slug can spell is refused, with what uses it."""
    folder = tmp_path / "reserved"
    folder.mkdir()
    for pid in RESERVED_IDS:
        (folder / f"{pid}.yaml").write_text(pilot_yaml(pid))
    proc = cli("--lab", str(lab.root), "validate", str(folder))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[-1] == f"{len(RESERVED_IDS)} problem(s) in {len(RESERVED_IDS)} file(s)"
    assert sorted(lines[:-1]) == sorted(
        f"{folder / pid}.yaml:1: id: '{pid}' is reserved: {why}; choose another id"
        for pid, why in RESERVED_IDS.items()
    )
    assert "mlruns" in RESERVED_IDS and "MLflow" in RESERVED_IDS["mlruns"]


# ------------------------------------------------------------------------------------------ case 48

BIG = 900_000


BIG_INPUTS = {  # where -> (the edit of a valid pilot, the unit the big key or value repeats)
    "top-level-key": (lambda t: t + f"? {'k' * BIG}\n: 1\n", "k"),
    "nested-key": (lambda t: t.replace("  control: control", f"  control: control\n  ? {'k' * BIG}\n  : 1"), "k"),
    "value": (lambda t: t.replace("function: service", f"function: {'v' * BIG}"), "v"),
    "value-with-blanks": (lambda t: t.replace("function: service", f"function: \"{'v ' * (BIG // 2)}\""), "v "),
    "key-with-dots": (lambda t: t + f"? {'k.' * (BIG // 2)}\n: 1\n", "k."),
}  # fmt: skip


def test_an_error_quoting_a_900_kb_column_name_is_cut_by_the_cli(lab, cli):
    """A column name validates at any length; the data error that quotes it is cut by the CLI's last guard
    (each error line at most 1,000 characters, then '…' and the length)."""
    pid = "bigcol"
    path = lab.root / "experiments" / f"{pid}.yaml"
    path.write_text(pilot_yaml(pid).replace("column: churned", f"column: {'k' * BIG}"))
    try:
        assert cli("assign", pid).returncode == 0  # the cohort does not read it
        proc = cli("analyze", pid)
    finally:
        path.unlink()
        shutil.rmtree(lab.root / "results" / pid, ignore_errors=True)
    line = one_line_exit_1(proc)
    assert len(line) < 1_100, line[:3000]
    assert line.startswith("source 'outcomes', column 'kkkkkkkkkk") and line.endswith(" characters)")


@pytest.mark.parametrize("where", BIG_INPUTS)
def test_a_900_kb_key_or_value_is_quoted_short(lab, cli, tmp_path, where):
    """Today the key came back whole, twice (as the field and in the message): 1.8 MB on stderr."""
    edit, quoted = BIG_INPUTS[where]
    path = tmp_path / "big.yaml"
    path.write_text(edit(pilot_yaml("big")))
    proc = cli("--lab", str(lab.root), "validate", str(path))
    assert proc.returncode == 1
    assert len(proc.stderr.encode()) < 2_000, proc.stderr[:3000]
    assert proc.stderr.startswith(f"{path}:")
    assert quoted * 10 in proc.stderr and "…" in proc.stderr  # the start of it, then where it was cut


_PIECE = st.one_of(
    st.text(max_size=60),  # anything: controls, bidi marks, quotes, dots
    st.builds(str.__mul__, st.sampled_from(["k", "k.", "v ", "'", "\n", "\u202e"]), st.integers(0, 100_000)),
)


@settings(max_examples=200, deadline=None)
@given(
    field=st.lists(_PIECE, min_size=1, max_size=4).map(".".join),
    detail=st.lists(st.one_of(_PIECE, st.just("'")), max_size=6).map("".join),
)
def test_every_problem_line_is_short_whatever_it_quotes(field, detail):
    """``one_line_errors`` — which every problem of a pilot or lab file passes — bounds each line, whatever
    the field path and the message quote: at most the file, 300 characters of field and 1,000 of message."""
    (error,) = one_line_errors([SpecError("p.yaml", 3, field, detail)])
    assert "\n" not in error.message
    assert len(error.field) <= 300 + 30 and len(error.detail) <= 1_000 + 30
    if len(field) <= 40 and field.isprintable() and "." not in field:
        assert error.field == field  # short fields are shown as they are
