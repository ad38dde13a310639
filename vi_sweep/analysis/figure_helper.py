"""A second process that draws report figures, so a report uses two cores.

Drawing is single-threaded Python (matplotlib), about 0.3 s a figure, and it is most of a
report's time. :class:`FigureHelper` starts a Python running :func:`main` (a fresh
interpreter: safe in a process running JAX's threads, where ``fork`` is not, and unlike
``multiprocessing``'s ``spawn`` it never re-imports the caller's ``__main__``). The helper
imports matplotlib and pandas (~0.6 s) while the caller does something else -- reads and
classifies the sweep, or, started by a multirun's ``SweepSummary`` callback, composes the
sweep -- then draws the jobs it is sent.

:func:`draw_all` shares a list of jobs between the two processes: the helper takes jobs from the
front, the caller from the back, until they meet. A job the helper fails on, the one it holds
if it dies (or is silent for :data:`JOB_TIMEOUT_S`), and every job if it never gets ready are
drawn by the caller, so the figures never depend on the helper; they are the same files either
way (same code, same rc, deterministic output).

Protocol (pickles over the helper's stdin/stdout): the helper writes ``"ready"`` once imported,
then answers each job with ``None`` (drawn) or an error message; the end of its input (or
``None``) means stop.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from typing import Any, BinaryIO, Callable, Optional, Sequence

READY = "ready"
JOB_TIMEOUT_S = 120.0  # a figure takes ~0.3 s; a helper silent this long is killed and its job drawn here
# SIGINT goes to the whole process group: the caller handles Ctrl-C (and kills the helper), so the
# helper ignores it from its first line, before its imports.
_HELPER_CODE = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); from vi_sweep.analysis.figure_helper import main; main()"


def _import_path() -> str:
    """The caller's ``sys.path`` as a PYTHONPATH ("" -- the cwd -- made absolute; non-paths left out)."""
    entries = []
    for entry in sys.path:
        try:
            path = os.fsdecode(os.fspath(entry))
        except TypeError:  # not a path (an import hook's object)
            continue
        entries.append(os.path.abspath(path) if path == "" else path)
    return os.pathsep.join(entries)


class FigureHelper:
    """The helper process (started at construction; :meth:`close` ends it)."""

    def __init__(self) -> None:
        # Import exactly what the caller imports: its sys.path, and not the cwd that ``-c`` would
        # put first (PYTHONSAFEPATH), where a user's own ``analysis`` package may live.
        env = dict(os.environ, PYTHONPATH=_import_path(), PYTHONSAFEPATH="1")
        self.proc = subprocess.Popen(
            # ``-c``, not ``-m``: SIGINT is ignored before any import (see _HELPER_CODE)
            [sys.executable, "-c", _HELPER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Silent: it may start with a sweep that then fails with one line, and what it could
            # say (a matplotlib warning) the caller says too when it draws; errors come back
            # over the protocol, and their figures are drawn by the caller.
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def close(self, *, kill: bool = False) -> None:
        """End the helper and reap it: it stops at the end of its input (after the job it is
        on), or at once with ``kill`` (the caller is failing and will remove what it wrote)."""
        if kill:
            self.proc.kill()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # end of input: the helper's loop returns
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_helper(cores: int) -> Optional[FigureHelper]:
    """A helper if there is a second core and a process can be started, else None."""
    if cores < 2:
        return None
    try:
        return FigureHelper()
    except Exception:  # noqa: BLE001 - no helper, for whatever reason: the caller draws everything
        return None


def draw_all(jobs: Sequence[Any], draw: Callable[[Any], Any], helper: Optional[FigureHelper]) -> None:
    """``draw(job)`` for every job, here and in the helper (see the module docstring)."""
    lock = threading.Lock()
    bounds = [0, len(jobs)]  # jobs[front:back] are not taken yet
    failed: list[int] = []

    def take(front: bool) -> Optional[int]:
        with lock:
            if bounds[0] >= bounds[1]:
                return None
            if front:
                bounds[0] += 1
                return bounds[0] - 1
            bounds[1] -= 1
            return bounds[1]

    ready = threading.Event()
    held: list[Optional[int]] = [None]  # the job the helper is drawing

    def feed() -> None:
        assert helper is not None and helper.proc.stdin is not None and helper.proc.stdout is not None
        try:
            if pickle.load(helper.proc.stdout) != READY:
                return
            ready.set()
            while (index := take(front=True)) is not None:
                held[0] = index
                pickle.dump(jobs[index], helper.proc.stdin)
                helper.proc.stdin.flush()
                if pickle.load(helper.proc.stdout) is not None:  # the helper's error: draw it here
                    failed.append(index)
                held[0] = None
        except BaseException:  # noqa: BLE001 - the helper died, was killed, or a job would not pickle
            if held[0] is not None:
                failed.append(held[0])  # draw it here

    feeder = threading.Thread(target=feed, daemon=True) if helper is not None else None
    if feeder is not None:
        feeder.start()
    while (index := take(front=False)) is not None:
        draw(jobs[index])
    if feeder is not None:
        assert helper is not None
        # Every job is taken. A helper not ready by now holds none: stop waiting for it. One
        # drawing gets JOB_TIMEOUT_S; after that it is killed and its job drawn here.
        feeder.join(timeout=JOB_TIMEOUT_S if ready.is_set() else 0.0)
        if feeder.is_alive():
            helper.proc.kill()
            feeder.join()
    for index in sorted(failed):
        draw(jobs[index])  # an error here is the caller's to raise


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The helper's loop: draw each job read from ``stdin`` with :func:`vi_sweep.analysis.render.render_figure`."""
    from vi_sweep.analysis.render import render_figure

    pickle.dump(READY, stdout)
    stdout.flush()
    while True:
        try:
            job = pickle.load(stdin)
        except (EOFError, pickle.UnpicklingError):  # the caller closed our input: done
            return
        if job is None:
            return
        try:
            render_figure(job)
            answer = None
        except Exception as err:  # noqa: BLE001 - reported to the caller, which draws the job itself
            answer = f"{type(err).__name__}: {err}"
        pickle.dump(answer, stdout)
        stdout.flush()


def main() -> None:
    """The helper process (started with :data:`_HELPER_CODE`)."""
    # The protocol owns the original stdout; anything else printed here goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    try:
        serve(sys.stdin.buffer, protocol)
    except OSError:  # the caller is gone (a broken pipe): e.g. a sweep that failed while we imported
        pass
    # Every figure is written and closed by now: skip the interpreter's teardown (~0.1 s of
    # freeing matplotlib and pandas), which the caller would otherwise wait for in close().
    for stream in (protocol, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
