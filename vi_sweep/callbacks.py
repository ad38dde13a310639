"""Hydra callbacks. Picklable (submitit ships them to workers), light at import (no JAX, no matplotlib)."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vi_sweep.results import METRICS_FILE


class SweepSummary(Callback):
    """At the end of a multirun, say where the sweep was written, then write its report.

    ``on_multirun_end`` receives no job results, so it scans ``hydra.sweep.dir``. The report
    (``python -m vi_sweep report``, :mod:`analysis.report`) is imported only here, so a Hydra
    start never pays for pandas/matplotlib. Turn it off with
    ``hydra.callbacks.sweep_summary.report=false``.
    """

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self._sweep_pid: int | None = None  # the process that runs on_multirun_end
        self._prefetch: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_prefetch": None}  # a thread does not pickle (submitit)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_pid = os.getpid()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """With the sweep's first job, start importing the report's modules (pandas, matplotlib:
        ~0.5 s) on a background thread. A job starts once its training is done and, with the
        batched launcher, while the other chunks train on XLA's threads, so the import overlaps
        training instead of adding to the sweep's end. Not in a job running in another process
        (a submitit worker): the report is written where the sweep was started."""
        if self.report and self._prefetch is None and self._sweep_pid == os.getpid():
            self._prefetch = threading.Thread(target=_import_quietly, args=("analysis.report",), daemon=True)
            self._prefetch.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        jobs = len(list(sweep_dir.glob(f"*/{METRICS_FILE}")))
        print(f"vi_sweep: {jobs} runs written to {sweep_dir}", flush=True)
        if self.report and jobs:
            if self._prefetch is not None:
                self._prefetch.join()
            write_sweep_report(sweep_dir)


def _import_quietly(name: str) -> None:
    """Import a module ahead of its use; any failure is left for the real import to report."""
    try:
        importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - the report's own import repeats it and says what broke
        pass


def write_sweep_report(sweep_dir: Path) -> int:
    """Write ``sweep_dir/report/`` and print its path; any failure is one line and leaves the runs alone.

    Returns the report command's exit code (0 on success).
    """
    try:
        from analysis.report import main as report_main

        return report_main([str(sweep_dir)])
    except Exception as err:  # noqa: BLE001 - the sweep's results are on disk; a report bug must not hide them
        reason = (str(err).strip().splitlines() or [""])[0]
        print(
            f"vi_sweep: warning: report not written ({type(err).__name__}: {reason}); "
            f"rerun it with: python -m vi_sweep report {sweep_dir}",
            file=sys.stderr,
            flush=True,
        )
        return 1
