"""Shared fixtures: a tiny lab written into tmp_path, and a valid pilot to break one field at a time."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from demo_lab import demo_lab  # noqa: F401 -- the session fixture: `labkit demo` run once
from mlflow_server import mlflow_server  # noqa: F401 -- the session fixture, shared

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]

LAB_YAML = """\
lab: tiny-lab
tracking_uri: sqlite:///results/mlflow.db
mlflow_experiment: tiny-pilots
currency: USD
sources:
  customers: {format: parquet, path: data/customers.parquet}
  outcomes: {format: csv, path: data/outcomes.csv}
  events: {format: parquet, path: data/events.parquet, timestamp: ts}
functions: [sales, marketing, service, pr]
channels: [twitter, linkedin, community, email]
stages: [acquisition, onboarding, service, retention]
defaults: {alpha: 0.05, power: 0.8, engine: frequentist, correction: holm, sequential: false}
privacy: {pseudonymize: true, key_env: LABKIT_ID_KEY}
"""

PILOT_YAML = """\
id: p
title: Reply fast
function: service
channel: twitter
stage: retention
owner: lab@example.com
hypothesis:
  statement: Fast replies lower churn.
  metric: churned
  direction: decrease
  mde: {relative: 0.15}
cohort:
  source: customers
  id_column: customer_id
  where:
    - {column: has_twitter, op: "==", value: true}
  max_size: 2000
  arms: {control: 0.5, fast: 0.5}
  control: control
  start: 2026-11-01
metrics:
  - name: churned
    type: proportion
    source: outcomes
    column: churned
  - name: replies
    type: mean
    source: events
    event: {column: event_type, equals: reply}
    aggregate: count
    window_days: 30
    cuped: true
"""


class TinyLab:
    def __init__(self, root: Path):
        self.root = root

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def pilot(self, text: str = PILOT_YAML, name: str = "p") -> Path:
        return self.write(f"experiments/{name}.yaml", text)


@pytest.fixture
def tiny_lab(tmp_path, monkeypatch) -> TinyLab:
    """An empty lab with configs/lab.yaml; the cwd is its root so messages show relative paths."""
    lab = TinyLab(tmp_path)
    lab.write("configs/lab.yaml", LAB_YAML)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LABKIT_LAB", raising=False)
    monkeypatch.delenv("LABKIT_TRACKING_URI", raising=False)
    return lab


@pytest.fixture(scope="session", autouse=True)
def _digest_cache(tmp_path_factory):
    """labkit's file-digest cache (labkit.data.sources.DigestCache) of the whole session, and of every
    labkit subprocess it starts, in a folder of the session instead of the user's ~/.cache."""
    import os

    os.environ["LABKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("labkit-cache"))
    yield
