"""Hydra's extension points, as a Hydra user reaches for them: a config directory of your own
(``--config-dir``, ``hydra.searchpath``) with an experiment, a scenario and optimizer options,
``--shell-completion``, ``--help`` and ``--version``. vi_sweep judges the config Hydra composes:
what the trainer can run runs, what it cannot is one line, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from vi_sweep.store.metrics import read_fields

TINY = ("steps=20", "log_every=10", "d=3")
NO_REPORT = "hydra.callbacks.sweep_summary.report=false"


@pytest.fixture
def user_configs(tmp_path) -> Path:
    """A user's config directory: an experiment (the lightning-hydra-template convention), a
    scenario, an optimizer option the trainer runs (Adam with its own b1) and one it cannot (Lion)."""
    root = tmp_path / "my_configs"
    files = {
        "experiment/exp1.yaml": """
            # @package _global_
            defaults:
              - override /optimizer: sgd
              - override /grid: none
            lr: 0.05
            num_mc: 4
            steps: 20
            log_every: 10
            d: 3
        """,
        "scenario/mine.yaml": """
            # @package _global_
            init_log_sigma: -1.0
            d: 7
        """,
        "optimizer/adam_slow.yaml": """
            defaults:
              - /schema/optimizer/adam@_here_
            b1: 0.5
        """,
        "optimizer/lion.yaml": """
            defaults:
              - /schema/optimizer/lion@_here_
        """,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def test_a_user_experiment_from_a_config_dir_runs(cli, user_configs, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--config-dir", str(user_configs), "+experiment=exp1", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    fields = read_fields(out / "metrics.parquet")
    assert (fields["optimizer"], fields["lr"], fields["num_mc"], fields["d"], fields["steps"]) == ("sgd", 0.05, 4, 3, 20)


def test_a_user_scenario_sweeps_with_the_batched_launcher(cli, user_configs, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("multirun", "--config-dir", str(user_configs), "scenario=mine", "lr=0.01,0.1", "grid=none",
                 "steps=20", "log_every=10", NO_REPORT, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    frame = pd.concat(pd.read_parquet(p) for p in sorted(sweep.glob("*/metrics.parquet")))
    assert sorted(frame["lr"].unique()) == [0.01, 0.1]
    assert (frame["scenario"] == "mine").all() and (frame["d"] == 7).all() and (frame["init_log_sigma"] == -1.0).all()


def test_hydra_searchpath_finds_a_user_scenario_too(cli, user_configs):
    result = cli("run", f"hydra.searchpath=[file://{user_configs}]", "scenario=mine", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "d: 7" in result.stdout and "init_log_sigma: -1.0" in result.stdout


def test_a_user_option_of_a_known_optimizer_runs(cli, user_configs, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--config-dir", str(user_configs), "optimizer=adam_slow", *TINY, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    fields = read_fields(out / "metrics.parquet")
    assert fields["optimizer"] == "adam" and fields["optimizer_b1"] == 0.5


@pytest.mark.parametrize("mode,launcher", [("run", None), ("multirun", "batched"), ("multirun", "basic")])
def test_an_optimizer_the_trainer_cannot_run_is_one_line(mode, launcher, cli, user_configs, tmp_path):
    out = tmp_path / "out"
    where = f"hydra.run.dir={out}" if mode == "run" else f"hydra.sweep.dir={out}"
    extra = [f"hydra/launcher={launcher}", "optimizer=adam,lion"] if launcher else ["optimizer=lion"]
    result = cli(mode, "--config-dir", str(user_configs), *extra, *TINY, "grid=none", where)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vi_sweep: error: optimizer=lion: the trainer cannot run optimizer lion; it runs adam")
    assert not out.exists()


def test_a_bad_value_under_the_basic_launcher_is_one_line_and_writes_nothing(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("multirun", "hydra/launcher=basic", "lr=0.1,-0.1", *TINY, "grid=none", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["vi_sweep: error: lr=-0.1 is invalid: must be a finite number > 0 (job 1: lr=-0.1 steps=20 log_every=10 d=3 grid=none)"]
    assert not sweep.exists()


def test_shell_completion_installs_and_completes_groups_of_the_search_path(cli, user_configs):
    install = cli("--shell-completion", "install=bash")
    assert install.returncode == 0, install.stderr
    assert "complete -o nospace -o default -F hydra_bash_completion vi-sweep" in install.stdout
    # The installed function, in a real bash, asks `vi-sweep -sc query=bash` what may follow
    # (Hydra's completion reads overrides from the line, so a user directory comes in through
    # hydra.searchpath: it does not see --config-dir).
    bin_dir = os.path.dirname(sys.executable)
    script = (
        f'eval "$(vi-sweep -sc install=bash)"; COMP_LINE="vi-sweep multirun hydra.searchpath=[file://{user_configs}] optimizer=";'
        'COMP_POINT=${#COMP_LINE}; COMP_WORDS=($COMP_LINE); COMP_CWORD=3; hydra_bash_completion; echo "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    completed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr
    options = set(completed.stdout.split())
    assert {"optimizer=adam", "optimizer=sgd", "optimizer=adam_slow", "optimizer=lion"} <= options


def test_help_lists_the_commands_and_the_groups_users_choose_from(cli, user_configs):
    result = cli("--help", "--config-dir", str(user_configs))
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("== Commands ==")[1].split("== Configuration groups ==")[0]
    for command in ("run", "multirun", "report"):
        assert any(line.split()[:1] == [command] for line in commands.splitlines()), command
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "experiment: exp1" in groups and "optimizer: adagrad, adam, adam_slow, adamw, lion, momentum, rmsprop, sgd" in groups
    assert "schema" not in groups and "hydra/" not in groups


def test_version_is_vi_sweeps_with_jax_and_hydra(cli):
    from importlib.metadata import version

    import vi_sweep

    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vi_sweep {vi_sweep.__version__} (JAX {version('jax')}, jaxlib {version('jaxlib')}, Hydra {version('hydra-core')})"


def test_multirun_cfg_shows_each_job(cli):
    result = cli("multirun", "--cfg", "job", "lr=0.1,0.2", "grid=none")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("# job ") == 2 and "lr: 0.1\n" in result.stdout and "lr: 0.2\n" in result.stdout
