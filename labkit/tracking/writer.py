"""Recording runs: the write side of ``Tracker`` (``store.Tracker`` is a ``RunWriter``).

A run is created RUNNING with its owner's tags, logged within MLflow's limits (``rules``), marked
``labkit.recorded`` and ended FINISHED, FAILED or KILLED; ``labkit.latest`` is then settled from the store.
``record`` is idempotent on the run key; ``sweep_stale`` ends runs nobody will finish; ``record_portfolio``
logs `labkit compare --log`'s report as a run that is no pilot's. The ``labkit.tracking`` docstring says
why each rule holds.

``RunWriter`` is a mixin: it uses the host's ``prepare``, ``_client``, ``experiment_id``, ``warnings``,
``_call``, ``_error``, ``_locked``, ``_search`` and ``_pilot_filter`` (all in ``store.Tracker``).
"""

from __future__ import annotations

import json
import random
import re
import socket
import tempfile
import time
from pathlib import Path

from labkit.errors import TrackingError
from labkit.tracking.owners import STALE_AFTER_HOURS, stale_reason, this_process
from labkit.tracking.record import (
    NOTE,
    RESERVED_TAGS,
    TAG_BY,
    TAG_DIGEST,
    TAG_ERROR,
    TAG_KIND,
    TAG_LATEST,
    TAG_LOOK,
    TAG_PARAMS_SPLIT,
    TAG_PILOT,
    TAG_RECORDED,
    TAG_RUN_KEY,
    TAG_SWEPT,
    RunRecord,
)
from labkit.tracking.rules import (
    MAX_DATASET_DIGEST,
    MAX_DATASET_NAME,
    MAX_INPUT_TAG_VALUE,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    artifact_dir,
    batches,
    check_tags,
    checked_history,
    checked_metrics,
    ms,
    note_of,
    quote,
    redact,
    split_params,
)

LATEST_ATTEMPTS = 6
PORTFOLIO = "portfolio"  # the labkit.kind of a `labkit compare --log` run


