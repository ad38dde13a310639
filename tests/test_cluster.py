"""``hydra.launcher.engine=submitit``: compiled chunks as submitit jobs, same files as the default engine."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from vi_sweep.core.schedule import row_steps

from tests.sweeps import composed_fields
from vi_sweep.launch.cluster import SHARED_NODE_ENV, executor_parameters, make_executor, padded, train_chunk
from vi_sweep.store.metrics import read_fields
from vi_sweep.core.trainer import split_fields, train_one

pytest.importorskip("submitit")

# 8 runs in 2 compiled groups (num_mc=1 and num_mc=4) and the group of their 2 exact baselines
# (vi_sweep.store.baselines): 3 submitit jobs, not 10.
GRID = ("lr=1e-2,1e-1", "num_mc=1,4", "seed=0,1", "steps=40", "log_every=10", "d=3", "grid=none", "hydra.launcher.compilation_cache_dir=null")


def load(sweep) -> pd.DataFrame:
    frames = [pd.read_parquet(path) for path in sorted(sweep.glob("*/metrics.parquet"))]
    return pd.concat(frames).sort_values(["lr", "num_mc", "seed", "step"]).reset_index(drop=True)


@pytest.mark.slow
def test_submitit_engine_writes_the_default_engines_data_with_one_job_per_group(cli, tmp_path):
    default = cli("multirun", *GRID, f"hydra.sweep.dir={tmp_path / 'default'}")
    assert default.returncode == 0, default.stderr
    sweep = tmp_path / "submitit"
    on_submitit = cli("multirun", *GRID, "hydra.launcher.engine=submitit", "hydra.launcher.submitit_cluster=local", f"hydra.sweep.dir={sweep}")
    assert on_submitit.returncode == 0, on_submitit.stderr

    a, b = load(tmp_path / "default"), load(sweep)
    assert len(a) == len(b) == 8 * len(row_steps(40, 10)[0])
    pd.testing.assert_frame_equal(b, a, rtol=1e-5, atol=1e-6)
    # Same job dirs: job k holds the same run under both engines.
    for job in range(8):
        assert read_fields(sweep / str(job) / "metrics.parquet") == read_fields(tmp_path / "default" / str(job) / "metrics.parquet")
    baselines = sorted(path.relative_to(sweep) for path in sweep.glob("baselines/*/metrics.parquet"))
    assert len(baselines) == 2 and baselines == sorted(path.relative_to(tmp_path / "default") for path in (tmp_path / "default").glob("baselines/*/metrics.parquet"))
    for path in baselines:
        pd.testing.assert_frame_equal(pd.read_parquet(sweep / path), pd.read_parquet(tmp_path / "default" / path), rtol=1e-5, atol=1e-6)
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 3  # one submitit job per compiled group, not one per run

    # Resume happens before anything is submitted: a complete sweep submits nothing more.
    again = cli("multirun", *GRID, "hydra.launcher.engine=submitit", "hydra.launcher.submitit_cluster=local", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr
    assert "8 jobs (0 computed, 8 resumed)" in again.stdout
    assert sorted(sweep.glob(".submitit/*/*_result.pkl")) == results


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.launcher.engine=slurm", "hydra.launcher.engine='slurm' is invalid: must be one of local, submitit"),
        ("hydra.launcher.submitit_cluster=pbs", "hydra.launcher.submitit_cluster='pbs' is invalid: must be one of local, slurm, debug, auto"),
        ("hydra.launcher.timeout_min=0", "hydra.launcher.timeout_min=0 is invalid: must be an integer >= 1"),
    ],
)
def test_a_bad_engine_option_is_one_line_and_nothing_written(cli, tmp_path, override, message):
    result = cli("multirun", "lr=0.1", "steps=5", "log_every=5", "d=2", "grid=none", override, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"vi_sweep: error: {message}"]
    assert not (tmp_path / "sweep").exists()


def test_train_chunk_equals_single_runs_and_sets_the_gpu_sharing_env(monkeypatch):
    for name in SHARED_NODE_ENV:  # set then delete: monkeypatch restores the original afterwards
        monkeypatch.setenv(name, "unset-by-test")
        monkeypatch.delenv(name)
    runs = [split_fields(composed_fields(f"lr={lr}", "num_mc=2", f"seed={seed}", "steps=20", "log_every=5", "d=3")) for lr, seed in ((0.05, 0), (0.3, 1), (10.0, 2))]
    spec = runs[0][0]
    assert all(other == spec for other, _ in runs)
    out = train_chunk(tuple(spec), [traced for _, traced in runs], compilation_cache_dir=None)

    assert {name: os.environ[name] for name in SHARED_NODE_ENV} == SHARED_NODE_ENV
    assert out["diverged_at"].shape == (3,)
    for slot, (_, traced) in enumerate(runs):
        state, rows = train_one(spec, traced)  # jit(train) on one run: an independent driver
        assert int(out["diverged_at"][slot]) == int(state.diverged_at)
        for name, values in out["rows"].items():
            # std of d equal sigmas (e^8 after Adam's first lr=10 step) is pure round-off, ~ulp(sigma).
            atol = 1e-6 + (1e-6 * float(np.max(np.abs(rows["sigma_mean"]))) if name == "sigma_std" else 0.0)
            np.testing.assert_allclose(values[slot], rows[name], rtol=1e-5, atol=atol, err_msg=name)


def test_padded_repeats_the_last_run_up_to_a_multiple():
    assert padded([{"a": 1}, {"a": 2}, {"a": 3}], 4) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 3}]
    assert padded([{"a": 1}, {"a": 2}], 2) == [{"a": 1}, {"a": 2}]
    assert padded([{"a": 1}], 1) == [{"a": 1}]


def test_the_readme_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"  # submitit's SLURM executor only checks that `srun` is on PATH
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = executor_parameters(
        cluster="slurm", timeout_min=120, cpus_per_task=8, gpus_per_node=1, mem_gb=32, partition="gpu",
        array_parallelism=64, slurm_additional_parameters={"qos": "normal"}, slurm_setup=["module load cuda/12"],
    )
    executor = make_executor(str(tmp_path / "%j"), "slurm", params)
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --mem=32GB", "#SBATCH --qos=normal", "export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}",
                 "module load cuda/12"):
        assert line in script.splitlines(), (line, script)
    assert executor._executor.parameters.get("array_parallelism", 64) == 64


def test_local_executor_parameters_carry_no_slurm_keys():
    params = executor_parameters(
        cluster="local", timeout_min=5, cpus_per_task=None, gpus_per_node=None, mem_gb=None, partition="gpu",
        array_parallelism=4, slurm_additional_parameters={}, slurm_setup=[],
    )
    assert params == {"name": "vi_sweep", "timeout_min": 5}


def test_the_slurm_preset_without_slurm_is_one_line_and_nothing_written(cli, tmp_path):
    # A machine without SLURM's commands: a PATH without srun (python runs by its absolute path).
    no_slurm = tmp_path / "empty_bin"
    no_slurm.mkdir()
    sweep = tmp_path / "sweep"
    result = cli(
        "multirun", "hydra/launcher=batched_slurm", "lr=0.1", "steps=5", "log_every=5", "d=2", "grid=none", f"hydra.sweep.dir={sweep}",
        env={"PATH": str(no_slurm)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'vi_sweep: error: hydra.launcher.submitit_cluster=slurm: Could not detect "srun", are you indeed on a slurm cluster?'
    ]
    assert not sweep.exists()


# ---------------------------------------------------------------------------------------------
# The engine's pure parts (the real cluster behind them: tests/test_slurm.py)
# ---------------------------------------------------------------------------------------------


def test_squeue_and_sacct_lines_become_task_states():
    from vi_sweep.launch.slurm_queue import TaskState, parse_sacct, parse_squeue

    squeue = parse_squeue("57_0|RUNNING|None\n57_1|PENDING|PartitionConfig\n18|CANCELLED|None\n")
    assert squeue == {"57_0": TaskState("RUNNING"), "57_1": TaskState("PENDING", "PartitionConfig"), "18": TaskState("CANCELLED")}
    assert [state.live for state in squeue.values()] == [True, True, False]
    assert [state.never_starts for state in squeue.values()] == [False, True, False]
    assert not TaskState("PENDING", "Resources").never_starts  # waiting clears it
    # Steps and pending array ranges are not tasks; "CANCELLED by 0" has ended.
    sacct = parse_sacct("57_0|COMPLETED\n57_0.batch|COMPLETED\n57_[1-2]|PENDING\n18|CANCELLED by 0\n")
    assert sacct == {"57_0": TaskState("COMPLETED"), "18": TaskState("CANCELLED by 0")}
    assert not sacct["18"].live


def test_failure_reasons_are_short_and_name_the_option_involved(tmp_path):
    from vi_sweep.launch.cluster import describe_end, error_line, sbatch_complaint
    from vi_sweep.launch.options import BatchedLauncherConf
    from vi_sweep.launch.slurm_queue import TaskState

    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nsubmitit.core.utils.UncompletedJobError: Job not requeued because: timed-out and not checkpointable.\n'
    assert error_line(trace) == "UncompletedJobError: Job not requeued because: timed-out and not checkpointable."
    assert error_line("KeyboardInterrupt\n") == "KeyboardInterrupt"
    assert sbatch_complaint(
        "sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: Requested node configuration is not available"
    ) == "Memory specification can not be satisfied; Requested node configuration is not available"
    options = BatchedLauncherConf(timeout_min=7)
    log_file = tmp_path / "1_0_log.err"
    log_file.write_text("starting\nsrun: error: task 0: Killed\n\n")
    assert describe_end(TaskState("TIMEOUT"), options, log_file) == "TIMEOUT (ran past timeout_min=7)"
    assert describe_end(TaskState("FAILED"), options, log_file) == "FAILED (srun: error: task 0: Killed)"
    assert describe_end(TaskState("CANCELLED by 0"), options, log_file) == "CANCELLED by 0"
    assert describe_end(TaskState("UNKNOWN"), options, log_file).startswith("ended without a result")


def test_the_ledger_keeps_whole_lines_and_skips_one_cut_by_a_kill(tmp_path):
    from vi_sweep.launch.task_ledger import RecordedTask, computation_id, ledger_path, record_tasks, recorded_tasks

    spec, traced = split_fields(composed_fields("lr=0.1", "num_mc=2", "seed=3", "steps=20", "log_every=5", "d=3"))
    task = RecordedTask("57_0", "/r.pkl", "/l.err", {"devices": 2, "cpu_devices": None}, (computation_id(spec, traced),))
    record_tasks(tmp_path, [task])
    with ledger_path(tmp_path).open("a") as ledger:
        ledger.write('{"job_id": "57_1", "result_f')  # SIGKILL mid-line
    assert recorded_tasks(tmp_path) == [task]
    # A run's key ignores the seed where the result does (the exact objective draws nothing).
    exact = split_fields(composed_fields("objective=exact", "lr=0.1", "seed=3", "steps=20", "log_every=5", "d=3"))
    other_seed = split_fields(composed_fields("objective=exact", "lr=0.1", "seed=4", "steps=20", "log_every=5", "d=3"))
    assert computation_id(*exact) == computation_id(*other_seed) != computation_id(spec, traced)


def test_a_task_shards_over_the_devices_the_plan_assumed(monkeypatch):
    from vi_sweep.launch.cluster import allotted_cpus, devices_per_task
    from vi_sweep.launch.options import BatchedLauncherConf

    assert devices_per_task(BatchedLauncherConf()) == 1
    assert devices_per_task(BatchedLauncherConf(cpus_per_task=4)) == 4
    assert devices_per_task(BatchedLauncherConf(cpus_per_task=4, cpu_devices=2)) == 2
    assert devices_per_task(BatchedLauncherConf(cpus_per_task=4, shard=False)) == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    assert allotted_cpus() is None
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    assert allotted_cpus() == 1
