"""``hydra.launcher.engine=submitit``: each compiled chunk of a batched sweep is one submitit task.

Hydra's ``submitit_slurm`` launcher makes one SLURM task per Hydra job; a BBVI grid is thousands
of tiny jobs, each of which would pay a process start, a JAX import and a compile. The batched
launcher already cuts a sweep into chunks of runs that share one compiled program
(:mod:`vi_sweep.launch.sweep_plan`); with ``engine=submitit`` it hands each chunk to
``submitit.AutoExecutor`` as one task (one SLURM array task), waits, and writes every job dir
itself, exactly as ``engine=local`` does. So a task holds at most ``max_runs_per_call`` runs and
``max_batch_floats`` floats of working set: those two knobs size the tasks.

A submitted task receives plain picklable data only -- the spec's field values as a tuple and
the list of traced dicts -- imports the trainer itself and returns numpy arrays
(:func:`train_chunk`, which runs the chunk with :mod:`vi_sweep.launch.devices` as the local
engine does, on as many devices as the plan assumed, so the bits are the local engine's). The
launcher process never initialises a JAX backend in this mode, so it can sit on a login node
(:func:`run_on_submitit`), and it survives its own death: every task is recorded in the sweep dir
before the launcher waits (:mod:`vi_sweep.launch.task_ledger`), and a rerun collects the tasks
still queued, running or finished instead of submitting their runs again.

Waiting asks SLURM itself (:mod:`vi_sweep.launch.slurm_queue`): a task that ended without a
result is a failure named with SLURM's reason, whether or not accounting (``sacct``) works, and a
task SLURM says can never start (Reason=PartitionConfig, ...) ends the sweep in one line.

This module is imported by the worker processes: no Hydra, and JAX (and submitit) only inside functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from vi_sweep.host import available_cores
from vi_sweep.launch.options import BatchedLauncherConf, LauncherOptionError
from vi_sweep.launch.slurm_queue import NEVER_START_REASONS, UNKNOWN, TaskState, cancel, task_states
from vi_sweep.launch.interrupts import interrupts_held, rerun
from vi_sweep.launch.task_ledger import LEDGER_FILE, RecordedTask, computation_id, record_tasks, recorded_tasks

log = logging.getLogger(__name__)

# Several JAX processes on one GPU node: by default each preallocates 75% of a GPU's memory, so a
# second one on the same GPU fails. Allocate on demand instead (jax.readthedocs.io, "GPU memory
# allocation"). setdefault: a value the user exported (or XLA_PYTHON_CLIENT_MEM_FRACTION) wins.
SHARED_NODE_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}

POLL_SECONDS = 1.0  # how often the result files are looked at
MAX_QUERY_SECONDS = 30.0  # the longest gap between two squeue calls (they start at 1 s and grow)
# After SLURM says a task ended, how long its result file may take to show up (a shared
# filesystem's attribute cache): a COMPLETED task must have one, others rarely do.
RESULT_GRACE_SECONDS = {"COMPLETED": 15.0}
DEFAULT_RESULT_GRACE_SECONDS = 2.0


# ---------------------------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------------------------


def executor_parameters(
    *,
    cluster: str,
    timeout_min: int,
    cpus_per_task: Optional[int],
    gpus_per_node: Optional[int],
    mem_gb: Optional[float],
    partition: Optional[str],
    array_parallelism: int,
    slurm_additional_parameters: Mapping[str, Any],
    slurm_setup: Sequence[str],
) -> dict[str, Any]:
    """Keyword arguments for ``AutoExecutor.update_parameters`` (None means "not set").

    Shared keys (``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``) are translated by
    submitit for every cluster; ``slurm_*`` keys only reach SLURM. The SLURM job script also
    exports :data:`SHARED_NODE_ENV` so that anything the user runs in ``slurm_setup`` sees it.
    """
    params: dict[str, Any] = {
        "name": "vi_sweep",
        "timeout_min": timeout_min,
        "cpus_per_task": cpus_per_task,
        "gpus_per_node": gpus_per_node,
        "mem_gb": mem_gb,
    }
    if cluster in ("slurm", "auto"):
        exports = [f"export {name}=${{{name}:-{value}}}" for name, value in SHARED_NODE_ENV.items()]
        params.update(
            slurm_partition=partition,
            slurm_array_parallelism=array_parallelism,
            slurm_additional_parameters=dict(slurm_additional_parameters) or None,
            slurm_setup=exports + list(slurm_setup),
        )
    return {key: value for key, value in params.items() if value is not None}


def make_executor(folder: str, cluster: str, parameters: Mapping[str, Any]):
    """A ``submitit.AutoExecutor`` writing its logs and pickles under ``folder`` (``%j``: job id)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=None if cluster == "auto" else cluster)
    executor.update_parameters(**parameters)
    return executor


