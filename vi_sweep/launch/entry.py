"""Starting Hydra for ``python -m vi_sweep run|multirun``: its flags and extension points intact,
configuration errors as one line.

Hydra parses the command line itself (``--config-dir``, ``--config-name``, ``hydra.searchpath``,
``+experiment=...``, ``--shell-completion``, ``--cfg``, ``--help`` ...), composes the config and
runs the task; vi_sweep validates the *composed* config (:func:`vi_sweep.launch.config.validate`,
in :class:`vi_sweep.launch.callbacks.StartGuard` and the batched launcher). Hydra prints its own
errors over several lines and exits 1; here it is asked to raise them instead
(``HYDRA_FULL_ERROR=1``, Hydra's switch for exactly that), and a configuration error becomes one
line naming the field (:func:`vi_sweep.launch.errors.describe`), exit code 2, with a sweep
directory that was created for the rejected sweep removed again. Any other exception is reported
as Hydra reports it (or with the full traceback, if you set ``HYDRA_FULL_ERROR=1`` yourself).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Mapping, NoReturn, Sequence

from omegaconf import OmegaConf

FULL_ERROR = "HYDRA_FULL_ERROR"


def run_hydra(args: Sequence[str], commands: Mapping[str, str]) -> int:
    """Run Hydra's entry point on ``args`` (Hydra's own command line); return the exit code."""
    import hydra

    from vi_sweep.launch.config import CONF_DIR
    from vi_sweep.launch.errors import CONFIG_ERRORS, describe
    from vi_sweep.launch.interrupts import raise_if_interrupted
    from vi_sweep.launch.task import task

    register_help_resolvers(commands)
    # Hydra's completion script completes the program named here: the console script, which
    # needs no `python -m` (a word Hydra's script cannot complete after).
    completing = "-sc" in args or "--shell-completion" in args
    if "--multirun" in args or "-m" in args:
        args = keys_of_swept_options(args)
    sys.argv = ["vi-sweep" if completing else sys.argv[0], *args]
    asked_for_traces = os.environ.get(FULL_ERROR) == "1"
    os.environ[FULL_ERROR] = "1"
    try:
        if ("--multirun" in args or "-m" in args) and ("--cfg" in args or "-c" in args):
            show_jobs([a for a in args if a not in ("--multirun", "-m")])
        else:
            hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()
    except CONFIG_ERRORS as err:
        raise_if_interrupted(err)  # the Ctrl-C, not this error: the command's one line for it
        if asked_for_traces:
            raise
        _abandon_rejected_sweeps()
        print(f"vi_sweep: error: {describe(err)}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:  # output into a pipe that was closed (| head): nothing more to say
        return 0
    except Exception as err:  # noqa: BLE001 - not swallowed: reported as Hydra reports it, exit 1
        raise_if_interrupted(err)  # the Ctrl-C, not this error: the command's one line for it
        if asked_for_traces:
            raise
        os.environ.pop(FULL_ERROR, None)
        _report_as_hydra_does(err)
    finally:
        if not asked_for_traces:
            os.environ.pop(FULL_ERROR, None)
    return 0


def _report_as_hydra_does(err: Exception) -> NoReturn:
    """Hydra's own report of an unexpected error (its stack frames stripped), then exit 1."""
    from hydra._internal.utils import run_and_report

    def reraise() -> NoReturn:
        raise err

    run_and_report(reraise)
    sys.exit(1)  # run_and_report exits itself; this line only satisfies the type


def _abandon_rejected_sweeps() -> None:
    """Remove the sweep directories this multirun created before it was rejected (nothing but
    Hydra's ``multirun.yaml`` and vi_sweep's history in them)."""
    from vi_sweep.launch.history import STARTED_HERE, abandon_if_fresh

    while STARTED_HERE:
        abandon_if_fresh(STARTED_HERE.pop())


CHOOSING_GROUPS = ("objective", "optimizer", "target", "scenario", "search")
"""Groups whose option a multirun may sweep; a scenario or search chooses the others' options too."""


