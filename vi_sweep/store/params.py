"""A run's final variational parameters, ``params.parquet`` beside its ``metrics.parquet``.

One row per coordinate: ``coordinate`` (int32), ``mu`` and ``log_sigma`` (float32) of the final
q = N(mu, diag(exp(log_sigma)^2)) -- the parameters after the last step (a run that stopped on a
non-finite value keeps its last finite ones). The metadata holds the run's flat fields
(``vi_sweep.fields``), as in its metrics file. Written atomically, *before* the metrics file: a
finished run (whose metrics file is complete) always has its parameters. pyarrow only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vi_sweep.store.metrics import UnreadableRun, write_table_atomically

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
    table = table.replace_schema_metadata({b"vi_sweep.fields": json.dumps(dict(fields), sort_keys=True).encode()})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_table_atomically(out_dir / PARAMS_FILE, table)


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
