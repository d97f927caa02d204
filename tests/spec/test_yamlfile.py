"""Strict YAML loading: one rule per test, inline YAML and the exact message (STYLE.md convention 9).

Every test runs twice, once on libyaml's events and once on the pure-Python parser, since the loader
uses the first when PyYAML has it and must say the same either way.
"""

from __future__ import annotations

import math
import resource
import time
import tracemalloc

import pytest

from labkit.errors import SpecErrors
from labkit.yamlfile import MAX_BYTES, YamlDoc, composer, load_yaml, reading, scalars

PARSERS = ["libyaml", "python"] if composer._CParser is not None else ["python"]


@pytest.fixture(params=PARSERS, autouse=True)
def parser(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(composer, "_CParser", None)
    return request.param


def load(tmp_path, text: str | bytes, name: str = "p.yaml") -> YamlDoc:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_yaml(path, display=name)


def problems(tmp_path, text: str | bytes) -> list[str]:
    with pytest.raises(SpecErrors) as info:
        load(tmp_path, text)
    return [e.message for e in info.value.errors]


def problem(tmp_path, text: str | bytes) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------------------------ size


def test_file_over_the_limit_is_refused_from_its_size_without_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was opened")

    monkeypatch.setattr(reading, "open", no_reading, raising=False)
    start = time.perf_counter()
    with pytest.raises(SpecErrors) as info:
        load_yaml(path, display="big.yaml")
    assert time.perf_counter() - start < 1.0
    assert str(info.value) == "big.yaml: the file is 52,428,800 bytes; the limit is 1,000,000 bytes"


def test_text_over_the_limit_is_refused():
    with pytest.raises(
        SpecErrors, match=r"^t\.yaml: the file is 1,000,001 bytes; the limit is 1,000,000 bytes$"
    ):
        load_yaml("t.yaml", text="#" * (MAX_BYTES + 1))


@pytest.mark.parametrize("parser", [PARSERS[0]], indirect=True)
def test_900_kb_file_loads_with_its_lines(tmp_path):
    items = [f"  - name: metric_{i}\n    kind: mean\n    weight: 0.{i % 10}5\n" for i in range(20_000)]
    text = "metrics:\n" + "".join(items)
    text = text[: text.rfind("  - name:", 0, 900_000)]
    assert 890_000 < len(text) <= 900_000
    doc = load(tmp_path, text)
    n = len(doc.data["metrics"])
    assert doc.data["metrics"][-1] == {
        "name": f"metric_{n - 1}",
        "kind": "mean",
        "weight": float(f"0.{(n - 1) % 10}5"),
    }
    assert doc.lines[("metrics", n - 1, "weight")] == 1 + 3 * n


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecErrors, match=r"^gone\.yaml: cannot read the file: No such file or directory$"):
        load_yaml(tmp_path / "gone.yaml", display="gone.yaml")


