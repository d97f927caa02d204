"""Hostile and broken input through the real `labkit` CLI (RELIABILITY.md cases 1-14, 17, 20, 34).

One lab is built for the module: seeded CRM extracts (customers parquet with ids, emails and handles,
outcomes csv, events parquet), the repo's analysis notebook, a valid pilot ``p`` that is assigned and run
once (``labkit.cli.main``: ``assign p``, ``run p``) so that ``results/`` holds an assignment, an executed
notebook and a real sqlite MLflow store with one FINISHED run. Each test then breaks one thing (a pilot file, the lab
file, a notebook, a data file) and drives ``labkit.cli.main`` in this process — the code path of the
console script, without a new interpreter's seconds of imports — for every command that reads it
(``validate``, ``plan``, ``assign``, ``analyze``, ``run``). The default expectation of RELIABILITY.md is
checked for each: exit 1, the exact ``file:line: field.path: message`` lines, nothing on stdout, no
traceback, and every byte under ``results/`` (assignment, run folders, ``mlflow.db``, ``mlruns/``) and
in the folder around the lab unchanged. The fixture puts the lab's inputs back after each test.

Where a case is proved by a test elsewhere, it is not repeated here; the table below names the tests.

Case -> tests (RELIABILITY.md; cases 21-25, 27-30 and 33 are the faults helper's files)

 1 syntax: unclosed [, bad indent, tab   test_input::test_yaml_syntax_errors_are_one_line_at_their_mark;
                                          test_yamlfile::test_unclosed_bracket_*, _bad_indentation_*, _tab_*
 2 duplicate keys                         test_input::test_duplicate_keys_top_level_and_nested;
                                          test_yamlfile::test_duplicate_*
 3 alias bomb, anchors/aliases            test_input::test_alias_bomb_is_refused_fast_and_small_by_the_cli;
                                          test_yamlfile::test_alias_bomb_is_refused_fast_and_small, _anchor_, _alias_
 4 50 MB pilot file                       test_input::test_a_50_mb_pilot_is_refused_on_its_size;
                                          test_yamlfile::test_file_over_the_limit_is_refused_*
 5 non-UTF-8, NUL, BOM                    test_input::test_bytes_that_are_not_utf8_are_refused_at_line_and_column,
                                          test_input::test_a_utf8_bom_is_accepted; test_yamlfile::test_*utf*
 6 YAML 1.1 coercions                     test_input::test_yaml11_coercions_one_error_per_field;
                                          test_yamlfile::test_plain_scalar_yaml_1_1_*, test_spec::test_yaml11_*
 7 tags                                   test_input::test_tags_are_refused_and_never_built;
                                          test_yamlfile::test_explicit_tag_is_refused, _python_tag_is_never_constructed
 8 wrong shapes, all errors in one pass   test_input::test_every_shape_and_reference_problem_in_one_pass_sorted;
                                          test_spec::test_*
 9 path traversal                         test_input::test_hostile_pilot_ids_and_notebook_paths_are_refused,
                                          test_input::test_a_notebook_symlinked_out_of_the_lab_is_refused,
                                          test_input::test_data_sources_outside_the_lab_are_refused_by_validate,
                                          test_input::test_a_data_root_admits_its_folder_and_nothing_beside_it
10 SQL/shell metacharacters              test_input::test_metacharacters_in_names_are_refused_on_one_line,
                                          test_input::test_hostile_filter_values_are_literals_through_assign,
                                          test_input::test_hostile_values_in_the_lab_file_are_one_line_each,
                                          test_input::test_every_hostile_lab_value_is_reported_in_one_pass,
                                          test_input::test_hostile_free_text_in_the_lab_file_is_a_literal_to_the_store;
                                          test_cohort::test_hostile_*; test_postgres::test_hostile_filter_values_*
                                          (PG table intact), test_security::test_hostile_strings_*
11 broken notebooks                       test_input::test_broken_notebooks_are_refused_before_any_run;
                                          test_runner::test_broken_notebook_files_are_refused, _unknown_kernel_*;
                                          test_pipeline::test_preflight_refuses_before_any_run_is_created
12 missing column, wrong dtype, NaN/inf   test_input::test_bad_outcome_data_names_source_and_column;
                                          test_aggregate::test_missing_column_*, _string_column_*, _nan_and_inf_*
13 duplicate customer ids                 test_input::test_duplicate_customer_ids_are_refused_with_pseudonyms_only;
                                          test_assign::test_duplicate_ids_are_refused_with_pseudonyms_only
14 degenerate cohorts                     test_input::test_an_empty_cohort_is_refused_naming_the_condition,
                                          test_input::test_degenerate_primary_metrics_are_invalid_without_nan,
                                          test_input::test_one_arm_empty_after_the_cap_is_invalid_without_nan;
                                          test_analysis::test_degenerate_primary_is_invalid_*; test_properties::*
15 SRM; A/A flag rate                     test_properties::test_srm_injected_by_dropping_a_tenth_of_one_arm_is_invalid,
                                          test_properties::test_srm_false_alarm_rate_at_the_production_threshold;
                                          test_analysis::test_imported_assignment_srm_and_cap, test_srm::*
16 PG wrong password, down, timeout       test_postgres::test_a_failed_connection_is_one_line_without_the_secret,
                                          _preflight_reports_a_bad_connection_before_anything_runs,
                                          _a_statement_timeout_is_reported_without_the_url
17 reordered / appended rows              test_input::test_reordered_and_appended_rows_keep_the_assignment_and_flag_the_data_end_to_end;
                                          test_assign::test_reordered_source_rows_*, _new_customers_appended_*
18 assign twice, race, SIGKILL            test_assign::test_a_rerun_returns_the_existing_files_unchanged,
                                          _two_processes_racing_*, _sigkill_mid_write_*, _ctrl_c_mid_write_*
19 golden ids                             test_assign::test_golden_file_is_what_the_reference_draws,
                                          test_assign::test_labkit_draws_the_golden_arms
20 spec hash, spec_changed, salt change   test_pipeline::test_pre_registration_flags_a_changed_hypothesis_not_a_comment,
                                          test_assign::test_a_changed_salt_is_refused_unless_forced,
                                          test_compare::test_flags_spec_changed_data_changed_and_running,
                                          test_input::test_a_changed_salt_is_refused_by_the_cli
26 notebook parameters are literals       test_security::test_hostile_strings_reach_the_notebook_as_literals;
                                          test_runner::test_hostile_strings_arrive_exactly, _non_json_values_*,
                                          _bad_parameter_names_*, _execute_refuses_bad_parameters_*
31 long values, many metrics, inf         test_security::test_a_10000_character_hypothesis_is_split_not_truncated;
                                          test_tracking::test_long_values_are_split_or_moved_never_truncated
32 no identifiers or secrets in MLflow    test_demo_e2e::test_no_demo_customer_identifier_key_or_plain_hash_in_mlflow
                                          (the full `make demo` scan), test_pipeline::test_no_customer_identifier_*,
                                          test_security::test_no_connection_string_or_key_in_mlflow_notebooks_or_logs;
                                          test_postgres::test_the_connection_string_appears_in_no_output_or_file
34 a source reading /etc/passwd or ../    test_input::test_data_sources_outside_the_lab_are_refused_by_validate,
                                          test_security::test_the_duckdb_sandbox_refuses_files_outside_the_lab,
                                          test_security::test_a_source_outside_the_lab_is_one_line_naming_it_for_every_command,
                                          test_security::test_results_led_out_of_the_lab_is_one_clear_error_not_a_duckdb_exception
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labkit import cli
from labkit.privacy import pseudonym

from conftest import LAB_YAML, PILOT_YAML, REPO

P = "experiments/p.yaml"
KEY = "reliability-test-key-0123456789abcdef"
N = 300
START = pd.Timestamp("2026-11-01")
BUDGET = "budget: {cost: 1000, value_per_unit: 50}\n"
VALID = PILOT_YAML + BUDGET
COMMANDS = (("validate",), ("plan",), ("assign",), ("analyze", "--json"), ("run",))
INPUTS = ("configs", "experiments", "data", "notebooks")  # what tests break and the fixture restores


# ------------------------------------------------------------------------------------------ helpers


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: file -> sha256 of its bytes, symlink -> its target, folder -> 'dir'."""
    out: dict[str, str] = {}
    if not folder.exists():
        return out
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cli_main(*args: str) -> tuple[int, str, str]:
    """``labkit ARGS`` in this process: (exit code, stdout, stderr). An escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def build_data(root: Path, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(20260701)
    ids = [f"CU-{5000 + i}-R" for i in range(n)]
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "email": [f"rel.test.{i}@example.net" for i in range(n)],
            "twitter_handle": [f"@reltest{i:x}q" for i in range(n)],
            "has_twitter": rng.random(n) < 0.9,
            "segment": rng.choice(["consumer", "smb"], n),
        }
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    customers.to_parquet(root / "data" / "customers.parquet", index=False)
    pd.DataFrame(
        {
            "customer_id": ids,
            "churned": (rng.random(n) < 0.2).astype(int),
            "spend": rng.gamma(2.0, 10.0, n).round(2),
            "const": 1.0,
            "tickets": rng.poisson(2, n),
            "zero": 0,
        }
    ).to_csv(root / "data" / "outcomes.csv", index=False)
    k = rng.poisson(2.0, n)
    who = np.repeat(np.arange(n), k)
    seconds = rng.integers(-30 * 86_400, 30 * 86_400, who.size)
    pd.DataFrame(
        {
            "customer_id": np.asarray(ids)[who],
            "ts": (START + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us]"),
            "event_type": rng.choice(["reply", "like"], who.size),
        }
    ).to_parquet(root / "data" / "events.parquet", index=False)
    return customers


def cli_env() -> dict[str, str]:
    drop = {"LABKIT_LAB", "LABKIT_TRACKING_URI", "COLUMNS", "LINES"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"MLFLOW_DISABLE_TELEMETRY": "true", "LABKIT_ID_KEY": KEY}


def build_lab(root: Path) -> Path:
    """The module's lab: data, notebook, pilot ``p`` assigned and run once (a real store with one run)."""
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "lab.yaml").write_text(LAB_YAML)
    (root / "experiments").mkdir()
    (root / "experiments" / "p.yaml").write_text(VALID)
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "pilot_analysis.ipynb", root / "notebooks" / "pilot_analysis.ipynb")
    build_data(root)
    for command in (["assign", "p"], ["run", "p"]):
        code, out, err = cli_in(root, *command)
        assert code == 0, out + err
    return root


