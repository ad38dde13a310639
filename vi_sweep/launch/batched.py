"""The batched launcher's body: a whole sweep as one compiled program per shape.

The plugin (``hydra_plugins/vi_sweep_launcher``) imports this module
inside ``launch()``, so JAX loads here and never at Hydra start-up. One ``launch`` call:

1. **Compose and validate** every job: a grid job's values without composing it
   (:meth:`vi_sweep.launch.compose.TemplateComposer.plain_task`), any other job through
   ``load_sweep_config`` (from its shape's template where it can). Any :class:`~vi_sweep.launch.config.ConfigError` is one
   line ``vi_sweep: error: ...`` on stderr and exit code 2; a sweep directory that held nothing
   but Hydra's ``multirun.yaml`` is removed again, so a rejected sweep leaves nothing behind.
2. **Resume**: a job whose ``<job dir>/metrics.parquet`` is complete
   (:mod:`vi_sweep.launch.resume`) and records the job's own fields is not recomputed
   and not rewritten; it is returned as COMPLETED.
3. **Plan** (:mod:`vi_sweep.launch.sweep_plan`): deduplicate, group by
   :class:`~vi_sweep.core.trainer.TrainSpec`, cut groups into chunks within ``max_batch_floats``,
   padded to a multiple of the device count. With ``exact_baselines``, the exact twins the
   report needs and the sweep lacks (:mod:`vi_sweep.store.baselines`) are planned after the jobs.
4. **Run** each chunk as ``jitted_batch_train(spec)(hyper)`` with the batch axis sharded over
   the local devices (:mod:`vi_sweep.launch.devices`). Dispatch is asynchronous: chunks k+1 and k+2 are compiled and started
   before the rows of chunk k are written, so writing overlaps computing.
5. **Write** each job as Hydra's ``run_job`` would (:func:`vi_sweep.launch.job_dirs.write_job_dir`: job
   dir, ``.hydra/``, job log, callbacks; the same files byte for byte, at a third of the cost)
   with a task that only calls :func:`vi_sweep.launch.task.finish_job` on the job's slice, so a batched
   job's files are those of the same job run alone. A diverged run is data
   (``status = diverged``), never a failed job. Baselines go to ``<sweep dir>/baselines/``; one
   that cannot be written is left to the report (one warning line).

At the end one line: ``vi_sweep: N jobs (M computed, K resumed) in G groups, C compiles, W s``,
followed by ``; and B exact baselines for the report`` when there were any.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from vi_sweep.analysis.optimized_metric import TailSummary
from vi_sweep.launch.cluster import devices_per_task
from vi_sweep.launch.compose import TemplateComposer
from vi_sweep.launch.config import ConfigError
from vi_sweep.launch.errors import CONFIG_ERRORS, describe
from vi_sweep.launch.history import abandon_if_fresh
from vi_sweep.launch.devices import CompileCounts, count_compiles, device_memory_bytes, init_jax, quiet_jax_logs, start_batch, to_numpy
from vi_sweep.launch.job_dirs import write_job_dir
from vi_sweep.launch.job_values import ValueRule, assign_values, rule_of, run_summary
from vi_sweep.launch.interrupts import SAME_COMMAND, interrupt_noted, interrupts_held, interrupts_noted, raise_if_interrupted, rerun, set_rerun
from vi_sweep.launch.options import BatchedLauncherConf, LauncherOptionError
from vi_sweep.launch.plain import to_plain
from vi_sweep.launch.sweep_checks import is_basic_sweeper
from vi_sweep.launch.resume import Placement, SweepContents, describe_unreadable, resumed_return, run_key, scan_sweep
from vi_sweep.launch.sweep_plan import BYTES_PER_FLOAT, SizeError, bytes_per_run, check_fits, compiled_shape, plan_sweep
from vi_sweep.launch.task import finish_job, job_fields, job_scenario
from vi_sweep.store.metrics import compact_table, write_compact
from vi_sweep.store.params import write_compact_params

log = logging.getLogger(__name__)

@dataclass
class SweepJob:
    """One job of the sweep. Its composed config is not kept (about 100 kB each): it is composed
    again, from a template, when the job is written."""

    num: int  # hydra.job.num (a new number if its own directory held another config's run)
    overrides: Sequence[str]
    fields: dict[str, Any]
    task_values: dict[str, Any]  # its task config, resolved (a few hundred bytes: kept, not composed again for it)
    scenario: str
    out_dir: Path
    resumed: Optional[JobReturn] = None  # set if its run is already finished in the sweep directory
    relocated_from: Optional[Path] = None  # its own directory, if that held another config's run
    rule: ValueRule = ValueRule()  # what it returns to the sweeper (optimized_metric, nonfinite_value)


@dataclass
class SweepTally:
    """The batches of one sweep launched so far, and the runs they wrote: a Ctrl-C in a later batch
    (Optuna's trials, ``hydra.sweeper.max_batch_size``) counts the sweep's runs, not the batch's."""

    batches: int = 0
    runs_written: set = field(default_factory=set)  # their directories: a run a later batch asks for again is resumed from its own, not counted twice


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


@interrupts_noted()
@_gc_frozen()
def launch(
    *,
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    options: BatchedLauncherConf,
    compiled_shapes: Optional[dict] = None,
    tally: Optional[SweepTally] = None,
) -> list[JobReturn]:
    """Run one batch of a Hydra sweep; return one :class:`JobReturn` per job, in order, each
    holding the job's value for the sweeper (:mod:`vi_sweep.launch.job_values`).

    ``compiled_shapes``: the call shape each program was compiled for by earlier batches of this
    sweep (a searching sweeper hands its trials over batch by batch), updated here: a batch that
    fits in it is padded up to it, so the search compiles each program once.
    ``tally``: the earlier batches of this sweep and the runs they wrote, updated here.
    """
    compiled_shapes = {} if compiled_shapes is None else compiled_shapes
    tally = SweepTally() if tally is None else tally
    raise_if_interrupted()  # a Ctrl-C that Hydra's own code swallowed on the way here (its get_mode catches everything)
    started = time.perf_counter()
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))
    set_rerun(rerun_command(config, sweep_dir))  # for every line a Ctrl-C leaves with
    try:
        options.check()
        contents = scan_sweep(sweep_dir)
        jobs = compose_jobs(hydra_context, config, job_overrides, initial_job_idx, contents, resume=options.resume, compact=options.layout == "compact")
    except CONFIG_ERRORS as err:  # a job's config: Hydra could not compose it, or the trainer cannot run it
        raise_if_interrupted(err)  # not the config: a Ctrl-C that OmegaConf, half-way through a change, turned into this
        _fail_before_writing(sweep_dir, err)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Launching %d jobs in batches (vi_sweep batched launcher); composed in %.1f s", len(jobs), time.perf_counter() - started)
    claimed = {job.out_dir for job in jobs if job.resumed is None}
    for line in describe_unreadable(contents.unreadable, sweep_dir, recomputed=claimed):
        print(line, file=sys.stderr, flush=True)

    returns = {position: job.resumed for position, job in enumerate(jobs) if job.resumed is not None}
    todo = [position for position in range(len(jobs)) if position not in returns]

    # Hydra's basic sweeper runs a grid and never reads a job's value: the exact twins a value
    # needs are trained for a sweeper that does (a search), or when asked for (exact_baselines).
    values_read = not is_basic_sweeper(config)
    twins: list[dict[str, Any]] = []
    if options.exact_baselines or (values_read and any(job.rule.needs_exact_twin for job in jobs)):
        from vi_sweep.store.baselines import missing_twins

        twins = missing_twins(sweep_dir, [job.fields for job in jobs])
    counters, groups = CompileCounts(), 0
    twin_summaries: dict[str, TailSummary] = {}
    # Positions whose run file is complete on disk: a Ctrl-C can land after a job's parquet is
    # written and before the rest of its directory (log, callbacks) is, and that run is there to resume.
    landed: set[int] = set(returns)
    if todo or twins:
        try:
            counters, groups = _compute_and_write(
                hydra_context, config, jobs, todo, twins, returns, options, twin_summaries=twin_summaries, compiled_shapes=compiled_shapes, landed=landed
            )
        except (LauncherOptionError, SizeError) as err:  # raised before any job is written
            _fail_before_writing(sweep_dir, err)
        except BaseException as err:
            if isinstance(err, SystemExit):  # its own line is out already (the SLURM engine's Ctrl-C)
                raise
            done = landed | set(returns)
            here = f"{len(done)} of {len(jobs)}"
            written = f"{here} runs written" if not tally.batches else f"{len(tally.runs_written | {jobs[p].out_dir for p in done})} runs written ({here} in batch {tally.batches + 1})"
            written += f"; {rerun()} to resume"
            # A Ctrl-C that some cleanup on its way out turned into another exception is one all the same.
            if isinstance(err, KeyboardInterrupt) or interrupt_noted():
                _stop(130, f"interrupted: {written}")
            if isinstance(err, OSError):  # a full disk, a directory that went read-only: the atomic writers left no partial file
                _stop(1, f"cannot write {err.filename or sweep_dir}: {err.strerror or err}; {written}")
            raise
    values = assign_values(
        [(job.rule, job.fields) for job in jobs],
        [returns[p].return_value for p in range(len(jobs))],
        twin_summaries,
        sweep_dir,
        train_missing=values_read or options.exact_baselines,
    )
    for position, value in enumerate(values):
        returns[position].return_value = value
    tally.batches += 1
    tally.runs_written.update(jobs[p].out_dir for p in landed)
    elapsed = time.perf_counter() - started
    relocated = sum(job.relocated_from is not None for job in jobs)
    moved = f"; {relocated} computed under new job numbers (their own held other configs' runs)" if relocated else ""
    also = f"; and {len(twins)} exact baselines for the report" if twins else ""
    print(
        f"vi_sweep: {len(jobs)} jobs ({len(todo)} computed, {len(jobs) - len(todo)} resumed) in {groups} groups, "
        f"{counters.compiled} compiles, {elapsed:.1f} s{moved}{also}",
        flush=True,
    )
    return [returns[position] for position in range(len(jobs))]


