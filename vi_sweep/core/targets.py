r"""Targets: Gaussians with structure (every KL and optimum closed form and O(d)), and the
regression posteriors of :mod:`vi_sweep.core.glm` (logistic and Poisson; registered here too).

Every Gaussian target is :math:`p = \mathcal N(m, \Sigma)` with

.. math::  \Sigma = \operatorname{diag}(a) + b\,\mathbf 1\mathbf 1^\top, \qquad a_i > 0,\ b \ge 0,

which covers the standard normal (:math:`a = 1, b = 0`), diagonal ill-conditioned targets, the
equicorrelated target (:math:`a = 1-\rho, b = \rho`) and shifted means. Its precision follows
from Sherman-Morrison without forming a dense matrix:

.. math::  P = \Sigma^{-1} = D^{-1} - c\, D^{-1}\mathbf 1 \mathbf 1^\top D^{-1},
           \qquad c = \frac{b}{1 + b\,\mathbf 1^\top D^{-1}\mathbf 1},
           \qquad \log\det\Sigma = \sum_i \log a_i + \log(1 + b\,\mathbf 1^\top D^{-1}\mathbf 1).

A target is a pytree of arrays (a ``NamedTuple``), so its parameters (``condition``, ``rho``,
``offset``) are traced values: changing them never recompiles, and a grid over them is vmapped.
Builders are registered in :data:`TARGETS` by the names used in ``conf/target/*.yaml``; each
builder's keyword defaults are the config's (the Hydra schemas read them from the signatures).
Every target offers the same methods (``log_density``, ``neg_elbo``, ``kl``, ``kl_excess``,
``meanfield_optimum``), so the objectives and the trainer never ask which kind it is.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from vi_sweep.core.glm import REGRESSION_TARGETS, RegressionTarget
from vi_sweep.core.regression import regression_optimum, split_params

# float32, bit-equal to the notebook's jnp.log(2 * jnp.pi), without touching a device at import.
LOG_2PI = np.float32(np.log(2.0 * np.pi))


def expm1_minus_identity(x: jax.Array) -> jax.Array:
    r""":math:`f(x) = e^x - 1 - x \ge 0`, accurate and non-negative in float32.

    Near 0 the direct formula cancels catastrophically (the notebook printed KL = -3e-6 at the
    optimum); there the Taylor series :math:`x^2/2 + x^3/6 + \dots` is used, which is positive
    for :math:`|x| < 0.1` and accurate to ~1e-9 relative. Outside, ``expm1(x) - x`` loses at most
    a few ulps relative to a value >= 4.8e-3, so the sign is always right.
    """
    small = jnp.abs(x) < 0.1
    xs = jnp.where(small, x, 0.0)  # keep the unused branch's gradient finite
    taylor = xs * xs * (0.5 + xs * (1.0 / 6.0 + xs * (1.0 / 24.0 + xs * (1.0 / 120.0 + xs / 720.0))))
    xl = jnp.where(small, 1.0, x)
    return jnp.where(small, taylor, jnp.expm1(xl) - xl)


class GaussianTarget(NamedTuple):
    r""":math:`\mathcal N(\text{mean}, \operatorname{diag}(\text{diag}) + \text{shared}\,\mathbf 1\mathbf 1^\top)`."""

    mean: jax.Array  # shape=(d,)
    diag: jax.Array  # shape=(d,), > 0
    shared: jax.Array  # shape=(), >= 0

    # -- structure --------------------------------------------------------------------------
    def _shrinkage(self) -> tuple[jax.Array, jax.Array]:
        """(1/a, c) of the Sherman-Morrison form of the precision."""
        inv_diag = 1.0 / self.diag
        c = self.shared / (1.0 + self.shared * jnp.sum(inv_diag))
        return inv_diag, c

    def quadratic(self, r: jax.Array) -> jax.Array:
        r""":math:`r^\top P r` over the last axis of ``r``.

        Parts that are known zeros or ones before tracing (the standard normal's ``a = 1``,
        ``b = 0``, see :func:`standard_normal`) are left out: the value is the same to the bit,
        and a training step does not spend a pass over its ``(num_mc, d)`` samples on them.
        """
        if _known(self.shared, 0.0):
            return jnp.sum(r * r, axis=-1) if _known(self.diag, 1.0) else jnp.sum(r * r / self.diag, axis=-1)
        inv_diag, c = self._shrinkage()
        s = jnp.sum(r * inv_diag, axis=-1)
        return jnp.sum(r * r * inv_diag, axis=-1) - c * s * s

    def precision_diag(self) -> jax.Array:
        r""":math:`P_{ii} = (1 - c/a_i)/a_i`."""
        inv_diag, c = self._shrinkage()
        return inv_diag * (1.0 - c * inv_diag)

    def log_precision_diag(self) -> jax.Array:
        r""":math:`\log P_{ii} = -\log a_i + \operatorname{log1p}(-c/a_i)`, without forming :math:`P_{ii}`."""
        inv_diag, c = self._shrinkage()
        return -jnp.log(self.diag) + jnp.log1p(-c * inv_diag)

    def log_det_cov(self) -> jax.Array:
        r""":math:`\log\det\Sigma = \sum_i \log a_i + \operatorname{log1p}(b \sum_i 1/a_i)` (matrix determinant lemma)."""
        inv_diag, _ = self._shrinkage()
        return jnp.sum(jnp.log(self.diag)) + jnp.log1p(self.shared * jnp.sum(inv_diag))

    # -- densities and divergences ----------------------------------------------------------
    def log_density(self, z: jax.Array) -> jax.Array:
        r""":math:`\log p(z)` over the last axis: :math:`-\tfrac12 (z-m)^\top P (z-m) - \tfrac12\log\det\Sigma - \tfrac d2 \log 2\pi`."""
        d = z.shape[-1]
        r = z if _known(self.mean, 0.0) else z - self.mean
        return -0.5 * self.quadratic(r) - 0.5 * self.log_det_cov() - 0.5 * d * LOG_2PI

    def kl_floor(self) -> jax.Array:
        r"""The smallest KL a mean-field q can reach: :math:`\tfrac12(\sum_i\log P_{ii} + \log\det\Sigma) \ge 0`.

        Non-negative by Hadamard's inequality (:math:`\det P \le \prod_i P_{ii}`); zero for
        diagonal targets. The two sums are each of size :math:`d\,|\log a|` and cancel almost
        completely (at d = 1e5, rho = 0.9 float32 lost 0.2 %), so the :math:`\log a_i` terms are
        cancelled analytically first:

        .. math::  \mathrm{KL}_{\text{floor}} = \tfrac12\Big[\sum_i \operatorname{log1p}(-c/a_i)
                   + \operatorname{log1p}\big(b\,\textstyle\sum_i 1/a_i\big)\Big].

        Clamped at 0 against float32 round-off.
        """
        inv_diag, c = self._shrinkage()
        value = 0.5 * (jnp.sum(jnp.log1p(-c * inv_diag)) + jnp.log1p(self.shared * jnp.sum(inv_diag)))
        return jnp.maximum(value, 0.0)

    def kl_excess(self, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
        r"""How far q is from the best mean-field q: :math:`\mathrm{KL}(q\,\|\,p) - \mathrm{KL}_{\text{floor}} \ge 0`.

        .. math::
            \tfrac12 \sum_i f(2 s_i + \log P_{ii}) + \tfrac12 (\mu - m)^\top P (\mu - m),
            \qquad f(x) = e^x - 1 - x \ge 0,

        a sum of non-negative parts (float32 cannot make it negative), zero exactly at the
        mean-field optimum :meth:`meanfield_optimum`. It equals :math:`\mathrm{ELBO}(q^*) -
        \mathrm{ELBO}(q)`, the meaning ``kl_excess`` has on every target.
        """
        x = 2.0 * log_sigma + self.log_precision_diag()
        spread = 0.5 * jnp.sum(expm1_minus_identity(x), axis=-1)
        location = 0.5 * jnp.maximum(self.quadratic(mu - self.mean), 0.0)
        return spread + location

    def neg_elbo(self, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
        """The exact negative ELBO: p is normalised, so it is :meth:`kl` (what ``objective=exact`` minimises)."""
        return self.kl(mu, log_sigma)

    def kl(self, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
        r"""KL(q || p) for :math:`q = \mathcal N(\mu, \operatorname{diag}(e^{2 s}))`, never negative:
        :meth:`kl_excess` + :meth:`kl_floor`.

        This equals :math:`\tfrac12[\operatorname{tr}(P S) + r^\top P r - d + \log\det\Sigma - \log\det S]`
        term by term, but every term is a sum of non-negative parts, so float32 cannot make it
        negative. For the standard normal it is the notebook's
        :math:`\tfrac12\sum(\sigma^2 + \mu^2 - 2\log\sigma - 1)`.
        """
        return self.kl_excess(mu, log_sigma) + self.kl_floor()

    def meanfield_optimum(self) -> tuple[jax.Array, jax.Array]:
        r"""argmin KL(q || p) over mean-field q: :math:`\mu^* = m`, :math:`\sigma_i^{*2} = 1/P_{ii}`."""
        return self.mean, -0.5 * self.log_precision_diag()

    def min_std(self) -> jax.Array:
        """The smallest marginal standard deviation of p (the scale for "variance collapse")."""
        return jnp.sqrt(jnp.min(self.diag + self.shared))


def _known(x, value: float) -> bool:
    """Whether ``x`` is a NumPy constant (not a traced array) with every entry equal to ``value``."""
    return isinstance(x, (np.ndarray, np.generic)) and bool(np.all(x == value))


def standard_normal(d: int) -> GaussianTarget:
    """N(0, I): the notebook's target. Its parameters are NumPy constants, known before tracing."""
    return GaussianTarget(np.zeros((d,), np.float32), np.ones((d,), np.float32), np.float32(0.0))


