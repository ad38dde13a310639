"""Stress scenarios and sweeps over the experiment space, from the command line.

A scenario is one ``# @package _global_`` file that sets several keys at once (and may override
a group, e.g. the target); command-line overrides still win. Each scenario's values below are
the issue's definitions, checked on the config Hydra composes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from vi_sweep.launch.config import CONF_DIR, group_options
from vi_sweep.store.metrics import read_fields
from vi_sweep.core.trainer import split_fields, train_one

SCENARIOS = {  # scenario -> what it must set (dotted keys)
    "none": {"d": 100, "init_log_sigma": -2.0, "target.name": "standard_normal"},
    "seed_stress": {"lr": 0.2, "num_mc": 1, "init_log_sigma": -3.0, "steps": 4000, "d": 100},
    "tiny_init": {"init_log_sigma": -10.0},
    "wide_init": {"init_log_sigma": 3.0},
    "high_dim": {"d": 10_000},
    "ill_conditioned": {"target.name": "ill_conditioned", "target.condition": 1e4},
    "correlated": {"target.name": "correlated", "target.rho": 0.9},
    "far_mean": {"target.name": "shifted", "target.offset": 10.0},
    "breast_cancer": {"target.name": "logistic_regression", "target.dataset": "breast_cancer", "d": 31},
    "randhie": {"target.name": "poisson_regression", "target.dataset": "randhie", "d": 10},
}


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def select(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def test_every_scenario_file_is_listed_here():
    assert set(group_options("scenario")) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_composes_to_its_definition(scenario):
    cfg = composed(f"scenario={scenario}")
    for key, value in SCENARIOS[scenario].items():
        assert select(cfg, key) == value, key


def test_command_line_overrides_win_over_every_kind_of_scenario_key():
    assert composed("scenario=high_dim", "steps=50").steps == 50
    assert composed("scenario=high_dim", "d=20").d == 20
    assert composed("scenario=correlated", "target.rho=0.5").target.rho == 0.5
    assert composed("scenario=far_mean", "target=standard_normal").target.name == "standard_normal"


def test_a_glob_over_all_scenarios_runs_from_the_cli(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("multirun", "scenario=glob(*)", "steps=5", "log_every=5", "grid=none", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    frames = {f["scenario"].iloc[0]: f for f in map(pd.read_parquet, sorted(sweep.glob("*/metrics.parquet")))}
    assert set(frames) == set(SCENARIOS)
    for scenario, expected in SCENARIOS.items():
        frame = frames[scenario]
        assert frame["steps"].iloc[0] == 5 and frame["step"].tolist() == [1, 5]  # the command line won
        assert (frame["status"] == "ok").all() and np.isfinite(frame["kl_excess"]).all()
        assert np.isfinite(frame["kl"]).all() != frame["target"].iloc[0].endswith("_regression")  # no closed-form KL there
        for key, value in expected.items():
            if key == "steps":
                continue
            column = key.replace(".", "_").replace("target_name", "target")
            assert frame[column].iloc[0] == value, (scenario, key)
    assert f"vi_sweep: {len(SCENARIOS)} runs written to" in result.stdout


def test_an_estimator_sweep_runs_each_estimator_and_records_it(cli, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = ["steps=20", "log_every=10", "d=6", "num_mc=3", "lr=0.05", "grid=none"]
    result = cli("multirun", "objective.estimator=reparam,stl,score", *overrides, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    paths = sorted(sweep.glob("*/metrics.parquet"))
    frames = {f["estimator"].iloc[0]: f for f in map(pd.read_parquet, paths)}
    assert set(frames) == {"reparam", "stl", "score"}
    for path in paths:  # each job trained with its own estimator: rerun its recorded fields in-process
        _, rows = train_one(*split_fields(read_fields(path)))
        np.testing.assert_allclose(pd.read_parquet(path)["kl"].to_numpy(), rows["kl"], rtol=1e-5)
    # Same eps stream, different gradients: the trajectories differ.
    assert not np.allclose(frames["reparam"]["kl"].to_numpy(), frames["stl"]["kl"].to_numpy())
    assert not np.allclose(frames["reparam"]["kl"].to_numpy(), frames["score"]["kl"].to_numpy())


def test_optimizer_and_target_sweeps_give_parquets_that_concatenate_by_column(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("multirun", "optimizer=adam,sgd", "target=standard_normal,correlated", "steps=5", "log_every=5", "d=4",
                 "grid=none", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    frame = pd.concat([pd.read_parquet(p) for p in sorted(sweep.glob("*/metrics.parquet"))], ignore_index=True)
    combos = set(map(tuple, frame[["optimizer", "target"]].drop_duplicates().to_numpy().tolist()))
    assert combos == {(o, t) for o in ("adam", "sgd") for t in ("standard_normal", "correlated")}
    assert frame.loc[frame["optimizer"] == "sgd", "optimizer_b1"].isna().all()
    assert (frame.loc[frame["optimizer"] == "adam", "optimizer_b1"] == 0.9).all()
    assert (frame.loc[frame["target"] == "correlated", "target_rho"] == 0.9).all()
    assert frame.loc[frame["target"] == "standard_normal", "target_rho"].isna().all()


KEY_OF_ANOTHER_OPTION = [  # (overrides, the one-line error)
    (["optimizer=sgd", "optimizer.b1=0.5"], "optimizer.b1 is not a key of optimizer=sgd; its keys are name, grad_clip"),
    (["optimizer=adam,momentum", "optimizer.b1=0.5"], "optimizer.b1 is not a key of optimizer=momentum;"),
    (["target.rho=0.5"], "target.rho is not a key of target=standard_normal; its keys are name"),
    (["scenario=correlated,far_mean", "target.rho=0.5"], "target.rho is not a key of target=shifted; its keys are name, offset"),
    (["target=glob(*)", "target.offset=1"], "target.offset is not a key of target=correlated;"),  # the first job's target without it
    (["objective.num_mc=4"], "objective.num_mc is not a key of objective=mc; its keys are name, estimator"),
]


@pytest.mark.parametrize("overrides,message", KEY_OF_ANOTHER_OPTION)
def test_a_key_of_an_option_that_is_not_chosen_is_a_one_line_error(overrides, message, tmp_path, cli):
    # A subprocess, as a user runs it: Hydra's logging setup closes the file handlers of the
    # process it runs in (logging.config.dictConfig), pytest's own among them.
    out = tmp_path / "out"
    result = cli("multirun", *overrides, f"hydra.sweep.dir={out}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"vi_sweep: error: {message}"), result.stderr
    assert not out.exists()


@pytest.mark.parametrize("overrides", [
    ["scenario=correlated", "target.rho=0.5"],  # the scenario chooses the target
    ["target=correlated", "target.rho=0.5,0.7"],
    ["target=glob(corr*)", "target.rho=0.5"],
    ["optimizer=adam,adamw", "optimizer.b1=0.5"],
    ["optimizer=momentum", "optimizer.nesterov=true", "optimizer.grad_clip=1.0"],
])
def test_keys_of_the_chosen_options_compose_for_every_job(overrides, cli):
    result = cli("multirun", *overrides, "grid=none", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("# job ") >= 1


def test_seed_stress_multirun_sweeps_seeds_and_keeps_its_lr_and_num_mc(cli):
    result = cli("multirun", "scenario=seed_stress", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr
    params = result.stdout.split("params:", 1)[1].split("hydra_logging:", 1)[0]
    assert "seed: range(0,3)" in params
    assert "lr:" not in params and "num_mc:" not in params


def test_the_default_grid_still_applies_to_other_scenarios(cli):
    result = cli("multirun", "scenario=tiny_init", "--cfg", "hydra")
    params = result.stdout.split("params:", 1)[1].split("hydra_logging:", 1)[0]
    assert "lr: 1e-4,1e-2,5e-2,2e-1,1.0,10.0" in params and "num_mc: 1,32" in params