def rerun_command(config: DictConfig, sweep_dir: Path) -> str:
    """How to run this sweep again: the same command, or -- if its sweep directory is named by the
    time (the default, ``${now:...}``), which a rerun would name anew -- with this directory given."""
    unresolved = OmegaConf.to_container(config.hydra.sweep, resolve=False)
    if "${now:" in str(unresolved.get("dir", "")):  # type: ignore[union-attr]
        return f"{SAME_COMMAND} with hydra.sweep.dir={shlex.quote(str(sweep_dir))}"
    return SAME_COMMAND


def _stop(code: int, message: str) -> NoReturn:
    """One line on stderr, then exit with ``code`` (the runs written so far stay: they are whole files)."""
    print(f"vi_sweep: {'error: ' if code == 1 else ''}{message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _fail_before_writing(sweep_dir: Path, err: Exception) -> NoReturn:
    """One line, exit 2, and no sweep directory left behind that holds no job."""
    abandon_if_fresh(sweep_dir)
    print(f"vi_sweep: error: {describe(err) or err}", file=sys.stderr, flush=True)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------
# Composition, validation, resume
# ---------------------------------------------------------------------------------------------


def compose_jobs(
    hydra_context: HydraContext,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    contents: SweepContents,
    *,
    resume: bool,
    compact: bool = False,
) -> list[SweepJob]:
    """Compose and validate every job (raises :class:`ConfigError` on the first invalid one), and
    place it (:mod:`vi_sweep.launch.resume`).

    With ``resume``, a job whose run is already finished somewhere in the sweep directory
    (``contents``) gets its COMPLETED :class:`JobReturn` here, while its config is at hand. Any
    other job gets its own job directory, or a new job number if that directory holds a finished
    run of another config. With ``compact`` (``hydra.launcher.layout=compact``) a job has no
    directory of its own: its number names it, as ``<sweep dir>/<num>`` would.
    """
    numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
    placement = Placement(contents)
    loader = hydra_context.config_loader
    composer = loader if isinstance(loader, TemplateComposer) else None
    master_sweep = _unresolved(config.hydra.sweep)
    sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))
    jobs = []
    for num, overrides in zip(numbers, job_overrides):
        try:
            # Most jobs of a grid: their values without a config (TemplateComposer.plain_task).
            plain = composer.plain_task(config, list(overrides)) if composer is not None else None
            if plain is not None and _numbered_under(plain.hydra["sweep"], master_sweep, compact):
                cfg, task_values, out_dir = None, plain.values, sweep_dir / str(num)
                scenario = str(plain.hydra["runtime"]["choices"].get("scenario") or "none")
            else:
                cfg = compose_job(hydra_context, config, overrides, num, scratch=True)  # read here, then dropped
                task_values, out_dir = _task_values_and_dir(cfg, compact)
                scenario = job_scenario(cfg)
            fields = job_fields(task_values)
        except CONFIG_ERRORS as err:
            raise ConfigError(f"{describe(err)} (job {num}: {' '.join(filter_overrides(overrides))})") from None
        job = SweepJob(num, list(overrides), fields, task_values, scenario, out_dir, rule=rule_of(task_values))
        key = run_key(fields, scenario)
        found = contents.finished.get(key) if resume else None
        if found is not None:
            job.out_dir = found.out_dir
            job.resumed = resumed_return(cfg if cfg is not None else compose_job(hydra_context, config, overrides, num, scratch=True), found.summary)
        elif not placement.is_free(out_dir, key):
            job.num = placement.next_number()
            job.task_values, job.out_dir = _task_values_and_dir(compose_job(hydra_context, config, overrides, job.num, scratch=True), compact)
            if not placement.is_free(job.out_dir, key):
                raise ConfigError(
                    f"job {num} ({' '.join(filter_overrides(overrides))}): its directory {out_dir} holds a finished run of "
                    f"another config, and hydra.sweep.subdir gives every job number that directory; choose a new hydra.sweep.dir"
                )
            job.relocated_from = out_dir
        placement.claim(job.out_dir)
        jobs.append(job)
    return jobs


