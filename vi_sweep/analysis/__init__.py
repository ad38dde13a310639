"""Analysis of vi_sweep sweeps: load, classify against the exact baseline, phase maps, report.

Pure pandas/pyarrow/matplotlib (JAX only to compute missing exact baselines); never Hydra::

    from vi_sweep.analysis import load_sweep, phase_table
    runs = load_sweep("outputs/multiruns/2026-01-01/12-00-00")   # one row per run, with `outcome`
    cells = phase_table(runs)                                      # one row per cell (config but seed)

Layers, each importing only those before it: ``read`` (files -> tables; ``locate`` finds a
project's sweeps) -> ``references`` (exact baselines, target constants) -> ``outcomes``
(classification) -> ``load`` (the three together), ``phase`` (cells); ``theory`` and ``figures``
-> ``render`` (one figure job) -> ``figure_helper`` (a second drawing process) -> ``report``;
``paper`` (figures declared as code) draws on ``load``, ``phase`` and ``render``.
"""

import importlib
import importlib.util
from typing import Any

# Imported on first use (PEP 562), so that importing one light module of the package, such as
# vi_sweep.analysis.figure_helper at a sweep's start, does not import pandas and matplotlib (~0.4 s).
_EXPORTS = {
    "NoSweepError": "vi_sweep.analysis.locate",
    "OUTCOMES": "vi_sweep.analysis.outcomes",
    "SkippedFileWarning": "vi_sweep.analysis.read",
    "SweepError": "vi_sweep.analysis.read",
    "Thresholds": "vi_sweep.analysis.outcomes",
    "classify": "vi_sweep.analysis.outcomes",
    "exact_baselines": "vi_sweep.analysis.references",
    "find_sweep": "vi_sweep.analysis.locate",
    "load_params": "vi_sweep.analysis.load",
    "load_sweep": "vi_sweep.analysis.load",
    "load_trajectories": "vi_sweep.analysis.load",
    "newest_sweep": "vi_sweep.analysis.locate",
    "phase_table": "vi_sweep.analysis.phase",
    "read_sweep": "vi_sweep.analysis.read",
    "write_report": "vi_sweep.analysis.report",
}


def __getattr__(name: str) -> Any:
    """An export (``vi_sweep.analysis.load_sweep``) or a submodule (``vi_sweep.analysis.figures``), imported now."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "NoSweepError",
    "OUTCOMES",
    "SkippedFileWarning",
    "SweepError",
    "Thresholds",
    "classify",
    "exact_baselines",
    "find_sweep",
    "load_params",
    "load_sweep",
    "load_trajectories",
    "newest_sweep",
    "phase_table",
    "read_sweep",
    "write_report",
]
