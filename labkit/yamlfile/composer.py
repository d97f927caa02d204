"""The parser's event stream composed by hand into plain data, with the line of every key and list item.

Only plain scalars, sequences and mappings exist: tags, anchors/aliases (refused at the first one, before
anything is built), merge keys, duplicate or non-text keys and a second document are errors. Events come
from libyaml when PyYAML has it (ten times faster on a large file); a file libyaml refuses is parsed again
by the pure-Python parser, whose messages and marks are the ones reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from labkit.errors import SpecError, SpecErrors
from labkit.yamlfile.reading import line_col
from labkit.yamlfile.scalars import VALUE_KEYS, field_name, plain, plain_key_problem, shown_tag
from labkit.yamlfile.text import shorten

try:
    from yaml.cyaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None

MAX_DEPTH = 100


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


class _PyParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's pure-Python event parser: slower than libyaml, but its error messages are the reported ones."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


class _Stop(Exception):
    """A problem after which the rest of the file is not read (anchors, a second document, deep nesting)."""


def parse(text: str, name: str) -> YamlDoc:
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
        line, column = line_col(text, exc.position)
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
        self.errors.append(SpecError(self.name, mark.line + 1, field_name(path), message))

    def stop(self, path: tuple, mark: Any, message: str, syntax: bool = False) -> None:
        field = "syntax" if syntax else field_name(path)
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
            self.error(path, event.start_mark, f"tag '{shown_tag(event.tag)}' not allowed; use plain values")
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
                    path, event.start_mark, f"duplicate key '{shorten(key)}' (first at line {first[key]})"
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
            self.error(path, event.start_mark, f"tag '{shown_tag(event.tag)}' not allowed; use plain values")
        elif not event.style and path not in VALUE_KEYS:
            problem = plain_key_problem(event.value)
            if problem:
                self.error(path, event.start_mark, problem)
        return event.value

    def scalar(self, event: yaml.ScalarEvent, path: tuple) -> Any:
        if event.style:  # quoted or block scalars are always text
            return event.value
        value, problem, is_date = plain(event.value)
        if problem:
            self.error(path, event.start_mark, problem)
        if is_date:
            self.dates.add(path)
        return value
