"""Command line: ``python -m vi_sweep {run,multirun,report,figures} ...``.

- ``run [overrides]``: one training run (Hydra's ``--cfg``, ``--help``, ``hydra.run.dir=`` ... work).
- ``multirun [overrides]``: a sweep (same as Hydra's ``-m``); with no overrides the default grid
  from ``conf/grid/default.yaml`` runs.
- ``report SWEEP_DIR``: classify the runs of a sweep and write ``SWEEP_DIR/report/``.
- ``figures [--check] [--only NAME]``: run the sweeps of the paper figures declared in
  ``analysis/figures.yaml``, draw them into ``analysis/img/`` with a manifest, or check them
  against it (:mod:`vi_sweep.figures_command`).

Before Hydra starts, the overrides are checked (:mod:`vi_sweep.launch.precheck`), so bad input is
one line on stderr, exit code 2, and no output directory is created.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn, Sequence

COMMANDS = ("run", "multirun", "report", "figures")
_INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


def _hydra_main() -> None:
    import hydra

    from vi_sweep.launch.config import CONF_DIR
    from vi_sweep.launch.task import task

    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from vi_sweep.analysis.report import main as report_main

        return report_main(args[1:])
    if args and args[0] == "figures":
        from vi_sweep.figures_command import main as figures_main

        return figures_main(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    elif args and args[0] == "multirun":
        args = ["--multirun", *args[1:]]
    if "--multirun" in args and any(flag in args for flag in _INSPECT_FLAGS):
        # Hydra refuses --multirun together with --cfg/--info; the config shown is the same.
        args = [a for a in args if a != "--multirun"]

    from hydra._internal.utils import get_args_parser

    from vi_sweep.launch.config import CONF_DIR, ConfigError
    from vi_sweep.launch.precheck import precheck

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
    except KeyboardInterrupt:  # Ctrl-C where no launcher counted the runs: every file written is whole
        print("vi_sweep: interrupted; rerun the same command to resume (finished runs are kept)", file=sys.stderr)
        status = 130
    exit_now(status)
