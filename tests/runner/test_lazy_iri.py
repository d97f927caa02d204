"""labkit.runner.lazy_iri: nbformat imported without compiling rfc3987_syntax's grammars, and jsonschema's IRI
checks giving the verdicts they give without the stand-in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("rfc3987_syntax")

VALUES = ["http://example.com/ä", "not an iri \\", "a b", "urn:isbn:0451450523", "//host/path?q#f", "", "é"]

PROBE = """
import json, sys
DEFER
import nbformat, jsonschema
before = 'rfc3987_syntax.syntax_helpers' in sys.modules
checker = jsonschema.Draft7Validator.FORMAT_CHECKER
verdicts = [[checker.conforms(v, f) for f in ('iri', 'iri-reference')] for v in VALUES]
print(json.dumps({'grammars_at_import': before, 'verdicts': verdicts}))
"""


def _probe(defer: bool) -> dict:
    setup = (
        "from labkit.runner.lazy_iri import defer_iri_grammars\nassert defer_iri_grammars()" if defer else ""
    )
    code = PROBE.replace("DEFER", setup).replace("VALUES", repr(VALUES))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_nbformat_imports_without_the_iri_grammars_and_iri_checks_keep_their_verdicts():
    deferred, plain = _probe(True), _probe(False)
    assert deferred["grammars_at_import"] is False
    assert plain["grammars_at_import"] is True
    assert deferred["verdicts"] == plain["verdicts"]


def test_a_submodule_imported_by_name_under_the_stand_in_is_the_real_one_and_stays():
    code = (
        "import sys\nfrom labkit.runner.lazy_iri import defer_iri_grammars\nassert defer_iri_grammars()\n"
        "import rfc3987_syntax.syntax_helpers as helpers\nimport rfc3987_syntax\n"
        "assert rfc3987_syntax.is_valid_syntax('iri', 'http://a/b') is True\n"
        "assert sys.modules['rfc3987_syntax'].is_valid_syntax is helpers.is_valid_syntax\n"
        "assert defer_iri_grammars() is False  # the real package is in place: nothing to defer any more"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
