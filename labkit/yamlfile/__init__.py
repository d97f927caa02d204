"""Strict YAML for pilot and lab files — the only package in labkit that imports PyYAML.

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

Layout: ``reading`` (size and UTF-8), ``composer`` (events -> data with lines), ``scalars`` (YAML 1.1 vs 1.2
typing), ``text`` (how messages quote values).
"""

from __future__ import annotations

import os

from labkit.yamlfile.composer import MAX_DEPTH, YamlDoc, parse
from labkit.yamlfile.reading import MAX_BYTES, decoded, encoded, read_file
from labkit.yamlfile.scalars import VALUE_KEYS
from labkit.yamlfile.text import QUOTE_LIMIT, one_line, shorten

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "QUOTE_LIMIT",
    "VALUE_KEYS",
    "YamlDoc",
    "load_yaml",
    "one_line",
    "shorten",
]


def load_yaml(
    path: str | os.PathLike, *, display: str | None = None, text: str | bytes | None = None
) -> YamlDoc:
    """Load one YAML file strictly (see the module docstring); ``text`` replaces reading ``path``."""
    name = display if display is not None else str(path)
    raw = read_file(path, name) if text is None else encoded(text, name)
    return parse(decoded(raw, name), name)
