"""Reading a sweep directory: one ``metrics.parquet`` per job, read with pyarrow, never with Hydra.

The lowest layer of the analysis: it reads files and builds tables, nothing more (the exact
baselines are :mod:`vi_sweep.analysis.references`, the outcomes :mod:`vi_sweep.analysis.outcomes`,
and :mod:`vi_sweep.analysis.load` puts the three together).

A sweep directory holds ``<sweep_dir>/<job>/metrics.parquet`` (written by any launcher through
:func:`vi_sweep.store.metrics.write_metrics`) plus Hydra's bookkeeping. This module turns it into two
pandas tables:

- the **runs** table, one row per job: ``run`` (0-based id), ``job`` (its directory name), the
  run's flat config (the ``vi_sweep.fields`` metadata: ``objective, estimator, optimizer,
  optimizer_*, target, target_*, lr, num_mc, seed, d, steps, init_log_sigma, log_every``) and
  ``scenario``, the recorded ``status``/``diverged_at``, and ``n_logged`` (rows in its file);
- the **trajectories** table, the long form: one row per logged step per run, keyed by ``run``,
  with the metric columns of :data:`vi_sweep.store.metrics.METRIC_COLUMNS`.

Only the metric columns are decoded (the config comes from the file's metadata), and files are
read by a small thread pool: pyarrow releases the GIL while decoding, so 10,000 files take a few
seconds. A file that cannot be read -- truncated, corrupt, or written without the
``vi_sweep.complete`` flag -- is skipped with one :class:`SkippedFileWarning` naming it.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from vi_sweep.store.metrics import (
    METRIC_COLUMNS,
    METRICS_FILE,
    RUN_COLUMNS,
    RUNS_DIR,
    RunFile,
    UnreadableRun,
    compact_files,
    job_files,
    job_sort_key,
    read_compact_file,
    read_run_file,
)

# The order config columns appear in; optimizer_* / target_* hyperparameters follow their group.
CONFIG_ORDER = ("objective", "estimator", "optimizer", "target", "lr", "num_mc", "seed", "d", "steps", "init_log_sigma", "log_every", "scenario")
READ_THREADS = min(8, os.cpu_count() or 2)  # pyarrow decodes without the GIL; more threads than cores only queue


class SweepError(Exception):
    """A user-facing problem with a sweep directory as a whole (missing, empty). One line."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: in a notebook, too, the error is its one line."""
        return [f"{type(self).__name__}: {self}"]


class SkippedFileWarning(UserWarning):
    """A job's ``metrics.parquet`` could not be read and was left out of the analysis."""


class RunRecord(NamedTuple):
    """One run's ``metrics.parquet``, decoded."""

    fields: dict[str, Any]  # the run's flat config (the file's vi_sweep.fields metadata)
    scenario: str
    status: str  # "ok" | "nonfinite"
    diverged_at: int  # 1-based step of the first non-finite value, 0 = never
    metrics: pa.Table  # the METRIC_COLUMNS, one row per logged step


class Sweep(NamedTuple):
    """A sweep as read from disk (see the module docstring for the two tables)."""

    path: Path
    runs: pd.DataFrame
    trajectories: pd.DataFrame
    fields: tuple[dict[str, Any], ...]  # each run's flat config as recorded (index = run id)
    skipped: tuple[tuple[str, str], ...]  # (file relative to the sweep dir, one-line reason)
    unfinished: tuple[str, ...]  # job directories (with a .hydra/) that have no metrics.parquet


def read_run(path: str | os.PathLike) -> RunRecord:
    """Decode one ``metrics.parquet`` (:func:`vi_sweep.store.metrics.read_run_file`); raise
    :class:`~vi_sweep.store.metrics.UnreadableRun` with a one-line reason."""
    return _record(read_run_file(path, columns=[*METRIC_COLUMNS, *RUN_COLUMNS]))


def _record(run: RunFile) -> RunRecord:
    table = run.table
    first = {name: table.column(name)[0].as_py() for name in RUN_COLUMNS}
    return RunRecord(
        fields=run.fields,
        scenario=str(first["scenario"]),
        status=str(first["status"]),
        diverged_at=int(first["diverged_at"] or 0),
        metrics=table.select(list(METRIC_COLUMNS)),
    )