def test_display_defaults_to_the_path_as_given(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: no\n")
    with pytest.raises(SpecErrors) as info:
        load_yaml(path)
    assert info.value.errors[0].file == str(path)
    assert load_yaml(path, display="shown.yaml", text="a: 1\n").path == "shown.yaml"


# -------------------------------------------------------------------------------------- encoding


def test_utf8_bom_is_accepted_and_stripped(tmp_path):
    doc = load(tmp_path, b"\xef\xbb\xbfid: caf\xc3\xa9\n")
    assert doc.data == {"id": "café"}
    assert doc.lines[("id",)] == 1


def test_invalid_utf8_byte_is_reported_at_its_line_and_column(tmp_path):
    found = problem(tmp_path, b"id: p\ntitle: \xc3\xa9t\xe9\n")
    assert found == "p.yaml:2:10: not valid UTF-8: byte 0xe9; save the file as UTF-8 text"


def test_nul_byte_is_not_valid_utf8(tmp_path):
    assert (
        problem(tmp_path, b"id: p\x00\n")
        == "p.yaml:1:6: not valid UTF-8: NUL byte 0x00; save the file as UTF-8 text"
    )


def test_utf16_file_is_named_as_such(tmp_path):
    found = problem(tmp_path, "id: p\n".encode("utf-16"))
    assert (
        found
        == "p.yaml:1:1: not valid UTF-8: the file is UTF-16 (byte-order mark 0xff 0xfe); save it as UTF-8 text"
    )


def test_control_character_is_refused_at_its_place(tmp_path):
    assert problem(tmp_path, "id: p\ntitle: a\x1b[31m\n") == (
        "p.yaml:2:9: syntax: control character U+001B is not allowed; remove it"
    )


# ---------------------------------------------------------------------------------------- syntax


def test_unclosed_bracket_is_a_syntax_error_at_its_mark(tmp_path):
    assert problem(tmp_path, "id: p\narms: [a, b\n") == (
        "p.yaml:3:1: syntax: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 2)"
    )


def test_bad_indentation_is_a_syntax_error_at_its_mark(tmp_path):
    assert problem(tmp_path, "cohort:\n  source: a\n id_column: b\n") == (
        "p.yaml:3:2: syntax: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping started at line 1)"
    )


def test_tab_indentation_says_to_use_spaces(tmp_path):
    assert problem(tmp_path, "cohort:\n\tsource: a\n") == (
        "p.yaml:2:1: syntax: found a tab character; indent with spaces (YAML does not allow tabs here)"
    )


def test_syntax_error_reports_only_itself(tmp_path):
    assert problem(tmp_path, "a: no\nb: no\nc: [1\n") == (
        "p.yaml:4:1: syntax: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 3)"
    )


def test_second_document_is_refused(tmp_path):
    assert problem(tmp_path, "id: p\n---\nid: q\n") == (
        "p.yaml:2:1: syntax: a second YAML document starts here; a file holds one document"
    )


def test_explicit_single_document_is_fine(tmp_path):
    assert load(tmp_path, "---\nid: p\n...\n").data == {"id": "p"}


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    found = problem(tmp_path, "a: " + "[" * 150 + "]" * 150 + "\n")
    assert found == "p.yaml:1: a" + ".0" * 99 + ": nested more than 100 levels deep; flatten it"


# ------------------------------------------------------------------------------ tags and anchors


@pytest.mark.parametrize(
    "value, tag",
    [
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!set {a, b}", "!!set"),
        ("!!omap [a: 1, b: 2]", "!!omap"),
        ('!!python/object/apply:os.system ["true"]', "!!python/object/apply:os.system"),
        ("!!str 1", "!!str"),
        ("!custom 1", "!custom"),
    ],
)
def test_explicit_tag_is_refused(tmp_path, value, tag):
    found = problem(tmp_path, f"id: p\nparameters:\n  x: {value}\n")
    assert found == f"p.yaml:3: parameters.x: tag '{tag}' not allowed; use plain values"


def test_python_tag_is_never_constructed(tmp_path):
    canary = tmp_path / "canary"
    found = problem(tmp_path, f'x: !!python/object/apply:os.system ["touch {canary}"]\n')
    assert "not allowed; use plain values" in found
    assert not canary.exists()


def test_anchor_is_refused(tmp_path):
    assert problem(tmp_path, "base: &b {alpha: 0.05}\nother: 1\n") == (
        "p.yaml:1: base: anchors/aliases not allowed ('&b'); write the value out"
    )


def test_alias_is_refused(tmp_path):
    assert (
        problem(tmp_path, "id: p\ncopy: *b\n")
        == "p.yaml:2: copy: anchors/aliases not allowed ('*b'); write the value out"
    )


def test_merge_key_is_refused(tmp_path):
    assert problem(tmp_path, "analysis:\n  <<: {alpha: 0.05}\n") == (
        "p.yaml:2: analysis: merge key '<<' not allowed; write the keys out"
    )


def test_alias_bomb_is_refused_fast_and_small(tmp_path):
    bomb = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
    )  # 9**9 = 387,420,489 "lol"s once expanded
    assert len(bomb) < 500
    tracemalloc.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        found = problem(tmp_path, bomb)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert found == "p.yaml:1: a: anchors/aliases not allowed ('&a'); write the value out"
    assert elapsed < 1.0
    assert peak < 50 * 1024 * 1024
    assert rss_growth_kb < 50 * 1024


