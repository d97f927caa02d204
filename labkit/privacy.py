"""Customer identifiers leave the lab's own files only as keyed pseudonyms; the scanner tests use.

**The key.** ``lab_key(lab)`` is the UTF-8 text (surrounding whitespace stripped) of the environment
variable named by ``privacy.key_env`` in configs/lab.yaml (``LABKIT_ID_KEY`` by default). When that
variable is unset, the lab keeps its own key in ``results/.labkit-id-key``: 64 random hex characters,
created once with mode 0600 (created exclusively, so two processes starting at once end up with the same
key), with a one-line notice on stderr the first time. The file is read by the same rule as the variable,
so copying its content into ``LABKIT_ID_KEY`` gives the same pseudonyms. The key is never printed,
logged or written anywhere else, and is never the assignment salt (which sits in the pilot file).

**A pseudonym** is ``HMAC-SHA256(key, text(customer_id))``, hex, its first 16 characters (64 bits: for
ten million customers the chance that two share a pseudonym is about 3 in a million). ``text(id)`` is a
string as it is and an integer in decimal (a float holding an integer, as pandas makes of an integer
column with nulls, counts as that integer). A plain hash of an id would be reversible by hashing every
candidate id; the keyed hash is not, without the key.

**The scanner** (``scan_for_identifiers``) reads files as bytes and reports which of a set of identifiers
(ids, emails, handles, URLs, digests) occur in which file. It finds an identifier wherever it stands
delimited by a character that appears in no identifier (quotes, spaces, commas, ``<>=``...) or by
punctuation that identifiers contain (``. @ - : /``...), e.g. inside ``"mailto:ann.lee.7@example.com"``;
it does not find one glued to letters or digits (``xCUST-0000001``, or inside a base64 blob). SQLite files (an
MLflow store) are also read table by table, so a long value split across database pages is still found.
``scan_for_patterns`` reads the same files for *shapes* (byte regexes: any email of the demo's form, any
hex run to look up in a set of hashes), where the set of values is not known or too large to list.

**Redaction** (``redactor``, ``cohort_redactor``): text that leaves the lab — a notebook's error output
and a run's message, before they are saved or logged (``labkit.runner``) — has every id of the pilot's
cohort, and every token of their shape (``id_shapes``), replaced by ``<customer id>``.
"""

from __future__ import annotations

import hashlib
import hmac
import numbers
import os
import re
import secrets
import sqlite3
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from labkit._files import write_atomic
from labkit.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from labkit.lab import Lab

KEY_FILE = ".labkit-id-key"
MIN_KEY_CHARS = 16
PSEUDONYM_CHARS = 16


# ------------------------------------------------------------------------------------------ the key


def key_path(lab: Lab) -> Path:
    return lab.results_dir / KEY_FILE


