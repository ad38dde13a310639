"""Ctrl-C in a sweep: noted, so that whatever it breaks on its way out still ends as an interrupt;
held for the few milliseconds between a run file landing and the launcher counting it.

:func:`interrupts_noted` (the command line's and the batched launcher's): the first SIGINT is
noted (:func:`interrupt_noted`) and raised as ``KeyboardInterrupt``. Code that cleans up on the
way out may turn it into another exception -- OmegaConf, interrupted half-way through appending
to a list, raises an ``AttributeError`` from its ``finally`` -- and the note says it was the
interrupt all the same. A second SIGINT exits at once, quietly, with status 130 (every run file
is written atomically: none is left half-written).

:func:`interrupts_held`: a run file is written atomically (a temporary file, then ``os.replace``),
and the launcher counts it as written (its "interrupted: N of M runs written" line; what a rerun
resumes) right after. A SIGINT between the two raised ``KeyboardInterrupt`` with the file on disk
and uncounted. Held, the pair is one step: a SIGINT that arrives inside the block is delivered,
once, to whatever handler was in place, as soon as the block is left.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

_noted = False  # a SIGINT came while interrupts_noted's handler was in place
_depth = 0  # interrupts_noted blocks open

SAME_COMMAND = "rerun the same command"
_rerun = SAME_COMMAND  # how to run this sweep again: set_rerun
_how_to_resume: str | None = None  # what is left to do instead, once that is not a rerun: set_how_to_resume


def set_rerun(command: str) -> None:
    """How to run the sweep again (:func:`rerun`), once the caller knows: the launcher gives a sweep
    directory named by the time, which the same command would name anew. Both this and
    :func:`set_how_to_resume` are forgotten when the outermost :func:`interrupts_noted` block begins,
    and a sweep being launched is again resumed by a rerun."""
    global _rerun, _how_to_resume
    _rerun, _how_to_resume = command, None


def rerun() -> str:
    """``rerun the same command`` or, for a time-named sweep, ``... with hydra.sweep.dir=DIR``."""
    return _rerun


def set_how_to_resume(text: str | None) -> None:
    """What is left to do after a Ctrl-C when it is not a rerun (the multirun's report: the command
    that writes it); None: a rerun again."""
    global _how_to_resume
    _how_to_resume = text


def resume_hint() -> str:
    """What to do after a Ctrl-C, as far as this process knows."""
    return _how_to_resume or f"{_rerun} to resume"


def again_line() -> str:
    """The one line a second Ctrl-C leaves with (status 130)."""
    return f"vi_sweep: interrupted again: exiting now (every run file on disk is whole; {resume_hint()})"


def interrupt_noted() -> bool:
    """Whether a Ctrl-C came since the outermost :func:`interrupts_noted` block began (False where
    a user's handler, not the block's, had it)."""
    return _noted and signal.getsignal(signal.SIGINT) is _note_and_raise


def raise_if_interrupted(cause: BaseException | None = None) -> None:
    """Raise ``KeyboardInterrupt`` (from ``cause``) if a Ctrl-C was noted: an error that a Ctrl-C
    turned into on its way out (OmegaConf's, from a half-appended list, reads as a config error),
    or a Ctrl-C that someone's ``except Exception`` swallowed, is the Ctrl-C."""
    if interrupt_noted():
        raise KeyboardInterrupt from cause


def _note_and_raise(signum: int, frame: Any) -> None:
    global _noted
    if _noted:  # the second: the user wants out now, not after the tidy exit
        os.write(2, f"{again_line()}\n".encode())
        os._exit(130)
    _noted = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_noted() -> Iterator[None]:
    """Run the block with SIGINT noted (:func:`interrupt_noted`) and raised as ``KeyboardInterrupt``;
    a second SIGINT ends the process at once (status 130).

    Only over Python's own handler, in the main thread: a user's handler stays theirs, and an
    enclosing block's handler is this one already. Python's handler is back when the outermost
    block is left (a caller that wants a second Ctrl-C to end it at once to the last leaves the
    process inside the block, as ``python -m vi_sweep`` does).

    A Ctrl-C that lands where Python cannot raise it -- a garbage-collector callback (JAX has one),
    a ``__del__`` -- is printed as "Exception ignored" and dropped; while the block runs it is sent
    again instead, from a thread, and arrives a moment later where it can be raised.
    """
    global _noted, _depth, _rerun, _how_to_resume
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or handler not in (signal.default_int_handler, _note_and_raise):
        yield
        return
    outermost = _depth == 0
    if outermost:
        _noted, _rerun, _how_to_resume = False, SAME_COMMAND, None
        signal.signal(signal.SIGINT, _note_and_raise)
        previous_hook, sys.unraisablehook = sys.unraisablehook, functools.partial(_send_dropped_interrupt_again, sys.unraisablehook)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if outermost:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = previous_hook


def _send_dropped_interrupt_again(previous_hook: Callable[[Any], None], unraisable: Any) -> None:
    global _noted
    if not (issubclass(unraisable.exc_type, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is _note_and_raise):
        previous_hook(unraisable)
        return
    _noted = False  # not the user's second Ctrl-C: their first, again
    # A bare thread: threading.Thread.start waits for it to start, here, where a Ctrl-C is dropped again.
    _thread.start_new_thread(_interrupt_this_process, (0.01,))


def _interrupt_this_process(after: float) -> None:
    time.sleep(after)  # out of the callback that dropped it, most likely (if not, it is sent again)
    os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Run the block with SIGINT held; deliver one that came meanwhile when it ends.

    Python runs signal handlers in the main thread only, so elsewhere no ``KeyboardInterrupt`` can
    land in the block, and it just runs. The handler in place (Python's, a user's, ``SIG_IGN``) is
    put back, then the held signal raised again for it: what a Ctrl-C does is unchanged, only when.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # None: a handler set from C, which Python could not put back
        return
    global _noted
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            if len(held) > 1 and previous is _note_and_raise:
                _noted = True  # two came while held: the second ends the process at once, as it would have
            signal.raise_signal(signal.SIGINT)
