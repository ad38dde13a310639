r"""Gradient estimators: unbiased against the dense closed-form gradient; STL and reparam at the optimum.

The reference gradient of KL(q || p) is written out in float64 numpy from the dense precision
:math:`P = \Sigma^{-1}` (``np.linalg.inv``):

.. math::  \partial_\mu \mathrm{KL} = P(\mu - m), \qquad
           \partial_{s_i} \mathrm{KL} = P_{ii}\,\sigma_i^2 - 1 .

Unbiasedness test: ``n`` independent gradient draws (vmapped over keys); every coordinate of their
mean must lie within ``Z`` standard errors (sample std / sqrt(n)) of the reference. With Z = 5 a
correct estimator fails one of the ~400 coordinate checks below with probability < 1e-3 (and the
keys are fixed, so the outcome is deterministic); a control estimator with a known bias is
rejected by the same check, so the check has power.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_sweep.core.objectives import ESTIMATORS, Params, diag_normal_log_density, make_mc_objective
from vi_sweep.core.targets import make_target
from vi_sweep.core.trainer import split_fields, train_one

Z = 5.0
D = 4
TARGETS = {  # name -> (builder kwargs, dense mean, dense covariance)
    "standard_normal": ({}, np.zeros(D), np.eye(D)),
    "ill_conditioned": ({"condition": 100.0}, np.zeros(D), np.diag(np.logspace(-2.0, 0.0, D))),
    "correlated": ({"rho": 0.6}, np.zeros(D), 0.4 * np.eye(D) + 0.6 * np.ones((D, D))),
    "shifted": ({"offset": 3.0}, np.full(D, 3.0), np.eye(D)),
}
POINTS = {  # (mu offset from the target mean, log_sigma)
    "away": (np.array([0.5, -1.0, 0.3, 1.5]), np.array([-0.5, 0.2, 0.0, -1.0])),
    "wide": (np.array([-0.2, 0.1, 0.0, 0.4]), np.array([0.7, 0.4, 0.9, 0.3])),
}


def reference_gradient(mu, log_sigma, mean, cov):
    precision = np.linalg.inv(cov)
    return np.concatenate([precision @ (mu - mean), np.diag(precision) * np.exp(2 * log_sigma) - 1.0])


@functools.lru_cache(maxsize=None)
def vmapped_gradient(objective):
    """One compiled program per objective; targets and points are arguments, so they reuse it."""
    return jax.jit(jax.vmap(jax.grad(objective), in_axes=(None, 0, None)))


def gradient_draws(objective, target, mu, log_sigma, n, seed=0):
    """``n`` independent gradients of one MC objective, as an (n, 2d) float64 array."""
    params = Params(jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32))
    keys = jax.random.split(jax.random.key(seed), n)
    grads = vmapped_gradient(objective)(params, keys, target)
    return np.concatenate([np.asarray(grads.mu, np.float64), np.asarray(grads.log_sigma, np.float64)], axis=1)


@functools.lru_cache(maxsize=None)
def mc_objective(estimator, num_mc):
    """``loss(params, key, target)``: the objective's draw from ``key``, then its loss."""
    objective = make_mc_objective(estimator, num_mc)

    def loss(params, key, target):
        return objective.loss(params, objective.draw(key, params.mu.shape[0]), target)

    return loss


def within_confidence(draws, reference):
    """Per coordinate: |mean - reference| <= Z * std/sqrt(n) (+ float32 slack for zero-variance draws)."""
    mean = draws.mean(axis=0)
    stderr = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    return np.abs(mean - reference) <= Z * stderr + 1e-5 * (1.0 + np.abs(reference))


@pytest.mark.parametrize("num_mc", [1, 3])
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("target_name", sorted(TARGETS))
def test_each_estimator_is_unbiased(estimator, target_name, num_mc):
    kwargs, mean, cov = TARGETS[target_name]
    target = make_target(target_name, D, **kwargs)
    objective = mc_objective(estimator, num_mc)
    for offset, log_sigma in POINTS.values():
        mu = mean + offset
        mu32, ls32 = np.float32(mu).astype(np.float64), np.float32(log_sigma).astype(np.float64)
        draws = gradient_draws(objective, target, mu, log_sigma, n=20_000)
        ok = within_confidence(draws, reference_gradient(mu32, ls32, mean, cov))
        assert ok.all(), f"{estimator} biased on {target_name} at mu={mu}, log_sigma={log_sigma}: {draws.mean(0)}"


def biased_score_neg_elbo(params, eps, target):
    """A *wrong* score estimator: its baseline includes the sample itself, so E[g] = (M-1)/M grad KL."""
    frozen = jax.lax.stop_gradient(params)
    z = frozen.mu[None, :] + jnp.exp(frozen.log_sigma)[None, :] * eps
    f = diag_normal_log_density(z, frozen.mu, frozen.log_sigma) - target.log_density(z)
    weights = jax.lax.stop_gradient(f - jnp.mean(f))
    return jnp.mean(weights * diag_normal_log_density(z, params.mu, params.log_sigma))


