"""Strict YAML for pilot and lab files — the only module in labkit that imports PyYAML.

PyYAML's own loaders keep the last of duplicate keys, read ``no`` as False, ``0123`` as 83 and
``12:30:00`` as 45000, build ``!!python/...`` and ``!!binary`` values and expand alias bombs. Here the
parser's event stream is composed by hand instead, so that:

- a file larger than ``MAX_BYTES`` is refused from its size, before a byte is read;
- the text must be UTF-8 (a BOM is dropped); a bad byte or a NUL is reported at its line and column;
- only plain scalars, sequences and mappings exist: tags, anchors/aliases (refused at the first one,
  before anything is built), merge keys and a second document are errors;
- plain scalars are typed by the YAML 1.2 core schema, and one that YAML 1.1 would read differently
  (``no``, ``0123``, ``12:30:00``, ``1e3``, ``1_000``) is an error asking to quote it — except ISO dates,
  returned as text with their location in ``YamlDoc.implicit_dates`` for the spec layer to judge;
- keys are text and unique in every mapping.

Every problem becomes a ``SpecError(file, line, field, message)``; all of a file's scalar and key
problems are raised together as ``SpecErrors`` (whose ``partial`` then holds the document as read, for the
caller's own checks of the same pass; None after a stop), while a syntax error, an anchor or a second document
stops the pass where it stands. Events come from libyaml when PyYAML has it (ten times faster on a large file);
a file libyaml refuses is parsed again by the pure-Python parser, whose messages are the ones reported.
"""

from __future__ import annotations

import codecs
import functools
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import yaml

from labkit.errors import SpecError, SpecErrors

try:
    from yaml.cyaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None

MAX_BYTES = 1_000_000
MAX_DEPTH = 100

_YAML11_BOOLS = {"yes": True, "y": True, "on": True, "no": False, "n": False, "off": False}
# A plain scalar starting with a letter is text in both YAML versions unless it is one of these words.
_WORD = re.compile(r"[A-Za-z_]")
_SPECIAL_WORDS = {"null", "true", "false", *_YAML11_BOOLS}
_NULL = re.compile(r"~|null|Null|NULL|")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")  # the line breaks PyYAML counts in its marks

_TAG = "tag:yaml.org,2002:"
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass(frozen=True)
class YamlDoc:
    """A loaded file: plain data plus the line each location was written on.

    ``lines`` maps a location to its 1-based line: ``(..., key)`` is the key's line, ``(..., index)``
    the first line of a list item, ``()`` line 1. ``implicit_dates`` holds the locations of unquoted
    values YAML 1.1 would read as dates or timestamps; they are returned as text.
    """

    path: str
    data: Any
    lines: dict[tuple, int]
    implicit_dates: frozenset[tuple]

    def line_of(self, loc: tuple) -> int:
        """The line of ``loc``, else of its nearest ancestor that exists (a missing field -> its parent)."""
        loc = tuple(loc)
        for end in range(len(loc), 0, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return self.lines.get((), 1)


def load_yaml(
    path: str | os.PathLike, *, display: str | None = None, text: str | bytes | None = None
) -> YamlDoc:
    """Load one YAML file strictly (see the module docstring); ``text`` replaces reading ``path``."""
    name = display if display is not None else str(path)
    raw = _read(path, name) if text is None else _encoded(text, name)
    return _parse(_decode(raw, name), name)


# ---------------------------------------------------------------------------------------------- bytes


def _too_big(name: str, size: int, exact: bool = True) -> SpecErrors:
    what = f"{size:,} bytes" if exact else f"more than {MAX_BYTES:,} bytes"
    return SpecErrors([SpecError(name, None, "", f"the file is {what}; the limit is {MAX_BYTES:,} bytes")])


def _read(path: str | os.PathLike, name: str) -> bytes:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise SpecErrors([SpecError(name, None, "", "not a regular file; give a .yaml file")])
        if info.st_size > MAX_BYTES:
            raise _too_big(name, info.st_size)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)  # the file may have grown since the stat
    except OSError as exc:
        raise SpecErrors(
            [SpecError(name, None, "", f"cannot read the file: {exc.strerror or exc}")]
        ) from None
    if len(raw) > MAX_BYTES:
        raise _too_big(name, len(raw), exact=False)
    return raw


def _encoded(text: str | bytes, name: str) -> bytes:
    if isinstance(text, str):
        try:
            text = text.encode("utf-8", "surrogateescape")  # undo a lossless decode of bad bytes
        except UnicodeEncodeError:
            text = text.encode("utf-8", "surrogatepass")  # keeps a lone surrogate as an invalid sequence
    if len(text) > MAX_BYTES:
        raise _too_big(name, len(text))
    return bytes(text)