def make_options_executor(options: BatchedLauncherConf):
    """The submitit executor the options describe."""
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


def describe_request(options: BatchedLauncherConf) -> str:
    """The resources a task asks SLURM for, as ``hydra.launcher`` keys (for error lines)."""
    keys = ("partition", "timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb")
    asked = [f"{key}={getattr(options, key)}" for key in keys if getattr(options, key) is not None]
    asked += [f"slurm_additional_parameters.{key}={value}" for key, value in options.slurm_additional_parameters.items()]
    return "hydra.launcher: " + ", ".join(asked)


# ---------------------------------------------------------------------------------------------
# Inside a task
# ---------------------------------------------------------------------------------------------


def devices_per_task(options: BatchedLauncherConf) -> int:
    """The devices a task shards a chunk over, as the launcher plans chunks for them.

    The explicit ``cpu_devices`` or ``gpus_per_node``, else the CPUs asked per task (a task uses
    the CPUs SLURM gives it: :func:`allotted_cpus`), else 1. A chunk computed on as many devices
    as a local sweep uses gives the local sweep's bits.
    """
    if not options.shard:
        return 1
    return options.gpus_per_node or options.cpu_devices or options.cpus_per_task or 1


def allotted_cpus() -> Optional[int]:
    """The CPUs SLURM gave this task (``SLURM_CPUS_PER_TASK``, else ``SLURM_CPUS_ON_NODE``), at most
    the cores it may run on; None outside SLURM. Without CPU binding (``TaskPlugin=task/none``)
    a task's affinity is the whole node, which is not its share."""
    given = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    return min(int(given), available_cores()) if given and given.isdigit() else None


def padded(traced: Sequence[Any], multiple: int, runs_per_stream: int = 1) -> list[Any]:
    """``traced`` (streams of ``runs_per_stream`` runs, stream by stream) with its last stream
    repeated until the number of streams is a multiple of ``multiple`` (for sharding)."""
    streams = len(traced) // runs_per_stream
    missing = multiple * math.ceil(streams / multiple) - streams
    return list(traced) + list(traced[-runs_per_stream:]) * missing


def train_chunk(
    spec_values: tuple,
    traced: Sequence[Mapping[str, Any]],
    *,
    runs_per_stream: int = 1,
    cpu_devices: Optional[int] = None,
    cpu_vector_width: Optional[int] = None,
    shard: bool = True,
    one_device: bool = False,
    compilation_cache_dir: Optional[str] = None,
) -> dict[str, Any]:
    """Run one chunk in a submitit task: ``jit(vmap(train))`` over ``traced``; numpy results.

    Parameters
    ----------
    spec_values
        ``tuple(TrainSpec)``: the static fields, rebuilt here into a :class:`~vi_sweep.core.trainer.TrainSpec`.
    traced
        One plain dict of traced values per run (``split_fields``'s second half), stream by
        stream and padded as the plan pads the chunk, so the batch has the local engine's shape.
    runs_per_stream
        The runs of each stream: they share its noise, drawn once.
    cpu_devices, cpu_vector_width, shard, compilation_cache_dir
        As ``hydra.launcher.*``; ``cpu_devices=None`` means the CPUs SLURM allotted (or the cores
        here). The cache dir is absolute (the launcher resolves it), so tasks on a shared
        filesystem reuse each other's compiled programs.
    one_device
        Run on one device, as the local engine runs a chunk of exact baselines.

    Returns
    -------
    dict
        ``diverged_at``: int array ``(n,)``; ``rows``: column name -> array ``(n, logged rows)``;
        ``compiled``: XLA compilations this task did. ``n = len(traced)``: padding for the task's
        devices is added and removed here.
    """
    for name, value in SHARED_NODE_ENV.items():
        os.environ.setdefault(name, value)  # before JAX creates its GPU client
    from vi_sweep.core.trainer import TrainSpec
    from vi_sweep.launch.devices import CompileCounts, count_compiles, init_jax, quiet_jax_logs, start_batch, to_numpy

    quiet_jax_logs()
    devices = init_jax(
        cpu_devices=cpu_devices or allotted_cpus(),
        cpu_vector_width=cpu_vector_width,
        shard=shard,
        compilation_cache_dir=compilation_cache_dir,
        cwd=Path.cwd(),
    )
    if one_device:
        devices = devices[:1]
    counters = CompileCounts()
    stop_counting = count_compiles(counters)
    try:
        spec = TrainSpec(*spec_values)
        diverged_at, rows = to_numpy(start_batch(spec, padded(traced, len(devices), runs_per_stream), devices, runs_per_stream))
    finally:
        stop_counting()
    real = len(traced)
    return {
        "diverged_at": diverged_at[:real],
        "rows": {name: values[:real] for name, values in rows.items()},
        "compiled": counters.compiled,
    }


