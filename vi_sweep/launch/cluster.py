"""``hydra.launcher.engine=submitit``: each compiled chunk of a batched sweep is one submitit job.

Hydra's ``submitit_slurm`` launcher makes one SLURM task per Hydra job; a BBVI grid is thousands
of tiny jobs, each of which would pay a process start, a JAX import and a compile. The batched
launcher already cuts a sweep into chunks of runs that share one compiled program
(:mod:`vi_sweep.launch.sweep_plan`); with ``engine=submitit`` it hands each chunk to
``submitit.AutoExecutor`` as one job (one SLURM array task), waits, and writes every job dir
itself, exactly as ``engine=local`` does. So a task holds at most ``max_runs_per_call`` runs and
``max_batch_floats`` floats of working set: those two knobs size the tasks.

A submitted job receives plain picklable data only -- the spec's field values as a tuple and
the list of traced dicts -- imports the trainer itself and returns numpy arrays
(:func:`train_chunk`, which runs the chunk with :mod:`vi_sweep.launch.devices` as the local
engine does). The launcher process never initialises a JAX backend in this mode, so it can sit
on a login node (:func:`run_on_submitit`).

This module is imported by the worker processes: no Hydra, and JAX only inside functions.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from vi_sweep.launch.options import BatchedLauncherConf, LauncherOptionError

log = logging.getLogger(__name__)

# Several JAX processes on one GPU node: by default each preallocates 75% of a GPU's memory, so a
# second one on the same GPU fails. Allocate on demand instead (jax.readthedocs.io, "GPU memory
# allocation"). setdefault: a value the user exported (or XLA_PYTHON_CLIENT_MEM_FRACTION) wins.
SHARED_NODE_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


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


def padded(traced: Sequence[Mapping[str, Any]], multiple: int, runs_per_stream: int = 1) -> list[Mapping[str, Any]]:
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
    compilation_cache_dir: Optional[str] = None,
) -> dict[str, Any]:
    """Run one chunk in a submitit job: ``jit(vmap(train))`` over ``traced``; numpy results.

    Parameters
    ----------
    spec_values
        ``tuple(TrainSpec)``: the static fields, rebuilt here into a :class:`~vi_sweep.core.trainer.TrainSpec`.
    traced
        One plain dict of traced values per run (``split_fields``'s second half), stream by
        stream (:class:`vi_sweep.launch.sweep_plan.Chunk`).
    runs_per_stream
        The runs of each stream: they share its noise, drawn once.
    cpu_devices, cpu_vector_width, shard, compilation_cache_dir
        As ``hydra.launcher.*``; the cache dir is absolute (the launcher resolves it), so jobs on a
        shared filesystem reuse each other's compiled programs.

    Returns
    -------
    dict
        ``diverged_at``: int array ``(n,)``; ``rows``: column name -> array ``(n, logged rows)``;
        ``compiled``: XLA compilations this job did. ``n = len(traced)``: padding for the job's
        devices is added and removed here.
    """
    for name, value in SHARED_NODE_ENV.items():
        os.environ.setdefault(name, value)  # before JAX creates its GPU client
    from vi_sweep.core.trainer import TrainSpec
    from vi_sweep.launch.devices import CompileCounts, count_compiles, init_jax, quiet_jax_logs, start_batch, to_numpy

    quiet_jax_logs()
    devices = init_jax(
        cpu_devices=cpu_devices, cpu_vector_width=cpu_vector_width, shard=shard, compilation_cache_dir=compilation_cache_dir, cwd=Path.cwd()
    )
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


def run_on_submitit(plan, options: BatchedLauncherConf, cwd: Path, write_chunk: Callable[[int, tuple], None]) -> int:
    """``engine=submitit``: one submitit job per chunk (one job array), written as each finishes in turn.

    Returns the XLA compilations the jobs report. A failed job does not stop the others from
    being written; afterwards one line names it and the sweep exits 1, so a rerun into the same
    sweep dir computes only what is missing.
    """
    try:
        executor = make_options_executor(options)
    except (RuntimeError, ValueError) as err:  # e.g. submitit_cluster=slurm where there is no srun
        message = str(err).strip().splitlines()[0]
        raise LauncherOptionError(f"hydra.launcher.submitit_cluster={options.submitit_cluster}: {message}") from None
    cache_dir = None
    if options.compilation_cache_dir is not None:
        cache_dir = str(cwd / options.compilation_cache_dir)  # an absolute path stays as it is
    with executor.batch():
        submitted = [
            executor.submit(
                train_chunk,
                tuple(chunk.spec),
                [dict(plan.computations[position].traced) for position in chunk.computations],
                runs_per_stream=chunk.runs_per_stream,
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
