"""Hydra callbacks. Picklable (submitit ships them to workers), light at import (no JAX, no matplotlib).

- :class:`StartGuard` fails early, in one line, on what can be known before anything is
  written: bad values and too-large runs (``run``), an output directory that cannot be written
  (Hydra creates it itself and reports an ``OSError`` with a stack trace; this callback creates
  it first and turns a failure into one line naming the directory, exit code 2), and records a
  multirun in the sweep directory's history.
- :class:`SweepSummary` says where a multirun was written and writes its report.

Each says ``keeps_job_config = False``: it reads the config its ``on_job_*`` hooks receive while
they run, and neither changes it nor keeps a reference to it, so the batched launcher may hand
it a config it reuses for the next job (:func:`vi_sweep.launch.batched.write_job`). A subclass
that keeps or changes it must not say so (the launcher reads the attribute of each callback's
own class only).
"""

from __future__ import annotations

import gc
import importlib
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vi_sweep.launch.interrupts import set_how_to_resume
from vi_sweep.store.metrics import count_runs


def ensure_writable_dir(path: str | Path, what: str) -> None:
    """Create ``path`` (and parents) and prove it writable; exit 2 with one line if not."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".vi_sweep_write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        print(f"vi_sweep: error: {what} {directory} is not writable: {reason}", file=sys.stderr, flush=True)
        sys.exit(2)


class StartGuard(Callback):
    """What can be checked before anything is written, checked then: one line and exit 2 instead.

    ``run``: the composed config (:func:`vi_sweep.launch.config.validate`: can the trainer run
    it?) and whether the run fits in this machine's memory, before Hydra creates the run
    directory; then that ``hydra.run.dir`` can be written. ``multirun``: the sweep as a whole
    (:func:`vi_sweep.launch.sweep_checks.check_multirun`: scenario sweeps, and every job's composed
    config unless the launcher validates them itself, as the batched one does before it writes),
    then that ``hydra.sweep.dir`` can be written, and the sweep directory's history records this
    multirun (:mod:`vi_sweep.launch.history`).
    """

    keeps_job_config = False  # see the module docstring

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vi_sweep.core.trainer import split_fields
        from vi_sweep.host import available_memory_bytes
        from vi_sweep.launch.config import ConfigError
        from vi_sweep.launch.plain import to_plain
        from vi_sweep.launch.sweep_plan import SizeError, check_fits
        from vi_sweep.launch.task import job_fields

        try:
            spec, _ = split_fields(job_fields({key: to_plain(config[key]) for key in config if key != "hydra"}))
            check_fits(spec, available_memory_bytes(), "this run")
        except (ConfigError, SizeError) as err:
            print(f"vi_sweep: error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
        ensure_writable_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from vi_sweep.launch.errors import CONFIG_ERRORS, describe
        from vi_sweep.launch.history import record_start
        from vi_sweep.launch.sweep_checks import check_multirun

        try:
            check_multirun(config)
        except CONFIG_ERRORS as err:
            print(f"vi_sweep: error: {describe(err)}", file=sys.stderr, flush=True)
            sys.exit(2)
        ensure_writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
        record_start(
            Path(config.hydra.sweep.dir),
            overrides=list(config.hydra.overrides.task),
            launcher=str(config.hydra.runtime.choices.get("hydra/launcher", "")),
            argv=sys.argv[1:],
        )


class SweepSummary(Callback):
    """At the end of a multirun, say where the sweep was written, then write its report.

    ``on_multirun_end`` receives no job results, so it scans ``hydra.sweep.dir``. The report
    (``python -m vi_sweep report``, :mod:`vi_sweep.analysis.report`) is imported only here, so a Hydra
    start never pays for pandas/matplotlib. Turn it off with
    ``hydra.callbacks.sweep_summary.report=false``.
    """

    keeps_job_config = False  # see the module docstring

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self._sweep_pid: int | None = None  # the process that runs on_multirun_end
        self._prefetch: threading.Thread | None = None
        self._figure_helper: Any = None  # vi_sweep.analysis.figure_helper.FigureHelper, started with the sweep

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_prefetch": None, "_figure_helper": None}  # threads and processes do not pickle (submitit)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the report's figure helper (:mod:`vi_sweep.analysis.figure_helper`) now, while Hydra
        composes the sweep on one core: it imports matplotlib on the other (~0.5 s), then waits,
        so the report at the end does not wait for it. It ends with this process if the report
        never comes (the end of its input)."""
        self._sweep_pid = os.getpid()
        if self.report:
            try:
                from vi_sweep.analysis.figure_helper import start_helper
                from vi_sweep.host import available_cores

                self._figure_helper = start_helper(available_cores())
            except Exception:  # noqa: BLE001 - no helper: the report draws alone, and says itself what is broken
                self._figure_helper = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """With the sweep's first job, start importing the report's modules (pandas, matplotlib:
        ~0.5 s) on a background thread. A job starts once its training is done and, with the
        batched launcher, while the other chunks train on XLA's threads, so the import overlaps
        training instead of adding to the sweep's end. Not in a job running in another process
        (a submitit worker): the report is written where the sweep was started."""
        if self.report and self._prefetch is None and self._sweep_pid == os.getpid():
            self._prefetch = threading.Thread(target=_import_quietly, args=("vi_sweep.analysis.report",), daemon=True)
            self._prefetch.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        jobs = count_runs(sweep_dir)
        print(f"vi_sweep: {jobs} runs written to {sweep_dir}", flush=True)
        helper, self._figure_helper = self._figure_helper, None
        if self.report and jobs:
            if self._prefetch is not None:
                self._prefetch.join()
            # Everything alive now (JAX, Hydra, the sweep's leftovers) outlives the report: out of
            # the cyclic collector's way, as in vi_sweep.launch.batched.launch, or the report's
            # pandas and matplotlib objects have it walk that heap again and again.
            gc.freeze()
            # A Ctrl-C from here on: every run is written, only the report is missing (or the old one kept).
            set_how_to_resume(f"python -m vi_sweep report {shlex.quote(str(sweep_dir))} writes the report of its {jobs} runs")
            try:
                write_sweep_report(sweep_dir, helper=helper)
            finally:
                gc.unfreeze()
            set_how_to_resume(None)  # written, or failed in a line of its own: a Ctrl-C in a later callback is resumed by a rerun
        elif helper is not None:
            helper.close(kill=True)


def _import_quietly(name: str) -> None:
    """Import a module ahead of its use; any failure is left for the real import to report."""
    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - the report's own import repeats it and says what broke
        pass


def write_sweep_report(sweep_dir: Path, *, helper: Any = None) -> int:
    """Write ``sweep_dir/report/`` and print its path; any failure is one line and leaves the runs alone.

    ``helper``: a figure helper started with the sweep (closed here). Returns the report
    command's exit code (0 on success).
    """
    try:
        from vi_sweep.analysis.report import main as report_main

        return report_main([str(sweep_dir)], helper=helper)
    except Exception as err:  # noqa: BLE001 - the sweep's results are on disk; a report bug must not hide them
        if helper is not None:
            helper.close(kill=True)
        reason = (str(err).strip().splitlines() or [""])[0]
        print(
            f"vi_sweep: warning: report not written ({type(err).__name__}: {reason}); "
            f"rerun it with: python -m vi_sweep report {sweep_dir}",
            file=sys.stderr,
            flush=True,
        )
        return 1
