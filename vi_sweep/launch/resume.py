"""Resume and extension, keyed by each run's config: what a sweep directory already holds, and where a new run goes.

A sweep directory is a set of finished runs, each in its own job directory, each known by its
**run key** (:func:`run_key`: its flat fields and its scenario). Rerunning a multirun into the
same ``hydra.sweep.dir`` -- the same command, or one with more lr values, seeds or num_mc, or
another grid altogether -- therefore

- skips every job whose run key is already finished *anywhere* in the directory (whatever job
  number it had then): it is not recomputed and not rewritten;
- computes the others, each into its own job directory (Hydra's ``hydra.sweep.subdir``) unless
  that directory holds a finished run of *another* config: then the job gets the next free job
  number instead (:class:`Placement`), so no finished run is ever overwritten;
- recomputes a job whose file is there but unreadable (truncated, damaged, written by another
  file format), naming the file in one line.

A finished run is a ``metrics.parquet`` that :func:`vi_sweep.store.metrics.read_run_file` reads
whole, every page checked.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from vi_sweep.analysis.optimized_metric import TailSummary
from vi_sweep.launch.job_values import file_summary
from vi_sweep.store.metrics import METRICS_FILE, RUNS_DIR, UnreadableRun, compact_files, job_files, read_compact_file, read_run_file

READ_THREADS = 8  # pyarrow reads without the GIL


def run_key(fields: Mapping[str, Any], scenario: str) -> str:
    """What makes two runs the same run: their flat fields and their scenario, as canonical JSON."""
    return json.dumps({"fields": dict(fields), "scenario": scenario}, sort_keys=True)


class FinishedRun(NamedTuple):
    out_dir: Path  # its job directory (for the compact layout: the one its job number names)
    key: str
    summary: TailSummary  # what its job's return value is computed from (vi_sweep.launch.job_values)
    file: Path  # the file that holds it
    job: Optional[int] = None  # its job number in a compact file (None: the file is its own)


class SweepContents(NamedTuple):
    """The job directories of a sweep directory, as found on disk."""

    finished: dict[str, FinishedRun]  # run key -> the finished run (the first found, in path order)
    key_in: dict[Path, str]  # job directory -> the run key of the finished run it holds
    unreadable: tuple[tuple[Path, str], ...]  # (file, one-line reason): there, but not a finished run
    job_numbers: frozenset[int]  # names of the job directories that are integers (Hydra's default subdir)


EMPTY_SWEEP = SweepContents({}, {}, (), frozenset())


def read_finished(path: Path) -> FinishedRun:
    """The finished run in ``path`` (a ``metrics.parquet``); raises :class:`UnreadableRun`."""
    run = read_run_file(path)
    scenario = str(run.table.column("scenario")[0].as_py())
    return FinishedRun(path.parent, run_key(run.fields, scenario), file_summary(run), path)


def read_finished_compact(path: Path, sweep_dir: Path) -> list[FinishedRun]:
    """The finished runs of a compact file, each placed at the job directory its number names
    (``<sweep dir>/<job>``, where the job-directory layout would have put it); raises
    :class:`UnreadableRun` for the file."""
    return [
        FinishedRun(sweep_dir / str(entry.job), run_key(entry.run.fields, entry.run.config["scenario"]), file_summary(entry.run), path, entry.job)
        for entry in read_compact_file(path)
    ]


def scan_sweep(sweep_dir: Path) -> SweepContents:
    """Read every run's file in ``sweep_dir`` -- the jobs' own and the compact layout's -- whole, in a thread pool."""
    sweep_dir = Path(sweep_dir)
    files = job_files(sweep_dir) if sweep_dir.is_dir() else []
    compact = compact_files(sweep_dir) if sweep_dir.is_dir() else []

    def attempt(path: Path) -> list[FinishedRun] | str:
        try:
            return read_finished_compact(path, sweep_dir) if path.parent.name == RUNS_DIR else [read_finished(path)]
        except UnreadableRun as err:
            return str(err)

    paths = files + compact
    with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(paths)))) as pool:
        results = list(pool.map(attempt, paths))
    finished: dict[str, FinishedRun] = {}
    key_in: dict[Path, str] = {}
    unreadable = []
    for path, result in zip(paths, results):
        if isinstance(result, str):
            unreadable.append((path, result))
            continue
        for run in result:
            finished.setdefault(run.key, run)
            key_in[run.out_dir] = run.key
    numbers = {int(p.name) for p in key_in if p.parent == sweep_dir and p.name.isdigit()}
    if sweep_dir.is_dir():
        numbers |= {int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    return SweepContents(finished, key_in, tuple(unreadable), frozenset(numbers))


class Placement:
    """Job directories for the runs one launch computes: Hydra's own where it is free, else the next free number.

    A directory is free for a run if it holds no finished run of another config and no other
    job of this launch has claimed it. A job whose directory is not free asks
    :meth:`next_number` for a job number no directory of the sweep has, and its directory is
    composed from that number.
    """

    def __init__(self, contents: SweepContents) -> None:
        self._key_in = dict(contents.key_in)
        self._claimed: set[Path] = set()
        self._next = max([-1, *contents.job_numbers]) + 1

    def is_free(self, out_dir: Path, key: str) -> bool:
        return out_dir not in self._claimed and self._key_in.get(out_dir, key) == key

    def claim(self, out_dir: Path) -> None:
        self._claimed.add(out_dir)
        if out_dir.name.isdigit():
            self._next = max(self._next, int(out_dir.name) + 1)

    def next_number(self) -> int:
        """A job number above every numbered job directory of the sweep and of this launch."""
        number = self._next
        self._next += 1
        return number


def describe_unreadable(unreadable: Iterable[tuple[Path, str]], sweep_dir: Path, *, recomputed: Iterable[Path] = (), limit: int = 5) -> list[str]:
    """One warning line per unreadable file (at most ``limit``, then a count): recomputed if its
    directory is in ``recomputed`` (a job of this sweep writes there), else left as it is."""
    again = set(recomputed)
    items = list(unreadable)
    lines = []
    for path, reason in items[:limit]:
        fate = "recomputed" if Path(path).parent in again else "no job of this sweep writes there, left as it is"
        lines.append(f"vi_sweep: warning: {path} is unreadable ({reason}); {fate}")
    if len(items) > limit:
        lines.append(f"vi_sweep: warning: and {len(items) - limit} more unreadable metrics.parquet files under {sweep_dir}")
    return lines


def resumed_return(cfg: DictConfig, summary: TailSummary) -> JobReturn:
    """A COMPLETED :class:`JobReturn` (as ``run_job`` would build it) for a job already on disk;
    its return value is the run's summary until the launcher replaces it by the job's value
    (:func:`vi_sweep.launch.job_values.assign_values`)."""
    ret = JobReturn(
        overrides=list(OmegaConf.to_container(cfg.hydra.overrides.task)),
        cfg=OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]),
        hydra_cfg=OmegaConf.masked_copy(cfg, ["hydra"]),
        working_dir=os.getcwd(),
        task_name=str(cfg.hydra.job.name),
        status=JobStatus.COMPLETED,
    )
    ret.return_value = summary
    return ret


def finished_in(out_dir: Path) -> Optional[FinishedRun]:
    """The finished run in ``out_dir``, or None if there is none; raises :class:`UnreadableRun`
    for a file that is there but unreadable."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return None
    return read_finished(path)