def test_the_unbiasedness_check_rejects_a_known_bias():
    _, mean, cov = TARGETS["standard_normal"]
    target = make_target("standard_normal", D)

    def objective(params, key, target):
        return biased_score_neg_elbo(params, jax.random.normal(key, (2, D)), target)

    offset, log_sigma = POINTS["away"]
    draws = gradient_draws(objective, target, mean + offset, log_sigma, n=20_000)
    reference = reference_gradient(mean + offset, log_sigma, mean, cov)
    np.testing.assert_allclose(draws.mean(0), 0.5 * reference, atol=0.15)  # the bias the theory predicts
    assert not within_confidence(draws, reference).all()


def test_every_estimator_reports_the_same_loss_value():
    """They differ only in the gradient: the value is the plain MC negative ELBO for the same eps."""
    target = make_target("correlated", D, rho=0.6)
    params = Params(jnp.asarray(POINTS["away"][0], jnp.float32), jnp.asarray(POINTS["away"][1], jnp.float32))
    key = jax.random.key(3)
    values = [float(mc_objective(name, 5)(params, key, target)) for name in sorted(ESTIMATORS)]
    np.testing.assert_allclose(values, values[0], rtol=1e-5)


@pytest.mark.parametrize("target_name", ["standard_normal", "ill_conditioned", "shifted"])
def test_stl_has_zero_gradient_variance_where_q_equals_p(target_name):
    kwargs, _, _ = TARGETS[target_name]
    target = make_target(target_name, D, **kwargs)
    mu, log_sigma = (np.asarray(x, np.float64) for x in target.meanfield_optimum())
    stl = gradient_draws(mc_objective("stl", 4), target, mu, log_sigma, n=2_000)
    reparam = gradient_draws(mc_objective("reparam", 4), target, mu, log_sigma, n=2_000)
    assert np.max(np.abs(stl)) < 1e-4  # float32 round-off of sigma* = exp(log sigma*)
    assert np.min(reparam.std(axis=0)) > 0.3  # the total derivative keeps O(1/sqrt(M)) noise there


def stl_fields(**overrides):
    base = dict(
        objective="mc", estimator="stl", num_mc=1, optimizer="adam", target="standard_normal", d=50,
        steps=300, log_every=100, lr=0.1, seed=0, init_log_sigma=0.0,
        optimizer_b1=0.9, optimizer_b2=0.999, optimizer_eps=1e-8, optimizer_grad_clip=None,
    )
    base.update(overrides)
    return base


def test_a_stl_run_started_at_the_optimum_stays_there_and_reparam_does_not():
    state, rows = train_one(*split_fields(stl_fields()))
    assert np.all(np.asarray(state.params.mu) == 0.0) and np.all(np.asarray(state.params.log_sigma) == 0.0)
    assert np.all(rows["kl"] == 0.0) and np.all(rows["grad_norm"] == 0.0)
    _, reparam_rows = train_one(*split_fields(stl_fields(estimator="reparam")))
    assert np.all(reparam_rows["kl"][1:] > 0.5)  # num_mc=1 noise at lr=0.1 drives it off the optimum


@pytest.mark.parametrize("num_mc", [1, 4])
def test_reparam_gradient_variance_at_the_optimum_is_1_over_M_and_2_over_M(num_mc):
    """LITERATURE.md: g_mu = eps_bar, g_s = mean(eps^2) - 1, so Var = 1/M and 2/M per coordinate."""
    d = 50
    target = make_target("standard_normal", d)
    draws = gradient_draws(mc_objective("reparam", num_mc), target, np.zeros(d), np.zeros(d), n=4_000, seed=1)
    for block, expected in ((draws[:, :d], 1.0 / num_mc), (draws[:, d:], 2.0 / num_mc)):
        squares = (block - block.mean(axis=0)) ** 2  # n * d independent samples of the variance
        estimate = squares.mean()
        stderr = squares.std() / np.sqrt(squares.size)
        assert abs(estimate - expected) <= Z * stderr, (estimate, expected, stderr)


@pytest.mark.parametrize("num_mc", [1, 5])
def test_per_draw_gradients_match_the_closed_forms_for_the_standard_normal(num_mc):
    """LITERATURE.md, "Theory": with eps_bar = mean(eps), m2 = mean(eps^2) over the M draws,
    reparam: g_mu = mu + sigma eps_bar,            g_s = sigma mu eps_bar + sigma^2 m2 - 1;
    STL:     g_mu = mu + (sigma - 1/sigma) eps_bar, g_s = sigma mu eps_bar + (sigma^2 - 1) m2."""
    d = 6
    target = make_target("standard_normal", d)
    mu = np.linspace(-1.0, 1.5, d)
    log_sigma = np.linspace(-0.8, 0.6, d)
    sigma = np.exp(log_sigma)
    params = Params(jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32))
    for seed in range(3):
        key = jax.random.key(seed)
        eps = np.asarray(jax.random.normal(key, (num_mc, d)), np.float64)  # the draws the objective makes
        eps_bar, m2 = eps.mean(axis=0), (eps**2).mean(axis=0)
        expected = {
            "reparam": (mu + sigma * eps_bar, sigma * mu * eps_bar + sigma**2 * m2 - 1.0),
            "stl": (mu + (sigma - 1.0 / sigma) * eps_bar, sigma * mu * eps_bar + (sigma**2 - 1.0) * m2),
        }
        for name, (g_mu, g_s) in expected.items():
            grads = jax.grad(mc_objective(name, num_mc))(params, key, target)
            np.testing.assert_allclose(np.asarray(grads.mu), g_mu, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.asarray(grads.log_sigma), g_s, rtol=1e-5, atol=1e-5)
