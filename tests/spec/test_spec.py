"""Pilot and lab validation: one rule per test, the exact message and line (STYLE.md convention 9)."""

from __future__ import annotations

import json

import pytest

from labkit.errors import SpecErrors
from labkit.lab import load_lab
from labkit.spec import load_pilot

from conftest import LAB_YAML, PILOT_YAML

F = "experiments/p.yaml"


def problems(tiny_lab, text: str) -> list[str]:
    tiny_lab.pilot(text)
    with pytest.raises(SpecErrors) as info:
        load_pilot(F, lab=load_lab(tiny_lab.root))
    return [e.message for e in info.value.errors]


def one_problem(tiny_lab, old: str, new: str) -> str:
    assert old in PILOT_YAML
    found = problems(tiny_lab, PILOT_YAML.replace(old, new, 1))
    assert len(found) == 1, found
    return found[0]


def test_valid_pilot_loads_with_lab_defaults(tiny_lab):
    pilot = load_pilot(tiny_lab.pilot(), lab=load_lab(tiny_lab.root))
    assert pilot.id == "p"
    assert pilot.settings.alpha == 0.05 and pilot.settings.correction == "holm"
    assert pilot.treatments == ["fast"] and pilot.control == "control"
    assert pilot.spec.cohort.start.isoformat() == "2026-11-01"
    assert pilot.salt == "p"


def test_pilot_settings_override_lab_defaults(tiny_lab):
    pilot = load_pilot(
        tiny_lab.pilot(PILOT_YAML + "analysis: {alpha: 0.1, engine: bayesian}\n"), lab=load_lab(tiny_lab.root)
    )
    assert pilot.settings.alpha == 0.1 and pilot.settings.engine == "bayesian" and pilot.settings.power == 0.8


def test_pilot_found_by_id(tiny_lab):
    tiny_lab.pilot()
    assert load_pilot("p", lab=load_lab(tiny_lab.root)).id == "p"


def test_unknown_field_suggests_the_right_one(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML.replace("hypothesis:", "hypotesis:"))
    assert found[0] == f"{F}:1: hypothesis: required field is missing"
    assert found[1].startswith(
        f"{F}:7: hypotesis: unknown field 'hypotesis'; did you mean 'hypothesis'? allowed: id,"
    )


def test_nested_unknown_field(tiny_lab):
    msg = one_problem(tiny_lab, "  max_size: 2000\n", "  max_size: 2000\n  max_sise: 3\n")
    assert msg.startswith(
        f"{F}:18: cohort.max_sise: unknown field 'max_sise'; did you mean 'max_size'? allowed:"
    )


def test_alpha_out_of_range(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML + "analysis: {alpha: 0.6}\n")
    assert found == [f"{F}:33: analysis.alpha: 0.6 (a number) is out of range; it must be <= 0.5"]


def test_power_out_of_range(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML + "analysis: {power: 1.0}\n")
    assert found == [f"{F}:33: analysis.power: 1.0 (a number) is out of range; it must be < 1"]


def test_max_size_must_be_positive(tiny_lab):
    msg = one_problem(tiny_lab, "max_size: 2000", "max_size: 0")
    assert msg == f"{F}:17: cohort.max_size: 0 (a number) is out of range; it must be > 0"


def test_max_size_must_be_a_whole_number(tiny_lab):
    msg = one_problem(tiny_lab, "max_size: 2000", "max_size: 2000.5")
    assert msg == f"{F}:17: cohort.max_size: expected a whole number, got 2000.5 (a number)"


def test_text_where_a_number_belongs(tiny_lab):
    msg = one_problem(tiny_lab, "max_size: 2000", "max_size: lots")
    assert msg == f"{F}:17: cohort.max_size: expected a whole number, got 'lots' (text)"


def test_arms_must_sum_to_one(tiny_lab):
    msg = one_problem(tiny_lab, "arms: {control: 0.5, fast: 0.5}", "arms: {control: 0.5, fast: 0.4}")
    assert msg == (
        f"{F}:18: cohort.arms: weights sum to 0.9; fractions must sum to 1 (within 0.001), or give ratios "
        "with a weight of at least 1, e.g. {control: 1, a: 1, b: 1}, which are normalised"
    )


def test_negative_weight(tiny_lab):
    msg = one_problem(tiny_lab, "arms: {control: 0.5, fast: 0.5}", "arms: {control: 1.5, fast: -0.5}")
    assert msg == f"{F}:18: cohort.arms.fast: weight -0.5 must be > 0"


def test_single_arm_refused(tiny_lab):
    msg = one_problem(tiny_lab, "arms: {control: 0.5, fast: 0.5}", "arms: {control: 1.0}")
    assert msg == f"{F}:18: cohort.arms: a pilot needs at least two arms (a control and a treatment)"


