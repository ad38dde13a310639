"""A run's final variational parameters, ``params.parquet`` beside its ``metrics.parquet``.

One row per coordinate: ``coordinate`` (int32), ``mu`` and ``log_sigma`` (float32) of the final
q = N(mu, diag(exp(log_sigma)^2)) -- the parameters after the last step (a run that stopped on a
non-finite value keeps its last finite ones). The metadata holds the run's flat fields
(``vi_sweep.fields``), as in its metrics file. Written atomically, *before* the metrics file: a
finished run (whose metrics file is complete) always has its parameters. pyarrow only.

The compact layout (``hydra.launcher.layout=compact``) keeps the parameters of a chunk's runs in
one file beside its ``jobs-<first>-<last>.parquet``: ``runs/params-<first>-<last>.parquet`` with a
leading ``job`` column (int64), written before the jobs file too; one whose jobs file is not
there (a chunk stopped between the two) is read as no run's (:func:`compact_params_files`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vi_sweep.store.metrics import RUNS_DIR, UnreadableRun, write_atomically

PARAMS_FILE = "params.parquet"


class FinalParams(NamedTuple):
    """A run's final q, as written."""

    fields: dict[str, Any]
    mu: np.ndarray  # shape=(d,), float32
    log_sigma: np.ndarray  # shape=(d,), float32


def write_params(out_dir: str | os.PathLike, mu: np.ndarray, log_sigma: np.ndarray, fields: Mapping[str, Any]) -> Path:
    """Write ``out_dir/params.parquet`` atomically (see the module docstring)."""
    mu, log_sigma = np.asarray(mu, np.float32).ravel(), np.asarray(log_sigma, np.float32).ravel()
    table = pa.table(
        {"coordinate": pa.array(np.arange(mu.size, dtype=np.int32)), "mu": pa.array(mu), "log_sigma": pa.array(log_sigma)}
    )
    return write_atomically(Path(out_dir) / PARAMS_FILE, table, {b"vi_sweep.fields": json.dumps(dict(fields), sort_keys=True).encode()})


def read_params(path: str | os.PathLike) -> FinalParams:
    """Read a ``params.parquet`` (every page checked); :class:`UnreadableRun` with a one-line reason."""
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        fields = json.loads((parquet.schema_arrow.metadata or {})[b"vi_sweep.fields"])
        table = parquet.read(columns=["mu", "log_sigma"], use_threads=False)
    except KeyError:
        raise UnreadableRun("no vi_sweep.fields metadata") from None
    except (OSError, ValueError, pa.ArrowException) as err:
        lines = str(err).strip().splitlines()
        raise UnreadableRun(lines[0] if lines else type(err).__name__) from None
    return FinalParams(fields, table.column("mu").to_numpy(), table.column("log_sigma").to_numpy())


def write_compact_params(sweep_dir: str | os.PathLike, runs: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> Path:
    """Write the final parameters of a compact chunk's runs, ``(job number, mu, log_sigma)`` each, to
    ``<sweep_dir>/runs/params-<first>-<last>.parquet`` atomically (see the module docstring)."""
    jobs, mus, log_sigmas = [], [], []
    for job, mu, log_sigma in runs:
        mu, log_sigma = np.asarray(mu, np.float32).ravel(), np.asarray(log_sigma, np.float32).ravel()
        jobs.append(np.full(mu.size, job, np.int64))
        mus.append(mu)
        log_sigmas.append(log_sigma)
    table = pa.table(
        {
            "job": pa.array(np.concatenate(jobs)),
            "coordinate": pa.array(np.concatenate([np.arange(mu.size, dtype=np.int32) for mu in mus])),
            "mu": pa.array(np.concatenate(mus)),
            "log_sigma": pa.array(np.concatenate(log_sigmas)),
        }
    )
    first, last = min(job for job, _, _ in runs), max(job for job, _, _ in runs)
    return write_atomically(Path(sweep_dir) / RUNS_DIR / f"params-{first:06d}-{last:06d}.parquet", table, {})


def compact_params_files(sweep_dir: str | os.PathLike) -> list[Path]:
    """The compact layout's parameter files of a sweep directory, in job order: each beside its
    ``jobs-<first>-<last>.parquet``. One without it was left by a chunk stopped between the two
    writes; the job numbers it names may hold other runs since, so it is no run's."""
    runs_dir = Path(sweep_dir) / RUNS_DIR
    return sorted(path for path in runs_dir.glob("params-*.parquet") if (runs_dir / f"jobs-{path.name.removeprefix('params-')}").is_file())


def read_compact_params(path: str | os.PathLike) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{job number: (mu, log_sigma)}`` from a compact parameters file; :class:`UnreadableRun` with a one-line reason."""
    try:
        table = pq.ParquetFile(path, page_checksum_verification=True).read(columns=["job", "mu", "log_sigma"], use_threads=False)
    except (OSError, ValueError, pa.ArrowException) as err:
        lines = str(err).strip().splitlines()
        raise UnreadableRun(lines[0] if lines else type(err).__name__) from None
    jobs = table.column("job").to_numpy()
    mu, log_sigma = table.column("mu").to_numpy(), table.column("log_sigma").to_numpy()
    starts = np.flatnonzero(np.r_[True, jobs[1:] != jobs[:-1]])
    ends = np.r_[starts[1:], len(jobs)]
    return {int(jobs[a]): (mu[a:b], log_sigma[a:b]) for a, b in zip(starts, ends)}
