"""``hydra/launcher=batched``: a whole vi_sweep sweep as one compiled program per shape.

Hydra's launchers (basic, joblib, submitit) run each job on its own. A BBVI stability sweep is
thousands of tiny runs that differ only in traced values (lr, seed, init_log_sigma, optimizer
and target hyperparameters), so this launcher composes every job, groups jobs whose compiled
shapes agree (:class:`vi_sweep.trainer.TrainSpec`) and runs each group as one
``jit(vmap(train))`` call, then writes each job's directory as Hydra's ``run_job`` would
(:mod:`vi_sweep.job_dirs`). The implementation is :mod:`vi_sweep.batched`, imported inside :meth:`BatchedLauncher.launch`:
Hydra imports this module at every start-up, so it must stay free of JAX.

It is vi_sweep-specific: it computes with :mod:`vi_sweep.trainer` and writes with
:func:`vi_sweep.app.finish_job` instead of calling the task function.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf


@dataclass
class BatchedLauncherConf:
    """Every key of ``hydra.launcher`` when ``hydra/launcher=batched``.

    max_batch_floats
        Memory budget of one compiled call, in float32 values (default 2**27 = 512 MiB):
        a group whose runs need more (``vi_sweep.sweep_plan.floats_per_run``, about
        ``6 num_mc d + 16 d`` each) is split into equal chunks. Up to three chunks of jobs (and one of exact baselines) can be in flight.
    max_runs_per_call
        Optional cap on the runs of one call (null: the budget alone decides).
    cpu_devices
        Number of devices JAX exposes on the CPU platform (``jax_num_cpu_devices``); null: one
        per core this process may use. With ``shard`` each device runs its share of a call's
        runs on its own thread. Only takes effect if JAX is not initialised yet.
    cpu_vector_width
        Vector width in bits that XLA's CPU compiler should use (``--xla_cpu_prefer_vector_width``
        in ``XLA_FLAGS``, set before JAX starts; a width already in ``XLA_FLAGS`` wins). 512
        made the benchmark grid's training 15% faster on the AVX-512 machine it was measured on,
        with bit-identical numbers there; at other sizes reductions may round differently
        (float32 round-off). CPUs without AVX-512 stay at 256, GPUs ignore it. null: XLA's
        default (256).
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
        (``vi_sweep.baselines``: one per distinct optimizer/lr/init/target config) into
        ``<sweep dir>/baselines/``, where the report looks for them; otherwise the report
        trains them itself at the end (a compile or a cache load and a JAX start).
    engine
        ``local``: run every chunk in this process. ``submitit``: hand each chunk to submitit as
        one job (one SLURM array task per chunk, see :mod:`vi_sweep.cluster`); this process waits
        and writes the job dirs, which are the same as with ``local``. ``max_batch_floats`` and
        ``max_runs_per_call`` then size a task.
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

    _target_: str = "hydra_plugins.vi_sweep_launcher.vi_sweep_launcher.BatchedLauncher"
    max_batch_floats: int = 2**27
    max_runs_per_call: Optional[int] = None
    cpu_devices: Optional[int] = None
    cpu_vector_width: Optional[int] = 512
    shard: bool = True
    compilation_cache_dir: Optional[str] = "outputs/.jax_cache"
    progress: bool = True
    resume: bool = True
    exact_baselines: bool = True
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


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="vi_sweep")


class BatchedLauncher(Launcher):
    """Hydra launcher running vi_sweep jobs in vmapped batches (see :mod:`vi_sweep.batched`)."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = options
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        import gc

        from vi_sweep.compose import TemplateComposer

        # The sweeper composes every job once to validate the batch before launch(): keep the
        # long-lived objects of start-up out of the cyclic collector's way for that too (see
        # vi_sweep.batched.launch, which unfreezes them at its end).
        gc.freeze()

        # The sweeper shares this context and composes every job once more to validate the
        # batch; with the template composer both passes cost a deep copy per job, not a full
        # composition (the configs are equal, see vi_sweep.compose).
        if not isinstance(hydra_context.config_loader, TemplateComposer):
            hydra_context.config_loader = TemplateComposer(hydra_context.config_loader)
        # Hydra's basic sweeper composes every job of the first batch only to see that it
        # composes, and drops it: it may have scratch configs until launch()
        # (vi_sweep.compose.TemplateComposer.scratch).
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        hydra_context.config_loader.scratch = sweeper == BASIC_SWEEPER
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vi_sweep.batched import LauncherOptions, launch

        assert self.hydra_context is not None and self.config is not None
        # From here on every composition is a job's own config: scratch configs were for the
        # validation of the first batch only (later batches of a max_batch_size sweep are
        # validated at the normal cost; nothing after the sweep can get a shared config).
        self.hydra_context.config_loader.scratch = False
        return launch(
            hydra_context=self.hydra_context,
            config=self.config,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
            options=LauncherOptions(**{key: _plain(value) for key, value in self.options.items()}),
        )


def _plain(value: Any) -> Any:
    """Hydra passes nested option values (``slurm_additional_parameters``) as OmegaConf containers."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
