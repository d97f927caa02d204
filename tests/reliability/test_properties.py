"""Property tests: generated pilot files and data around the edges give a valid result or a clear error.

Hypothesis generates (derandomized, no example database, so CI sees the same examples every time):

- pilot files: the valid tiny pilot with one field's value replaced by text drawn from an alphabet of
  YAML and shell metacharacters, YAML 1.1 words, line breaks, NUL and bidi marks — every outcome of
  ``parse_pilot`` and ``labkit validate`` is a pilot or one printable ``file:line: field: message`` line
  per problem, never another exception;
- data: tiny imported assignments (empty arms, one arm, a handful of customers) with outcomes that are
  constant, zero, NaN, infinite, missing or duplicated, for proportion, mean and ratio primaries — every
  outcome of ``labkit.assign`` + ``labkit.analyze`` is an Analysis whose JSON holds no NaN or infinity, a
  decision in the allowed set and p-values in [0, 1], or a LabkitError of one line.

Plus RELIABILITY #15: an injected sample-ratio mismatch makes the pilot invalid, and the SRM check's false
alarm rate over 2000 seeded A/A splits stays within its binomial bound at the production threshold.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from test_input import cli_main

import labkit
from labkit.errors import LabkitError
from labkit.lab import load_lab
from labkit.spec import parse_pilot
from labkit.stats.srm import srm_test

from conftest import LAB_YAML, PILOT_YAML


def moderate(max_examples: int) -> settings:
    """Deterministic for CI: derandomized, no example database, no deadline (DuckDB's first query is slow)."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


DECISIONS = {"ship", "harm", "no-effect", "inconclusive", "invalid"}
LINE = re.compile(r"^experiments/p\.yaml(:\d+(:\d+)?)?: \S")

# ------------------------------------------------------------------------------------ pilot files

FIELDS = [  # (the text of a line of PILOT_YAML, its prefix up to the value)
    ("id: p", "id: "),
    ("title: Reply fast", "title: "),
    ("channel: twitter", "channel: "),
    ("owner: lab@example.com", "owner: "),
    ("  metric: churned", "  metric: "),
    ("  mde: {relative: 0.15}", "  mde: "),
    ("  id_column: customer_id", "  id_column: "),
    ('    - {column: has_twitter, op: "==", value: true}', "    - "),
    ("  max_size: 2000", "  max_size: "),
    ("  arms: {control: 0.5, fast: 0.5}", "  arms: "),
    ("  control: control", "  control: "),
    ("  start: 2026-11-01", "  start: "),
    ("    column: churned", "    column: "),
    ("    window_days: 30", "    window_days: "),
]
PIECES = [
    "'", '"', ";", "$(touch /tmp/pwn)", "`id`", "\n", "\t", "\x00", "\u202e", "\u200f", "\\", ":", "- ",
    "[", "]", "{", "}", "&a", "*a", "!!binary", "!!python/object/apply:os.system", "#", "|", ">", "%",
    "@", "no", "yes", "on", "0123", "1e3", "2026-01-01", "12:30:00", ".inf", ".nan", "-1", "0", "~",
    "null", "../../etc/passwd", "/etc/passwd", "DROP TABLE customers;--", "a", "fast", "control", " ",
    "é", "\ufeff", "\r", "\x85", "\u2028",
]  # fmt: skip
values = st.lists(st.sampled_from(PIECES), min_size=0, max_size=6).map("".join)


@pytest.fixture(scope="module")
def spec_lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("props-spec")
    (root / "configs").mkdir()
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "experiments").mkdir()
    return root, load_lab(root)


@moderate(300)
@given(field=st.sampled_from(FIELDS), value=values, quoted=st.booleans())
def test_a_mutated_pilot_file_is_a_pilot_or_one_printable_line_per_problem(spec_lab, field, value, quoted):
    root, lab = spec_lab
    line, prefix = field
    shown = json.dumps(value) if quoted else value  # a double-quoted YAML scalar or the raw text
    text = PILOT_YAML.replace(line, prefix + shown, 1)
    path = root / "experiments" / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    pilot, errors = parse_pilot(path, lab, display="experiments/p.yaml")
    assert (pilot is None) == bool(errors)
    for error in errors:
        message = error.message
        assert LINE.match(message), message
        assert message.isprintable(), message  # one line, no control or bidi characters shown raw
    if pilot is not None:
        assert pilot.id == "p" and json.loads(json.dumps(pilot.spec.model_dump(mode="json")))


