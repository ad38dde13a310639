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
_TMP_SUFFIX = ".tmp"  # temporary files are .<name>.<random>.tmp beside <name>
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
    """Write ``out_dir/metrics.parquet`` via a temporary file + ``os.replace`` (atomic on POSIX).

    A process killed mid-write leaves at most a ``.metrics.parquet.*.tmp`` file, never a partial
    ``metrics.parquet``; the next write into ``out_dir`` removes it (one writer per directory:
    a job's dir, or one baseline's).
    """
    import jax

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = dict(table.schema.metadata or {})
    metadata.update(
        {
            b"vi_sweep.config": json.dumps(resolved_config, sort_keys=True).encode(),
            b"vi_sweep.fields": json.dumps(dict(fields), sort_keys=True).encode(),
            b"vi_sweep.version": _package_version().encode(),
            b"jax.version": jax.__version__.encode(),
            b"vi_sweep.format": FORMAT.encode(),
            b"vi_sweep.complete": b"1",
        }
    )
    return write_table_atomically(out_dir / METRICS_FILE, table.replace_schema_metadata(metadata))


def write_table_atomically(path: Path, table: pa.Table) -> Path:
    """Write ``table`` to ``path`` (parquet, page checksums) via a temporary file + ``os.replace``.

    Stale temporary files of the same name left by a killed process are removed first (one
    writer per file).
    """
    out_dir, prefix = path.parent, f".{path.name}."
    for stale in out_dir.glob(f"{prefix}*{_TMP_SUFFIX}"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=_TMP_SUFFIX, dir=out_dir)
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
        if metadata.get(b"vi_sweep.complete") != b"1":
            raise UnreadableRun("incomplete file (no vi_sweep.complete flag)")
        version = metadata.get(b"vi_sweep.format", b"1").decode()
        if version != FORMAT:
            raise UnreadableRun(f"written by another vi_sweep (file format {version}, this one reads {FORMAT})")
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


def read_fields(path: str | os.PathLike) -> dict[str, Any] | None:
    """The flat fields of a finished, intact ``metrics.parquet`` (every page read), or None."""
    try:
        return read_run_file(path).fields
    except UnreadableRun:
        return None