def test_control_must_be_an_arm(tiny_lab):
    msg = one_problem(tiny_lab, "control: control", "control: ctl")
    assert msg == f"{F}:19: cohort.control: 'ctl' is not an arm; did you mean 'control'? arms: control, fast"


def test_hypothesis_metric_must_be_defined(tiny_lab):
    msg = one_problem(tiny_lab, "metric: churned", "metric: churn")
    assert (
        msg
        == f"{F}:9: hypothesis.metric: unknown metric 'churn'; did you mean 'churned'? defined: churned, replies"
    )


def test_guardrail_metric_must_be_defined(tiny_lab):
    text = PILOT_YAML + "guardrails:\n  - {metric: unsub, direction: increase, max_harm: {absolute: 0.01}}\n"
    assert problems(tiny_lab, text) == [
        f"{F}:34: guardrails.0.metric: unknown metric 'unsub'; defined: churned, replies"
    ]


def test_unknown_source(tiny_lab):
    msg = one_problem(tiny_lab, "  source: customers", "  source: crm")
    assert msg == f"{F}:13: cohort.source: unknown source 'crm'; allowed: customers, outcomes, events"


def test_unknown_function(tiny_lab):
    msg = one_problem(tiny_lab, "function: service", "function: legal")
    assert msg == f"{F}:3: function: unknown function 'legal'; allowed: sales, marketing, service, pr"


def test_unknown_channel_suggests(tiny_lab):
    msg = one_problem(tiny_lab, "channel: twitter", "channel: twiter")
    assert (
        msg
        == f"{F}:4: channel: unknown channel 'twiter'; did you mean 'twitter'? allowed: twitter, linkedin, community, email"
    )


def test_unknown_stage(tiny_lab):
    msg = one_problem(tiny_lab, "stage: retention", "stage: winback")
    assert (
        msg == f"{F}:5: stage: unknown stage 'winback'; allowed: acquisition, onboarding, service, retention"
    )


def test_id_must_be_a_slug(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML.replace("id: p", "id: P_1"))
    assert found == [f"{F}:1: id: 'P_1' is not a slug; use lowercase letters, digits and single dashes"]


def test_id_must_equal_file_stem(tiny_lab):
    msg = one_problem(tiny_lab, "id: p", "id: q")
    assert msg == f"{F}:1: id: 'q' must equal the file name 'p'"


def test_mde_given_both_ways(tiny_lab):
    msg = one_problem(tiny_lab, "mde: {relative: 0.15}", "mde: {relative: 0.15, absolute: 0.01}")
    assert msg == f"{F}:11: hypothesis.mde: give the MDE one way: {{relative: x}} or {{absolute: x}}"


def test_mde_missing_both(tiny_lab):
    msg = one_problem(tiny_lab, "mde: {relative: 0.15}", "mde: {}")
    assert msg == f"{F}:11: hypothesis.mde: give the MDE one way: {{relative: x}} or {{absolute: x}}"


def test_ratio_metric_needs_denominator(tiny_lab):
    text = PILOT_YAML + "  - name: tpc\n    type: ratio\n    numerator: {source: outcomes, column: tickets}\n"
    assert problems(tiny_lab, text) == [
        f"{F}:33: metrics.2.denominator: a ratio metric needs numerator and denominator"
    ]


def test_filter_operator_outside_grammar(tiny_lab):
    msg = one_problem(tiny_lab, 'op: "=="', 'op: "LIKE"')
    assert msg == (
        f"{F}:16: cohort.where.0.op: 'LIKE' (text) is not allowed; "
        "allowed: ==, !=, <, <=, >, >=, in, not_in, is_null or not_null"
    )


def test_filter_in_needs_a_list(tiny_lab):
    msg = one_problem(tiny_lab, 'op: "==", value: true', "op: in, value: true")
    assert msg == f"{F}:16: cohort.where.0.value: 'in' needs a non-empty list of values"


def test_filter_column_is_an_identifier_not_sql(tiny_lab):
    msg = one_problem(tiny_lab, "{column: has_twitter,", '{column: "x; DROP TABLE customers;--",')
    assert msg.startswith(
        f"{F}:16: cohort.where.0.column: 'x; DROP TABLE customers;--' is not a plain column name"
    )


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("{column: has_twitter,", '{column: "has_twitter\\n",', "cohort.where.0.column"),
        ("arms: {control: 0.5, fast: 0.5}", 'arms: {control: 0.5, "fast\\n": 0.5}', "cohort.arms"),
    ],
    ids=["column", "arm"],
)
def test_a_final_newline_does_not_pass_for_a_name(tiny_lab, old, new, field):
    """`$` matches before a final newline: names are matched to their very end (RELIABILITY #10)."""
    found = problems(tiny_lab, PILOT_YAML.replace(old, new, 1))
    assert any(f": {field}" in m for m in found), found