@moderate(25)
@given(field=st.sampled_from(FIELDS), value=values)
def test_validate_exits_0_or_1_with_one_line_per_problem(spec_lab, field, value, monkeypatch):
    root, _ = spec_lab
    line, prefix = field
    (root / "experiments" / "p.yaml").write_text(PILOT_YAML.replace(line, prefix + value, 1))
    monkeypatch.chdir(root)
    code, out, err = cli_main("validate", "experiments/p.yaml")
    if code == 0:
        assert out == "ok: 1 file(s) valid\n" and err == ""
    else:
        assert code == 1 and out == ""
        *problems, summary = err.splitlines()
        assert summary == f"{len(problems)} problem(s) in 1 file(s)"
        assert all(LINE.match(p) and p.isprintable() for p in problems), problems


# ------------------------------------------------------------------------------------------ data

DATA_LAB = LAB_YAML.replace(
    "  events: {format: parquet, path: data/events.parquet, timestamp: ts}\n",
    "  events: {format: parquet, path: data/events.parquet, timestamp: ts}\n"
    "  sends: {format: parquet, path: data/sends.parquet}\n",
)
METRICS = {
    "proportion": "  - {name: target, type: proportion, source: outcomes, column: val}\n",
    "mean": "  - {name: target, type: mean, source: outcomes, column: val}\n",
    "ratio": (
        "  - name: target\n    type: ratio\n    numerator: {source: outcomes, column: val}\n"
        "    denominator: {source: outcomes, column: den}\n"
    ),
}


def data_pilot(kind: str, arms: int, max_size: int) -> str:
    weights = ", ".join(f"{name}: {1 / arms!r}" for name in ["control", "fast", "slow"][:arms])
    if arms == 2:
        weights = "control: 0.5, fast: 0.5"
    return (
        textwrap.dedent(
            f"""\
        id: d
        title: Edge data
        function: service
        channel: twitter
        stage: retention
        owner: lab@example.com
        hypothesis:
          statement: Something moves.
          metric: target
          direction: increase
          mde: {{relative: 0.1}}
        cohort:
          source: customers
          id_column: customer_id
          max_size: {max_size}
          arms: {{{weights}}}
          control: control
          start: 2026-11-01
          assignment: {{source: sends, arm_column: variant}}
        metrics:
        """
        )
        + METRICS[kind]
        + "budget: {cost: 100, value_per_unit: 5}\n"
    )


outcome_values = st.one_of(
    st.sampled_from([0.0, 1.0, 0.0, 1.0, 2.5, float("nan"), float("inf"), -float("inf"), 1e300, -3.0]),
    st.floats(min_value=-10, max_value=10, allow_nan=False),
)


@st.composite
def edge_cases(draw):
    kind = draw(st.sampled_from(sorted(METRICS)))
    arm_sizes = draw(st.lists(st.integers(0, 6), min_size=2, max_size=2))
    n = sum(arm_sizes)
    constant = draw(st.booleans())
    first = draw(outcome_values)
    y = [first] * n if constant else draw(st.lists(outcome_values, min_size=n, max_size=n))
    d = draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, 3.0, float("nan")]), min_size=n, max_size=n))
    missing = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    duplicate = draw(st.booleans()) and n > 0
    max_size = draw(st.sampled_from([1, 3, 100]))
    return kind, arm_sizes, y, d, missing, duplicate, max_size


