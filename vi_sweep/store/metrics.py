"""The parquet contract: a run's ``metrics.parquet``, written atomically and read back (pyarrow only).

Both sides use it: the launcher and the report's baselines write (:func:`write_metrics`); resume
and the analysis read (:func:`read_run_file`), so "finished and readable" means one thing
everywhere. No Hydra, no pandas, no JAX at import.

Layout of one file: one row per logged step with the metric columns (:data:`METRIC_TYPES`: those
of :class:`vi_sweep.core.trainer.Rows` plus ``step``), the run's ``status`` (``ok`` |
``nonfinite``: a NaN or inf stopped its updates at ``diverged_at``, null if never), ``scenario``,
then its flat config as constant columns: *every* field any run can have
(:func:`vi_sweep.core.trainer.field_types`), typed, null where this run has no such field (an SGD
run has no ``optimizer_b1``). So every file of any sweep has the same columns and Arrow types and
``pd.read_parquet(list_of_files)`` or ``pyarrow.dataset`` read a sweep as one table.

Key-value metadata holds the full resolved config (``vi_sweep.config``, JSON), the run's own flat
fields (``vi_sweep.fields``), ``vi_sweep.version``, ``jax.version``, the file format
(``vi_sweep.format``) and ``vi_sweep.complete = "1"``. Pages carry CRC checksums, verified on
every read: a damaged file is named, never silently decoded into other numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METRICS_FILE = "metrics.parquet"
FORMAT = "2"  # 2: kl_excess, the final step always logged, every field typed, status ok|nonfinite
_TMP_SUFFIX = ".tmp"  # write_atomically's temporary files: .<name>.<random>.tmp
METRIC_TYPES = {
    "step": pa.int64(),
    "probe": pa.bool_(),  # a tail probe row (vi_sweep.core.trainer.row_steps), not one of the logged rows
    "loss": pa.float32(),
    "kl": pa.float32(),
    "kl_excess": pa.float32(),
    "mu_norm": pa.float32(),
    "mean_error": pa.float32(),
    "sigma_mean": pa.float32(),
    "sigma_std": pa.float32(),
    "sigma_min": pa.float32(),
    "sigma_max": pa.float32(),
    "grad_norm": pa.float32(),
    "diverged": pa.bool_(),
}
METRIC_COLUMNS = tuple(METRIC_TYPES)
RUN_COLUMNS = ("status", "diverged_at", "scenario")  # constant per file
STATUS_OK, STATUS_NONFINITE = "ok", "nonfinite"
_ARROW_TYPES = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}


class UnreadableRun(Exception):
    """A ``metrics.parquet`` that is not a finished, intact vi_sweep run file; the message is one line."""


class RunFile(NamedTuple):
    """One run's ``metrics.parquet``, read back and checked."""

    fields: dict[str, Any]  # the run's own flat fields (vi_sweep.fields)
    config: dict[str, Any]  # the full resolved config it was written from (vi_sweep.config)
    table: pa.Table  # the columns asked for, one row per logged step


def status_of(diverged_at: int) -> str:
    """``nonfinite`` if a NaN or inf stopped the run's updates (at step ``diverged_at`` > 0), else ``ok``."""
    return STATUS_NONFINITE if diverged_at > 0 else STATUS_OK


def _package_version() -> str:
    from vi_sweep import __version__

    return __version__


def metrics_table(
    rows: Mapping[str, np.ndarray],
    fields: Mapping[str, Any],
    diverged_at: int,
    scenario: str,
    field_types: Optional[Mapping[str, type]] = None,
) -> pa.Table:
    """Build the table: metric columns, run status, then the run's config as constant columns.

    ``field_types``: every field a run can have and its Python type; default
    :func:`vi_sweep.core.trainer.field_types`. Each becomes a column of that type, null where
    ``fields`` lacks it; a field outside it keeps the type pyarrow infers.
    """
    if field_types is None:
        from vi_sweep.core.trainer import field_types as all_field_types  # the writer has JAX loaded already

        field_types = all_field_types()
    n = len(rows["step"])
    columns: dict[str, pa.Array] = {name: pa.array(np.asarray(rows[name]), kind) for name, kind in METRIC_TYPES.items()}
    columns["status"] = pa.array([status_of(diverged_at)] * n, pa.string())
    columns["diverged_at"] = pa.array([diverged_at if diverged_at > 0 else None] * n, pa.int64())
    columns["scenario"] = pa.array([scenario] * n, pa.string())
    for key, kind in field_types.items():
        columns[key] = pa.array([fields.get(key)] * n, _ARROW_TYPES[kind])
    for key, value in fields.items():
        if key not in columns:
            columns[key] = pa.array([value] * n)
    return pa.table(columns)