def _unresolved(node: DictConfig) -> dict:
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


# What a job's directory depends on beyond its number: a sweep dir or subdir that reads them is
# resolved per job, from its composed config.
_PER_JOB = ("hydra.job", "hydra:job", "hydra.overrides", "hydra:overrides", "hydra.runtime", "hydra:runtime")


def _numbered_under(job_sweep: dict, master_sweep: dict, compact: bool) -> bool:
    """Whether a job with this (unresolved) ``hydra.sweep`` has its directory at ``<the master's sweep
    dir>/<job number>``: the same sweep dir as the master, resolving to the same path (it reads
    nothing of the job), and the compact layout or Hydra's default subdir ``${hydra.job.num}``."""
    same_dir = job_sweep["dir"] == master_sweep["dir"] and not any(name in str(job_sweep["dir"]) for name in _PER_JOB)
    return same_dir and (compact or job_sweep["subdir"] == "${hydra.job.num}")


def _task_values_and_dir(cfg: DictConfig, compact: bool = False) -> tuple[dict[str, Any], Path]:
    """The job's task config as plain values, and its job directory (``hydra.sweep.dir``/``subdir``,
    absolute; ``hydra.sweep.dir``/<job number> for the compact layout)."""
    with _as_current_hydra_config(cfg):  # interpolations such as ${hydra:job.num} read it
        task_values = {key: to_plain(cfg[key]) for key in cfg if key != "hydra"}
        subdir = str(cfg.hydra.job.num) if compact else str(cfg.hydra.sweep.subdir)
        out_dir = Path(os.path.abspath(os.path.join(str(cfg.hydra.sweep.dir), subdir)))
    return task_values, out_dir


