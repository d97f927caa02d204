"""The tests' one pilot (tests/pilots.py): valid for labkit's own loader, and changed only where asked."""

from __future__ import annotations

import datetime as dt

import yaml

import labkit

from conftest import DROP, PILOT_YAML, pilot_yaml


def test_the_default_pilot_loads_and_validates_in_a_tiny_lab(tiny_lab):
    pilot = labkit.load_pilot(tiny_lab.pilot(pilot_yaml()), lab=labkit.load_lab(tiny_lab.root))
    assert pilot.spec.id == "p" and pilot.spec.hypothesis.metric == "churned"
    assert [m.name for m in pilot.spec.metrics] == ["churned", "replies"]
    assert pilot.arms == {"control": 0.5, "fast": 0.5}


def test_the_text_is_deterministic_and_reads_like_a_written_pilot():
    text = pilot_yaml()
    assert text == PILOT_YAML == pilot_yaml()
    assert text.splitlines()[:2] == ["id: p", "title: Reply fast"]
    assert (
        "  mde: {relative: 0.15}\n" in text and '    - {column: has_twitter, op: "==", value: true}\n' in text
    )


def test_overrides_by_dotted_path_and_drop_change_only_what_they_name():
    base = yaml.safe_load(pilot_yaml())
    changed = yaml.safe_load(
        pilot_yaml(id="x", **{"cohort.max_size": 500, "cohort.where": DROP, "metrics.1": DROP})
    )
    assert changed["id"] == "x" and changed["cohort"]["max_size"] == 500
    assert "where" not in changed["cohort"] and changed["metrics"] == base["metrics"][:1]
    assert changed["cohort"]["start"] == dt.date(2026, 11, 1)
    for key in ("title", "hypothesis"):
        assert changed[key] == base[key]


def test_an_added_key_takes_its_design_md_place():
    text = pilot_yaml(notebook="n.ipynb", budget={"cost": 1, "value_per_unit": 2}, **{"cohort.salt": "s"})
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    assert keys[-3:] == ["metrics", "budget", "notebook"]
    cohort = list(yaml.safe_load(text)["cohort"])
    assert cohort.index("salt") == cohort.index("start") - 1
