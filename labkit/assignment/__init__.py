"""A pilot's cohort and arms: drawn by keyed hashing or imported, written once, atomically, never silently
redrawn.

An assignment is drawn once. New customers added to the source later, or rows reordered, leave the
written file as it is; a redraw (``force=True``) over a changed population ranks the customers anew,
so some of them may change arm — which is why labkit never redraws without being told to.

The package, one job a module:

    draw.py       the keyed-hash draw (``method: keyed-hash-largest-remainder/1``): the rule, exactly
    cluster_rule.py  the cluster draw's rule (``cohort.unit_column``, ``saturation``), in plain Python
    clusters.py   the cluster draw in the engine (``method: keyed-hash-cluster-largest-remainder/1``)
    imported.py   assignments a channel tool drew (``cohort.assignment``, ``method: imported/1``)
    store.py      the files in ``results/<id>/`` and their metadata: read, written atomically, archived
    locks.py      ``assignment.lock``: one draw of a pilot at a time; a dead process's lock reclaimed

``assign`` below is the recipe that joins them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.assignment.cluster_rule import CLUSTER_METHOD, draw_clusters
from labkit.assignment.clusters import cluster_table
from labkit.assignment.draw import METHOD, NULL_LABEL, US, allocate, drawn_table, stratum_key
from labkit.assignment.imported import IMPORTED_METHOD, imported_table
from labkit.assignment.locks import Claim
from labkit.assignment.store import (
    FORMAT,
    Assignment,
    assignment_path,
    current,
    load_assignment,
    metadata_path,
    sweep_temporaries,
    write,
)

if TYPE_CHECKING:  # pragma: no cover
    from labkit.data.sources import Engine
    from labkit.spec import Pilot

__all__ = [
    "CLUSTER_METHOD",
    "FORMAT",
    "IMPORTED_METHOD",
    "METHOD",
    "NULL_LABEL",
    "US",
    "Assignment",
    "allocate",
    "assign",
    "assignment_path",
    "cluster_table",
    "draw_clusters",
    "drawn_table",
    "imported_table",
    "load_assignment",
    "metadata_path",
    "stratum_key",
]


def assign(pilot: Pilot, *, force: bool = False, engine: Engine | None = None) -> Assignment:
    """Draw the pilot's cohort and arms and write them once; an existing, current assignment is returned as is.

    A cohort (or salt) changed since the draw is refused, naming what changed, unless ``force``: then the
    old assignment is archived under ``results/<id>/archive/<UTC time>/`` and the cohort is drawn anew.
    """
    if not force:
        written = current(pilot)
        if written is not None:
            return written
    folder = pilot.results_dir
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _draw_and_write(pilot, force, engine)
    except BaseException:
        for d in created:  # a failed first draw leaves results/ as it found it
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _draw_and_write(pilot: Pilot, force: bool, engine: Engine | None) -> Assignment:
    """Under the lock: the rows (drawn, or imported) and their files; the engine is closed if opened here."""
    with Claim(pilot) as claim:
        if not force:
            written = current(pilot)  # a racer may have finished between our check and our claim
            if written is not None:
                return written
        sweep_temporaries(pilot.results_dir)
        own = engine is None
        if own:
            from labkit.data.sources import Engine

            engine = Engine.for_lab(pilot.lab)
        try:
            engine.bind(pilot)
            # the names are looked up at each call: a test slows the draw through labkit.assignment.drawn_table
            c = pilot.spec.cohort
            rows = drawn_table if c.unit_column is None else cluster_table
            rows = imported_table if c.assignment is not None else rows
            expr, meta = rows(engine, pilot)
            write(pilot, engine, expr, meta, force=force, reclaimed=claim.reclaimed)
        finally:
            if own:
                engine.close()
    return load_assignment(pilot)
