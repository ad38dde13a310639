"""The batched launcher's body: a whole sweep as one compiled program per shape.

:class:`hydra_plugins.vi_sweep_launcher.vi_sweep_launcher.BatchedLauncher` imports this module
inside ``launch()``, so JAX loads here and never at Hydra start-up. One ``launch`` call:

1. **Compose and validate** every job (``load_sweep_config``; fast through
   :class:`vi_sweep.compose.TemplateComposer`). Any :class:`~vi_sweep.config.ConfigError` is one
   line ``vi_sweep: error: ...`` on stderr and exit code 2; a sweep directory that held nothing
   but Hydra's ``multirun.yaml`` is removed again, so a rejected sweep leaves nothing behind.
2. **Resume**: a job whose ``<job dir>/metrics.parquet`` is complete
   (:func:`vi_sweep.results.read_fields`) and records the job's own fields is not recomputed
   and not rewritten; it is returned as COMPLETED.
3. **Plan** (:mod:`vi_sweep.sweep_plan`): deduplicate, group by
   :class:`~vi_sweep.trainer.TrainSpec`, cut groups into chunks within ``max_batch_floats``,
   padded to a multiple of the device count. With ``exact_baselines``, the exact twins the
   report needs and the sweep lacks (:mod:`vi_sweep.baselines`) are planned after the jobs.
4. **Run** each chunk as ``jitted_batch_train(spec)(hyper)`` with the batch axis sharded over
   the local devices. Dispatch is asynchronous: chunks k+1 and k+2 are compiled and started
   before the rows of chunk k are written, so writing overlaps computing.
5. **Write** each job as Hydra's ``run_job`` would (:func:`vi_sweep.job_dirs.write_job_dir`: job
   dir, ``.hydra/``, job log, callbacks; the same files byte for byte, at a third of the cost)
   with a task that only calls :func:`vi_sweep.app.finish_job` on the job's slice, so a batched
   job's files are those of the same job run alone. A diverged run is data
   (``status = diverged``), never a failed job. Baselines go to ``<sweep dir>/baselines/``; one
   that cannot be written is left to the report (one warning line).

At the end one line: ``vi_sweep: N jobs (M computed, K resumed) in G groups, C compiles, W s``,
followed by ``; and B exact baselines for the report`` when there were any.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.vi_sweep_launcher.vi_sweep_launcher import BatchedLauncherConf
from vi_sweep.app import finish_job, job_fields, job_scenario, quiet_jax_logs
from vi_sweep.compose import TemplateComposer
from vi_sweep.config import ConfigError
from vi_sweep.host import CPU_VECTOR_WIDTHS, available_cores, prefer_cpu_vector_width
from vi_sweep.job_dirs import write_job_dir
from vi_sweep.results import METRICS_FILE, read_fields

log = logging.getLogger(__name__)

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT


_CONF = BatchedLauncherConf()


@dataclass(frozen=True)
class LauncherOptions:
    """The launcher's knobs: defaults and docs are ``BatchedLauncherConf``'s (one place only).

    ``submitit_folder`` differs: the conf's default interpolates ``${hydra.sweep.dir}``, which
    Hydra resolves before this object is built.
    """

    max_batch_floats: int = _CONF.max_batch_floats
    max_runs_per_call: Optional[int] = _CONF.max_runs_per_call
    cpu_devices: Optional[int] = _CONF.cpu_devices
    cpu_vector_width: Optional[int] = _CONF.cpu_vector_width
    shard: bool = _CONF.shard
    compilation_cache_dir: Optional[str] = _CONF.compilation_cache_dir
    progress: bool = _CONF.progress
    resume: bool = _CONF.resume
    exact_baselines: bool = _CONF.exact_baselines
    engine: str = _CONF.engine
    submitit_cluster: str = _CONF.submitit_cluster
    submitit_folder: str = ".submitit/%j"
    timeout_min: int = _CONF.timeout_min
    cpus_per_task: Optional[int] = _CONF.cpus_per_task
    gpus_per_node: Optional[int] = _CONF.gpus_per_node
    mem_gb: Optional[float] = _CONF.mem_gb
    partition: Optional[str] = _CONF.partition
    array_parallelism: int = _CONF.array_parallelism
    slurm_additional_parameters: dict = field(default_factory=dict)
    slurm_setup: list = field(default_factory=list)

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first bad ``hydra.launcher.*`` value."""
        from vi_sweep.cluster import SUBMITIT_CLUSTERS

        choices = {"engine": (self.engine, ("local", "submitit")), "submitit_cluster": (self.submitit_cluster, SUBMITIT_CLUSTERS)}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"hydra.launcher.{name}={value!r} is invalid: must be one of {', '.join(allowed)}")
        for name in ("timeout_min", "array_parallelism"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.launcher.{name}={value!r} is invalid: must be an integer >= 1")
        if self.cpu_vector_width is not None and self.cpu_vector_width not in CPU_VECTOR_WIDTHS:
            allowed = ", ".join(map(str, CPU_VECTOR_WIDTHS))
            raise ConfigError(f"hydra.launcher.cpu_vector_width={self.cpu_vector_width!r} is invalid: must be null or one of {allowed}")
        positive = {"max_batch_floats": self.max_batch_floats, "max_runs_per_call": self.max_runs_per_call, "cpu_devices": self.cpu_devices}
        for name, value in positive.items():
            optional = name != "max_batch_floats"
            if (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                continue
            allowed = ("null or " if optional else "") + "an integer >= 1"
            raise ConfigError(f"hydra.launcher.{name}={value!r} is invalid: must be {allowed}")


@dataclass
class Job:
    """One job of the sweep. Its composed config is not kept (about 100 kB each): it is composed
    again, from a template, when the job is written."""

    num: int  # hydra.job.num
    overrides: Sequence[str]
    fields: dict[str, Any]
    out_dir: Path
    resumed: Optional[JobReturn] = None  # set if its metrics.parquet is already complete


@dataclass
class SweepCounters:
    compiled: int = 0  # XLA compilations (persistent-cache hits excluded)
    cache_hits: int = 0  # programs loaded from the persistent compilation cache


@contextlib.contextmanager
def _gc_frozen():
    """Everything alive now (JAX, Hydra, the master config) is long-lived: keep it out of the
    cyclic collector's generations, which the thousands of OmegaConf nodes each job makes would
    otherwise have it walk again and again (~0.7 ms a job)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@_gc_frozen()
def launch(
    *,
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    options: LauncherOptions,
) -> list[JobReturn]:
    """Run one batch of a Hydra sweep; return one :class:`JobReturn` per job, in order."""
    started = time.perf_counter()
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    try:
        options.check()
        jobs = compose_jobs(hydra_context, config, job_overrides, initial_job_idx, resume=options.resume)
    except ConfigError as err:
        _fail_before_writing(sweep_dir, err)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Launching %d jobs in batches (vi_sweep batched launcher); composed in %.1f s", len(jobs), time.perf_counter() - started)

    returns = {position: job.resumed for position, job in enumerate(jobs) if job.resumed is not None}
    todo = [position for position in range(len(jobs)) if position not in returns]

    twins: list[dict[str, Any]] = []
    if options.exact_baselines:
        from vi_sweep.baselines import missing_twins

        twins = missing_twins(sweep_dir, [job.fields for job in jobs])
    counters, groups = SweepCounters(), 0
    if todo or twins:
        try:
            counters, groups = _compute_and_write(hydra_context, config, jobs, todo, twins, returns, options)
        except ConfigError as err:  # raised before any job is written (no submitit executor here)
            _fail_before_writing(sweep_dir, err)
    elapsed = time.perf_counter() - started
    also = f"; and {len(twins)} exact baselines for the report" if twins else ""
    print(
        f"vi_sweep: {len(jobs)} jobs ({len(todo)} computed, {len(jobs) - len(todo)} resumed) in {groups} groups, "
        f"{counters.compiled} compiles, {elapsed:.1f} s{also}",
        flush=True,
    )
    return [returns[position] for position in range(len(jobs))]


def _fail_before_writing(sweep_dir: Path, err: ConfigError) -> NoReturn:
    """One line, exit 2, and no sweep directory left behind that holds no job."""
    _abandon_fresh_sweep_dir(sweep_dir)
    print(f"vi_sweep: error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------
# Composition, validation, resume
# ---------------------------------------------------------------------------------------------


def compose_jobs(
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    *,
    resume: bool,
) -> list[Job]:
    """Compose and validate every job (raises :class:`ConfigError` on the first invalid one).

    With ``resume``, a job whose ``metrics.parquet`` is complete and records the same fields gets
    its COMPLETED :class:`JobReturn` here, while its config is at hand.
    """
    jobs = []
    for offset, overrides in enumerate(job_overrides):
        num = initial_job_idx + offset
        cfg = compose_job(hydra_context, config, overrides, num, scratch=True)  # read here, then dropped
        with _as_current_hydra_config(cfg):  # interpolations such as ${hydra:job.num} read it
            task_values = {key: _plain(cfg[key]) for key in cfg if key != "hydra"}
            out_dir = Path(os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))))
        try:
            fields = job_fields(task_values)
        except ConfigError as err:
            raise ConfigError(f"{err} (job {num}: {' '.join(filter_overrides(overrides))})") from None
        job = Job(num, list(overrides), fields, out_dir)
        if resume:
            summary = completed_summary(job)
            if summary is not None:
                job.resumed = resumed_return(cfg, summary)
        jobs.append(job)
    return jobs


def compose_job(
    hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], num: int, *, scratch: bool = False
) -> DictConfig:
    """The job's full config, as Hydra's basic launcher composes it.

    With ``scratch``, a config to read and drop before the next call (see
    :meth:`vi_sweep.compose.TemplateComposer.scratch_sweep_config`).
    """
    loader = hydra_context.config_loader
    compose = loader.scratch_sweep_config if scratch and isinstance(loader, TemplateComposer) else loader.load_sweep_config
    cfg = compose(config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = num
        cfg.hydra.job.num = num
    return cfg


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


@contextlib.contextmanager
def _as_current_hydra_config(cfg: DictConfig):
    """Make ``cfg`` the current :class:`HydraConfig` for resolving ``${hydra:...}``; restore the previous one.

    ``HydraConfig.get()`` returns ``cfg.hydra`` of whatever it holds; ``set_config`` would also
    take a masked copy (~3 ms a job).
    """
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.cfg = cfg
    try:
        yield
    finally:
        hydra_config.cfg = previous


def _abandon_fresh_sweep_dir(sweep_dir: Path) -> None:
    """Remove a sweep dir that the sweeper created for this rejected sweep (only ``multirun.yaml`` in it)."""
    if sweep_dir.is_dir() and [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]:
        (sweep_dir / "multirun.yaml").unlink()
        sweep_dir.rmdir()


def completed_summary(job: Job) -> Optional[dict[str, Any]]:
    """The summary of a finished ``metrics.parquet`` that belongs to this job, else None."""
    path = job.out_dir / METRICS_FILE
    if not path.exists():
        return None
    if read_fields(path) != json.loads(json.dumps(job.fields)):
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["kl", "diverged_at"])
    diverged_at = table.column("diverged_at")[-1].as_py() or 0
    return {
        "status": "diverged" if diverged_at else "ok",
        "diverged_at": int(diverged_at),
        "final_kl": float(table.column("kl")[-1].as_py()),
        "metrics": str(path),
    }


def resumed_return(cfg: DictConfig, summary: dict[str, Any]) -> JobReturn:
    """A COMPLETED :class:`JobReturn` (as ``run_job`` would build it) for a job already on disk."""
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


# ---------------------------------------------------------------------------------------------
# Computing
# ---------------------------------------------------------------------------------------------


def _compute_and_write(
    hydra_context: HydraContext,
    config: DictConfig,
    jobs: list[Job],
    todo: list[int],
    twins: list[dict[str, Any]],
    returns: dict[int, JobReturn],
    options: LauncherOptions,
) -> tuple[SweepCounters, int]:
    """Plan the jobs in ``todo`` and the exact baselines ``twins``, run every chunk, write every
    job (filling ``returns``) and every baseline (``vi_sweep.baselines``)."""
    quiet_jax_logs()
    cwd = Path(str(config.hydra.runtime.cwd))
    on_submitit = options.engine == "submitit"
    # With submitit this process only plans and writes: it never starts a JAX backend (it may be
    # a login node), and each submitted job pads its chunk for its own devices.
    devices = [] if on_submitit else init_jax(options, cwd=cwd)
    from vi_sweep.baselines import baseline_key, baseline_table, cache_file, write_baseline
    from vi_sweep.sweep_plan import plan_sweep
    from vi_sweep.trainer import split_fields

    sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))  # jobs may chdir; this must not move
    # The twins come last: planned as jobs len(todo), len(todo) + 1, ..., their group after the jobs' groups,
    # so they never delay the first call (their program is traced while the jobs train).
    plan = plan_sweep(
        [split_fields(jobs[position].fields) for position in todo] + [split_fields(twin) for twin in twins],
        max_batch_floats=options.max_batch_floats,
        max_runs_per_call=options.max_runs_per_call,
        multiple_of=1 if on_submitit else len(devices),
    )
    where = f"submitit ({options.submitit_cluster}) jobs" if on_submitit else f"calls on {len(devices)} device(s)"
    log.info(
        "%d jobs -> %d distinct runs in %d groups, %d %s%s", len(todo), len(plan.computations), len(plan.groups), len(plan.chunks), where,
        f" (with {len(twins)} exact baselines)" if twins else "",
    )
    last_chunk_of_group = {chunk.spec: index for index, chunk in enumerate(plan.chunks)}
    counters = SweepCounters()
    bar = _progress_bar(len(todo), len(plan.groups), options.progress)
    unwritten: list[str] = []  # exact baselines that could not be written

    def write_chunk(index: int, outputs) -> None:
        chunk = plan.chunks[index]
        log.debug("call %d/%d: waiting for %d runs", index + 1, len(plan.chunks), chunk.size)
        for slot, rows, diverged_at in _chunk_rows(chunk, *outputs):
            for job_in_plan in plan.computations[chunk.computations[slot]].jobs:
                if job_in_plan >= len(todo):  # an exact baseline, not a job
                    twin = twins[job_in_plan - len(todo)]
                    path = cache_file(sweep_dir, baseline_key(twin))
                    try:
                        write_baseline(path, baseline_table(rows, twin, diverged_at), twin)
                    except OSError as err:  # a cache: the report trains what is missing
                        unwritten.append(f"{path.parent}: {err.strerror or err}")
                    continue
                position = todo[job_in_plan]
                returns[position] = write_job(hydra_context, config, jobs[position], rows, diverged_at)
                bar.update(1)
        # Each job configures its own logging (as run_job does) and leaves it in place; give the
        # launcher its own back (as the basic launcher does), so its lines do not land in that job's log.
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        log.debug("call %d/%d: %d jobs written", index + 1, len(plan.chunks), chunk.real)
        if last_chunk_of_group[chunk.spec] == index:
            bar.set_postfix_str(f"groups {plan.groups.index(chunk.spec) + 1}/{len(plan.groups)}")

    try:
        if on_submitit:
            counters.compiled = _run_on_submitit(plan, options, cwd, write_chunk)
        else:
            baselines_only = frozenset(
                index
                for index, chunk in enumerate(plan.chunks)
                if all(job >= len(todo) for position in chunk.computations for job in plan.computations[position].jobs)
            )
            _run_here(plan, devices, counters, write_chunk, small=baselines_only)
    finally:
        bar.close()
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        if unwritten:
            print(
                f"vi_sweep: warning: {len(unwritten)} exact baselines not written ({unwritten[0]}); the report trains them itself",
                file=sys.stderr,
                flush=True,
            )
    return counters, len(plan.groups)


# Chunks dispatched but not yet written. XLA computes them in order on its own threads while this
# thread writes job directories; with two queued behind the one being written, a chunk whose jobs
# take longer to write than the next chunk takes to compute does not leave the devices idle.
CHUNKS_IN_FLIGHT = 3


def _run_here(plan, devices, counters: SweepCounters, write_chunk: Callable[[int, tuple], None], *, small: frozenset = frozenset()) -> None:
    """``engine=local``: every chunk in this process, up to :data:`CHUNKS_IN_FLIGHT` dispatched
    ahead of the writing.

    Chunks in ``small`` (the exact baselines: a few runs without noise) have their own bound of
    one in flight, so they start with the jobs' last chunk instead of after the writing of the
    first, and run on one device: a call sharded over several CPU devices does not return until
    the devices' previous call is done (measured: a second sharded call waited 1.8 s for the
    first; a one-device call returned at once and ran after it), and this thread has jobs to
    write meanwhile."""
    stop_counting = _count_compiles(counters)
    try:
        pending: collections.deque = collections.deque()
        for index, chunk in enumerate(plan.chunks):
            # Up to CHUNKS_IN_FLIGHT chunks of jobs and one of baselines: writing in order frees both.
            is_small = index in small
            while sum((done in small) == is_small for done, _ in pending) >= (1 if is_small else CHUNKS_IN_FLIGHT):
                done, outputs = pending.popleft()
                write_chunk(done, to_numpy(outputs))
            pending.append((index, dispatch(chunk, plan, devices[:1] if is_small else devices)))
            log.debug("call %d/%d: dispatched %d runs (num_mc=%d)", index + 1, len(plan.chunks), chunk.size, chunk.spec.num_mc)
        while pending:
            done, outputs = pending.popleft()
            write_chunk(done, to_numpy(outputs))
    finally:
        stop_counting()


def _run_on_submitit(plan, options: LauncherOptions, cwd: Path, write_chunk: Callable[[int, tuple], None]) -> int:
    """``engine=submitit``: one submitit job per chunk (one job array), written as each finishes in turn.

    Returns the XLA compilations the jobs report. A failed job does not stop the others from
    being written; afterwards one line names it and the sweep exits 1, so a rerun into the same
    sweep dir computes only what is missing.
    """
    from vi_sweep.cluster import train_chunk

    try:
        executor = _make_executor(options)
    except (RuntimeError, ValueError) as err:  # e.g. submitit_cluster=slurm where there is no srun
        message = str(err).strip().splitlines()[0]
        raise ConfigError(f"hydra.launcher.submitit_cluster={options.submitit_cluster}: {message}") from None
    cache_dir = None
    if options.compilation_cache_dir is not None:
        cache_dir = str(cwd / options.compilation_cache_dir)  # an absolute path stays as it is
    with executor.batch():
        submitted = [
            executor.submit(
                train_chunk,
                tuple(chunk.spec),
                [dict(plan.computations[position].traced) for position in chunk.computations[: chunk.real]],
                cpu_devices=options.cpu_devices,
                cpu_vector_width=options.cpu_vector_width,
                shard=options.shard,
                compilation_cache_dir=cache_dir,
            )
            for chunk in plan.chunks
        ]
    log.info("submitted %d submitit jobs (%s) to %s", len(submitted), options.submitit_cluster, options.submitit_folder)
    compiled, failed = 0, []
    for index, job in enumerate(submitted):
        try:
            result = job.result()
        except Exception as err:  # submitit re-raises the job's error (or a timeout/cancellation) here
            message = str(err).strip().splitlines()
            failed.append(f"job {job.job_id}: {message[-1] if message else type(err).__name__}")
            continue
        compiled += int(result["compiled"])
        write_chunk(index, (result["diverged_at"], result["rows"]))
    if failed:
        print(
            f"vi_sweep: error: {len(failed)} of {len(submitted)} submitit jobs failed ({failed[0]}); "
            f"logs in {Path(options.submitit_folder).parent}; rerun into the same sweep dir to compute what is missing",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    return compiled


def _make_executor(options: LauncherOptions):
    """The submitit executor the options describe."""
    from vi_sweep.cluster import executor_parameters, make_executor

    return make_executor(
        options.submitit_folder,
        options.submitit_cluster,
        executor_parameters(
            cluster=options.submitit_cluster,
            timeout_min=options.timeout_min,
            cpus_per_task=options.cpus_per_task,
            gpus_per_node=options.gpus_per_node,
            mem_gb=options.mem_gb,
            partition=options.partition,
            array_parallelism=options.array_parallelism,
            slurm_additional_parameters=options.slurm_additional_parameters,
            slurm_setup=options.slurm_setup,
        ),
    )


def init_jax(options: LauncherOptions, *, cwd: Path) -> list:
    """Configure JAX for the sweep (CPU vector width and device count, persistent cache); return the devices to shard over."""
    prefer_cpu_vector_width(options.cpu_vector_width)  # before JAX starts a backend, else no effect
    import jax

    cpu_devices = options.cpu_devices or available_cores()
    if cpu_devices > 1:
        try:
            jax.config.update("jax_num_cpu_devices", cpu_devices)
        except RuntimeError:  # JAX already initialised in this process (e.g. called from a notebook)
            if options.cpu_devices is not None:
                log.warning("JAX is already initialised: hydra.launcher.cpu_devices=%d has no effect", cpu_devices)
    if options.compilation_cache_dir is not None:
        cache_dir = Path(options.compilation_cache_dir)
        cache_dir = cache_dir if cache_dir.is_absolute() else cwd / cache_dir
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        # Cache every program: a sweep's programs compile in about a second, JAX's default threshold.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return jax.local_devices() if options.shard else jax.local_devices()[:1]


def dispatch(chunk, plan, devices) -> tuple:
    """Start one chunk (compiling on first use); returns ``(state, rows)`` futures."""
    return start_batch(chunk.spec, [plan.computations[position].traced for position in chunk.computations], devices)


def start_batch(spec, traced: Sequence[dict], devices) -> tuple:
    """Start ``jitted_batch_train(spec)`` on ``traced`` (its length a multiple of the device count),
    the batch axis sharded over ``devices``; returns ``(state, rows)`` futures."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from vi_sweep.trainer import as_hyper, jitted_batch_train

    hyper = as_hyper(list(traced))
    if len(devices) > 1:
        sharding = NamedSharding(Mesh(devices, ("runs",)), PartitionSpec("runs"))
        hyper = jax.device_put(hyper, sharding)
    return jitted_batch_train(spec)(hyper)


def to_numpy(outputs) -> tuple:
    """Block on ``(state, rows)`` futures; return ``(diverged_at, {column: array})`` as numpy."""
    import numpy as np

    state, rows = outputs
    return np.asarray(state.diverged_at), {name: np.asarray(value) for name, value in rows._asdict().items()}


def _chunk_rows(chunk, diverged_at, columns):
    """Yield ``(slot, rows, diverged_at)`` for a chunk's real (unpadded) runs from its numpy results."""
    from vi_sweep.trainer import logged_steps

    steps = logged_steps(chunk.spec.steps, chunk.spec.log_every)
    for slot in range(chunk.real):
        yield slot, {"step": steps, **{name: values[slot] for name, values in columns.items()}}, int(diverged_at[slot])


def write_job(hydra_context: HydraContext, config: DictConfig, job: Job, rows: dict, diverged_at: int) -> JobReturn:
    """Write one job's directory as Hydra's ``run_job`` would (:func:`vi_sweep.job_dirs.write_job_dir`,
    its config composed again), with a task that writes its precomputed rows."""

    def write_rows(task_cfg: DictConfig) -> dict[str, Any]:
        _quiet_console()
        return finish_job(job.out_dir, task_cfg, job.fields, job_scenario(task_cfg), rows, diverged_at, echo=False)

    return write_job_dir(hydra_context, compose_job(hydra_context, config, job.overrides, job.num), job.out_dir, write_rows)


def _quiet_console() -> None:
    """Keep this job's INFO lines out of the console (thousands of them would bury the progress bar
    and the summary); its ``<job dir>/<job name>.log`` still gets every line. Each job configures
    its logging afresh (as ``run_job`` does), so this lasts for one job only."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


# ---------------------------------------------------------------------------------------------
# Progress and compile counting
# ---------------------------------------------------------------------------------------------


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, groups: int, enabled: bool):
    """A tqdm bar on stderr (runs done, runs/s, ETA, current group), only when stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="vi_sweep", file=sys.stderr, postfix=f"groups 0/{groups}", dynamic_ncols=True)


def _count_compiles(counters: SweepCounters) -> Callable[[], None]:
    """Count XLA compilations and persistent-cache hits until the returned function is called."""
    import jax

    lock = threading.Lock()  # events may come from JAX's threads

    def on_duration(event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT:  # fired for a compile *or* a load from the persistent cache
            with lock:
                counters.compiled += 1

    def on_event(event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            with lock:
                counters.cache_hits += 1
                counters.compiled -= 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    def stop() -> None:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)

    return stop
