"""The cluster path on a real one-node SLURM (slurmctld, slurmd, munge, slurmdbd + MariaDB).

The cluster comes from ``.ci/slurm-up`` (``.ci/run`` starts it before the tests and stops it
after). When it is not running, the ``slurm`` fixture starts it itself and stops it at the end of
the session, so ``python -m pytest`` alone runs these tests for real; they are skipped, with the
script's reason, only where SLURM cannot start (not root, no apt-get), or when
``VI_SWEEP_SLURM=off``. Sweeps are tiny (d=3, 40 steps, 1 CPU a task): each task still spends
6-8 s importing JAX and compiling.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import REPO, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STATE_DIR = Path(os.environ.get("VI_SWEEP_SLURM_DIR", "/tmp/vi_sweep_slurm"))
CANNOT_START = 3  # .ci/slurm-up's exit code where SLURM cannot run (not root, no apt-get)

# 8 runs in 2 compiled groups (num_mc=1, num_mc=4) and their 2 exact baselines: 3 tasks.
GRID = ("lr=1e-2,1e-1", "num_mc=1,4", "seed=0,1", "steps=40", "log_every=10", "d=3", "grid=none")
TWO_RUNS = ("lr=1e-2,1e-1", "num_mc=1", "seed=0", "steps=40", "log_every=10", "d=3", "grid=none")
# The same 2 runs in one group, without baselines: 1 task.
ONE_TASK = (*TWO_RUNS, "hydra.launcher.exact_baselines=false")
BATCHED_SLURM = ("hydra/launcher=batched_slurm", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1")
NO_REPORT = "hydra.callbacks.sweep_summary.report=false"


# ---------------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------------


def _cluster_answers(env: dict) -> bool:
    try:
        return subprocess.run(["sinfo", "--noheader"], env=env, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _read_cluster_env() -> dict[str, str]:
    """The variables ``.ci/slurm-up`` wrote to ``cluster.env`` (``export NAME=value`` lines)."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in (STATE_DIR / "cluster.env").read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


@pytest.fixture(scope="session")
def slurm():
    """The running test cluster's environment (``SLURM_CONF``), set in this process for the session.

    Detects a cluster ``.ci/slurm-up`` started (its ``cluster.env`` and ``sinfo`` answering);
    otherwise starts one and stops it again after the session.
    """
    if os.environ.get("VI_SWEEP_SLURM") == "off":
        pytest.skip("VI_SWEEP_SLURM=off")
    started_here = False
    if not ((STATE_DIR / "cluster.env").exists() and _cluster_answers({**os.environ, **_read_cluster_env()})):
        up = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up")], capture_output=True, text=True, timeout=900)
        reason = (up.stderr.strip().splitlines() or ["no output"])[-1]
        if up.returncode == CANNOT_START:
            pytest.skip(reason)
        if up.returncode != 0:
            pytest.fail(f".ci/slurm-up failed: {reason}", pytrace=False)
        started_here = "already up" not in reason  # a start in progress elsewhere finished first
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _read_cluster_env().items():
            patch.setenv(name, value)
        yield dict(os.environ)
    if started_here:
        subprocess.run(["bash", str(REPO / ".ci" / "slurm-down")], capture_output=True, timeout=120)


def squeue(*job_ids: str) -> dict[str, str]:
    """Task id -> SLURM state, for the given jobs (and their array tasks) still known to SLURM."""
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", "--jobs", ",".join(job_ids)], capture_output=True, text=True
    )
    return dict(line.split("|") for line in out.stdout.split())


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120.0, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)


