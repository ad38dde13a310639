"""The batched launcher's options: one dataclass, registered by the Hydra plugin and used by the launcher.

:class:`BatchedLauncherConf` is stored in Hydra's ConfigStore as ``hydra/launcher=batched`` by
``hydra_plugins/vi_sweep_launcher`` (which Hydra imports at every start-up, so this module is
light: dataclasses only, no JAX). Hydra instantiates the launcher with these keys; the
launcher rebuilds the same dataclass from them (:meth:`BatchedLauncherConf.from_hydra`) and
checks it (:meth:`BatchedLauncherConf.check`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional

ENGINES = ("local", "submitit")
LAYOUTS = ("jobs", "compact")
SUBMITIT_CLUSTERS = ("local", "slurm", "debug", "auto")
CPU_VECTOR_WIDTHS = (128, 256, 512)
LAUNCHER_TARGET = "hydra_plugins.vi_sweep_launcher.vi_sweep_launcher.BatchedLauncher"
TASK_FUNCTION = "vi_sweep.launch.task.task"  # the only task the batched launcher runs (module.qualname)


CPU_BATCH_FLOATS = 2**23  # the default max_batch_floats on CPU
ACCELERATOR_BATCH_FLOATS = 2**27  # ... and on a GPU or TPU


class LauncherOptionError(ValueError):
    """A ``hydra.launcher.*`` value the launcher cannot use; its message is one line naming the key."""


@dataclass
class BatchedLauncherConf:
    """Every key of ``hydra.launcher`` when ``hydra/launcher=batched``.

    max_batch_floats
        Memory budget of one compiled call, in float32 values; null (the default): 2**23
        (32 MiB) on CPU, 2**27 (512 MiB) on a GPU or TPU (:meth:`batch_floats`). A group whose
        runs need more (``vi_sweep.launch.sweep_plan.floats_per_run``, about ``6 num_mc d + 16 d``
        each) is split into equal chunks. Up to three chunks of jobs (and one of exact baselines)
        can be in flight. On CPU a larger call buys little (a call of a few thousand runs already
        keeps every core busy) and costs the process memory: an 18,000-run grid peaked at 750 MiB
        with 2**27 and 530 MiB with 2**23, in about the same time (README, benchmark); on an
        accelerator a call must be large to fill the device.
    max_runs_per_call
        Optional cap on the runs of one call (null: the budget alone decides).
    cpu_devices
        Number of devices JAX exposes on the CPU platform (``jax_num_cpu_devices``); null: one
        per core this process may use. With ``shard`` each device runs its share of a call's
        runs on its own thread. Only takes effect if JAX is not initialised yet.
    cpu_vector_width
        Vector width in bits that XLA's CPU compiler should use (``--xla_cpu_prefer_vector_width``
        in ``XLA_FLAGS``, set before JAX starts; a width already in ``XLA_FLAGS`` wins). 512
        trains the benchmark grid faster on AVX-512 CPUs with the same numbers there (the README's
        benchmark); at other sizes reductions may round differently (float32 round-off). CPUs
        without AVX-512 stay at 256, GPUs ignore it. null: XLA's default (256).
    shard
        Split each call's batch of runs over all local devices (``jax.sharding``; CPU devices
        from ``cpu_devices``, or the GPUs).
    compilation_cache_dir
        JAX's persistent compilation cache, so a repeated sweep does not recompile; a relative
        path is relative to the directory the sweep was started from. null disables it.
    progress
        Show a progress bar on stderr (only when stderr is a terminal).
    resume
        Skip jobs whose ``metrics.parquet`` is complete and records the job's own config.
    exact_baselines
        Also train, with the jobs, the exact-KL twin of every job that the sweep lacks
        (``vi_sweep.store.baselines``: one per distinct optimizer/lr/init/target config) into
        ``<sweep dir>/baselines/``, where the report looks for them; otherwise the report
        trains them itself at the end (a compile or a cache load and a JAX start). With
        ``false`` the twins are still trained when a searching sweeper (Optuna ...) reads the
        jobs' values and ``optimized_metric`` compares with the exact run (``excess_over_exact``,
        the default; ``stability_edge``); under Hydra's basic sweeper, which reads no value,
        such a value is NaN unless the twin is cached.
    layout
        ``jobs`` (default): every job gets Hydra's job directory (``.hydra/``, its log,
        ``metrics.parquet``), written as ``run_job`` writes it, with the per-job callbacks.
        ``compact``: no job directories: the runs of each compiled chunk go into one file,
        ``<sweep dir>/runs/jobs-<first>-<last>.parquet`` (the same columns), for sweeps of
        thousands of small runs whose per-job files would cost more than their training. Resume,
        ``load_sweep`` and the report read both layouts.
    engine
        ``local``: run every chunk in this process. ``submitit``: hand each chunk to submitit as
        one job (one SLURM array task per chunk, see :mod:`vi_sweep.launch.cluster`); this
        process waits and writes the job dirs, which are the same as with ``local``.
        ``max_batch_floats`` and ``max_runs_per_call`` then size a task.
    submitit_cluster
        ``local`` (one process per job on this machine: the tested stand-in), ``slurm``,
        ``debug`` (in this process, for debugging) or ``auto`` (submitit picks SLURM if present).
    submitit_folder
        submitit's pickles and logs, ``%j`` the job id (default under the sweep dir).
    timeout_min, cpus_per_task, gpus_per_node, mem_gb
        Per-task resources (submitit's shared keys; null: the cluster's default).
    partition, array_parallelism, slurm_additional_parameters, slurm_setup
        SLURM only: ``--partition``, the job array's ``%`` limit, extra ``#SBATCH`` keys
        (``{qos: high, account: me}``) and shell lines run before each task (``module load ...``).
    """

    _target_: str = LAUNCHER_TARGET
    max_batch_floats: Optional[int] = None
    max_runs_per_call: Optional[int] = None
    cpu_devices: Optional[int] = None
    cpu_vector_width: Optional[int] = 512
    shard: bool = True
    compilation_cache_dir: Optional[str] = "outputs/.jax_cache"
    progress: bool = True
    resume: bool = True
    exact_baselines: bool = True
    layout: str = "jobs"
    engine: str = "local"
    submitit_cluster: str = "local"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    timeout_min: int = 60
    cpus_per_task: Optional[int] = None
    gpus_per_node: Optional[int] = None
    mem_gb: Optional[float] = None
    partition: Optional[str] = None
    array_parallelism: int = 256
    slurm_additional_parameters: Dict[str, Any] = field(default_factory=dict)
    slurm_setup: List[str] = field(default_factory=list)

    @classmethod
    def from_hydra(cls, values: Mapping[str, Any]) -> "BatchedLauncherConf":
        """The options from the keyword arguments Hydra instantiates the launcher with
        (resolved; nested OmegaConf containers made plain)."""
        from vi_sweep.launch.plain import to_plain

        known = {f.name for f in fields(cls)}
        return cls(**{key: to_plain(value) for key, value in values.items() if key in known})

    def check(self) -> None:
        """Raise :class:`LauncherOptionError` naming the first bad ``hydra.launcher.*`` value."""
        choices = {"engine": (self.engine, ENGINES), "submitit_cluster": (self.submitit_cluster, SUBMITIT_CLUSTERS), "layout": (self.layout, LAYOUTS)}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise LauncherOptionError(f"hydra.launcher.{name}={value!r} is invalid: must be one of {', '.join(allowed)}")
        for name in ("timeout_min", "array_parallelism"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LauncherOptionError(f"hydra.launcher.{name}={value!r} is invalid: must be an integer >= 1")
        if self.cpu_vector_width is not None and self.cpu_vector_width not in CPU_VECTOR_WIDTHS:
            allowed = ", ".join(map(str, CPU_VECTOR_WIDTHS))
            raise LauncherOptionError(f"hydra.launcher.cpu_vector_width={self.cpu_vector_width!r} is invalid: must be null or one of {allowed}")
        positive = {"max_batch_floats": self.max_batch_floats, "max_runs_per_call": self.max_runs_per_call, "cpu_devices": self.cpu_devices}
        for name, value in positive.items():
            if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                continue
            raise LauncherOptionError(f"hydra.launcher.{name}={value!r} is invalid: must be null or an integer >= 1")

    def batch_floats(self, platform: str) -> int:
        """``max_batch_floats``, or its default for the devices' ``platform`` (``cpu``, ``gpu``, ``tpu``)."""
        if self.max_batch_floats is not None:
            return self.max_batch_floats
        return CPU_BATCH_FLOATS if platform == "cpu" else ACCELERATOR_BATCH_FLOATS