def cli_in(root: Path, *args: str) -> tuple[int, str, str]:
    """``labkit ARGS`` run in ``root`` with a user's environment (``cli_env``), in this process: the same
    commands as a subprocess would run, without its ~2 CPU-s of imports (the kernel of a run is still its
    own process)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name in ("LABKIT_LAB", "LABKIT_TRACKING_URI", "COLUMNS", "LINES"):
            patch.delenv(name, raising=False)
        for name, value in cli_env().items():
            patch.setenv(name, value)
        return cli_main(*args)


class HostileLab:
    """The module's lab, with ways to break its inputs and to check that nothing was written."""

    def __init__(self, root: Path):
        self.root = root

    def write(self, relative: str, text: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def pilot(self, text: str | bytes, name: str = "p") -> str:
        self.write(f"experiments/{name}.yaml", text)
        return f"experiments/{name}.yaml"

    def state(self) -> tuple[dict, list[str]]:
        """results/ byte for byte, and the names in the folder around the lab."""
        return tree(self.root / "results"), sorted(p.name for p in self.root.parent.iterdir())

    def refused(
        self, target: str, expected: list[str], commands=COMMANDS, validate: str | None = None
    ) -> None:
        """Every command on ``target`` (``validate`` on ``validate`` when given): exit 1, exactly ``expected``
        on stderr, nothing on stdout, nothing written."""
        before = self.state()
        for command in commands:
            on = validate if command[0] == "validate" and validate else target
            code, out, err = cli_main(command[0], on, *command[1:])
            lines = err.splitlines()
            where = f"labkit {' '.join(command)} {on}"
            assert "Traceback" not in err, where
            assert code == 1, (where, err)
            assert out == "", (where, out)
            if command[0] == "validate":
                assert lines[-1] == f"{len(expected)} problem(s) in 1 file(s)", (where, err)
                lines = lines[:-1]
            assert lines == expected, where
        assert self.state() == before


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_lab(tmp_path_factory.mktemp("hostile").resolve() / "lab")


@pytest.fixture
def lab(built, monkeypatch) -> HostileLab:
    """The lab, with its inputs put back after the test; the cwd is its root (messages show relative paths)."""
    saved = {name: tree(built / name) for name in INPUTS}
    backup = built.parent / ".inputs-backup"
    if not backup.exists():
        for name in INPUTS:
            shutil.copytree(built / name, backup / name, symlinks=True)
    monkeypatch.chdir(built)
    monkeypatch.setenv("LABKIT_ID_KEY", KEY)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("LABKIT_LAB", raising=False)
    monkeypatch.delenv("LABKIT_TRACKING_URI", raising=False)
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    yield HostileLab(built)
    for name in INPUTS:
        if tree(built / name) != saved[name]:
            shutil.rmtree(built / name)
            shutil.copytree(backup / name, built / name, symlinks=True)
    for extra in set(os.listdir(built)) - {*INPUTS, "results"}:
        target = built / extra
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()


def replaced(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_the_valid_pilot_passes_every_command(lab):
    """The baseline the other tests break: the same commands succeed on the pilot as written."""
    code, out, err = cli_main("validate", P)
    assert code == 0 and out == "ok: 1 file(s) valid\n", err
    code, out, err = cli_main("analyze", P, "--json")
    assert code == 0, err
    assert json.loads(out)["pilot"] == "p"


# ----------------------------------------------------------------------------- 1-8: strict YAML


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "title: Reply fast",
            "title: [Reply fast",
            "3:9: syntax: expected ',' or ']', but got ':' (while parsing a flow sequence started at line 2)",
        ),
        (
            "  id_column: customer_id",
            " id_column: customer_id",
            "14:2: syntax: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block mapping started at line 1)",
        ),
        (
            "  id_column: customer_id",
            "\tid_column: customer_id",
            "14:1: syntax: found a tab character; indent with spaces (YAML does not allow tabs here)",
        ),
    ],
    ids=["unclosed-bracket", "bad-indent", "tab"],
)
def test_yaml_syntax_errors_are_one_line_at_their_mark(lab, old, new, message):
    lab.refused(lab.pilot(replaced(old, new)), [f"{P}:{message}"])


