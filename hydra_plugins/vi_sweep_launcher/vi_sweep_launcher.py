"""``hydra/launcher=batched``: a whole vi_sweep sweep as one compiled program per shape.

Hydra's launchers (basic, joblib, submitit) run each job on its own. A BBVI stability sweep is
thousands of tiny runs that differ only in traced values (lr, seed, init_log_sigma, optimizer
and target hyperparameters), so this launcher groups jobs whose compiled shapes agree and runs
each group as one ``jit(vmap(train))`` call, then writes each job's directory as Hydra's
``run_job`` would. This module is only the plugin: Hydra imports it at every start-up, so it
registers the options (:class:`vi_sweep.launch.options.BatchedLauncherConf`) and imports the
implementation (:mod:`vi_sweep.launch.batched`, JAX) inside :meth:`BatchedLauncher.launch`.

It runs vi_sweep's own task only (it computes with the trainer and writes each job's rows
itself); any other Hydra app that selects it is refused in one line.
"""

import sys
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from vi_sweep.launch.options import TASK_FUNCTION, BatchedLauncherConf

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="vi_sweep")


class BatchedLauncher(Launcher):
    """Hydra launcher running vi_sweep jobs in vmapped batches (see :mod:`vi_sweep.launch.batched`)."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = BatchedLauncherConf.from_hydra(options)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.compiled_shapes: dict = {}  # program -> the (streams, runs per stream) it was compiled for, kept across the batches of one sweep
        self.tally: Any = None  # vi_sweep.launch.batched.SweepTally: the sweep's batches and runs written so far

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        name = f"{getattr(task_function, '__module__', '?')}.{getattr(task_function, '__qualname__', '?')}"
        if name != TASK_FUNCTION:
            print(
                f"vi_sweep: error: hydra/launcher=batched runs vi_sweep's task ({TASK_FUNCTION}) only, not {name}; "
                "choose another launcher for this app (e.g. hydra/launcher=basic)",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(2)
        from vi_sweep.launch.compose import TemplateComposer

        # The sweeper shares this context and composes every job once more to validate the
        # batch; with the template composer both passes cost a deep copy per job, not a full
        # composition (the configs are equal, see vi_sweep.launch.compose).
        if not isinstance(hydra_context.config_loader, TemplateComposer):
            hydra_context.config_loader = TemplateComposer(hydra_context.config_loader)
        # Hydra's basic sweeper composes every job of the first batch only to see that it
        # composes, and drops it: until launch() a job is only checked
        # (vi_sweep.launch.compose.TemplateComposer.only_checking).
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        hydra_context.config_loader.only_checking = sweeper == BASIC_SWEEPER
        self.hydra_context = hydra_context
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """One batch of jobs (the whole grid from the basic sweeper; ``n_jobs`` trials from Optuna's),
        as one vmapped program per shape; each JobReturn holds the job's value for the sweeper."""
        from vi_sweep.launch.batched import SweepTally, launch

        assert self.hydra_context is not None and self.config is not None
        self.tally = self.tally or SweepTally()
        # From here on every composition is a job's own config: checking only was for the
        # validation of the first batch (later batches of a max_batch_size sweep are
        # validated at the normal cost; nothing after the sweep can get a shared config).
        self.hydra_context.config_loader.only_checking = False
        return launch(
            hydra_context=self.hydra_context,
            config=self.config,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
            options=self.options,
            compiled_shapes=self.compiled_shapes,
            tally=self.tally,
        )
