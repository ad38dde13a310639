"""Ctrl-C at the worst moments, raised there on purpose (a real one hits them only now and then:
tests/test_trust.py's CLI test did, in CI).

The launcher's "interrupted: N of M runs written" line must count exactly the run files on disk
(a rerun resumes those); whatever a Ctrl-C breaks on its way out, the command ends in that one
line and status 130; a second Ctrl-C ends it at once, quietly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.sweeps import flat_fields
from vi_sweep.core.trainer import split_fields, train_one
from vi_sweep.launch.batched import SweepJob, write_compact_jobs
from vi_sweep.launch.interrupts import interrupt_noted, interrupts_held, interrupts_noted
from vi_sweep.launch.task import finish_job
from vi_sweep.store import metrics as metrics_store
from vi_sweep.store.metrics import read_fields


@pytest.fixture
def ctrl_c_after_the_rename(monkeypatch):
    """Follow the atomic rename of a run file (a job's metrics, a compact chunk's jobs file; not its
    parameters, written first) at once by a SIGINT to this process."""
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        if os.path.basename(dst) == "metrics.parquet" or os.path.basename(dst).startswith("jobs-"):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(metrics_store.os, "replace", replace_then_interrupt)


@pytest.fixture(scope="module")
def run():
    fields = flat_fields()
    _, rows = train_one(*split_fields(fields))
    return fields, rows


def test_a_ctrl_c_right_after_a_jobs_run_file_lands_still_counts_it_as_written(tmp_path, run, ctrl_c_after_the_rename):
    fields, rows = run
    landed: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        finish_job(tmp_path / "0", None, fields, "none", rows, 0, echo=False, task_values=dict(fields), on_written=lambda: landed.append("0"))
    assert landed == ["0"]
    assert read_fields(tmp_path / "0" / "metrics.parquet") is not None


def test_a_ctrl_c_right_after_a_compact_chunk_lands_still_counts_its_runs_as_written(tmp_path, run, ctrl_c_after_the_rename):
    fields, rows = run
    jobs = [SweepJob(num=n, overrides=[f"seed={n}"], fields=fields, task_values=dict(fields), scenario="none", out_dir=tmp_path / str(n)) for n in (0, 1)]
    landed: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        write_compact_jobs(tmp_path, jobs, [(0, rows, 0), (1, rows, 0)], on_landed=landed.extend)
    assert landed == [0, 1]
    assert len(list((tmp_path / "runs").glob("jobs-*.parquet"))) == 1


def test_a_ctrl_c_while_interrupts_are_held_comes_once_they_are_released():
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")
        steps.append("after the block")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_holding_interrupts_keeps_a_users_own_handler_and_calls_it_once():
    calls: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            assert calls == []
        assert calls == [signal.SIGINT]
        with interrupts_held():
            pass
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_holding_interrupts_outside_the_main_thread_just_runs_the_block():
    seen: list[BaseException | str] = []

    def body():
        try:
            with interrupts_held():
                seen.append("ran")
        except BaseException as err:  # noqa: BLE001 - the test reports whatever it was
            seen.append(err)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == ["ran"]


@pytest.fixture
def restored_sigint():
    """Python's own SIGINT handler back after the test, whatever it left."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_noted_ctrl_c_is_remembered_while_the_program_unwinds(restored_sigint):
    seen: list[bool] = []
    with pytest.raises(AttributeError):
        with interrupts_noted():
            assert not interrupt_noted()
            try:
                try:
                    signal.raise_signal(signal.SIGINT)
                finally:  # what OmegaConf's flag_override does to a list left half-appended
                    raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")
            finally:
                seen.append(interrupt_noted())
    assert seen == [True]
    # Left, even after an interrupt, the block gives Python's handler back (a notebook, a driver script go on).
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not interrupt_noted()
    with interrupts_noted():  # a new block starts afresh
        assert not interrupt_noted()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_dropped_by_a_garbage_collector_callback_arrives_a_moment_later(restored_sigint):
    """Python prints a KeyboardInterrupt raised in a __del__ or a gc callback (JAX has one) as
    "Exception ignored" and drops it: the block sends it again."""
    hook = sys.unraisablehook

    class Dropped:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        with interrupts_noted():
            Dropped()  # gone at once: its __del__ gets the Ctrl-C
            time.sleep(5)  # the Ctrl-C sent again lands here
    assert sys.unraisablehook is hook


