r"""Real posteriors with an exact deterministic objective: Bayesian logistic and Poisson regression.

The posterior :math:`p(z \mid y) \propto \mathcal N(z; 0, \tau^2 I)\prod_i p(y_i \mid x_i^\top z)`
of a GLM (:mod:`vi_sweep.core.regression` has the model and the math). Under a mean-field
Gaussian q every linear predictor :math:`t_i = x_i^\top z` is
:math:`\mathcal N(m_i, v_i)`, :math:`m_i = x_i^\top\mu`, :math:`v_i = \sum_j x_{ij}^2\sigma_j^2`, so:

- :meth:`neg_elbo` (what ``objective=exact`` differentiates) is deterministic: the expected
  negative log likelihood in closed form (Poisson, :math:`\mathbb E e^t = e^{m + v/2}`) or by
  Gauss-Hermite quadrature with ``quadrature_nodes`` nodes (logistic), plus the Gaussian prior
  and entropy in closed form. It equals :math:`\mathrm{KL}(q\,\|\,p(z\mid y)) - \log p(y)`.
- :meth:`log_density` is the log joint :math:`\log p(y, z)` (with every constant: the prior's
  normaliser, :math:`-\log y!`), which the Monte-Carlo estimators use unchanged; its MC negative
  ELBO is an unbiased estimate of :meth:`neg_elbo` (up to the quadrature's error, for logistic).
- :meth:`kl` is NaN: :math:`\log p(y)` is unknown, so there is no closed-form KL.
- :meth:`kl_excess` is :math:`\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q) = \mathrm{KL}(q\,\|\,p) -
  \min_{\text{mean-field}}\mathrm{KL}`, against the mean-field optimum q* solved once on the host
  in float64 (:func:`vi_sweep.core.regression.regression_optimum`) and carried in the target (``optimum_mu``,
  ``optimum_log_sigma``). Subtracting two float32 ELBOs of a few hundred nats would leave
  ~1e-5 of round-off; instead every term is written as its difference from q*'s, from
  :math:`\Delta\mu = \mu - \mu^*` and :math:`\Delta s = s - s^*` (see :meth:`kl_excess`), so the
  result is accurate relative to the excess itself and exactly 0 at q*.

The dataset (``dataset``, and ``num_rows``, ``feature_correlation``, ``data_seed`` for the synthetic
one) and ``quadrature_nodes`` fix the shapes: they are *static* (:data:`vi_sweep.core.regression.STATIC_TYPES`, part of the
trainer's ``TrainSpec``), and the data are constants of the compiled program. ``prior_scale`` is
traced, and so is q* (it depends on the prior scale): the trainer passes it in.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vi_sweep.core import datasets, regression

HALF_LOG_2PI = np.float32(0.5 * np.log(2.0 * np.pi))
MIN_VARIANCE = np.float32(1e-30)  # keeps sqrt(v)'s gradient finite when every sigma underflows


def softplus_difference(base: jax.Array, delta: jax.Array) -> jax.Array:
    r""":math:`\operatorname{softplus}(b + \delta) - \operatorname{softplus}(b)`, accurate relative to itself.

    For :math:`|\delta| < 1`: :math:`\operatorname{log1p}(\operatorname{sigmoid}(b)\,\operatorname{expm1}(\delta))`
    (exact algebra: :math:`\log\frac{1 + e^{b+\delta}}{1 + e^b}`), which has no cancellation;
    beyond, the plain difference, whose round-off is small next to a difference of that size.
    """
    small = jnp.abs(delta) < 1.0
    near = jnp.log1p(jax.nn.sigmoid(base) * jnp.expm1(jnp.where(small, delta, 0.0)))
    far = jax.nn.softplus(base + delta) - jax.nn.softplus(base)
    return jnp.where(small, near, far)


class RegressionTarget(NamedTuple):
    r"""A GLM posterior (:class:`LogisticRegressionTarget` or :class:`PoissonRegressionTarget`)."""

    features: jax.Array  # shape=(n, d): intercept column, then standardised features (a constant)
    features_squared: jax.Array  # shape=(n, d): features**2, for the predictor variances
    response: jax.Array  # shape=(n,): 0/1 labels or counts
    log_normalizer: jax.Array  # shape=(): sum_i log y_i! (0 for labels)
    prior_scale: jax.Array  # shape=(): tau, the prior N(0, tau^2 I)
    nodes: jax.Array  # shape=(K,): probabilists' Gauss-Hermite nodes ((0,) for Poisson)
    weights: jax.Array  # shape=(K,): their weights, summing to 1
    optimum_mu: Optional[jax.Array]  # shape=(d,): q*'s mean (see with_optimum)
    optimum_log_sigma: Optional[jax.Array]  # shape=(d,): q*'s log sigma

    # -- family-specific, see the subclasses ----------------------------------------------------
    def expected_neg_log_likelihood(self, m: jax.Array, v: jax.Array) -> jax.Array:
        """Per observation: -E log p(y_i | t_i), t_i ~ N(m_i, v_i), without the constant ``log_normalizer``."""
        raise NotImplementedError

    def neg_log_likelihood_difference(self, m_star, v_star, d_m, d_v) -> jax.Array:
        """Per observation: the expected negative log likelihood at (m* + d_m, v* + d_v) minus at (m*, v*)."""
        raise NotImplementedError

    def log_likelihood(self, t: jax.Array) -> jax.Array:
        """sum_i log p(y_i | t_i) over the last axis of ``t`` (..., n)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def with_optimum(self, mu: jax.Array, log_sigma: jax.Array) -> "RegressionTarget":
        """The same target carrying q* (float32; from :func:`vi_sweep.core.regression.regression_optimum`)."""
        return self._replace(optimum_mu=jnp.asarray(mu, jnp.float32), optimum_log_sigma=jnp.asarray(log_sigma, jnp.float32))

    def predictor_moments(self, mu: jax.Array, log_sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(m, v): mean and variance of every linear predictor x_i^T z under q."""
        return self.features @ mu, self.features_squared @ jnp.exp(2.0 * log_sigma)

    def log_density(self, z: jax.Array) -> jax.Array:
        r""":math:`\log p(y, z) = \log\mathcal N(z; 0, \tau^2 I) + \sum_i \log p(y_i \mid x_i^\top z)` over the last axis."""
        d = z.shape[-1]
        tau = self.prior_scale
        prior = -0.5 * jnp.sum(z * z, axis=-1) / (tau * tau) - d * (jnp.log(tau) + HALF_LOG_2PI)
        return prior + self.log_likelihood(z @ self.features.T)

    def neg_elbo(self, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
        r"""The exact negative ELBO :math:`\sum_i \ell_i + \frac{\|\mu\|^2 + \|\sigma\|^2}{2\tau^2} + d\log\tau - \sum_j s_j - \frac d2`."""
        d = mu.shape[-1]
        m, v = self.predictor_moments(mu, log_sigma)
        tau = self.prior_scale
        prior = 0.5 * (jnp.sum(mu * mu) + jnp.sum(jnp.exp(2.0 * log_sigma))) / (tau * tau) + d * jnp.log(tau)
        likelihood = jnp.sum(self.expected_neg_log_likelihood(m, v)) + self.log_normalizer
        return likelihood + prior - jnp.sum(log_sigma) - 0.5 * d

    def kl(self, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
        """NaN: KL(q || p(z | y)) needs the unknown log evidence (``kl_excess`` does not)."""
        return jnp.full((), jnp.nan, jnp.float32)

    def kl_excess(self, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
        r""":math:`F(q) - F(q^*) = \mathrm{ELBO}(q^*) - \mathrm{ELBO}(q) \ge 0`, every term a difference from q*'s.

        With :math:`\Delta\mu = \mu - \mu^*`, :math:`\Delta s = s - s^*`,
        :math:`g_j = \operatorname{expm1}(2\Delta s_j) = \sigma_j^2/\sigma_j^{*2} - 1`:
        :math:`\Delta m = X\Delta\mu`, :math:`\Delta v = X^2(\sigma^{*2} g)`, and

        .. math::
            \sum_i [\ell_i(m_i^* + \Delta m_i, v_i^* + \Delta v_i) - \ell_i(m_i^*, v_i^*)]
            + \frac{\Delta\mu^\top(\mu + \mu^*) + \sum_j \sigma_j^{*2} g_j}{2\tau^2} - \sum_j \Delta s_j,

        each likelihood difference itself free of cancellation (:meth:`neg_log_likelihood_difference`).
        """
        mu_star, log_sigma_star = self.optimum_mu, self.optimum_log_sigma
        variance_star = jnp.exp(2.0 * log_sigma_star)
        d_mu = mu - mu_star
        d_s = log_sigma - log_sigma_star
        growth = jnp.expm1(2.0 * d_s)
        m_star, v_star = self.predictor_moments(mu_star, log_sigma_star)
        d_m = self.features @ d_mu
        d_v = self.features_squared @ (variance_star * growth)
        likelihood = jnp.sum(self.neg_log_likelihood_difference(m_star, v_star, d_m, d_v))
        tau = self.prior_scale
        prior = 0.5 * (jnp.sum(d_mu * (mu + mu_star)) + jnp.sum(variance_star * growth)) / (tau * tau)
        return likelihood + prior - jnp.sum(d_s)

    def meanfield_optimum(self) -> tuple[jax.Array, jax.Array]:
        """q* = argmin over mean-field q of KL(q || p(z | y)), solved on the host (float64)."""
        return self.optimum_mu, self.optimum_log_sigma


class LogisticRegressionTarget(RegressionTarget):
    r"""Bayesian logistic regression: :math:`y_i \sim \mathrm{Bernoulli}(\operatorname{sigmoid}(x_i^\top z))`,
    :math:`-\log p(y \mid t) = \operatorname{softplus}(t) - y t`."""

    def expected_neg_log_likelihood(self, m: jax.Array, v: jax.Array) -> jax.Array:
        r""":math:`\sum_k w_k \operatorname{softplus}(m + \sqrt v\,\varepsilon_k) - y m` (K-node Gauss-Hermite)."""
        r = jnp.sqrt(jnp.maximum(v, MIN_VARIANCE))
        t = m[:, None] + r[:, None] * self.nodes[None, :]
        return jax.nn.softplus(t) @ self.weights - self.response * m

    def neg_log_likelihood_difference(self, m_star, v_star, d_m, d_v) -> jax.Array:
        r"""Node by node, :func:`softplus_difference` at :math:`t_k^* = m^* + r^*\varepsilon_k` with
        :math:`\Delta t_k = \Delta m + \Delta r\,\varepsilon_k`, :math:`\Delta r = \Delta v/(r + r^*)`."""
        r_star = jnp.sqrt(jnp.maximum(v_star, MIN_VARIANCE))
        r = jnp.sqrt(jnp.maximum(v_star + d_v, MIN_VARIANCE))
        d_r = d_v / (r + r_star)
        base = m_star[:, None] + r_star[:, None] * self.nodes[None, :]
        shift = d_m[:, None] + d_r[:, None] * self.nodes[None, :]
        return softplus_difference(base, shift) @ self.weights - self.response * d_m

    def log_likelihood(self, t: jax.Array) -> jax.Array:
        return jnp.sum(self.response * t - jax.nn.softplus(t), axis=-1)


class PoissonRegressionTarget(RegressionTarget):
    r"""Bayesian Poisson regression: :math:`y_i \sim \mathrm{Poisson}(e^{x_i^\top z})`,
    :math:`-\log p(y \mid t) = e^t - y t + \log y!`."""

    def expected_neg_log_likelihood(self, m: jax.Array, v: jax.Array) -> jax.Array:
        r""":math:`e^{m + v/2} - y m` per observation (closed form; :math:`\log y!` is ``log_normalizer``)."""
        return jnp.exp(m + 0.5 * v) - self.response * m

    def neg_log_likelihood_difference(self, m_star, v_star, d_m, d_v) -> jax.Array:
        r""":math:`e^{c^*}\operatorname{expm1}(\Delta c) - y\Delta m`, :math:`c = m + v/2`."""
        return jnp.exp(m_star + 0.5 * v_star) * jnp.expm1(d_m + 0.5 * d_v) - self.response * d_m

    def log_likelihood(self, t: jax.Array) -> jax.Array:
        return jnp.sum(self.response * t - jnp.exp(t), axis=-1) - self.log_normalizer


def _regression_target(cls, response_kind: str, d: int, dataset: str, num_rows: int, feature_correlation: float, data_seed: int, prior_scale, num_nodes: int):
    data = datasets.load_dataset(dataset, response_kind, d, num_rows, feature_correlation, data_seed)
    if num_nodes:
        nodes, weights = regression.gauss_hermite(num_nodes)
    else:
        nodes, weights = np.zeros(0), np.zeros(0)
    log_normalizer = np.sum(regression.log_factorial(data.response)) if response_kind == datasets.COUNT else 0.0
    as32 = lambda x: np.asarray(x, np.float32)  # noqa: E731 - constants known before tracing
    return cls(
        features=as32(data.features),
        features_squared=as32(data.features * data.features),
        response=as32(data.response),
        log_normalizer=as32(log_normalizer),
        prior_scale=jnp.asarray(prior_scale, jnp.float32),
        nodes=as32(nodes),
        weights=as32(weights),
        optimum_mu=None,
        optimum_log_sigma=None,
    )


def logistic_regression(
    d: int,
    dataset: str = "synthetic",
    num_rows: int = 500,
    feature_correlation: float = 0.0,
    data_seed: int = 0,
    prior_scale: float = 1.0,
    quadrature_nodes: int = 64,
) -> LogisticRegressionTarget:
    """Bayesian logistic regression with a N(0, prior_scale^2 I) prior on the ``d`` coefficients
    (intercept included) of ``dataset`` (:data:`vi_sweep.core.datasets.DATASETS` with a binary
    response). Without q*: use :func:`vi_sweep.core.targets.make_target`, which attaches it."""
    return _regression_target(
        LogisticRegressionTarget, datasets.BINARY, d, dataset, num_rows, feature_correlation, data_seed, prior_scale, quadrature_nodes
    )


def poisson_regression(
    d: int,
    dataset: str = "synthetic",
    num_rows: int = 500,
    feature_correlation: float = 0.0,
    data_seed: int = 0,
    prior_scale: float = 1.0,
) -> PoissonRegressionTarget:
    """Bayesian Poisson regression (log link) with a N(0, prior_scale^2 I) prior on the ``d``
    coefficients of ``dataset`` (a count response). Closed form: no quadrature."""
    return _regression_target(PoissonRegressionTarget, datasets.COUNT, d, dataset, num_rows, feature_correlation, data_seed, prior_scale, 0)


REGRESSION_TARGETS = {"logistic_regression": logistic_regression, "poisson_regression": poisson_regression}
"""The builders, by the names of :data:`vi_sweep.core.regression.POSTERIORS`."""