def _decode(raw: bytes, name: str) -> str:
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
    line, column = _line_col(before, len(before))
    raise SpecErrors(
        [SpecError(name, line, "", f"not valid UTF-8: {what}; save the file as UTF-8 text", column)]
    )


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counting line breaks the way PyYAML does."""
    line, start = 1, 0
    for match in _BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1


# --------------------------------------------------------------------------------------------- events


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's pure-Python event parser: slower than libyaml, but its error messages are the reported ones."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


class _Stop(Exception):
    """A problem after which the rest of the file is not read (anchors, a second document, deep nesting)."""


def _parse(text: str, name: str) -> YamlDoc:
    if _CParser is not None:
        try:
            return _Composer(name, _CParser(text)).document()
        except yaml.YAMLError:
            pass  # parse again below: the pure-Python parser's messages and marks are the reported ones
    try:
        return _Composer(name, _PyParser(text)).document()
    except yaml.MarkedYAMLError as exc:
        raise SpecErrors([_syntax_error(exc, name)]) from None
    except yaml.reader.ReaderError as exc:
        line, column = _line_col(text, exc.position)
        message = f"control character U+{exc.character:04X} is not allowed; remove it"
        raise SpecErrors([SpecError(name, line, "syntax", message, column)]) from None


def _syntax_error(exc: yaml.MarkedYAMLError, name: str) -> SpecError:
    problem = exc.problem or exc.context or "not valid YAML"
    if "'\\t'" in problem:
        problem = "found a tab character; indent with spaces (YAML does not allow tabs here)"
    if exc.context and exc.context_mark is not None and exc.problem:
        problem += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    return SpecError(name, line, "syntax", problem, column)


class _Composer:
    """Builds plain data from parser events, recording lines, dates and every problem found."""

    def __init__(self, name: str, parser: Any) -> None:
        self.name = name
        self.parser = parser
        self.errors: list[SpecError] = []
        self.lines: dict[tuple, int] = {(): 1}
        self.dates: set[tuple] = set()

    def document(self) -> YamlDoc:
        parser = self.parser
        try:
            parser.get_event()  # StreamStart
            data = None
            if not parser.check_event(yaml.StreamEndEvent):
                parser.get_event()  # DocumentStart
                data = self.node((), 0)
                parser.get_event()  # DocumentEnd
                if not parser.check_event(yaml.StreamEndEvent):
                    mark = parser.peek_event().start_mark
                    self.stop((), mark, "a second YAML document starts here; a file holds one document", True)
        except _Stop:
            stopped = True
        else:
            stopped = False
        finally:
            parser.dispose()
        if self.errors:
            error = SpecErrors(self.errors)
            # Read to the end despite its scalar or key problems: the spec layer may still judge the rest
            # (an implicit date where text belongs), so that every problem of the file shows in one pass.
            error.partial = None if stopped else YamlDoc(self.name, data, self.lines, frozenset(self.dates))
            raise error
        return YamlDoc(self.name, data, self.lines, frozenset(self.dates))

    def error(self, path: tuple, mark: Any, message: str) -> None:
        self.errors.append(SpecError(self.name, mark.line + 1, _field(path), message))

    def stop(self, path: tuple, mark: Any, message: str, syntax: bool = False) -> None:
        field = "syntax" if syntax else _field(path)
        self.errors.append(
            SpecError(self.name, mark.line + 1, field, message, mark.column + 1 if syntax else None)
        )
        raise _Stop

    def node(self, path: tuple, depth: int) -> Any:
        event = self.parser.get_event()
        if event.anchor is not None:  # an alias event carries the name of its anchor too
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            message = f"anchors/aliases not allowed ('{sign}{event.anchor}'); write the value out"
            self.stop(path, event.start_mark, message)
        if event.tag is not None:
            self.error(path, event.start_mark, f"tag '{_shown_tag(event.tag)}' not allowed; use plain values")
        if isinstance(event, yaml.ScalarEvent):
            if event.tag is not None:
                return None
            return self.scalar(event, path)
        if depth >= MAX_DEPTH:
            self.stop(path, event.start_mark, f"nested more than {MAX_DEPTH} levels deep; flatten it")
        if isinstance(event, yaml.SequenceStartEvent):
            return self.sequence(path, depth)
        return self.mapping(path, depth)

    def sequence(self, path: tuple, depth: int) -> list:
        items: list = []
        while not self.parser.check_event(yaml.SequenceEndEvent):
            loc = (*path, len(items))
            self.lines[loc] = self.parser.peek_event().start_mark.line + 1
            items.append(self.node(loc, depth + 1))
        self.parser.get_event()
        return items

    def mapping(self, path: tuple, depth: int) -> dict:
        out: dict = {}
        first: dict[str, int] = {}
        while not self.parser.check_event(yaml.MappingEndEvent):
            event = self.parser.peek_event()
            line = event.start_mark.line + 1
            key = self.key(path, depth)
            if key is None:  # not text: its problem is reported; still read the value for its own problems
                self.node((*path, "?"), depth + 1)
                continue
            if key in first:
                self.error(
                    path, event.start_mark, f"duplicate key '{_shown(key)}' (first at line {first[key]})"
                )
                self.node((*path, key), depth + 1)
                continue
            first[key] = line
            self.lines[(*path, key)] = line
            out[key] = self.node((*path, key), depth + 1)
        self.parser.get_event()
        return out

    def key(self, path: tuple, depth: int) -> str | None:
        event = self.parser.peek_event()
        if not isinstance(event, yaml.ScalarEvent) or event.anchor is not None:
            value = self.node((*path, "?"), depth + 1)  # an anchor or alias stops here
            kind = "a list" if isinstance(value, list) else "a mapping"
            self.error(path, event.start_mark, f"keys must be text; this key is {kind}")
            return None
        self.parser.get_event()
        if event.tag is not None:
            self.error(path, event.start_mark, f"tag '{_shown_tag(event.tag)}' not allowed; use plain values")
        elif not event.style and path not in VALUE_KEYS:
            problem = _plain_key_problem(event.value)
            if problem:
                self.error(path, event.start_mark, problem)
        return event.value

    def scalar(self, event: yaml.ScalarEvent, path: tuple) -> Any:
        if event.style:  # quoted or block scalars are always text
            return event.value
        value, problem, is_date = _plain(event.value)
        if problem:
            self.error(path, event.start_mark, problem)
        if is_date:
            self.dates.add(path)
        return value


# -------------------------------------------------------------------------------------------- scalars


def _core(raw: str) -> Any:
    """The value of a plain scalar under the YAML 1.2 core schema."""
    if _NULL.fullmatch(raw):
        return None
    if raw in _BOOL:
        return _BOOL[raw]
    if _INT.fullmatch(raw):
        return int(raw)
    if _OCT.fullmatch(raw):
        return int(raw[2:], 8)
    if _HEX.fullmatch(raw):
        return int(raw[2:], 16)
    if _FLOAT.fullmatch(raw):
        return float(raw)
    if _INF.fullmatch(raw):
        return -math.inf if raw.startswith("-") else math.inf
    if _NAN.fullmatch(raw):
        return math.nan
    return raw


def _yaml11(raw: str) -> tuple[str, Any]:
    """(kind, value) of a plain scalar under PyYAML's YAML 1.1 resolver; kind is the tag's last part."""
    if raw.lower() in _YAML11_BOOLS:  # the YAML 1.1 spec's bools, including y/n that PyYAML itself skips
        return "bool", _YAML11_BOOLS[raw.lower()]
    kind = _RESOLVER.resolve(yaml.ScalarNode, raw, (True, False)).removeprefix(_TAG)
    node = yaml.ScalarNode(_TAG + kind, raw)
    if kind == "null":
        return kind, None
    if kind == "bool":
        return kind, _CONSTRUCTOR.construct_yaml_bool(node)
    if kind == "int":
        return kind, _CONSTRUCTOR.construct_yaml_int(node)
    if kind == "float":
        return kind, _CONSTRUCTOR.construct_yaml_float(node)
    if kind == "timestamp":
        return kind, raw
    return "str", raw  # merge ('<<') and value ('=') mean nothing outside keys: text


@functools.lru_cache(maxsize=4096)  # pilot files repeat the same words and numbers
def _plain(raw: str) -> tuple[Any, str | None, bool]:
    """(value by YAML 1.2 core, the problem if YAML 1.1 reads it differently, whether 1.1 sees a date)."""
    if _WORD.match(raw) and raw.lower() not in _SPECIAL_WORDS:
        return raw, None, False
    try:
        value = _core(raw)
        kind11, value11 = _yaml11(raw)
    except ValueError:  # a decimal integer longer than Python converts (4300 digits)
        return raw, f"'{_shown(raw)}' is a number too long to read; quote it if it is text", False
    if kind11 == "timestamp":
        return raw, None, True
    if _same(value, value11):
        return value, None, False
    return value, _coercion(raw, value, value11), False


def _coercion(raw: str, value: Any, value11: Any) -> str:
    """What YAML 1.1 makes of ``raw`` against YAML 1.2, and a spelling both read alike."""
    shown = _shown(raw)
    if isinstance(value11, bool):
        return f"'{shown}' is read as {_word(value11)} by YAML 1.1; quote it ('{shown}') or write true/false"
    if isinstance(value11, (int, float)):
        in12 = "text" if isinstance(value, str) else _number(value)
        fix = _number(value11 if isinstance(value, str) else value)
        in11 = _described11(raw, value11)
        return f"'{shown}' is {in11} in YAML 1.1 but {in12} in YAML 1.2; quote it ('{shown}') or write {fix}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        fix = f"{int(value)} or {_number(value)}"
    else:
        fix = _rewritten(raw, value)
    return f"'{shown}' is text in YAML 1.1 but {_number(value)} in YAML 1.2; write {fix}, or quote it ('{shown}')"


@functools.lru_cache(maxsize=4096)
def _plain_key_problem(raw: str) -> str | None:
    """Why a plain key is not safely text, or None."""
    if _WORD.match(raw) and raw.lower() not in _SPECIAL_WORDS:
        return None
    if raw == "<<":
        return "merge key '<<' not allowed; write the keys out"
    if raw == "":
        return "empty key; write a name"
    shown = _shown(raw)
    try:
        value = _core(raw)
        kind11, value11 = _yaml11(raw)
    except ValueError:
        return f"key '{shown}' is read as a number; quote it ('{shown}')"
    if not isinstance(value, str):
        return f"key '{shown}' is read as {_what(value)}; quote it ('{shown}')"
    if kind11 == "timestamp":
        return f"key '{shown}' is read as a date by YAML 1.1; quote it ('{shown}')"
    if kind11 != "str":
        what = _word(value11) if isinstance(value11, bool) else _described11(raw, value11)
        return f"key '{shown}' is read as {what} by YAML 1.1; quote it ('{shown}')"
    return None


#: Mappings whose keys are data values, read as their text exactly as written: an imported assignment's
#: value map (``arms: {0: control, 1: voucher}``) names a column's values, so an unquoted 0, 1.0 or true
#: is the text '0', '1.0' or 'true' there — there is no other reading to warn about.
VALUE_KEYS = frozenset({("cohort", "assignment", "arms")})


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _word(value: bool | None) -> str:
    return "null" if value is None else "true" if value else "false"


def _what(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return _word(value)
    return f"the number {_number(value)}"


def _described11(raw: str, value: int | float) -> str:
    digits = raw.lstrip("+-").replace("_", "")
    if ":" in raw:
        return f"base-60 {_number(value)}"
    if isinstance(value, int) and digits.startswith("0b"):
        return f"binary {value}"
    if isinstance(value, int) and digits.startswith("0x"):
        return f"hex {value}"
    if isinstance(value, int) and digits.startswith("0") and len(digits) > 1:
        return f"octal {value}"
    return f"the number {_number(value)}"


def _number(value: int | float) -> str:
    """A plain scalar that YAML 1.1 and 1.2 both read as ``value``."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text:  # YAML 1.1 needs a '.' in the mantissa and a sign on the exponent
        mantissa, exponent = text.split("e")
        mantissa += "" if "." in mantissa else ".0"
        text = f"{mantissa}e{int(exponent):+d}"
    return text