def write_metrics(
    out_dir: str | os.PathLike,
    table: pa.Table,
    *,
    resolved_config: Mapping[str, Any],
    fields: Mapping[str, Any],
) -> Path:
    """Write ``out_dir/metrics.parquet`` atomically (:func:`write_atomically`)."""
    metadata = {
        b"vi_sweep.config": json.dumps(resolved_config, sort_keys=True).encode(),
        b"vi_sweep.fields": json.dumps(dict(fields), sort_keys=True).encode(),
    }
    return write_atomically(Path(out_dir) / METRICS_FILE, table, metadata)


def write_atomically(path: Path, table: pa.Table, metadata: Mapping[bytes, bytes]) -> Path:
    """Write ``table`` to ``path`` via a temporary file + ``os.replace`` (atomic on POSIX), with
    ``metadata`` and the versions, file format and ``complete`` flag every file carries.

    A process killed mid-write leaves at most a ``.<name>.*.tmp`` file, never a partial one; the
    next write of that name removes it (one writer per file).
    """
    import jax

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = dict(table.schema.metadata or {})
    full.update(metadata)
    full.update(
        {
            b"vi_sweep.version": _package_version().encode(),
            b"jax.version": jax.__version__.encode(),
            b"vi_sweep.format": FORMAT.encode(),
            b"vi_sweep.complete": b"1",
        }
    )
    table = table.replace_schema_metadata(full)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{prefix}*{_TMP_SUFFIX}"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle, write_page_checksum=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# The compact layout: many runs per file
# ---------------------------------------------------------------------------------------------

RUNS_DIR = "runs"  # <sweep dir>/runs/jobs-<first>-<last>.parquet


class CompactRun(NamedTuple):
    """One run of a compact file: its Hydra job number and the run's file-like view."""

    job: int
    run: RunFile


def compact_table(runs: Sequence[tuple[int, Mapping[str, np.ndarray], Mapping[str, Any], int, str]], field_types: Optional[Mapping[str, type]] = None) -> pa.Table:
    """One table for many runs, ``(job number, rows, fields, diverged_at, scenario)`` each: each
    run's :func:`metrics_table` with a leading ``job`` column, stacked (the same columns and types
    as a job's own file, so both layouts read as one table).

    Built column by column, not run by run: a per-run value is one array over the runs, repeated
    to their rows (``take``), so a chunk of thousands of runs is a few dozen array builds and one
    chunk per column (which is also what parquet writes fastest).
    """
    if field_types is None:
        from vi_sweep.core.trainer import field_types as all_field_types

        field_types = all_field_types()
    counts = np.array([len(rows["step"]) for _, rows, _, _, _ in runs], np.int64)
    row_run = pa.array(np.repeat(np.arange(len(runs)), counts))  # each row's run

    def per_run(values: list, kind: Optional[pa.DataType] = None) -> pa.Array:
        return pa.array(values, kind).take(row_run)

    columns: dict[str, pa.Array] = {"job": pa.array(np.repeat(np.array([job for job, _, _, _, _ in runs], np.int64), counts))}
    for name, kind in METRIC_TYPES.items():
        columns[name] = pa.array(np.concatenate([np.asarray(rows[name]) for _, rows, _, _, _ in runs]), kind)
    columns["status"] = per_run([status_of(diverged_at) for _, _, _, diverged_at, _ in runs], pa.string())
    columns["diverged_at"] = per_run([diverged_at if diverged_at > 0 else None for _, _, _, diverged_at, _ in runs], pa.int64())
    columns["scenario"] = per_run([scenario for _, _, _, _, scenario in runs], pa.string())
    for key, kind in field_types.items():
        columns[key] = per_run([fields.get(key) for _, _, fields, _, _ in runs], _ARROW_TYPES[kind])
    for _, _, fields, _, _ in runs:
        for key in fields:
            if key not in columns:  # a field outside field_types: the type pyarrow infers, as in a job's own file
                columns[key] = per_run([other.get(key) for _, _, other, _, _ in runs])
    return pa.table(columns)


def write_compact(sweep_dir: str | os.PathLike, table: pa.Table, runs: Sequence[Mapping[str, Any]]) -> Path:
    """Write a :func:`compact_table` to ``<sweep_dir>/runs/jobs-<first>-<last>.parquet`` atomically.

    ``runs``: one entry per run, ``{"job", "fields", "scenario", "overrides"}``, kept in the file's
    metadata (``vi_sweep.runs``) as a job's own file keeps its fields.
    """
    jobs = [int(run["job"]) for run in runs]
    path = Path(sweep_dir) / RUNS_DIR / f"jobs-{min(jobs):06d}-{max(jobs):06d}.parquet"
    return write_atomically(path, table, {b"vi_sweep.runs": json.dumps(list(runs), sort_keys=True).encode()})


