r"""Bayesian generalised linear models under a mean-field Gaussian q, in float64 NumPy: the exact
negative ELBO, its gradient and Hessian, and the mean-field optimum q* by Newton's method.

The model: coefficients :math:`z \in \mathbb R^d` with prior :math:`\mathcal N(0, \tau^2 I)`
(``prior_scale`` :math:`\tau`), observations :math:`y_i \mid z \sim p(y_i \mid t_i)` with
:math:`t_i = x_i^\top z`: Bernoulli(sigmoid t) (``logistic``) or Poisson(e^t) (``poisson``).
Under :math:`q = \mathcal N(\mu, \operatorname{diag}\sigma^2)` each :math:`t_i` is exactly
:math:`\mathcal N(m_i, r_i^2)`, :math:`m_i = x_i^\top\mu`, :math:`r_i^2 = \sum_j x_{ij}^2\sigma_j^2`,
so the expected negative log likelihood is a sum of one-dimensional integrals
:math:`\ell_i(m_i, r_i) = -\mathbb E\,\log p(y_i \mid t_i)`:

- Poisson, closed form (:math:`\mathbb E e^t = e^{m + r^2/2}`):
  :math:`\ell = e^{m + r^2/2} - y m + \log y!`;
- logistic, Gauss-Hermite quadrature with K nodes (probabilists' nodes :math:`\varepsilon_k`,
  weights :math:`w_k`, :math:`\sum_k w_k = 1`): :math:`\ell = \sum_k w_k \operatorname{softplus}(m + r\varepsilon_k) - y m`
  (only the softplus needs the quadrature; :math:`\mathbb E t = m` is exact). softplus is
  analytic in the strip :math:`|\operatorname{Im} t| < \pi`, so the error falls fast with K where
  :math:`r` is moderate (LITERATURE.md, "Generalised linear models"); the tests measure it against 4K nodes.

With the Gaussian prior and entropy in closed form, the exact negative ELBO is

.. math::
    F(\mu, \sigma) = \sum_i \ell_i(m_i, r_i) + \frac{\|\mu\|^2 + \|\sigma\|^2}{2\tau^2}
        + d\log\tau - \sum_j \log\sigma_j - \frac d2
    = \mathrm{KL}(q \,\|\, p(z \mid y)) - \log p(y).

It is convex in :math:`(\mu, \sigma)` -- for every fixed :math:`\varepsilon`,
:math:`t = x^\top\mu + \sum_j x_j\sigma_j\varepsilon_j` is linear in them, so each expected
convex :math:`-\log p(y\mid t)` is convex; the K-node rule keeps this, its nodes coming in pairs
:math:`\pm\varepsilon_k` -- and strictly convex through the prior and :math:`-\log\sigma`
(Domke, Gower and Garrigos 2023; Kim et al. 2023). So Newton's method in :math:`(\mu,\sigma)`
with a backtracking line search finds the unique minimiser :math:`q^*` (:func:`solve_meanfield_optimum`),
and :math:`F(q) - F(q^*) = \mathrm{ELBO}(q^*) - \mathrm{ELBO}(q)` is the KL excess over the best
mean-field q: the unknown :math:`\log p(y)` cancels. The derivatives are those of the K-node
rule itself (not Price's theorem, which holds for the exact integral only), so q* is stationary
for exactly the objective the trainer differentiates.

NumPy only (no JAX): the analysis computes its per-run constants from q* without importing JAX.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, NamedTuple

import numpy as np

from vi_sweep.core import datasets

LOGISTIC, POISSON = "logistic", "poisson"


class Posterior(NamedTuple):
    """What the name of a regression target means here."""

    family: str  # LOGISTIC | POISSON
    response: str  # datasets.BINARY | datasets.COUNT
    quadrature: bool  # whether its expected log likelihood needs Gauss-Hermite nodes


POSTERIORS = {
    "logistic_regression": Posterior(LOGISTIC, datasets.BINARY, True),
    "poisson_regression": Posterior(POISSON, datasets.COUNT, False),
}
"""The regression targets (their JAX builders: :data:`vi_sweep.core.glm.REGRESSION_TARGETS`)."""
STATIC_TYPES = {"dataset": str, "num_rows": int, "feature_correlation": float, "data_seed": int, "quadrature_nodes": int}
"""Builder keywords that fix the compiled program (the data, the quadrature rule), with their
types: static, part of the trainer's ``TrainSpec``. Every other keyword (``prior_scale``) is traced."""
SYNTHETIC_ONLY = ("num_rows", "feature_correlation", "data_seed")
"""Keywords that shape the synthetic dataset only (a real dataset ignores them)."""


