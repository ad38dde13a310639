r"""Objectives: what one training step differentiates. One registry, pure functions.

The variational family is mean-field Gaussian, :math:`q = \mathcal N(\mu, \operatorname{diag}(\sigma^2))`
with :math:`\sigma = e^{s}` (``log_sigma``). An objective is a pair (:class:`Objective`):
``draw(key, d) -> noise``, the step's randomness, and ``loss(params, noise, target) -> scalar``,
what the step differentiates. It is chosen *before* tracing, so no string is ever branched on
inside jitted code. Drawing and differentiating are separate so that the trainer can draw the
next step's noise while this step's gradient is computed (see :mod:`vi_sweep.core.trainer`).

- ``exact``: the deterministic negative ELBO (``target.neg_elbo``): the closed-form
  :math:`\mathrm{KL}(q\,\|\,p)` on a Gaussian target (:meth:`GaussianTarget.kl`), the expected
  log joint plus entropy -- closed form or Gauss-Hermite -- on a regression target
  (:mod:`vi_sweep.core.glm`).
- ``mc``: a Monte-Carlo negative ELBO :math:`-\frac1M\sum_{m}[\log p(z_m) - \log q(z_m)]` with
  :math:`z_m = \mu + \sigma\odot\varepsilon_m`, :math:`\varepsilon \sim \mathcal N(0, I)` of shape
  ``(num_mc, d)`` drawn from the step's key -- exactly the notebook's stream. The *value* is the
  same for every estimator; they differ only in the gradient they produce:

  ``reparam`` (default, the notebook's)
      :math:`\log q(z) = -\tfrac12\|\varepsilon\|^2 - \sum s - \tfrac d2\log 2\pi`: the entropy
      enters in closed form, the path derivative flows through :math:`z`. On
      :math:`p = \mathcal N(0, I)`, with :math:`\bar\varepsilon, m_2` the sample means of
      :math:`\varepsilon, \varepsilon^2`: :math:`g_\mu = \mu + \sigma\bar\varepsilon`,
      :math:`g_s = \sigma\mu\bar\varepsilon + \sigma^2 m_2 - 1` (variance 1/M and 2/M at the optimum).
  ``stl`` -- "sticking the landing" (Roeder, Wu & Duvenaud, 2017)
      :math:`\log q(z)` evaluated at :math:`z` with ``stop_gradient`` on :math:`(\mu, s)`: the
      score term :math:`\nabla_\phi \log q_\phi(z)|_z` (zero-mean) is dropped, so the gradient
      variance vanishes when q = p. On :math:`\mathcal N(0, I)`:
      :math:`g_\mu = \mu + (\sigma - 1/\sigma)\bar\varepsilon`,
      :math:`g_s = \sigma\mu\bar\varepsilon + (\sigma^2 - 1) m_2`, both exactly 0 at the optimum.
  ``score`` -- score function / REINFORCE (Williams, 1992; Ranganath et al., 2014)
      :math:`\hat g = \frac1M\sum_m (f_m - b_m)\nabla_\phi\log q_\phi(z_m)` with
      :math:`f_m = \log q(z_m) - \log p(z_m)` and the leave-one-out baseline
      :math:`b_m = \frac1{M-1}\sum_{k\ne m} f_k` (Kool et al., 2019), which is independent of
      :math:`z_m` and so keeps the estimator unbiased. With ``num_mc = 1`` there is no other
      sample and :math:`b = 0` (plain REINFORCE, high variance by design).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from vi_sweep.core import noise
from vi_sweep.core.targets import LOG_2PI, Target


class Params(NamedTuple):
    """Variational parameters of q = N(mu, diag(exp(log_sigma)^2))."""

    mu: jax.Array  # shape=(d,)
    log_sigma: jax.Array  # shape=(d,)


Loss = Callable[[Params, jax.Array, Target], jax.Array]  # (params, noise, target) -> scalar
Estimator = Callable[[Params, jax.Array, Target], jax.Array]


class Objective(NamedTuple):
    """What a training step needs: its noise and the loss it differentiates."""

    draw: Callable[[jax.Array, int], jax.Array]  # (key, d) -> noise
    loss: Loss  # (params, noise, target) -> scalar


def diag_normal_log_density(z: jax.Array, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """log N(z; mu, diag(exp(2 log_sigma))) over the last axis."""
    eps = (z - mu) * jnp.exp(-log_sigma)
    return -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(log_sigma) - 0.5 * z.shape[-1] * LOG_2PI


def reparam_neg_elbo(params: Params, eps: jax.Array, target: Target) -> jax.Array:
    """The notebook's ``mc_neg_elbo``: reparameterised samples, closed-form log q in eps."""
    mu, log_sigma = params
    d = mu.shape[0]
    sigma = jnp.exp(log_sigma)
    z = mu[None, :] + sigma[None, :] * eps
    logp = target.log_density(z)
    logq = -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(log_sigma) - 0.5 * d * LOG_2PI
    return -jnp.mean(logp - logq)


