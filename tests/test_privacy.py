"""Pseudonym keys and HMACs, checked against hmac/hashlib; the identifier scanner on realistic files."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from labkit.errors import LabkitError
from labkit.lab import load_lab
from labkit.privacy import (
    id_text,
    key_path,
    lab_key,
    pseudonym,
    pseudonymize_series,
    scan_for_identifiers,
    scan_for_patterns,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def lab(tiny_lab, monkeypatch):
    monkeypatch.delenv("LABKIT_ID_KEY", raising=False)
    return load_lab(tiny_lab.root)


# --------------------------------------------------------------------------------------------------
# the key


def test_the_key_comes_from_the_environment_variable(lab, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_ID_KEY", "  an-environment-key-of-some-length \n")
    assert lab_key(lab) == b"an-environment-key-of-some-length"
    assert not key_path(lab).exists()  # no file created when the variable is set
    assert capsys.readouterr().err == ""


def test_the_variable_name_comes_from_the_lab(tiny_lab, monkeypatch):
    tiny_lab.write("configs/lab.yaml", (tiny_lab.root / "configs/lab.yaml").read_text().replace(
        "key_env: LABKIT_ID_KEY", "key_env: OUR_CRM_KEY"))  # fmt: skip
    monkeypatch.setenv("OUR_CRM_KEY", "k" * 20)
    monkeypatch.setenv("LABKIT_ID_KEY", "other-key-not-this-one")
    assert lab_key(load_lab(tiny_lab.root)) == b"k" * 20


def test_without_the_variable_a_key_file_is_created_once_with_mode_0600(lab, capsys):
    key = lab_key(lab)
    path = key_path(lab)
    assert path == lab.root / "results" / ".labkit-id-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64 and bytes.fromhex(key.decode())  # 32 random bytes, as hex text
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "created the lab's pseudonym key .labkit-id-key" in err
    assert key.decode() not in err  # never shown
    assert lab_key(lab) == key  # the same key again, and no second notice
    assert capsys.readouterr().err == ""
    assert [p.name for p in path.parent.iterdir()] == [".labkit-id-key"]  # no temporary file left


def test_copying_the_key_file_into_the_variable_gives_the_same_pseudonyms(lab, monkeypatch):
    from_file = pseudonym("C00001", lab_key(lab))
    monkeypatch.setenv("LABKIT_ID_KEY", key_path(lab).read_text())
    assert pseudonym("C00001", lab_key(lab)) == from_file


def test_processes_starting_at_once_share_one_key(lab):
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from types import SimpleNamespace as NS
        from labkit.privacy import lab_key
        lab = NS(spec=NS(privacy=NS(key_env="LABKIT_ID_KEY")), results_dir=Path({str(lab.results_dir)!r}), display=str)
        while time.time() < {time.time() + 0.5}:
            time.sleep(0.001)
        print(lab_key(lab).decode())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "LABKIT_ID_KEY"}
    env["PYTHONPATH"] = str(REPO)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    keys = {out.strip() for out, _ in outputs}
    assert len(keys) == 1 and keys == {key_path(lab).read_text().strip()}, outputs
    assert sum("created the lab's pseudonym key" in err for _, err in outputs) == 1


def test_a_key_file_others_can_read_is_used_with_a_warning(lab, capsys):
    key = lab_key(lab)
    capsys.readouterr()
    key_path(lab).chmod(0o644)
    assert lab_key(lab) == key
    err = capsys.readouterr().err
    assert err == (
        "labkit: warning: the pseudonym key results/.labkit-id-key is readable by others; "
        "chmod 600 results/.labkit-id-key\n"
    )


def test_a_short_key_is_refused_without_showing_it(lab, monkeypatch):
    monkeypatch.setenv("LABKIT_ID_KEY", "hunter2")
    with pytest.raises(LabkitError) as info:
        lab_key(lab)
    assert str(info.value).startswith(
        "the pseudonym key in $LABKIT_ID_KEY is 7 characters long; use at least 16"
    )
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# pseudonyms


def test_a_pseudonym_is_the_hmac_of_the_id_text():
    key = b"k" * 32
    expected = hmac.new(key, b"C00001", hashlib.sha256).hexdigest()[:16]
    assert pseudonym("C00001", key) == expected
    assert pseudonym(42, key) == hmac.new(key, b"42", hashlib.sha256).hexdigest()[:16]
    assert pseudonym(42.0, key) == pseudonym(42, key)  # an integer column that pandas made float
    assert pseudonym("C00001", key) != hashlib.sha256(b"C00001").hexdigest()[:16]  # not a plain hash
    assert pseudonym("C00001", b"another-key-xxxxxxxx") != expected


def test_id_text():
    import numpy as np

    assert id_text("Zoë") == "Zoë" and id_text(np.int64(-7)) == "-7" and id_text(b"x") == "x"
    assert id_text(np.float32(7.0)) == "7"
    for fraction in (1.5, np.float32(2.5)):
        with pytest.raises(LabkitError):
            id_text(fraction)


def test_pseudonymize_series_keeps_index_and_missing_values():
    key = b"k" * 32
    s = pd.Series(["a", None, "c"], index=[10, 11, 12], name="customer_id")
    out = pseudonymize_series(s, key)
    assert out.index.tolist() == [10, 11, 12] and out.name == "customer_id"
    assert out.tolist() == [pseudonym("a", key), None, pseudonym("c", key)]
    ints = pseudonymize_series(pd.Series([1, 2], dtype="Int64").astype(object), key)
    assert ints.tolist() == [pseudonym(1, key), pseudonym(2, key)]


# --------------------------------------------------------------------------------------------------
# the scanner


def demo_like(n: int) -> tuple[list[str], list[str], list[str]]:
    ids = [f"CUST-{i + 1:07d}" for i in range(n)]
    emails = [f"ann.lee.{i + 1}@example.com" for i in range(n)]
    handles = [f"@annlee{i + 1:x}" for i in range(n)]
    return ids, emails, handles


def test_the_scanner_finds_identifiers_in_every_usual_context(tmp_path):
    ids, emails, handles = demo_like(100)
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"x": ids[0], "list": f"{ids[1]},{ids[2]}", "mail": f"mailto:{emails[3]}."}))
    g = tmp_path / "sub" / "b.html"
    g.parent.mkdir()
    g.write_text(f"<td>{handles[4]}</td> reply to {handles[5]}: ok <a href='https://x.test/?u={ids[6]}'>")
    h = tmp_path / "clean.txt"
    h.write_text("CUST-00000011 is not an id of the set; nor is xCUST-0000001y glued inside a word")
    found = scan_for_identifiers([tmp_path], set(ids + emails + handles))
    assert found == [
        (f, ids[0]), (f, ids[1]), (f, ids[2]), (f, emails[3]),
        (g, handles[4]), (g, handles[5]), (g, ids[6]),
    ]  # fmt: skip


def test_the_scanner_reads_sqlite_values_split_across_pages(tmp_path):
    ids, _, _ = demo_like(10)
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE params (key TEXT, value TEXT)")
    # a long value spills into overflow pages; the id straddles a page boundary in the raw bytes
    for pad in range(0, 4200, 7):
        con.execute("INSERT INTO params VALUES (?, ?)", (f"k{pad}", "." * pad + ids[3] + "." * 50))
    con.commit()
    con.close()
    assert scan_for_identifiers([db], set(ids)) == [(db, ids[3])]


def test_the_scanner_finds_digests_and_keys(tmp_path):
    secret = "f" * 64
    digest = hashlib.sha256(b"CUST-0000001").hexdigest()
    f = tmp_path / "run.log"
    f.write_text(f"key={secret}\nrow {digest} done\n")
    assert scan_for_identifiers([f], {secret, digest, "never-there"}) == [(f, digest), (f, secret)]


def test_the_scanner_is_fast_for_sixty_thousand_identifiers(tmp_path):
    ids, emails, handles = demo_like(20_000)
    identifiers = set(ids + emails + handles)
    # ~3 MB of JSON and text without identifiers, with a few planted
    noise = json.dumps([{"metric": f"m{i}.arm.lift", "value": i * 0.001, "note": "mailto:nobody@example.org"}
                        for i in range(30_000)])  # fmt: skip
    f = tmp_path / "big.json"
    f.write_text(noise[:1_500_000] + f' "{emails[19_999]}" ' + noise[1_500_000:] + f"<{handles[7]}>")
    started = time.perf_counter()
    found = scan_for_identifiers([f], identifiers)
    elapsed = time.perf_counter() - started
    assert found == [(f, handles[7]), (f, emails[19_999])]
    assert elapsed < 5, elapsed


def test_the_pattern_scanner_finds_shapes_in_files_and_in_sqlite_values_split_across_pages(tmp_path):
    import re

    email = re.compile(rb"[a-z]+\.[a-z]+\.[0-9]+@example\.(?:com|org|net)")
    hexrun = re.compile(rb"[0-9a-f]{16,}")
    digest = hashlib.sha256(b"CUST-0000042").hexdigest()
    f = tmp_path / "run" / "notes.html"
    f.parent.mkdir()
    f.write_text(f"<td>mailto:ada.berg.17@example.org</td> owner lab-team@example.com x{digest}y")
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE tags (key TEXT, value TEXT)")
    for pad in range(0, 4200, 7):  # a long value spills into overflow pages, so the raw bytes split it
        con.execute(
            "INSERT INTO tags VALUES (?, ?)", (f"k{pad}", "." * pad + "mei.wang.9@example.net" + "." * 50)
        )
    con.commit()
    con.close()
    (tmp_path / "clean.txt").write_text("lab-team@example.com, run 0123456789abcde (15 hex)")
    found = scan_for_patterns([tmp_path], {"email": email, "hex": hexrun})
    assert found == [
        (db, "email", b"mei.wang.9@example.net"),
        (f, "email", b"ada.berg.17@example.org"),
        (f, "hex", digest.encode()),
    ]
