r"""Closed-form predictions for plain SGD at the optimum of the standard-normal target.

Pure numpy (matplotlib only inside :func:`draw_sgd_overlays`); no Hydra, no JAX. These are the
reference lines drawn on a sweep's phase map and KL heatmap when its optimizer is ``sgd``.

Setting
-------
Target :math:`p = \mathcal N(0, I_d)`, mean-field :math:`q = \mathcal N(\mu, \operatorname{diag}(\sigma^2))`,
:math:`\sigma = e^{s}`, objective :math:`\mathrm{KL}(q\,\|\,p) = \tfrac12\sum_i(\sigma_i^2 + \mu_i^2 - 2 s_i - 1)`,
minimised at :math:`\mu = 0, s = 0`. Everything separates over coordinates (the target, q and the
noise :math:`\varepsilon \in \mathbb R^{M\times d}` are all independent across coordinates), so it is
enough to analyse one coordinate and multiply the KL by :math:`d`.

Curvature (exact gradient)
--------------------------
:math:`\nabla_\mu = \mu`, :math:`\nabla_s = e^{2s} - 1`: the Hessian at the optimum is
:math:`\operatorname{diag}(1, 2)`. Gradient descent on a quadratic of curvature :math:`h` contracts iff
:math:`|1 - \eta h| < 1`, so

.. math::  \eta < 2 \ \ (\mu), \qquad \eta < 1 \ \ (s = \log\sigma).

Just above 1 the :math:`s` iterates settle into a period-2 oscillation around 0 (LITERATURE.md).

Gradient noise (reparameterisation estimator, the notebook's)
-------------------------------------------------------------
With :math:`M` = ``num_mc`` draws, :math:`\bar\varepsilon = \frac1M\sum_m\varepsilon_m` and
:math:`m_2 = \frac1M\sum_m\varepsilon_m^2`,

.. math::  g_\mu = \mu + \sigma\bar\varepsilon, \qquad g_s = \sigma\mu\bar\varepsilon + \sigma^2 m_2 - 1,

so at the optimum :math:`\operatorname{Var} g_\mu = 1/M` and :math:`\operatorname{Var} g_s = \operatorname{Var} m_2 = 2/M`.

Stationary spread of constant-step SGD (derived; linearised about the optimum)
-------------------------------------------------------------------------------
*Mean.* With :math:`\sigma \approx 1`, :math:`\mu_{t+1} = (1-\eta)\mu_t - \eta\bar\varepsilon_t` is an AR(1)
process with innovation variance :math:`\eta^2/M`:

.. math::  \operatorname{Var}\mu = \frac{\eta^2/M}{1 - (1-\eta)^2} = \frac{\eta}{M(2-\eta)} .

*Log-scale.* With :math:`\sigma^2 \approx 1 + 2s`,
:math:`s_{t+1} = s_t(1 - 2\eta m_2) - \eta(m_2 - 1) - \eta\mu_t\bar\varepsilon_t`. The draw
:math:`m_2` is independent of :math:`s_t`, :math:`\mathbb E m_2 = 1`, :math:`\mathbb E m_2^2 = 1 + 2/M`, so

.. math::  \mathbb E s_{t+1}^2 = \mathbb E s_t^2\,\big(1 - 4\eta + 4\eta^2(1 + 2/M)\big) + 2\eta^2/M
           \quad\Longrightarrow\quad
           \operatorname{Var} s = \frac{\eta}{2\,(M - \eta(M+2))} .

Neglected: the :math:`\eta^2\operatorname{Var}(\mu)/M` input of the cross term (relative size
:math:`\approx\eta/(4M)`) and :math:`(\mathbb E s)^2 = O(\eta^2)`. The multiplicative noise
:math:`2\eta s(m_2-1)` is what makes this differ from the exact-gradient analysis: the second moment
stays bounded only while

.. math::  \eta < \frac{M}{M+2} \qquad (1/3 \text{ at } M = 1,\ \to 1 \text{ as } M\to\infty),

the *mean-square stability limit* in :math:`s`; at and beyond it the formula is infinite.

*KL.* Expanding :math:`\tfrac12(e^{2s} - 1 - 2s) = s^2 + O(s^3)`,

.. math::  \mathbb E\,\mathrm{KL} \approx d\left(\tfrac12\operatorname{Var}\mu + \operatorname{Var}s\right)
           \;\xrightarrow{\ \eta\to 0\ }\; \frac{3\,d\,\eta}{4M} ,

the noise floor of constant-step SGD. Against the trainer (d = 100, 16 seeds, 20 000 steps from the
optimum) the measured tail KL is within 0.4 % of this for :math:`\eta \le 0.02` and within 2 % at
:math:`\eta = 0.05, M = 1` (tests/test_theory.py checks the small-lr regime). It needs
:math:`\gtrsim 1/\eta` steps to be reached.

References: Roeder, Wu & Duvenaud (2017) for the estimator; Dhaka et al. (2020) for constant-step
SGD iterates as a stationary Markov chain; the derivation above is this project's (LITERATURE.md,
"Theory").
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

LR_LIMIT_MU = 2.0
"""Exact-gradient step-size limit in mu: 2 / curvature 1."""

LR_LIMIT_LOG_SIGMA = 1.0
"""Exact-gradient step-size limit in log sigma: 2 / curvature 2."""


def stability_limit_lr(num_mc: Any) -> np.ndarray:
    r"""Mean-square stability limit of SGD in :math:`\log\sigma` with ``num_mc`` draws: :math:`M/(M+2)`."""
    m = np.asarray(num_mc, dtype=np.float64)
    return m / (m + 2.0)


def stationary_var_mu(lr: Any, num_mc: Any) -> np.ndarray:
    r""":math:`\operatorname{Var}\mu = \eta / (M(2-\eta))` per coordinate; ``inf`` for :math:`\eta \ge 2`."""
    lr, m = np.broadcast_arrays(np.asarray(lr, np.float64), np.asarray(num_mc, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lr < LR_LIMIT_MU, lr / (m * (2.0 - lr)), np.inf)


def stationary_var_log_sigma(lr: Any, num_mc: Any) -> np.ndarray:
    r""":math:`\operatorname{Var}s = \eta / (2(M - \eta(M+2)))` per coordinate; ``inf`` at or past :func:`stability_limit_lr`."""
    lr, m = np.broadcast_arrays(np.asarray(lr, np.float64), np.asarray(num_mc, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lr < stability_limit_lr(m), lr / (2.0 * (m - lr * (m + 2.0))), np.inf)


def stationary_kl(lr: Any, num_mc: Any, d: Any) -> np.ndarray:
    r"""Predicted stationary :math:`\mathbb E\,\mathrm{KL} \approx d(\tfrac12\operatorname{Var}\mu + \operatorname{Var}s)` (nats)."""
    return np.asarray(d, np.float64) * (0.5 * stationary_var_mu(lr, num_mc) + stationary_var_log_sigma(lr, num_mc))


def lr_for_stationary_kl(kl: Any, num_mc: Any, d: Any) -> np.ndarray:
    r"""The step size whose predicted stationary KL is ``kl``: the inverse of :func:`stationary_kl` in lr.

    With :math:`K = \mathrm{KL}/d` and :math:`a = M + 2`, clearing denominators in
    :math:`\frac{\eta}{2M(2-\eta)} + \frac{\eta}{2(M - a\eta)} = K` gives
    :math:`A\eta^2 + B\eta + C = 0` with :math:`A = 2KMa + a + M`,
    :math:`B = -(2KM(2a+M) + 3M)`, :math:`C = 4KM^2`. :func:`stationary_kl` increases from 0 to
    :math:`\infty` on :math:`(0, M/a)`, so the answer is the smaller root, computed as
    :math:`2C / (-B + \sqrt{B^2 - 4AC})` to avoid cancellation at small K.
    """
    k, m = np.broadcast_arrays(np.asarray(kl, np.float64) / np.asarray(d, np.float64), np.asarray(num_mc, np.float64))
    a = m + 2.0
    qa = 2.0 * k * m * a + a + m
    qb = -(2.0 * k * m * (2.0 * a + m) + 3.0 * m)
    qc = 4.0 * k * m * m
    return 2.0 * qc / (-qb + np.sqrt(qb * qb - 4.0 * qa * qc))


class OverlayLine(NamedTuple):
    """A reference curve in (lr, num_mc) coordinates, ready for ``ax.plot(line.lr, line.num_mc)``."""

    label: str
    lr: np.ndarray  # shape=(n,)
    num_mc: np.ndarray  # shape=(n,)
    style: str  # "limit" (a step-size limit) or "level" (an iso-KL curve)


def sgd_overlay_lines(
    kind: str,
    num_mc: Sequence[float],
    *,
    d: int = 100,
    kl_per_dim_levels: Sequence[float] = (1e-3, 1e-2, 1e-1),
) -> list[OverlayLine]:
    """The theory curves for a sweep over lr x num_mc.

    Parameters
    ----------
    kind : ``"phase"`` or ``"kl"``
        ``phase``: the step-size limits -- exact-gradient limits lr = 2 (mu) and lr = 1
        (log sigma) and the MC mean-square limit lr = M/(M+2). ``kl``: iso-lines of the predicted
        stationary KL at ``kl_per_dim_levels`` nats per dimension, plus the mean-square limit
        (where the prediction becomes infinite).
    num_mc : sequence of float
        The num_mc values to trace the curves over (a dense grid between the sweep's extremes).
    d : int
        The sweep's dimension (the KL levels are ``level * d``).
    kl_per_dim_levels : sequence of float
        Iso-KL levels for ``kind="kl"``, in nats per dimension.
    """
    m = np.asarray(num_mc, dtype=np.float64)
    ms_limit = OverlayLine("SGD mean-square limit lr = M/(M+2)", stability_limit_lr(m), m, "limit")
    if kind == "phase":
        return [
            OverlayLine("exact-gradient limit in log sigma: lr = 1", np.full_like(m, LR_LIMIT_LOG_SIGMA), m, "limit"),
            OverlayLine("exact-gradient limit in mu: lr = 2", np.full_like(m, LR_LIMIT_MU), m, "limit"),
            ms_limit,
        ]
    if kind == "kl":
        levels = [
            OverlayLine(f"predicted SGD noise floor KL = {level:g} d", lr_for_stationary_kl(level * d, m, d), m, "level")
            for level in kl_per_dim_levels
        ]
        return [*levels, ms_limit]
    raise ValueError(f"unknown overlay kind {kind!r}; choose 'phase' or 'kl'")


_STYLES = {"limit": dict(color="black", linestyle="--", linewidth=1.2), "level": dict(color="white", linestyle=":", linewidth=1.2)}


def draw_sgd_overlays(
    ax: Any,
    kind: str = "phase",
    *,
    d: int = 100,
    kl_per_dim_levels: Sequence[float] = (1e-3, 1e-2, 1e-1),
    num_points: int = 200,
    label: bool = True,
) -> list:
    """Draw :func:`sgd_overlay_lines` on a matplotlib axis with lr on x and num_mc on y, both log.

    The axis must be in data coordinates (e.g. ``pcolormesh`` with lr / num_mc cell edges, or
    ``scatter``), not categorical image indices. The curves are traced over the current y range
    and clipped to the current view; the axis limits are left unchanged.

    Only meaningful when the sweep's optimizer is plain ``sgd`` with the ``reparam`` estimator on
    the ``standard_normal`` target: the caller decides that.

    Returns
    -------
    list of matplotlib.lines.Line2D
        The drawn curves (one per :class:`OverlayLine`), for legends or tests.
    """
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    low, high = sorted(ylim)
    low = max(low, 1e-3)  # a log axis cannot start at <= 0
    num_mc = np.geomspace(low, max(high, low * 1.0001), num_points)
    artists = []
    for line in sgd_overlay_lines(kind, num_mc, d=d, kl_per_dim_levels=kl_per_dim_levels):
        (artist,) = ax.plot(line.lr, line.num_mc, label=line.label if label else None, **_STYLES[line.style])
        artists.append(artist)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    return artists
