"""Security and privacy: the DuckDB sandbox, literal notebook parameters, secrets kept out of every record.

Case 34 (a source that resolves out of the lab): the engine's DuckDB refuses such files itself
(``test_the_duckdb_sandbox_refuses_files_outside_the_lab``), and through the CLI the user sees one line,
never DuckDB's exception: a lab source outside the lab is refused at its lab-file line by every command,
and a ``results/`` that leads out of the lab (where DuckDB's sandbox refuses the assignment labkit wrote)
is one error naming the file, where it leads and the folders DuckDB may read. A lab in a folder whose name
holds DuckDB's wildcards (``*``, ``?``, ``[``) reads its own files and only those, for any folder name
(``test_a_lab_folder_of_any_name_reads_its_own_files_only``, hypothesis).

Small cells (RELIABILITY Facts: a median or maximum over a handful of customers is a person's value): a
quantile pilot over ~8 customers per arm, analysed through ``labkit analyze --json`` with
``privacy.min_cell_size`` at the smallest arm (the quantiles are reported and equal numpy's) and above it
(they are withheld with reason ``suppressed_small_cell``, and a quantile primary makes the pilot
invalid); ``binned_distribution`` hides small bins and rounds its outer edges outwards, so neither the
smallest nor the largest customer value appears.

One PostgreSQL-backed lab (tests/backend_lab.py's CRM on the session's real server, tests/pg_server.py)
lives in a folder whose name holds quotes, ``;``, ``$(...)``, backticks and a right-to-left mark; its
pilot's hypothesis is 10,000 characters of hostile text. `labkit assign` then `labkit run` (the console
script's ``main``, in one Python process of their own) execute the repo's notebook there once; then:

- the notebook's injected parameters are Python literals equal to the paths (RELIABILITY #26), and no
  canary file was created by any of the payloads;
- the hypothesis arrives in MLflow split into parts that join to the exact text (#31), and the
  ``results.json`` artifact is byte-identical to the one kept in ``results/``;
- no connection URL, password, user@host or pseudonym key is in the MLflow store (every text column), the
  artifact tree (notebooks, HTML, JSON, figures), the run folders or the command's output (#32; the full
  demo scan is tests/demo/test_demo_e2e.py::test_no_demo_customer_identifier_key_or_plain_hash_in_mlflow).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import cli_fork
import pytest
from backend_lab import PILOT, PILOT_ID, URL_ENV, crm_tables, load_postgres, write_lab
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_server import postgres_server  # noqa: F401 -- the session fixture

import labkit
from labkit.data.sources import Engine
from labkit.privacy import scan_for_identifiers

from conftest import CHURNED, LAB_YAML, PILOT_YAML, REPO, pilot_yaml

KEY = "security-test-key-fedcba9876543210"
CANARY = "/tmp/labkit-security-canary"
FOLDER = 'lab "q ;$(touch {c}) `touch {c}` \u202eevil'
QUOTED_FOLDER = "lab 'q\" x"  # a single quote: see the store tests of lab folders with URI characters
STATEMENT = ('Fast replies lower churn; \'"$(touch {c})" `id` \\ {{x}} \u00e9 ' * 170)[:10_000]


# ------------------------------------------------------------------------------ 34: DuckDB sandbox


def test_the_duckdb_sandbox_refuses_files_outside_the_lab(tiny_lab):
    """The engine's DuckDB reads the lab only, and its configuration cannot be unlocked by a query."""
    import duckdb

    lab = labkit.load_lab(tiny_lab.root)
    engine = Engine.for_lab(lab)
    try:
        for query in (
            "SELECT * FROM read_csv('/etc/passwd')",
            f"SELECT * FROM read_csv('{tiny_lab.root}/../../../etc/passwd')",
            "SET enable_external_access=true",
            "SET allowed_directories=['/']",
        ):
            with pytest.raises((duckdb.PermissionException, duckdb.InvalidInputException)):
                engine.con.raw_sql(query)
    finally:
        engine.close()


# Folder names: DuckDB's wildcards and class brackets among letters, spaces, quotes and other punctuation.
FOLDER_CHARS = st.sampled_from("ab1 *?[]{}!^#%'\"-_.ü")


