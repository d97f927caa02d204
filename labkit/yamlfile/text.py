"""How a spec error quotes what the user wrote: one printable line, long values cut to their start.

Kept apart from the loader because every message of labkit passes here (the CLI's last guard too),
and it needs nothing but the standard library.
"""

from __future__ import annotations


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