def test_duplicate_keys_top_level_and_nested(lab):
    text = replaced("title: Reply fast", "title: Reply fast\ntitle: Reply slow")
    text = replaced("arms: {control: 0.5, fast: 0.5}", "arms: {control: 0.5,\n    control: 0.5}", text)
    lab.refused(
        lab.pilot(text),
        [
            f"{P}:3: duplicate key 'title' (first at line 2)",
            f"{P}:20: cohort.arms: duplicate key 'control' (first at line 19)",
        ],
    )


def test_alias_bomb_is_refused_fast_and_small_by_the_cli(lab):
    bomb = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
    )  # 477 bytes; 9**9 "lol"s once expanded
    assert len(bomb.encode()) < 500
    target = lab.pilot(bomb)
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for command in COMMANDS:
        tracemalloc.start()
        began = time.perf_counter()
        try:
            code, out, err = cli_main(command[0], target, *command[1:])
            seconds = time.perf_counter() - began
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert code == 1 and out == "" and "Traceback" not in err
        assert err.splitlines()[0] == f"{P}:1: a: anchors/aliases not allowed ('&a'); write the value out"
        if command[0] != "run":  # `run` imports papermill (seconds) before it reads the pilot
            assert seconds < 1.0, (command, seconds)
        assert peak < 50 * 1024 * 1024, (command, peak)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb < 50 * 1024


def test_a_50_mb_pilot_is_refused_on_its_size(lab):
    path = lab.root / P
    with open(path, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    began = time.perf_counter()
    lab.refused(
        P, [f"{P}: the file is 52,428,800 bytes; the limit is 1,000,000 bytes"], commands=COMMANDS[:4]
    )
    assert time.perf_counter() - began < 4 * 1.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"title: R\xe9ply fast", "2:9: not valid UTF-8: byte 0xe9; save the file as UTF-8 text"),
        (b"title: Reply\x00fast", "2:13: not valid UTF-8: NUL byte 0x00; save the file as UTF-8 text"),
    ],
    ids=["latin-1-byte", "nul"],
)
def test_bytes_that_are_not_utf8_are_refused_at_line_and_column(lab, raw, message):
    text = VALID.encode().replace(b"title: Reply fast", raw, 1)
    lab.refused(lab.pilot(text), [f"{P}:{message}"])


def test_a_utf8_bom_is_accepted(lab):
    lab.pilot(b"\xef\xbb\xbf" + VALID.encode())
    code, out, err = cli_main("validate", P)
    assert (code, out, err) == (0, "ok: 1 file(s) valid\n", "")


def test_yaml11_coercions_one_error_per_field(lab):
    text = replaced("id: p", "id: 2026-01-01")
    text = replaced("channel: twitter", "channel: no", text)
    text = replaced("title: Reply fast", "title: Reply fast\non: true", text)
    text = replaced("max_size: 2000", "max_size: 1e3", text)
    text = replaced("  start: 2026-11-01", "  start: 2026-11-01\n  salt: 0123", text)
    lab.refused(
        lab.pilot(text),
        [
            f"{P}:1: id: '2026-01-01' is read as a date by YAML 1.1; quote it if it is text",
            f"{P}:3: key 'on' is read as true by YAML 1.1; quote it ('on')",
            f"{P}:5: channel: 'no' is read as false by YAML 1.1; quote it ('no') or write true/false",
            f"{P}:18: cohort.max_size: '1e3' is text in YAML 1.1 but 1000.0 in YAML 1.2; "
            "write 1000 or 1000.0, or quote it ('1e3')",
            f"{P}:22: cohort.salt: '0123' is octal 83 in YAML 1.1 but 123 in YAML 1.2; quote it ('0123') or write 123",
        ],
    )