@settings(max_examples=60, deadline=None)
@given(name=st.text(FOLDER_CHARS, min_size=1, max_size=10).filter(lambda n: n.strip(".") != ""))
def test_a_lab_folder_of_any_name_reads_its_own_files_only(tmp_path_factory, name):
    """DuckDB's readers take ``*``, ``?`` and ``[`` in a path as wildcards: a lab in ``pilots?2`` read its
    customers and those of ``pilots#2`` beside it as one table. Whatever the lab's folder is called, each
    source and the assignment labkit wrote are read from the lab's own files: their row counts, with a
    sibling folder beside it that the name, read as a pattern, also matches and that holds other rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parent = tmp_path_factory.mktemp("names")
    rows = {"customers.parquet": 5, "outcomes.csv": 4, "events.parquet": 3, "assignment.parquet": 2}

    def write(root: Path, extra: int) -> None:
        (root / "configs").mkdir(parents=True)
        (root / "configs" / "lab.yaml").write_text(LAB_YAML)
        (root / "data").mkdir()
        (root / "results" / "p").mkdir(parents=True)
        for file, n in rows.items():
            ids = [f"C{i}" for i in range(n + extra)]
            folder = root / ("results/p" if file.startswith("assignment") else "data")
            if file.endswith(".csv"):
                (folder / file).write_text("customer_id,churned\n" + "".join(f"{i},0\n" for i in ids))
            else:
                pq.write_table(pa.table({"customer_id": ids, "ts": [0] * len(ids)}), folder / file)

    root = parent / name
    write(root, 0)
    decoy = parent / name.replace("?", "Q").replace("*", "many")  # what the name matches as a pattern
    if decoy != root:
        write(decoy, 10)
    engine = Engine.for_lab(labkit.load_lab(root))
    try:
        counts = {
            "customers.parquet": engine.table("customers").count().execute(),
            "outcomes.csv": engine.table("outcomes").count().execute(),
            "events.parquet": engine.table("events").count().execute(),
            "assignment.parquet": engine.read_file(root / "results/p/assignment.parquet", "a")
            .count()
            .execute(),
        }
    finally:
        engine.close()
    assert counts == rows


SMALL_PILOT = PILOT_YAML.split("  - name: replies")[0]  # the churn metric alone: customers and outcomes


def labkit_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """``labkit ARGS`` in ``cwd`` with a user's environment, through ``labkit.cli.main`` in this process (the
    console script's code, without a new interpreter's ~2 CPU-s of imports); an escaping exception — DuckDB's
    own, say — fails the test. WARNING log records are shown on stderr, as a process without handlers would."""
    import contextlib
    import io
    import logging

    from labkit import cli

    out, err = io.StringIO(), io.StringIO()
    shown = logging.StreamHandler(err)  # under pytest its own handler would take them
    shown.setLevel(logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("LABKIT_LAB", "LABKIT_TRACKING_URI", "LABKIT_DEBUG", "COLUMNS", "LINES"):
            patch.delenv(name, raising=False)
        patch.setenv("LABKIT_ID_KEY", KEY)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.chdir(cwd)
        logging.getLogger().addHandler(shown)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(list(args))
        finally:
            logging.getLogger().removeHandler(shown)
    return subprocess.CompletedProcess(["labkit", *args], code, out.getvalue(), err.getvalue())


def one_clear_line(done: subprocess.CompletedProcess) -> str:
    """Exit 1, nothing on stdout, one line on stderr without a traceback or DuckDB's own error: that line."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stdout + done.stderr
    return done.stderr.strip()


def small_lab(lab, n: int = 60) -> None:
    """Customers and outcomes for ``SMALL_PILOT`` (the events source of the lab file is left unread)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(34)
    ids = [f"SEC-{i:04d}" for i in range(n)]
    (lab.root / "data").mkdir(exist_ok=True)
    pd.DataFrame({"customer_id": ids, "has_twitter": True}).to_parquet(
        lab.root / "data" / "customers.parquet"
    )
    pd.DataFrame({"customer_id": ids, "churned": (rng.random(n) < 0.3).astype(int)}).to_csv(
        lab.root / "data" / "outcomes.csv", index=False
    )
    lab.pilot(SMALL_PILOT)
    (lab.root / "notebooks").mkdir(exist_ok=True)
    shutil.copy(REPO / "notebooks" / "pilot_analysis.ipynb", lab.root / "notebooks" / "pilot_analysis.ipynb")


@pytest.mark.parametrize("path", ["../x.csv", "/etc/passwd"], ids=["dotdot", "absolute"])
def test_a_source_outside_the_lab_is_one_line_naming_it_for_every_command(tiny_lab, path):
    """A lab file whose source points out of the lab (a file that exists there) stops every command at the
    lab file's line, naming the source; DuckDB is never asked to read it."""
    small_lab(tiny_lab)
    (tiny_lab.root.parent / "x.csv").write_text("customer_id,churned\nSEC-0000,1\n")
    text = LAB_YAML.replace("path: data/outcomes.csv", f"path: {path}")
    tiny_lab.write("configs/lab.yaml", text)
    expected = (
        f"configs/lab.yaml:7: sources.outcomes.path: '{path}' lies outside the lab; data files must be inside "
        f"the lab ({tiny_lab.root}); a lab may name an absolute data_root folder for data kept elsewhere"
    )
    for command in (["assign", "p"], ["analyze", "p", "--json"]):
        assert one_clear_line(labkit_cli(*command, cwd=tiny_lab.root)) == expected, command
    assert not (tiny_lab.root / "results" / "p").exists()


