"""Checks of a whole multirun before anything is written (:class:`vi_sweep.launch.callbacks.StartGuard`).

Hydra's basic sweeper expands a grid (``hydra.sweeper.params`` and the command line's sweeps)
into jobs; :func:`grid_jobs` expands it the same way (Hydra's own ``BasicSweeper.split_arguments``,
globs over groups resolved on the real search path). On those jobs:

- :func:`check_scenario_sweep`: a sweep over several scenarios must not let the grid overwrite
  the values a scenario is defined by;
- :func:`validate_jobs`: every job's composed config is one the trainer can run. The batched
  launcher does this itself as it composes (and removes a fresh sweep directory on error); for
  other launchers (``hydra/launcher=basic``) it happens here, before the sweep directory exists.

A searching sweeper (Optuna ...) chooses its jobs as it goes: only its fixed values can be
checked up front (:func:`validate_master`); each trial is validated as it is composed.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from vi_sweep.launch.config import ConfigError, validate
from vi_sweep.launch.plain import to_plain

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def is_basic_sweeper(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.sweeper._target_", default=None) == BASIC_SWEEPER


def grid_jobs(config: DictConfig, loader: ConfigLoader) -> list[list[str]]:
    """Every job's overrides, in the basic sweeper's order (``config``: the multirun's master config).

    Raises :class:`ConfigError` for a sweep the basic sweeper cannot enumerate (``interval()``).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(lines)
    for override in overrides:
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise ConfigError(
                f"{override.input_line}: the basic sweeper runs grids (lists, range(), glob()), not searches; "
                "search it with hydra/sweeper=optuna (pip install hydra-optuna-sweeper; see conf/search/)"
            )
    batches = BasicSweeper.split_arguments(overrides, None)
    return [list(job) for job in batches[0]]


def _job_label(num: int, overrides: Sequence[str]) -> str:
    return f"job {num}: {' '.join(o for o in overrides if not o.startswith('hydra.')) or 'the primary config'}"


def validate_jobs(config: DictConfig, loader: ConfigLoader, jobs: Sequence[Sequence[str]]) -> None:
    """Compose every job (one Hydra composition per override shape: :class:`vi_sweep.launch.compose.TemplateComposer`)
    and validate it; raise :class:`ConfigError` naming the first invalid job."""
    from vi_sweep.launch.compose import TemplateComposer
    from vi_sweep.launch.errors import CONFIG_ERRORS, describe

    composer = TemplateComposer(loader)
    for num, overrides in enumerate(jobs):
        try:
            validate(task_values(composer.scratch_sweep_config(config, list(overrides))))
        except CONFIG_ERRORS as err:
            raise ConfigError(f"{describe(err)} ({_job_label(num, overrides)})") from None


def validate_master(config: DictConfig) -> None:
    """Validate the master config's run values (those a searching sweeper does not choose)."""
    validate(task_values(config))


def task_values(cfg: DictConfig) -> dict[str, Any]:
    """A composed config's run part (everything but ``hydra``) as plain values."""
    return {key: to_plain(cfg[key]) for key in cfg if key != "hydra"}


def check_scenario_sweep(config: DictConfig, loader: ConfigLoader, jobs: Sequence[Sequence[str]]) -> None:
    """A sweep over several scenarios uses one grid, composed before any scenario is chosen.

    Hydra builds the sweep from the primary config, so a scenario's own grid choice
    (``seed_stress`` -> ``grid=seeds``) does not apply, and the grid's values would silently
    replace a value the scenario is defined by (``seed_stress``'s lr and num_mc). Raises
    :class:`ConfigError` for such a clash, unless the command line sweeps or sets those keys itself.
    """
    scenarios = list(dict.fromkeys(value for job in jobs for key, value in _assignments(job) if key == "scenario"))
    if len(scenarios) < 2:
        return
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    command_line = {key for key, _ in _assignments(config.hydra.overrides.task)}
    grid = OmegaConf.select(config, "hydra.runtime.choices.grid", default=None) or "none"
    for scenario in scenarios:
        clash = sorted((_keys_set_by(loader, f"scenario/{scenario}") & set(params)) - command_line)
        if clash:
            raise ConfigError(
                f"scenario={scenario} sets {', '.join(clash)}, which grid={grid} sweeps over every scenario; "
                f"add grid=none (or sweep {', '.join(clash)} on the command line)"
            )


def _assignments(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, value)`` of ``key=value`` overrides (prefixes ``+``/``++``/``~`` dropped)."""
    pairs = []
    for line in overrides:
        key, _, value = str(line).partition("=")
        pairs.append((key.lstrip("+~"), value))
    return pairs


def _keys_set_by(loader: ConfigLoader, path: str) -> set[str]:
    """The top-level keys a config file sets (``defaults`` and ``hydra`` aside), found on the search path."""
    for source in loader.get_sources():
        if source.is_config(path):
            loaded = source.load_config(path).config
            return {str(key) for key in loaded if key not in ("defaults", "hydra")}
    return set()


def launcher_validates_jobs(config: DictConfig) -> bool:
    """Whether the launcher composes and validates every job before it writes (the batched one does)."""
    from vi_sweep.launch.options import LAUNCHER_TARGET

    return OmegaConf.select(config, "hydra.launcher._target_", default=None) == LAUNCHER_TARGET


def check_multirun(config: DictConfig, loader: Optional[ConfigLoader] = None) -> None:
    """Everything :class:`vi_sweep.launch.callbacks.StartGuard` checks of a multirun before it writes."""
    if loader is None:
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
    if not is_basic_sweeper(config):
        if not launcher_validates_jobs(config):
            validate_master(config)
        return
    jobs = grid_jobs(config, loader)
    check_scenario_sweep(config, loader, jobs)
    if not launcher_validates_jobs(config):
        validate_jobs(config, loader, jobs)
