"""Phase table: one row per cell of a sweep (every swept config key but the seed).

A **cell** is a set of runs that differ only by seed. Per cell: ``n_runs``, the fraction of runs
with each outcome (``frac_converged`` ... ``frac_diverged``), the majority ``outcome`` and its
fraction, the median KL excess over the exact baseline with a bootstrap percentile interval and
that interval's *exact* coverage (:func:`order_statistic_coverage`: a nominal 95% interval from
3 seeds covers the median only 75% of the time), and the median time-to-tolerance ratio.
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np
import pandas as pd

from vi_sweep.analysis.outcomes import OUTCOMES
from vi_sweep.analysis.read import SweepError, config_columns

SEVERITY = ("diverged", "collapsed", "unstable", "stalled", "undetermined", "slow", "converged")
"""Tie-break order of the majority outcome: worst first, so a 1-1-1 split never reads as success."""

ALWAYS_KEYS = ("lr", "num_mc")  # the phase map's axes: kept as columns even when not swept


def cell_keys(runs: pd.DataFrame) -> list[str]:
    """The swept config columns of ``runs`` minus ``seed``, plus lr and num_mc (the phase map's axes).

    A hyperparameter column (``optimizer_*``, ``target_*``) counts as swept only if it varies for
    one optimizer (target): in a sweep over ``optimizer=adam,sgd`` the column ``optimizer_b1`` is
    0.9 for Adam and empty for SGD, which the ``optimizer`` column already says.
    """
    keys = []
    for column in config_columns(runs):
        if column == "seed":
            continue
        group = column.split("_", 1)[0] if column.startswith(("optimizer_", "target_")) else None
        if group is not None and group in runs.columns:
            swept = runs.groupby(group, dropna=False)[column].nunique(dropna=False).max() > 1
        else:
            swept = runs[column].nunique(dropna=False) > 1
        if column in ALWAYS_KEYS or swept:
            keys.append(column)
    return keys


PHASE_AXES = ("lr", "num_mc")  # what a phase map shows on its axes
SERIES_KEYS = ("estimator", "optimizer")  # what a comparison of trajectories draws as lines, when swept


def series_keys(runs: pd.DataFrame, series: Sequence[str] | None = None) -> list[str]:
    """The keys whose values are drawn as separate lines: ``series``, default the swept ones of
    :data:`SERIES_KEYS` (a sweep over ``objective.estimator=reparam,stl,score`` gives ``["estimator"]``)."""
    if series is not None:
        _check_columns(runs, series, "series")
        return list(series)
    swept = cell_keys(runs)
    return [key for key in SERIES_KEYS if key in swept]


def facet_keys(runs: pd.DataFrame, facet_by: Sequence[str] | None = None, *, shown: Sequence[str] = PHASE_AXES) -> list[str]:
    """The keys with one panel (or figure) per value: ``facet_by``, default every swept key not ``shown``.

    ``shown`` are the keys a figure shows otherwise (a phase map's axes, the lines of a
    comparison). Every swept key must be shown or faceted: a key left out would pool runs that
    differ in it as if they were seeds (and a table of one row per lr x num_mc could not be
    made: pandas' "Index contains duplicate entries"), so that is a :class:`SweepError` naming it.
    """
    swept = [key for key in cell_keys(runs) if key not in shown]
    if facet_by is None:
        return swept
    _check_columns(runs, facet_by, "facet_by")
    missing = [key for key in swept if key not in facet_by and runs[key].nunique(dropna=False) > 1]
    if missing:
        raise SweepError(f"{', '.join(missing)} also varies in this sweep: facet by it too, or select one value first")
    return list(facet_by)


def _check_columns(runs: pd.DataFrame, keys: Sequence[str], what: str) -> None:
    if isinstance(keys, str):
        raise SweepError(f"{what}: expected a list of config keys, got the string {keys!r}")
    unknown = [key for key in keys if key not in runs.columns]
    if unknown:
        raise SweepError(f"{what}: {', '.join(map(str, unknown))} is not a config column of this sweep (swept: {', '.join(cell_keys(runs))})")


def majority_outcome(counts: pd.DataFrame) -> pd.Series:
    """Most frequent outcome per row of an (cells x outcomes) count table; ties go to the worse one."""
    ordered = counts[list(SEVERITY)].to_numpy()
    return pd.Series(np.asarray(SEVERITY)[ordered.argmax(axis=1)], index=counts.index)


def bootstrap_median_interval(
    values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (NaNs dropped).

    Resamples ``values`` with replacement ``n_boot`` times and returns the
    ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the resampled medians (Efron &
    Tibshirani 1993, ch. 13). With 3 seeds the interval is coarse by nature: it can only take
    values among the data points' medians of resamples.
    """
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    draws = values[rng.integers(0, len(values), size=(n_boot, len(values)))]
    medians = np.median(draws, axis=1)
    # inverted_cdf picks resampled medians themselves (no interpolation), so an infinite excess
    # (a KL that overflowed) gives an infinite bound instead of inf - inf = NaN.
    low, high = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(low), float(high)


def order_statistic_coverage(values: np.ndarray, low: float, high: float) -> float:
    r"""The exact probability that ``[low, high]`` covers the population median, if they are data points.

    For n i.i.d. draws from a continuous distribution, the interval between the j-th and k-th
    order statistics covers the median with probability
    :math:`\sum_{i=j}^{k-1} \binom{n}{i} 2^{-n}`, whatever the distribution (the sign test's
    argument, e.g. Hollander & Wolfe 1999, §3.6). A percentile-bootstrap interval of the median
    returns data points, so this is its actual confidence: with n = 3 seeds the bootstrap's
    nominal 95% interval is [min, max], which covers the median with probability 1 - 2/2^3 = 75%.
    Ties are resolved to the widest ranks. NaN if the bounds are not data points.
    """
    values = np.sort(values[~np.isnan(values)])
    n = len(values)
    if n == 0 or not (np.any(values == low) and np.any(values == high)):
        return float("nan")
    j = int(np.searchsorted(values, low, side="left")) + 1  # 1-based rank of the lower bound
    k = int(np.searchsorted(values, high, side="right"))  # 1-based rank of the upper bound
    ranks = np.arange(j, k)
    return float(sum(math.comb(n, int(i)) for i in ranks) / 2.0**n)


def _cell_rng(seed: int, key: tuple) -> np.random.Generator:
    """An RNG per cell, seeded by the cell's key: a cell's interval does not depend on the other cells."""
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


def phase_table(
    runs: pd.DataFrame, *, keys: list[str] | None = None, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """One row per cell of a classified runs table (:func:`vi_sweep.analysis.load.load_sweep`).

    Parameters
    ----------
    runs
        One row per run with ``outcome``, ``excess_over_exact``, ``time_to_tol_ratio`` and config columns.
    keys
        The cell keys; default :func:`cell_keys` (every swept key but ``seed``, plus lr, num_mc).
    n_boot, level, seed
        Bootstrap resamples, interval level and RNG seed of the median-excess interval.

    Returns
    -------
    DataFrame sorted by ``keys`` with the keys, ``n_runs``, ``frac_<outcome>`` for every outcome,
    ``outcome`` (majority; ties go to the worse outcome, :data:`SEVERITY`), ``outcome_frac``,
    ``excess_over_exact_median``/``_lo``/``_hi`` (nats), ``excess_over_exact_coverage`` (the interval's exact
    probability of covering the median), ``excess_over_exact_per_dim_median``,
    ``tail_kl_median``, ``baseline_tail_kl``, ``baseline_outcome``, ``tail_sigma_min_median``
    and ``time_to_tol_ratio`` (median over the cell's
    runs; ``inf`` when most runs never reach the tolerance their baseline reaches).
    """
    keys = list(keys) if keys is not None else cell_keys(runs)
    # Group positions once; every statistic is then a vectorised pass over the cells.
    codes = runs.groupby(keys, dropna=False, sort=True, observed=True).ngroup().to_numpy()
    first = pd.Series(np.arange(len(runs))).groupby(codes).first().to_numpy()
    table = runs.iloc[first][keys].reset_index(drop=True)
    n_runs = np.bincount(codes)
    table["n_runs"] = n_runs
    outcome = pd.Categorical(runs["outcome"].astype(str), categories=list(OUTCOMES)).codes
    tally = np.zeros((len(table), len(OUTCOMES)))
    np.add.at(tally, (codes, outcome), 1)
    for i, name in enumerate(OUTCOMES):
        table[f"frac_{name}"] = tally[:, i] / n_runs
    fractions = pd.DataFrame(tally / n_runs[:, None], columns=list(OUTCOMES))
    table["outcome"] = pd.Categorical(majority_outcome(fractions), categories=list(OUTCOMES))
    table["outcome_frac"] = fractions.max(axis=1).to_numpy()

    by_cell = runs.assign(_cell=codes).groupby("_cell")
    medians = by_cell[["excess_over_exact", "tail_kl", "baseline_tail_kl", "tail_sigma_min"]].median()
    table["excess_over_exact_median"] = medians["excess_over_exact"].to_numpy()
    intervals = np.array(
        [
            bootstrap_median_interval(runs["excess_over_exact"].to_numpy(np.float64)[members], n_boot=n_boot, level=level, rng=_cell_rng(seed, _key(table, keys, cell)))
            for cell, members in sorted(by_cell.indices.items())
        ]
    ).reshape(-1, 2)
    table["excess_over_exact_lo"], table["excess_over_exact_hi"] = intervals[:, 0], intervals[:, 1]
    excess = runs["excess_over_exact"].to_numpy(np.float64)
    table["excess_over_exact_coverage"] = [
        order_statistic_coverage(excess[members], lo, hi)
        for (cell, members), lo, hi in zip(sorted(by_cell.indices.items()), intervals[:, 0], intervals[:, 1])
    ]
    table["excess_over_exact_per_dim_median"] = table["excess_over_exact_median"] / runs["d"].to_numpy(np.float64)[first]
    table["tail_kl_median"] = medians["tail_kl"].to_numpy()
    table["baseline_tail_kl"] = medians["baseline_tail_kl"].to_numpy()
    table["baseline_outcome"] = runs["baseline_outcome"].to_numpy()[first]  # one baseline per cell
    table["tail_sigma_min_median"] = medians["tail_sigma_min"].to_numpy()
    # pandas' median skips NaN (the baseline never reached the level) and keeps inf (the run never did).
    table["time_to_tol_ratio"] = by_cell["time_to_tol_ratio"].median().to_numpy()
    table.attrs["cell_keys"] = keys
    return table


def _key(table: pd.DataFrame, keys: list[str], cell: int) -> tuple:
    return tuple(_plain(table.at[cell, k]) for k in keys)


def example_cells(cells: pd.DataFrame, keys: list[str] | None = None) -> list[dict]:
    """The clearest cell of each outcome present, in :data:`OUTCOMES` order (for KL-curve figures).

    For each outcome: the cells with the highest fraction of it, then the clearest among them --
    converged: the largest lr (the most aggressive step that still converges); slow: the smallest
    lr; stalled: the largest median KL excess; collapsed: the smallest tail min sigma; diverged:
    the largest tail KL. Remaining ties go to the first cell in sorted order.
    """
    keys = list(keys) if keys is not None else [c for c in cells.columns if c in set(cells.attrs.get("cell_keys", ["lr", "num_mc"]))]
    clearest = {
        "converged": ("lr", False),
        "slow": ("lr", True),
        "stalled": ("excess_over_exact_median", False),
        "undetermined": ("lr", True),
        "unstable": ("tail_kl_median", False),
        "collapsed": ("tail_sigma_min_median", True),
        "diverged": ("tail_kl_median", False),
    }
    chosen = []
    for name in OUTCOMES:
        share = cells[f"frac_{name}"]
        if share.max() <= 0 or (cells["outcome"].astype(str) != name).all():
            continue
        best = cells[(share == share.max()) & (cells["outcome"].astype(str) == name)]
        column, ascending = clearest[name]
        best = best.sort_values(column, ascending=ascending, kind="stable")
        chosen.append({k: _plain(best.iloc[0][k]) for k in keys})
    return chosen


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
