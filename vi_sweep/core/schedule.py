"""Which steps of a run get a row: the notebook's logged steps, the last step, and the tail probes.

NumPy only (no JAX): the trainer builds its scan from these, and the analysis finds a run's tail
with the same definitions without importing the trainer.
"""

from __future__ import annotations

import numpy as np


def logged_steps(steps: int, log_every: int) -> np.ndarray:
    """The logged steps: the notebook's (t = 1 and every multiple of ``log_every``), and always the
    last step, so a run's final state is in its rows whatever ``steps % log_every`` is."""
    multiples = np.arange(log_every, steps + 1, log_every, dtype=np.int64)
    return np.unique(np.concatenate([[1], multiples, [steps]])).astype(np.int64)


TAIL_FRACTION = 0.2
"""The tail of a run: its last 20% of steps, on which the analysis judges where a run ended."""
TAIL_PROBES = 64
"""At least this many rows in the tail (when it has that many steps): the tail probes."""


def tail_start(steps, fraction: float = TAIL_FRACTION):
    """The tail is the steps ``t`` with ``tail_start(steps) < t <= steps``: the last ``fraction``
    of the steps (rounded up), never t = 1. ``steps`` may be an array of runs' step counts."""
    return np.maximum(np.asarray(steps) - np.ceil(np.round(fraction * np.asarray(steps, float), 9)).astype(np.int64), 1)


def max_rows(steps: int, log_every: int) -> int:
    """An upper bound on a run's rows (:func:`row_steps`), without building them (for size checks:
    ``steps`` may be 2**31)."""
    return steps // log_every + 2 + 2 * TAIL_PROBES


def tail_grid(steps: int) -> np.ndarray:
    """The tail probes' steps, ascending: every ``spacing`` steps back from the last one, down to
    :func:`tail_start` (exclusive), about :data:`TAIL_PROBES` of them. ``spacing`` is odd, so a
    cycle of period 2 or 4 is seen in all its phases, not in one."""
    start = int(tail_start(steps))
    spacing = max(1, (steps - start) // TAIL_PROBES)
    spacing -= 1 - spacing % 2  # the largest odd number <= spacing
    return np.arange(steps, start, -spacing, dtype=np.int64)[::-1]


def row_steps(steps: int, log_every: int) -> tuple[np.ndarray, np.ndarray]:
    """The steps that get a row, and which of them are tail probes (not logged steps).

    The logged steps (:func:`logged_steps`) and the tail grid (:func:`tail_grid`): so the tail
    carries the same evenly spaced samples for the analysis's tests whatever ``log_every`` is (a
    run logged every 200 steps would otherwise have 3 rows in a 400-step tail, and one logged
    every 2 steps 200 rows of another spacing).
    """
    logged = logged_steps(steps, log_every)
    every = np.union1d(logged, tail_grid(steps))
    return every, ~np.isin(every, logged)