def test_results_led_out_of_the_lab_is_one_clear_error_not_a_duckdb_exception(tiny_lab, tmp_path_factory):
    """results/ as a symlink to a folder outside the lab: labkit writes the assignment there, but the
    sandboxed DuckDB follows the link and refuses to read it back (duckdb.PermissionException). Each
    command that reads it says so in one line naming the file, where it leads and what DuckDB may read."""
    small_lab(tiny_lab)
    outside = tmp_path_factory.mktemp("outside").resolve() / "results"
    outside.mkdir()
    (tiny_lab.root / "results").symlink_to(outside)
    done = labkit_cli("assign", "p", cwd=tiny_lab.root)
    assert done.returncode == 0, done.stderr
    real = outside / "p" / "assignment.parquet"
    assert real.is_file()
    expected = (
        f"cannot read results/p/assignment.parquet: it resolves to {real}, outside the folders labkit's "
        f"DuckDB may read: the lab ({tiny_lab.root}); keep data and results/ inside them (not behind a "
        "symlink that leads elsewhere)"
    )
    for command in (["analyze", "p", "--json"], ["plan", "p"], ["run", "p"]):
        assert one_clear_line(labkit_cli(*command, cwd=tiny_lab.root)) == expected, command
    assert not (outside / "p" / "runs").exists()  # `run` stopped before it made a run folder


# -------------------------------------------------------- small cells: order statistics withheld

QUANTILE_PILOT = pilot_yaml(
    id="q", title="Median spend",
    hypothesis={"statement": "Fast replies raise the median spend.", "metric": "median_spend",
                "direction": "increase", "mde": {"relative": 0.15}},
    metrics=[
        {"name": "median_spend", "type": "quantile", "quantile": 0.5, "source": "outcomes", "column": "spend"},
        {"name": "top_spend", "type": "quantile", "quantile": 0.99, "source": "outcomes", "column": "spend"},
        CHURNED,
    ],
)  # fmt: skip
QUANTILES = {"median_spend": 0.5, "top_spend": 0.99}
WITHHELD = ("mean_control", "mean_treatment", "effect", "ci_low", "ci_high", "lift", "lift_ci_low",
            "lift_ci_high", "p_value", "p_value_adjusted")  # fmt: skip