def test_list_where_a_mapping_belongs(tiny_lab):
    msg = one_problem(tiny_lab, "mde: {relative: 0.15}", "mde: [0.15]")
    assert msg == f"{F}:11: hypothesis.mde: expected a mapping, got a list"


def test_event_metric_needs_window(tiny_lab):
    msg = one_problem(tiny_lab, "    window_days: 30\n", "")
    assert (
        msg
        == f"{F}:26: metrics.1.window_days: an event metric needs 'window_days', the window length in days"
    )


def test_cuped_needs_an_event_metric(tiny_lab):
    msg = one_problem(tiny_lab, "    column: churned\n", "    column: churned\n    cuped: true\n")
    assert msg.startswith(f"{F}:26: metrics.0.cuped: 'cuped: true' needs an event metric")


def test_missing_must_be_zero_or_exclude(tiny_lab):
    msg = one_problem(tiny_lab, "    column: churned\n", "    column: churned\n    missing: drop\n")
    assert msg == f"{F}:26: metrics.0.missing: 'drop' (text) is not allowed; allowed: zero or exclude"


def test_missing_defaults_follow_design(tiny_lab):
    pilot = load_pilot(tiny_lab.pilot(), lab=load_lab(tiny_lab.root))
    assert pilot.metric("churned").missing is None  # not declared: the default of DESIGN.md
    assert pilot.metric("churned").missing_policy == "zero-if-absent"  # per-customer proportion
    assert pilot.metric("replies").missing_policy == "zero"  # event count: no event is a zero


def test_a_drawn_pilot_needs_max_size(tiny_lab):
    msg = one_problem(tiny_lab, "  max_size: 2000\n", "")
    assert msg == (
        f"{F}:12: cohort.max_size: required field is missing (the exposure cap; optional only with "
        "cohort.assignment)"
    )


IMPORTED = "  start: 2026-11-01\n  assignment: {source: customers, arm_column: variant, arms: %s}\n"


def test_an_imported_value_map_accepts_unquoted_numbers_as_text(tiny_lab):
    text = PILOT_YAML.replace("  start: 2026-11-01\n", IMPORTED % "{0: control, 1.0: fast, true: fast}")
    pilot = load_pilot(tiny_lab.pilot(text), lab=load_lab(tiny_lab.root))
    assert pilot.spec.cohort.assignment.arms == {"0": "control", "1.0": "fast", "true": "fast"}


def test_an_imported_value_map_must_name_arms(tiny_lab):
    msg = one_problem(tiny_lab, "  start: 2026-11-01\n", IMPORTED % "{'0': control, '1': fats}")
    assert (
        msg.startswith(f"{F}:21: cohort.assignment.arms")
        and "'fats' is not an arm; did you mean 'fast'?" in msg
    )


def test_yaml11_boolean_where_text_belongs(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML.replace("channel: twitter", "channel: no"))
    assert len(found) == 1 and found[0].startswith(f"{F}:4")
    assert "channel" in found[0] and "YAML 1.1" in found[0] and "quote" in found[0]


def test_date_where_text_belongs(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML.replace("title: Reply fast", "title: 2026-01-01"))
    assert found == [f"{F}:2: title: '2026-01-01' is read as a date by YAML 1.1; quote it if it is text"]


def test_control_characters_in_text_refused(tiny_lab):
    msg = one_problem(tiny_lab, "title: Reply fast", 'title: "Reply \\u202efast"')
    assert msg == f"{F}:2: title: contains the control character U+202E; plain text only"


def test_not_a_mapping(tiny_lab):
    assert problems(tiny_lab, "- a\n- b\n") == [f"{F}:1: the file must be a mapping of fields; it is a list"]


def test_empty_file(tiny_lab):
    assert problems(tiny_lab, "") == [f"{F}:1: the file must be a mapping of fields; it is empty"]


def test_all_problems_in_one_pass_sorted_by_line(tiny_lab):
    text = (
        PILOT_YAML.replace("function: service", "function: legal")
        .replace("max_size: 2000", "max_size: -1")
        .replace("control: control", "control: ctl")
    )
    found = problems(tiny_lab, text)
    assert [m.split(":")[1] for m in found] == ["3", "17", "19"]


