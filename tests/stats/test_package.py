"""labkit.stats as a package: numpy/scipy only, its public names, and no NaN from any method on any data."""

import json
import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit.stats
from labkit.stats import ArmMoments, compare_proportions, cuped, delta_ratio, welch


def test_stats_imports_nothing_heavy_and_no_other_labkit_module():
    code = (
        "import sys, json; import labkit; before = set(sys.modules); import labkit.stats; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    roots = {name.split(".")[0] for name in loaded}
    assert not roots & {"pandas", "ibis", "mlflow", "papermill", "statsmodels", "duckdb", "pyarrow"}
    assert [m for m in loaded if m.startswith("labkit.") and not m.startswith("labkit.stats")] == []


def test_public_names_are_exported():
    for name in labkit.stats.__all__:
        assert getattr(labkit.stats, name) is not None
    assert {"ArmMoments", "Estimate", "welch", "compare_proportions", "delta_ratio", "cuped"} <= set(
        labkit.stats.__all__
    )


_values = st.lists(st.integers(-2, 5), min_size=0, max_size=5)


@settings(max_examples=150, deadline=None)
@given(_values, _values, _values, _values)
def test_every_moment_method_explains_degenerate_data_instead_of_nan(yc, xc, yt, xt):
    # pair y with x of the same length; integers make ties, zeros and constant arms common
    m_c, m_t = min(len(yc), len(xc)), min(len(yt), len(xt))
    c = ArmMoments.from_values(np.array(yc[:m_c], float), np.array(xc[:m_c], float))
    t = ArmMoments.from_values(np.array(yt[:m_t], float), np.array(xt[:m_t], float))
    for method in (welch, cuped, delta_ratio):
        est = method(c, t)  # Estimate.__post_init__ refuses NaN and inf
        assert json.loads(json.dumps(est.to_dict())) == est.to_dict()
        assert est.p_value is not None or est.reason is not None, (method.__name__, est)
        if est.p_value is not None:
            assert 0.0 <= est.p_value <= 1.0 and est.ci_low <= est.effect <= est.ci_high


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 12), st.integers(0, 12), st.data())
def test_proportions_never_leak_nan(n_c, n_t, data):
    k_c, k_t = data.draw(st.integers(0, n_c)), data.draw(st.integers(0, n_t))
    est = compare_proportions(ArmMoments(n_c, k_c, k_c), ArmMoments(n_t, k_t, k_t))
    assert est.p_value is not None or est.reason == "empty_arm"
    if est.ci_low is not None:
        assert -1.0 <= est.ci_low <= est.effect <= est.ci_high <= 1.0


def test_no_call_goes_through_a_name_its_submodule_shadows():
    """`labkit.stats.cuped` is a function and a submodule: once `import labkit.stats.cuped` has run (a
    test, a notebook), the package attribute is the module and `stats.cuped(...)` fails. Callers import
    such names from their submodule instead."""
    import re
    from pathlib import Path

    import labkit.stats as package

    root = Path(package.__file__).parent
    shadowed = {name for name in package._WHERE if (root / f"{name}.py").exists()}
    assert "cuped" in shadowed
    calls = [
        f"{path}: stats.{name}("
        for path in root.parent.rglob("*.py")
        for name in shadowed
        if re.search(rf"\bstats\.{name}\(", path.read_text(encoding="utf-8"))
    ]
    assert not calls, calls