@pytest.fixture
def few_customers(tiny_lab, monkeypatch):
    """A pilot over 16 customers (about 8 per arm), assigned: (lab, {arm: spend values}, smallest arm)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(6)
    n = 16
    ids = [f"SMALL-{i:03d}" for i in range(n)]
    (tiny_lab.root / "data").mkdir()
    pd.DataFrame({"customer_id": ids, "has_twitter": True}).to_parquet(
        tiny_lab.root / "data" / "customers.parquet"
    )
    spend = np.round(rng.gamma(2.0, 40.0, n), 2) + np.arange(n) / 1000  # every customer's value distinct
    outcomes = pd.DataFrame(
        {"customer_id": ids, "spend": spend, "churned": (rng.random(n) < 0.3).astype(int)}
    )
    outcomes.to_csv(tiny_lab.root / "data" / "outcomes.csv", index=False)
    tiny_lab.pilot(QUANTILE_PILOT, "q")
    monkeypatch.setenv("LABKIT_ID_KEY", KEY)
    code, _, err = in_process("assign", "q")
    assert code == 0, err
    drawn = pd.read_parquet(tiny_lab.root / "results" / "q" / "assignment.parquet")
    merged = drawn.merge(outcomes, on="customer_id")
    values = {arm: group["spend"].to_numpy() for arm, group in merged.groupby("arm")}
    smallest = min(len(v) for v in values.values())
    assert 2 <= smallest < 10  # below the default minimum cell size
    return tiny_lab, values, smallest


def in_process(*args: str) -> tuple[int, str, str]:
    """``labkit ARGS`` through ``labkit.cli.main`` in this process; an escaping exception fails the test."""
    import contextlib
    import io

    from labkit import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def with_min_cell_size(lab, size: int | None) -> None:
    line = "privacy: {pseudonymize: true, key_env: LABKIT_ID_KEY}\n"
    cell = "" if size is None else f", min_cell_size: {size}"
    lab.write("configs/lab.yaml", LAB_YAML.replace(line, line.replace("}", cell + "}")))


def quantile_rows(out: str) -> dict[str, dict]:
    return {r["metric"]: r for r in json.loads(out)["metrics"] if r["metric"] in QUANTILES}


def test_quantiles_of_arms_at_the_minimum_cell_size_are_reported(few_customers):
    """With every arm at least ``privacy.min_cell_size`` customers, the quantiles are the arms' own."""
    import numpy as np

    lab, values, smallest = few_customers
    with_min_cell_size(lab, smallest)
    code, out, err = in_process("analyze", "q", "--json")
    assert code == 0, err
    for metric, row in quantile_rows(out).items():
        q = QUANTILES[metric]
        assert row["reason"] is None, row
        assert row["mean_control"] == pytest.approx(float(np.quantile(values["control"], q)), rel=1e-12)
        assert row["mean_treatment"] == pytest.approx(float(np.quantile(values["fast"], q)), rel=1e-12)
        assert row["p_value"] is not None and row["ci_low"] is not None


@pytest.mark.parametrize("floor", [None, "smallest+1"], ids=["default-10", "one-above-the-smallest-arm"])
def test_quantiles_of_arms_below_the_minimum_cell_size_are_withheld_with_their_reason(few_customers, floor):
    """RELIABILITY Facts: a median or maximum over a handful of customers is a person's value. Below
    ``privacy.min_cell_size`` (default 10) the quantile rows carry no statistic, only the reason, and none of
    the arms' quantiles appears anywhere in the JSON; a quantile primary makes the decision invalid."""
    import numpy as np

    lab, values, smallest = few_customers
    with_min_cell_size(lab, None if floor is None else smallest + 1)
    code, out, err = in_process("analyze", "q", "--json")
    assert code == 0 and "Traceback" not in err, err
    data = json.loads(out)
    for metric, row in quantile_rows(out).items():
        assert row["reason"] == "suppressed_small_cell", row
        assert {k: row[k] for k in WITHHELD} == dict.fromkeys(WITHHELD), row
        for arm_values in values.values():
            exact = float(np.quantile(arm_values, QUANTILES[metric]))
            assert repr(exact) not in out and f"{exact:.6g}" not in out, (metric, exact)
    assert data["decision"] == "invalid" and data["decision_code"] == "suppressed_small_cell", data["reason"]
    assert "minimum cell size" in data["reason"]
    churned = next(r for r in data["metrics"] if r["metric"] == "churned")
    assert (
        churned["reason"] is None and churned["p_value"] is not None
    )  # proportions are not order statistics


def distribution(lab, metric: str):
    lab_ = labkit.load_lab(lab.root)
    return labkit.binned_distribution(labkit.load_pilot("q", lab=lab_), metric)


def test_a_distribution_shows_no_bin_of_fewer_customers_than_the_minimum_cell_size(few_customers):
    lab, values, _ = few_customers
    with_min_cell_size(lab, 3)
    bins = distribution(lab, "median_spend")
    assert len(bins) and bins["suppressed"].any()
    shown = bins.loc[bins["count"] > 0, "count"]
    assert (shown >= 3).all(), bins
    hidden = bins[bins["suppressed"]]
    assert (hidden["count"] == 0).all() and (hidden["share"] == 0).all()


def test_a_distribution_reveals_neither_the_smallest_nor_the_largest_customer_value(few_customers):
    import numpy as np

    lab, values, _ = few_customers
    bins = distribution(lab, "median_spend")
    pooled = np.concatenate(list(values.values()))
    edges = set(bins["bin_low"]) | set(bins["bin_high"])
    assert float(pooled.min()) not in edges and float(pooled.max()) not in edges


# ----------------------------------------------------------------- 26, 31, 32: one hostile PG run