class Problem(NamedTuple):
    """One posterior: a GLM family, its data, the prior scale and (logistic) the quadrature rule."""

    family: str  # LOGISTIC | POISSON
    features: np.ndarray  # shape=(n, d), float64
    response: np.ndarray  # shape=(n,), float64
    prior_scale: float
    nodes: np.ndarray  # shape=(K,): probabilists' Gauss-Hermite nodes (empty for Poisson)
    weights: np.ndarray  # shape=(K,): their weights, summing to 1


class Optimum(NamedTuple):
    """The mean-field optimum q* = N(mu, diag(exp(log_sigma)^2)), float64."""

    mu: np.ndarray  # shape=(d,)
    log_sigma: np.ndarray  # shape=(d,)


def gauss_hermite(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes and weights with :math:`\mathbb E_{\varepsilon\sim\mathcal N(0,1)} h(\varepsilon) \approx \sum_k w_k h(\varepsilon_k)`,
    exact for polynomials of degree < 2K (``numpy.polynomial.hermite_e.hermegauss``, weights
    divided by :math:`\sqrt{2\pi}`).

    Made exactly symmetric (nodes in :math:`\pm` pairs, equal weights) and rounded to float32
    values, so that the float32 trainer and this float64 solver use the same rule.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    nodes = 0.5 * (nodes - nodes[::-1])
    weights = 0.5 * (weights + weights[::-1]) / np.sqrt(2.0 * np.pi)
    return np.float32(nodes).astype(np.float64), np.float32(weights).astype(np.float64)


class Terms(NamedTuple):
    r"""Per observation: :math:`\ell_i(m_i, r_i)` and its first and second derivatives in (m, r)."""

    value: np.ndarray
    d_m: np.ndarray
    d_r: np.ndarray
    d_mm: np.ndarray
    d_mr: np.ndarray
    d_rr: np.ndarray


def sigmoid(t: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large |t|."""
    return np.exp(-np.logaddexp(0.0, -t))


def log_factorial(counts: np.ndarray) -> np.ndarray:
    r""":math:`\log y!` elementwise (counts are whole numbers)."""
    return np.array([math.lgamma(c + 1.0) for c in np.ravel(counts)], np.float64).reshape(np.shape(counts))


def expected_terms(problem: Problem, m: np.ndarray, r: np.ndarray) -> Terms:
    r""":math:`\ell_i` and its derivatives at :math:`(m_i, r_i)` (see the module docstring)."""
    y = problem.response
    if problem.family == POISSON:
        with np.errstate(over="ignore"):
            rate = np.exp(m + 0.5 * r * r)
        return Terms(rate - y * m + log_factorial(y), rate - y, rate * r, rate, rate * r, rate * (1.0 + r * r))
    eps, w = problem.nodes, problem.weights
    t = m[:, None] + r[:, None] * eps[None, :]
    p = sigmoid(t)
    curvature = p * (1.0 - p)
    return Terms(
        np.logaddexp(0.0, t) @ w - y * m,
        p @ w - y,
        (p * eps) @ w,
        curvature @ w,
        (curvature * eps) @ w,
        (curvature * eps * eps) @ w,
    )


def predictor_moments(problem: Problem, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(m, r)``: mean and standard deviation of every linear predictor under q."""
    x = problem.features
    return x @ mu, np.sqrt((x * x) @ (sigma * sigma))


def neg_elbo(problem: Problem, mu: np.ndarray, log_sigma: np.ndarray) -> float:
    """The exact negative ELBO :math:`F` at ``(mu, log_sigma)`` (float64)."""
    sigma = np.exp(log_sigma)
    m, r = predictor_moments(problem, mu, sigma)
    tau2 = problem.prior_scale**2
    d = mu.shape[0]
    prior = (mu @ mu + sigma @ sigma) / (2.0 * tau2) + d * np.log(problem.prior_scale)
    return float(np.sum(expected_terms(problem, m, r).value) + prior - np.sum(log_sigma) - 0.5 * d)


def gradient_and_hessian(problem: Problem, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradient and Hessian of :math:`F` in :math:`(\mu, \sigma)` (length and shape ``2d``).

    With :math:`J_{ij} = \partial r_i/\partial\sigma_j = x_{ij}^2\sigma_j / r_i` and
    :math:`\partial^2 r_i/\partial\sigma_j\partial\sigma_l = \delta_{jl} x_{ij}^2/r_i - J_{ij}J_{il}/r_i`:

    .. math::
        \nabla_\mu = X^\top\ell_m + \mu/\tau^2, \quad
        \nabla_\sigma = J^\top\ell_r + \sigma/\tau^2 - 1/\sigma, \\
        H_{\mu\mu} = X^\top\!\operatorname{diag}(\ell_{mm})X + I/\tau^2, \quad
        H_{\mu\sigma} = X^\top\!\operatorname{diag}(\ell_{mr})J, \\
        H_{\sigma\sigma} = J^\top\!\operatorname{diag}(\ell_{rr} - \ell_r/r)J
            + \operatorname{diag}\big((X^2)^\top(\ell_r/r) + 1/\tau^2 + 1/\sigma^2\big).
    """
    x = problem.features
    x2 = x * x
    m, r = predictor_moments(problem, mu, sigma)
    terms = expected_terms(problem, m, r)
    jac = x2 * sigma[None, :] / r[:, None]
    inv_tau2 = 1.0 / problem.prior_scale**2
    grad = np.concatenate([x.T @ terms.d_m + mu * inv_tau2, jac.T @ terms.d_r + sigma * inv_tau2 - 1.0 / sigma])
    h_mm = x.T @ (terms.d_mm[:, None] * x) + inv_tau2 * np.eye(len(mu))
    h_ms = x.T @ (terms.d_mr[:, None] * jac)
    h_ss = jac.T @ ((terms.d_rr - terms.d_r / r)[:, None] * jac) + np.diag(x2.T @ (terms.d_r / r) + inv_tau2 + 1.0 / sigma**2)
    hessian = np.block([[h_mm, h_ms], [h_ms.T, h_ss]])
    return grad, hessian


class NotConverged(RuntimeError):
    """Newton's method did not reach a stationary point (a bug or a degenerate problem)."""


def solve_meanfield_optimum(problem: Problem, *, max_iterations: int = 200, tolerance: float = 1e-10) -> Optimum:
    r"""The minimiser q* of :math:`F` by damped Newton steps in :math:`(\mu, \sigma)`, float64.

    Starts at :math:`\mu = 0`, :math:`\sigma_j = (1/\tau^2 + \tfrac14\sum_i x_{ij}^2)^{-1/2}`.
    Far from q* each step halves until Armijo's sufficient decrease holds (a step that makes a
    :math:`\sigma_j \le 0` counts as no decrease); once the Newton decrement
    :math:`g^\top H^{-1} g` is below ``1e-8`` -- where the quadratic model is exact to far below
    what a float64 :math:`F` of a few hundred nats can still resolve -- full steps are taken
    without a line search. Stops when the gradient in :math:`(\mu, \log\sigma)` is below
    ``tolerance`` (max-norm) or stops shrinking (float64 round-off); raises :class:`NotConverged`
    if that leaves it above ``1e3 * tolerance``.
    """
    x = problem.features
    d = x.shape[1]
    mu = np.zeros(d)
    sigma = 1.0 / np.sqrt(1.0 / problem.prior_scale**2 + 0.25 * np.sum(x * x, axis=0))

    def objective(mu_: np.ndarray, sigma_: np.ndarray) -> float:
        if np.any(sigma_ <= 0.0):
            return np.inf
        with np.errstate(over="ignore", invalid="ignore"):
            value = neg_elbo(problem, mu_, np.log(sigma_))
        return value if np.isfinite(value) else np.inf

    def stationarity_of(grad: np.ndarray, sigma_: np.ndarray) -> float:
        return float(np.max(np.abs(np.concatenate([grad[:d], grad[d:] * sigma_]))))  # d/d log sigma = sigma d/d sigma

    value = objective(mu, sigma)
    best, stalled = np.inf, 0
    for _ in range(max_iterations):
        grad, hessian = gradient_and_hessian(problem, mu, sigma)
        stationarity = stationarity_of(grad, sigma)
        if stationarity < tolerance:
            break
        stalled = stalled + 1 if stationarity >= best else 0
        best = min(best, stationarity)
        if stalled >= 3:
            break  # round-off: the gradient no longer shrinks
        step = -np.linalg.solve(hessian, grad)
        decrement = -(grad @ step)
        if decrement < 1e-8 and np.all(sigma + step[d:] > 0.0):
            mu, sigma = mu + step[:d], sigma + step[d:]
            value = objective(mu, sigma)
            continue
        length, accepted = 1.0, False
        for _ in range(60):
            new_mu, new_sigma = mu + length * step[:d], sigma + length * step[d:]
            new_value = objective(new_mu, new_sigma)
            if new_value <= value - 1e-4 * length * decrement:
                accepted = True
                break
            length *= 0.5
        if not accepted:
            break
        mu, sigma, value = new_mu, new_sigma, new_value
    grad, _ = gradient_and_hessian(problem, mu, sigma)
    stationarity = stationarity_of(grad, sigma)
    if stationarity > 1e3 * tolerance:
        raise NotConverged(f"Newton's method stopped with a gradient of {stationarity:.3g} (max-norm)")
    return Optimum(mu, np.log(sigma))


# ---------------------------------------------------------------------------------------------
# q* once per posterior: an in-memory cache the launcher and the analysis may also fill from disk
# ---------------------------------------------------------------------------------------------

_OPTIMA: dict[str, Optimum] = {}


def optimum_key(config: Mapping[str, Any]) -> str:
    """A canonical string for one posterior's config (family, dataset fields, d, prior scale, nodes)."""
    return json.dumps(dict(config), sort_keys=True)


def cached_optimum(config: Mapping[str, Any], build_problem) -> Optimum:
    """q* for ``config``: remembered, or solved from ``build_problem()`` and remembered."""
    key = optimum_key(config)
    if key not in _OPTIMA:
        _OPTIMA[key] = solve_meanfield_optimum(build_problem())
    return _OPTIMA[key]


def remember_optimum(key: str, optimum: Optimum) -> None:
    """Put a q* read from disk into the in-memory cache (``key``: :func:`optimum_key`)."""
    _OPTIMA[key] = Optimum(np.asarray(optimum.mu, np.float64), np.asarray(optimum.log_sigma, np.float64))


def remembered_optima() -> dict[str, Optimum]:
    """Every q* solved or remembered in this process, by key (a copy)."""
    return dict(_OPTIMA)


# ---------------------------------------------------------------------------------------------
# From a regression target's config to its posterior
# ---------------------------------------------------------------------------------------------


def split_params(name: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """``(static, traced)`` keywords of regression target ``name``: :data:`STATIC_TYPES` (typed;
    without :data:`SYNTHETIC_ONLY` for a real dataset, which ignores them) and the rest as floats."""
    static = {key: STATIC_TYPES[key](value) for key, value in params.items() if key in STATIC_TYPES}
    traced = {key: float(value) for key, value in params.items() if key not in STATIC_TYPES}
    if static.get("dataset", datasets.SYNTHETIC) != datasets.SYNTHETIC:
        static = {key: value for key, value in static.items() if key not in SYNTHETIC_ONLY}
    return static, traced


def posterior_keys(name: str) -> tuple[str, ...]:
    """The keywords of regression target ``name`` that :func:`posterior_config` reads."""
    return ("dataset", *SYNTHETIC_ONLY, "prior_scale", *(("quadrature_nodes",) if POSTERIORS[name].quadrature else ()))


def posterior_config(name: str, d: int, params: Mapping[str, Any]) -> dict[str, Any]:
    """What determines the posterior of regression target ``name``: its name, ``d``, the dataset's
    fields (those that shape it: a real dataset ignores :data:`SYNTHETIC_ONLY`), the prior scale
    rounded to float32 (as the trainer holds it) and the quadrature nodes.

    ``params`` must hold every :func:`posterior_keys` (a real dataset may omit the synthetic
    one's); ``vi_sweep.core.targets.with_builder_defaults`` fills in the builder's defaults.
    """
    dataset = params.get("dataset")
    needed = [key for key in posterior_keys(name) if not (dataset != datasets.SYNTHETIC and key in SYNTHETIC_ONLY)]
    missing = [key for key in needed if key not in params]
    if missing:
        raise ValueError(f"{name}: no value for {', '.join(missing)} (vi_sweep.core.targets.with_builder_defaults fills in the defaults)")
    config: dict[str, Any] = {"target": name, "d": int(d), "dataset": str(dataset)}
    if config["dataset"] == datasets.SYNTHETIC:
        config.update({key: STATIC_TYPES[key](params[key]) for key in SYNTHETIC_ONLY})
    config["prior_scale"] = float(np.float32(params["prior_scale"]))
    if POSTERIORS[name].quadrature:
        config["quadrature_nodes"] = int(params["quadrature_nodes"])
    return config


def regression_problem(config: Mapping[str, Any]) -> Problem:
    """The float64 :class:`Problem` of a :func:`posterior_config`: the same data (float32 values)
    and quadrature rule as the trainer's target."""
    posterior = POSTERIORS[config["target"]]
    data = datasets.load_dataset(
        config["dataset"], posterior.response, config["d"], config.get("num_rows", 500), config.get("feature_correlation", 0.0), config.get("data_seed", 0)
    )
    nodes, weights = gauss_hermite(config["quadrature_nodes"]) if posterior.quadrature else (np.zeros(0), np.zeros(0))
    return Problem(posterior.family, data.features, data.response, config["prior_scale"], nodes, weights)


def regression_optimum(name: str, d: int, **params: Any) -> Optimum:
    """q* of regression target ``name`` with ``params`` (concrete values), float64; solved once
    per posterior and kept in memory (:func:`cached_optimum`)."""
    config = posterior_config(name, d, params)
    return cached_optimum(config, lambda: regression_problem(config))