def keys_of_swept_options(args: Sequence[str]) -> list[str]:
    """A multirun's ``G.key=value`` overrides as ``++G.key=value`` when options are swept.

    Hydra composes a multirun's master config with the primary config's options, not the swept
    ones (``target=glob(corr*) target.rho=0.5``: the master's target is standard_normal, which
    has no ``rho``), so a key of a swept option fails there, before any job exists. As a forced
    add it composes in the master and in every job; each job is then validated on its own
    composed config, so a key its option does not have is still one line naming the job's
    option (:func:`vi_sweep.launch.config.validate`). Without a swept option, ``args`` is unchanged.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vi_sweep.launch.config import GROUPS

    overrides = get_args_parser().parse_known_args(list(args))[0].overrides or []
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - Hydra reports a bad override itself, in its own words
        return list(args)
    if not any(o.is_sweep_override() and o.key_or_group in CHOOSING_GROUPS for o in parsed):
        return list(args)
    plain_group_keys = {
        o.input_line for o in parsed if o.type.name == "CHANGE" and o.package is None and o.key_or_group.split(".", 1)[0] in GROUPS and "." in o.key_or_group
    }
    return [f"++{arg}" if arg in plain_group_keys else arg for arg in args]


@contextlib.contextmanager
def composed_multirun(args: Sequence[str]) -> Iterator[tuple[Any, Any, Any]]:
    """``(hydra, master config, parsed args)`` of a multirun command line, composed as
    ``hydra.main`` would (same search path, ``--config-dir`` first); nothing is written."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import SearchPathException
    from hydra.types import RunMode

    from vi_sweep.launch.config import CONF_DIR

    parsed = get_args_parser().parse_args(list(args))
    search_path = create_automatic_config_search_path(None, None, str(CONF_DIR))
    if parsed.config_dir is not None:
        directory = os.path.abspath(parsed.config_dir)
        if not os.path.isdir(directory):
            raise SearchPathException(f"Additional config directory '{directory}' not found")
        search_path.prepend(provider="command-line", path=f"file://{directory}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="vi_sweep", config_search_path=search_path)
    try:
        config_name = parsed.config_name or "config"
        master = hydra.compose_config(config_name, [*parsed.overrides, "hydra.mode=MULTIRUN"], run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        yield hydra, master, parsed
    finally:
        GlobalHydra.instance().clear()


def show_jobs(args: Sequence[str]) -> None:
    """``multirun --cfg job|all ...``: every job's config, as the launcher will get it (``# job N:
    overrides`` before each); ``--cfg hydra`` (or a sweeper that searches): the multirun's config once.

    Hydra itself refuses ``--multirun`` with ``--cfg``; this composes the master config as
    ``hydra.main`` would (:func:`composed_multirun`) and each job of the basic sweeper's grid
    (:func:`vi_sweep.launch.sweep_checks.grid_jobs`). Nothing is written.
    """
    from vi_sweep.launch.sweep_checks import grid_jobs, is_basic_sweeper

    with composed_multirun(args) as (hydra, master, parsed):
        if parsed.cfg == "hydra" or not is_basic_sweeper(master):
            _print_config(hydra, master, parsed)
            return
        for num, job in enumerate(grid_jobs(master, hydra.config_loader)):
            print(f"# job {num}: {' '.join(job) or 'the primary config'}")
            _print_config(hydra, hydra.config_loader.load_sweep_config(master, job), parsed)


def check_sweep(overrides: Sequence[str]) -> None:
    """Check ``python -m vi_sweep multirun OVERRIDES`` as its start would, without starting it:
    every job of the grid composed and validated (whatever the launcher), scenario sweeps
    checked; raises one of :data:`vi_sweep.launch.errors.CONFIG_ERRORS`. Nothing is written."""
    from vi_sweep.launch.sweep_checks import check_scenario_sweep, grid_jobs, is_basic_sweeper, validate_jobs, validate_master

    with composed_multirun(overrides) as (hydra, master, _):
        if not is_basic_sweeper(master):
            validate_master(master)
            return
        jobs = grid_jobs(master, hydra.config_loader)
        check_scenario_sweep(master, hydra.config_loader, jobs)
        validate_jobs(master, hydra.config_loader, jobs)


def _print_config(hydra, cfg, parsed) -> None:
    """Print ``cfg`` as ``--cfg`` does (``--package``, ``--resolve``)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    HydraConfig.instance().set_config(cfg)
    with read_write(cfg), open_dict(cfg):
        shown = hydra.get_sanitized_cfg(cfg, parsed.cfg)
    if parsed.package not in (None, "_global_"):
        shown = OmegaConf.select(shown, parsed.package)
    if OmegaConf.is_config(shown):
        print(OmegaConf.to_yaml(shown, resolve=parsed.resolve), end="")
    else:
        print(shown)


# ---------------------------------------------------------------------------------------------
# --help: the commands, and the config groups a user chooses from
# ---------------------------------------------------------------------------------------------

HIDDEN_GROUPS = ("hydra", "schema")  # Hydra's own (--hydra-help lists them) and the schemas options select


def register_help_resolvers(commands: Mapping[str, str]) -> None:
    """The resolvers ``conf/hydra/help/vi_sweep.yaml`` uses: ``${vi_sweep_commands:}`` (one line
    per command) and ``${vi_sweep_config_groups:}`` (the groups of the search path Hydra composes
    from, ``--config-dir`` and ``hydra.searchpath`` included, without Hydra's and the schemas)."""
    OmegaConf.register_new_resolver("vi_sweep_commands", lambda: format_commands(commands), replace=True)
    OmegaConf.register_new_resolver("vi_sweep_config_groups", config_groups_text, replace=True)


def format_commands(commands: Mapping[str, str]) -> str:
    width = max(map(len, commands), default=0)
    return "\n".join(f"  {name.ljust(width)}  {line}" for name, line in commands.items())


# search path -> its groups text. OmegaConf resolves ``hydra.help.template`` whenever a config is
# merged into it, which Hydra does in every composition (the master config, each job's template):
# listing the groups takes ~0.35 s of config-repository copies, and the answer depends on the
# search path alone.
_GROUPS_TEXT: dict[tuple, str] = {}


def config_groups_text() -> str:
    """``group: option, option`` per line, as Hydra lists groups, for the groups users choose from."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    search_path = tuple((element.provider, element.path) for element in loader.get_search_path().get_path())
    if search_path not in _GROUPS_TEXT:
        _GROUPS_TEXT[search_path] = _list_groups(loader)
    return _GROUPS_TEXT[search_path]


def _list_groups(loader) -> str:
    from hydra.core.object_type import ObjectType

    def groups(parent: str) -> list[str]:
        found = []
        for name in loader.list_groups(parent):
            group = f"{parent}/{name}" if parent else name
            if group in HIDDEN_GROUPS:
                continue
            if loader.get_group_options(group, ObjectType.CONFIG):
                found.append(group)
            found += groups(group)
        return found

    return "\n".join(f"{group}: {', '.join(sorted(loader.get_group_options(group)))}" for group in sorted(groups("")))
