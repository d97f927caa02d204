"""An imported assignment whose arms sit in the metrics' own file is grouped in place (issue #18).

``labkit.data.aggregate.arms_in_place`` lets the per-customer query group that file by its arm column
instead of joining the copied assignment back to it, while the file is unchanged since `labkit assign`.
Each test computes the pilot's per-arm data both ways — in place and through the join — and requires
the same moments, counts, missing counts and quantile values; and that any change to the file, or an
import the in-place rule does not cover, falls back to the join.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import labkit
from labkit.data import aggregate
from labkit.data.aggregate import aggregate_pilot, arms_in_place, units_table
from labkit.data.sources import Engine

LAB = """\
lab: in-place
sources:
  sends: {format: parquet, path: data/sends.parquet}
  other: {format: parquet, path: data/other.parquet}
functions: [marketing]
channels: [email]
"""

PILOT = """\
id: p
title: Arms in the outcomes file
function: marketing
channel: email
stage: retention
owner: lab@example.com
hypothesis: {{statement: Moves., metric: bought, direction: increase, mde: {{relative: 0.1}}}}
cohort:
  source: sends
  id_column: customer_id
  arms: {{control: 0.5, voucher: 0.5}}
  control: control
  start: 2026-11-01
  assignment: {{source: sends, arm_column: {arm_column}{extra}}}
metrics:
  - {{name: bought, type: proportion, source: sends, column: bought}}
  - {{name: spend, type: mean, source: sends, column: spend, covariate: pre}}
  - name: tickets_per_contact
    type: ratio
    numerator: {{source: sends, column: tickets}}
    denominator: {{source: sends, column: contacts}}
  - {{name: spend_median, type: quantile, quantile: 0.5, source: sends, column: spend}}
{more}"""


def sends(n: int = 400, seed: int = 3) -> pd.DataFrame:
    """Arms with NULLs (not assigned), NULL outcomes and covariates, ids in a shuffled order."""
    rng = np.random.default_rng(seed)
    arm = np.where(rng.random(n) < 0.5, "control", "voucher").astype(object)
    arm[rng.random(n) < 0.1] = None
    df = pd.DataFrame(
        {
            "customer_id": rng.permutation(np.arange(n, dtype=np.int64) * 7 + 3),
            "arm": arm,
            "treat": np.where(arm == "voucher", 1, 0),
            "bought": rng.binomial(1, 0.3, n).astype(float),
            "spend": rng.gamma(2.0, 10.0, n),
            "pre": rng.gamma(2.0, 8.0, n),
            "tickets": rng.poisson(1.0, n).astype(float),
            "contacts": rng.poisson(2.0, n).astype(float),
        }
    )
    for col, share in (("bought", 0.05), ("spend", 0.05), ("pre", 0.1), ("tickets", 0.05)):
        df.loc[rng.random(n) < share, col] = np.nan
    return df


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LABKIT_LAB", raising=False)
    for sub in ("configs", "data", "experiments"):
        (tmp_path / sub).mkdir()
    (tmp_path / "configs" / "lab.yaml").write_text(LAB)
    sends().to_parquet(tmp_path / "data" / "sends.parquet", index=False)
    sends(seed=4).to_parquet(tmp_path / "data" / "other.parquet", index=False)
    return tmp_path


def pilot(root, *, arm_column: str = "arm", extra: str = "", more: str = "") -> labkit.Pilot:
    text = PILOT.format(arm_column=arm_column, extra=extra, more=more)
    (root / "experiments" / "p.yaml").write_text(text)
    return labkit.load_pilot(root / "experiments" / "p.yaml", lab=labkit.load_lab(root / "configs/lab.yaml"))


def both_ways(p, monkeypatch) -> tuple[str | None, dict, dict]:
    """The arm column chosen, and the pilot's per-arm data as analysed and through the join."""
    engine = Engine.for_lab(p.lab)
    try:
        chosen = arms_in_place(engine, p, [m for m in p.spec.metrics if m.event is None])
        analysed = aggregate_pilot(engine, p, units_table(engine, p))
        with monkeypatch.context() as m:
            m.setattr(aggregate, "arms_in_place", lambda *args: None)
            joined = aggregate_pilot(engine, p, units_table(engine, p))
    finally:
        engine.close()
    return chosen, analysed, joined


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert (x.arms, x.assigned, x.missing, x.covariate, x.strata) == (
            y.arms,
            y.assigned,
            y.missing,
            y.covariate,
            y.strata,
        ), name
        assert (x.values is None) == (y.values is None), name
        if x.values is not None:
            assert x.values.keys() == y.values.keys()
            for arm in x.values:
                np.testing.assert_array_equal(x.values[arm], y.values[arm])


def test_the_arms_file_grouped_in_place_gives_the_joins_moments(lab, monkeypatch):
    p = pilot(lab)
    labkit.assign(p)
    chosen, analysed, joined = both_ways(p, monkeypatch)
    assert chosen == "arm"
    assert_same(analysed, joined)
    assert sum(analysed["bought"].assigned.values()) == int(sends()["arm"].notna().sum())
    assert analysed["spend"].arms["voucher"].n > 0 and analysed["spend"].missing["control"] > 0


def test_a_file_changed_since_the_import_is_joined_to_the_recorded_assignment(lab, monkeypatch):
    p = pilot(lab)
    labkit.assign(p)
    before = both_ways(p, monkeypatch)[1]
    changed = sends()
    changed.loc[changed["arm"] == "control", "arm"] = "voucher"  # every arm rewritten after the import
    changed.to_parquet(lab / "data" / "sends.parquet", index=False)
    chosen, analysed, joined = both_ways(p, monkeypatch)
    assert chosen is None
    assert_same(analysed, joined)
    assert analysed["bought"].assigned == before["bought"].assigned  # the assignment is the record


@pytest.mark.parametrize(
    ("arm_column", "extra", "more"),
    [
        ("treat", ", arms: {'0': control, '1': voucher}", ""),  # a value map
        ("arm", "", "  - {name: other_bought, type: proportion, source: other, column: bought}\n"),
    ],
)
def test_a_value_map_or_a_second_source_keeps_the_join(lab, monkeypatch, arm_column, extra, more):
    p = pilot(lab, arm_column=arm_column, extra=extra, more=more)
    labkit.assign(p)
    chosen, analysed, joined = both_ways(p, monkeypatch)
    assert chosen is None
    assert_same(analysed, joined)


def test_an_assignment_imported_before_the_digest_was_recorded_keeps_the_join(lab, monkeypatch):
    import json

    p = pilot(lab)
    labkit.assign(p)
    meta_file = p.results_dir / "assignment.json"
    meta = json.loads(meta_file.read_text())
    del meta["imported"]["source_sha256"]
    meta_file.write_text(json.dumps(meta))
    engine = Engine.for_lab(p.lab)
    try:
        assert arms_in_place(engine, p, list(p.spec.metrics)) is None
    finally:
        engine.close()