def test_tags_are_refused_and_never_built(lab, tmp_path):
    canary = tmp_path / "pwned"
    text = replaced("title: Reply fast", "title: !!binary UmVwbHkgZmFzdA==")
    text = replaced("stratify_by", "stratify_by", text) if "stratify_by" in text else text
    text = replaced(
        "owner: lab@example.com", f'owner: !!python/object/apply:os.system ["touch {canary}"]', text
    )
    text = replaced("  where:", "  where: !!set {a, b}\n  xwhere:", text)
    text = replaced("metrics:\n", "metrics: !!omap\n", text)
    lab.refused(
        lab.pilot(text),
        [
            f"{P}:2: title: tag '!!binary' not allowed; use plain values",
            f"{P}:6: owner: tag '!!python/object/apply:os.system' not allowed; use plain values",
            f"{P}:15: cohort.where: tag '!!set' not allowed; use plain values",
            # reported in the same pass as the tags since issue 15 (validation reports everything at once)
            f"{P}:16: cohort.xwhere: unknown field 'xwhere'; did you mean 'where'? allowed: source, id_column, "
            "where, max_size, arms, control, stratify_by, salt, start, assignment, unit_column, max_clusters, saturation",
            f"{P}:22: metrics: tag '!!omap' not allowed; use plain values",
        ],
    )
    assert not canary.exists()


def test_every_shape_and_reference_problem_in_one_pass_sorted(lab):
    text = replaced("hypothesis:", "hypotesis:")
    text = replaced(
        '  where:\n    - {column: has_twitter, op: "==", value: true}\n',
        "  where: {column: has_twitter}\n",
        text,
    )
    text = replaced("arms: {control: 0.5, fast: 0.5}", "arms: {control: 0.7, fast: -0.2, slow: 0.3}", text)
    text = replaced("control: control", "control: ctl", text)
    text = replaced("    column: churned\n", "    column: [churned]\n", text)
    text = replaced(BUDGET, "budget: [1000, 50]\n", text)
    text += "guardrails:\n  - {metric: unsub, direction: increase, max_harm: {absolute: 0.01}}\n"
    lab.refused(
        lab.pilot(text),
        [
            f"{P}:1: hypothesis: required field is missing",
            f"{P}:7: hypotesis: unknown field 'hypotesis'; did you mean 'hypothesis'? allowed: id, title, "
            "function, channel, stage, owner, hypothesis, cohort, metrics, guardrails, analysis, budget, notebook",
            f"{P}:15: cohort.where: expected a list, got a mapping",
            f"{P}:17: cohort.arms: weights sum to 0.8; fractions must sum to 1 (within 0.001), or give ratios "
            "with a weight of at least 1, e.g. {control: 1, a: 1, b: 1}, which are normalised",
            f"{P}:17: cohort.arms.fast: weight -0.2 must be > 0",
            f"{P}:18: cohort.control: 'ctl' is not an arm; did you mean 'control'? arms: control, fast, slow",
            f"{P}:24: metrics.0.column: expected text, got a list",
            f"{P}:32: budget: expected a mapping, got a list",
            f"{P}:34: guardrails.0.metric: unknown metric 'unsub'; defined: churned, replies",
        ],
    )


# ------------------------------------------------------------------------------ 9: path traversal


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "id: p",
            "id: ../../x",
            "1: id: '../../x' is not a slug; use lowercase letters, digits and single dashes",
        ),
        (
            "id: p",
            "id: /etc/x",
            "1: id: '/etc/x' is not a slug; use lowercase letters, digits and single dashes",
        ),
        (
            BUDGET,
            BUDGET + "notebook: ../../../tmp/evil.ipynb\n",
            "34: notebook: '../../../tmp/evil.ipynb' lies outside the lab; notebooks must be inside {root}",
        ),
        (
            BUDGET,
            BUDGET + "notebook: /tmp/evil.ipynb\n",
            "34: notebook: '/tmp/evil.ipynb' lies outside the lab; notebooks must be inside {root}",
        ),
        (
            BUDGET,
            BUDGET + "notebook: /etc/passwd\n",
            "34: notebook: '/etc/passwd' is not a notebook; give a .ipynb path inside the lab",
        ),
    ],
    ids=["id-dotdot", "id-absolute", "notebook-dotdot", "notebook-absolute", "notebook-not-ipynb"],
)
def test_hostile_pilot_ids_and_notebook_paths_are_refused(lab, old, new, message):
    lab.refused(lab.pilot(replaced(old, new)), [f"{P}:{message.format(root=lab.root)}"])


def test_a_notebook_symlinked_out_of_the_lab_is_refused(lab):
    outside = lab.root.parent / "outside.ipynb"
    shutil.copy(lab.root / "notebooks" / "pilot_analysis.ipynb", outside)
    try:
        (lab.root / "notebooks" / "link.ipynb").symlink_to(outside)
        target = lab.pilot(VALID + "notebook: notebooks/link.ipynb\n")
        message = f"{P}:34: notebook: 'notebooks/link.ipynb' lies outside the lab; notebooks must be inside {lab.root}"
        lab.refused(target, [message])
    finally:
        outside.unlink()


OUTSIDE = "lies outside the lab; data files must be inside the lab ({root}); a lab may name an absolute data_root folder for data kept elsewhere"


@pytest.mark.parametrize(
    ("path", "link"),
    [
        ("../../../etc/passwd", None),
        ("/etc/passwd", None),
        ("data/link.csv", "/etc/passwd"),
        ("data/up", ".."),
    ],
    ids=["dotdot", "absolute", "symlink-file", "symlink-folder"],
)
def test_data_sources_outside_the_lab_are_refused_by_validate(lab, path, link):
    if link is not None:
        (lab.root / path).symlink_to(link)
    source = path if link != ".." else f"{path}/../outcomes.csv"
    lab.write("configs/lab.yaml", replaced("path: data/outcomes.csv", f"path: {source}", LAB_YAML))
    message = f"configs/lab.yaml:7: sources.outcomes.path: '{source}' {OUTSIDE.format(root=lab.root)}"
    lab.refused("p", [message], validate="configs/lab.yaml")