ASSIGN_THEN_RUN = (
    "import sys\n"
    "from labkit.cli import main\n"
    "code = main(['assign', sys.argv[1]])\n"
    "print('\\x00assigned', flush=True)\n"
    "sys.exit(code or main(['run', sys.argv[1]]))\n"
)


@pytest.fixture(scope="module")
def pg_run(tmp_path_factory, postgres_server):  # noqa: F811
    tables = crm_tables()
    url = postgres_server.create_database("security_crm")
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        load_postgres(con, tables)
    canary = CANARY + "-" + os.urandom(4).hex()
    root = tmp_path_factory.mktemp("security").resolve() / FOLDER.format(c=canary)
    write_lab(root, "postgres", tables)
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "pilot_analysis.ipynb", root / "notebooks" / "pilot_analysis.ipynb")
    statement = STATEMENT.format(c=canary)
    pilot = PILOT.replace("  statement: Fast replies lower churn.", f"  statement: {json.dumps(statement)}")
    pilot += "budget: {cost: 1000, value_per_unit: 50}\n"
    (root / "experiments" / f"{PILOT_ID}.yaml").write_text(pilot)
    drop = {"LABKIT_LAB", "LABKIT_TRACKING_URI", "COLUMNS", "LINES", "LABKIT_DEBUG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {URL_ENV: url, "LABKIT_ID_KEY": KEY, "MLFLOW_DISABLE_TELEMETRY": "true"}
    # One process runs the console script's ``main`` for `assign` then `run`: a process of its own (forked
    # with labkit imported, tests/cli_fork.py), whose stdout and stderr file descriptors are what the
    # secrets are looked for in.
    done = cli_fork.run([PILOT_ID], root, env, timeout=600, code=ASSIGN_THEN_RUN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("\x00assigned\n") == 1, done.stdout + done.stderr
    outputs = [done.stdout, done.stderr]
    lab = labkit.load_lab(root)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=lab.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(lab.spec.mlflow_experiment).experiment_id])
    (folder,) = sorted((root / "results" / PILOT_ID / "runs").iterdir())
    return {
        "root": root, "lab": lab, "client": client, "run": run, "folder": folder, "outputs": outputs,
        "canary": canary, "statement": statement, "url": url, "password": postgres_server.password,
        "user": postgres_server.user,
    }  # fmt: skip


# Folder names with what a URI reads specially — ``?`` (a query), ``#`` (a fragment), ``%`` before hex digits
# (an escape), ``& = ; + : @`` — among letters, spaces, quotes and a non-ASCII letter.
URI_FOLDER_CHARS = st.sampled_from("aA1 ?#%&=;+:@'\"-_.ü")


@settings(max_examples=150, deadline=None)
@given(name=st.text(URI_FOLDER_CHARS, min_size=1, max_size=10).filter(lambda n: n.strip(".") != ""))
def test_a_lab_folder_of_any_name_names_its_own_store_file(tmp_path_factory, name):
    """SQLAlchemy, and MLflow through it, ends a sqlite URI's path at its first ``?`` and percent-decodes the
    rest: a lab in ``lab?1`` kept its runs in a file ``lab`` beside it (shared with ``lab?2``, and with
    ``labkit compare`` of either), one in ``team%41`` in ``teamA``. Whatever the lab's folder is called, the
    file MLflow opens (SQLAlchemy's own reading of the URI) and the file labkit's readers open are the
    lab's ``results/mlflow.db``."""
    from unittest import mock

    from sqlalchemy.engine import make_url

    from labkit.lab import sqlite_file

    root = tmp_path_factory.mktemp("uri") / name
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "lab.yaml").write_text("lab: named\n")
    store = root.resolve() / "results" / "mlflow.db"
    with mock.patch.dict(os.environ):
        os.environ.pop("LABKIT_TRACKING_URI", None)
        uri = labkit.load_lab(root).tracking_uri
    assert make_url(uri).database == str(store)
    assert sqlite_file(uri) == store