def start_sweep(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.Popen:
    full_env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "vi_sweep", "multirun", *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@contextlib.contextmanager
def killed_if_left_running(launcher: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """The launcher, killed at the block's end if it is still running (a test that failed waiting)."""
    try:
        yield launcher
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()


@pytest.fixture
def hold(tmp_path) -> Iterator[Path]:
    """A file tasks wait on (:func:`held_while`), removed when the test ends however it ends: a
    test that fails first must not leave its tasks holding the cluster's CPUs until timeout_min."""
    path = tmp_path / "hold"
    path.touch()
    yield path
    path.unlink(missing_ok=True)


def held_while(hold: Path) -> str:
    """An override whose tasks wait in their setup while ``hold`` exists.

    A task cancelled while held is cancelled before it can write its result, however fast its
    runs are; a task that only waits for squeue to say RUNNING may have finished by the scancel.
    """
    return f'hydra.launcher.slurm_setup=["while test -e {hold}; do sleep 0.2; done"]'


def submitted_tasks(sweep: Path) -> list[str]:
    """Ids of the tasks submitted into ``sweep``, from submitit's pickles (``.submitit/<id>/<id>_submitted.pkl``)."""
    ids = [path.parent.name for path in sweep.glob(".submitit/*/*_submitted.pkl")]
    return sorted(ids, key=lambda task: [int(part) for part in task.split("_")])


def recorded_tasks(sweep: Path) -> list[dict]:
    ledger = sweep / ".submitit" / "tasks.jsonl"
    return [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []


# ---------------------------------------------------------------------------------------------
# Comparing sweeps file for file
# ---------------------------------------------------------------------------------------------

# Files that legitimately differ between launchers: the launcher's own config (hydra.yaml,
# multirun.yaml), logs with timestamps, and the cluster's bookkeeping.
def _compared(path: Path) -> bool:
    parts = path.parts
    return not (parts[0] in (".submitit", ".submit_job", ".vi_sweep") or path.name in ("hydra.yaml", "multirun.yaml") or path.suffix == ".log")


def sweep_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and _compared(p.relative_to(root))}


def assert_same_files(ours: Path, reference: Path) -> None:
    a, b = sweep_files(ours), sweep_files(reference)
    assert sorted(a) == sorted(b)
    differing = [name for name in a if a[name] != b[name]]
    assert not differing, f"{len(differing)} files differ, e.g. {differing[:4]}"


def local_sweep(root: Path, *args: str) -> Path:
    """A sweep run here (the reference), in ``root/sweep`` (the report names its sweep dir by its name)."""
    sweep = root / "sweep"
    result = run_cli("multirun", *args, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    return sweep


@pytest.fixture(scope="module")
def one_cpu_reference(tmp_path_factory) -> Path:
    """GRID computed here on one CPU device: what 1-CPU tasks must reproduce bit for bit."""
    return local_sweep(tmp_path_factory.mktemp("one_cpu"), *GRID, "hydra.launcher.cpu_devices=1", NO_REPORT)


# ---------------------------------------------------------------------------------------------
# Same files as a local sweep
# ---------------------------------------------------------------------------------------------


def test_a_batched_slurm_sweep_equals_the_local_sweep_file_for_file(slurm, tmp_path):
    # Tasks with 2 CPUs shard a chunk over 2 devices as this 2-device sweep does; the exact
    # baselines run on one device in both (they used to be sharded in a task: float32 round-off).
    reference = local_sweep(tmp_path / "local", *GRID, "hydra.launcher.cpu_devices=2")
    sweep = tmp_path / "slurm" / "sweep"
    result = run_cli("multirun", *GRID, *BATCHED_SLURM, "hydra.launcher.cpus_per_task=2", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert "8 jobs (8 computed, 0 resumed) in 3 groups" in result.stdout
    assert len(submitted_tasks(sweep)) == 3  # one SLURM task per compiled chunk, not one per run
    assert_same_files(sweep, reference)


@pytest.fixture(scope="module")
def submitit_slurm_sweep(slurm, tmp_path_factory) -> tuple[Path, Path]:
    """A 2-run sweep with hydra-submitit-launcher on SLURM (one task per run) and the same with the basic launcher."""
    reference = local_sweep(tmp_path_factory.mktemp("basic"), *TWO_RUNS, "hydra/launcher=basic")
    sweep = tmp_path_factory.mktemp("submitit_slurm") / "sweep"
    result = run_cli("multirun", *TWO_RUNS, "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    return sweep, reference


def test_a_submitit_slurm_sweep_equals_the_basic_launchers_file_for_file(submitit_slurm_sweep):
    sweep, reference = submitit_slurm_sweep
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 2  # one task per run
    assert_same_files(sweep, reference)


def test_a_submitit_slurm_rerun_computes_nothing_new(submitit_slurm_sweep):
    sweep, reference = submitit_slurm_sweep
    written = {path: path.stat().st_mtime_ns for path in sweep.glob("*/metrics.parquet")}
    again = run_cli("multirun", *TWO_RUNS, "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5", NO_REPORT, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr
    assert {path: path.stat().st_mtime_ns for path in sweep.glob("*/metrics.parquet")} == written
    assert_same_files(sweep, reference)


# ---------------------------------------------------------------------------------------------
# A killed launcher, killed and failing tasks
# ---------------------------------------------------------------------------------------------


def test_a_sigkilled_launchers_rerun_collects_its_tasks_instead_of_resubmitting(slurm, tmp_path, one_cpu_reference):
    sweep = tmp_path / "sweep"
    args = (*GRID, *BATCHED_SLURM, NO_REPORT, f"hydra.sweep.dir={sweep}")
    launcher = start_sweep(*args)
    try:
        ids = wait_until(lambda: len(submitted_tasks(sweep)) == 3 and submitted_tasks(sweep), "the launcher to submit its 3 tasks")
        time.sleep(1.0)  # it records them at once, then waits for them
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.communicate()
    assert any(state in ("PENDING", "RUNNING") for state in squeue(*ids).values())  # tasks outlive their launcher

    rerun = run_cli("multirun", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "8 jobs (8 computed, 0 resumed)" in rerun.stdout
    assert submitted_tasks(sweep) == ids  # nothing submitted again
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 3
    assert_same_files(sweep, one_cpu_reference)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vi_sweep: error: "), stderr
    return lines[0]


def test_a_ctrl_c_leaves_the_tasks_running_and_names_the_time_named_dir_whose_rerun_collects_them(slurm, tmp_path, hold):
    args = (*ONE_TASK, *BATCHED_SLURM, held_while(hold), NO_REPORT)  # no hydra.sweep.dir: named by the time
    with killed_if_left_running(start_sweep(*args, cwd=tmp_path)) as launcher:
        (sweep,) = wait_until(lambda: [d for d in (tmp_path / "outputs" / "multiruns").glob("*/*") if recorded_tasks(d)], "the launcher to record its task")
        launcher.send_signal(signal.SIGINT)
        out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"vi_sweep: interrupted; submitted tasks keep running: rerun the same command with hydra.sweep.dir={sweep} to collect them"
    (task,) = submitted_tasks(sweep)
    assert squeue(task).get(task) in ("PENDING", "RUNNING")  # the task outlives its launcher

    hold.unlink()
    rerun = run_cli("multirun", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert submitted_tasks(sweep) == [task]  # collected, not submitted again
    assert len(list(sweep.glob("*/metrics.parquet"))) == 2


def test_a_cancelled_task_is_one_line_naming_it_and_a_rerun_computes_only_its_runs(slurm, tmp_path, one_cpu_reference, hold):
    sweep = tmp_path / "sweep"
    args = (*GRID, *BATCHED_SLURM, held_while(hold), NO_REPORT, f"hydra.sweep.dir={sweep}")
    with killed_if_left_running(start_sweep(*args)) as launcher:
        tasks = wait_until(lambda: len(submitted_tasks(sweep)) == 3 and submitted_tasks(sweep), "the launcher to submit its 3 tasks")
        first = tasks[0]  # the num_mc=1 group's 4 runs
        wait_until(lambda: squeue(first).get(first) == "RUNNING", f"task {first} to run")
        subprocess.run(["scancel", first], check=True)
        wait_until(lambda: squeue(first).get(first, "CANCELLED") == "CANCELLED", f"task {first} to be cancelled")
        hold.unlink()  # the other two go on
        out, err = launcher.communicate(timeout=180)
    assert launcher.returncode == 1, err
    line = _one_error_line(err)
    assert f"task {first}: CANCELLED" in line and "1 of 3 SLURM tasks failed" in line, line

    rerun = run_cli("multirun", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "8 jobs (4 computed, 4 resumed)" in rerun.stdout
    assert len(submitted_tasks(sweep)) == 4  # one new task, for the cancelled one's runs only
    assert_same_files(sweep, one_cpu_reference)


def test_a_task_past_timeout_min_is_one_line_naming_it_and_the_timeout(slurm, tmp_path):
    # The task's shell sleeps past its 1-minute limit, so SLURM ends it (TIMEOUT) before Python starts.
    sweep = tmp_path / "sweep"
    result = run_cli(
        "multirun", *ONE_TASK, *BATCHED_SLURM, "hydra.launcher.timeout_min=1", 'hydra.launcher.slurm_setup=["sleep 300"]', NO_REPORT,
        f"hydra.sweep.dir={sweep}", timeout=300,
    )
    assert result.returncode == 1, result.stderr
    (task,) = submitted_tasks(sweep)
    line = _one_error_line(result.stderr)
    assert f"task {task}: TIMEOUT (ran past timeout_min=1)" in line, line
    assert not list(sweep.glob("*/metrics.parquet"))


def test_a_task_that_raises_is_one_line_naming_it_and_its_exception(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("multirun", *ONE_TASK, *BATCHED_SLURM, 'hydra.launcher.slurm_setup=["export JAX_PLATFORMS=tpu"]', NO_REPORT, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.stderr
    (task,) = submitted_tasks(sweep)
    line = _one_error_line(result.stderr)
    assert f"task {task}: RuntimeError: Unable to initialize backend 'tpu'" in line, line


def test_without_accounting_a_task_killed_before_its_result_does_not_hang_the_launcher(slurm, tmp_path, hold):
    # An accounting-less SLURM (AccountingStorageType=none) cannot run beside this one: sacct is
    # replaced by what it prints there. submitit's own wait polls sacct and waited forever.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (fake / "sacct").chmod(0o755)
    sweep = tmp_path / "sweep"  # the hold is never released: the task is cancelled in its setup
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    with killed_if_left_running(start_sweep(*ONE_TASK, *BATCHED_SLURM, held_while(hold), NO_REPORT, f"hydra.sweep.dir={sweep}", env=env)) as launcher:
        (task,) = wait_until(lambda: submitted_tasks(sweep), "the launcher to submit its task")
        wait_until(lambda: squeue(task).get(task) == "RUNNING", "the task to run")
        subprocess.run(["scancel", task], check=True)
        out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 1, err
    line = _one_error_line(err)
    assert f"task {task}: CANCELLED" in line, line


# ---------------------------------------------------------------------------------------------
# Requests the cluster can never meet
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, reason",
    [
        ("hydra.launcher.partition=nope", "invalid partition specified: nope"),
        ("hydra.launcher.gpus_per_node=1", "Invalid generic resource (gres) specification"),
        ("hydra.launcher.mem_gb=4096", "Memory specification can not be satisfied"),
        ("hydra.launcher.cpus_per_task=64", "Reason=PartitionConfig"),  # accepted by sbatch, then PENDING forever
    ],
)
def test_a_request_the_cluster_can_never_meet_is_one_line_and_nothing_is_left(slurm, tmp_path, override, reason):
    sweep = tmp_path / "sweep"
    result = run_cli("multirun", *ONE_TASK, *BATCHED_SLURM, override, NO_REPORT, f"hydra.sweep.dir={sweep}", timeout=120)
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert reason in line and override.removeprefix("hydra.launcher.") in line, line
    assert not sweep.exists()  # no job dir, no submitit folder
    assert not [state for state in _squeue_all().values() if state in ("PENDING", "RUNNING")]  # nothing left queued


def _squeue_all() -> dict[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T"], capture_output=True, text=True)
    return dict(line.split("|") for line in out.stdout.split())


def test_the_slurm_preset_runs_on_a_cluster_without_a_gpu_partition(slurm, tmp_path):
    # Its defaults ask for nothing but time: the cluster's default partition, CPU, memory.
    sweep = tmp_path / "sweep"
    result = run_cli("multirun", *ONE_TASK, "hydra/launcher=batched_slurm", NO_REPORT, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert len(list(sweep.glob("*/metrics.parquet"))) == 2