def test_a_data_root_admits_its_folder_and_nothing_beside_it(lab):
    crm = lab.root.parent / "crm"
    beside = lab.root.parent / "crm-evil"  # shares the data root's name as a prefix
    for folder in (crm, beside):
        folder.mkdir()
        shutil.copy(lab.root / "data" / "outcomes.csv", folder / "outcomes.csv")
    try:
        text = (
            replaced("path: data/outcomes.csv", f"path: {crm}/outcomes.csv", LAB_YAML) + f"data_root: {crm}\n"
        )
        lab.write("configs/lab.yaml", text)
        code, out, err = cli_main("analyze", "p", "--json")
        assert code == 0 and json.loads(out)["pilot"] == "p", err
        lab.write("configs/lab.yaml", text.replace(f"{crm}/outcomes.csv", f"{beside}/outcomes.csv"))
        allowed = f"the lab ({lab.root}) or data_root ({crm})"
        message = f"configs/lab.yaml:7: sources.outcomes.path: '{beside}/outcomes.csv' lies outside the lab; data files must be inside {allowed}"
        lab.refused("p", [message], validate="configs/lab.yaml")
    finally:
        shutil.rmtree(crm)
        shutil.rmtree(beside)


# ----------------------------------------------------------------------------- 10: metacharacters


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "{column: has_twitter,",
            '{column: "x; DROP TABLE customers;--",',
            "16: cohort.where.0.column: 'x; DROP TABLE customers;--' is not a plain column name "
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            "{column: has_twitter,",
            '{column: "has\\ntwitter",',
            "16: cohort.where.0.column: 'has\\ntwitter' is not a plain column name "
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            "id_column: customer_id",
            'id_column: "customer_id\\u202e\\0"',
            "14: cohort.id_column: 'customer_id\\u202e\\x00' is not a plain column name "
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            "arms: {control: 0.5, fast: 0.5}",
            "arms: {control: 0.5, \"fast'; $(touch /tmp/pwn)\": 0.5}",
            "18: cohort.arms.fast'; $(touch /tmp/pwn): arm name 'fast'; $(touch /tmp/pwn)' "
            "must be lowercase letters, digits and _",
        ),
        (
            "control: control",
            'control: "ctl\\n\\u202eevil"',
            "19: cohort.control: 'ctl\\n\\u202eevil' is not an arm; arms: control, fast",
        ),
        (
            "  - name: replies",
            '  - name: "replies\\"); DROP TABLE x;--"',
            "26: metrics.1.name: 'replies\"); DROP TABLE x;--' must be lowercase letters, digits and _ "
            "(starting with a letter)",
        ),
        ("title: Reply fast", 'title: "Reply \\u202efast"', "2: title: contains the control character U+202E; plain text only"),
        ("title: Reply fast", 'title: "Reply\\0fast"', "2: title: contains the control character U+0000; plain text only"),
        ("channel: twitter", 'channel: "twit\\nter"', "4: channel: unknown channel 'twit\\nter'; did you mean 'twitter'? allowed: twitter, linkedin, community, email"),
        ("title: Reply fast", 'title: Reply fast\n"a\\nb": 1', "3: a\\nb: unknown field 'a\\nb' allowed: id, title, function, channel, stage, owner, hypothesis, cohort, metrics, guardrails, analysis, budget, notebook"),
    ],
    ids=["column-sql", "column-newline", "column-rlo-nul", "arm-shell", "control-rlo", "metric-sql", "title-rlo",
         "title-nul", "channel-newline", "key-newline"],
)  # fmt: skip
def test_metacharacters_in_names_are_refused_on_one_line(lab, old, new, message):
    """Names that reach SQL, file names or notebooks are slugs or identifiers; a refused value is shown
    escaped, so a newline or a right-to-left mark cannot split or reorder the message."""
    lab.refused(lab.pilot(replaced(old, new)), [f"{P}:{message}"])


HOSTILE_VALUES = [
    "'; DROP TABLE customers;--",
    "$(touch {canary})",
    "`touch {canary}`",
    "a\nb",
    "\u202eevil\u202c",
    'back\\slash "quote"',
]


def hostile_pilot(values: list[str], pid: str = "h") -> str:
    listed = ", ".join(json.dumps(v) for v in values)
    text = replaced(
        '    - {column: has_twitter, op: "==", value: true}',
        f"    - {{column: segment, op: in, value: [{listed}]}}",
    )
    return text.replace("id: p\n", f"id: {pid}\n", 1)


def test_hostile_filter_values_are_literals_through_assign(lab, tmp_path):
    """Where values reach the engine as literals: each matches exactly the customers who hold that text."""
    canary = tmp_path / "pwned"
    values = [v.format(canary=canary) for v in HOSTILE_VALUES]
    customers = pd.read_parquet(lab.root / "data" / "customers.parquet")
    customers.loc[: 2 * len(values) - 1, "segment"] = values * 2  # two customers hold each hostile text
    customers.to_parquet(lab.root / "data" / "customers.parquet", index=False)
    data_before = tree(lab.root / "data")
    lab.pilot(hostile_pilot([*values, "smb"]), "h")
    code, out, err = cli_main("assign", "h")
    assert code == 0, err
    drawn = pd.read_parquet(lab.root / "results" / "h" / "assignment.parquet")
    wanted = set(customers.loc[customers["segment"].isin([*values, "smb"]), "customer_id"])
    assert set(drawn["customer_id"]) == wanted
    assert len(wanted) == customers["segment"].eq("smb").sum() + 2 * len(values)
    assert not canary.exists()
    assert tree(lab.root / "data") == data_before
    shutil.rmtree(lab.root / "results" / "h")