# -------------------------------------------------------------------------------- duplicate keys


def test_duplicate_top_level_key(tmp_path):
    assert problem(tmp_path, "id: p\ntitle: t\nid: q\n") == "p.yaml:3: duplicate key 'id' (first at line 1)"


def test_duplicate_nested_key(tmp_path):
    assert problem(tmp_path, "cohort:\n  arms:\n    a: .5\n    a: .5\n") == (
        "p.yaml:4: cohort.arms: duplicate key 'a' (first at line 3)"
    )


def test_duplicate_key_in_a_flow_mapping_across_lines(tmp_path):
    assert problem(tmp_path, "cohort:\n  arms: {a: .5,\n         a: .5}\n") == (
        "p.yaml:3: cohort.arms: duplicate key 'a' (first at line 2)"
    )


def test_duplicate_key_inside_a_list_item(tmp_path):
    assert problem(tmp_path, "metrics:\n  - name: a\n  - name: b\n    name: c\n") == (
        "p.yaml:4: metrics.1: duplicate key 'name' (first at line 3)"
    )


def test_quoted_and_plain_spellings_of_a_key_are_duplicates(tmp_path):
    assert problem(tmp_path, "id: p\n'id': q\n") == "p.yaml:2: duplicate key 'id' (first at line 1)"


# ------------------------------------------------------------------------------- scalar typing


@pytest.mark.parametrize(
    "raw, value",
    [
        ("~", None),
        ("null", None),
        ("NULL", None),
        ("", None),
        ("true", True),
        ("False", False),
        ("TRUE", True),
        ("42", 42),
        ("-7", -7),
        ("+3", 3),
        ("0", 0),
        ("0x1F", 31),
        ("1.5", 1.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("1.0e+3", 1000.0),
        ("-2.5E-3", -0.0025),
        (".inf", math.inf),
        ("-.Inf", -math.inf),
        ("twitter", "twitter"),
        ("2 weeks", "2 weeks"),
        ("=", "="),
        ("'no'", "no"),
        ('"0123"', "0123"),
        ("'1e3'", "1e3"),
        ('"true"', "true"),
    ],
)
def test_plain_scalars_follow_yaml_1_2_core(tmp_path, raw, value):
    data = load(tmp_path, f"x: {raw}\n").data["x"]
    assert data == value and type(data) is type(value)


def test_nan_is_returned_as_a_float(tmp_path):
    assert math.isnan(load(tmp_path, "x: .NaN\n").data["x"])


def test_block_scalar_is_text(tmp_path):
    assert load(tmp_path, "x: |\n  yes\n  0123\n").data == {"x": "yes\n0123\n"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("channel: no", "channel: 'no' is read as false by YAML 1.1; quote it ('no') or write true/false"),
        ("channel: Yes", "channel: 'Yes' is read as true by YAML 1.1; quote it ('Yes') or write true/false"),
        ("channel: OFF", "channel: 'OFF' is read as false by YAML 1.1; quote it ('OFF') or write true/false"),
        ("channel: on", "channel: 'on' is read as true by YAML 1.1; quote it ('on') or write true/false"),
        ("channel: y", "channel: 'y' is read as true by YAML 1.1; quote it ('y') or write true/false"),
        ("channel: N", "channel: 'N' is read as false by YAML 1.1; quote it ('N') or write true/false"),
        (
            "salt: 0123",
            "salt: '0123' is octal 83 in YAML 1.1 but 123 in YAML 1.2; quote it ('0123') or write 123",
        ),
        (
            "at: 12:30:00",
            "at: '12:30:00' is base-60 45000 in YAML 1.1 but text in YAML 1.2; quote it ('12:30:00') or write 45000",
        ),
        (
            "max_size: 1e3",
            "max_size: '1e3' is text in YAML 1.1 but 1000.0 in YAML 1.2; write 1000 or 1000.0, or quote it ('1e3')",
        ),
        (
            "mde: 1.5e10",
            "mde: '1.5e10' is text in YAML 1.1 but 15000000000.0 in YAML 1.2; write 1.5e+10, or quote it ('1.5e10')",
        ),
        ("mde: -.5", "mde: '-.5' is text in YAML 1.1 but -0.5 in YAML 1.2; write -0.5, or quote it ('-.5')"),
        (
            "max_size: 1_000",
            "max_size: '1_000' is the number 1000 in YAML 1.1 but text in YAML 1.2; quote it ('1_000') or write 1000",
        ),
        (
            "mask: 0b101",
            "mask: '0b101' is binary 5 in YAML 1.1 but text in YAML 1.2; quote it ('0b101') or write 5",
        ),
        (
            "mask: +0x1F",
            "mask: '+0x1F' is hex 31 in YAML 1.1 but text in YAML 1.2; quote it ('+0x1F') or write 31",
        ),
        ("mode: 0o17", "mode: '0o17' is text in YAML 1.1 but 15 in YAML 1.2; write 15, or quote it ('0o17')"),
        ("week: 08", "week: '08' is text in YAML 1.1 but 8 in YAML 1.2; write 8, or quote it ('08')"),
    ],
)
def test_plain_scalar_yaml_1_1_reads_differently_says_quote_it(tmp_path, line, message):
    assert problem(tmp_path, f"id: p\n{line}\n") == f"p.yaml:2: {message}"


