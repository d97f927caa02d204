"""Each run of a pilot gets a folder of its own, named by the UTC time to the microsecond
(labkit.pipeline.one.claim_run_folder).

Two `labkit run <pilot>` released by one lock read the same microsecond on an idle machine (one xdist worker
running the whole suite): the second was refused ("cannot create the run folder …: File exists; nothing was
run"). mkdir now decides which process owns a name and the other takes the next stamp."""

from __future__ import annotations

import datetime as dt
import threading

from labkit.pipeline import one


def test_a_stamp_taken_by_another_run_gives_the_next_one(tmp_path, monkeypatch):
    runs = tmp_path / "results" / "p" / "runs"
    (runs / "20261207T140723568661Z").mkdir(parents=True)  # another process's run of the same microsecond
    stamps = iter(["20261207T140723568661Z", "20261207T140723568661Z", "20261207T140723568662Z"])
    monkeypatch.setattr(one, "_stamp", lambda: next(stamps))  # the clock, read three times
    stamp, folder = one.claim_run_folder(runs)
    assert (stamp, folder) == ("20261207T140723568662Z", runs / stamp) and folder.is_dir()
    assert sorted(p.name for p in runs.iterdir()) == ["20261207T140723568661Z", stamp]


def test_runs_claimed_at_once_each_get_their_own_folder(tmp_path, monkeypatch):
    # eight threads claiming at once on a clock read to the millisecond: most claims clash, mkdir decides
    def millisecond():
        return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")[:-3] + "000Z"

    monkeypatch.setattr(one, "_stamp", millisecond)
    runs, claimed, errors = tmp_path / "runs", [], []
    start = threading.Barrier(8)

    def claim():
        start.wait()
        try:
            claimed.extend(one.claim_run_folder(runs) for _ in range(10))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({stamp for stamp, _ in claimed}) == len(claimed) == 80
    assert sorted(p.name for p in runs.iterdir()) == sorted(stamp for stamp, _ in claimed)