def test_a_nul_in_a_filter_value_is_refused(lab):
    lab.refused(
        lab.pilot(hostile_pilot(["a\x00b"], pid="p")),
        [f"{P}:16: cohort.where.0.value: values must not contain NUL characters"],
    )


PG_SOURCE = "  crm: {format: postgres, url_env: CRM_URL, table: customers}\n"
LAB_PWN = "/tmp/labkit-lab-canary"


def lab_with(old: str, new: str) -> str:
    """LAB_YAML with a PostgreSQL source on line 6 (the file sources move to lines 7-9), one value replaced."""
    return replaced(old, new, LAB_YAML.replace("sources:\n", "sources:\n" + PG_SOURCE))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  customers: {format: parquet", "  \"customers; DROP TABLE customers;--\": {format: parquet",
         "7: sources.customers; DROP TABLE customers;--: source name 'customers; DROP TABLE customers;--' must be lowercase letters, digits and _ (starting with a letter)"),
        ("  customers: {format: parquet", "  \"customers\\n\": {format: parquet",
         "7: sources.customers\\n: source name 'customers\\n' must be lowercase letters, digits and _ (starting with a letter)"),
        ("  customers: {format: parquet", "  \"cust\\u202eomers\": {format: parquet",
         "7: sources.cust\\u202eomers: source name 'cust\\u202eomers' must be lowercase letters, digits and _ (starting with a letter)"),
        ("table: customers}", "table: \"customers\\\"; DROP TABLE customers;--\"}",
         "6: sources.crm.table: 'customers\"; DROP TABLE customers;--' is not a plain identifier (letters, digits, _)"),
        ("table: customers}", "table: \"customers\\n\"}",
         "6: sources.crm.table: 'customers\\n' is not a plain identifier (letters, digits, _)"),
        ("table: customers}", "table: \"cust\\0omers\"}",
         "6: sources.crm.table: 'cust\\x00omers' is not a plain identifier (letters, digits, _)"),
        ("table: customers}", "table: \"$(touch " + LAB_PWN + ")\"}",
         "6: sources.crm.table: '$(touch " + LAB_PWN + ")' is not a plain identifier (letters, digits, _)"),
        ("timestamp: ts}", "timestamp: \"ts'); DROP TABLE events;--\"}",
         "9: sources.events.timestamp: 'ts'); DROP TABLE events;--' is not a plain identifier (letters, digits, _)"),
        ("timestamp: ts}", "timestamp: \"ts\\n\"}",
         "9: sources.events.timestamp: 'ts\\n' is not a plain identifier (letters, digits, _)"),
        ("timestamp: ts}", "timestamp: \"t\\u202es\"}",
         "9: sources.events.timestamp: 't\\u202es' is not a plain identifier (letters, digits, _)"),
        ("url_env: CRM_URL,", "url_env: \"CRM_URL$(touch " + LAB_PWN + ")\",",
         "6: sources.crm.url_env: 'CRM_URL$(touch " + LAB_PWN + ")' is not an environment variable name"),
        ("url_env: CRM_URL,", "url_env: \"CRM_URL\\n\",",
         "6: sources.crm.url_env: 'CRM_URL\\n' is not an environment variable name"),
        ("url_env: CRM_URL,", "url_env: \"CRM_URL\\0\",",
         "6: sources.crm.url_env: 'CRM_URL\\x00' is not an environment variable name"),
        ("path: data/outcomes.csv", "path: \"data/out\\0comes.csv\"",
         "8: sources.outcomes.path: contains the control character U+0000; plain text only"),
        ("path: data/outcomes.csv", "path: \"data/\\u202evsc.csv\"",
         "8: sources.outcomes.path: contains the control character U+202E; plain text only"),
        ("lab: tiny-lab", "lab: \"tiny\\nlab\"", "1: lab: contains a line break; one line of plain text only"),
        ("mlflow_experiment: tiny-pilots", "mlflow_experiment: \"tiny-pilots\\u202e\"",
         "3: mlflow_experiment: contains the control character U+202E; plain text only"),
        ("currency: USD", "currency: \"USD\\n\"", "4: currency: contains a line break; one line of plain text only"),
    ],
    ids=["source-sql", "source-trailing-newline", "source-rlo", "table-sql", "table-trailing-newline", "table-nul",
         "table-shell", "timestamp-sql", "timestamp-trailing-newline", "timestamp-rlo", "url-env-shell",
         "url-env-trailing-newline", "url-env-nul", "path-nul", "path-rlo", "lab-newline", "experiment-rlo",
         "currency-newline"],
)  # fmt: skip
def test_hostile_values_in_the_lab_file_are_one_line_each(lab, old, new, message):
    """Case 10 for the lab file: source names, a PostgreSQL table, an event timestamp, url_env, paths and the
    lab's labels refuse quotes, `;`, `$(...)`, line breaks (a final one too: `$` matches before it), NUL
    and right-to-left marks; every command stops at the line, shown escaped, and nothing runs or is written."""
    lab.write("configs/lab.yaml", lab_with(old, new))
    lab.refused("p", [f"configs/lab.yaml:{message}"], validate="configs/lab.yaml")
    assert not os.path.exists(LAB_PWN)


def test_every_hostile_lab_value_is_reported_in_one_pass(lab):
    text = lab_with("table: customers}", 'table: "c;--"}').replace("timestamp: ts}", 'timestamp: "ts\\n"}')
    lab.write("configs/lab.yaml", text.replace("lab: tiny-lab", 'lab: "tiny\\0lab"'))
    lab.refused(
        "p",
        [
            "configs/lab.yaml:1: lab: contains the control character U+0000; plain text only",
            "configs/lab.yaml:6: sources.crm.table: 'c;--' is not a plain identifier (letters, digits, _)",
            "configs/lab.yaml:9: sources.events.timestamp: 'ts\\n' is not a plain identifier (letters, digits, _)",
        ],
        validate="configs/lab.yaml",
    )


