"""The analysis's front door: a sweep directory in, one classified row per run out.

Where the three layers meet: :mod:`vi_sweep.analysis.read` reads the files,
:mod:`vi_sweep.analysis.references` finds or trains each run's exact baseline, and
:mod:`vi_sweep.analysis.outcomes` classifies the runs against them.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from vi_sweep.analysis.outcomes import Thresholds, classify
from vi_sweep.analysis.read import Sweep, config_columns, read_sweep
from vi_sweep.analysis.references import exact_baselines


def load_trajectories(path: str | os.PathLike, *, config: bool = True) -> pd.DataFrame:
    """The long table of a sweep: one row per logged step per run.

    With ``config=True`` (default) every row also carries its run's ``job`` and config columns,
    so ``frame.query("lr == 0.05 and num_mc == 32")`` works directly.
    """
    sweep = read_sweep(path)
    return trajectories_with_config(sweep) if config else sweep.trajectories


def trajectories_with_config(sweep: Sweep) -> pd.DataFrame:
    """The long table of a sweep already read, each row with its run's ``job`` and config columns."""
    keys = ["run", "job", *config_columns(sweep.runs)]
    return sweep.runs[keys].merge(sweep.trajectories, on="run", how="right", validate="one_to_many")


def load_sweep(path: str | os.PathLike, *, cache_baselines: bool = True, **thresholds: Any) -> pd.DataFrame:
    """One row per job of a sweep, classified against its exact baseline.

    Reads the sweep (:func:`vi_sweep.analysis.read.read_sweep`), finds or computes each run's exact-KL baseline
    (:func:`vi_sweep.analysis.references.exact_baselines`, cached in ``<sweep_dir>/baselines/``) and adds the
    tail statistics and ``outcome`` (:func:`vi_sweep.analysis.outcomes.classify`).

    Parameters
    ----------
    path
        The sweep directory (Hydra's ``hydra.sweep.dir``).
    cache_baselines
        Write computed baselines to ``<sweep_dir>/baselines/`` (and reuse them next time).
    **thresholds
        Fields of :class:`vi_sweep.analysis.outcomes.Thresholds` (``tail_fraction``, ``tol_per_dim``,
        ``collapse_ratio``, ``divergence_per_dim``, ``trend_alpha``, ``min_tail_rows``,
        ``min_effective_samples``, ``burst_factor``).
    """
    sweep = read_sweep(path)
    baselines = exact_baselines(sweep, cache=cache_baselines)
    return classify(sweep, baselines, Thresholds(**thresholds))
