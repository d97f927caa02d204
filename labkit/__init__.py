"""labkit: a laboratory for social-engagement pilots.

The Python API that notebooks call (DESIGN.md, "Python API")::

    lab = labkit.load_lab("configs/lab.yaml")
    pilot = labkit.load_pilot("experiments/service-twitter-fast-reply.yaml", lab=lab)
    labkit.plan(pilot); labkit.assign(pilot); result = labkit.analyze(pilot)

Names are imported on first use so that ``import labkit`` stays instant.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_lab": "labkit.lab",
    "load_pilot": "labkit.spec",
    "plan": "labkit.planning",
    "assign": "labkit.assignment",
    "load_assignment": "labkit.assignment",
    "analyze": "labkit.analysis",
    "binned_distribution": "labkit.distribution",
    "LabkitError": "labkit.errors",
    "SpecError": "labkit.errors",
    "SpecErrors": "labkit.errors",
    "DataError": "labkit.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'labkit' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
