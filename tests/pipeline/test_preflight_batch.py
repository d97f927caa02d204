"""labkit.pipeline.batch.preflight_all: a batch's preflights share one engine per lab, keep their order, and
close it whatever happens; the first refusal stops the batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import labkit.assignment
import labkit.data.aggregate
import labkit.data.sources
import labkit.runner
from labkit.errors import AssignmentError
from labkit.pipeline.batch import preflight, preflight_all


class _Engine:
    def __init__(self, opened: list):
        self.closed = False
        opened.append(self)

    def close(self) -> None:
        self.closed = True


def _pilot(pid: str, lab) -> SimpleNamespace:
    return SimpleNamespace(id=pid, lab=lab, notebook_path=f"{pid}.ipynb", start=None)  # started: no date


@pytest.fixture
def checks(monkeypatch):
    """Every check of the preflight replaced by a recorder: which pilot was checked, on which engine."""
    seen: dict = {"opened": [], "metrics": [], "refuse": set()}

    def assignment(pilot):
        if pilot.id in seen["refuse"]:
            raise AssignmentError(pilot.id, f"no assignment for {pilot.id}")

    monkeypatch.setattr(labkit.runner, "check_notebook", lambda path, kernel_name: None)
    monkeypatch.setattr(labkit.assignment, "load_assignment", assignment)
    monkeypatch.setattr(labkit.data.sources, "preflight", lambda pilot: None)
    monkeypatch.setattr(labkit.data.sources, "pilot_sources", lambda pilot: ["crm"])
    monkeypatch.setattr(
        labkit.data.sources.Engine, "for_lab", classmethod(lambda cls, lab: _Engine(seen["opened"]))
    )
    monkeypatch.setattr(
        labkit.data.aggregate,
        "check_metrics",
        lambda engine, pilot: seen["metrics"].append((pilot.id, engine)),
    )
    return seen


def _lab() -> SimpleNamespace:
    return SimpleNamespace(
        source=lambda name: SimpleNamespace(format="parquet"),
        spec=SimpleNamespace(runner=SimpleNamespace(kernel="python3")),
    )


def test_a_batch_preflight_opens_one_engine_for_all_its_pilots_and_closes_it(checks):
    lab = _lab()
    preflight_all([_pilot(p, lab) for p in ("a", "b", "c")])
    assert len(checks["opened"]) == 1 and checks["opened"][0].closed
    assert checks["metrics"] == [(p, checks["opened"][0]) for p in ("a", "b", "c")]


def test_a_refusal_stops_the_batch_preflight_and_still_closes_the_engine(checks):
    lab = _lab()
    checks["refuse"].add("b")
    with pytest.raises(AssignmentError, match="no assignment for b"):
        preflight_all([_pilot(p, lab) for p in ("a", "b", "c")])
    assert [p for p, _ in checks["metrics"]] == ["a"]
    assert all(engine.closed for engine in checks["opened"])


def test_one_pilot_preflight_alone_has_an_engine_of_its_own(checks):
    preflight(_pilot("a", _lab()))
    preflight(_pilot("b", _lab()))
    assert len(checks["opened"]) == 2 and all(engine.closed for engine in checks["opened"])
