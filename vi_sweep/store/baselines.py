"""Exact baselines: the ``objective=exact`` twin of every run, one file per distinct twin.

The **exact baseline** of a run is the ``objective=exact`` run with the same optimizer (and
optimizer hyperparameters), lr, init_log_sigma, d, steps, log_every and target (and target
hyperparameters). The exact objective ignores ``estimator``, ``num_mc`` and the seed, so one
baseline serves every estimator, sample size and seed of a cell (:data:`BASELINE_IGNORES`).

Baselines the sweep does not contain as jobs live in ``<sweep_dir>/baselines/<hash>/metrics.parquet``
(:func:`cache_file`), written atomically by :func:`write_baseline`. Two writers share this one
naming and format:

- the batched launcher trains the twins a sweep lacks together with its jobs
  (``hydra.launcher.exact_baselines``; :func:`missing_twins`), so the report finds them ready;
- the report (:mod:`vi_sweep.analysis.references`) trains whatever is still missing (a sweep run by another
  launcher, a cache deleted since) and reads the rest.

Either way a file holds the same rows: the same trainer, and the exact objective draws no random
numbers. No JAX, no pandas and no Hydra here: the launcher and the analysis both import this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa

from vi_sweep.store.metrics import METRICS_FILE, metrics_table, read_fields, write_metrics

BASELINE_DIR = "baselines"
BASELINE_IGNORES = ("objective", "estimator", "num_mc", "seed")
BASELINE_SCENARIO = "baseline"  # the scenario column of a baseline file


def baseline_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The flat fields of a run's exact twin: its own fields with the ignored ones neutralised.

    ``estimator="none"``, ``num_mc=0``, ``seed=0`` say honestly that the exact objective has no
    estimator, draws nothing and uses no randomness (``vi_sweep.core.trainer.split_fields`` accepts
    them: it normalises these fields away for ``objective=exact``).
    """
    twin = {key: value for key, value in fields.items() if key not in BASELINE_IGNORES}
    twin.update(objective="exact", estimator="none", num_mc=0, seed=0)
    return twin


def baseline_key(fields: Mapping[str, Any]) -> str:
    """A canonical string for "same baseline": JSON of the fields that matter, sorted."""
    return json.dumps(baseline_fields(fields), sort_keys=True)


def cache_file(sweep_dir: Path, key: str) -> Path:
    """Where the baseline with ``key`` (:func:`baseline_key`) is kept in ``sweep_dir``."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(sweep_dir) / BASELINE_DIR / digest / METRICS_FILE


def baseline_table(rows: Mapping[str, np.ndarray], fields: Mapping[str, Any], diverged_at: int) -> pa.Table:
    """One baseline's rows (with ``step``) as the table of its file."""
    return metrics_table(rows, fields, diverged_at, BASELINE_SCENARIO)


def write_baseline(path: Path, table: pa.Table, fields: Mapping[str, Any]) -> Path:
    """Write a :func:`baseline_table` to ``path`` (:func:`cache_file`), atomically."""
    return write_metrics(Path(path).parent, table, resolved_config=dict(fields), fields=fields)


def is_cached(sweep_dir: Path, key: str) -> bool:
    """Whether a complete baseline file for ``key`` is in ``sweep_dir`` (its recorded fields match)."""
    return read_fields(cache_file(sweep_dir, key)) == json.loads(key)


def missing_twins(sweep_dir: Path, fields_of_jobs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The exact twins the report would have to train: one per distinct :func:`baseline_key` of
    the jobs, except those the sweep has as an ``objective=exact`` job and those already cached."""
    keys: dict[str, None] = {}
    in_sweep: set[str] = set()
    for fields in fields_of_jobs:
        key = baseline_key(fields)
        keys.setdefault(key)
        if fields.get("objective") == "exact":
            in_sweep.add(key)
    return [json.loads(key) for key in keys if key not in in_sweep and not is_cached(Path(sweep_dir), key)]
