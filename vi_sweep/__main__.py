"""Command line: ``python -m vi_sweep {run,multirun,report,figures} ...`` (also ``vi-sweep ...``).

A thin dispatcher: each command is one line in :data:`COMMANDS` (``--help`` lists them) and one
branch in :func:`main`. ``run`` and ``multirun`` are Hydra's (:mod:`vi_sweep.launch.entry`: every
Hydra flag and extension point works, configuration errors are one line, exit code 2, nothing
written); ``report`` is the analysis library's (:mod:`vi_sweep.analysis.report`); ``figures``
runs and draws the paper figures declared in ``analysis/figures.yaml`` (:mod:`vi_sweep.figures_command`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn, Sequence

COMMANDS = {
    "run": "one training run (the default command): python -m vi_sweep run lr=0.05 num_mc=32",
    "multirun": "a sweep (also -m): lists, range(), glob(); a search with hydra/sweeper=optuna (+search=stability_edge)",
    "report": "classify a sweep's runs, write SWEEP_DIR/report/: python -m vi_sweep report SWEEP_DIR",
    "figures": "run the paper figures' sweeps, draw them into analysis/img/ (--check: compare with the manifest, --only NAME)",
}
_SINGLE_CONFIG_FLAGS = ("--info", "-i", "--shell-completion", "-sc", "--help", "-h", "--hydra-help")


def version_line() -> str:
    """``vi_sweep 0.1.0 (JAX 0.10.2, jaxlib 0.10.2, Hydra 1.3.8)``, without importing JAX."""
    from importlib.metadata import PackageNotFoundError, version

    from vi_sweep import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"vi_sweep {__version__} (JAX {installed('jax')}, jaxlib {installed('jaxlib')}, Hydra {installed('hydra-core')})"


def hydra_args(args: Sequence[str]) -> list[str]:
    """vi_sweep's command line as Hydra's: ``run`` dropped, ``multirun`` -> ``--multirun``.

    Hydra refuses ``--multirun`` together with ``--info``, ``--help`` and ``--shell-completion``;
    those show the same either way, so ``--multirun`` is dropped (``multirun --cfg`` shows every
    job's config: :func:`vi_sweep.launch.entry.show_jobs`).
    """
    args = list(args)
    if args[:1] == ["run"]:
        args = args[1:]
    elif args[:1] == ["multirun"]:
        args = ["--multirun", *args[1:]]
    if any(flag in args for flag in _SINGLE_CONFIG_FLAGS):
        args = [a for a in args if a not in ("--multirun", "-m")]
    return args


def completion_line(line: str) -> str:
    """A shell's command line (``COMP_LINE``) as Hydra's completion reads it: the program as one
    word (``python -m vi_sweep`` -> ``vi-sweep``) and no vi_sweep command (``run``, ``multirun``)."""
    words = line.split(" ")
    if len(words) >= 3 and words[1] == "-m":
        words = ["vi-sweep", *words[3:]]
    if len(words) >= 2 and words[1] in ("run", "multirun"):
        words = [words[0], *words[2:]]
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["report"]:
        from vi_sweep.analysis.report import main as report_main

        return report_main(args[1:])
    if args[:1] == ["figures"]:
        from vi_sweep.figures_command import main as figures_main

        return figures_main(args[1:])
    if "--version" in args:
        print(version_line())
        return 0
    from vi_sweep.launch.config import CONF_DIR

    if not (CONF_DIR / "config.yaml").is_file():
        print(f"vi_sweep: error: config directory {CONF_DIR} not found (a broken install? pip install vi_sweep again)", file=sys.stderr)
        return 2
    if "COMP_LINE" in os.environ and any(flag in args for flag in ("-sc", "--shell-completion")):
        os.environ["COMP_LINE"] = completion_line(os.environ["COMP_LINE"])
    from vi_sweep.launch.entry import run_hydra

    try:
        return run_hydra(hydra_args(args), COMMANDS)
    except SystemExit as stop:  # Hydra's --help and vi_sweep's one-line errors (StartGuard, the launcher) exit this way
        return exit_code(stop.code)


def exit_code(code: object) -> int:
    """The exit status ``sys.exit(code)`` gives (a non-integer code is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(code: object) -> NoReturn:
    """``sys.exit(code)`` without tearing the interpreter down.

    Every file is closed by then (atomic writers, the report); what is left is ~0.6 s of freeing
    JAX's runtime, compiled programs and thousands of config nodes one by one, which a sweep's
    wall time should not include. So: flush, close the logs, and leave.
    """
    code = exit_code(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a closed pipe (| head) or stream: nothing more to say there
            pass
        except OSError:  # a full disk: output was lost, which is a failure (Python's exit status 120)
            code = code or 120
    logging.shutdown()
    os._exit(code)


def cli() -> NoReturn:
    """The command (``python -m vi_sweep`` and the ``vi-sweep`` script alike): :func:`main`, its
    one-line errors as exit codes, a Ctrl-C as one line and status 130, then :func:`exit_now`.

    Ctrl-C is noted (:func:`vi_sweep.launch.interrupts.interrupts_noted`): an exception raised
    while a Ctrl-C unwinds the program (a half-updated config object's, say) is the interrupt
    too, and a second Ctrl-C leaves at once.
    """
    from vi_sweep.launch.interrupts import interrupt_noted, interrupts_noted, resume_hint

    with interrupts_noted():
        try:
            status: object = main()
        except SystemExit as stop:  # the one-line errors of the launcher and the task exit this way
            status = stop.code
        except BaseException as err:
            if not (isinstance(err, KeyboardInterrupt) or interrupt_noted()):
                raise
            # Ctrl-C where no launcher counted the runs (composing, the report): every file written is whole
            print(f"vi_sweep: interrupted; {resume_hint()} (finished runs are kept)", file=sys.stderr)
            status = 130
        exit_now(status)  # inside: a further Ctrl-C ends the process at once, to the last


if __name__ == "__main__":
    cli()
