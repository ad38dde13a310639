"""Hold a Ctrl-C for the few milliseconds between a run file landing and the launcher counting it.

A run file is written atomically (a temporary file, then ``os.replace``), and the launcher counts
it as written (its "interrupted: N of M runs written" line; what a rerun resumes) right after.
A SIGINT between the two raised ``KeyboardInterrupt`` with the file on disk and uncounted.
:func:`interrupts_held` makes the pair one step: a SIGINT that arrives inside the block is noted
and delivered, once, to whatever handler was in place, as soon as the block is left.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Run the block with SIGINT held; deliver one that came meanwhile when it ends.

    Python runs signal handlers in the main thread only, so elsewhere no ``KeyboardInterrupt`` can
    land in the block, and it just runs. The handler in place (Python's, a user's, ``SIG_IGN``) is
    put back, then the held signal raised again for it: what a Ctrl-C does is unchanged, only when.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)