# ---------------------------------------------------------------------------------------------
# The launcher's side: collect, submit, wait, write
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Task:
    """A task this launch waits for: submitted now, or recorded by an earlier launch of the sweep."""

    job_id: str
    result_file: Path
    log_file: Path
    runs: tuple[str, ...]  # run key of each real slot
    job: Any = None  # the submitit Job, for a task submitted by this launch
    outcome: Optional[dict] = None  # train_chunk's result, once read
    failure: Optional[str] = None  # why it has no result
    ended_at: Optional[float] = None  # when the cluster first said it ended without a result file

    @property
    def settled(self) -> bool:
        return self.outcome is not None or self.failure is not None


class NeverStarts(Exception):
    """SLURM says a pending task can never start (its reason is in :data:`NEVER_START_REASONS`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def bits_settings(options: BatchedLauncherConf) -> dict[str, Any]:
    """The options that decide a task's numbers: a recorded task is collected only if they match."""
    return {
        "cluster": options.submitit_cluster,
        "devices": devices_per_task(options),
        "cpu_devices": options.cpu_devices,
        "cpus_per_task": options.cpus_per_task,
        "cpu_vector_width": options.cpu_vector_width,
        "shard": options.shard,
    }


def run_on_submitit(
    plan,
    options: BatchedLauncherConf,
    cwd: Path,
    write_chunk: Callable[[int, tuple], None],
    *,
    sweep_dir: Path,
    one_device: frozenset = frozenset(),
) -> int:
    """``engine=submitit``: one task per chunk (one job array), each chunk written as soon as its runs are in.

    Runs that tasks of an earlier launch of this sweep (the ledger) have computed, or are still
    computing, are taken from them; only the others are submitted. Chunks in ``one_device`` (the
    exact baselines) run on one device, as locally. Returns the XLA compilations the tasks
    report. A failed task does not stop the others' chunks from being written; afterwards one line
    names it with its reason and the sweep exits 1, so a rerun into the same sweep dir computes
    only what is missing. A request SLURM refuses or can never start is a
    :class:`LauncherOptionError` (one line, exit 2), with what this launch submitted cancelled and
    removed.
    """
    keys = {computation_id(computation.spec, computation.traced): position for position, computation in enumerate(plan.computations)}
    settings = bits_settings(options)
    sources: dict[int, tuple[Task, int]] = {}  # computation position -> (task, slot)
    collected = _collect_recorded(sweep_dir, options.submitit_cluster, settings, keys, sources)

    cache_dir = None
    if options.compilation_cache_dir is not None:
        cache_dir = str(cwd / options.compilation_cache_dir)  # an absolute path stays as it is
    requests = _requests(plan, sources, devices_per_task(options))
    folders = [_first_fixed_folder(options.submitit_folder), Path(sweep_dir) / LEDGER_FILE.parent]
    before = {folder: _entries(folder) for folder in folders}
    submitted: list[Task] = []
    try:
        if requests:
            submitted = _submit(plan, requests, options, cache_dir, one_device, sweep_dir, settings)
            for task, request in zip(submitted, requests):
                for slot, position in enumerate(request.computed):
                    sources.setdefault(position, (task, slot))
        log.info(
            "%d tasks submitted to submitit (%s), %d collected from an earlier launch; logs in %s",
            len(submitted), options.submitit_cluster, len(collected), options.submitit_folder,
        )
        tasks = list({id(task): task for task, _ in sources.values()}.values())
        failed = _wait_and_write(plan, sources, tasks, options, write_chunk)
    except KeyboardInterrupt:  # SLURM tasks are recorded: they go on, and a rerun collects them
        if options.submitit_cluster != "slurm":  # local tasks got the same Ctrl-C
            raise
        after_bar = "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
        print(f"{after_bar}vi_sweep: interrupted; submitted tasks keep running: {rerun()} to collect them", file=sys.stderr, flush=True)
        sys.exit(130)
    except NeverStarts as never:
        cancel([task.job_id for task in submitted] + [task.job_id for task in collected if task.outcome is None])
        for folder in folders:
            _remove_new_entries(folder, before[folder])
        explained = NEVER_START_REASONS[never.reason]
        raise LauncherOptionError(f"SLURM can never start the tasks ({describe_request(options)}): Reason={never.reason}, {explained}") from None
    if failed:
        kind = "SLURM" if options.submitit_cluster == "slurm" else "submitit"
        named = "; ".join(f"task {task.job_id}: {task.failure}" for task in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        print(
            f"vi_sweep: error: {len(failed)} of {len(tasks)} {kind} tasks failed ({named}); the other tasks' jobs are written; "
            f"rerun into the same sweep dir to compute what is missing (logs in {_first_fixed_folder(options.submitit_folder)})",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    return sum(int(task.outcome["compiled"]) for task in tasks if task.outcome is not None)


def _collect_recorded(sweep_dir: Path, cluster: str, settings: dict, keys: Mapping[str, int], sources: dict) -> list[Task]:
    """Tasks an earlier launch recorded that hold runs this plan needs and will have a result: finished
    with one, or (on SLURM) still pending or running. Fills ``sources``, finished tasks first."""
    candidates = [
        Task(record.job_id, Path(record.result_file), Path(record.log_file), record.runs)
        for record in recorded_tasks(sweep_dir)
        if record.settings == settings and any(key in keys for key in record.runs)
    ]
    unfinished = [task for task in candidates if not _read_result(task)]
    live = []
    if cluster == "slurm" and unfinished:
        # A task that SLURM no longer calls live may have written its result meanwhile.
        states = task_states([task.job_id for task in unfinished])
        live = [task for task in unfinished if task.job_id in states and (states[task.job_id].live or _read_result(task))]
    finished = [task for task in candidates if task.outcome is not None]
    used = []
    for task in finished + [task for task in live if not task.settled]:
        slots = [(slot, keys[key]) for slot, key in enumerate(task.runs) if key in keys and keys[key] not in sources]
        sources.update({position: (task, slot) for slot, position in slots})
        if slots:
            used.append(task)
    return used


class Request(NamedTuple):
    """One task to submit: the chunk it serves, the positions it computes (stream by stream, padded) and its layout."""

    chunk: int
    computed: list[int]
    runs_per_stream: int


def _requests(plan, sources: Mapping[int, Any], devices: int) -> list[Request]:
    """What to submit: a :class:`Request` for every chunk with runs no collected task holds. A
    whole chunk goes as the plan laid it out (the local engine's batch); what is left of a chunk
    goes one run per stream, padded to a multiple of the task's devices."""
    requests = []
    for index, chunk in enumerate(plan.chunks):
        real = chunk.real_computations
        missing = [position for position in real if position not in sources]
        if missing == real:
            requests.append(Request(index, list(chunk.computations), chunk.runs_per_stream))
        elif missing:
            requests.append(Request(index, padded(missing, devices), 1))
    return requests


def _submit(plan, requests, options: BatchedLauncherConf, cache_dir, one_device: frozenset, sweep_dir: Path, settings: dict) -> list[Task]:
    """Submit one task per request (one job array) and record them in the ledger before returning."""
    from submitit.core.utils import FailedJobError

    try:
        executor = make_options_executor(options)
    except (RuntimeError, ValueError) as err:  # e.g. submitit_cluster=slurm where there is no srun
        message = str(err).strip().splitlines()[0]
        raise LauncherOptionError(f"hydra.launcher.submitit_cluster={options.submitit_cluster}: {message}") from None
    fixed_folder = _first_fixed_folder(options.submitit_folder)
    before = _entries(fixed_folder)
    # Held from submission to the ledger: a Ctrl-C lands after the submitted tasks are recorded,
    # so a rerun collects them instead of submitting them again.
    with interrupts_held():
        try:
            # submitit prints sbatch's complaint to stderr before raising it: it goes into our one line instead.
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [
                    executor.submit(
                        train_chunk,
                        tuple(plan.chunks[request.chunk].spec),
                        [dict(plan.computations[position].traced) for position in request.computed],
                        runs_per_stream=request.runs_per_stream,
                        cpu_devices=options.cpu_devices,
                        cpu_vector_width=options.cpu_vector_width,
                        shard=options.shard,
                        one_device=request.chunk in one_device,
                        compilation_cache_dir=cache_dir,
                    )
                    for request in requests
                ]
        except FailedJobError as err:  # sbatch refused the array: nothing was submitted
            _remove_new_entries(fixed_folder, before)
            raise LauncherOptionError(f"sbatch refused the tasks ({describe_request(options)}): {sbatch_complaint(str(err))}") from None
        keys = [tuple(computation_id(plan.computations[p].spec, plan.computations[p].traced) for p in request.computed) for request in requests]
        tasks = [Task(job.job_id, job.paths.result_pickle, job.paths.stderr, runs, job=job) for job, runs in zip(jobs, keys)]
        if options.submitit_cluster != "debug":  # debug tasks run inside this process: nothing outlives it
            record_tasks(sweep_dir, [RecordedTask(t.job_id, str(t.result_file), str(t.log_file), settings, t.runs) for t in tasks])
        return tasks


def sbatch_complaint(stderr: str) -> str:
    """sbatch's error lines as one: ``sbatch: error: X`` / ``Batch job submission failed: Y`` -> ``X; Y``."""
    lines = [line.strip().removeprefix("sbatch: error:").strip() for line in stderr.strip().splitlines()]
    lines = [line.removeprefix("Batch job submission failed:").strip() for line in lines if line]
    return "; ".join(dict.fromkeys(lines)) or "no reason given"


def _wait_and_write(plan, sources: Mapping[int, tuple[Task, int]], tasks: list[Task], options, write_chunk) -> list[Task]:
    """Wait until every task has a result or has failed, writing each chunk once its runs are in;
    return the failed tasks. Raises :class:`NeverStarts`."""
    waiting = list(range(len(plan.chunks)))
    started = next_query = time.monotonic()
    while waiting:
        for task in tasks:
            if not task.settled:
                _read_result(task)
        now = time.monotonic()
        if now >= next_query and any(not task.settled for task in tasks):
            _ask_the_cluster([task for task in tasks if not task.settled], options)
            next_query = now + min(MAX_QUERY_SECONDS, max(POLL_SECONDS, (now - started) / 10))
        ready = []
        for index in list(waiting):
            chunk = plan.chunks[index]
            chunk_tasks = [sources[position][0] for position in chunk.real_computations]
            if all(task.outcome is not None for task in chunk_tasks):
                ready.append(index)
            elif any(task.failure is not None for task in chunk_tasks):
                waiting.remove(index)  # its other runs are kept in their tasks' results for a rerun
        for index in ready:
            write_chunk(index, _chunk_outputs(plan.chunks[index], sources))
            waiting.remove(index)
        if waiting and not ready:
            time.sleep(POLL_SECONDS)
    return [task for task in tasks if task.failure is not None]


def _ask_the_cluster(tasks: list[Task], options: BatchedLauncherConf) -> None:
    """Settle tasks that ended without a result (after a grace period for the file), raise
    :class:`NeverStarts` for one that can never start; leave live ones alone."""
    if options.submitit_cluster == "slurm":
        states = task_states([task.job_id for task in tasks])
    elif options.submitit_cluster == "debug":  # runs in this process, when asked for its result
        for task in tasks:
            task.outcome = task.job.result()
        return
    else:  # local processes: submitit knows whether they still run
        states = {task.job_id: TaskState("RUNNING" if not task.job.done() else task.job.state) for task in tasks}
    now = time.monotonic()
    for task in tasks:
        state = states.get(task.job_id)
        if state is not None and state.never_starts:
            raise NeverStarts(state.reason)
        if state is None or state.live:
            continue
        task.ended_at = task.ended_at or now
        grace = RESULT_GRACE_SECONDS.get(state.state, DEFAULT_RESULT_GRACE_SECONDS)
        if not _read_result(task) and now - task.ended_at >= grace:
            task.failure = describe_end(state, options, task.log_file)


def _read_result(task: Task) -> bool:
    """Read the task's result file if it is there (a success or the error it raised); return whether it was."""
    if not task.result_file.exists():
        return False
    from submitit.core.utils import pickle_load

    outcome, value = pickle_load(task.result_file)
    if outcome == "success":
        task.outcome = value
    else:
        task.failure = error_line(value)
    return True


def error_line(trace: str) -> str:
    """The exception a task raised, from its traceback: ``RuntimeError: ...`` (without the module path)."""
    lines = [line.strip() for line in str(trace).strip().splitlines() if line.strip()]
    if not lines:
        return "failed without a traceback"
    name, _, message = lines[-1].partition(":")
    return f"{name.rsplit('.', 1)[-1]}:{message}" if message else name.rsplit(".", 1)[-1]


def describe_end(state: TaskState, options: BatchedLauncherConf, log_file: Path) -> str:
    """Why a task that ended without a result ended, from SLURM's state (and its log's last line)."""
    name = state.state.split()[0]
    if name == "TIMEOUT":
        return f"TIMEOUT (ran past timeout_min={options.timeout_min})"
    if name == "OUT_OF_MEMORY":
        return f"OUT_OF_MEMORY (mem_gb={options.mem_gb})" if options.mem_gb else "OUT_OF_MEMORY (the cluster's default memory; set mem_gb)"
    if name == UNKNOWN:
        return "ended without a result, and SLURM keeps no record of how (accounting, sacct, is off)"
    last = _last_line(log_file) if name in ("FAILED", "NODE_FAIL", "BOOT_FAIL", "INTERRUPTED") else ""
    return f"{state.state} ({last})" if last else state.state


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _chunk_outputs(chunk, sources: Mapping[int, tuple[Task, int]]) -> tuple:
    """``(diverged_at, rows)`` for every entry of a chunk's layout (its padding repeats a real
    run), gathered from the tasks that computed them."""
    import numpy as np

    picks = [sources[position] for position in chunk.computations]
    diverged_at = np.asarray([task.outcome["diverged_at"][slot] for task, slot in picks])
    names = picks[0][0].outcome["rows"]
    return diverged_at, {name: np.stack([task.outcome["rows"][name][slot] for task, slot in picks]) for name in names}


# ---------------------------------------------------------------------------------------------
# What a refused submission leaves behind
# ---------------------------------------------------------------------------------------------


def _first_fixed_folder(folder: str) -> Path:
    """The part of a submitit folder before its first ``%`` placeholder (where its files go before a job id exists)."""
    parts = Path(folder).parts
    fixed = next((i for i, part in enumerate(parts) if "%" in part), len(parts))
    return Path(*parts[:fixed]).absolute()


def _entries(folder: Path) -> Optional[set[str]]:
    """The names in ``folder`` (None when it does not exist)."""
    return set(os.listdir(folder)) if folder.is_dir() else None


def _remove_new_entries(folder: Path, before: Optional[set[str]]) -> None:
    """Remove what appeared in ``folder`` since ``before`` (and the folder, if it is new and now empty)."""
    if not folder.is_dir():
        return
    for name in set(os.listdir(folder)) - (before or set()):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if before is None and not os.listdir(folder):
        folder.rmdir()
