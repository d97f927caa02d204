"""Writing files so that readers never see half of one: the one ``write_atomic`` of labkit.

Every file labkit writes for a reader who may look at any moment (assignments, notebooks, stores,
caches, the demo's data) goes through a temporary file in the same folder and one ``os.replace``:
a reader sees the old file or the new one, never a prefix. New files get the usual mode, 0666 less
the umask (labkit's file-mode policy, README "Guarantees"); only the pseudonym key is private (0600),
and its writer passes ``mode=0o600``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_folder() -> Path:
    """labkit's cache folder, outside any lab: ``$LABKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/labkit``, else
    ``~/.cache/labkit`` (the data digests, labkit.data.rawfiles; the empty MLflow store, labkit.tracking.schema).
    Everything in it is rebuilt when missing or unusable."""
    if os.environ.get("LABKIT_CACHE_DIR"):
        return Path(os.environ["LABKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "labkit"


def usual_file_mode() -> int:
    """The mode any new file gets here: 0666 less the umask (0644 under the usual 022).

    The umask is read from /proc: the only portable way, ``os.umask``, sets it for a moment, and a file
    another thread creates in that moment misses it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return 0o666 & ~mask  # pragma: no cover


def usual_dir_mode() -> int:
    """The mode a new folder gets here: 0777 less the umask."""
    return (usual_file_mode() | 0o111) & 0o777


def write_atomic(
    target: Path,
    data: str | bytes | Callable[[Path], object],
    *,
    mode: int | None = None,
    fsync: bool = True,
) -> None:
    """Write ``data`` to ``target`` through a temporary sibling file and a rename.

    ``data`` is text (UTF-8), bytes, or a function that writes the temporary path itself (for writers
    such as DuckDB's COPY or pandas that want a file name). The file gets ``mode`` (default: the usual
    mode, not mkstemp's 0600, which would stick to the file). On any failure — a full disk, a signal —
    the temporary file is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, usual_file_mode() if mode is None else mode)
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            if mode is not None or tmp.stat().st_mode & 0o777 != usual_file_mode():
                os.chmod(tmp, usual_file_mode() if mode is None else mode)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else data
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(payload)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