@pytest.mark.parametrize("raw", ["1e3", "1.5e10", "-.5", ".5e3", "1e-5", "+.5", "-1E7", "0o17", "08", "0123"])
def test_suggested_spelling_is_read_alike_by_both_versions(tmp_path, raw):
    message = problem(tmp_path, f"x: {raw}\n")
    suggestion = message.split(" write ")[1].split(",")[0].split(" or ")[0]
    assert load(tmp_path, f"x: {suggestion}\n").data["x"] == scalars.core(raw)


def test_every_scalar_problem_of_the_file_in_one_pass(tmp_path):
    found = problems(tmp_path, "channel: no\ncohort:\n  salt: 0123\n  max_size: 1e3\nmetrics: [a, off]\n")
    assert found == [
        "p.yaml:1: channel: 'no' is read as false by YAML 1.1; quote it ('no') or write true/false",
        "p.yaml:3: cohort.salt: '0123' is octal 83 in YAML 1.1 but 123 in YAML 1.2; quote it ('0123') or write 123",
        "p.yaml:4: cohort.max_size: '1e3' is text in YAML 1.1 but 1000.0 in YAML 1.2; "
        "write 1000 or 1000.0, or quote it ('1e3')",
        "p.yaml:5: metrics.1: 'off' is read as false by YAML 1.1; quote it ('off') or write true/false",
    ]


def test_implicit_dates_are_text_with_their_locations(tmp_path):
    doc = load(
        tmp_path,
        "id: 2026-01-01\ncohort:\n  start: 2026-11-01 10:00:00\nholidays: [2026-12-25]\nquoted: '2026-01-02'\n",
    )
    assert doc.data == {
        "id": "2026-01-01",
        "cohort": {"start": "2026-11-01 10:00:00"},
        "holidays": ["2026-12-25"],
        "quoted": "2026-01-02",
    }
    assert doc.implicit_dates == frozenset({("id",), ("cohort", "start"), ("holidays", 0)})