def stl_neg_elbo(params: Params, eps: jax.Array, target: Target) -> jax.Array:
    """Sticking the landing: log q(z) with q's parameters held fixed, z still reparameterised."""
    mu, log_sigma = params
    z = mu[None, :] + jnp.exp(log_sigma)[None, :] * eps
    frozen = jax.lax.stop_gradient(params)
    logq = diag_normal_log_density(z, frozen.mu, frozen.log_sigma)
    return -jnp.mean(target.log_density(z) - logq)


def score_neg_elbo(params: Params, eps: jax.Array, target: Target) -> jax.Array:
    """Score-function estimator with a leave-one-out baseline; the value is the plain MC neg-ELBO."""
    mu, log_sigma = params
    num_mc = eps.shape[0]
    frozen = jax.lax.stop_gradient(params)
    z = frozen.mu[None, :] + jnp.exp(frozen.log_sigma)[None, :] * eps  # no path derivative
    f = diag_normal_log_density(z, frozen.mu, frozen.log_sigma) - target.log_density(z)
    if num_mc > 1:
        baseline = (jnp.sum(f) - f) / (num_mc - 1)
    else:
        baseline = jnp.zeros_like(f)
    surrogate = jnp.mean(jax.lax.stop_gradient(f - baseline) * diag_normal_log_density(z, mu, log_sigma))
    # value = mean(f); gradient = gradient of the surrogate.
    return jnp.mean(f) + surrogate - jax.lax.stop_gradient(surrogate)


ESTIMATORS: dict[str, Estimator] = {
    "reparam": reparam_neg_elbo,
    "stl": stl_neg_elbo,
    "score": score_neg_elbo,
}


def exact_neg_elbo(params: Params, noise: jax.Array, target: Target) -> jax.Array:
    """The deterministic negative ELBO: the closed-form KL(q || p) on a Gaussian target, the
    expected log joint plus entropy on a regression target; ``noise`` is empty and unused."""
    del noise
    return target.neg_elbo(params.mu, params.log_sigma)


def no_noise(key: jax.Array, d: int) -> jax.Array:
    """The exact objective draws nothing: an empty ``(0, d)`` array."""
    del key
    return jnp.zeros((0, d))


def make_mc_objective(estimator: str, num_mc: int) -> Objective:
    """A Monte-Carlo negative ELBO; its noise is eps of shape ``(num_mc, d)`` drawn from the step's key."""
    try:
        estimate = ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}") from None

    def draw_eps(key: jax.Array, d: int) -> jax.Array:
        # The notebook's draw, jax.random.normal(key, (num_mc, d)), bit for bit: threefry numbers
        # each element by its row-major index, so the flat draw reshaped is the same array. Drawn
        # flat, XLA's loop over the last axis has num_mc * d elements instead of d (100 is no
        # multiple of the vector width), which made the grid's num_mc=16 draws ~15% faster; and
        # written out (vi_sweep.core.noise), the hash and erf_inv fuse into that one loop.
        return noise.normal(key, num_mc * d).reshape(num_mc, d)

    return Objective(draw_eps, estimate)


OBJECTIVES = ("exact", "mc")


def make_objective(name: str, *, estimator: str = "reparam", num_mc: int = 8) -> Objective:
    """The objective ``objective.name``; ``estimator`` and ``num_mc`` only matter for ``mc``."""
    if name == "exact":
        return Objective(no_noise, exact_neg_elbo)
    if name == "mc":
        return make_mc_objective(estimator, num_mc)
    raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