def ill_conditioned(d: int, condition: float = 1e4) -> GaussianTarget:
    """N(0, diag(v)) with v log-spaced from 1/condition to 1 (condition number ``condition``)."""
    exponents = jnp.linspace(-1.0, 0.0, d) if d > 1 else jnp.zeros((1,))
    return GaussianTarget(jnp.zeros((d,)), jnp.asarray(condition, jnp.float32) ** exponents, jnp.zeros(()))


def correlated(d: int, rho: float = 0.9) -> GaussianTarget:
    """N(0, (1 - rho) I + rho 11^T): unit variances, pairwise correlation rho. Mean-field cannot match it."""
    rho = jnp.asarray(rho, jnp.float32)
    return GaussianTarget(jnp.zeros((d,)), jnp.full((d,), 1.0) * (1.0 - rho), rho)


def shifted(d: int, offset: float = 10.0) -> GaussianTarget:
    """N(offset * 1, I): the optimum is far from the initial mean 0."""
    return GaussianTarget(jnp.full((d,), 1.0) * jnp.asarray(offset, jnp.float32), jnp.ones((d,)), jnp.zeros(()))


Target = Union[GaussianTarget, RegressionTarget]
"""What the objectives and the trainer use: ``log_density``, ``neg_elbo``, ``kl``, ``kl_excess``, ``meanfield_optimum``."""

