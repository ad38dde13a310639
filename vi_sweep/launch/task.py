"""The Hydra task: one composed config in, one ``metrics.parquet`` out.

Used by ``python -m vi_sweep run`` and by any Hydra launcher that runs jobs one by one (basic,
submitit). The batched launcher computes many jobs at once and then calls :func:`finish_job`
per job, so both paths write identical files.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from vi_sweep.analysis.optimized_metric import TailSummary
from vi_sweep.launch.config import ConfigError, run_fields, validate
from vi_sweep.launch.job_values import exact_twin_summary, rule_of, run_summary, value_for
from vi_sweep.launch.devices import quiet_jax_logs
from vi_sweep.launch.interrupts import interrupts_held
from vi_sweep.launch.resume import finished_in, run_key
from vi_sweep.store.metrics import METRICS_FILE, UnreadableRun, metrics_table, write_metrics
from vi_sweep.store.params import write_params

log = logging.getLogger("vi_sweep")


def job_fields(cfg: DictConfig) -> dict[str, Any]:
    """Validate a composed job config and return its flat fields (raises :class:`ConfigError`)."""
    validate(cfg)
    return run_fields(cfg)


def job_scenario(cfg: DictConfig) -> str:
    """The scenario choice recorded by Hydra for this job (``none`` if not composed by Hydra)."""
    choice = OmegaConf.select(cfg, "hydra.runtime.choices.scenario", default=None)
    if choice is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choice = HydraConfig.get().runtime.choices.get("scenario")
    return str(choice or "none")


def format_row(rows: Mapping[str, np.ndarray], i: int) -> str:
    """One logged row in the notebook's print format (the KL excess where the KL is unknown: a regression target)."""
    kl = float(rows["kl"][i])
    distance = f"KL={kl: .6f}" if not np.isnan(kl) else f"KL excess={float(rows['kl_excess'][i]): .6f}"
    return (
        f"t={int(rows['step'][i]):5d}  loss={float(rows['loss'][i]): .6f}  {distance}  "
        f"|mu|={float(rows['mu_norm'][i]):.4f}  "
        f"mean(sigma)={float(rows['sigma_mean'][i]):.4f}  std(sigma)={float(rows['sigma_std'][i]):.4f}  "
        f"min(sigma)={float(rows['sigma_min'][i]):.4e}"
    )


def finish_job(
    out_dir: str | Path,
    cfg: Optional[DictConfig],
    fields: Mapping[str, Any],
    scenario: str,
    rows: Mapping[str, np.ndarray],
    diverged_at: int,
    *,
    echo: bool = True,
    task_values: Mapping[str, Any] | None = None,
    on_written: Callable[[], Any] = lambda: None,
) -> TailSummary:
    """Write the job's parquet atomically, optionally print its rows; return the run's
    :class:`~vi_sweep.analysis.optimized_metric.TailSummary` (its job's value is computed from it).

    ``task_values``: the job's task config, resolved, if the caller has it already (the batched
    launcher resolved it when it composed the job); else it is resolved from ``cfg`` here.
    ``on_written`` is called as soon as the run file is in place (a rerun resumes the run from
    then on), before anything else that could be interrupted: a Ctrl-C is held from the write to
    the call (:func:`vi_sweep.launch.interrupts.interrupts_held`), so it lands before both or after both.

    ``rows`` holds the run's final parameters too (``final_mu``, ``final_log_sigma``:
    :data:`vi_sweep.core.trainer.FINAL_PARAMS`, from ``train_one`` or the launcher's ``to_numpy``);
    they are written first, to ``params.parquet``.
    """
    write_params(out_dir, rows["final_mu"], rows["final_log_sigma"], fields)
    table = metrics_table(rows, fields, diverged_at, scenario)
    if task_values is None:
        assert cfg is not None, "finish_job needs the job's config or its task_values"
        task_values = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}  # type: ignore[union-attr]
    resolved = {**task_values, "scenario": scenario}
    with interrupts_held():  # a Ctrl-C between the file landing and on_written would leave it uncounted
        path = write_metrics(out_dir, table, resolved_config=resolved, fields=fields)
        on_written()
    if echo:  # the logged rows, as the notebook printed them (tail probes are in the file only)
        for i in np.flatnonzero(~np.asarray(rows["probe"], bool)):
            print(format_row(rows, i))
        if diverged_at:
            print(f"non-finite at step {diverged_at}: updates stopped there, parameters kept at their last finite values")
    log.info("wrote %s", path)
    return run_summary(rows, fields, diverged_at)


def job_return_value(cfg: DictConfig, fields: Mapping[str, Any], summary: TailSummary) -> Optional[float]:
    """In a multirun, the float the sweeper reads (``optimized_metric``, :mod:`vi_sweep.launch.job_values`;
    an exact twin it needs is read from the sweep's baseline cache or trained and cached);
    ``None`` for a single run, whose return value nobody reads."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return None
    rule = rule_of(cfg)
    twin = None
    if rule.needs_exact_twin:
        twin = summary if fields["objective"] == "exact" else exact_twin_summary(Path(os.path.abspath(str(hydra_config.sweep.dir))), fields)
    return value_for(rule, fields, summary, twin)


def task(cfg: DictConfig) -> Optional[float]:
    """Hydra task function: validate, train once (jitted, cached per shape), write parquet, and
    return the job's value to the sweeper (:func:`job_return_value`).

    Under a launcher that places jobs by number (Hydra's basic launcher, submitit), a job whose
    directory already holds its finished run is not recomputed (a rerun resumes), and a job whose
    directory holds another config's finished run stops the sweep with one line instead of
    overwriting it (:mod:`vi_sweep.launch.resume`; the batched launcher places such jobs in new
    directories instead).
    """
    from hydra.core.hydra_config import HydraConfig

    quiet_jax_logs()
    from vi_sweep.core.trainer import split_fields, train_one

    try:
        fields = job_fields(cfg)
    except ConfigError as err:
        print(f"vi_sweep: error: {err}", file=sys.stderr)
        sys.exit(2)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    scenario = job_scenario(cfg)
    try:
        existing = finished_in(out_dir)
    except UnreadableRun as err:
        print(f"vi_sweep: warning: {out_dir / METRICS_FILE} is unreadable ({err}); recomputed", file=sys.stderr)
        existing = None
    if existing is not None:
        if existing.key == run_key(fields, scenario):
            log.info("%s already holds this run: resumed, not recomputed", out_dir)
            return job_return_value(cfg, fields, existing.summary)
        launcher = HydraConfig.get().runtime.choices.get("hydra/launcher", "this launcher")
        print(
            f"vi_sweep: error: {out_dir} already holds a finished run of another config; hydra/launcher={launcher} places "
            "jobs by number and would overwrite it: extend this sweep with the batched launcher (the default) or choose a new hydra.sweep.dir",
            file=sys.stderr,
        )
        sys.exit(2)
    spec, traced = split_fields(fields)
    state, rows = train_one(spec, traced)
    try:
        summary = finish_job(out_dir, cfg, fields, scenario, rows, int(state.diverged_at))
    except OSError as err:  # disk full, permissions: the atomic writer left nothing behind
        print(f"vi_sweep: error: cannot write {out_dir}/{METRICS_FILE}: {err.strerror or err}", file=sys.stderr)
        sys.exit(1)
    return job_return_value(cfg, fields, summary)
