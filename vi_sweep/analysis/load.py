"""The analysis's front door: a sweep directory in, one classified row per run out (and each run's final q).

Where the three layers meet: :mod:`vi_sweep.analysis.read` reads the files,
:mod:`vi_sweep.analysis.references` finds or trains each run's exact baseline, and
:mod:`vi_sweep.analysis.outcomes` classifies the runs against them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pandas as pd

from vi_sweep.analysis.outcomes import Thresholds, classify
from vi_sweep.analysis.read import SkippedFileWarning, Sweep, config_columns, read_sweep
from vi_sweep.analysis.references import exact_baselines
from vi_sweep.store.metrics import UnreadableRun, job_files
from vi_sweep.store.params import PARAMS_FILE, compact_params_files, read_compact_params, read_params


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


def load_params(path: str | os.PathLike) -> pd.DataFrame:
    """Every run's final q: one row per run (the ``run`` ids of :func:`load_sweep`), its ``job``,
    config columns, and ``mu``, ``log_sigma`` (float32 numpy arrays of length ``d``), read from
    ``<job>/params.parquet`` or, in the compact layout, ``runs/params-*.parquet``
    (:mod:`vi_sweep.store.params`)::

        params = load_params(SWEEP_DIR)
        q = params.set_index("run").loc[0]          # q.mu, np.exp(q.log_sigma)

    A run without a readable parameters file (written before vi_sweep saved them, or damaged)
    has ``None`` there, with one :class:`~vi_sweep.analysis.read.SkippedFileWarning` per file.
    """
    sweep = read_sweep(path)
    found: dict[str, tuple[Any, Any]] = {}
    for metrics in job_files(sweep.path):  # the job's name as read_sweep gives it: its folder's name
        file = metrics.parent / PARAMS_FILE
        try:
            params = read_params(file)
            found[metrics.parent.name] = (params.mu, params.log_sigma)
        except UnreadableRun as err:
            warnings.warn(f"no final parameters for {metrics.parent}: {err}", SkippedFileWarning, stacklevel=2)
    for file in compact_params_files(sweep.path):
        try:
            found.update({str(job): values for job, values in read_compact_params(file).items()})
        except UnreadableRun as err:
            warnings.warn(f"skipping {file}: {err}", SkippedFileWarning, stacklevel=2)
    frame = sweep.runs[["run", "job", *config_columns(sweep.runs)]].copy()
    values = [found.get(str(job), (None, None)) for job in frame["job"]]
    frame["mu"] = [mu for mu, _ in values]
    frame["log_sigma"] = [log_sigma for _, log_sigma in values]
    return frame.reset_index(drop=True)