TARGETS: dict[str, Callable[..., Target]] = {
    "standard_normal": standard_normal,
    "ill_conditioned": ill_conditioned,
    "correlated": correlated,
    "shifted": shifted,
    **REGRESSION_TARGETS,
}


def split_target_params(name: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """``(static, traced)`` keywords of target ``name``.

    Static: the keywords that fix the compiled program (a regression target's dataset and
    quadrature rule: :func:`vi_sweep.core.regression.split_params`), typed; they go into the
    trainer's ``TrainSpec``. Traced: every other keyword, as a float (all of a Gaussian's).
    """
    if name in REGRESSION_TARGETS:
        return split_params(name, params)
    return {}, {key: float(value) for key, value in params.items()}


def with_builder_defaults(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with every missing keyword of target ``name``'s builder at its default."""
    defaults = {key: p.default for key, p in inspect.signature(TARGETS[name]).parameters.items() if key != "d"}
    return {**defaults, **params}


def make_target(name: str, d: int, optimum: Optional[tuple[Any, Any]] = None, **params) -> Target:
    """Build target ``name`` of dimension ``d``; ``params`` may be traced scalars (not the static ones).

    A regression target also carries its mean-field optimum q* = ``optimum`` (mu, log_sigma),
    which the trainer passes in traced; without it, q* is solved here on the host
    (:func:`vi_sweep.core.regression.regression_optimum`: float64, once per posterior), which needs
    concrete ``params``. Gaussian targets have q* in closed form and ignore ``optimum``.
    """
    try:
        builder = TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None
    target = builder(d, **params)
    if isinstance(target, RegressionTarget):
        if optimum is None:
            optimum = regression_optimum(name, d, **with_builder_defaults(name, params))
        target = target.with_optimum(*optimum)
    return target


def reference_optimum(name: str, d: int, **params: Any) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """What the trainer must be given besides the config: q* (float64 mu, log_sigma) for a
    regression target (``params``: concrete values), None for a Gaussian one (closed form inside)."""
    if name not in REGRESSION_TARGETS:
        return None
    return tuple(regression_optimum(name, d, **with_builder_defaults(name, params)))  # type: ignore[return-value]
