"""`labkit demo` end to end, as `make demo` runs it, in a copy of the repo's lab (RELIABILITY #32).

The repo's configs/, experiments/ and notebooks/ are copied into a temporary folder and ``python -m
labkit.cli demo`` runs there once for the session (the ``demo_lab`` fixture of tests/demo_lab.py, ~1-2 min
on 2 cores, shared with the browser tests): it builds the synthetic CRM, assigns, plans, runs every pilot's
notebook and records it in the lab's sqlite MLflow store. The tests then read that store and scan it, its
artifact tree and the run folders for every demo customer's identifiers, for the lab's pseudonym key and
for plain sha256 hashes of ids.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

import labkit
from labkit.privacy import key_path, scan_for_identifiers

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHA_SAMPLE = 5000  # ids whose plain sha256 (full, and cut to a pseudonym's 16 characters) is looked for


@pytest.fixture
def demo(demo_lab):
    """The demo lab after `labkit demo`: (root, lab, completed process, seconds), built once per session."""
    return demo_lab


def demo_runs(lab):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=lab.tracking_uri)
    exp = client.get_experiment_by_name(lab.spec.mlflow_experiment)
    assert exp is not None, "the demo created no MLflow experiment"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_demo_exits_zero_and_says_where_to_look(demo):
    _, _, proc, seconds = demo
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-5000:]
    assert "Traceback" not in text
    assert "labkit ui" in proc.stdout  # it ends by printing where to look
    print(f"labkit demo took {seconds:.0f} s")


def test_every_demo_pilot_has_exactly_one_finished_latest_run_with_its_notebook(demo):
    root, lab, proc, _ = demo
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    pilots = {p.stem: labkit.load_pilot(p, lab=lab) for p in sorted((root / "experiments").glob("*.yaml"))}
    assert len(pilots) >= 8
    client, runs = demo_runs(lab)
    by_pilot: dict[str, list] = {}
    for run in runs:
        by_pilot.setdefault(run.data.tags.get("labkit.pilot"), []).append(run)
    assert set(by_pilot) == set(pilots), "one run per demo pilot, and no other run"
    functions = set()
    for pid, pilot in pilots.items():
        (run,) = by_pilot[pid]
        tags = run.data.tags
        assert run.info.status == "FINISHED", (pid, tags.get("labkit.error"))
        assert tags["labkit.latest"] == "true"
        assert tags["labkit.decision"] in {"ship", "harm", "no-effect", "inconclusive", "invalid"}
        assert tags["labkit.function"] == pilot.spec.function
        stem = pilot.notebook_path.stem
        artifacts = artifact_paths(client, run.info.run_id)
        assert {
            f"notebook/{stem}.ipynb",
            f"notebook/{stem}.html",
            "results.json",
            f"pilot/{pid}.yaml",
        } <= artifacts
        assert any(a.startswith("figures/") for a in artifacts)
        functions.add(pilot.spec.function)
    assert functions == {"sales", "marketing", "service", "pr"}


def test_no_demo_customer_identifier_key_or_plain_hash_in_mlflow(demo):
    root, lab, proc, _ = demo
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    customers = pd.read_parquet(
        root / "data" / "crm" / "customers.parquet",
        columns=["customer_id", "email", "twitter_handle", "linkedin_url"],
    )
    identifiers: set[str] = set()
    for column in customers.columns:
        identifiers |= {str(v) for v in customers[column].dropna() if str(v)}
    assert len(identifiers) > 2 * len(customers)  # ids, and most customers' email, handle or profile
    key = key_path(lab).read_text().strip()
    assert len(key) >= 16
    identifiers.add(key)
    for cid in customers["customer_id"].astype(str).head(SHA_SAMPLE):
        digest = hashlib.sha256(cid.encode()).hexdigest()
        identifiers |= {digest, digest[:16]}

    results = root / "results"
    scanned = [results / "mlflow.db", results / "mlruns", *sorted(results.glob("*/runs"))]
    assert all(p.exists() for p in scanned)
    assert len(list((results / "mlruns").rglob("*.ipynb"))) >= 8
    # the scanner does find them where they belong: the lab's own CRM extract
    assert scan_for_identifiers([root / "data" / "crm" / "outcomes.csv"], identifiers)
    found = scan_for_identifiers(scanned, identifiers)
    assert found == [], [(str(path.relative_to(root)), ident) for path, ident in found[:20]]
