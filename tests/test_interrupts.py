"""A Ctrl-C between a run file landing and the launcher counting it.

The launcher's "interrupted: N of M runs written" line must count exactly the run files on disk
(a rerun resumes those). The signal is raised here at the worst moment -- right after the file's
atomic rename -- which a real Ctrl-C hits only now and then (tests/test_trust.py's CLI test did,
once in a CI run).
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.sweeps import flat_fields
from vi_sweep.core.trainer import split_fields, train_one
from vi_sweep.launch.batched import SweepJob, write_compact_jobs
from vi_sweep.launch.interrupts import interrupts_held
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
