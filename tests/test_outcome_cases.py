"""Outcome labels on the sweeps a reviewer pointed at: each was labelled wrongly before, each is a real trainer run here.

The runs are trained with the trainer and written as a launcher writes them (``tests/sweeps.py``),
then classified with ``load_sweep``, as ``python -m vi_sweep report`` would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.sweeps import composed_fields, grid, write_sweep
from vi_sweep.analysis import load_sweep, phase_table


def classified(tmp_path_factory, overrides: list[str], axes: dict) -> "pd.DataFrame":  # noqa: F821
    sweep_dir = Path(tmp_path_factory.mktemp("case"))
    write_sweep(sweep_dir, grid(composed_fields(*overrides), axes))
    return load_sweep(sweep_dir)


def test_a_run_still_falling_steadily_is_not_called_stalled(tmp_path_factory):
    # Score estimator, lr = 0.01, num_mc = 2: every seed falls steadily over the tail (about 27 -> 12 nats).
    runs = classified(tmp_path_factory, ["objective.estimator=score", "lr=0.01", "num_mc=2"], {"seed": (0, 1, 2)})
    assert "stalled" not in set(runs["outcome"].astype(str))
    assert (runs["outcome"] == "slow").sum() >= 2
    runs = classified(tmp_path_factory, ["objective.estimator=score", "lr=0.003", "num_mc=16"], {"seed": (0, 1, 2)})
    assert (runs["outcome"] == "slow").all(), runs["reason"].tolist()


def test_stationary_runs_are_rarely_called_a_trend_at_any_log_every(tmp_path_factory):
    # Started at the optimum, plain SGD: a stationary noise floor over the whole tail. At alpha =
    # 0.01 a valid test calls 16 such runs a trend about 0.3 times; 3 or more is out of bounds.
    for log_every in (2, 200):
        runs = classified(
            tmp_path_factory,
            ["optimizer=sgd", "init_log_sigma=0.0", "lr=0.05", "num_mc=1", f"log_every={log_every}", "steps=3000"],
            {"seed": tuple(range(16))},
        )
        assert (runs["falling"] | runs["rising"]).sum() <= 2
        assert set(runs["outcome"].astype(str)) <= {"stalled", "converged"}


def test_an_exact_twin_locked_in_a_cycle_is_unstable_and_its_mc_runs_are_not_slow(tmp_path_factory):
    # Plain SGD at lr = 1.1 (period 2) and 1.3 (period 4): the exact run cycles forever.
    runs = classified(tmp_path_factory, ["optimizer=sgd", "num_mc=32", "steps=5000", "log_every=200"], {"lr": (1.1, 1.3), "seed": (0, 1, 2)})
    assert (runs["baseline_outcome"] == "unstable").all()
    assert "slow" not in set(runs["outcome"].astype(str))
    assert (runs["outcome"] == "unstable").sum() >= 5


def test_divergence_does_not_depend_on_how_far_the_start_was(tmp_path_factory):
    # The exact trajectories are the same on N(0, I) and on N(10 * 1, I); the labels must be too.
    axes = {"lr": (7.0, 10.0), "seed": (0, 1)}
    standard = classified(tmp_path_factory, ["num_mc=32"], axes)
    shifted = classified(tmp_path_factory, ["num_mc=32", "target=shifted"], axes)
    assert standard["outcome"].astype(str).tolist() == shifted["outcome"].astype(str).tolist() == ["diverged"] * 4
    assert standard["baseline_outcome"].astype(str).tolist() == shifted["baseline_outcome"].astype(str).tolist()


def test_collapse_is_measured_against_the_mean_field_optimums_sigma(tmp_path_factory):
    # rho = 0.999999: the mean-field optimum has sigma* ~ 1e-3; runs near it have not collapsed.
    runs = classified(
        tmp_path_factory, ["target=correlated", "target.rho=0.999999", "lr=0.01", "num_mc=32"], {"init_log_sigma": (-6.9, -5.0), "seed": (0, 1, 2)}
    )
    assert runs["sigma_star_min"].iloc[0] == pytest.approx(1e-3, rel=0.02)
    assert "collapsed" not in set(runs["outcome"].astype(str))


def test_a_collapse_the_exact_twin_shares_is_not_a_collapse(tmp_path_factory):
    # tiny_init: sigma starts at exp(-10); the exact run is still there at the end as much as the MC runs.
    runs = classified(tmp_path_factory, ["scenario=tiny_init", "steps=200", "log_every=100"], {"lr": (0.01,), "num_mc": (1, 32)})
    assert (runs["tail_sigma_min"] < runs["collapse_threshold"]).all()  # the MC runs are below the threshold...
    assert "collapsed" not in set(runs["outcome"].astype(str))  # ...and so is their exact twin


def test_time_to_tolerance_counts_from_when_the_run_stays_within_it(tmp_path_factory):
    # Score, lr = 0.05, num_mc = 4: the KL touches the tolerance mid-run and rises to tens of nats.
    runs = classified(tmp_path_factory, ["objective.estimator=score", "lr=0.05", "num_mc=4"], {"seed": (0, 1, 2)})
    assert np.isinf(runs["time_to_tol_ratio"]).all()
    assert (runs["outcome"] == "unstable").all(), runs["reason"].tolist()  # a rising or bursting tail, not a noise floor
    cells = phase_table(runs)
    assert cells["outcome"].iloc[0] == "unstable"


def test_a_bursting_tail_is_never_converged_wherever_the_window_lands(tmp_path_factory):
    runs = classified(tmp_path_factory, ["objective.estimator=score", "lr=0.05", "num_mc=4", "steps=5000", "log_every=250"], {"seed": (0, 1, 2)})
    assert "converged" not in set(runs["outcome"].astype(str)) and "stalled" not in set(runs["outcome"].astype(str))


def test_a_short_run_is_judged_on_its_last_steps_never_on_t_equals_1(tmp_path_factory):
    # 200 steps logged every 200: rows at t = 1, 200 and the tail probes (steps 161-200).
    runs = classified(tmp_path_factory, ["num_mc=2", "steps=200"], {"lr": (0.01, 0.1)})
    assert (runs["tail_kl_excess"] < 12).all()  # the tail is where the runs ended, not their start at ~150 nats
    assert runs.set_index("lr").loc[0.1, "outcome"] != "slow"
    one_row = classified(tmp_path_factory, ["steps=100", "log_every=5000"], {"lr": (0.01,)})
    assert one_row["tail_rows"].iloc[0] >= 4 and one_row["outcome"].iloc[0] == "slow"  # the exact run is not done either
