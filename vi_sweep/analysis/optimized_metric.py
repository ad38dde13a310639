r"""The number every job returns to Hydra's sweeper: one float to minimise, chosen by ``optimized_metric``.

A sweeper that searches (Optuna, Nevergrad, Ax) reads each job's return value and needs a
float. A run is summarised by its tail (:class:`TailSummary`: the median KL excess over the
same tail rows :mod:`vi_sweep.analysis.outcomes` judges, the final KL, whether a value went
non-finite), its exact twin (the ``objective=exact`` run with the same optimizer, lr, init,
target: :mod:`vi_sweep.store.baselines`) likewise, and the value is

``excess_over_exact`` (the default)
    ``tail_kl_excess - the exact twin's tail_kl_excess`` in nats: how much the Monte-Carlo
    gradient costs at this setting (the report's ``excess_over_exact`` column). 0 for an exact run.
``tail_kl_excess``
    the run's tail median KL excess over the mean-field optimum (no twin needed).
``final_kl``
    the KL after the last step (no twin needed).
``stability_edge``
    ``-lr`` when the run ends within the tolerance of its exact twin (``excess_over_exact <=
    tol_per_dim * d``, the ``converged`` test of the outcome rules without the trend tests),
    else ``excess_over_exact / tolerance`` (>= 1, growing with the distance): minimising it finds
    the largest lr that still converges, and any converging lr beats any that does not.

A run that hit a NaN or inf returns ``nonfinite_value`` (default ``1e9``: worse than any finite
value of any rule), whatever the rule. NumPy only: the launcher computes it as it writes a job.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional

import numpy as np

from vi_sweep.core.schedule import tail_grid

OPTIMIZED_METRICS = ("excess_over_exact", "tail_kl_excess", "final_kl", "stability_edge")
NEEDS_EXACT_TWIN = frozenset({"excess_over_exact", "stability_edge"})
DEFAULT_METRIC = "excess_over_exact"
DEFAULT_NONFINITE_VALUE = 1e9


class TailSummary(NamedTuple):
    """What a job's value is computed from: a few floats of one run's rows."""

    tail_kl_excess: float  # median KL excess over the tail rows
    final_kl: float  # KL after the last step
    nonfinite: bool  # a NaN or inf stopped its updates (or is in its rows)


def summarize(rows: Mapping[str, np.ndarray], steps: int, diverged_at: int) -> TailSummary:
    """A run's :class:`TailSummary` from its rows (``step``, ``kl``, ``kl_excess`` arrays).

    The tail is the trainer's tail grid (:func:`vi_sweep.core.schedule.tail_grid`), the rows
    :mod:`vi_sweep.analysis.outcomes` takes its medians over.
    """
    step = np.asarray(rows["step"])
    excess = np.asarray(rows["kl_excess"], np.float64)
    kl = np.asarray(rows["kl"], np.float64)
    tail = np.isin(step, tail_grid(int(steps)))
    nonfinite = bool(diverged_at) or not bool(np.all(np.isfinite(excess)))
    tail_excess = float(np.median(excess[tail])) if tail.any() and not nonfinite else math.nan
    return TailSummary(tail_excess, float(kl[-1]), nonfinite)


def job_value(
    metric: str,
    run: TailSummary,
    twin: Optional[TailSummary],
    *,
    lr: float,
    d: int,
    nonfinite_value: float = DEFAULT_NONFINITE_VALUE,
    tol_per_dim: Optional[float] = None,
) -> float:
    """The float a job returns under rule ``metric`` (see the module docstring).

    ``twin``: the exact twin's summary; required by the rules in :data:`NEEDS_EXACT_TWIN`.
    ``tol_per_dim``: the ``stability_edge`` tolerance, by default the outcome rules'
    (:class:`vi_sweep.analysis.outcomes.Thresholds`).
    """
    if metric not in OPTIMIZED_METRICS:
        raise ValueError(f"optimized_metric={metric!r}: must be one of {', '.join(OPTIMIZED_METRICS)}")
    if run.nonfinite:
        return float(nonfinite_value)
    if metric == "tail_kl_excess":
        return run.tail_kl_excess
    if metric == "final_kl":
        return run.final_kl
    if twin is None:
        raise ValueError(f"optimized_metric={metric} needs the run's exact twin")
    # A twin that itself went non-finite leaves nothing to compare with: the run's own excess stands.
    excess_over_exact = run.tail_kl_excess - (0.0 if twin.nonfinite else twin.tail_kl_excess)
    if metric == "excess_over_exact":
        return excess_over_exact
    if tol_per_dim is None:
        from vi_sweep.analysis.outcomes import Thresholds  # pandas: only for this rule

        tol_per_dim = Thresholds().tol_per_dim
    tolerance = tol_per_dim * d
    if excess_over_exact <= tolerance:
        return -float(lr)
    return excess_over_exact / tolerance
