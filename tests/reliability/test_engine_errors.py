"""An engine error never carries a customer's row (RELIABILITY.md case 35, issue 13 "Privacy").

DuckDB detects a CSV column's type from the file's first 20,480 rows; a value past them that does not
fit ('n/a' in a numeric column) fails the query while its rows are read, and DuckDB's message quotes the
whole line (``Original Line: CUST-0020500,…``). A damaged Parquet page fails the same way, naming no
file. Either, through ``labkit analyze`` (a subprocess: the console script as a user runs it) and through
the API, is one ``DataError`` naming the source, the column and — for the CSV — the number of bad rows,
counted in the engine with TRY_CAST and checked here against a count in plain Python. Spark's first line
is masked where it quotes a value. And the last line of defence: a notebook whose cell raises an error
quoting a customer id is saved (notebook, html, run message) with the id redacted
(``labkit.runner.export.redact_errors``, ``labkit.privacy.redactor``).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import textwrap
from pathlib import Path

import cli_fork
import nbformat
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit
from labkit.assignment import assign
from labkit.data.spark import spark_error
from labkit.errors import DataError
from labkit.privacy import REDACTED, redactor

from conftest import DROP, pilot_yaml

N = 20_600  # past DuckDB's type-detection sample of 20,480 rows
BAD_ROWS = (20_500, 20_550)  # data rows whose visits is 'n/a'
LAB = """\
lab: engine-errors
functions: [service]
channels: [twitter]
stages: [retention]
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
  outcomes_pq: {format: parquet, path: data/outcomes_pq.parquet}
"""


def pilot_text(pid: str, source: str) -> str:
    """The default pilot (tests/pilots.py) on every customer, with two means of ``source``."""
    return pilot_yaml(
        id=pid, title="Engine errors",
        hypothesis={"statement": "Spend rises.", "metric": "spend", "direction": "increase",
                    "mde": {"relative": 0.2}},
        metrics=[{"name": name, "type": "mean", "source": source, "column": name} for name in ("spend", "visits")],
        **{"cohort.where": DROP, "cohort.max_size": 30000},
    )  # fmt: skip


def _ids() -> list[str]:
    return [f"CUST-{i:07d}" for i in range(N)]


def _damage(path: Path, column: int) -> None:
    """Scramble bytes inside one compressed data page of ``column`` (row group 2): the file's footer and
    every other page stay intact, so only reading that page's values fails."""
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(column)
    start = chunk.data_page_offset
    end = (chunk.dictionary_page_offset or start) + chunk.total_compressed_size
    data = bytearray(path.read_bytes())
    for k in range(start + 40, min(start + 200, end - 1)):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine-errors")
    for folder in ("configs", "experiments", "data"):
        (root / folder).mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB)
    (root / "experiments" / "p.yaml").write_text(pilot_text("p", "outcomes"))
    (root / "experiments" / "q.yaml").write_text(pilot_text("q", "outcomes_pq"))
    ids = _ids()
    pq.write_table(pa.table({"customer_id": ids}), root / "data" / "customers.parquet")
    rows = ["customer_id,spend,visits,note"]
    for i, c in enumerate(ids):
        visits = "n/a" if i in BAD_ROWS else str(i % 9)
        rows.append(f"{c},{(i * 37) % 1000}.{i % 100:02d},{visits},note {i}")
    (root / "data" / "outcomes.csv").write_text("\n".join(rows) + "\n")
    table = pa.table(
        {
            "customer_id": ids,
            "spend": [float((i * 37) % 1000) for i in range(N)],
            "visits": [i % 9 for i in range(N)],
        }
    )
    pq.write_table(table, root / "data" / "outcomes_pq.parquet", compression="snappy", row_group_size=5000)
    _damage(root / "data" / "outcomes_pq.parquet", column=1)
    lab_ = labkit.load_lab(root)
    for pilot in ("p", "q"):
        assign(labkit.load_pilot(pilot, lab=lab_))
    return root


def _analyze_cli(root: Path, pilot: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LABKIT_DEBUG", "LABKIT_LAB")}
    return cli_fork.run(["analyze", pilot, "--json"], root, env, timeout=120)  # a process of its own


def _no_row_content(text: str) -> None:
    assert "CUST-" not in text, text
    assert "n/a" not in text and "Original Line" not in text and "Traceback" not in text, text


def _python_bad_count(path: Path) -> int:
    """Rows whose visits is not a number, counted with the csv module (the reference)."""
    bad = 0
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                float(row["visits"])
            except ValueError:
                bad += 1
    return bad


def test_a_value_past_the_csv_type_sample_is_one_line_without_the_row(lab):
    done = _analyze_cli(lab, "p")
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    _no_row_content(done.stderr)
    first = BAD_ROWS[0] + 2  # the header is line 1
    assert lines[0].startswith(
        f"source 'outcomes', column 'visits': 2 rows hold a value that is not a number "
        f"(line {first} of the file is one)"
    ), lines[0]


def test_a_value_past_the_csv_type_sample_through_the_api(lab):
    pilot = labkit.load_pilot("p", lab=labkit.load_lab(lab))
    with pytest.raises(DataError) as caught:
        labkit.analyze(pilot)
    error = caught.value
    assert (error.source, error.column) == ("outcomes", "visits")
    assert error.rows == _python_bad_count(lab / "data" / "outcomes.csv") == len(BAD_ROWS)
    assert error.__suppress_context__  # DuckDB's exception, which quotes the row, is not chained
    _no_row_content(str(error))


def test_a_damaged_parquet_page_is_one_line_naming_file_and_column(lab):
    done = _analyze_cli(lab, "q")
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "source 'outcomes_pq', column 'spend': data/outcomes_pq.parquet cannot be read: a page of the file "
        "is damaged (Error); write the file again"
    ]
    pilot = labkit.load_pilot("q", lab=labkit.load_lab(lab))
    with pytest.raises(DataError) as caught:
        labkit.analyze(pilot)
    assert (caught.value.source, caught.value.column) == ("outcomes_pq", "spend")


value = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@ ", min_size=4, max_size=30).filter(
    lambda v: v.strip() and not re.fullmatch(r"[\d .-]*", v)
)


@settings(max_examples=60, deadline=None)
@given(v=value)
def test_spark_messages_never_quote_a_value(v):
    """Spark's errors quote the offending value ('…') or record ([…]); labkit's line keeps neither."""
    for text in (
        f'[CAST_INVALID_INPUT] The value \'{v}\' of the type "STRING" cannot be cast to "DOUBLE"',
        f"[MALFORMED_RECORD_IN_PARSING] Malformed records are detected in record parsing: [{v},n/a]",
    ):
        shown = str(spark_error(Exception(text), "outcomes"))
        assert v not in shown.removeprefix("source 'outcomes': "), shown
        assert shown.startswith("source 'outcomes': Spark: the query failed: Exception: [")


@settings(max_examples=60, deadline=None)
@given(v=value, before=st.integers(236, 263))  # the quote then spans the 300th character
def test_a_spark_message_is_masked_before_it_is_cut(v, before):
    """A quoted value across the 300-character cut of the line leaves no part of itself behind."""
    text = f"[CAST_INVALID_INPUT] {'w' * before} The value '{v}' cannot be cast"
    shown = str(spark_error(Exception(text), "outcomes")).removeprefix("source 'outcomes': ")
    assert v.strip()[:4] not in shown, shown


ID = st.builds(
    lambda p, n, w: f"{p}-{n:0{w}d}", st.sampled_from(["CUST", "C", "Kd"]), st.integers(0, 10**6), st.just(7)
)


@settings(max_examples=100, deadline=None)
@given(
    cohort=st.lists(ID, min_size=1, max_size=20, unique=True),
    other=ID,
    glue=st.sampled_from([*",;:'\" \n|=", "\x1b[0;31m"]),
)
def test_the_redactor_removes_every_cohort_id_and_every_id_of_their_shape(cohort, other, glue):
    """An id of the cohort, or of the same shape (a customer the cap left out), delimited by anything
    that is not a letter or digit, never survives; the rest of the text does."""
    redact = redactor(set(cohort))
    text = f"Original Line{glue}{cohort[0]}{glue}2381.62{glue}n/a line 20482{glue}"
    if other.split("-")[0] in {c.split("-")[0] for c in cohort}:
        text += other
    out = redact(text)
    for ident in [*cohort, other]:
        assert ident not in out.replace(REDACTED, "")
    assert "2381.62" in out and "line 20482" in out and REDACTED in out


def test_an_error_quoting_a_customer_id_is_redacted_in_the_executed_notebook(lab, tmp_path):
    """A cell raises an error whose text quotes a customer of the cohort and one of its shape outside it
    (CUST-0099999): the saved notebook, its html and the run's message hold neither; the default
    redactor of a labkit notebook reads the pilot's cohort (``pilot_path``, ``lab_path`` parameters)."""
    from labkit.runner import execute

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('run_token = ""\noutput_dir = "."\npilot_path = ""\nlab_path = ""')
    params.metadata["tags"] = ["parameters"]
    # the ids are made when the cell runs: the cell's source does not hold them, its error output does
    leak = 'f"CSV Error on Line: 20502\\nOriginal Line: {a}-0000042,1.5,n/a,{a}-0099999"'
    nb.cells = [params, nbformat.v4.new_code_cell(f'a = "CUST"\nraise ValueError({leak})')]
    notebook = tmp_path / "leaks.ipynb"
    notebook.write_text(nbformat.writes(nb))
    out = tmp_path / "out"
    run = execute(
        notebook,
        out,
        {"pilot_path": str(lab / "experiments" / "p.yaml"), "lab_path": str(lab)},
        cwd=tmp_path,
        run_token="t",
        timeout_s=120,
    )
    assert run.status == "FAILED" and run.ename == "ValueError"
    saved = (out / "leaks.ipynb").read_text()
    assert "CUST-" not in saved and "CUST-" not in (run.message or "")
    assert REDACTED in saved and "n/a" in saved  # the rest of the error stays readable
    if run.html is not None:
        assert "CUST-" not in Path(run.html).read_text()


def test_the_redactor_leaves_text_without_ids_as_it_is():
    redact = redactor({"CUST-0000001"})
    text = textwrap.dedent(
        """\
        Traceback (most recent call last):
          File "/x/labkit/data/aggregate.py", line 348, in _fetch
        DataError: source 'outcomes', column 'visits': 2 rows hold a value that is not a number
        """
    )
    assert redact(text) == text