def test_notebook_outside_the_lab_refused(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML + "notebook: ../../../tmp/evil.ipynb\n")
    assert found == [
        f"{F}:33: notebook: '../../../tmp/evil.ipynb' lies outside the lab; notebooks must be inside {tiny_lab.root.resolve()}"
    ]


def test_notebook_must_exist(tiny_lab):
    found = problems(tiny_lab, PILOT_YAML + "notebook: notebooks/missing.ipynb\n")
    assert found == [f"{F}:33: notebook: 'notebooks/missing.ipynb' does not exist"]


# --- the lab file ---------------------------------------------------------------------------------


def lab_problems(tiny_lab, text: str) -> list[str]:
    tiny_lab.write("configs/lab.yaml", text)
    with pytest.raises(SpecErrors) as info:
        load_lab(tiny_lab.root)
    return [e.message for e in info.value.errors]


def test_lab_unknown_source_format_lists_allowed(tiny_lab):
    found = lab_problems(tiny_lab, LAB_YAML.replace("format: csv", "format: xlsx"))
    assert found == [
        "configs/lab.yaml:7: sources.outcomes.format: 'xlsx' (text) is not allowed; "
        "allowed: csv, parquet, postgres or spark"
    ]


def test_lab_postgres_source_needs_url_env(tiny_lab):
    text = LAB_YAML.replace("  events:", "  crm: {format: postgres, table: customers}\n  events:")
    assert lab_problems(tiny_lab, text) == [
        "configs/lab.yaml:8: sources.crm: a postgres source needs 'url_env', the environment variable holding its URL"
    ]


def test_lab_defaults_alpha_range(tiny_lab):
    found = lab_problems(tiny_lab, LAB_YAML.replace("alpha: 0.05", "alpha: 0"))
    assert found == ["configs/lab.yaml:12: defaults.alpha: 0 (a number) is out of range; it must be > 0"]


def test_lab_tracking_uri_resolves_against_root(tiny_lab):
    lab = load_lab(tiny_lab.root)
    assert lab.tracking_uri == f"sqlite:///{tiny_lab.root.resolve()}/results/mlflow.db"


def test_lab_source_outside_root_refused(tiny_lab):
    from labkit.errors import LabkitError

    lab = load_lab(tiny_lab.root)
    object.__setattr__(lab.spec.sources["customers"], "path", "../../etc/passwd")
    with pytest.raises(LabkitError, match="lies outside the lab"):
        lab.source_path("customers")


@pytest.mark.parametrize("value", ["lots", "1GB; SET enable_external_access=true", "0GB", "512"])
def test_lab_duckdb_memory_limit_is_an_amount(tiny_lab, value):
    found = lab_problems(tiny_lab, LAB_YAML + f"duckdb: {{memory_limit: {json.dumps(value)}}}\n")
    assert len(found) == 1 and found[0].startswith("configs/lab.yaml:"), found
    assert f"duckdb.memory_limit: '{value}' is not an amount of memory; give a number and a unit" in found[0]


def test_a_numeric_arm_name_says_how_to_map_a_tools_values(tiny_lab):
    msg = one_problem(tiny_lab, "arms: {control: 0.5, fast: 0.5}", "arms: {control: 0.5, '1': 0.5}")
    assert msg == (
        f"{F}:18: cohort.arms.1: arm name '1' must start with a lowercase letter (then lowercase letters, "
        "digits and _); map an imported arm column's values to arm names with cohort.assignment.arms, e.g. "
        "{'0': control, '1': treatment}"
    )


def test_fields_added_later_leave_the_hashes_of_existing_pilots_as_they_were(tiny_lab):
    """`missing`, `assignment.arms` and `assignment.strata` unset: the hashes of a pilot file written before
    they existed are unchanged (pre-registration and `assign` do not see a change that did not happen)."""
    import hashlib

    pilot = load_pilot(tiny_lab.pilot(), lab=load_lab(tiny_lab.root))
    dump = pilot.spec.model_dump(mode="json")
    for m in dump["metrics"]:
        assert m.pop("missing") is None
    assert dump["hypothesis"].pop("baseline") is None  # hypothesis.baseline, added by issue 15
    for key in ("unit_column", "max_clusters", "saturation"):  # cluster randomisation, added by issue 16
        assert dump["cohort"].pop(key) is None
    assert dump["analysis"].pop("segments") is None  # analysis.segments, added by issue 16

    def sha(obj):
        return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    assert pilot.spec_sha256 == sha(dump)
    assert pilot.cohort_sha256 == sha(dump["cohort"])
    declared = PILOT_YAML.replace("    column: churned\n", "    column: churned\n    missing: exclude\n")
    assert load_pilot(tiny_lab.pilot(declared), lab=load_lab(tiny_lab.root)).spec_sha256 != pilot.spec_sha256
