"""Keyed-hash assignment: determinism, balance, the cap, write-once files, races and crashes, imports.

The expected arms come from ``reference_draw`` below — an independent re-implementation of the module
docstring of ``labkit.assignment.draw`` with hashlib, fractions and plain Python (no labkit, no ibis) — and from
``tests/data/golden_assignment.csv`` (1000 ids drawn from 1200, computed by ``reference_draw``; regenerate
only if the method changes, with ``python tests/assignment/test_assign.py --write-golden``, and bump the method's
version; last regenerated for ``keyed-hash-largest-remainder/1``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from labkit.assignment import (
    METHOD,
    allocate,
    assign,
    assignment_path,
    load_assignment,
    metadata_path,
)
from labkit.errors import AssignmentError, DataError
from labkit.spec import load_pilot

from conftest import CHURNED, DROP, LAB_YAML, pilot_yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parents[1] / "data" / "golden_assignment.csv"
GOLDEN_PARAMS = {
    "pilot_id": "golden",
    "salt": "golden-salt-2026",
    "max_size": 1000,
    "weights": {"control": 0.334, "a": 0.333, "b": 0.333},  # issue #12's weights, as written in the pilot
}


# --------------------------------------------------------------------------------------------------
# the independent reference


def reference_draw(rows, *, pilot_id: str, salt: str, weights: dict[str, float], max_size: int) -> dict:
    """``rows``: (customer_id, stratum) of the eligible customers -> {customer_id: arm}.

    Written from the docstring of labkit.assignment.draw with hashlib and fractions only: cap by the smallest
    cap hash; weights v / sum(v) exactly; strata in order of the hash of their smallest id; in each stratum
    floor(w n) per arm plus the extra customers to the arms with the largest deficit + remainder (ties by
    the hash of stratum key and arm); then the customers ranked by their hash take the arms in name order.
    """

    def text(c) -> str:
        return c if isinstance(c, str) else str(int(c))

    def sha(s: str) -> str:
        return hashlib.sha256(s.encode("utf-8")).hexdigest()

    us = "\x1f"
    rows = list(rows)
    if len(rows) > max_size:
        rows = sorted(
            rows, key=lambda r: (sha("cap" + us + salt + us + pilot_id + us + text(r[0])), text(r[0]))
        )
        rows = rows[:max_size]
    total = sum(Fraction(v) for v in weights.values())
    w = {a: Fraction(v) / total for a, v in weights.items()}
    arms = sorted(w)
    strata: dict = {}
    for cid, stratum in rows:
        strata.setdefault(stratum, []).append(cid)
    # Python orders str by code point, which is the order of their UTF-8 bytes
    keyed = sorted(
        (sha("stratum" + us + salt + us + pilot_id + us + min(text(c) for c in members)), members)
        for members in strata.values()
    )
    deficit = {a: Fraction(0) for a in arms}
    out = {}
    for key, members in keyed:
        n = len(members)
        base = {a: math.floor(w[a] * n) for a in arms}
        rho = {a: w[a] * n - base[a] for a in arms}
        extra = n - sum(base.values())
        line = sorted(
            (a for a in arms if rho[a] > 0), key=lambda a: (-(deficit[a] + rho[a]), sha(key + us + a))
        )
        gets = set(line[:extra])
        ranked = sorted(members, key=lambda c: (sha(salt + us + pilot_id + us + text(c)), text(c)))
        i = 0
        for a in arms:
            count = base[a] + (a in gets)
            deficit[a] += rho[a] - (a in gets)
            for c in ranked[i : i + count]:
                out[c] = a
            i += count
        assert i == n
    return out


def golden_inputs() -> pd.DataFrame:
    """1200 customers: plain ids, ten awkward ones (non-ASCII, quotes, spaces) and some missing segments."""
    odd = ["Zoë-1", "客户-2", "O'Brien-3", "a;b-4", "x y-5", "émile-6", "ß-7", "\U0001f44d-8", "-9", "Ω-10"]
    ids = [f"G-{i:04d}" for i in range(1190)] + odd
    segments = [
        [None, "consumer", "smb", "enterprise", "consumer", "smb", "consumer"][i % 7] for i in range(1200)
    ]
    return pd.DataFrame({"customer_id": ids, "segment": segments})


def write_golden() -> None:  # pragma: no cover - run by hand, once
    frame = golden_inputs()
    arms = reference_draw(
        zip(frame.customer_id, frame.segment.fillna("<null>")),
        pilot_id=GOLDEN_PARAMS["pilot_id"],
        salt=GOLDEN_PARAMS["salt"],
        weights=GOLDEN_PARAMS["weights"],
        max_size=GOLDEN_PARAMS["max_size"],
    )
    frame["arm"] = [arms.get(c, "") for c in frame.customer_id]
    frame["segment"] = frame.segment.fillna("")
    frame.to_csv(GOLDEN, index=False)


def read_golden() -> pd.DataFrame:
    frame = pd.read_csv(GOLDEN, dtype=str, keep_default_na=False)
    frame["segment"] = frame.segment.replace("", None)
    return frame


# --------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def lab(tiny_lab, monkeypatch):
    """The tiny lab plus an imported-assignment source and a fixed pseudonym key."""
    monkeypatch.setenv("LABKIT_ID_KEY", "test-key-0123456789abcdef")
    tiny_lab.write(
        "configs/lab.yaml",
        LAB_YAML.replace(
            "sources:\n",
            "sources:\n  sends: {format: parquet, path: data/sends.parquet, timestamp: sent_at}\n",
        ),
    )
    (tiny_lab.root / "data").mkdir(exist_ok=True)
    return tiny_lab


def customers(n: int = 400, seed: int = 3, ids=None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": ids if ids is not None else [f"C{i:05d}" for i in range(n)],
            "has_twitter": rng.random(n) < 0.7,
            "segment": rng.choice(["consumer", "smb", "enterprise"], n),
            "region": rng.choice(["eu", "us", "apac", "latam"], n),
            "tenure": rng.integers(0, 60, n),
        }
    )


def write_source(tiny_lab, frame: pd.DataFrame, name: str = "customers") -> Path:
    path = tiny_lab.root / "data" / f"{name}.parquet"
    frame.to_parquet(path, index=False)
    return path


def make_pilot(
    tiny_lab,
    *,
    pilot_id: str = "p",
    max_size: int = 2000,
    arms: str = "{control: 0.5, fast: 0.5}",
    extra: str = "",
):
    """The default pilot (tests/pilots.py) with one metric, on every customer; ``arms`` and the ``extra``
    lines of the cohort as written in the file (``"stratify_by: [segment]\\n"``)."""
    extra_fields = yaml.safe_load(textwrap.dedent(extra)) or {}
    tiny_lab.write(f"experiments/{pilot_id}.yaml", pilot_yaml(**{
        "id": pilot_id, "metrics": [CHURNED],
        "cohort.where": DROP, "cohort.max_size": max_size, "cohort.arms": yaml.safe_load(arms),
        **{f"cohort.{key}": value for key, value in extra_fields.items()},
    }))  # fmt: skip
    return load_pilot(pilot_id)


def drawn(pilot) -> dict:
    frame = pd.read_parquet(assignment_path(pilot))
    return dict(zip(frame.customer_id, frame.arm))


def expected(frame: pd.DataFrame, pilot, strata: list[str] | None = None) -> dict:
    keys = frame[strata].astype(str).agg("|".join, axis=1) if strata else ["all"] * len(frame)
    return reference_draw(
        zip(frame.customer_id, keys),
        pilot_id=pilot.id,
        salt=pilot.salt,
        weights=dict(pilot.spec.cohort.arms),
        max_size=pilot.spec.cohort.max_size,
    )


def run_python(code: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# --------------------------------------------------------------------------------------------------
# the method, against the reference


def test_allocate_gives_largest_remainder_counts_with_the_extras_where_the_deficit_is():
    w = {"control": Fraction(1, 2), "fast": Fraction(1, 2)}
    assert allocate(w, {"k": 10}) == {"k": {"control": 5, "fast": 5}}
    w3 = {"x": Fraction(1, 3), "control": Fraction(1, 3), "y": Fraction(1, 3)}
    # 7 in thirds: 2 each, and the one extra to an arm chosen by the hash of stratum key and arm
    (counts,) = allocate(w3, {"k": 7}).values()
    assert sorted(counts.values()) == [2, 2, 3] and list(counts) == ["control", "x", "y"]
    # three one-customer strata in thirds: the deficit sends each to a different arm
    out = allocate(w3, {"a": 1, "b": 1, "c": 1})
    assert sorted(a for counts in out.values() for a, n in counts.items() if n) == ["control", "x", "y"]
    # 0.499 / 0.501 over 1000 one-customer strata: 499 / 501, not 0 / 1000 (the larger remainder every time)
    wn = {"control": Fraction(499, 1000), "t": Fraction(501, 1000)}
    out = allocate(wn, {f"s{i:04d}": 1 for i in range(1000)})
    assert sum(c["control"] for c in out.values()) == 499
    with pytest.raises(ValueError):
        allocate({"a": Fraction(1, 2), "b": Fraction(1, 3)}, {"k": 1})


def test_a_small_case_gives_the_arms_written_here(lab):
    # Computed once with reference_draw (hashlib), written out so a reader sees a concrete draw.
    write_source(lab, pd.DataFrame({"customer_id": [f"K{i}" for i in range(1, 11)]}))
    pilot = make_pilot(lab, extra="salt: demo-salt\n")
    assign(pilot)
    assert drawn(pilot) == {
        "K1": "fast", "K2": "fast", "K3": "control", "K4": "fast", "K5": "control",
        "K6": "control", "K7": "control", "K8": "fast", "K9": "control", "K10": "fast",
    }  # fmt: skip
    frame = pd.DataFrame({"customer_id": [f"K{i}" for i in range(1, 11)]})
    assert drawn(pilot) == expected(frame, pilot)


def test_golden_file_is_what_the_reference_draws():
    golden = read_golden()
    assert len(golden) == 1200 and (golden.arm != "").sum() == 1000
    arms = reference_draw(
        zip(golden.customer_id, golden.segment.fillna("<null>")),
        pilot_id=GOLDEN_PARAMS["pilot_id"], salt=GOLDEN_PARAMS["salt"],
        weights=GOLDEN_PARAMS["weights"], max_size=GOLDEN_PARAMS["max_size"],
    )  # fmt: skip
    assert {c: a for c, a in zip(golden.customer_id, golden.arm) if a} == arms


def test_labkit_draws_the_golden_arms(lab):
    golden = read_golden()
    write_source(lab, golden[["customer_id", "segment"]])
    pilot = make_pilot(
        lab,
        pilot_id="golden",
        max_size=1000,
        arms="{control: 0.334, a: 0.333, b: 0.333}",
        extra="stratify_by: [segment]\nsalt: golden-salt-2026\n",
    )
    a = assign(pilot)
    frame = a.frame()
    assert dict(zip(frame.customer_id, frame.arm)) == {
        c: x for c, x in zip(golden.customer_id, golden.arm) if x
    }
    segment = dict(zip(golden.customer_id, golden.segment.fillna("<null>")))
    assert all(frame.stratum == frame.customer_id.map(segment))
    assert a.eligible == 1200 and a.assigned == 1000 and a.meta["capped"] is True


def test_integer_ids_hash_as_decimal_text_and_keep_their_type(lab):
    ids = np.arange(-5, 295, dtype=np.int64) * 7919
    frame = customers(300, ids=ids)
    write_source(lab, frame)
    pilot = make_pilot(lab, max_size=200, extra="stratify_by: [segment, region]\n")
    a = assign(pilot)
    out = a.frame()
    assert str(out.customer_id.dtype) == "int64"
    assert drawn(pilot) == expected(frame, pilot, ["segment", "region"])
    assert set(out.stratum) <= {f"{s}|{r}" for s in frame.segment for r in frame.region}


# --------------------------------------------------------------------------------------------------
# balance


def test_every_stratum_gets_each_arm_within_one_of_its_share(lab):
    frame = customers(3000, seed=11)
    write_source(lab, frame)
    pilot = make_pilot(
        lab, max_size=2500, arms="{control: 0.5, a: 0.3, b: 0.2}", extra="stratify_by: [segment, region]\n"
    )
    a = assign(pilot)
    assert a.meta["weights"] == {"a": 0.3, "b": 0.2, "control": 0.5}
    out = a.frame()
    assert len(out) == 2500 and len(a.meta["strata"]) == 12
    for stratum, group in out.groupby("stratum"):
        counts = group.arm.value_counts().to_dict()
        n = len(group)
        for arm, w in pilot.arms.items():
            assert abs(counts.get(arm, 0) - w * n) < 1, (stratum, counts)
        assert a.meta["strata"][stratum] == {arm: counts.get(arm, 0) for arm in ("control", "a", "b")}
    for arm, w in pilot.arms.items():
        assert abs(a.counts[arm] - w * 2500) < 2, a.counts
    assert a.counts == out.arm.value_counts().to_dict()
    assert drawn(pilot) == expected(frame, pilot, ["segment", "region"])


def test_many_tiny_strata_do_not_all_favour_one_arm(lab):
    # 600 strata of one customer each, 0.499 / 0.501: the larger remainder alone would give every customer
    # to `fast`; the running deficit gives 299 / 301.
    frame = pd.DataFrame(
        {"customer_id": [f"S{i}" for i in range(600)], "segment": [f"s{i}" for i in range(600)]}
    )
    write_source(lab, frame)
    pilot = make_pilot(lab, arms="{control: 0.499, fast: 0.501}", extra="stratify_by: [segment]\n")
    a = assign(pilot)
    assert a.counts == {"control": 299, "fast": 301}
    assert drawn(pilot) == expected(frame, pilot, ["segment"])


def test_arms_do_not_depend_on_a_customer_attribute(lab):
    # the arm hash knows nothing of tenure: mean tenure per arm agrees (Welch, alpha 0.001)
    from scipy import stats

    frame = customers(4000, seed=5)
    write_source(lab, frame)
    pilot = make_pilot(lab, max_size=4000)
    out = assign(pilot).frame().merge(frame, on="customer_id")
    control, fast = (out[out.arm == arm].tenure for arm in ("control", "fast"))
    assert stats.ttest_ind(control, fast, equal_var=False).pvalue > 0.001


# --------------------------------------------------------------------------------------------------
# the cap and the source changing


def test_the_cap_keeps_exactly_max_size_by_the_cap_hash(lab):
    frame = customers(400)
    write_source(lab, frame)
    pilot = make_pilot(lab, max_size=150)
    a = assign(pilot)
    assert a.assigned == 150 and a.eligible == 400 and a.meta["capped"] is True
    assert a.meta["warnings"] == [
        "250 of 400 eligible customers were left out by the cap (max_size 150), at random"
    ]
    us = "\x1f"
    ranked = sorted(
        frame.customer_id, key=lambda c: hashlib.sha256(f"cap{us}p{us}p{us}{c}".encode()).hexdigest()
    )
    assert set(a.frame().customer_id) == set(ranked[:150])


def test_reordered_source_rows_give_a_byte_identical_assignment(lab):
    frame = customers(500)
    write_source(lab, frame)
    pilot = make_pilot(lab, max_size=200, extra="stratify_by: [segment]\n")
    first = assign(pilot)
    before = first.path.read_bytes()
    write_source(lab, frame.sample(frac=1, random_state=9).reset_index(drop=True))
    assert assign(pilot).path.read_bytes() == before  # re-run: the file is reused
    again = assign(pilot, force=True)  # a real redraw over the shuffled rows
    assert again.path.read_bytes() == before
    assert again.meta["parquet_sha256"] == first.meta["parquet_sha256"]


def test_new_customers_appended_leave_the_assignment_unchanged(lab):
    frame = customers(300)
    write_source(lab, frame)
    pilot = make_pilot(lab, max_size=1000)
    a = assign(pilot)
    before, meta_before = a.path.read_bytes(), metadata_path(pilot).read_bytes()
    more = customers(50, seed=8, ids=[f"N{i:03d}" for i in range(50)])
    write_source(lab, pd.concat([frame, more], ignore_index=True))
    b = assign(pilot)
    assert b.path.read_bytes() == before and metadata_path(pilot).read_bytes() == meta_before
    assert b.counts == a.counts and b.eligible == a.eligible


def test_assigned_at_is_the_start_at_midnight_utc(lab):
    write_source(lab, customers(20))
    a = assign(make_pilot(lab))
    assert set(a.frame().assigned_at) == {pd.Timestamp("2026-11-01T00:00:00Z")}
    assert a.meta["assigned_at"] == "2026-11-01T00:00:00Z"


# --------------------------------------------------------------------------------------------------
# written once: re-runs, changes, --force


def test_a_rerun_returns_the_existing_files_unchanged(lab):
    write_source(lab, customers(100))
    pilot = make_pilot(lab)
    a = assign(pilot)
    files = {p.name: p.read_bytes() for p in pilot.results_dir.iterdir()}
    mtime = a.path.stat().st_mtime_ns
    b = assign(pilot)
    assert {p.name: p.read_bytes() for p in pilot.results_dir.iterdir()} == files
    assert b.path.stat().st_mtime_ns == mtime
    assert b == a
    assert sorted(files) == ["assignment.json", "assignment.parquet"]  # no lock or temporary file left


def test_metadata_records_the_draw(lab):
    write_source(lab, customers(100))
    pilot = make_pilot(lab, max_size=60, extra="salt: s-1\n")
    meta = assign(pilot).meta
    assert meta["method"] == METHOD == "keyed-hash-largest-remainder/1"
    assert meta["pilot"] == "p" and meta["salt"] == "s-1" and meta["cohort_sha256"] == pilot.cohort_sha256
    # the cohort as validated, without the fields added later that are unset (labkit.spec.cohort_dump)
    later = ("unit_column", "max_clusters", "saturation")  # issue 16's fields, unset here
    assert meta["cohort"] == {
        k: v for k, v in pilot.spec.cohort.model_dump(mode="json").items() if k not in later
    }
    assert meta["eligible"] == 100 and meta["assigned"] == 60 and sum(meta["counts"].values()) == 60
    assert meta["id_type"] == "string" and meta["source"] == "customers"
    assert meta["parquet_sha256"] == hashlib.sha256(assignment_path(pilot).read_bytes()).hexdigest()
    assert meta["created_at"].endswith("Z") and meta["labkit_version"]
    assert json.loads(metadata_path(pilot).read_text()) == meta


def test_a_changed_cohort_is_refused_naming_what_changed(lab):
    write_source(lab, customers(100))
    assign(make_pilot(lab, max_size=2000))
    pilot = make_pilot(lab, max_size=3000)
    with pytest.raises(AssignmentError) as info:
        assign(pilot)
    assert str(info.value).startswith(
        "p: cohort.max_size changed from 2000 to 3000 since the assignment was drawn on "
    )
    assert str(info.value).endswith(
        "; run `labkit assign p --force` to redraw (the old assignment is archived under results/p/archive/)"
    )


def test_a_changed_filter_is_named_by_its_position(lab):
    write_source(lab, customers(100))
    assign(make_pilot(lab, extra="where:\n  - {column: has_twitter, op: '==', value: true}\n"))
    pilot = make_pilot(lab, extra="where:\n  - {column: has_twitter, op: '==', value: false}\n")
    with pytest.raises(
        AssignmentError, match=r"^p: cohort\.where\[0\]\.value changed from true to false since"
    ):
        assign(pilot)


def test_a_changed_salt_is_refused_unless_forced(lab):
    write_source(lab, customers(100))
    first = assign(make_pilot(lab, extra="salt: one\n"))
    pilot = make_pilot(lab, extra="salt: two\n")
    with pytest.raises(
        AssignmentError,
        match=r"cohort\.salt changed from 'one' to 'two' since .*\(a new salt would "
        r"redraw every arm\); run `labkit assign p --force`",
    ):
        assign(pilot)
    assert first.path.read_bytes() == assignment_path(pilot).read_bytes()
    assert assign(pilot, force=True).meta["salt"] == "two"


def test_force_archives_the_old_assignment_and_redraws(lab, capsys):
    write_source(lab, customers(100))
    old = assign(make_pilot(lab, max_size=50))
    old_parquet, old_meta = old.path.read_bytes(), old.meta_path.read_bytes()
    pilot = make_pilot(lab, max_size=80)
    new = assign(pilot, force=True)
    assert new.assigned == 80 and new.meta["cohort"]["max_size"] == 80
    archives = list((pilot.results_dir / "archive").iterdir())
    assert len(archives) == 1
    assert (archives[0] / "assignment.parquet").read_bytes() == old_parquet
    assert (archives[0] / "assignment.json").read_bytes() == old_meta
    assert "archived the previous assignment in results/p/archive/" in capsys.readouterr().err
    assign(pilot, force=True)
    assert len(list((pilot.results_dir / "archive").iterdir())) == 2  # a second force keeps both


def test_a_parquet_changed_after_drawing_is_refused(lab):
    write_source(lab, customers(50))
    pilot = make_pilot(lab)
    a = assign(pilot)
    frame = a.frame()
    frame.loc[0, "arm"] = "fast" if frame.loc[0, "arm"] == "control" else "control"
    frame.to_parquet(a.path)
    with pytest.raises(
        AssignmentError, match=r"^p: results/p/assignment\.parquet does not match assignment\.json"
    ):
        load_assignment(pilot)


def test_no_assignment_yet(lab):
    write_source(lab, customers(10))
    with pytest.raises(AssignmentError) as info:
        load_assignment(make_pilot(lab))
    assert str(info.value) == "p: no assignment for p; run `labkit assign p` first"


def test_a_parquet_without_metadata_is_not_silently_redrawn(lab):
    write_source(lab, customers(10))
    pilot = make_pilot(lab)
    a = assign(pilot)
    metadata_path(pilot).unlink()
    with pytest.raises(AssignmentError, match="has no assignment.json beside it"):
        assign(pilot)
    assert assign(pilot, force=True).path.read_bytes() == a.path.read_bytes()


# --------------------------------------------------------------------------------------------------
# data problems


def test_duplicate_ids_are_refused_with_pseudonyms_only(lab):
    from labkit.privacy import pseudonym

    frame = customers(30)
    frame.loc[[3, 4], "customer_id"] = "C00001"
    frame.loc[[7], "customer_id"] = "C00009"
    write_source(lab, frame)
    pilot = make_pilot(lab)
    with pytest.raises(DataError) as info:
        assign(pilot)
    message = str(info.value)
    key = b"test-key-0123456789abcdef"
    assert message == (
        "source 'customers', column 'customer_id': 2 customer ids appear more than once (5 rows) in source "
        "'customers'; each customer needs exactly one row. examples, as pseudonyms (labkit.privacy.pseudonym): "
        f"{pseudonym('C00001', key)}, {pseudonym('C00009', key)}"
    )
    assert "C0000" not in message
    assert info.value.rows == 5
    assert not assignment_path(pilot).exists()


def test_missing_ids_are_refused(lab):
    frame = customers(10)
    frame["customer_id"] = frame.customer_id.astype(object)
    frame.loc[2, "customer_id"] = None
    write_source(lab, frame)
    with pytest.raises(DataError, match=r"column 'customer_id': 1 row of source 'customers' have no id"):
        assign(make_pilot(lab))


def test_an_id_column_of_another_type_is_refused(lab):
    write_source(lab, pd.DataFrame({"customer_id": [0.5, 1.5]}))
    with pytest.raises(
        DataError, match=r"type float64 cannot hold customer ids; ids must be text or integers"
    ):
        assign(make_pilot(lab))


def test_an_empty_cohort_says_which_condition_emptied_it(lab):
    frame = customers(40)
    write_source(lab, frame)
    pilot = make_pilot(
        lab,
        extra="where:\n  - {column: has_twitter, op: '==', value: true}\n"
        "  - {column: tenure, op: '>', value: 1000}\n",
    )
    with pytest.raises(AssignmentError) as info:
        assign(pilot)
    kept = int(frame.has_twitter.sum())
    assert str(info.value) == (
        "p: no eligible customers: none of the 40 rows of source 'customers' passes all of cohort.where "
        f"(alone, where[0] has_twitter == true keeps {kept}; where[1] tenure > 1000 keeps 0)"
    )
    assert not (lab.root / "results").exists()  # nothing created


def test_a_missing_stratify_column_lists_the_columns(lab):
    write_source(lab, customers(10))
    with pytest.raises(DataError, match=r"column 'tier': no such column; columns: customer_id, has_twitter"):
        assign(make_pilot(lab, extra="stratify_by: [tier]\n"))


# --------------------------------------------------------------------------------------------------
# imported assignments


def imported_pilot(lab, *, max_size: int = 2000, where: str = "", at: str = ", assigned_at_column: sent_at"):
    assignment = f"assignment: {{source: sends, arm_column: variant{at}}}\n"
    return make_pilot(lab, max_size=max_size, extra=where + assignment)


def sends(n: int = 100, ids=None) -> pd.DataFrame:
    ids = ids if ids is not None else [f"C{i:05d}" for i in range(n)]
    return pd.DataFrame(
        {
            "customer_id": ids,
            "variant": ["control" if i % 2 else "fast" for i in range(len(ids))],
            "sent_at": pd.Timestamp("2026-11-03 09:30", tz="Europe/Paris")
            + pd.to_timedelta(np.arange(len(ids)), "min"),
        }
    )


def test_an_imported_assignment_is_copied_with_utc_times(lab):
    write_source(lab, customers(200))
    s = sends(100)
    write_source(lab, s, "sends")
    a = assign(imported_pilot(lab))
    out = a.frame().set_index("customer_id")
    assert a.meta["method"] == "imported/1" and a.assigned == 100 and a.eligible == 100
    assert out.arm.to_dict() == dict(zip(s.customer_id, s.variant))
    assert out.assigned_at.to_dict() == dict(zip(s.customer_id, s.sent_at.dt.tz_convert("UTC")))
    assert out.loc["C00000", "assigned_at"] == pd.Timestamp("2026-11-03T08:30:00Z")
    assert a.meta["cap_exceeded"] is False and a.meta["warnings"] == []
    assert set(out.stratum) == {"all"}


def test_an_imported_assignment_without_times_starts_at_the_start(lab):
    write_source(lab, customers(20))
    write_source(lab, sends(10), "sends")
    a = assign(imported_pilot(lab, at=""))
    assert set(a.frame().assigned_at) == {pd.Timestamp("2026-11-01T00:00:00Z")}


def test_imported_arm_values_must_be_arms(lab):
    write_source(lab, customers(20))
    s = sends(10)
    s.loc[[1, 2], "variant"] = "B"
    s.loc[3, "variant"] = None
    write_source(lab, s, "sends")
    with pytest.raises(DataError) as info:
        assign(imported_pilot(lab))
    assert str(info.value) == (
        "source 'sends', column 'variant': arm value(s) that are not arms of the pilot: 'B' (2 rows); "
        "arms: control, fast; map the column's values to arms with cohort.assignment.arms, e.g. "
        "arms: {'0': control, '1': treatment}"
    )  # the NULL arm is skipped and counted (tests/assignment/test_imported.py), not an unknown arm


def test_imported_where_is_checked_not_applied(lab):
    frame = customers(200)
    write_source(lab, frame)
    s = sends(100, ids=[f"C{i:05d}" for i in range(95)] + [f"X{i}" for i in range(5)])
    write_source(lab, s, "sends")
    pilot = imported_pilot(lab, where="where:\n  - {column: has_twitter, op: '==', value: true}\n")
    a = assign(pilot)
    failing = int((~frame.has_twitter[:95]).sum()) + 5
    assert a.assigned == 100  # nobody dropped
    assert a.meta["imported"]["where_failed"] == failing
    assert a.meta["imported"]["not_in_cohort_source"] == 5
    assert a.meta["warnings"] == [
        f"{failing} of 100 imported customers fail cohort.where (5 of them are not in source 'customers'); "
        "they are analysed in their arms (intent-to-treat)"
    ]


def test_an_imported_assignment_over_the_cap_is_written_and_flagged(lab):
    write_source(lab, customers(200))
    write_source(lab, sends(120), "sends")
    a = assign(imported_pilot(lab, max_size=100))
    assert a.assigned == 120 and a.meta["cap_exceeded"] is True
    assert "more than max_size 100: the cap is a promise, so the pilot is invalid" in a.meta["warnings"][-1]


def test_imported_duplicates_are_refused(lab):
    write_source(lab, customers(20))
    write_source(
        lab, sends(10, ids=["C00001", "C00002", "C00001"] + [f"C{i:05d}" for i in range(3, 10)]), "sends"
    )
    with pytest.raises(
        DataError,
        match=r"^source 'sends', column 'customer_id': 1 customer id appears more than "
        r"once \(2 rows\) in the imported assignment 'sends'",
    ):
        assign(imported_pilot(lab))


# --------------------------------------------------------------------------------------------------
# races, crashes and interrupts


def test_two_processes_racing_one_wins_one_loses_clearly(lab):
    # Also the cross-process check: the winner (another interpreter, another hash seed) draws the same bytes
    # as this process does.
    write_source(lab, customers(500))
    pilot = make_pilot(lab, max_size=300, extra="stratify_by: [segment]\n")
    go = lab.root / "go"
    code = f"""
        import os, sys, time
        import labkit.assignment as A
        from labkit.data.sources import Engine
        from labkit.spec import load_pilot
        from labkit.errors import LabkitError
        pilot = load_pilot("p")
        Engine.for_lab(pilot.lab).close()  # imports done: both processes start the race together
        real = A.drawn_table
        def slow(engine, pilot):
            time.sleep(0.5)  # hold the lock while the other process arrives
            return real(engine, pilot)
        A.drawn_table = slow
        print("READY", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        try:
            A.assign(pilot)
        except LabkitError as exc:
            print("LOST:", exc)
            sys.exit(3)
        print("WON")
    """
    procs = [run_python(code, lab.root, env={"PYTHONHASHSEED": str(seed)}) for seed in (1, 2)]
    assert [p.stdout.readline().strip() for p in procs] == ["READY", "READY"]
    go.touch()
    results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(r[0] for r in results) == [0, 3], results
    lost = next(r[1] for r in results if r[0] == 3)
    assert "LOST: p: another `labkit assign p` (process " in lost
    assert "is drawing this assignment right now; wait for it to finish and run again" in lost
    a = load_assignment(pilot)
    assert a.assigned == 300
    assert sorted(p.name for p in pilot.results_dir.iterdir()) == ["assignment.json", "assignment.parquet"]
    theirs = a.path.read_bytes()
    assert assign(pilot, force=True).path.read_bytes() == theirs  # drawn again here (theirs is archived)


def test_sigkill_mid_write_leaves_no_parquet_and_the_rerun_reclaims_the_lock(lab, capsys):
    write_source(lab, customers(3000))
    pilot = make_pilot(lab, max_size=5000)
    code = """
        import sys, time
        import pyarrow.parquet as pq
        import labkit.assignment as A
        import labkit.assignment.store
        from labkit.spec import load_pilot
        A.store.ROW_GROUP = 500  # several row groups, so the kill lands between two of them
        real = pq.ParquetWriter.write_table
        def write_then_wait(self, *args, **kwargs):
            real(self, *args, **kwargs)
            print("WROTE", flush=True)
            time.sleep(60)
        pq.ParquetWriter.write_table = write_then_wait
        A.assign(load_pilot("p"))
    """
    proc = run_python(code, lab.root)
    assert proc.stdout.readline().strip() == "WROTE"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    folder = pilot.results_dir
    left = sorted(p.name for p in folder.iterdir())
    assert "assignment.parquet" not in left and "assignment.json" not in left
    assert "assignment.lock" in left and any(n.startswith(".assignment.parquet.") for n in left)
    with pytest.raises(AssignmentError, match="no assignment for p"):
        load_assignment(pilot)
    a = assign(pilot)  # the dead process's lock is reclaimed, its temporary file swept
    assert a.assigned == 3000 and a.meta["reclaimed_lock"]["pid"] == proc.pid
    assert (
        f"reclaimed the stale lock results/p/assignment.lock: process {proc.pid}" in capsys.readouterr().err
    )
    assert sorted(p.name for p in folder.iterdir()) == ["assignment.json", "assignment.parquet"]


def test_ctrl_c_mid_write_leaves_nothing_behind(lab, monkeypatch):
    import pyarrow.parquet as pq

    write_source(lab, customers(100))
    pilot = make_pilot(lab)

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq.ParquetWriter, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assign(pilot)
    assert not (lab.root / "results").exists()  # no parquet, temporary file, lock or folder left


def test_a_live_lock_makes_the_racer_lose(lab):
    write_source(lab, customers(10))
    pilot = make_pilot(lab)
    pilot.results_dir.mkdir(parents=True)
    lock = pilot.results_dir / "assignment.lock"
    import socket

    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "taken_at": "then"}))
    with pytest.raises(AssignmentError) as info:
        assign(pilot)
    assert str(info.value) == (
        f"p: another `labkit assign p` (process {os.getppid()} on {socket.gethostname()}, since then) is drawing "
        "this assignment right now; wait for it to finish and run again (if no labkit process is running, "
        "delete results/p/assignment.lock)"
    )
    assert lock.exists() and not assignment_path(pilot).exists()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_reclaimed(lab, capsys):
    # The holder died and the system gave its pid to another process (here: our parent, alive): the start
    # time the holder recorded differs from that process's, so the lock is stale.
    import socket

    from labkit._process import process_start

    write_source(lab, customers(10))
    pilot = make_pilot(lab)
    pilot.results_dir.mkdir(parents=True)
    lock = pilot.results_dir / "assignment.lock"
    parent = os.getppid()
    assert process_start(parent) is not None  # Linux /proc: the start time is known
    holder = {"pid": parent, "started": "1", "host": socket.gethostname(), "taken_at": "then"}
    lock.write_text(json.dumps(holder))
    a = assign(pilot)
    assert a.meta["reclaimed_lock"] == {"pid": parent, "taken_at": "then"}
    assert f"reclaimed the stale lock results/p/assignment.lock: process {parent}" in capsys.readouterr().err
    assert not lock.exists()


def test_a_lock_records_its_holders_start_time(lab, monkeypatch):
    from labkit._process import process_start
    from labkit.assignment import locks

    write_source(lab, customers(10))
    pilot = make_pilot(lab)
    seen = {}
    real = locks.Claim.__enter__

    def peek(self):
        claim = real(self)
        seen.update(json.loads(self.path.read_text()))
        return claim

    monkeypatch.setattr(locks.Claim, "__enter__", peek)
    assign(pilot)
    assert seen["pid"] == os.getpid() and seen["started"] == process_start(os.getpid())


if __name__ == "__main__" and "--write-golden" in sys.argv:  # pragma: no cover
    write_golden()
