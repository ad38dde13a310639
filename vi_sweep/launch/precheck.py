"""Checking command-line overrides before Hydra starts: bad input is one line, exit 2, nothing written.

Every override on a known key is checked (each value of a sweep list too), so a bad value never
reaches Hydra's multi-line errors and no output directory is created.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from vi_sweep.launch.config import (
    CONF_DIR,
    GROUPS,
    SCHEMAS,
    ConfigError,
    RunConf,
    check_group_field,
    check_value,
    defaults_choices,
    group_options,
)


def _override_values(override) -> list:
    """All values an override stands for (one, or each element of a sweep; a group's glob is expanded).

    Raises :class:`ConfigError` for sweeps that do not enumerate (``interval()``, a glob on a
    plain key): vi_sweep's launchers run grids, not optimisers.
    """
    from hydra.core.override_parser.types import Glob

    value = override.value()
    if isinstance(value, Glob) and override.key_or_group in GROUPS:
        return value.filter(group_options(override.key_or_group))
    if override.is_sweep_override():
        try:
            return list(override.sweep_iterator())
        except Exception:  # Hydra raises a bare Exception subclass per sweep type
            raise ConfigError(
                f"{override.input_line}: this sweep does not enumerate; use a list (a,b,c), range() or, for a group, glob()"
            ) from None
    return [value]


def _known_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConf) if f.name not in SCHEMAS]


def _check_key(override) -> None:
    """Reject deletions of required keys and keys vi_sweep does not have (Hydra's error is many lines)."""
    key = override.key_or_group
    group, _, field = key.partition(".")
    if override.is_delete():
        if key in _known_keys() or key in GROUPS or group in SCHEMAS:
            raise ConfigError(f"{override.input_line}: {key} is required and cannot be deleted")
        return
    if key in _known_keys() or key in GROUPS or (field and group in SCHEMAS):
        return
    raise ConfigError(
        f"{key} is not a vi_sweep key; keys are {', '.join(_known_keys())}, "
        f"groups {', '.join(GROUPS)} and their fields (e.g. optimizer.b1)"
    )


def _swept_keys(path) -> set[str]:
    from omegaconf import OmegaConf

    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params", default=None)
    return set(params or {})


def _set_keys(path) -> set[str]:
    from omegaconf import OmegaConf

    return {k for k in OmegaConf.load(path) if k not in ("defaults", "hydra")}


def check_scenario_sweep(chosen: dict[str, list], command_line_keys: set[str]) -> None:
    """A sweep over several scenarios uses one grid, composed before any scenario is chosen.

    Hydra builds the sweep from the primary config, so a scenario's own grid choice
    (``seed_stress`` -> ``grid=seeds``) does not apply, and the grid's values would silently
    replace a value the scenario is defined by (``seed_stress``'s lr and num_mc).
    """
    scenarios = chosen.get("scenario") or []
    if len(scenarios) < 2:
        return
    grids = chosen.get("grid") or [defaults_choices(CONF_DIR / "config.yaml").get("grid", "none")]
    for grid in grids:
        grid_keys = _swept_keys(CONF_DIR / "grid" / f"{grid}.yaml")
        for scenario in scenarios:
            clash = sorted((_set_keys(CONF_DIR / "scenario" / f"{scenario}.yaml") & grid_keys) - command_line_keys)
            if clash:
                raise ConfigError(
                    f"scenario={scenario} sets {', '.join(clash)}, which grid={grid} sweeps over every scenario; "
                    f"add grid=none (or sweep {', '.join(clash)} on the command line)"
                )


def precheck(overrides: Sequence[str], *, multirun: bool = False) -> None:
    """Validate command-line overrides; raise :class:`ConfigError` on the first bad one.

    Checks every value of every sweep against :data:`vi_sweep.launch.config.RULES` and the group options,
    rejects unknown keys and deletions of required ones, sweeps outside ``multirun``, and
    scenario sweeps whose grid would overwrite a scenario's own values.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra reports its own grammar errors
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    chosen: dict[str, list] = {}
    for override in parsed:
        _check_key(override)
        if override.is_delete():
            continue
        key = override.key_or_group
        values = _override_values(override)
        if override.is_sweep_override() and not multirun:
            raise ConfigError(f"{override.input_line} is a sweep: use `python -m vi_sweep multirun ...`")
        for value in values:
            check_value(key, value)
        if key in GROUPS:
            chosen[key] = values
    for override in parsed:
        group, _, field = override.key_or_group.partition(".")
        if field and group in SCHEMAS and not override.is_delete():
            check_group_field(group, _group_options_in_effect(group, chosen), field)
    if multirun:
        check_scenario_sweep(chosen, {o.key_or_group for o in parsed})


def _group_options_in_effect(group: str, chosen: dict[str, list]) -> list:
    """The options of ``group`` the jobs may use: the command line's, else each scenario's, else the default."""
    if group in chosen:
        return chosen[group]
    defaults = defaults_choices(CONF_DIR / "config.yaml")
    scenarios = chosen.get("scenario") or [defaults.get("scenario", "none")]
    return [defaults_choices(CONF_DIR / "scenario" / f"{name}.yaml").get(group, defaults.get(group)) for name in scenarios]