def lab_key(lab: Lab) -> bytes:
    """The lab's pseudonym key: ``$<privacy.key_env>``, else ``results/.labkit-id-key`` (created once)."""
    env = lab.spec.privacy.key_env
    value = os.environ.get(env)
    if value is not None and value.strip():
        return _checked(value, f"${env}")
    path = key_path(lab)
    if not path.exists():
        _create_key_file(path, env)
    try:
        if path.stat().st_mode & 0o077:
            sys.stderr.write(
                f"labkit: warning: the pseudonym key {lab.display(path)} is readable by others; "
                f"chmod 600 {lab.display(path)}\n"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        from labkit._validation import unlocated  # pydantic, only on this error path

        raise unlocated(
            f"cannot read the pseudonym key {lab.display(path)}: {type(exc).__name__}", file=lab.display(path)
        ) from None
    return _checked(text, lab.display(path))


def _checked(text: str, where: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_KEY_CHARS:
        # Only the length is shown: the key itself never appears in a message.
        from labkit._validation import unlocated  # pydantic, only on this error path

        raise unlocated(
            f"the pseudonym key in {where} is {len(key)} characters long; use at least {MIN_KEY_CHARS} "
            "random characters, e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))'",
            file=where,
        )
    return key.encode("utf-8")


def _create_key_file(path: Path, env: str) -> None:
    """Write a fresh key to ``path`` unless someone else already did; readers never see a partial key.

    The key is written whole, 0600, to a name of this process's own (``write_atomic``), then linked to
    ``path``: link() creates the name only if it is absent (like O_EXCL), so of processes starting at once
    exactly one creates the key and all of them use it — a rename would let a later one replace a key an
    earlier one has already used."""
    staged = path.with_name(f"{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.new")
    try:
        write_atomic(staged, secrets.token_hex(32) + "\n", mode=0o600)
        try:
            os.link(staged, path)
        except FileExistsError:
            return  # another process created the key first: everyone uses that one
        except OSError:
            if not _create_key_file_excl(path, staged.read_bytes()):
                return
    finally:
        staged.unlink(missing_ok=True)
    sys.stderr.write(
        f"labkit: created the lab's pseudonym key {path.name} in {path.parent} (mode 0600); "
        f"keep it with the lab's results, or set ${env}\n"
    )


def _create_key_file_excl(path: Path, content: bytes) -> bool:
    """Fallback for file systems without hard links: O_CREAT|O_EXCL, mode 0600; False if it existed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    return True


# ------------------------------------------------------------------------------------------ pseudonyms


def id_text(customer_id) -> str:
    """The text an id is hashed as: a string as it is, an integer in decimal."""
    if isinstance(customer_id, bytes):
        return customer_id.decode("utf-8")
    if isinstance(customer_id, str):
        return customer_id
    if isinstance(customer_id, bool):
        raise DataError(None, "a customer id cannot be true/false")
    if isinstance(customer_id, numbers.Integral):  # int and numpy integers
        return str(int(customer_id))
    if isinstance(customer_id, numbers.Real):
        if float(customer_id).is_integer():
            return str(int(customer_id))
        raise DataError(None, "a customer id must be text or an integer, not a fraction")
    return str(customer_id)


def pseudonym(customer_id, key: bytes) -> str:
    """HMAC-SHA256 of the id's text under the lab key, hex, first 16 characters."""
    digest = hmac.new(key, id_text(customer_id).encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_CHARS]


def pseudonymize_series(values, key: bytes) -> pd.Series:
    """Pseudonyms of a column of ids (same index and name); a missing id stays missing."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(values)
    out = [None if _missing(v) else pseudonym(v, key) for v in series.tolist()]
    return pd.Series(out, index=series.index, name=series.name, dtype="object")


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, NaT, pd.NA
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------ the scanner


def scan_for_identifiers(paths: Iterable[str | os.PathLike], identifiers: set[str]) -> list[tuple[Path, str]]:
    """Every (file, identifier) such that the identifier occurs in the file; folders are walked.

    Fast for tens of thousands of identifiers: the bytes are cut into tokens made of the characters
    identifiers consist of, and each token — and each part of it between punctuation that identifiers
    contain, spanning no more punctuation than the most punctuated identifier — is looked up in a set.
    """
    finder = _Finder(identifiers)
    found: set[tuple[Path, str]] = set()
    for file, texts in _contents(paths):
        found.update((file, ident) for text in texts for ident in finder.find(text))
    return sorted(found, key=lambda pair: (str(pair[0]), pair[1]))


def scan_for_patterns(
    paths: Iterable[str | os.PathLike], patterns: Mapping[str, re.Pattern[bytes]]
) -> list[tuple[Path, str, bytes]]:
    """Every distinct (file, pattern name, matched bytes) of byte regexes in files; folders are walked and
    SQLite files are also read table by table, as ``scan_for_identifiers`` reads them."""
    found: set[tuple[Path, str, bytes]] = set()
    for file, texts in _contents(paths):
        for name, pattern in patterns.items():
            for text in texts:
                found.update((file, name, m.group()) for m in pattern.finditer(text))
    return sorted(found, key=lambda hit: (str(hit[0]), hit[1], hit[2]))


def _contents(paths: Iterable[str | os.PathLike]) -> Iterable[tuple[Path, list[bytes]]]:
    """(file, its texts) for every readable file of ``paths`` (folders walked): the bytes, and for a SQLite
    file also its values table by table (``_sqlite_text``)."""
    for file in _files(paths):
        try:
            data = file.read_bytes()
        except OSError:
            continue
        yield file, [data, _sqlite_text(file)] if data.startswith(b"SQLite format 3\x00") else [data]


def _files(paths: Iterable[str | os.PathLike]) -> Iterable[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.is_file())
        elif p.is_file():
            yield p


def _sqlite_text(file: Path) -> bytes:
    """Every text and blob value of every table of a SQLite file, newline-separated (read-only)."""
    chunks: list[bytes] = []
    try:
        # as a URI with the path percent-encoded: in ``file:{path}`` SQLite ends the path at ? or #
        con = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return b""
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            for row in con.execute(f"SELECT * FROM {quoted}"):  # the names come from sqlite_master
                for value in row:
                    if isinstance(value, str):
                        chunks.append(value.encode("utf-8", "surrogatepass"))
                    elif isinstance(value, bytes):
                        chunks.append(value)
    except sqlite3.Error:
        pass
    finally:
        con.close()
    return b"\n".join(chunks)


class _Finder:
    """Set lookup of identifier-shaped tokens and of runs of their elements (words and punctuation)."""

    def __init__(self, identifiers: set[str]):
        self.by_bytes = {i.encode("utf-8"): i for i in identifiers if i}
        alphabet = set(b"".join(self.by_bytes))  # the bytes that occur in any identifier
        # Letters, digits and every non-ASCII byte glue a word; the other bytes identifiers contain are
        # punctuation, each its own element; any other byte ends a token.
        glue = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") | set(
            range(0x80, 0x100)
        )
        punct = sorted(alphabet - glue)
        word = b"[" + b"".join(re.escape(bytes([c])) for c in sorted(glue)) + b"]+"
        self.token = re.compile(
            b"[" + b"".join(re.escape(bytes([c])) for c in sorted(glue | alphabet)) + b"]+"
        )
        self.punct = (
            re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in punct) + b"]") if punct else None
        )
        self.element = re.compile(word + (b"|" + self.punct.pattern if punct else b""))
        split = [self.element.findall(b) for b in self.by_bytes]
        self.first = {parts[0] for parts in split if parts}
        self.max_elements = max((len(parts) for parts in split), default=0)
        self.min_len = min((len(b) for b in self.by_bytes), default=1)
        self.max_len = max((len(b) for b in self.by_bytes), default=0)

    def find(self, data: bytes) -> set[str]:
        hits: set[str] = set()
        if not self.by_bytes:
            return hits
        lookup, first, punct = self.by_bytes, self.first, self.punct
        for tok in self.token.findall(data):
            if len(tok) < self.min_len:
                continue
            if tok in lookup:
                hits.add(lookup[tok])
            if punct is None or not punct.search(tok):
                continue
            parts = self.element.findall(tok)
            for i, part in enumerate(parts):
                if part not in first:
                    continue
                candidate = part
                if candidate in lookup:
                    hits.add(lookup[candidate])
                for nxt in parts[i + 1 : i + self.max_elements]:
                    candidate += nxt
                    if len(candidate) > self.max_len:
                        break
                    if candidate in lookup:
                        hits.add(lookup[candidate])
        return hits


# ------------------------------------------------------------------------------------------ redaction

REDACTED = "<customer id>"
_ANSI = re.compile(r"(\x1b\[[0-9;]*[A-Za-z])")
MAX_SHAPES = 64  # past it (uuids, emails: every id its own shape) only the identifiers themselves are matched


def id_shapes(identifiers: Iterable[str]) -> list[re.Pattern[str]]:
    """The shapes of a cohort's ids: each id with its runs of digits made ``\\d{n}`` (``CUST-0064243`` ->
    ``CUST-\\d{7}``), so an id of the same kind that is not in the set (a customer the cap left out, a row
    of another table) is matched too. Ids without a letter (plain numbers) give no shape — a shape of
    digits alone would match every number of a traceback — and neither do more than MAX_SHAPES shapes."""
    shapes: set[str] = set()
    for ident in identifiers:
        if not any(c.isalpha() for c in ident) or not any(c.isdigit() for c in ident):
            continue
        parts = re.split(r"(\d+)", ident)
        shapes.add("".join(f"\\d{{{len(p)}}}" if p.isdigit() else re.escape(p) for p in parts))
        if len(shapes) > MAX_SHAPES:
            return []
    edge = r"(?<![0-9A-Za-z_]){}(?![0-9A-Za-z_])"
    return [re.compile(edge.format(shape)) for shape in sorted(shapes)]


def redactor(identifiers: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces, in a text, every identifier of the set (found as the scanner finds
    them, ``scan_for_identifiers``) and every token of their shapes (``id_shapes``) by ``<customer id>``:
    the last line of defence for text that leaves the lab (a notebook's error output, a run's message)."""
    ids = {i for i in identifiers if i}
    finder = _Finder(ids)
    shapes = id_shapes(ids)

    def redact(text: str) -> str:
        if not text:
            return text
        if "\x1b" in text:  # a traceback's colours: each escape sequence delimits, as a space would
            parts = _ANSI.split(text)
            return "".join(p if i % 2 else redact(p) for i, p in enumerate(parts))
        for shape in shapes:
            text = shape.sub(REDACTED, text)
        for hit in sorted(finder.find(text.encode("utf-8", "surrogatepass")), key=len, reverse=True):
            text = re.sub(rf"(?<![0-9A-Za-z]){re.escape(hit)}(?![0-9A-Za-z])", REDACTED, text)
        return text

    return redact


def cohort_redactor(lab_path: str | os.PathLike, pilot_path: str | os.PathLike) -> Callable[[str], str]:
    """``redactor`` over a pilot's cohort (the ids of ``results/<id>/assignment.parquet``), read on first
    use: a run with no error output never reads them. Without an assignment it redacts nothing."""
    cached: list[Callable[[str], str]] = []

    def redact(text: str) -> str:
        if not cached:
            cached.append(redactor(_cohort_ids(lab_path, pilot_path)))
        return cached[0](text)

    return redact


def _cohort_ids(lab_path, pilot_path) -> set[str]:
    import pyarrow.parquet as pq

    from labkit.lab import load_lab
    from labkit.spec import load_pilot

    try:
        pilot = load_pilot(pilot_path, lab=load_lab(lab_path))
        column = pq.read_table(pilot.results_dir / "assignment.parquet", columns=["customer_id"]).column(0)
    except Exception:  # noqa: BLE001 - no cohort to read: nothing of it to redact
        return set()
    return {id_text(v) for v in column.to_pylist() if v is not None}