def test_data_holds_only_plain_python_types(tmp_path):
    doc = load(tmp_path, "a: [1, 2.5, true, ~, x, {b: [c]}]\nd: 2026-01-01\n")

    def walk(value):
        assert type(value) in (dict, list, str, int, float, bool, type(None)), type(value)
        if isinstance(value, dict):
            assert all(type(k) is str for k in value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(doc.data)


# ---------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "key, message",
    [
        ("on", "key 'on' is read as true by YAML 1.1; quote it ('on')"),
        ("yes", "key 'yes' is read as true by YAML 1.1; quote it ('yes')"),
        ("n", "key 'n' is read as false by YAML 1.1; quote it ('n')"),
        ("true", "key 'true' is read as true; quote it ('true')"),
        ("null", "key 'null' is read as null; quote it ('null')"),
        ("~", "key '~' is read as null; quote it ('~')"),
        ("1", "key '1' is read as the number 1; quote it ('1')"),
        ("0.5", "key '0.5' is read as the number 0.5; quote it ('0.5')"),
        ("1_000", "key '1_000' is read as the number 1000 by YAML 1.1; quote it ('1_000')"),
        ("12:30", "key '12:30' is read as base-60 750 by YAML 1.1; quote it ('12:30')"),
        ("2026-01-01", "key '2026-01-01' is read as a date by YAML 1.1; quote it ('2026-01-01')"),
    ],
)
def test_plain_key_that_is_not_text_is_refused(tmp_path, key, message):
    assert problem(tmp_path, f"cohort:\n  arms:\n    {key}: 0.5\n") == f"p.yaml:3: cohort.arms: {message}"


def test_quoted_keys_are_text(tmp_path):
    assert load(tmp_path, "'on': 1\n\"1\": 2\n'2026-01-01': 3\n").data == {"on": 1, "1": 2, "2026-01-01": 3}


@pytest.mark.parametrize("key, kind", [("[a, b]", "a list"), ("{a: 1}", "a mapping")])
def test_collection_key_is_refused(tmp_path, key, kind):
    assert problem(tmp_path, f"id: p\n? {key}\n: 1\n") == f"p.yaml:2: keys must be text; this key is {kind}"


def test_empty_key_is_refused(tmp_path):
    assert problem(tmp_path, "id: p\n?\n: 1\n") == "p.yaml:2: empty key; write a name"


# ------------------------------------------------------------------------------------ the root


def test_root_is_returned_whatever_it_is(tmp_path):
    assert load(tmp_path, "- a\n- b\n").data == ["a", "b"]
    assert load(tmp_path, "just text\n").data == "just text"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_none(tmp_path, text):
    doc = load(tmp_path, text)
    assert doc.data is None and doc.lines == {(): 1} and doc.implicit_dates == frozenset()


# ------------------------------------------------------------------------------------ the lines

LINES_YAML = """\
# a comment
id: p
cohort:
  arms:
    control: 0.5
    fast: 0.5
metrics:
  - name: replies
    kind: count
  -
    name: churned
    kind: proportion
  - {name: cost, kind: mean}
  - [nested,
     list]
"""


def test_lines_of_keys_and_list_items(tmp_path):
    doc = load(tmp_path, LINES_YAML)
    assert doc.lines[()] == 1
    assert doc.lines[("id",)] == 2
    assert doc.lines[("cohort",)] == 3
    assert doc.lines[("cohort", "arms", "fast")] == 6
    assert doc.lines[("metrics", 0)] == 8
    assert doc.lines[("metrics", 0, "kind")] == 9
    assert doc.lines[("metrics", 1)] == 11
    assert doc.lines[("metrics", 1, "name")] == 11
    assert doc.lines[("metrics", 2, "kind")] == 13
    assert doc.lines[("metrics", 3, 1)] == 15


def test_line_of_falls_back_to_the_nearest_existing_ancestor(tmp_path):
    doc = load(tmp_path, LINES_YAML)
    assert doc.line_of(("metrics", 1, "kind")) == 12
    assert doc.line_of(("metrics", 1, "mde")) == 11
    assert doc.line_of(("metrics", 9, "name")) == 7
    assert doc.line_of(("cohort", "arms", "slow", "weight")) == 4
    assert doc.line_of(("hypothesis",)) == 1
    assert doc.line_of(()) == 1
