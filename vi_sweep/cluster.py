"""``hydra.launcher.engine=submitit``: each compiled chunk of a batched sweep is one submitit job.

Hydra's ``submitit_slurm`` launcher makes one SLURM task per Hydra job; a BBVI grid is thousands
of tiny jobs, each of which would pay a process start, a JAX import and a compile. The batched
launcher already cuts a sweep into chunks of runs that share one compiled program
(:mod:`vi_sweep.sweep_plan`); with ``engine=submitit`` it hands each chunk to
``submitit.AutoExecutor`` as one job (one SLURM array task), waits, and writes every job dir
itself, exactly as ``engine=local`` does. So a task holds at most ``max_runs_per_call`` runs and
``max_batch_floats`` floats of working set: those two knobs size the tasks.

A submitted job receives plain picklable data only -- the spec's field values as a tuple and
the list of traced dicts -- imports the trainer itself and returns numpy arrays
(:func:`train_chunk`). The launcher process never initialises a JAX backend in this mode, so it
can sit on a login node.

This module is imported by the worker processes: no Hydra, and JAX only inside functions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

SUBMITIT_CLUSTERS = ("local", "slurm", "debug", "auto")

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


def padded(traced: Sequence[Mapping[str, Any]], multiple: int) -> list[Mapping[str, Any]]:
    """``traced`` with its last entry repeated up to a multiple of ``multiple`` (for sharding)."""
    size = multiple * math.ceil(len(traced) / multiple)
    return list(traced) + [traced[-1]] * (size - len(traced))


def train_chunk(
    spec_values: tuple,
    traced: Sequence[Mapping[str, Any]],
    *,
    cpu_devices: Optional[int] = None,
    cpu_vector_width: Optional[int] = None,
    shard: bool = True,
    compilation_cache_dir: Optional[str] = None,
) -> dict[str, Any]:
    """Run one chunk in a submitit job: ``jit(vmap(train))`` over ``traced``; numpy results.

    Parameters
    ----------
    spec_values
        ``tuple(TrainSpec)``: the static fields, rebuilt here into a :class:`~vi_sweep.trainer.TrainSpec`.
    traced
        One plain dict of traced values per run (``split_fields``'s second half).
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
    from vi_sweep.app import quiet_jax_logs
    from vi_sweep.batched import LauncherOptions, SweepCounters, _count_compiles, init_jax, start_batch, to_numpy
    from vi_sweep.trainer import TrainSpec

    quiet_jax_logs()
    options = LauncherOptions(cpu_devices=cpu_devices, cpu_vector_width=cpu_vector_width, shard=shard, compilation_cache_dir=compilation_cache_dir)
    devices = init_jax(options, cwd=Path.cwd())
    counters = SweepCounters()
    stop_counting = _count_compiles(counters)
    try:
        spec = TrainSpec(*spec_values)
        diverged_at, rows = to_numpy(start_batch(spec, padded(traced, len(devices)), devices))
    finally:
        stop_counting()
    real = len(traced)
    return {
        "diverged_at": diverged_at[:real],
        "rows": {name: values[:real] for name, values in rows.items()},
        "compiled": counters.compiled,
    }