class RunWriter:
    """Creating, logging, ending and flagging runs (mixed into ``store.Tracker``)."""

    # ---------------------------------------------------------------- one run

    def start(
        self, pilot: str, run_name: str, run_key: str, tags: dict, *, started_at: float | None = None
    ) -> str:
        """Create the run RUNNING with labkit's identity tags; returns its id."""
        self.prepare()
        quote(pilot)
        quote(run_key)
        given = {str(k): str(v) for k, v in tags.items() if k not in RESERVED_TAGS}
        own = {TAG_PILOT: pilot, TAG_RUN_KEY: run_key, TAG_LATEST: "false", **this_process()}
        all_tags = given | own
        check_tags(all_tags)
        run = self._call(
            "creating a run", self._client.create_run, self.experiment_id, start_time=ms(started_at),
            tags=all_tags, run_name=run_name,
        )  # fmt: skip
        return run.info.run_id

    def finish(self, run_id: str, record: RunRecord) -> None:
        """Log everything the record holds, set its status, then settle ``labkit.latest`` for the pilot.

        Any exception before the status is set leaves the run FAILED (KILLED on KeyboardInterrupt or
        SystemExit) and raises a TrackingError; a failure while settling the latest flag afterwards raises
        a TrackingError but leaves the (complete) run as recorded.
        """
        self.prepare()
        try:
            self._log(run_id, record)
            self._call(
                "setting the run status", self._client.set_terminated, run_id, status=record.status,
                end_time=ms(record.ended_at),
            )  # fmt: skip
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
            error = exc if isinstance(exc, TrackingError) else self._error("recording the run", exc)
            # An unreachable server will not take the FAILED status either: do not wait for it twice more.
            reachable = not getattr(error, "unreachable", False)
            marked = reachable and self._mark_ended(
                run_id, "KILLED" if interrupted else "FAILED", error.message
            )
            if interrupted:
                raise
            if not marked:
                error = TrackingError(
                    f"{error.message}; the run could not be marked FAILED either and stays RUNNING until "
                    "the next `labkit run` sweeps it"
                )
            raise error from exc
        self._settle_latest(record.pilot)

    def abandon(self, run_id: str, status: str, reason: str) -> bool:
        """End a run that will not be recorded (its notebook could not run or be saved) as ``status``, with
        ``reason`` in ``labkit.error``; best effort, True when the store accepted it."""
        return self._mark_ended(run_id, status, reason)

    def _mark_ended(self, run_id: str, status: str, reason: str) -> bool:
        """Best effort: end a run that could not be recorded; True when the store accepted it."""
        from mlflow.entities import RunTag

        try:
            self._client.log_batch(run_id, tags=[RunTag(TAG_ERROR, reason[:MAX_TAG_VALUE])])
        except Exception:
            pass
        try:
            self._client.set_terminated(run_id, status=status)
            return True
        except Exception:
            return False

    def _log(self, run_id: str, record: RunRecord) -> None:
        from mlflow.entities import RunTag

        run = self._call("reading the run", self._client.get_run, run_id)
        owner = run.data.tags.get(TAG_PILOT)
        if owner != record.pilot:
            raise TrackingError(f"run {run_id} belongs to pilot '{owner}', not to '{record.pilot}'")

        key = run.data.tags.get(TAG_RUN_KEY)
        if key != record.run_key:
            raise TrackingError(f"run {run_id} was started for run key '{key}', not '{record.run_key}'")
        params, split = split_params(record.params)
        given = {k: v for k, v in record.tags.items() if k not in RESERVED_TAGS}
        tags = {**given, TAG_PILOT: record.pilot, TAG_RUN_KEY: record.run_key}
        if split:
            tags[TAG_PARAMS_SPLIT] = ",".join(split)
            self.warnings.append(
                f"{record.pilot}: param(s) {', '.join(split)} longer than {MAX_PARAM_VALUE} characters were "
                f"logged in parts (<key>.part1of<n> …); their concatenation is the value"
            )
        note, note_overflow, warning = note_of(record.description, record.pilot)
        if warning is not None:
            self.warnings.append(warning)
        if note is not None:
            tags[NOTE] = note
        check_tags(tags)
        metrics = checked_metrics(record.metrics)
        history = checked_history(record.history)

        # Params are immutable in MLflow and metrics keep a history: log only what is not there yet.
        have_params, have_metrics = run.data.params, run.data.metrics
        clash = sorted(k for k, v in params.items() if k in have_params and have_params[k] != v)
        if clash:
            raise TrackingError(f"run {run_id} already holds other values for param(s) {', '.join(clash)}")
        stamp = ms(record.ended_at) or int(time.time() * 1000)
        self._log_batches(
            run_id, {k: v for k, v in params.items() if k not in have_params},
            {k: v for k, v in tags.items() if run.data.tags.get(k) != v},
            {k: v for k, v in metrics.items() if have_metrics.get(k) != v}, stamp, "logging params, metrics and tags",
            history=self._missing_history(run_id, history, have_metrics),
        )  # fmt: skip

        self._log_artifacts(run_id, record, note_overflow)
        self._log_datasets(run_id, record)
        self._call(
            "marking the run recorded", self._client.log_batch, run_id, tags=[RunTag(TAG_RECORDED, "true")]
        )

    def _log_batches(
        self, run_id: str, params: dict, tags: dict, metrics: dict, stamp: int, what: str, history=()
    ) -> None:
        """Params, tags, metrics (at step 0, ``stamp``) and metric-history points in as many ``log_batch``
        calls as MLflow's limits need (``rules.batches``)."""
        from mlflow.entities import Metric, Param, RunTag

        points = [Metric(p["key"], p["value"], p["timestamp"], p["step"]) for p in history]
        for batch in batches(
            [Param(k, v) for k, v in params.items()],
            [RunTag(k, v) for k, v in tags.items()],
            [Metric(k, v, stamp, 0) for k, v in metrics.items()] + points,
        ):
            self._call(what, self._client.log_batch, run_id, **batch)

    def _missing_history(self, run_id: str, points: list[dict], have_metrics: dict) -> list[dict]:
        """The history points the run does not hold yet: a partial run finished again logs each day once.
        Only keys the run already has are read back (none on a new run)."""
        held: set[tuple] = set()
        for key in sorted({p["key"] for p in points} & set(have_metrics)):
            for m in self._call("reading a metric history", self._client.get_metric_history, run_id, key):
                held.add((key, m.step, m.timestamp, m.value))
        return [p for p in points if (p["key"], p["step"], p["timestamp"], p["value"]) not in held]

    def _log_artifacts(self, run_id: str, record: RunRecord, note_overflow: str | None) -> None:
        planned: dict[str, Path] = {}
        for name in record.artifacts:
            path = Path(name)
            if not path.exists():
                raise TrackingError(f"artifact {path} of run {record.run_key} does not exist")
            folder = artifact_dir(path)
            target = f"{folder}/{path.name}" if folder and path.name != folder else (folder or path.name)
            if target in planned:
                raise TrackingError(
                    f"artifacts {planned[target]} and {path} would both be stored as '{target}'"
                )
            planned[target] = path
        for target, path in planned.items():
            folder = target.rsplit("/", 1)[0] if "/" in target else None
            if path.is_dir():
                self._call("uploading artifacts", self._client.log_artifacts, run_id, str(path), target)
            else:
                self._call("uploading artifacts", self._client.log_artifact, run_id, str(path), folder)
        if note_overflow is not None:
            self._call(
                "uploading the description", self._client.log_text, run_id, note_overflow, "description.md"
            )

    def _log_datasets(self, run_id: str, record: RunRecord) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for item in record.datasets:
            name, digest = str(item.get("name") or ""), str(item.get("digest") or "")
            if not name or not digest or len(name) > MAX_DATASET_NAME:
                raise TrackingError(
                    f"dataset {item!r} needs a name (≤{MAX_DATASET_NAME} characters) and a digest"
                )
            source = redact(str(item.get("source") or name))
            profile = {"digest": digest, **({"rows": item["rows"]} if item.get("rows") is not None else {})}
            tags = [InputTag("mlflow.data.context", "analysis")]
            if len(digest) > MAX_DATASET_DIGEST:
                tags.append(InputTag(TAG_DIGEST, digest[:MAX_INPUT_TAG_VALUE]))
            dataset = Dataset(
                name=name, digest=digest[:MAX_DATASET_DIGEST], source_type=str(item.get("source_type", "labkit")),
                source=json.dumps({"uri": source}), schema=None, profile=json.dumps(profile),
            )  # fmt: skip
            inputs.append(DatasetInput(dataset=dataset, tags=tags))
        if not inputs:
            return
        # Two runs logging the same new dataset at once collide on MLflow's unique dataset row (a UNIQUE
        # constraint on sqlite, BAD_REQUEST over http): serialise on a local store, and retry once —
        # the second attempt finds the row the other run created.
        for attempt in (1, 2):
            try:
                with self._locked():
                    self._call("logging datasets", self._client.log_inputs, run_id, datasets=inputs)
                return
            except TrackingError as exc:
                if attempt == 2 or not re.search(r"UNIQUE|unique|IntegrityError|BAD_REQUEST", str(exc)):
                    raise
                time.sleep(0.2 + random.random() * 0.5)

    # ---------------------------------------------------------------- latest flag

    def _newest_finished(self, pilot: str):
        """The pilot's FINISHED run with the latest look (``labkit.look``: a run ``--as-of`` an earlier date
        looked back, and does not take the flag from a run that looked later), then the latest start; ties
        go to the later end, then the larger run id. A run without the tag (recorded by a labkit before it)
        comes after every run with one (MLflow orders a missing tag last).

        The store orders and returns that one run: MLflow loads every tag, param and metric of each run a
        search returns (~100 rows a run), so reading a page of candidates to pick one in Python cost ~0.2 s
        of the recording thread per pilot with a few dozen runs of history (twice per settle)."""
        runs = self._search(
            f"{self._pilot_filter(pilot)} and attributes.status = 'FINISHED'",
            order_by=[
                f"tags.`{TAG_LOOK}` DESC", "attributes.start_time DESC", "attributes.end_time DESC",
                "attributes.run_id DESC",
            ],
            max_results=1,
        )  # fmt: skip
        return runs[0] if runs else None

    def _settle_latest(self, pilot: str) -> None:
        """Make ``labkit.latest`` true on the pilot's newest FINISHED run and false on all others."""
        for attempt in range(LATEST_ATTEMPTS):
            with self._locked():
                newest = self._newest_finished(pilot)
                newest_id = newest.info.run_id if newest else None
                flagged = self._search(f"{self._pilot_filter(pilot)} and tags.`{TAG_LATEST}` = 'true'")
                if newest is not None and newest.data.tags.get(TAG_LATEST) != "true":
                    self._call("setting labkit.latest", self._client.set_tag, newest_id, TAG_LATEST, "true")
                for run_id in {r.info.run_id for r in flagged} - {newest_id}:
                    self._call("clearing labkit.latest", self._client.set_tag, run_id, TAG_LATEST, "false")
                # Re-read: a concurrent recorder may have acted on an older view of the store.
                again = self._newest_finished(pilot)
                flagged = self._search(f"{self._pilot_filter(pilot)} and tags.`{TAG_LATEST}` = 'true'")
                want = {again.info.run_id} if again else set()
                if {r.info.run_id for r in flagged} == want:
                    return
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
        self.warnings.append(
            f"{pilot}: labkit.latest did not settle under concurrent recording; record again"
        )

    # ---------------------------------------------------------------- whole runs

    def record(self, record: RunRecord) -> str:
        """Start and finish one run, idempotent on ``record.run_key``; returns the run id."""
        self.prepare()
        with self._locked():  # on a local store, two recorders of one key cannot both create a run
            runs = self._search(
                f"tags.`{TAG_RUN_KEY}` = {quote(record.run_key)}", order_by=["attributes.start_time ASC"]
            )
            done = [r for r in runs if r.data.tags.get(TAG_RECORDED) == "true" and r.info.status != "RUNNING"]
            if not done:
                run_id = self._resume(runs[0].info.run_id) if runs else None
                run_id = run_id or self.start(
                    record.pilot, record.run_name, record.run_key, record.tags, started_at=record.started_at
                )
        if done:  # recorded before; settling the flag again repairs a recorder interrupted after the status
            self._settle_latest(record.pilot)
            return done[0].info.run_id
        self.finish(run_id, record)
        return run_id

    def _resume(self, run_id: str) -> str:
        """Take over a partial run of this key (owner tags -> this process), so no sweep kills it mid-way."""
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in this_process().items()]
        self._call("taking over the run", self._client.log_batch, run_id, tags=tags)
        return run_id

    def sweep_stale(self, *, max_age_hours: float = STALE_AFTER_HOURS) -> list[str]:
        """RUNNING labkit runs that nobody will finish -> KILLED; returns their ids (``owners.stale_reason``).

        A run of this host is stale when its process is gone (or the pid now belongs to another process);
        a run of another host when it has been RUNNING for more than ``max_age_hours``.
        """
        host = socket.gethostname()
        now = time.time()
        swept = []
        for run in self._search(f"attributes.status = 'RUNNING' and tags.`{TAG_PILOT}` LIKE '%'"):
            reason = stale_reason(
                run.data.tags, run.info.start_time / 1000, now=now, host=host, max_age_hours=max_age_hours
            )
            if reason is None:
                continue
            self._call("sweeping a stale run", self._client.set_tag, run.info.run_id, TAG_SWEPT, reason)
            self._call("sweeping a stale run", self._client.set_terminated, run.info.run_id, status="KILLED")
            swept.append(run.info.run_id)
        return swept

    # ---------------------------------------------------------------- portfolio runs

    def record_portfolio(
        self, *, by: str, note: str, params: dict[str, str], metrics: dict[str, float], files: dict[str, str]
    ) -> str:
        """Record `labkit compare --log`'s report as one FINISHED run tagged ``labkit.kind=portfolio`` and no
        ``labkit.pilot`` (so it never counts as a pilot: ``latest_runs`` and the sweep only read pilot runs);
        ``files``: artifact name -> text. Within MLflow's limits like any run (``rules``); any failure ends
        it FAILED and raises a TrackingError. Returns its id."""
        self.prepare()
        client = self._client
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        tags = {TAG_KIND: PORTFOLIO, TAG_BY: by, NOTE: note}
        check_tags(tags)
        run = self._call(
            "creating the portfolio run", client.create_run, self.experiment_id,
            run_name=f"portfolio by {by} {stamp}", tags=tags,
        )  # fmt: skip
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            logged, split = split_params(params)
            if split:
                client.set_tag(run_id, TAG_PARAMS_SPLIT, ",".join(split))
            self._log_batches(
                run_id, logged, {}, checked_metrics(metrics), now, "recording the portfolio run"
            )
            with tempfile.TemporaryDirectory() as folder:
                for name, text in files.items():
                    (Path(folder) / name).write_text(text, encoding="utf-8")
                for name in files:
                    client.log_artifact(run_id, str(Path(folder) / name))
            client.set_terminated(run_id, status="FINISHED")
        except BaseException as exc:
            try:
                client.set_terminated(run_id, status="FAILED")
            except Exception:
                pass
            if isinstance(exc, Exception) and not isinstance(exc, TrackingError):
                raise self._error("recording the portfolio run", exc) from exc
            raise
        return run_id