def _rewritten(raw: str, value: int | float) -> str:
    """``raw`` spelled so that YAML 1.1 reads the same number as 1.2 (``1.5e10`` -> ``1.5e+10``)."""
    match = re.fullmatch(r"([-+]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([-+]?[0-9]+))?", raw)
    if match and isinstance(value, float) and math.isfinite(value):
        sign, whole, fraction, exponent = match.groups()
        text = f"{sign}{whole or '0'}.{fraction or '0'}" + (f"e{int(exponent):+d}" if exponent else "")
        if _plain(text)[1] is None and _plain(text)[0] == value:
            return text
    return _number(value)


def one_line(text: str) -> str:
    """``text`` with every character a terminal would not show as itself (line breaks, tabs, NUL and other
    controls, bidi overrides, zero-width marks) escaped as Python writes it (``\\n``, ``\\x00``, ``\\u202e``):
    a problem stays one line, and a right-to-left mark in a value cannot reorder the message around it."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text
    )


QUOTE_LIMIT = 40  # characters of a key or value that an error quotes


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as an error quotes it: one line (:func:`one_line`) and, past ``limit`` characters, its start,
    '…' and its length. A key or a value may be a megabyte long; the message about it stays a line a person
    reads (RELIABILITY.md case 48). Every quote of a key or value in a spec error goes through here."""
    if len(text) <= limit:
        return one_line(text)
    return f"{one_line(text[: limit - 1])}… ({len(text):,} characters)"


def _shown(raw: str) -> str:
    return shorten(raw)


def _shown_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def _field(path: tuple) -> str:
    # shortened where every problem passes: labkit._validation.one_line_errors
    return one_line(".".join(str(part) for part in path))