@pytest.mark.parametrize("name", [QUOTED_FOLDER, "lab?1", "team%41b#c ü"])
def test_a_lab_folder_with_uri_characters_creates_and_reads_its_own_store(tmp_path, monkeypatch, name):
    """The store is created in the lab, and nowhere else, and read back by labkit's readers: the sqlite
    tables (compare's reader), the check that a store exists, and the privacy scan of a store's values.
    A single quote: MLflow alone would insert its Default experiment's location (./mlruns of the working
    directory, a raw path with the quote) into SQL and fail; labkit creates the store with a percent-encoded
    artifact root."""
    from labkit.privacy import _sqlite_text
    from labkit.tracking import SqliteRuns, Tracker, check_store_exists

    root = tmp_path / name
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "lab.yaml").write_text("lab: named\n")
    monkeypatch.delenv("LABKIT_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)  # MLflow's default artifact root is ./mlruns of the working directory
    lab = labkit.load_lab(root)
    tracker = Tracker(lab)
    tracker.prepare()
    store = root / "results" / "mlflow.db"
    assert tracker.experiment_id is not None and store.is_file()
    assert os.listdir(tmp_path) == [name]  # nothing beside the lab (before: a store file named "lab")
    check_store_exists(lab)
    assert SqliteRuns.open(lab, any_revision=True) is not None
    assert lab.spec.mlflow_experiment.encode() in _sqlite_text(store)


def test_hostile_strings_reach_the_notebook_as_literals(pg_run):
    root, folder = pg_run["root"], pg_run["folder"]
    assert pg_run["run"].info.status == "FINISHED"
    nb = json.loads((folder / "pilot_analysis.ipynb").read_text())
    injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(injected["source"]))
    values = {}
    for node in tree.body:  # nothing but `name = literal` statements
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert values["pilot_path"] == str(folder / f"{PILOT_ID}.yaml")  # the run's snapshot of the pilot file
    assert values["lab_path"] == str(root / "configs" / "lab.yaml")
    assert not any(p.startswith(os.path.basename(pg_run["canary"])) for p in os.listdir("/tmp"))


def test_a_10000_character_hypothesis_is_split_not_truncated(pg_run):
    client, run, statement = pg_run["client"], pg_run["run"], pg_run["statement"]
    params = run.data.params
    parts = sorted(k for k in params if k.startswith("hypothesis.statement.part"))
    assert len(parts) >= 2 and all(len(params[k]) <= 6000 for k in parts)
    assert "".join(params[k] for k in parts) == statement
    local = (pg_run["folder"] / "results.json").read_bytes()
    downloaded = client.download_artifacts(
        run.info.run_id, "results.json", str(pg_run["folder"].parent.parent)
    )
    with open(downloaded, "rb") as fh:
        assert fh.read() == local


def test_no_connection_string_or_key_in_mlflow_notebooks_or_logs(pg_run):
    root, url = pg_run["root"], pg_run["url"]
    secrets = {url, pg_run["password"], url.split("@")[0], url.split("//")[1], KEY, f"{pg_run['user']}:"}
    scanned = [root / "results" / "mlflow.db", root / "results" / "mlruns", root / "results" / PILOT_ID]
    assert sum(1 for p in scanned for _ in p.rglob("*.ipynb")) >= 2  # the kept and the logged notebook
    found = scan_for_identifiers(scanned, secrets)
    assert found == [], found
    for path in (p for s in scanned for p in ([s] if s.is_file() else s.rglob("*")) if p.is_file()):
        data = path.read_bytes()
        assert pg_run["password"].encode() not in data and KEY.encode() not in data, path
    for text in pg_run["outputs"]:
        assert all(secret not in text for secret in secrets)
    run = pg_run["run"]
    for mapping in (run.data.params, run.data.tags):
        assert not any(s in v for v in mapping.values() for s in secrets)


# ----------------------------------------------------------------- stored HTML in the notebook export


def test_html_in_a_pilots_free_text_is_shown_not_run_in_the_exported_notebook(tiny_lab):
    """The pilot card goes into a Markdown output; nbconvert's HTML export (attached to every MLflow run and
    shown in its UI) keeps raw tags from Markdown, so title, hypothesis and owner are escaped first."""
    import nbformat
    from nbconvert import HTMLExporter

    from labkit.notebook import pilot_card

    script, img = "<script>alert('t')</script>", '<img src=x onerror="alert(1)">'
    text = PILOT_YAML.replace("title: Reply fast", f"title: {json.dumps('Reply ' + script)}")
    text = text.replace("statement: Fast replies lower churn.", f"statement: {json.dumps('Fast ' + img)}")
    pilot = labkit.load_pilot(tiny_lab.pilot(text), lab=labkit.load_lab(tiny_lab.root))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(pilot_card(pilot))])
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert "<script>alert(" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(" in html and "onerror=" in html  # shown as text
