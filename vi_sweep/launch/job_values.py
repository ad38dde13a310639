"""The float each job returns to Hydra's sweeper, under either launcher.

A job's value (:func:`vi_sweep.analysis.optimized_metric.job_value`, chosen by the config's
``optimized_metric`` and ``nonfinite_value``) is computed from its :class:`TailSummary` and, for
the rules that compare with the exact run, its exact twin's. The twin comes from, in order: the
twins the batched launcher trained with the jobs, an ``objective=exact`` job of the same launch,
the sweep's baseline cache (``<sweep dir>/baselines/``), or -- a sweep run by the basic launcher,
job by job -- it is trained here (no noise: one cheap run) and cached for the next job and the
report (:func:`exact_twin_summary`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, MutableMapping, NamedTuple, Optional, Sequence

import numpy as np

from vi_sweep.analysis.optimized_metric import DEFAULT_METRIC, DEFAULT_NONFINITE_VALUE, NEEDS_EXACT_TWIN, TailSummary, job_value, summarize
from vi_sweep.store.baselines import baseline_fields, baseline_key, baseline_table, cache_file, write_baseline
from vi_sweep.store.metrics import RunFile, UnreadableRun, read_run_file


class ValueRule(NamedTuple):
    """``optimized_metric`` and ``nonfinite_value`` of a job's config."""

    metric: str = DEFAULT_METRIC
    nonfinite_value: float = DEFAULT_NONFINITE_VALUE

    @property
    def needs_exact_twin(self) -> bool:
        return self.metric in NEEDS_EXACT_TWIN


def rule_of(task_values: Mapping[str, Any]) -> ValueRule:
    """The value rule of a composed (validated) config's run part."""
    return ValueRule(str(task_values["optimized_metric"]), float(task_values["nonfinite_value"]))


def run_summary(rows: Mapping[str, np.ndarray], fields: Mapping[str, Any], diverged_at: int) -> TailSummary:
    """The :class:`TailSummary` of a run just trained (its rows as the trainer returned them)."""
    return summarize(rows, int(fields["steps"]), int(diverged_at))


def file_summary(run: RunFile) -> TailSummary:
    """The :class:`TailSummary` of a run read back from its ``metrics.parquet``."""
    rows = {name: run.table.column(name).to_numpy(zero_copy_only=False) for name in ("step", "kl", "kl_excess")}
    diverged_at = int(run.table.column("diverged_at")[0].as_py() or 0)
    return summarize(rows, int(run.fields["steps"]), diverged_at)


def value_for(rule: ValueRule, fields: Mapping[str, Any], run: TailSummary, twin: Optional[TailSummary]) -> float:
    """The job's return value (its exact twin's summary ``twin`` if ``rule`` needs it)."""
    return job_value(rule.metric, run, twin, lr=float(fields["lr"]), d=int(fields["d"]), nonfinite_value=rule.nonfinite_value)


def cached_twin_summary(sweep_dir: Path, fields: Mapping[str, Any]) -> Optional[TailSummary]:
    """The exact twin of the run with ``fields`` from the sweep's baseline cache, or None."""
    try:
        cached = read_run_file(cache_file(sweep_dir, baseline_key(fields)))
    except UnreadableRun:
        return None  # not there (or damaged)
    return file_summary(cached) if cached.fields == baseline_fields(fields) else None


def exact_twin_summary(sweep_dir: Path, fields: Mapping[str, Any]) -> TailSummary:
    """The exact twin of the run with ``fields``: read from the sweep's baseline cache, or trained
    now and cached there (a cache that cannot be written is left to the report)."""
    cached = cached_twin_summary(sweep_dir, fields)
    if cached is not None:
        return cached
    path = cache_file(sweep_dir, baseline_key(fields))
    twin = baseline_fields(fields)
    from vi_sweep.core.trainer import split_fields, train_one

    state, rows = train_one(*split_fields(twin))
    diverged_at = int(state.diverged_at)
    try:
        write_baseline(path, baseline_table(rows, twin, diverged_at), twin)
    except OSError:
        pass  # a cache: the report trains what it cannot find
    return run_summary(rows, twin, diverged_at)


def assign_values(
    jobs: Sequence[tuple[ValueRule, Mapping[str, Any]]],
    summaries: Sequence[TailSummary],
    twins: MutableMapping[str, TailSummary],
    sweep_dir: Path,
    *,
    train_missing: bool = True,
) -> list[float]:
    """Each job's value, from ``(rule, fields)`` per job, its summary, and the exact twins at hand
    (``twins``: baseline key -> summary, completed here from the launch's exact jobs and the cache).

    ``train_missing=False`` (a grid whose values nobody reads, with ``exact_baselines=false``): a
    twin that is neither at hand nor cached is not trained, and the value that needs it is NaN."""
    for (rule, fields), summary in zip(jobs, summaries):
        if fields["objective"] == "exact":
            twins.setdefault(baseline_key(fields), summary)
    values = []
    for (rule, fields), summary in zip(jobs, summaries):
        twin = None
        if rule.needs_exact_twin:
            key = baseline_key(fields)
            if key not in twins:
                found = exact_twin_summary(sweep_dir, fields) if train_missing else cached_twin_summary(sweep_dir, fields)
                if found is None:
                    values.append(math.nan)
                    continue
                twins[key] = found
            twin = twins[key]
        values.append(value_for(rule, fields, summary, twin))
    return values
