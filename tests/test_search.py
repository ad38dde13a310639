"""Searching sweepers: the real hydra-optuna-sweeper drives vi_sweep's launchers.

Every job returns one float (``optimized_metric``, :mod:`vi_sweep.analysis.optimized_metric`);
Optuna hands its trials over batch by batch (``n_jobs``), and the batched launcher runs each batch
as one vmapped program, compiled once for the whole search. A trial is an ordinary run: the same
configs run as a grid give the same rows (to float32 round-off) and the analysis library's
``excess_over_exact`` (:func:`vi_sweep.analysis.load_sweep`, the report's) equals what the jobs returned.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from vi_sweep.store.metrics import read_fields

pytestmark = pytest.mark.slow
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

TINY = ("num_mc=2", "d=5", "steps=100", "log_every=25", "grid=none")
NO_CACHE = "hydra.launcher.compilation_cache_dir=null"  # compiles are counted in this process
SEARCH = ("hydra/sweeper=optuna", "lr=tag(log,interval(0.001,1.0))", "hydra.sweeper.sampler.seed=0")
SUMMARY = re.compile(r"vi_sweep: (\d+) jobs \((\d+) computed, (\d+) resumed\) in (\d+) groups, (\d+) compiles")
COMPARED = ("loss", "kl", "kl_excess", "mu_norm", "sigma_mean", "sigma_min", "grad_norm")


def trials(sweep) -> dict[float, pd.DataFrame]:
    """Each job's rows, keyed by its lr (the searched value)."""
    return {read_fields(path)["lr"]: pd.read_parquet(path) for path in sorted(sweep.glob("*/metrics.parquet"))}


@pytest.fixture(scope="module")
def search_and_grid(tmp_path_factory):
    """Six Optuna trials in two batches of three (batched launcher), then the same six lrs as a grid."""
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("search")
    search = run_cli("multirun", *SEARCH, *TINY, NO_CACHE, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3",
                     "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={root / 'search'}")
    assert search.returncode == 0, search.stderr
    lrs = sorted(trials(root / "search"))
    grid = run_cli("multirun", "lr=" + ",".join(map(repr, lrs)), *TINY, NO_CACHE, "hydra.callbacks.sweep_summary.report=false",
                   f"hydra.sweep.dir={root / 'grid'}")
    assert grid.returncode == 0, grid.stderr
    return root, search


def test_each_trial_equals_the_same_config_run_as_a_grid(search_and_grid):
    root, _ = search_and_grid
    searched, gridded = trials(root / "search"), trials(root / "grid")
    assert len(searched) == 6 and searched.keys() == gridded.keys()
    for lr, frame in searched.items():
        np.testing.assert_array_equal(frame["step"], gridded[lr]["step"])
        for column in COMPARED:
            np.testing.assert_allclose(frame[column], gridded[lr][column], rtol=2e-5, atol=1e-6, err_msg=f"lr={lr} {column}")


def test_the_search_compiles_each_program_once(search_and_grid):
    _, search = search_and_grid
    batches = [dict(zip(("jobs", "computed", "resumed", "groups", "compiles"), map(int, m))) for m in SUMMARY.findall(search.stdout)]
    # Two batches of three trials; two programs (the trials' and their exact twins'), compiled with the first batch.
    assert [b["jobs"] for b in batches] == [3, 3]
    assert [b["groups"] for b in batches] == [2, 2]
    assert [b["compiles"] for b in batches] == [2, 0]


def test_the_best_value_is_the_reports_excess_over_the_exact_run(search_and_grid):
    from vi_sweep.analysis import load_sweep

    root, _ = search_and_grid
    best = OmegaConf.load(root / "search" / "optimization_results.yaml")
    runs = load_sweep(root / "grid")
    best_run = runs.loc[runs["excess_over_exact"].idxmin()]
    assert best.best_params.lr == best_run["lr"]
    assert best.best_value == pytest.approx(best_run["excess_over_exact"], rel=1e-4, abs=1e-5)


def test_the_basic_launcher_returns_the_same_values(search_and_grid, cli, tmp_path):
    root, _ = search_and_grid
    # The same sampler seed draws the same first three trials; one job at a time, the task trains
    # each exact twin itself.
    result = cli("multirun", *SEARCH, *TINY, "hydra/launcher=basic", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3",
                 "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    from vi_sweep.analysis import load_sweep

    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    runs = load_sweep(root / "grid").set_index("lr")
    first_three = sorted(trials(tmp_path))
    assert best.best_value == pytest.approx(runs.loc[first_three, "excess_over_exact"].min(), rel=1e-4, abs=1e-5)


def test_the_stability_edge_example_finds_the_largest_converging_lr(cli, tmp_path):
    result = cli("multirun", "search=stability_edge", "num_mc=4", "d=10", "steps=400", "log_every=100",
                 "hydra.sweeper.n_trials=16", NO_CACHE, "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    from vi_sweep.analysis import load_sweep

    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    runs = load_sweep(tmp_path)
    within = runs[runs["excess_over_exact"] <= runs["tolerance"]]
    assert best.best_value == -within["lr"].max()
    assert (runs.loc[runs["lr"] > within["lr"].max(), "excess_over_exact"] > runs["tolerance"].iloc[0]).all()


def test_the_stability_edge_is_the_largest_lr_within_tolerance_per_num_mc():
    from vi_sweep.analysis.edge import stability_edge

    runs = pd.DataFrame({
        "num_mc": [1, 1, 1, 1, 8, 8],
        "lr": [0.01, 0.02, 0.04, 0.08, 0.05, 0.5],
        "excess_over_exact": [0.1, 0.5, 3.0, 0.2, 0.3, np.nan],  # lr=0.08 is within but non-finite
        "tolerance": [1.0] * 6,
        "nonfinite": [False, False, False, True, False, True],
    })
    edges = stability_edge(runs).set_index("num_mc")
    assert edges.loc[1, ["lr_edge", "lr_beyond", "n_within"]].tolist() == [0.02, 0.04, 2]
    assert edges.loc[8, ["lr_edge", "lr_beyond", "n_runs"]].tolist() == [0.05, 0.5, 2]
