"""A data file's bytes read directly, never through an engine: sha256 digests, their cache, and the
header-only CSV check.

The data digest of a run (``labkit.data_digest``) hashes every file source whole, not a sample; the cache
(``DigestCache``) spares an analysis the hashing of files that have not changed since. A CSV file that is a
header and no rows is zero rows, not an error (``header_only``, read by ``Engine.no_rows``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from labkit._files import cache_folder, write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from labkit.lab import Lab


class DigestCache:
    """sha256 of data files, remembered by each file's size, mtime, ctime and inode (git's index does the
    same) in the user's cache folder (``$XDG_CACHE_HOME/labkit/digests.json``, else
    ``~/.cache/labkit/``; ``LABKIT_CACHE_DIR`` overrides): hashing 1 GB of Parquet costs a second at every
    analysis, and a file written again — even with its mtime set back — gets a new ctime, so its digest is
    computed afresh. Outside the lab, so an analysis leaves results/ as it was; it holds file paths and
    hashes, no data. Saving is best effort (an unwritable cache only costs the next analysis its hashing)."""

    NAME = "digests.json"

    def __init__(self, path: Path, entries: dict):
        self.path, self.entries, self.changed = path, entries, False

    @classmethod
    def load(cls, lab: Lab | None = None) -> DigestCache:
        path = cache_folder() / cls.NAME
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries)

    def digest(self, path: Path) -> str:
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == stamp and isinstance(hit[4], str):
            return hit[4]
        digest = file_digest(path)
        self.entries[key], self.changed = [*stamp, digest], True
        return digest

    def save(self) -> None:
        """Written whole or not at all (``write_atomic``, without fsync: a cache lost to a crash is only
        hashed again); an unwritable folder is passed over."""
        if not self.changed:
            return
        kept = {k: v for k, v in self.entries.items() if os.path.exists(k)}  # files gone since: dropped
        try:
            write_atomic(self.path, json.dumps(kept, sort_keys=True), fsync=False)
        except OSError:
            pass


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_digest(path: Path) -> str:
    """file_digest of a file; of a folder (a Spark dataset), sha256 over its files' names and digests."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(path).as_posix()}={file_digest(file)}\n".encode())
    return h.hexdigest()


def header_only(path: Path, max_lines: int = 1000) -> bool:
    """A text file of one non-blank line (the header) followed by blank lines only."""
    with open(path, "rb") as fh:
        if not fh.readline().strip():
            return False  # no header either: left to the engine's own error
        for _ in range(max_lines):
            line = fh.readline(1 << 16)
            if not line:
                return True
            if line.strip():
                return False
    return False
