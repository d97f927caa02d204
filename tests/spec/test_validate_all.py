"""`labkit validate` reports every problem of a file in one pass — YAML-typing problems (`title: no`)
together with the rest — and offers "did you mean" on every enumerated value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import PILOT_YAML

LABKIT = [sys.executable, "-m", "labkit.cli"]


def validate(lab):
    return subprocess.run([*LABKIT, "validate"], cwd=lab.root, capture_output=True, text=True, timeout=120)


def test_a_yaml_typing_problem_does_not_hide_the_others(tiny_lab):
    """Issue 15: `title: no` stopped the pass, hiding three other errors until it was fixed."""
    tiny_lab.pilot(
        PILOT_YAML.replace("title: Reply fast", "title: no")
        .replace("function: service", "function: servce")
        .replace("type: proportion", "type: proprtion")
        .replace("max_size: 2000", "max_size: 0")
    )
    out = validate(tiny_lab)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "experiments/p.yaml:2: title: 'no' is read as false by YAML 1.1; quote it ('no') or write true/false",
        "experiments/p.yaml:3: function: unknown function 'servce'; did you mean 'service'? "
        "allowed: sales, marketing, service, pr",
        "experiments/p.yaml:17: cohort.max_size: 0 (a number) is out of range; it must be > 0",
        "experiments/p.yaml:23: metrics.0.type: 'proprtion' (text) is not allowed; did you mean 'proportion'? "
        "allowed: proportion, mean, ratio or quantile",
        "4 problem(s) in 2 file(s)",
    ]


def test_a_yaml_typing_problem_is_not_reported_twice(tiny_lab):
    """`cuped: yes` is a YAML-typing problem and, read as YAML 1.2 text, not a boolean: one line for it."""
    tiny_lab.pilot(PILOT_YAML.replace("cuped: true", "cuped: yes"))
    out = validate(tiny_lab)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if "cuped" in line]
    assert lines == ["experiments/p.yaml:32: metrics.1.cuped: 'yes' is read as true by YAML 1.1; quote it ('yes') "
                     "or write true/false"]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("type: proportion", "type: Proportion", "metrics.0.type: 'Proportion' (text) is not allowed; did you mean 'proportion'?"),
        ("aggregate: count", "aggregate: cnt", "metrics.1.aggregate: 'cnt' (text) is not allowed; did you mean 'count'?"),
        ('op: "=="', 'op: "="', "cohort.where.0.op: '=' (text) is not allowed; did you mean '=='?"),
        ("direction: decrease", "direction: decrese", "hypothesis.direction: 'decrese' (text) is not allowed; did you mean 'decrease'?"),
        ("control: control", "control: contrl", "cohort.control: 'contrl' is not an arm; did you mean 'control'?"),
        ("stage: retention", "stage: retension", "stage: unknown stage 'retension'; did you mean 'retention'?"),
    ],
)  # fmt: skip
def test_every_enumerated_value_offers_did_you_mean(tiny_lab, old, new, expected):
    tiny_lab.pilot(PILOT_YAML.replace(old, new))
    out = validate(tiny_lab)
    assert out.returncode == 1
    assert expected in out.stderr, out.stderr


def test_a_misspelt_guardrail_metric_offers_did_you_mean(tiny_lab):
    tiny_lab.pilot(
        PILOT_YAML + "guardrails:\n  - {metric: replys, direction: decrease, max_harm: {absolute: 0.1}}\n"
    )
    out = validate(tiny_lab)
    assert "guardrails.0.metric: unknown metric 'replys'; did you mean 'replies'?" in out.stderr, out.stderr
