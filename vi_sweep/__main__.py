"""Command line: ``python -m vi_sweep {run,multirun,report} ...``.

- ``run [overrides]``: one training run (Hydra's ``--cfg``, ``--help``, ``hydra.run.dir=`` ... work).
- ``multirun [overrides]``: a sweep (same as Hydra's ``-m``); with no overrides the default grid
  from ``conf/grid/default.yaml`` runs.
- ``report SWEEP_DIR``: classify the runs of a sweep and write ``SWEEP_DIR/report/``.

Before Hydra starts, every override on a known key is checked (each value of a sweep list too),
so bad input is one line on stderr, exit code 2, and no output directory is created.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import NoReturn, Sequence

from vi_sweep.config import (
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

COMMANDS = ("run", "multirun", "report")
_INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


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

    Checks every value of every sweep against :data:`vi_sweep.config.RULES` and the group options,
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


def _hydra_main() -> None:
    import hydra

    from vi_sweep.app import task

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from analysis.report import main as report_main

        return report_main(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    elif args and args[0] == "multirun":
        args = ["--multirun", *args[1:]]
    if "--multirun" in args and any(flag in args for flag in _INSPECT_FLAGS):
        # Hydra refuses --multirun together with --cfg/--info; the config shown is the same.
        args = [a for a in args if a != "--multirun"]

    from hydra._internal.utils import get_args_parser

    parsed, _ = get_args_parser().parse_known_args(args)
    try:
        precheck(parsed.overrides or [], multirun=bool(parsed.multirun))
    except ConfigError as err:
        print(f"vi_sweep: error: {err}", file=sys.stderr)
        return 2
    if not CONF_DIR.is_dir():
        print(f"vi_sweep: error: config directory {CONF_DIR} not found (install from a checkout: pip install -e .)", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *args]
    _hydra_main()
    return 0


def exit_now(code: object) -> NoReturn:
    """``sys.exit(code)`` without tearing the interpreter down.

    Every file is closed by then (atomic writers, the report); what is left is ~0.6 s of freeing
    JAX's runtime, compiled programs and thousands of config nodes one by one, which a sweep's
    wall time should not include. So: flush, close the logs, and leave.
    """
    if code is None:
        code = 0
    elif not isinstance(code, int):  # as sys.exit prints a non-integer code
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a closed pipe (| head) or stream: nothing more to say there
            pass
        except OSError:  # a full disk: output was lost, which is a failure (Python's exit status 120)
            code = code or 120
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    try:
        status: object = main()
    except SystemExit as stop:  # the one-line errors of the launcher and the task exit this way
        status = stop.code
    exit_now(status)
