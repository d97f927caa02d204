"""The bytes of a pilot or lab file: the size limit, read before a byte is; UTF-8, with the line and
column of a bad byte or a NUL. Every problem is a ``SpecErrors`` of one ``SpecError`` naming the file."""

from __future__ import annotations

import codecs
import os
import re
import stat

from labkit.errors import SpecError, SpecErrors

MAX_BYTES = 1_000_000
_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")  # the line breaks PyYAML counts in its marks


def too_big(name: str, size: int, exact: bool = True) -> SpecErrors:
    what = f"{size:,} bytes" if exact else f"more than {MAX_BYTES:,} bytes"
    return SpecErrors([SpecError(name, None, "", f"the file is {what}; the limit is {MAX_BYTES:,} bytes")])


def read_file(path: str | os.PathLike, name: str) -> bytes:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise SpecErrors([SpecError(name, None, "", "not a regular file; give a .yaml file")])
        if info.st_size > MAX_BYTES:
            raise too_big(name, info.st_size)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)  # the file may have grown since the stat
    except OSError as exc:
        raise SpecErrors(
            [SpecError(name, None, "", f"cannot read the file: {exc.strerror or exc}")]
        ) from None
    if len(raw) > MAX_BYTES:
        raise too_big(name, len(raw), exact=False)
    return raw


def encoded(text: str | bytes, name: str) -> bytes:
    if isinstance(text, str):
        try:
            text = text.encode("utf-8", "surrogateescape")  # undo a lossless decode of bad bytes
        except UnicodeEncodeError:
            text = text.encode("utf-8", "surrogatepass")  # keeps a lone surrogate as an invalid sequence
    if len(text) > MAX_BYTES:
        raise too_big(name, len(text))
    return bytes(text)


def decoded(raw: bytes, name: str) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        bom = " ".join(f"0x{b:02x}" for b in raw[:2])
        message = f"not valid UTF-8: the file is UTF-16 (byte-order mark {bom}); save it as UTF-8 text"
        raise SpecErrors([SpecError(name, 1, "", message, 1)])
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        text = raw.decode("utf-8")
        bad = len(raw)
    except UnicodeDecodeError as exc:
        text = None
        bad = exc.start
    nul = raw.find(b"\x00", 0, bad)
    if text is not None and nul < 0:
        return text
    at = nul if nul >= 0 else bad
    what = "NUL byte 0x00" if nul >= 0 else f"byte 0x{raw[at]:02x}"
    before = raw[:at].decode("utf-8")
    line, column = line_col(before, len(before))
    raise SpecErrors(
        [SpecError(name, line, "", f"not valid UTF-8: {what}; save the file as UTF-8 text", column)]
    )


def line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counting line breaks the way PyYAML does."""
    line, start = 1, 0
    for match in _BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1
