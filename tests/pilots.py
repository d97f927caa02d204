"""The one pilot file of the tests: a complete valid pilot, changed by the fields a test cares about.

``pilot_yaml()`` is the pilot of DESIGN.md reduced to what a tiny lab (tests/conftest.py ``LAB_YAML``) can
run; a test names only what it changes, so what it is about stays visible and a new pilot field is added
here once. The text is rendered the way people write pilots (block style, keys in the DESIGN.md order,
small mappings such as ``mde: {relative: 0.15}`` on one line), deterministically, so that a test may also
break one line of it by text (``pilot_yaml().replace(...)``) and find an error at a fixed line.

Tests import it through conftest (``from conftest import DROP, pilot_yaml``), as they import ``LAB_YAML``.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import yaml


class _Drop:
    """The value that removes a key, at an override's path or inside an override's value."""

    def __deepcopy__(self, memo: dict) -> _Drop:
        return self  # one sentinel, found by identity

    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()  # pilot_yaml(**{"hypothesis.baseline": DROP}), or hypothesis={..., "baseline": DROP}

CHURNED = {"name": "churned", "type": "proportion", "source": "outcomes", "column": "churned"}
REPLIES = {
    "name": "replies",
    "type": "mean",
    "source": "events",
    "event": {"column": "event_type", "equals": "reply"},
    "aggregate": "count",
    "window_days": 30,
    "cuped": True,
}
DEFAULT: dict[str, Any] = {
    "id": "p",
    "title": "Reply fast",
    "function": "service",
    "channel": "twitter",
    "stage": "retention",
    "owner": "lab@example.com",
    "hypothesis": {
        "statement": "Fast replies lower churn.",
        "metric": "churned",
        "direction": "decrease",
        "mde": {"relative": 0.15},
    },
    "cohort": {
        "source": "customers",
        "id_column": "customer_id",
        "where": [{"column": "has_twitter", "op": "==", "value": True}],
        "max_size": 2000,
        "arms": {"control": 0.5, "fast": 0.5},
        "control": "control",
        "start": dt.date(2026, 11, 1),
    },
    "metrics": [CHURNED, REPLIES],
}

# DESIGN.md's order of the keys of a pilot and of its sections: a key an override adds takes its place
# there (a key not listed goes last), so the text reads like a pilot a person wrote.
ORDER: dict[str, tuple[str, ...]] = {
    "": ("id", "title", "function", "channel", "stage", "owner", "hypothesis", "cohort", "metrics",
         "guardrails", "analysis", "budget", "notebook"),
    "hypothesis": ("statement", "metric", "direction", "mde", "baseline"),
    "cohort": ("source", "id_column", "where", "max_size", "arms", "control", "unit_column", "saturation",
               "stratify_by", "salt", "start", "assignment"),
}  # fmt: skip


def pilot(**overrides: Any) -> dict[str, Any]:
    """The default pilot as a dict with ``overrides`` applied.

    A key is a top-level field (``id="x"``) or a dotted path into the sections (``"cohort.max_size"``,
    ``"metrics.0.column"``: a number indexes a list). A value replaces what is at its path (a dict or list
    too: ``cohort={...}`` is the whole cohort); :data:`DROP` removes the key (or a list's item), at a path
    or inside a value. Overrides apply in order.
    """
    data = copy.deepcopy(DEFAULT)
    for path, value in overrides.items():
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[int(last) if isinstance(node, list) else last] = copy.deepcopy(value)
    data = _without_drops(data)
    for section, order in ORDER.items():
        node = data if not section else data.get(section)
        if isinstance(node, dict):
            rank = {key: i for i, key in enumerate(order)}
            ordered = sorted(node.items(), key=lambda item: rank.get(item[0], len(rank)))
            node.clear()
            node.update(ordered)
    return data


def _without_drops(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_drops(v) for key, v in value.items() if v is not DROP}
    if isinstance(value, list):
        return [_without_drops(v) for v in value if v is not DROP]
    return value


def pilot_yaml(**overrides: Any) -> str:
    """The default pilot, with ``overrides`` (see :func:`pilot`), as the YAML text of a pilot file."""
    return render(pilot(**overrides))


def render(data: dict[str, Any]) -> str:
    """``data`` as pilot-file text: block style; a list of scalars, and a mapping of at most three scalars,
    on one line; a string that starts with punctuation (``op: "=="``) in double quotes."""
    return yaml.dump(data, Dumper=_PilotDumper, sort_keys=False, allow_unicode=True, width=1000)


def _scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


class _PilotDumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)  # a list under a key is indented, as people write it


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    node = dumper.represent_mapping("tag:yaml.org,2002:map", list(data.items()))
    node.flow_style = len(data) <= 3 and all(_scalar(v) or _flat_list(v) for v in data.values())
    return node


def _flat_list(value: Any) -> bool:
    return isinstance(value, list) and all(_scalar(v) for v in value)


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    node = dumper.represent_sequence("tag:yaml.org,2002:seq", data)
    node.flow_style = _flat_list(data)
    return node


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = '"' if data and not data[0].isalnum() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_PilotDumper.add_representer(dict, _represent_dict)
_PilotDumper.add_representer(list, _represent_list)
_PilotDumper.add_representer(str, _represent_str)