def _unfinished_jobs(sweep_dir: Path) -> list[str]:
    dirs = [p.parent.name for p in sweep_dir.glob("*/.hydra") if not (p.parent / METRICS_FILE).exists()]
    return sorted(dirs, key=job_sort_key)


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The config columns of a runs table, in :data:`CONFIG_ORDER` (hyperparameters after their group)."""
    present = set(frame.columns)
    ordered: list[str] = []
    for key in CONFIG_ORDER:
        if key in present:
            ordered.append(key)
        if key in ("optimizer", "target"):
            ordered.extend(sorted(c for c in present if c.startswith(f"{key}_")))
    return ordered


def _runs_frame(names: list[str], jobs: list[RunRecord]) -> pd.DataFrame:
    records = []
    for run, (name, job) in enumerate(zip(names, jobs)):
        record = {"run": run, "job": name, **job.fields, "scenario": job.scenario}
        record.update(status=job.status, diverged_at=job.diverged_at, n_logged=job.metrics.num_rows)
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    ordered = ["run", "job", *config_columns(frame)]
    rest = [c for c in frame.columns if c not in ordered]
    return frame[ordered + rest]


def trajectories_frame(jobs: list[RunRecord]) -> pd.DataFrame:
    """The long table of a list of jobs: ``run`` (position in the list), then the metric columns."""
    if not jobs:
        return pd.DataFrame({"run": pd.Series([], dtype=np.int64), **{c: [] for c in METRIC_COLUMNS}})
    table = pa.concat_tables([job.metrics for job in jobs], promote_options="permissive")
    frame = table.to_pandas()
    counts = np.fromiter((job.metrics.num_rows for job in jobs), dtype=np.int64, count=len(jobs))
    frame.insert(0, "run", np.repeat(np.arange(len(jobs), dtype=np.int64), counts))
    return frame


def read_sweep(path: str | os.PathLike, *, threads: int = READ_THREADS) -> Sweep:
    """Read every job of a sweep directory (no classification; see :func:`vi_sweep.analysis.load.load_sweep`).

    Raises :class:`SweepError` if the directory is missing or holds no readable run; warns
    (:class:`SkippedFileWarning`, one line each) for files it skips.
    """
    sweep_dir = Path(path)
    if not sweep_dir.exists():
        raise SweepError(f"sweep directory {sweep_dir} does not exist")
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir} is not a directory (expected a sweep directory)")
    files = job_files(sweep_dir) + compact_files(sweep_dir)

    def attempt(file: Path) -> list[tuple[str, RunRecord]] | str:
        try:
            if file.parent.name == RUNS_DIR and file.parent.parent == sweep_dir:
                return [(str(entry.job), _record(entry.run)) for entry in read_compact_file(file, [*METRIC_COLUMNS, *RUN_COLUMNS])]
            return [(file.parent.name, read_run(file))]
        except UnreadableRun as err:
            return str(err)

    # One contiguous block of files per thread: a future per file costs more than reading it.
    workers = max(1, min(threads, len(files)))
    size = -(-len(files) // workers) if files else 1
    blocks = [files[i : i + size] for i in range(0, len(files), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [result for block in pool.map(lambda block: [attempt(f) for f in block], blocks) for result in block]
    found, skipped = [], []
    for file, result in zip(files, results):
        relative = file.relative_to(sweep_dir).as_posix()
        if isinstance(result, str):
            skipped.append((relative, result))
            warnings.warn(f"skipping {sweep_dir / relative}: {result}", SkippedFileWarning, stacklevel=2)
        else:
            found.extend(result)
    found.sort(key=lambda named: job_sort_key(named[0]))  # both layouts, in job order
    names = [name for name, _ in found]
    jobs = [record for _, record in found]
    unfinished = _unfinished_jobs(sweep_dir)
    if unfinished:
        shown = ", ".join(unfinished[:10]) + (f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else "")
        warnings.warn(
            f"{len(unfinished)} job directories of {sweep_dir} have no metrics.parquet (unfinished runs, left out): {shown}",
            SkippedFileWarning,
            stacklevel=2,
        )
    if not jobs:
        detail = f" ({len(skipped)} unreadable)" if skipped else ""
        raise SweepError(f"no readable {METRICS_FILE} under {sweep_dir}{detail}")
    fields = tuple(job.fields for job in jobs)
    return Sweep(sweep_dir, _runs_frame(names, jobs), trajectories_frame(jobs), fields, tuple(skipped), tuple(unfinished))
