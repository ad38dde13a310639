"""The parquet contract: a run's ``metrics.parquet``, written atomically and read back (pyarrow only).

Both sides use it: the launcher writes (:func:`write_metrics`), resume and the analysis read
(:func:`read_fields`). No Hydra, no pandas, no JAX at import.

Layout of one file: one row per logged step with the metric columns of
:class:`vi_sweep.core.trainer.Rows` plus ``step``, ``status`` (``ok`` | ``diverged``) and
``diverged_at`` (null if never), then the run's flat config (:func:`vi_sweep.launch.config.run_fields`)
and ``scenario`` as constant columns. Key-value metadata holds the full resolved config
(``vi_sweep.config``, JSON), the flat fields (``vi_sweep.fields``), ``vi_sweep.version``,
``jax.version`` and ``vi_sweep.complete = "1"``, which together let a resumed sweep decide
whether a file is finished and belongs to the same job.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METRICS_FILE = "metrics.parquet"
_TMP_PREFIX, _TMP_SUFFIX = f".{METRICS_FILE}.", ".tmp"  # write_metrics' temporary files
METRIC_COLUMNS = (
    "step",
    "loss",
    "kl",
    "mu_norm",
    "mean_error",
    "sigma_mean",
    "sigma_std",
    "sigma_min",
    "sigma_max",
    "grad_norm",
    "diverged",
)


def _package_version() -> str:
    from vi_sweep import __version__

    return __version__


def metrics_table(rows: Mapping[str, np.ndarray], fields: Mapping[str, Any], diverged_at: int, scenario: str) -> pa.Table:
    """Build the table: metric columns, run status, then the run's config as constant columns."""
    n = len(rows["step"])
    columns: dict[str, pa.Array] = {}
    for name in METRIC_COLUMNS:
        values = np.asarray(rows[name])
        columns[name] = pa.array(values.astype(np.int64) if name == "step" else values)
    status = "diverged" if diverged_at > 0 else "ok"
    columns["status"] = pa.array([status] * n, pa.string())
    columns["diverged_at"] = pa.array([diverged_at if diverged_at > 0 else None] * n, pa.int64())
    columns["scenario"] = pa.array([scenario] * n, pa.string())
    for key, value in fields.items():
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
            b"vi_sweep.complete": b"1",
        }
    )
    table = table.replace_schema_metadata(metadata)
    path = out_dir / METRICS_FILE
    for stale in out_dir.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle)
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


def read_fields(path: str | os.PathLike) -> dict[str, Any] | None:
    """The flat fields of a complete ``metrics.parquet``, or None if it is missing, partial or corrupt."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        if metadata.get(b"vi_sweep.complete") != b"1":
            return None
        pq.read_metadata(path)  # footer is readable
        return json.loads(metadata[b"vi_sweep.fields"])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