def read_compact_file(path: str | os.PathLike, columns: Optional[Sequence[str]] = None) -> list[CompactRun]:
    """The runs of a compact file, every page checked; raises :class:`UnreadableRun` (one line) for the file."""
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        metadata = parquet.schema_arrow.metadata or {}
        _check_flags(metadata)
        listed = json.loads(metadata[b"vi_sweep.runs"])
        table = parquet.read(columns=None if columns is None else ["job", *columns], use_threads=False)
    except UnreadableRun:
        raise
    except KeyError:
        raise UnreadableRun("no vi_sweep.runs metadata") from None
    except (OSError, ValueError, pa.ArrowException) as err:
        raise UnreadableRun(_first_line(err)) from None
    jobs = table.column("job").to_numpy()
    bounds = np.flatnonzero(np.diff(jobs)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(jobs)]
    by_job = {int(jobs[a]): (int(a), int(b)) for a, b in zip(starts, ends)}
    out = []
    for entry in listed:
        job = int(entry["job"])
        if job not in by_job:
            raise UnreadableRun(f"job {job} is listed but has no rows")
        a, b = by_job[job]
        out.append(CompactRun(job, RunFile(entry["fields"], {"scenario": entry["scenario"], "overrides": entry.get("overrides", [])}, table.slice(a, b - a).drop_columns(["job"]))))
    return out


def compact_files(sweep_dir: str | os.PathLike) -> list[Path]:
    """The compact files of a sweep directory, in job order."""
    return sorted((Path(sweep_dir) / RUNS_DIR).glob("jobs-*.parquet"))


def count_runs(sweep_dir: str | os.PathLike) -> int:
    """How many runs a sweep directory holds, in either layout (finished or not: files are counted, not read)."""
    count = len(job_files(sweep_dir))
    for path in compact_files(sweep_dir):
        try:
            count += len(json.loads((pq.read_schema(path).metadata or {})[b"vi_sweep.runs"]))
        except (OSError, KeyError, ValueError, pa.ArrowException):
            pass  # unreadable: named by the report
    return count


SWEEP_FOLDERS = ("baselines", "report", RUNS_DIR)  # sweep-level folders that are not job directories (nor are hidden ones)


def job_sort_key(name: str) -> tuple[int, int, str]:
    """Job directory names in numeric order (0, 1, 2, ..., 10), then any other names."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def job_files(sweep_dir: str | os.PathLike) -> list[Path]:
    """Every job's own ``metrics.parquet`` under ``sweep_dir`` (at any depth ``hydra.sweep.subdir``
    puts them), in job order; not the exact baselines', nor hidden folders'."""
    sweep_dir = Path(sweep_dir)
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        if Path(root) == sweep_dir:
            dirs[:] = [d for d in dirs if d not in SWEEP_FOLDERS]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if METRICS_FILE in files:
            found.append(Path(root) / METRICS_FILE)
    return sorted(found, key=lambda p: (job_sort_key(p.parent.name), str(p)))


def current_umask() -> int:
    """The process umask (reading it means setting it; it is restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_run_file(path: str | os.PathLike, columns: Optional[Sequence[str]] = None) -> RunFile:
    """Read a run's ``metrics.parquet`` whole (or ``columns`` of it), every page checked.

    Raises :class:`UnreadableRun` with a one-line reason for a file that is missing, truncated,
    damaged (a page whose checksum or encoding is wrong), written without the ``complete`` flag,
    by another file format, or without rows.
    """
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        metadata = parquet.schema_arrow.metadata or {}
        _check_flags(metadata)
        fields = json.loads(metadata[b"vi_sweep.fields"])
        config = json.loads(metadata.get(b"vi_sweep.config", b"{}"))
        wanted = list(columns) if columns is not None else None
        missing = [c for c in (wanted or [*METRIC_COLUMNS, *RUN_COLUMNS]) if c not in parquet.schema_arrow.names]
        if missing:
            raise UnreadableRun(f"missing columns {', '.join(missing)}")
        table = parquet.read(columns=wanted, use_threads=False)
    except UnreadableRun:
        raise
    except KeyError:
        raise UnreadableRun("no vi_sweep.fields metadata") from None
    except (OSError, ValueError, pa.ArrowException) as err:  # truncated, damaged, or not parquet at all
        raise UnreadableRun(_first_line(err)) from None
    if table.num_rows == 0:
        raise UnreadableRun("no rows")
    return RunFile(fields, config, table)


def _check_flags(metadata: Mapping[bytes, bytes]) -> None:
    if metadata.get(b"vi_sweep.complete") != b"1":
        raise UnreadableRun("incomplete file (no vi_sweep.complete flag)")
    version = metadata.get(b"vi_sweep.format", b"1").decode()
    if version != FORMAT:
        raise UnreadableRun(f"written by another vi_sweep (file format {version}, this one reads {FORMAT})")


def read_fields(path: str | os.PathLike) -> dict[str, Any] | None:
    """The flat fields of a finished, intact ``metrics.parquet`` (every page read), or None."""
    try:
        return read_run_file(path).fields
    except UnreadableRun:
        return None