def test_hostile_free_text_in_the_lab_file_is_a_literal_to_the_store(lab):
    """Labels may hold quotes, `;` and `$(...)` (they are text): the experiment name reaches the sqlite store
    as a bound parameter, so an always-true `OR` finds no experiment, the lab name comes back as written,
    and the store is untouched."""
    store = lab.root / "results" / "mlflow.db"
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    name = f"x'; DROP TABLE runs;-- $(touch {LAB_PWN})"
    text = replaced("lab: tiny-lab", f"lab: {json.dumps(name)}", LAB_YAML)
    injected = replaced(
        "mlflow_experiment: tiny-pilots", "mlflow_experiment: \"tiny-pilots' OR '1'='1\"", text
    )
    lab.write("configs/lab.yaml", injected)
    code, out, err = cli_main("validate", "configs/lab.yaml")
    assert code == 0, err
    code, out, err = cli_main("compare", "--format", "json")
    assert code == 1 and out == "" and "Traceback" not in err, err
    assert err.startswith("no pilot runs in MLflow experiment 'tiny-pilots' OR '1'='1'"), err
    lab.write("configs/lab.yaml", text)
    code, out, err = cli_main("compare", "--format", "json")
    assert code == 0, err  # the real experiment is still there, read by its exact name
    assert json.loads(out)["lab"] == name
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
    assert not os.path.exists(LAB_PWN)


# --------------------------------------------------------------------------- 11: broken notebooks


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("these are notes, not a notebook\n", "not a notebook: invalid JSON"),
        ('{"cells": [', "not a notebook: invalid JSON"),
        (
            '{"cells": 5, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
            "not a valid nbformat v4 notebook",
        ),
        ("KERNEL", "kernel 'no-such-kernel' is not installed; installed kernels:"),
    ],
    ids=["plain-text", "invalid-json", "nbformat-invalid", "unknown-kernel"],
)
def test_broken_notebooks_are_refused_before_any_run(lab, content, message):
    if content == "KERNEL":
        nb = json.loads((lab.root / "notebooks" / "pilot_analysis.ipynb").read_text())
        nb["metadata"]["kernelspec"]["name"] = "no-such-kernel"
        content = json.dumps(nb)
        lab.write("configs/lab.yaml", LAB_YAML + "runner: {kernel: no-such-kernel}\n")
    lab.write("notebooks/bad.ipynb", content)
    lab.pilot(VALID + "notebook: notebooks/bad.ipynb\n")
    before = lab.state()
    code, out, err = cli_main("run", "p")
    assert code == 1 and out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and message in err, err
    assert err.startswith(f"p: {lab.root}/notebooks/bad.ipynb: ") or err.startswith(
        "p: notebooks/bad.ipynb: "
    ), err
    assert lab.state() == before


# ------------------------------------------------------------------------------- 12-14: bad data


def outcomes_with(lab, **columns) -> None:
    """Drop a column (None), replace it (a list), or put one text value on an assigned customer's row."""
    frame = pd.read_csv(lab.root / "data" / "outcomes.csv")
    assigned = pd.read_parquet(lab.root / "results" / "p" / "assignment.parquet")["customer_id"].iloc[0]
    for name, values in columns.items():
        if values is None:
            frame = frame.drop(columns=[name])
        elif isinstance(values, str):
            frame[name] = frame[name].astype(float).astype(str)
            frame.loc[frame["customer_id"] == assigned, name] = values
        else:
            frame[name] = values
    frame.to_csv(lab.root / "data" / "outcomes.csv", index=False)


BAD_DATA = {
    "missing-column": (
        {"churned": None},
        "source 'outcomes', column 'churned': no such column; columns: customer_id, spend, const, tickets, zero",
    ),
    "text-in-numeric": (
        {"churned": ["high"] * N},
        "source 'outcomes', column 'churned': type string is not numeric; a metric needs numbers (or true/false)",
    ),
    "nan": (
        {"churned": "NaN"},
        "source 'outcomes', column 'churned': 1 row of assigned customers holds NaN or infinity",
    ),
    # DuckDB's CSV sniffer reads a column holding "inf" as text here: refused all the same, by its type
    "inf": (
        {"churned": "inf"},
        "source 'outcomes', column 'churned': type string is not numeric; a metric needs numbers (or true/false)",
    ),
}


@pytest.mark.parametrize(("change", "message"), list(BAD_DATA.values()), ids=list(BAD_DATA))
def test_bad_outcome_data_names_source_and_column(lab, change, message):
    outcomes_with(lab, **change)
    before = lab.state()
    code, out, err = cli_main("analyze", "p", "--json")
    assert code == 1 and out == "" and "Traceback" not in err, (out, err)
    assert err.splitlines() == [message]
    assert lab.state() == before


def test_bad_outcome_data_is_refused_by_run_before_a_run_exists(lab):
    outcomes_with(lab, churned=None)
    before = lab.state()
    code, out, err = cli_main("run", "p")
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [BAD_DATA["missing-column"][1]]
    assert lab.state() == before


def test_duplicate_customer_ids_are_refused_with_pseudonyms_only(lab):
    customers = pd.read_parquet(lab.root / "data" / "customers.parquet")
    doubled = pd.concat([customers, customers.head(3)], ignore_index=True)
    doubled.to_parquet(lab.root / "data" / "customers.parquet", index=False)
    lab.pilot(VALID.replace("id: p\n", "id: h\n"), "h")
    before = lab.state()
    code, out, err = cli_main("assign", "h")
    assert code == 1 and out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        "source 'customers', column 'customer_id': 3 customer ids appear more than once (6 rows) in source "
        "'customers'; each customer needs exactly one row. examples, as pseudonyms (labkit.privacy.pseudonym): "
    ), err
    assert not any(cid in err for cid in customers["customer_id"]), err
    shown = [pseudonym(cid, KEY.encode()) for cid in customers["customer_id"].head(3)]
    assert any(s in err for s in shown), err
    assert lab.state() == before


def test_an_empty_cohort_is_refused_naming_the_condition(lab):
    lab.pilot(hostile_pilot(["nobody-has-this"]), "h")
    before = lab.state()
    code, out, err = cli_main("assign", "h")
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == [
        "h: no eligible customers: none of the 300 rows of source 'customers' passes all of cohort.where "
        '(alone, where[0] segment in ["nobody-has-this"] keeps 0)'
    ]
    assert lab.state() == before


