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
from vi_sweep.analysis.read import SkippedFileWarning, config_columns, read_sweep
from vi_sweep.analysis.references import exact_baselines
from vi_sweep.store.metrics import UnreadableRun
from vi_sweep.store.params import PARAMS_FILE, read_params


def load_trajectories(path: str | os.PathLike, *, config: bool = True) -> pd.DataFrame:
    """The long table of a sweep: one row per logged step per run.

    With ``config=True`` (default) every row also carries its run's ``job`` and config columns,
    so ``frame.query("lr == 0.05 and num_mc == 32")`` works directly.
    """
    sweep = read_sweep(path)
    if not config:
        return sweep.trajectories
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
    ``<job>/params.parquet`` (:mod:`vi_sweep.store.params`)::

        params = load_params(SWEEP_DIR)
        q = params.set_index("run").loc[0]          # q.mu, np.exp(q.log_sigma)

    A run without a readable parameters file (written before vi_sweep saved them, or damaged)
    has ``None`` there, with one :class:`~vi_sweep.analysis.read.SkippedFileWarning`.
    """
    sweep = read_sweep(path)
    frame = sweep.runs[["run", "job", *config_columns(sweep.runs)]].copy()
    mus, log_sigmas = [], []
    for job in frame["job"]:
        file = sweep.path / str(job) / PARAMS_FILE
        try:
            params = read_params(file)
            mus.append(params.mu)
            log_sigmas.append(params.log_sigma)
        except UnreadableRun as err:
            warnings.warn(f"no final parameters for {file.parent}: {err}", SkippedFileWarning, stacklevel=2)
            mus.append(None)
            log_sigmas.append(None)
    frame["mu"] = mus
    frame["log_sigma"] = log_sigmas
    return frame.reset_index(drop=True)
