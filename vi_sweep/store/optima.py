"""The mean-field optima q* of regression posteriors, kept beside a sweep's exact baselines.

A regression target's ``kl_excess`` is measured against q*, solved once per posterior on the
host in float64 (:mod:`vi_sweep.core.regression`). The launcher solves it before training and the
analysis needs it again for its per-run constants, possibly in another process: each q* is kept
in ``<sweep_dir>/baselines/optima/<hash>.npz`` (arrays ``mu``, ``log_sigma`` in float64 and
the posterior's ``key``, checked on reading), written atomically, and read back into the core's
in-memory cache (:func:`prepare_optima`). A file that is missing, damaged or of another key is
solved again; a directory that cannot be written only loses the cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from vi_sweep.store.baselines import BASELINE_DIR

OPTIMA_DIR = "optima"


def optimum_file(sweep_dir: Path, key: str) -> Path:
    """Where q* of the posterior with ``key`` (``vi_sweep.core.regression.optimum_key``) is kept."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(sweep_dir) / BASELINE_DIR / OPTIMA_DIR / f"{digest}.npz"


def read_optimum(path: Path, key: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(mu, log_sigma)`` from ``path`` if it holds q* of ``key``, else None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return np.asarray(data["mu"], np.float64), np.asarray(data["log_sigma"], np.float64)
    except Exception:  # noqa: BLE001 - whatever a damaged file raises (EOFError, BadZipFile, ...): solved again
        return None


def write_optimum(path: Path, key: str, mu: np.ndarray, log_sigma: np.ndarray) -> Path:
    """Write q* of ``key`` to ``path`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, key=np.array(key), mu=np.asarray(mu, np.float64), log_sigma=np.asarray(log_sigma, np.float64))
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: a crash leaves the old file or the new, never an empty one
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def posterior_params(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``target_*`` keywords of a regression run's flat fields, completed with the builder's
    defaults if some are missing (hand-written fields; a launcher records every one)."""
    from vi_sweep.core import regression

    name = fields["target"]
    params = {key[len("target_") :]: value for key, value in fields.items() if key.startswith("target_")}
    if any(key not in params for key in regression.posterior_keys(name)):
        from vi_sweep.core.targets import with_builder_defaults  # JAX: only for such fields

        params = with_builder_defaults(name, params)
    return params


def prepare_optima(sweep_dir: Optional[Path], fields_list: Iterable[Mapping[str, Any]]) -> int:
    """Make q* of every regression posterior among the runs ``fields_list`` ready in memory.

    Each is read from ``sweep_dir``'s cache into ``vi_sweep.core.regression``'s, or solved there
    (float64) and written to the cache. With ``sweep_dir=None`` nothing is read or written.
    Returns how many were solved.
    """
    from vi_sweep.core import regression  # inside: the store's modules import no science at import time

    solved = 0
    seen: set[str] = set()
    for fields in fields_list:
        name = fields.get("target")
        if name not in regression.POSTERIORS:
            continue
        static, traced = regression.split_params(name, posterior_params(fields))
        key = regression.optimum_key(regression.posterior_config(name, int(fields["d"]), {**static, **traced}))
        if key in seen:
            continue
        seen.add(key)
        path = optimum_file(sweep_dir, key) if sweep_dir is not None else None
        found = read_optimum(path, key) if path is not None and path.exists() else None
        if key not in regression.remembered_optima():
            if found is not None:
                regression.remember_optimum(key, regression.Optimum(*found))
                continue
            solved += 1
        optimum = regression.regression_optimum(name, int(fields["d"]), **static, **traced)
        if path is not None and found is None:  # missing, damaged or another key's: (re)written
            try:
                write_optimum(path, key, optimum.mu, optimum.log_sigma)
            except OSError:
                pass  # a cache: a read-only sweep directory solves again next time
    return solved
