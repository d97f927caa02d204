"""Plain YAML scalars typed by the YAML 1.2 core schema, and the problem when YAML 1.1 reads one otherwise.

``no``, ``0123``, ``12:30:00``, ``1e3`` and ``1_000`` mean one thing to YAML 1.2 and another to YAML 1.1
(PyYAML, many editors and linters): such a value is an error asking to quote it, with a spelling both
read alike. ISO dates are text, flagged for the spec layer to judge (``YamlDoc.implicit_dates``).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import yaml

from labkit.yamlfile.text import one_line, shorten

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

_TAG = "tag:yaml.org,2002:"
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def core(raw: str) -> Any:
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
def plain(raw: str) -> tuple[Any, str | None, bool]:
    """(value by YAML 1.2 core, the problem if YAML 1.1 reads it differently, whether 1.1 sees a date)."""
    if _WORD.match(raw) and raw.lower() not in _SPECIAL_WORDS:
        return raw, None, False
    try:
        value = core(raw)
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
def plain_key_problem(raw: str) -> str | None:
    """Why a plain key is not safely text, or None."""
    if _WORD.match(raw) and raw.lower() not in _SPECIAL_WORDS:
        return None
    if raw == "<<":
        return "merge key '<<' not allowed; write the keys out"
    if raw == "":
        return "empty key; write a name"
    shown = _shown(raw)
    try:
        value = core(raw)
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
        if plain(text)[1] is None and plain(text)[0] == value:
            return text
    return _number(value)


def _shown(raw: str) -> str:
    return shorten(raw)


def shown_tag(tag: str) -> str:
    """A tag as written: ``!!binary`` rather than its full ``tag:yaml.org,2002:binary``."""
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def field_name(path: tuple) -> str:
    # shortened where every problem passes: labkit._validation.one_line_errors
    return one_line(".".join(str(part) for part in path))