def strict_json(text: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("metric", "code"),
    [
        ("  - {name: target, type: mean, source: outcomes, column: const}\n", "zero_variance"),
        (
            "  - name: target\n    type: ratio\n    numerator: {source: outcomes, column: tickets}\n"
            "    denominator: {source: outcomes, column: zero}\n",
            "zero_denominator",
        ),
    ],
    ids=["zero-variance", "zero-denominator"],
)
def test_degenerate_primary_metrics_are_invalid_without_nan(lab, metric, code):
    text = replaced("metric: churned", "metric: target").replace(
        "mde: {relative: 0.15}", "mde: {absolute: 1}"
    )
    lab.pilot(replaced("metrics:\n", "metrics:\n" + metric, text))
    before = lab.state()
    status, out, err = cli_main("analyze", "p", "--json")
    assert status == 0 and "Traceback" not in err, err
    data = strict_json(out)
    assert data["decision"] == "invalid" and data["decision_code"] == code
    assert lab.state() == before


def test_one_arm_empty_after_the_cap_is_invalid_without_nan(lab):
    lab.pilot(replaced("max_size: 2000", "max_size: 1").replace("id: p\n", "id: h\n"), "h")
    code, out, err = cli_main("assign", "h")
    assert code == 0 and "Traceback" not in err, err
    status, out, err = cli_main("analyze", "h", "--json")
    assert status == 0 and "Traceback" not in err, err
    data = strict_json(out)
    assert data["decision"] == "invalid" and data["decision_code"], data["decision_code"]
    shutil.rmtree(lab.root / "results" / "h")


# --------------------------------------------------------------------- 17, 20: stability, salt


def test_a_changed_salt_is_refused_by_the_cli(lab):
    lab.pilot(replaced("  start: 2026-11-01", "  start: 2026-11-01\n  salt: another-salt"))
    before = lab.state()
    for command in (("assign", "p"), ("assign", "experiments/p.yaml")):
        code, out, err = cli_main(*command)
        assert code == 1 and out == "" and "Traceback" not in err, (command, err)
        assert len(err.splitlines()) == 1 and "salt" in err, (command, err)
    assert lab.state() == before
    # analyze keeps working on the assignment as drawn, and says that the cohort changed since
    code, out, err = cli_main("analyze", "p", "--json")
    assert code == 0 and "Traceback" not in err, err
    warnings = strict_json(out)["warnings"]
    assert any(
        "cohort changed after the assignment was drawn" in w and "cohort.salt" in w for w in warnings
    ), warnings
    assert lab.state() == before


def latest_run(lab, pilot: str = "p"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{lab.root / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-pilots")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`labkit.pilot` = '{pilot}' and tags.`labkit.latest` = 'true'",
    )
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_reordered_and_appended_rows_keep_the_assignment_and_flag_the_data_end_to_end(lab):
    """Case 17 through the CLI: rows of the cohort source reordered, then new customers appended to it and
    to the outcomes; `assign` keeps the drawn file byte for byte, each change moves the analysis' data
    digest, and the next `labkit run` is tagged data_changed, which `labkit compare` shows."""
    assignment = lab.root / "results" / "p" / "assignment.parquet"
    drawn = assignment.read_bytes()
    first = latest_run(lab)
    assert (
        first.data.tags["labkit.data_changed"] == "false"
    )  # the pilot's first run has nothing to differ from
    recorded = first.data.tags["labkit.data_digest"]

    def digest() -> tuple[str, int]:
        code, out, err = cli_main("analyze", "p", "--json")
        assert code == 0, err
        meta = strict_json(out)["meta"]
        return meta["data_digest"], meta["exposed"]

    unchanged, exposed = digest()
    assert unchanged == recorded  # the digest the run recorded is the one analyze computes

    customers = pd.read_parquet(lab.root / "data" / "customers.parquet")
    customers.iloc[::-1].to_parquet(lab.root / "data" / "customers.parquet", index=False)  # rows reversed
    code, out, err = cli_main("assign", "p")
    assert code == 0 and "Traceback" not in err, err
    assert assignment.read_bytes() == drawn
    reordered, n = digest()
    assert reordered != recorded and n == exposed

    new = pd.DataFrame(
        {
            "customer_id": [f"CU-{9000 + i}-N" for i in range(40)],
            "email": [f"new.{i}@example.net" for i in range(40)],
            "twitter_handle": [f"@new{i}" for i in range(40)],
            "has_twitter": True,  # eligible: only the assignment keeps them out
            "segment": "smb",
        }
    )
    pd.concat([customers.iloc[::-1], new]).to_parquet(lab.root / "data" / "customers.parquet", index=False)
    outcomes = pd.read_csv(lab.root / "data" / "outcomes.csv")
    added = pd.DataFrame({"customer_id": new["customer_id"], "churned": 1, "spend": 1.0, "const": 1.0})
    pd.concat([outcomes, added.assign(tickets=0, zero=0)]).to_csv(
        lab.root / "data" / "outcomes.csv", index=False
    )
    code, out, err = cli_main("assign", "p")
    assert code == 0 and "Traceback" not in err, err
    assert assignment.read_bytes() == drawn
    appended, n = digest()
    assert appended not in (recorded, reordered) and n == exposed  # the same customers are analysed

    code, out, err = cli_in(lab.root, "run", "p")
    assert code == 0, out + err
    assert assignment.read_bytes() == drawn
    second = latest_run(lab)
    assert second.info.run_id != first.info.run_id and second.info.status == "FINISHED"
    tags = second.data.tags
    assert tags["labkit.data_digest"] == appended
    assert tags["labkit.data_changed"] == "true"
    assert tags["labkit.spec_changed"] == "false"  # the pilot file did not change: only the data
    code, out, err = cli_main("compare", "--format", "json")
    assert code == 0, err
    (row,) = [r for r in json.loads(out)["pilots"] if r["pilot"] == "p"]
    assert row["run_id"] == second.info.run_id
    assert row["data_changed"] is True and row["spec_changed"] is False