def check_outcome(run) -> str:
    """``run()`` returns an Analysis or raises a one-line LabkitError; anything else fails the property."""
    try:
        result = run()
    except LabkitError as exc:
        assert str(exc) and len(str(exc).splitlines()) == 1 and "Traceback" not in str(exc), str(exc)
        return "error"
    data = json.loads(result.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert data["decision"] in DECISIONS
    assert isinstance(data["reason"], str) and data["reason"]
    for row in data["metrics"]:
        for key in ("p_value", "p_value_adjusted"):
            p = row.get(key)
            assert p is None or (isinstance(p, (int, float)) and 0 <= p <= 1), (key, p)
        for key, value in row.items():
            assert not (isinstance(value, float) and not math.isfinite(value)), key
    return "analysis"


def analyse_case(case) -> str:
    """Write a lab for one generated case, assign and analyse it; 'analysis' or 'error' (see check_outcome)."""
    kind, arm_sizes, y, d, missing, duplicate, max_size = case
    with tempfile.TemporaryDirectory(prefix="labkit-props-") as folder:
        root = Path(folder)
        (root / "configs").mkdir()
        (root / "configs" / "lab.yaml").write_text(DATA_LAB)
        (root / "experiments").mkdir()
        (root / "data").mkdir()
        arms = ["control"] * arm_sizes[0] + ["fast"] * arm_sizes[1]
        ids = [f"c{i}" for i in range(len(arms))]
        pd.DataFrame({"customer_id": ids + ["extra"], "has_twitter": True}).to_parquet(
            root / "data" / "customers.parquet", index=False
        )
        sends = pd.DataFrame({"customer_id": ids, "variant": arms}, dtype=object)
        if duplicate:
            sends = pd.concat([sends, sends.head(1)], ignore_index=True)
        sends.astype({"customer_id": str, "variant": str}).to_parquet(
            root / "data" / "sends.parquet", index=False
        )
        outcomes = pd.DataFrame({"customer_id": ids, "val": y, "den": d}, dtype=object)
        outcomes = outcomes[[not m for m in missing]] if ids else outcomes
        outcomes.astype({"customer_id": str, "val": float, "den": float}).to_csv(
            root / "data" / "outcomes.csv", index=False
        )
        (root / "experiments" / "d.yaml").write_text(data_pilot(kind, 2, max_size))
        lab = labkit.load_lab(root / "configs" / "lab.yaml")

        def run():
            pilot = labkit.load_pilot(root / "experiments" / "d.yaml", lab=lab)
            labkit.assign(pilot)
            return labkit.analyze(pilot)

        return check_outcome(run)


@moderate(40)
@given(case=edge_cases())
def test_edge_data_gives_a_valid_analysis_or_a_clear_error(case):
    assert analyse_case(case) in ("analysis", "error")


@pytest.mark.parametrize("kind", sorted(METRICS))
def test_the_harness_analyses_an_ordinary_case(kind):
    """The property above is not vacuous: ordinary data through the same harness gives an Analysis."""
    y = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    case = (kind, [5, 5], y, [1.0, 2.0] * 5, [False] * 10, False, 100)
    assert analyse_case(case) == "analysis"


# ---------------------------------------------------------------------------------------- 15: SRM


def test_srm_false_alarm_rate_at_the_production_threshold():
    """2000 seeded A/A splits of 2000 customers at the planned 50/50: flags <= the 99.9% binomial bound."""
    reps, threshold = 2000, 0.001
    rng = np.random.default_rng(15)
    flags = 0
    for n_control in rng.binomial(2000, 0.5, reps):
        result = srm_test(
            {"control": int(n_control), "fast": int(2000 - n_control)}, {"control": 0.5, "fast": 0.5}
        )
        flags += not result.ok
    bound = int(stats.binom.ppf(0.999, reps, threshold))
    assert flags <= bound, f"{flags}/{reps} A/A splits flagged at {threshold}; 99.9% bound {bound}"


def test_srm_injected_by_dropping_a_tenth_of_one_arm_is_invalid(tmp_path, monkeypatch):
    """An imported assignment losing 10% of one arm's customers (a tracking bug) is flagged by the CLI."""
    rng = np.random.default_rng(16)
    n = 10_000
    ids = [f"c{i:05d}" for i in range(n)]
    arms = np.where(rng.permutation(n) % 2 == 0, "control", "fast")
    keep = ~((arms == "fast") & (rng.random(n) < 0.1))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lab.yaml").write_text(DATA_LAB)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "data").mkdir()
    pd.DataFrame({"customer_id": ids, "has_twitter": True}).to_parquet(
        tmp_path / "data" / "customers.parquet"
    )
    pd.DataFrame({"customer_id": np.asarray(ids)[keep], "variant": arms[keep]}).to_parquet(
        tmp_path / "data" / "sends.parquet"
    )
    pd.DataFrame({"customer_id": ids, "val": rng.random(n) < 0.2, "den": 1.0}).astype({"val": int}).to_csv(
        tmp_path / "data" / "outcomes.csv", index=False
    )
    (tmp_path / "experiments" / "d.yaml").write_text(data_pilot("proportion", 2, 20_000))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABKIT_ID_KEY", "props-test-key-0123456789abcdef")
    code, _, err = cli_main("assign", "d")
    assert code == 0, err
    code, out, err = cli_main("analyze", "d", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["decision"] == "invalid" and data["decision_code"] == "srm"
    assert data["srm"]["ok"] is False and data["srm"]["p_value"] < 0.001
