"""Command line: ``python -m vi_sweep {run,multirun,report} ...``.

- ``run [overrides]``: one training run (Hydra's ``--cfg``, ``--help``, ``hydra.run.dir=`` ... work).
- ``multirun [overrides]``: a sweep (same as Hydra's ``-m``); with no overrides the default grid
  from ``conf/grid/default.yaml`` runs.
- ``report SWEEP_DIR``: classify the runs of a sweep and write ``SWEEP_DIR/report/``.

Before Hydra starts, every override on a known key is checked (each value of a sweep list too),
so bad input is one line on stderr, exit code 2, and no output directory is created.
"""

from __future__ import annotations

import sys
from typing import Sequence

from vi_sweep.config import CONF_DIR, GROUPS, RULES, SCHEMAS, ConfigError, check_group_field, check_value, defaults_choices, group_options

COMMANDS = ("run", "multirun", "report")
_INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


def _override_values(override) -> list:
    """All values an override stands for (one, or each element of a sweep; a group's glob is expanded)."""
    from hydra.core.override_parser.types import Glob

    value = override.value()
    if isinstance(value, Glob) and override.key_or_group in GROUPS:
        return value.filter(group_options(override.key_or_group))
    if override.is_sweep_override():
        try:
            return list(override.sweep_iterator())
        except Exception:  # interval() and a glob on a plain key do not enumerate: leave them to Hydra
            return []
    return [value]


def precheck(overrides: Sequence[str]) -> None:
    """Validate command-line overrides of known keys; raise :class:`ConfigError` on the first bad one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra reports its own grammar errors
    chosen: dict[str, list] = {}
    for override in parsed:
        if override.is_delete():
            continue
        key = override.key_or_group
        if key.startswith("hydra"):
            continue
        if key not in RULES and key not in GROUPS:
            continue
        values = _override_values(override)
        for value in values:
            check_value(key, value)
        if key in GROUPS:
            chosen[key] = values
    for override in parsed:
        group, _, field = override.key_or_group.partition(".")
        if field and group in SCHEMAS and not override.is_delete():
            check_group_field(group, _group_options_in_effect(group, chosen), field)


def _group_options_in_effect(group: str, chosen: dict[str, list]) -> list:
    """The options of ``group`` the jobs may use: the command line's, else each scenario's, else the default."""
    if group in chosen:  # empty when Hydra cannot enumerate it: then Hydra does the check
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
        precheck(parsed.overrides or [])
    except ConfigError as err:
        print(f"vi_sweep: error: {err}", file=sys.stderr)
        return 2
    if not CONF_DIR.is_dir():
        print(f"vi_sweep: error: config directory {CONF_DIR} not found (install from a checkout: pip install -e .)", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *args]
    _hydra_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
