"""`labkit demo` end to end, as `make demo` runs it, in a copy of the repo's lab (RELIABILITY #32).

The repo's configs/, experiments/ and notebooks/ are copied into a temporary folder and ``labkit demo``
runs there once for the session (the ``demo_lab`` fixture of tests/demo_lab.py, ~30 s on 2 cores, shared
with the browser tests): it builds the synthetic CRM, assigns, plans, runs every pilot's
notebook and records it in the lab's sqlite MLflow store. The tests then read that store and scan it, its
artifact tree, the run folders and the demo command's own stdout and stderr for every demo customer's
identifiers and the lab's pseudonym key (exact values), for a plain sha256 of any of the 80,000 ids (in
full or cut to a pseudonym's 16 characters, even glued inside a longer hex run), and for anything shaped
like a demo id, email, handle or LinkedIn profile URL (regexes of the forms labkit/demo writes), so
that an identifier the exact sets miss — another customer's, or one rewritten on the way — is caught too.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest

import labkit
from labkit.privacy import key_path, scan_for_identifiers, scan_for_patterns

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFIX = 16  # a plain sha256 cut to a pseudonym's length is as reversible as the full one


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


def demo_shapes() -> dict[str, re.Pattern[bytes]]:
    """Regexes of the identifiers labkit/demo writes (Population.customers_table): ``CUST-0000001``,
    ``ada.berg.1@example.org``, ``@adaber1`` (first name, three letters of the last, hex) and
    ``https://www.linkedin.com/in/ada-berg-1``; any hex run, for the plain-hash lookup."""
    from labkit.demo.population import FIRST_NAMES, LAST_NAMES

    first = b"|".join(sorted({f.encode() for f in FIRST_NAMES}, key=len, reverse=True))
    last3 = b"|".join(sorted({name[:3].encode() for name in LAST_NAMES}, key=len, reverse=True))
    return {
        "customer id": re.compile(rb"CUST-[0-9]{7}"),
        "email": re.compile(rb"[a-z]+\.[a-z]+\.[0-9]+@example\.(?:com|org|net)"),
        "handle": re.compile(rb"@(?:" + first + rb")(?:" + last3 + rb")[0-9a-f]+"),
        "linkedin url": re.compile(rb"linkedin\.com/in/[a-z]+-[a-z]+-[0-9a-f]+"),
        "hex": re.compile(rb"[0-9a-fA-F]{16,}"),
    }


def plain_hashes(hits, prefixes: set[bytes]) -> list[tuple[Path, bytes]]:
    """The hex runs holding, anywhere in them, the first 16 hex characters of a plain sha256 of an id."""
    out = []
    for path, name, run in hits:
        if name != "hex":
            continue
        run = run.lower()
        out += [(path, run) for i in range(len(run) - PREFIX + 1) if run[i : i + PREFIX] in prefixes]
    return out


@pytest.fixture
def scanned(demo, tmp_path) -> list[Path]:
    """What must hold no identifier: the store, the artifact tree, the run folders, and the demo's output."""
    root, _, proc, _ = demo
    demo.check()
    results = root / "results"
    paths = [results / "mlflow.db", results / "mlruns", *sorted(results.glob("*/runs"))]
    assert all(p.exists() for p in paths)
    assert len(list((results / "mlruns").rglob("*.ipynb"))) >= 8
    for name, text in (("demo.stdout", proc.stdout), ("demo.stderr", proc.stderr)):
        (tmp_path / name).write_text(text)
        paths.append(tmp_path / name)
    assert "labkit ui" in proc.stdout  # the captured output is the demo's, not empty
    return paths


def demo_customers(root: Path) -> pd.DataFrame:
    return pd.read_parquet(
        root / "data" / "crm" / "customers.parquet",
        columns=["customer_id", "email", "twitter_handle", "linkedin_url"],
    )


def test_no_demo_customer_identifier_key_or_plain_hash_in_mlflow(demo, scanned, tmp_path):
    root, lab, _, _ = demo
    customers = demo_customers(root)
    identifiers: set[str] = set()
    for column in customers.columns:
        identifiers |= {str(v) for v in customers[column].dropna() if str(v)}
    assert len(identifiers) > 2 * len(customers)  # ids, and most customers' email, handle or profile
    key = key_path(lab).read_text().strip()
    assert len(key) >= 16
    identifiers.add(key)
    # the scanner does find them where they belong: the lab's own CRM extract (its first 2,000 customers'
    # rows; the whole file is 80,000 and 2 CPU-s of scanning for the same answer)
    with open(root / "data" / "crm" / "outcomes.csv", "rb") as crm:
        (tmp_path / "crm-head.csv").write_bytes(b"".join(line for _, line in zip(range(2001), crm)))
    assert scan_for_identifiers([tmp_path / "crm-head.csv"], identifiers)
    found = scan_for_identifiers(scanned, identifiers)
    assert found == [], [(str(path), ident) for path, ident in found[:20]]

    ids = customers["customer_id"].astype(str)
    prefixes = {hashlib.sha256(c.encode()).hexdigest()[:PREFIX].encode() for c in ids}
    assert len(prefixes) == len(ids) >= 80_000  # every id, not a sample
    planted = tmp_path / "planted" / "x.json"  # a full digest glued inside a longer hex run is still found
    planted.parent.mkdir()
    planted.write_text('{"h": "00ff' + hashlib.sha256(ids.iloc[-1].encode()).hexdigest() + 'ab"}')
    assert len(plain_hashes(scan_for_patterns([planted], demo_shapes()), prefixes)) == 1
    hashed = plain_hashes(scan_for_patterns(scanned, {"hex": demo_shapes()["hex"]}), prefixes)
    assert hashed == [], hashed[:20]


def test_nothing_shaped_like_a_demo_identifier_in_mlflow_or_the_demo_output(demo, scanned, tmp_path):
    root, _, _, _ = demo
    shapes = {k: v for k, v in demo_shapes().items() if k != "hex"}
    customers = demo_customers(root)
    # the regexes match the demo's real values: every id, email, handle and profile URL of a sample
    sample = customers.sample(2000, random_state=32)
    (tmp_path / "sample.csv").write_text(sample.to_csv(index=False))
    hits = scan_for_patterns([tmp_path / "sample.csv"], shapes)
    matched = {name: {m.decode() for _, n, m in hits if n == name} for name in shapes}
    assert matched["customer id"] == set(sample["customer_id"])
    assert matched["email"] == set(sample["email"].dropna())
    assert matched["handle"] == set(sample["twitter_handle"].dropna())
    assert {f"https://www.{m}" for m in matched["linkedin url"]} == set(sample["linkedin_url"].dropna())
    found = scan_for_patterns(scanned, shapes)
    assert found == [], [(str(path), name, match) for path, name, match in found[:20]]