def test_nested_noting_blocks_share_one_handler_and_leave_pythons_behind(restored_sigint):
    with interrupts_noted():
        outer = signal.getsignal(signal.SIGINT)
        with interrupts_noted():
            assert signal.getsignal(signal.SIGINT) is outer
        assert signal.getsignal(signal.SIGINT) is outer
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                signal.raise_signal(signal.SIGINT)
        assert interrupt_noted()


def test_noting_leaves_a_users_own_handler_alone(restored_sigint):
    calls: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    with interrupts_noted():
        signal.raise_signal(signal.SIGINT)
    assert calls == [signal.SIGINT] and not interrupt_noted()


SMALL_GRID = (
    "lr=0.01,0.03", "seed=0,1,2", "num_mc=1", "d=2", "steps=200", "log_every=100", "grid=none",
    "hydra.launcher.max_runs_per_call=2", "hydra.launcher.exact_baselines=false",
    "hydra.callbacks.sweep_summary.report=false",
)


def run_with(prelude: str, *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """``python -m vi_sweep ARGS`` as the command runs it (``vi_sweep.__main__.cli``), after ``prelude``."""
    program = textwrap.dedent(prelude) + "\nimport sys\nfrom vi_sweep.__main__ import cli\nsys.argv = ['vi_sweep', *sys.argv[1:]]\ncli()\n"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-c", program, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def interrupted_in_a_time_named_sweep(prelude: str, *args: str, cwd: Path) -> tuple[Path, str]:
    """``python -m vi_sweep multirun ARGS`` in ``cwd`` with no ``hydra.sweep.dir`` (so named by the
    time), interrupted by ``prelude``: the sweep's directory and the last line it printed."""
    result = run_with(prelude, "multirun", *args, cwd=cwd)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    (sweep,) = (cwd / "outputs" / "multiruns").glob("*/*")
    return sweep, result.stderr.strip().splitlines()[-1]


# The third job's write is interrupted, and the interrupt turned into another error on its way out.
INTERRUPT_BECOMES_ANOTHER_ERROR = """
    import signal
    import vi_sweep.launch.batched as batched
    real_write_job, calls = batched.write_job, []
    def write_job(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            try:
                signal.raise_signal(signal.SIGINT)
            finally:
                raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")
        return real_write_job(*args, **kwargs)
    batched.write_job = write_job
"""


def test_a_ctrl_c_that_cleanup_turns_into_another_error_is_still_one_line_and_exit_130(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_with(INTERRUPT_BECOMES_ANOTHER_ERROR, "multirun", *SMALL_GRID, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "vi_sweep: interrupted: 2 of 6 runs written; rerun the same command to resume"
    assert len(list(sweep.glob("*/metrics.parquet"))) == 2
    rerun = run_cli("multirun", *SMALL_GRID, f"hydra.sweep.dir={sweep}")
    assert rerun.returncode == 0, rerun.stderr
    assert "6 jobs (4 computed, 2 resumed)" in rerun.stdout


# A first Ctrl-C at the third job's write, a second while the launcher tidies up after it.
TWO_CTRL_CS = """
    import signal
    import vi_sweep.launch.batched as batched
    from vi_sweep.launch.interrupts import interrupt_noted
    real_write_job, real_configure_log, calls = batched.write_job, batched.configure_log, []
    def write_job(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real_write_job(*args, **kwargs)
    def configure_log(*args, **kwargs):
        if interrupt_noted():
            signal.raise_signal(signal.SIGINT)
        return real_configure_log(*args, **kwargs)
    batched.write_job, batched.configure_log = write_job, configure_log
"""


AGAIN = "vi_sweep: interrupted again: exiting now (every run file on disk is whole; rerun the same command to resume)"


def test_a_second_ctrl_c_leaves_at_once_in_one_line_with_every_file_whole(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_with(TWO_CTRL_CS, "multirun", *SMALL_GRID, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == AGAIN
    written = list(sweep.glob("*/metrics.parquet"))
    assert len(written) == 2 and all(read_fields(p) is not None for p in written)
    assert not list(sweep.rglob("*.tmp"))


def test_the_installed_script_ends_a_ctrl_c_in_one_line_as_python_m_does(tmp_path):
    """The ``vi-sweep`` console script calls what its entry point names, not ``__main__``'s block."""
    program = textwrap.dedent("""
        import signal, sys
        from importlib.metadata import entry_points
        import vi_sweep.launch.entry as entry
        real_run_hydra = entry.run_hydra
        def run_hydra(*args, **kwargs):  # a Ctrl-C while Hydra composes, before any launcher counts runs
            signal.raise_signal(signal.SIGINT)
            return real_run_hydra(*args, **kwargs)
        entry.run_hydra = run_hydra
        (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "vi-sweep"]
        sys.argv = ["vi-sweep", "multirun", "lr=0.1", "d=2", "steps=20", "log_every=10"]
        sys.exit(script.load()())
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["vi_sweep: interrupted; rerun the same command to resume (finished runs are kept)"]


def test_an_interrupted_sweep_named_by_the_time_says_which_directory_to_resume(tmp_path):
    """The default sweep directory is named by the time: the same command would start another."""
    sweep, last = interrupted_in_a_time_named_sweep(INTERRUPT_BECOMES_ANOTHER_ERROR, *SMALL_GRID, cwd=tmp_path)
    assert last == f"vi_sweep: interrupted: 2 of 6 runs written; rerun the same command with hydra.sweep.dir={sweep} to resume"
    rerun = run_cli("multirun", *SMALL_GRID, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "6 jobs (4 computed, 2 resumed)" in rerun.stdout


def test_a_second_ctrl_c_in_a_sweep_named_by_the_time_names_its_directory_too(tmp_path):
    sweep, last = interrupted_in_a_time_named_sweep(TWO_CTRL_CS, *SMALL_GRID, cwd=tmp_path)
    assert last == AGAIN.replace("rerun the same command", f"rerun the same command with hydra.sweep.dir={sweep}")
    rerun = run_cli("multirun", *SMALL_GRID, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "6 jobs (4 computed, 2 resumed)" in rerun.stdout


def test_a_ctrl_c_in_a_later_batch_counts_the_sweeps_runs_not_only_the_batchs(tmp_path):
    """Hydra's sweeper hands a max_batch_size sweep (or Optuna's trials) over batch by batch."""
    sweep = tmp_path / "sweep"
    result = run_with(INTERRUPT_BECOMES_ANOTHER_ERROR, "multirun", *SMALL_GRID, "hydra.sweeper.max_batch_size=2", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 130, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "vi_sweep: interrupted: 2 runs written (0 of 2 in batch 2); rerun the same command to resume"
    assert len(list(sweep.glob("*/metrics.parquet"))) == 2


# A Ctrl-C the moment submitit has submitted the tasks (its batch() block ended), before anything else.
CTRL_C_RIGHT_AFTER_SUBMITTING = """
    import contextlib, signal
    import vi_sweep.launch.cluster as cluster
    real_make = cluster.make_options_executor
    def make_options_executor(options):
        executor = real_make(options)
        real_batch = executor.batch
        @contextlib.contextmanager
        def batch(*args, **kwargs):
            with real_batch(*args, **kwargs):
                yield
            signal.raise_signal(signal.SIGINT)
        executor.batch = batch
        return executor
    cluster.make_options_executor = make_options_executor
"""


@pytest.mark.slow
def test_tasks_submitted_just_before_a_ctrl_c_are_in_the_ledger_for_the_rerun_to_collect(tmp_path):
    from vi_sweep.launch.task_ledger import recorded_tasks

    sweep = tmp_path / "sweep"
    engine = ("hydra.launcher.engine=submitit", "hydra.launcher.submitit_cluster=local", f"hydra.launcher.submitit_folder={tmp_path}/submitit/%j")
    result = run_with(CTRL_C_RIGHT_AFTER_SUBMITTING, "multirun", *SMALL_GRID, *engine, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert len(recorded_tasks(sweep)) == 3  # 6 runs, 2 a call


TWO_CTRL_CS_WHILE_HELD = """
    import signal
    from vi_sweep.launch.interrupts import interrupts_held, interrupts_noted
    with interrupts_noted():
        with interrupts_held():  # a slow submission, say
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        print("not reached")
"""


def test_two_ctrl_cs_while_held_end_the_process_at_once_as_two_would_have():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(TWO_CTRL_CS_WHILE_HELD)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 130 and "not reached" not in result.stdout
    assert result.stderr.strip() == AGAIN


def test_a_config_asked_for_again_in_a_later_batch_is_counted_once(tmp_path):
    """lr=0.01 twice, a batch each: the second is resumed from the first's file, not another run."""
    sweep = tmp_path / "sweep"
    grid = ("lr=0.01,0.03,0.01,0.1", "seed=0", *SMALL_GRID[2:], "hydra.sweeper.max_batch_size=1")
    result = run_with(INTERRUPT_BECOMES_ANOTHER_ERROR, "multirun", *grid, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "vi_sweep: interrupted: 2 runs written (0 of 1 in batch 4); rerun the same command to resume"
    assert len(list(sweep.glob("*/metrics.parquet"))) == 2


# The SLURM engine's Ctrl-C: its tasks go on, and it says so in its own line.
SLURM_CTRL_C = """
    import signal, sys
    import vi_sweep.launch.cluster as cluster
    def run_on_submitit(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            print("vi_sweep: interrupted; submitted tasks keep running: rerun the same command to collect them", file=sys.stderr, flush=True)
            sys.exit(130)
    cluster.run_on_submitit = run_on_submitit
"""


def test_the_slurm_engines_own_interrupt_line_is_the_only_one(tmp_path):
    result = run_with(SLURM_CTRL_C, "multirun", *SMALL_GRID, "hydra.launcher.engine=submitit", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 130, result.stderr
    assert [line for line in result.stderr.splitlines() if "interrupted" in line] == [
        "vi_sweep: interrupted; submitted tasks keep running: rerun the same command to collect them"
    ]


# A Ctrl-C that OmegaConf turns into a config error while Hydra composes, before any launcher runs.
CTRL_C_AS_A_CONFIG_ERROR = """
    import signal
    from omegaconf.errors import ConfigKeyError
    import hydra._internal.config_loader_impl as loader
    real_load, calls = loader.ConfigLoaderImpl.load_configuration, []
    def load_configuration(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            return real_load(*args, **kwargs)
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            raise ConfigKeyError("Key 'defaults' is not in struct")
    loader.ConfigLoaderImpl.load_configuration = load_configuration
"""


def test_a_ctrl_c_that_becomes_a_config_error_while_hydra_composes_is_the_interrupt_line(tmp_path):
    result = run_with(CTRL_C_AS_A_CONFIG_ERROR, "multirun", *SMALL_GRID, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["vi_sweep: interrupted; rerun the same command to resume (finished runs are kept)"]


# A Ctrl-C once every run is written, while the multirun's report is drawn.
CTRL_C_IN_THE_REPORT = """
    import signal
    import vi_sweep.analysis.report as report
    def write_report(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
    report.write_report = write_report
"""


def test_a_ctrl_c_in_the_report_names_the_command_that_writes_it(tmp_path):
    sweep, last = interrupted_in_a_time_named_sweep(CTRL_C_IN_THE_REPORT, *SMALL_GRID, "hydra.callbacks.sweep_summary.report=true", cwd=tmp_path)
    assert len(list(sweep.glob("*/metrics.parquet"))) == 6
    assert last == f"vi_sweep: interrupted; python -m vi_sweep report {sweep} writes the report of its 6 runs (finished runs are kept)"
    report = run_cli("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (sweep / "report" / "runs.csv").exists()


# A Ctrl-C once the multirun's callbacks are done (the report written), before the process ends.
CTRL_C_AFTER_THE_CALLBACKS = """
    import signal
    from hydra._internal.callbacks import Callbacks
    real_on_multirun_end = Callbacks.on_multirun_end
    def on_multirun_end(self, *args, **kwargs):
        real_on_multirun_end(self, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)
    Callbacks.on_multirun_end = on_multirun_end
"""


def test_a_ctrl_c_after_the_report_is_written_says_to_rerun_not_to_write_it(tmp_path):
    sweep, last = interrupted_in_a_time_named_sweep(CTRL_C_AFTER_THE_CALLBACKS, *SMALL_GRID, "hydra.callbacks.sweep_summary.report=true", cwd=tmp_path)
    assert (sweep / "report" / "runs.csv").exists()
    assert last == f"vi_sweep: interrupted; rerun the same command with hydra.sweep.dir={sweep} to resume (finished runs are kept)"