def compose_job(
    hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str], num: int, *, scratch: bool = False
) -> DictConfig:
    """The job's full config, as Hydra's basic launcher composes it.

    With ``scratch``, a config to read and drop before the next call (see
    :meth:`vi_sweep.launch.compose.TemplateComposer.scratch_sweep_config`).
    """
    loader = hydra_context.config_loader
    compose = loader.scratch_sweep_config if scratch and isinstance(loader, TemplateComposer) else loader.load_sweep_config
    cfg = compose(config, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = num
        cfg.hydra.job.num = num
    return cfg


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


# ---------------------------------------------------------------------------------------------
# Computing
# ---------------------------------------------------------------------------------------------


def _compute_and_write(
    hydra_context: HydraContext,
    config: DictConfig,
    jobs: list[SweepJob],
    todo: list[int],
    twins: list[dict[str, Any]],
    returns: dict[int, JobReturn],
    options: BatchedLauncherConf,
    *,
    twin_summaries: dict[str, TailSummary],
    compiled_shapes: dict,
    landed: set[int],
) -> tuple[CompileCounts, int]:
    """Plan the jobs in ``todo`` and the exact baselines ``twins``, run every chunk, write every
    job (filling ``returns``, and ``landed`` with each position as soon as its run file is
    complete) and every baseline (``vi_sweep.store.baselines``; their summaries into
    ``twin_summaries``, by baseline key)."""
    quiet_jax_logs()
    cwd = Path(str(config.hydra.runtime.cwd))
    on_submitit = options.engine == "submitit"
    # With submitit this process only plans and writes: it never starts a JAX backend (it may be
    # a login node), and each submitted job pads its chunk for its own devices.
    devices = [] if on_submitit else init_jax(
        cpu_devices=options.cpu_devices,
        cpu_vector_width=options.cpu_vector_width,
        shard=options.shard,
        compilation_cache_dir=options.compilation_cache_dir,
        cwd=cwd,
    )
    from vi_sweep.core.trainer import split_fields
    from vi_sweep.store.baselines import baseline_key, baseline_table, cache_file, write_baseline
    from vi_sweep.store.optima import prepare_optima

    sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))  # jobs may chdir; this must not move
    # Regression targets: q* (float64, once per posterior) from the sweep's cache or solved and cached there.
    prepare_optima(sweep_dir, [jobs[position].fields for position in todo] + twins)
    # The twins come last: planned as jobs len(todo), len(todo) + 1, ..., their group after the jobs' groups,
    # so they never delay the first call (their program is traced while the jobs train).
    split = [split_fields(jobs[position].fields) for position in todo] + [split_fields(twin) for twin in twins]
    available = _memory_for_a_batch(options, devices)
    # A submitit task's devices are not known here: the CPU default unless it asks for GPUs.
    platform = devices[0].platform if devices else ("gpu" if options.gpus_per_node else "cpu")
    budget = options.batch_floats(platform)
    if available is not None:
        _check_one_run_fits(jobs, todo, split, available)
        # Every chunk in flight holds its working set at once: together they must fit too.
        budget = min(budget, available // (BYTES_PER_FLOAT * (CHUNKS_IN_FLIGHT + 1)))
    plan = plan_sweep(
        split,
        max_batch_floats=budget,
        max_runs_per_call=options.max_runs_per_call,
        multiple_of=devices_per_task(options) if on_submitit else len(devices),
        compiled_shapes=compiled_shapes,
    )
    for chunk in plan.chunks:
        streams, runs = compiled_shapes.get(chunk.spec, (0, 0))
        if chunk.size > streams * runs:  # the largest call compiled for this spec is the one later batches pad up to
            compiled_shapes[chunk.spec] = compiled_shape(chunk)
    where = f"submitit ({options.submitit_cluster}) jobs" if on_submitit else f"calls on {len(devices)} device(s)"
    log.info(
        "%d jobs -> %d distinct runs in %d groups, %d %s%s", len(todo), len(plan.computations), len(plan.groups), len(plan.chunks), where,
        f" (with {len(twins)} exact baselines)" if twins else "",
    )
    last_chunk_of_group = {chunk.spec: index for index, chunk in enumerate(plan.chunks)}
    counters = CompileCounts()
    bar = _progress_bar(len(todo), len(plan.groups), options.progress)
    unwritten: list[str] = []  # exact baselines that could not be written

    compact = options.layout == "compact"

    def write_chunk(index: int, outputs) -> None:
        chunk = plan.chunks[index]
        log.debug("call %d/%d: waiting for %d runs", index + 1, len(plan.chunks), chunk.size)
        in_one_file: list[tuple[int, dict, int]] = []  # (position, rows, diverged_at) of the compact layout
        for slot, rows, diverged_at in _chunk_rows(chunk, *outputs):
            for job_in_plan in plan.computations[chunk.computations[slot]].jobs:
                if job_in_plan >= len(todo):  # an exact baseline, not a job
                    twin = twins[job_in_plan - len(todo)]
                    twin_summaries[baseline_key(twin)] = run_summary(rows, twin, diverged_at)
                    path = cache_file(sweep_dir, baseline_key(twin))
                    try:
                        write_baseline(path, baseline_table(rows, twin, diverged_at), twin)
                    except OSError as err:  # a cache: the report trains what is missing
                        unwritten.append(f"{path.parent}: {err.strerror or err}")
                    continue
                position = todo[job_in_plan]
                if compact:
                    in_one_file.append((position, rows, diverged_at))
                    continue
                returns[position] = write_job(hydra_context, config, jobs[position], rows, diverged_at, on_landed=functools.partial(landed.add, position))
                bar.update(1)
        if in_one_file:
            returns.update(write_compact_jobs(sweep_dir, jobs, in_one_file, on_landed=landed.update))
            bar.update(len(in_one_file))
        # Each job configures its own logging (as run_job does) and leaves it in place; give the
        # launcher its own back (as the basic launcher does), so its lines do not land in that job's log.
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        log.debug("call %d/%d: %d jobs written", index + 1, len(plan.chunks), chunk.real)
        if last_chunk_of_group[chunk.spec] == index:
            bar.set_postfix_str(f"groups {plan.groups.index(chunk.spec) + 1}/{len(plan.groups)}")

    # Chunks of exact baselines only run on one device, here and in a submitit task alike.
    baselines_only = frozenset(
        index
        for index, chunk in enumerate(plan.chunks)
        if all(job >= len(todo) for position in chunk.computations for job in plan.computations[position].jobs)
    )
    try:
        if on_submitit:
            from vi_sweep.launch.cluster import run_on_submitit

            counters.compiled = run_on_submitit(plan, options, cwd, write_chunk, sweep_dir=sweep_dir, one_device=baselines_only)
        else:
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


def _memory_for_a_batch(options: BatchedLauncherConf, devices: Sequence[Any]) -> Optional[int]:
    """Bytes one compiled call may use: a submitit task's ``mem_gb``, else the device's (or the host's) memory."""
    if options.engine == "submitit":
        return None if options.mem_gb is None else int(options.mem_gb * 2**30)
    return device_memory_bytes(devices)


def _check_one_run_fits(jobs: list[SweepJob], todo: list[int], split: list, available: int) -> None:
    """Raise :class:`SizeError` naming the largest run if a single run cannot fit in ``available`` bytes."""
    if not split:
        return
    largest = max(range(len(split)), key=lambda i: bytes_per_run(split[i][0]))
    spec = split[largest][0]
    if largest < len(todo):
        job = jobs[todo[largest]]
        name = f"job {job.num} ({' '.join(filter_overrides(job.overrides)) or 'the primary config'})"
    else:
        name = f"an exact baseline (d={spec.d}, steps={spec.steps})"
    check_fits(spec, available, name)


# Chunks dispatched but not yet written. XLA computes them in order on its own threads while this
# thread writes job directories; with two queued behind the one being written, a chunk whose jobs
# take longer to write than the next chunk takes to compute does not leave the devices idle.
CHUNKS_IN_FLIGHT = 3


def _run_here(plan, devices, counters: CompileCounts, write_chunk: Callable[[int, tuple], None], *, small: frozenset = frozenset()) -> None:
    """``engine=local``: every chunk in this process, up to :data:`CHUNKS_IN_FLIGHT` dispatched
    ahead of the writing.

    Chunks in ``small`` (the exact baselines: a few runs without noise) have their own bound of
    one in flight, so they start with the jobs' last chunk instead of after the writing of the
    first, and run on one device: a call sharded over several CPU devices does not return until
    the devices' previous call is done (a one-device call returns at once and runs after it),
    and this thread has jobs to write meanwhile."""
    stop_counting = count_compiles(counters)
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


def dispatch(chunk, plan, devices) -> tuple:
    """Start one chunk (compiling on first use); returns ``(state, rows)`` futures."""
    traced = [plan.computations[position].traced for position in chunk.computations]
    return start_batch(chunk.spec, traced, devices, chunk.runs_per_stream)


def _chunk_rows(chunk, diverged_at, columns):
    """Yield ``(slot, rows, diverged_at)`` for a chunk's real (not padding) runs from its numpy results."""
    for slot, padding in enumerate(chunk.padding):
        if not padding:
            yield slot, {name: values[slot] for name, values in columns.items()}, int(diverged_at[slot])


def write_compact_jobs(
    sweep_dir: Path, jobs: list[SweepJob], entries: list[tuple[int, dict, int]], on_landed: Callable[[list[int]], Any] = lambda positions: None
) -> dict[int, JobReturn]:
    """``hydra.launcher.layout=compact``: the runs of one chunk in one file (``<sweep dir>/runs/``),
    with no job directories, no per-job logs and no per-job callbacks; a COMPLETED
    :class:`JobReturn` per job (its overrides and summary) for the sweeper."""
    table = compact_table([(jobs[p].num, rows, jobs[p].fields, diverged_at, jobs[p].scenario) for p, rows, diverged_at in entries])
    listed = [{"job": jobs[p].num, "fields": jobs[p].fields, "scenario": jobs[p].scenario, "overrides": list(jobs[p].overrides)} for p, _, _ in entries]
    # First: a complete jobs file always has its runs' parameters (to_numpy returns them with every chunk's rows).
    write_compact_params(sweep_dir, [(jobs[p].num, rows["final_mu"], rows["final_log_sigma"]) for p, rows, _ in entries])
    with interrupts_held():  # counted as written the moment the file is in place, never one without the other
        write_compact(sweep_dir, table, listed)
        on_landed([p for p, _, _ in entries])
    returns = {}
    for position, rows, diverged_at in entries:
        ret = JobReturn(overrides=list(jobs[position].overrides), working_dir=os.getcwd(), task_name="vi_sweep", status=JobStatus.COMPLETED)
        ret.return_value = run_summary(rows, jobs[position].fields, diverged_at)  # the job's value replaces it (assign_values)
        returns[position] = ret
    return returns


def write_job(
    hydra_context: HydraContext, config: DictConfig, job: SweepJob, rows: dict, diverged_at: int, on_landed: Callable[[], Any] = lambda: None
) -> JobReturn:
    """Write one job's directory as Hydra's ``run_job`` would (:func:`vi_sweep.launch.job_dirs.write_job_dir`,
    its config composed again), with a task that writes its precomputed rows.

    A file that cannot be written (a full disk) stops the sweep: ``run_job`` would record it as a
    failed job and go on failing job after job, so the :class:`OSError` is raised here instead.
    """
    failed_write: list[OSError] = []

    def write_rows(_: None) -> dict[str, Any]:
        _quiet_console()
        try:
            # on_landed as soon as the run file is complete (a rerun resumes it, whatever happens
            # next): a Ctrl-C during the job's summary must count it as written. The job's values
            # are at hand (job.task_values): no task config is made for it.
            return finish_job(
                job.out_dir, None, job.fields, job.scenario, rows, diverged_at, echo=False, task_values=job.task_values, on_written=on_landed
            )
        except OSError as err:
            failed_write.append(err)
            raise

    # The job's files need its config only while they are written. When no callback keeps the
    # config it is given (vi_sweep's own say so: keeps_job_config = False), the job is written from
    # one config reused for every job of its shape (composed into in ~1.1 ms, against ~2.6 ms for
    # a config of its own), and its JobReturn gets a config of its own only if one is read.
    own_config = functools.partial(compose_job, hydra_context, config, job.overrides, job.num)
    if callbacks_keep_no_config(hydra_context.callbacks):
        cfg = compose_job(hydra_context, config, job.overrides, job.num, scratch=True)
        ret = write_job_dir(hydra_context, cfg, job.out_dir, write_rows, task_reads_config=False, own_config=own_config)
    else:
        ret = write_job_dir(hydra_context, own_config(), job.out_dir, write_rows, task_reads_config=False)
    if failed_write:
        raise failed_write[0]
    return ret


def callbacks_keep_no_config(callbacks: Any) -> bool:
    """Whether every one of Hydra's ``callbacks`` declares, on its own class, that it neither keeps
    nor changes the config its ``on_job_*`` hooks receive (``keeps_job_config = False``, as
    :mod:`vi_sweep.launch.callbacks`' and the MLflow tracker do). A user's callback, which says
    nothing, may keep it; so may a subclass of one of ours, which inherits the attribute."""
    return all(type(callback).__dict__.get("keeps_job_config", True) is False for callback in getattr(callbacks, "callbacks", [None]))


def _quiet_console() -> None:
    """Keep this job's INFO lines out of the console (thousands of them would bury the progress bar
    and the summary); its ``<job dir>/<job name>.log`` still gets every line. Each job configures
    its logging afresh (as ``run_job`` does), so this lasts for one job only."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


# ---------------------------------------------------------------------------------------------
# Progress
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
