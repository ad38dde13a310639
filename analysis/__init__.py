"""Analysis of vi_sweep sweeps: load, classify against the exact baseline, phase maps, report.

Pure pandas/pyarrow/matplotlib (JAX only to compute missing exact baselines); never Hydra::

    from analysis import load_sweep, phase_table
    runs = load_sweep("outputs/multiruns/2026-01-01/12-00-00")   # one row per run, with `outcome`
    cells = phase_table(runs)                                      # one row per cell (config but seed)
"""

from analysis.baseline import exact_baselines
from analysis.load import SkippedFileWarning, SweepError, load_sweep, load_trajectories, read_sweep
from analysis.outcomes import OUTCOMES, Thresholds, classify
from analysis.phase import phase_table
from analysis.report import write_report

__all__ = [
    "OUTCOMES",
    "SkippedFileWarning",
    "SweepError",
    "Thresholds",
    "classify",
    "exact_baselines",
    "load_sweep",
    "load_trajectories",
    "phase_table",
    "read_sweep",
    "write_report",
]
