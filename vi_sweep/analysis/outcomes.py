r"""Classifying every run against its exact-gradient twin: converged, slow, stalled, unstable, collapsed, diverged, undetermined.

Every statistic is computed on a run's **tail**: its rows whose step lies in the last
``tail_fraction`` (20%) of its steps -- never t = 1. Whatever ``log_every`` is, the trainer gives
the tail about 64 rows (tail probes, :func:`vi_sweep.core.schedule.row_steps`) at an odd
spacing, so the tests below see the same tail at ``log_every`` 2, 20 or 200. Let ``d`` be the
dimension, ``tol = tol_per_dim * d`` (1 nat at d = 100) and ``excess`` the KL excess over the
mean-field optimum q* (the ``kl_excess`` column: ``ELBO(q*) - ELBO(q)`` on every target).
``tail_kl_excess`` is the median over the tail.

The trend of a tail (:func:`tail_trend`): the OLS slope of ``log excess`` against the step, with
a standard error corrected for the rows' autocorrelation (a run at its noise floor relaxes over
~1/lr steps, so neighbouring rows are far from independent): with ``r`` the lag-1
autocorrelation of the residuals of a quadratic fit (0 if negative; the quadratic absorbs the
smooth bend of a run that is still settling, which is not noise), the effective sample size is
``n_eff = n (1 - r) / (1 + r)`` and the standard error is inflated by ``sqrt((1 + r)/(1 - r))``;
the t statistic is compared with Student's t on ``max(1, floor(n_eff - 2))`` degrees of freedom,
one-sided at ``trend_alpha`` each way (the effective-sample-size correction of Santer et al. 2000,
"Statistical significance of trends and trend differences in layer-average atmospheric
temperature time series", JGR 105). Measured on stationary runs (``benchmarks/calibrate_outcomes.py``,
288 runs each): 1.0-1.4% called falling and 2.1% rising at alpha = 0.01, the same at every
``log_every``; every still-falling Adam run (96 of 96) called falling.
``falling`` / ``rising`` are the significant trends; a tail with neither and ``n_eff <
min_effective_samples`` cannot be told from noise: it is *undetermined*, not flat.

A tail **bursts** when the spread of its excess is far beyond a noise floor's: at a stationary
noise floor the excess is a sum of about ``2 d`` squared Gaussian deviations, so its
90%/10% quantile ratio is about that of a chi-square with ``2 d`` degrees of freedom (1.3 at
d = 100, 7 at d = 2); a tail whose ratio exceeds ``burst_factor`` (3) times that, with its 90%
quantile above the tolerance, bursts (:func:`noise_floor_spread`).

**The exact twin** (``objective=exact``, the run's baseline) has one of: ``diverged`` (see below),
``converged`` (``tail_kl_excess <= tol``), ``slow`` (not converged, falling), ``unstable``
(neither: a deterministic run that neither converges nor falls is locked in a cycle or an
oscillation, e.g. plain SGD at 1 < lr < 2 alternates between two KLs forever; more steps do not
help). An exact run draws no noise, so "falls" is read off directly: the mean excess of its
tail's last quarter is at least 0.1% below its first quarter's (:data:`EXACT_DECLINE`).

**A run** gets the first that applies:

``diverged``
    a non-finite value at any step (the trainer's ``diverged`` flag, or a non-finite excess or
    sigma in a row), or it went away from the optimum: its tail excess is above the target's
    scale, ``divergence_per_dim * d`` (5 nats/dim), *and* some row's excess exceeded the excess
    it started from (``init_kl_excess``, before the first step). Both are relative to the
    target and to the run itself, never to the initial KL alone: a run started far away (a large
    ``init_kl_excess``, e.g. a shifted mean) is judged as one started near, and a noise floor
    near the optimum is not a divergence unless it is 5 nats/dim high.
``collapsed``
    the tail's smallest sigma is below ``collapse_ratio`` times the smallest sigma of q* (the
    mean-field optimum: for a Gaussian target ``sigma_i* = P_ii^(-1/2)``), and the exact twin's is
    not: a collapse its exact twin shares (a start at ``init_log_sigma = -10``) is not the MC
    estimator's doing.
``unstable``
    the exact twin is ``unstable`` (the step size cycles even without noise), or the tail rises
    significantly, or it bursts.
``converged``
    ``tail_kl_excess <= reference + tol``, the reference being the exact twin's tail excess if it
    converged and 0 otherwise (matching an exact run that has not converged is not convergence).
``slow``
    the tail is still falling, or it cannot be told from noise while the exact twin is still
    falling (the step budget is too short for this lr).
``undetermined``
    the tail is too short for its noise: no significant trend, and ``n_eff <
    min_effective_samples`` (5), or fewer than ``min_tail_rows`` rows in the tail. More steps (a
    longer tail) decide it. ``reason`` says so.
``stalled``
    none of the above: a stationary noise floor above the reference.

``reason`` holds a one-line reason for each run's outcome, with the numbers it was decided on.

Also per run: ``excess_over_exact = tail_kl_excess - the exact twin's tail_kl_excess`` (nats),
and the time to tolerance: the first logged step from which the run *stays* within
``reference + tol`` to its end (a run that touches the tolerance and leaves it again has not
reached it), divided by the exact twin's; ``inf`` if only the exact twin gets there, NaN if it
does not.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd

from vi_sweep.analysis.read import Sweep
from vi_sweep.analysis.references import References
from vi_sweep.core.schedule import TAIL_FRACTION, tail_grid, tail_start

OUTCOMES = ("converged", "slow", "stalled", "undetermined", "unstable", "collapsed", "diverged")
"""Every outcome, from best to worst (also the order of ``frac_*`` columns and legends)."""
BASELINE_OUTCOMES = ("converged", "slow", "unstable", "diverged")
"""The outcomes an exact (deterministic) run can have."""

LOG_FLOOR = 1e-30  # KL excesses below this are "zero" for the log-trend (float32 underflows near 1e-38)
EXACT_DECLINE = 1e-3
"""An exact run is still falling if its tail's last quarter is at least 0.1% below its first
(float32 round-off moves a deterministic run's KL by ~1e-7; a cycle, sampled in all its phases
by the odd-spaced tail probes, does not move its quarter means at all)."""


@dataclass(frozen=True)
class Thresholds:
    """The classifier's thresholds (keyword arguments of :func:`vi_sweep.analysis.load.load_sweep`).

    Attributes
    ----------
    tail_fraction
        The tail is the rows in the last ``tail_fraction`` of a run's steps (0.2). The trainer's
        tail probes fill the last 20%; another fraction uses whatever rows it contains.
    min_tail_rows
        A run with fewer rows in its tail is ``undetermined`` (4: the trend's quadratic needs a residual).
    tol_per_dim
        Tolerance above the reference excess, in nats per dimension (0.01: 1 nat at d = 100).
    collapse_ratio
        A tail min sigma below ``collapse_ratio`` times the smallest sigma of q* is a collapse.
    divergence_per_dim
        A run that moved away from the optimum is ``diverged`` if its tail excess is above
        ``divergence_per_dim * d`` (5 nats/dim: on N(0, I) with d = 100 the default grid's Adam
        runs at lr = 10 end at 45-54 nats/dim, its collapsed runs at lr = 1, num_mc = 1 at about
        1, and no noise floor of the default grid above 0.13).
    trend_alpha
        One-sided significance level of each trend test, falling and rising (0.01).
    min_effective_samples
        Below this effective sample size of the tail (autocorrelation-corrected), a tail without
        a significant trend is ``undetermined`` rather than flat (5: the trend test then has at
        least 3 degrees of freedom). The calibration benchmark (``benchmarks/calibrate_outcomes.py``)
        measures the false-trend rates and the power the tests have.
    burst_factor
        A tail bursts when its 90%/10% quantile ratio exceeds this times a noise floor's (3).
    """

    tail_fraction: float = 0.2
    min_tail_rows: int = 4
    tol_per_dim: float = 0.01
    collapse_ratio: float = 1e-3
    divergence_per_dim: float = 5.0
    trend_alpha: float = 0.01
    min_effective_samples: float = 5.0
    burst_factor: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.tail_fraction <= 1:
            raise ValueError(f"tail_fraction={self.tail_fraction} must be in (0, 1]")
        if self.min_tail_rows < 4:
            raise ValueError(f"min_tail_rows={self.min_tail_rows} must be >= 4")
        if not (self.tol_per_dim >= 0 and self.collapse_ratio >= 0 and self.divergence_per_dim >= 0 and 0 < self.trend_alpha < 0.5):
            raise ValueError("tol_per_dim, collapse_ratio and divergence_per_dim must be >= 0 and trend_alpha in (0, 0.5)")
        if not (self.min_effective_samples >= 3 and self.burst_factor >= 1):
            raise ValueError("min_effective_samples must be >= 3 and burst_factor >= 1")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Trend(NamedTuple):
    """The trend test of a batch of tails (arrays of shape ``(runs,)``)."""

    slope: np.ndarray  # per step, of log excess
    t: np.ndarray  # the autocorrelation-corrected t statistic
    n_eff: np.ndarray  # effective sample size
    critical_t: np.ndarray  # one-sided critical value at trend_alpha on max(1, floor(n_eff - 2)) dof
    falling: np.ndarray  # bool
    rising: np.ndarray  # bool


def tail_trend(steps: np.ndarray, excess: np.ndarray, alpha: float) -> Trend:
    r"""The autocorrelation-corrected trend test of ``log(excess)`` against ``steps``, row by row.

    With :math:`y = \log\max(v, 10^{-30})` and :math:`x` the step: :math:`\hat b` is the OLS
    slope of the line through :math:`(x, y)`. The noise around the trend is measured on the
    residuals :math:`e` of a *quadratic* fit, so that a smooth bend in a run that is still
    settling (curvature, not noise) is not mistaken for slowly varying noise. With
    :math:`r = \max(0, \sum e_i e_{i+1} / \sum e_i^2)`:

    .. math::
        n_{\text{eff}} = n\,\frac{1 - r}{1 + r},\qquad
        \widehat{\mathrm{se}} = \sqrt{\frac{\sum e^2/(n - 3)}{\sum (x - \bar x)^2}}\,\sqrt{\frac{1 + r}{1 - r}},\qquad
        t = \hat b / \widehat{\mathrm{se}}.

    A straight line or parabola (no residual) has :math:`t = \pm\infty` (or 0 if it is flat).

    Parameters
    ----------
    steps
        Shape ``(n,)``, ``n >= 4``: the tail's steps (the same for every run of the batch).
    excess
        Shape ``(runs, n)``: KL excesses (>= 0).
    alpha
        One-sided level of each test.
    """
    runs, n = excess.shape
    x = (steps.astype(float) - steps.mean()) / max(float(np.ptp(steps)), 1.0)  # scaled: the quadratic stays well conditioned
    sxx = float(np.sum(x * x))
    y = np.log(np.maximum(excess, LOG_FLOOR))
    y = y - y.mean(axis=1, keepdims=True)
    slope = (y @ x) / sxx
    design = np.stack([np.ones(n), x, x * x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y.T, rcond=None)
    residual = y - (design @ coefficients).T
    sse = np.sum(residual * residual, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(sse > 0, np.sum(residual[:, 1:] * residual[:, :-1], axis=1) / sse, 0.0)
        r = np.clip(r, 0.0, 1.0 - 1e-9)
        n_eff = n * (1.0 - r) / (1.0 + r)
        se = np.sqrt(sse / (n - 3) / sxx) * np.sqrt((1.0 + r) / (1.0 - r))
        t = np.where(se > 0, slope / se, np.sign(slope) * np.inf)
    t = np.where((se == 0) & (slope == 0), 0.0, t)
    slope = slope / max(float(np.ptp(steps)), 1.0)  # per step
    dof = np.maximum(1, np.floor(n_eff - 2)).astype(int)
    critical = np.array([falling_critical_t(int(k), alpha) for k in dof]) if runs else np.zeros(0)
    return Trend(slope, t, n_eff, critical, t < -critical, t > critical)


def noise_floor_spread(d: np.ndarray) -> np.ndarray:
    r"""The 90%/10% quantile ratio of a chi-square with :math:`k = 2d` degrees of freedom (Wilson-Hilferty).

    :math:`\chi^2_p \approx k\,(1 - \tfrac{2}{9k} + z_p\sqrt{2/(9k)})^3`, accurate to a few percent
    for :math:`k \ge 2`: the spread of a stationary noise floor's KL excess, a sum of about
    :math:`2d` squared Gaussian deviations (one for each mean and each log-sigma coordinate).
    """
    k = 2.0 * np.asarray(d, float)
    z = NormalDist().inv_cdf(0.9)
    centre, scale = 1.0 - 2.0 / (9.0 * k), np.sqrt(2.0 / (9.0 * k))
    high = (centre + z * scale) ** 3
    low = np.maximum(centre - z * scale, 1e-3) ** 3
    return high / low


def falling_critical_t(dof: int, alpha: float) -> float:
    r"""The one-sided critical value :math:`t_{1-\alpha, \nu}` of Student's t with :math:`\nu` = ``dof`` (6.31 at dof 1, alpha 0.05).

    Solved in :math:`\theta = \arctan(t/\sqrt\nu)` from the closed form of :func:`abs_t_cdf`:
    :math:`A(\theta) = 1 - 2\alpha` by Newton's method, with
    :math:`A'(\theta) = \frac{2\,\Gamma((\nu+1)/2)}{\sqrt\pi\,\Gamma(\nu/2)} \cos^{\nu-1}\theta`.
    :math:`A` is increasing and concave, and the start (the normal quantile) lies below the root
    (t has the heavier tails), so the iterates increase monotonically to it; they stop when
    round-off stops the steps shrinking. Agrees with ``scipy.stats.t.ppf`` to ~1e-12 relative
    (1e-10 at dof 1e5), without importing scipy for one number.
    """
    if dof < 1:
        raise ValueError(f"dof={dof} must be >= 1")
    if alpha > 0.5:
        return -falling_critical_t(dof, 1.0 - alpha)
    target = 1.0 - 2.0 * alpha
    scale = 2.0 * math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(math.pi)
    theta = math.atan(NormalDist().inv_cdf(1.0 - alpha) / math.sqrt(dof))
    last = math.inf
    for _ in range(100):
        step = (target - abs_t_cdf(theta, dof)) / (scale * math.cos(theta) ** (dof - 1))
        if abs(step) >= last:
            break
        theta += step
        last = abs(step)
    return math.sqrt(dof) * math.tan(theta)


def abs_t_cdf(theta: float, dof: int) -> float:
    r""":math:`A = P(|T| \le \sqrt\nu \tan\theta)` for Student's t with an integer :math:`\nu` = ``dof`` (Abramowitz & Stegun 26.7.3-4).

    With :math:`c = \cos^2\theta`,

    .. math::
        \nu \text{ even:}\quad A = \sin\theta \sum_{k=0}^{\nu/2 - 1} a_k c^k,\quad a_0 = 1,\ a_k = a_{k-1}\tfrac{2k-1}{2k};
        \qquad
        \nu \text{ odd:}\quad A = \tfrac2\pi\Big[\theta + \sin\theta\cos\theta \sum_{k=0}^{(\nu-3)/2} b_k c^k\Big],\quad b_0 = 1,\ b_k = b_{k-1}\tfrac{2k}{2k+1}

    (the sum is empty at :math:`\nu = 1`: :math:`A = 2\theta/\pi`). All terms are positive, so the
    sum is accurate to about :math:`\nu` ulps.
    """
    c = math.cos(theta) ** 2
    if dof % 2 == 0:
        k = np.arange(1, dof // 2)
        return math.sin(theta) * (1.0 + float(np.sum(np.cumprod((2 * k - 1) / (2 * k)) * c**k)))
    if dof == 1:
        return 2.0 * theta / math.pi
    k = np.arange(1, (dof - 1) // 2)
    return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * (1.0 + float(np.sum(np.cumprod(2 * k / (2 * k + 1)) * c**k))))


def _blocks(trajectories: pd.DataFrame, run_ids: np.ndarray, layout: np.ndarray, n_rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group runs by their row layout; yield (positions into run_ids, row indices of shape (runs, n)).

    ``layout`` identifies the steps a run's rows are at (its ``(steps, log_every)``). The long
    table is sorted by run then step (it is built that way), so a run's rows are a contiguous
    slice and runs with one layout stack into one 2-D array: no per-run Python loop.
    """
    run_column = trajectories["run"].to_numpy()
    starts = np.searchsorted(run_column, run_ids)
    _, codes = np.unique(layout, axis=0, return_inverse=True)
    for code in np.unique(codes):
        members = np.flatnonzero(codes.ravel() == code)
        n = int(n_rows[members[0]])
        yield members, starts[members, None] + np.arange(n)[None, :]


def _tail_rows(row_steps: np.ndarray, steps: int, fraction: float) -> np.ndarray:
    """Which rows form the tail: the trainer's tail grid (the same evenly spaced rows at any
    ``log_every``) for the default fraction; every row in the last ``fraction`` of the steps otherwise."""
    if fraction == TAIL_FRACTION:
        return np.isin(row_steps, tail_grid(steps))
    return row_steps > tail_start(steps, fraction)


TAIL_COLUMNS = (
    "final_kl", "final_kl_excess", "max_kl_excess", "tail_rows", "tail_kl", "tail_kl_excess", "tail_q10_kl_excess",
    "tail_q90_kl_excess", "tail_decline", "tail_sigma_min", "tail_sigma_mean", "tail_sigma_std", "trend_slope", "trend_t",
    "trend_n_eff", "trend_critical_t",
)  # float columns of tail_statistics; then the flags nonfinite, falling, rising, bursting


def tail_statistics(trajectories: pd.DataFrame, runs: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """Per-run statistics of the rows, indexed by run id (``runs``: ``run``, ``steps``, ``log_every``, ``d``, ``n_logged``).

    Columns: ``final_kl`` and ``final_kl_excess`` (last row), ``max_kl_excess`` (over every
    row), ``tail_rows``, ``tail_kl`` and ``tail_kl_excess`` (medians over the tail),
    ``tail_q10_kl_excess``/``tail_q90_kl_excess``, ``tail_decline`` (1 - the mean excess of the
    tail's last quarter over its first quarter's), ``tail_sigma_min`` (min of the rows' min
    sigma), ``tail_sigma_mean``/``tail_sigma_std`` (medians of the rows' mean and std of sigma),
    the trend (:func:`tail_trend`: ``trend_slope``, ``trend_t``, ``trend_n_eff``,
    ``trend_critical_t``, ``falling``, ``rising``), ``bursting`` and ``nonfinite`` (a diverged
    flag or a non-finite excess/sigma in any row).
    """
    run_ids = runs["run"].to_numpy()
    out = {name: np.full(len(run_ids), np.nan) for name in TAIL_COLUMNS}
    for flag in ("nonfinite", "falling", "rising", "bursting"):
        out[flag] = np.zeros(len(run_ids), bool)
    step = trajectories["step"].to_numpy()
    kl = trajectories["kl"].to_numpy(np.float64)
    excess = trajectories["kl_excess"].to_numpy(np.float64)
    sigma_min = trajectories["sigma_min"].to_numpy(np.float64)
    sigma_mean = trajectories["sigma_mean"].to_numpy(np.float64)
    sigma_std = trajectories["sigma_std"].to_numpy(np.float64)
    flagged = trajectories["diverged"].to_numpy(bool)
    layout = runs[["steps", "log_every"]].to_numpy(np.int64)
    d = runs["d"].to_numpy(np.float64)
    for members, rows in _blocks(trajectories, run_ids, layout, runs["n_logged"].to_numpy()):
        in_tail = _tail_rows(step[rows[0]], int(layout[members[0], 0]), thresholds.tail_fraction)
        tail = rows[:, in_tail]
        finite = np.isfinite(excess[rows]) & np.isfinite(sigma_min[rows]) & np.isfinite(sigma_mean[rows])
        out["nonfinite"][members] = flagged[rows].any(axis=1) | ~finite.all(axis=1)
        out["final_kl"][members] = kl[rows[:, -1]]
        out["final_kl_excess"][members] = excess[rows[:, -1]]
        out["tail_rows"][members] = tail.shape[1]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN tail (non-finite run) is NaN
            out["max_kl_excess"][members] = np.nanmax(np.where(np.isfinite(excess[rows]), excess[rows], np.inf), axis=1)
            if tail.shape[1] == 0:
                continue
            out["tail_kl"][members] = np.nanmedian(kl[tail], axis=1)
            q10, q50, q90 = np.nanquantile(excess[tail], [0.1, 0.5, 0.9], axis=1)
            out["tail_kl_excess"][members], out["tail_q10_kl_excess"][members], out["tail_q90_kl_excess"][members] = q50, q10, q90
            quarter = max(1, tail.shape[1] // 4)
            out["tail_decline"][members] = 1.0 - np.nanmean(excess[tail[:, -quarter:]], axis=1) / np.nanmean(excess[tail[:, :quarter]], axis=1)
            out["tail_sigma_min"][members] = np.nanmin(sigma_min[tail], axis=1)
            out["tail_sigma_mean"][members] = np.nanmedian(sigma_mean[tail], axis=1)
            out["tail_sigma_std"][members] = np.nanmedian(sigma_std[tail], axis=1)
        if tail.shape[1] >= 4:
            with np.errstate(all="ignore"):  # a non-finite run's trend is NaN; it is diverged anyway
                trend = tail_trend(step[tail[0]], excess[tail], thresholds.trend_alpha)
            out["trend_slope"][members], out["trend_t"][members] = trend.slope, trend.t
            out["trend_n_eff"][members], out["trend_critical_t"][members] = trend.n_eff, trend.critical_t
            out["falling"][members], out["rising"][members] = trend.falling, trend.rising
            with np.errstate(all="ignore"):
                spread = q90 / np.maximum(q10, LOG_FLOOR)
            tol = thresholds.tol_per_dim * d[members]
            out["bursting"][members] = (spread > thresholds.burst_factor * noise_floor_spread(d[members])) & (q90 > tol)
    return pd.DataFrame(out, index=pd.Index(run_ids, name="run"))


def steps_to_stay_within(trajectories: pd.DataFrame, runs: pd.DataFrame, level: np.ndarray) -> np.ndarray:
    """The first row's step from which a run's KL excess stays ``<= level`` to its end (per run);
    NaN if its last row is above (or not finite). ``runs`` as for :func:`tail_statistics`."""
    run_ids = runs["run"].to_numpy()
    out = np.full(len(run_ids), np.nan)
    step = trajectories["step"].to_numpy()
    excess = trajectories["kl_excess"].to_numpy(np.float64)
    layout = runs[["steps", "log_every"]].to_numpy(np.int64)
    for members, rows in _blocks(trajectories, run_ids, layout, runs["n_logged"].to_numpy()):
        with np.errstate(invalid="ignore"):
            above = ~(excess[rows] <= level[members, None])  # a NaN is above
        n = rows.shape[1]
        last_above = np.where(above.any(axis=1), n - 1 - np.argmax(above[:, ::-1], axis=1), -1)
        stays = last_above < n - 1
        first = rows[np.arange(len(rows)), np.minimum(last_above + 1, n - 1)]
        out[members] = np.where(stays, step[first], np.nan)
    return out


def classify(sweep: Sweep, references: References, thresholds: Thresholds = Thresholds()) -> pd.DataFrame:
    """The runs table of ``sweep`` with tail statistics, exact-twin comparison, ``outcome`` and ``reason``.

    See the module docstring for the rules. Added columns: ``init_kl_excess``, ``kl_floor``,
    ``sigma_star_min``, ``collapse_threshold`` (sigma), ``tolerance`` (nats), the
    :func:`tail_statistics` columns, ``baseline`` (id), ``baseline_source`` (``sweep`` |
    ``computed``), ``baseline_tail_kl``, ``baseline_tail_kl_excess``, ``baseline_outcome`` (one of
    :data:`BASELINE_OUTCOMES`), ``reference_kl_excess``, ``excess_over_exact`` (nats),
    ``excess_over_exact_per_dim``, ``steps_to_tol``, ``baseline_steps_to_tol``,
    ``time_to_tol_ratio``, ``outcome`` (a categorical over :data:`OUTCOMES`) and ``reason``.
    """
    runs = sweep.runs
    run_ids = runs["run"].to_numpy()
    per_run = references.per_run.loc[run_ids]
    init_excess = per_run["init_kl_excess"].to_numpy()
    d = runs["d"].to_numpy(np.float64)
    tol = thresholds.tol_per_dim * d
    stats = tail_statistics(sweep.trajectories, runs, thresholds)

    # The exact twins: the same target and init as their runs, so the same initial excess and q*.
    baselines = references.baselines
    base_ids = baselines["baseline"].to_numpy()
    first_run = per_run.reset_index().groupby("baseline")["run"].first().loc[base_ids].to_numpy()
    base_runs = runs.set_index("run").loc[first_run, ["steps", "log_every", "d"]].reset_index(drop=True)
    base_runs.insert(0, "run", base_ids)
    base_runs["n_logged"] = baselines["n_logged"].to_numpy()
    base_stats = tail_statistics(references.trajectories, base_runs, thresholds)
    base_init = references.per_run.loc[first_run, "init_kl_excess"].to_numpy()
    base_d = base_runs["d"].to_numpy(np.float64)
    base_diverged = _diverged(base_stats, base_init, base_d, thresholds)
    base_converged = ~base_diverged & (base_stats["tail_kl_excess"].to_numpy() <= thresholds.tol_per_dim * base_d)
    # An exact run draws no noise: whether it still falls is read off its tail directly, not tested.
    base_falling = base_stats["tail_decline"].to_numpy() > EXACT_DECLINE
    base_outcome = np.select([base_diverged, base_converged, base_falling], ["diverged", "converged", "slow"], "unstable")
    base_sigma_min = base_stats["tail_sigma_min"].to_numpy()

    which = per_run["baseline"].to_numpy()
    twin = base_outcome[which]
    base_tail = base_stats["tail_kl_excess"].to_numpy()[which]
    tail_excess = stats["tail_kl_excess"].to_numpy()
    collapse_threshold = thresholds.collapse_ratio * per_run["sigma_star_min"].to_numpy()
    reference = np.where(twin == "converged", base_tail, 0.0)
    falling, rising, bursting = (stats[c].to_numpy() for c in ("falling", "rising", "bursting"))
    n_eff = stats["trend_n_eff"].to_numpy()
    too_few_rows = stats["tail_rows"].to_numpy() < thresholds.min_tail_rows

    diverged = _diverged(stats, init_excess, d, thresholds)
    collapsed = (stats["tail_sigma_min"].to_numpy() < collapse_threshold) & ~(base_sigma_min[which] < collapse_threshold)
    # A rise or a burst matters only where it leaves the tolerance.
    unstable = (twin == "unstable") | ((rising | bursting) & (stats["tail_q90_kl_excess"].to_numpy() > reference + tol))
    converged = tail_excess <= reference + tol
    undetermined_trend = ~falling & ~(n_eff >= thresholds.min_effective_samples)
    slow = falling | (undetermined_trend & (twin == "slow"))
    outcome = np.select(
        [~too_few_rows & diverged, ~too_few_rows & collapsed, too_few_rows, unstable, converged, slow, undetermined_trend],
        ["diverged", "collapsed", "undetermined", "unstable", "converged", "slow", "undetermined"],
        "stalled",
    )
    # A non-finite value is a divergence however short the run.
    outcome = np.where(stats["nonfinite"].to_numpy(), "diverged", outcome)

    level = reference + tol
    steps_to_tol = steps_to_stay_within(sweep.trajectories, runs, level)
    twin_runs = base_runs.iloc[which].reset_index(drop=True)
    base_steps_to_tol = steps_to_stay_within(references.trajectories, twin_runs, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isnan(steps_to_tol) & ~np.isnan(base_steps_to_tol), np.inf, steps_to_tol / base_steps_to_tol)

    out = runs.copy()
    out["init_kl_excess"] = init_excess
    out["kl_floor"] = per_run["kl_floor"].to_numpy()
    out["sigma_star_min"] = per_run["sigma_star_min"].to_numpy()
    out["collapse_threshold"] = collapse_threshold
    out["tolerance"] = tol
    for column in stats.columns:
        out[column] = stats[column].to_numpy()
    out["baseline"] = which
    out["baseline_source"] = baselines["source"].to_numpy()[which]
    out["baseline_tail_kl"] = base_stats["tail_kl"].to_numpy()[which]
    out["baseline_tail_kl_excess"] = base_tail
    out["baseline_outcome"] = pd.Categorical(twin, categories=list(BASELINE_OUTCOMES))
    out["reference_kl_excess"] = reference
    out["excess_over_exact"] = tail_excess - base_tail
    out["excess_over_exact_per_dim"] = out["excess_over_exact"] / d
    out["steps_to_tol"] = steps_to_tol
    out["baseline_steps_to_tol"] = base_steps_to_tol
    out["time_to_tol_ratio"] = ratio
    out["outcome"] = pd.Categorical(outcome, categories=list(OUTCOMES))
    out["reason"] = [_reason(o, row, thresholds) for o, row in zip(outcome, out.itertuples(index=False))]
    return out


def _diverged(stats: pd.DataFrame, init_excess: np.ndarray, d: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Non-finite, or far from the optimum on the target's scale after having moved away from where it started."""
    far = stats["tail_kl_excess"].to_numpy() > thresholds.divergence_per_dim * d
    moved_away = stats["max_kl_excess"].to_numpy() > init_excess
    return stats["nonfinite"].to_numpy() | (far & moved_away)


def _reason(outcome: str, run, thresholds: Thresholds) -> str:
    """One line: why ``run`` got ``outcome``, with the numbers it was decided on."""
    excess = f"tail KL excess {run.tail_kl_excess:.3g} nats"
    trend = f"trend t = {run.trend_t:.3g} (critical {run.trend_critical_t:.3g}, n_eff {run.trend_n_eff:.3g})"
    if outcome == "diverged":
        if run.nonfinite:
            return "a non-finite value" + (f" at step {run.diverged_at}" if run.diverged_at else "")
        return f"{excess} > {thresholds.divergence_per_dim:g} nats/dim after moving away from its start (max {run.max_kl_excess:.3g} > initial {run.init_kl_excess:.3g})"
    if outcome == "collapsed":
        return f"tail min sigma {run.tail_sigma_min:.3g} < {run.collapse_threshold:.3g} ({thresholds.collapse_ratio:g} x the smallest sigma of q*), the exact run's is not"
    if outcome == "undetermined":
        if run.tail_rows < thresholds.min_tail_rows:
            return f"only {int(run.tail_rows)} rows in the tail (the last {thresholds.tail_fraction:.0%} of its steps): too short to classify; run more steps"
        return f"tail too short for its noise: no significant trend, {trend} < {thresholds.min_effective_samples:g} effective samples; run more steps"
    if outcome == "unstable":
        if run.baseline_outcome == "unstable":
            return "the exact run at this step size neither converges nor falls (a cycle or an oscillation)"
        if run.rising:
            return f"still rising: {trend}"
        return f"bursting: tail excess from {run.tail_q10_kl_excess:.3g} to {run.tail_q90_kl_excess:.3g} nats (10%-90%)"
    if outcome == "converged":
        return f"{excess} <= {run.reference_kl_excess + run.tolerance:.3g} (the reference + {thresholds.tol_per_dim:g} nats/dim)"
    if outcome == "slow":
        return f"still falling: {trend}" if run.falling else "the exact run is still falling too: the step budget is too short"
    return f"a stationary noise floor: {excess} above the reference {run.reference_kl_excess:.3g}, {trend}"
