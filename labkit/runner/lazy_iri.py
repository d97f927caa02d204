"""jsonschema's IRI format checks loaded on their first use, not when nbformat is imported.

Every notebook `labkit run` touches goes through nbformat, which imports jsonschema, whose ``_format``
imports ``rfc3987_syntax`` for the ``iri`` and ``iri-reference`` formats; that package compiles ~40 Lark
grammars at import: ~1.8 s of CPU, most of nbformat's import and as much as `labkit run` spends on its own
work around a notebook (benchmarks/README.md, "Run and CLI overhead"). Neither nbformat's schema nor
papermill ever checks those formats (python-jsonschema/jsonschema#1428 asks for the same deferral).

:func:`defer_iri_grammars` puts a stand-in module under the name before jsonschema is imported: its
``is_valid_syntax`` — the one name jsonschema takes — and any other attribute load the real package on
first use and answer from it, so a schema that does check an IRI gets the very same verdict, only later.
Nothing is changed when jsonschema or the package is already imported, or the package is not installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types

NAME = "rfc3987_syntax"
_LOCK = threading.Lock()


def _real() -> types.ModuleType:
    """The real package, imported once in place of the stand-in (its submodules resolve through
    ``sys.modules``, so the stand-in must be gone before it runs)."""
    with _LOCK:
        module = sys.modules.get(NAME)
        if module is None or getattr(module, "__labkit_stand_in__", False):
            sys.modules.pop(NAME, None)
            module = importlib.import_module(NAME)
        return module


def _stand_in(spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
    stand_in = types.ModuleType(NAME, "labkit's stand-in: the real rfc3987_syntax is imported on first use")
    stand_in.__labkit_stand_in__ = True
    stand_in.__spec__ = spec  # importlib.util.find_spec(NAME) keeps answering as for the real package
    # The package's own folder: `from rfc3987_syntax import x` probes ``__path__``, which must not load it,
    # and a submodule imported by name is found where it is.
    stand_in.__path__ = list(spec.submodule_search_locations or [])

    def is_valid_syntax(*args, **kwargs):
        try:
            real = _real()
        except ImportError:
            return True  # as jsonschema without the package: the format is not checked
        return real.is_valid_syntax(*args, **kwargs)

    def __getattr__(name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # the import system's probes (__file__, __loader__...) load nothing
        return getattr(_real(), name)

    stand_in.is_valid_syntax = is_valid_syntax
    stand_in.__getattr__ = __getattr__  # PEP 562: any other name reaches the real package
    return stand_in


def defer_iri_grammars() -> bool:
    """Install the stand-in if it can still help; True when it is in place."""
    if "jsonschema._format" in sys.modules:
        return False  # jsonschema holds the real function already (or went without it)
    current = sys.modules.get(NAME)
    if current is not None:
        return bool(getattr(current, "__labkit_stand_in__", False))
    try:
        spec = importlib.util.find_spec(NAME)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False  # jsonschema's own ImportError path: nothing to defer
    sys.modules[NAME] = _stand_in(spec)
    return True
