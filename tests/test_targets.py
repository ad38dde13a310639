"""Gaussian targets against dense float64 numpy references, built from the issue's definitions.

Every reference below forms the dense covariance from the *spec* (log-spaced variances,
(1 - rho) I + rho 11^T, offset * 1), inverts it with ``np.linalg`` and never touches the
Sherman-Morrison code under test. Tolerances are float32 round-off (rtol 1e-5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_sweep.core.targets import correlated, ill_conditioned, make_target, shifted, standard_normal
from vi_sweep.core.trainer import split_fields, train_one

D = 6
CASES = {  # name -> (builder kwargs, dense mean, dense covariance) from the issue's definitions
    "standard_normal": ({}, np.zeros(D), np.eye(D)),
    "ill_conditioned": ({"condition": 1e3}, np.zeros(D), np.diag(np.logspace(-3.0, 0.0, D))),
    "correlated": ({"rho": 0.7}, np.zeros(D), 0.3 * np.eye(D) + 0.7 * np.ones((D, D))),
    "shifted": ({"offset": 2.5}, np.full(D, 2.5), np.eye(D)),
}


def dense_log_density(z, mean, cov):
    r = z - mean
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * np.einsum("...i,ij,...j->...", r, np.linalg.inv(cov), r) - 0.5 * logdet - 0.5 * len(mean) * np.log(2 * np.pi)


def dense_kl(mu, log_sigma, mean, cov):
    """KL(N(mu, diag(e^{2s})) || N(mean, cov)) = 1/2 [tr(P S) + r'Pr - d + log det cov - log det S]."""
    precision = np.linalg.inv(cov)
    r = mu - mean
    s = np.diag(np.exp(2 * log_sigma))
    return 0.5 * (np.trace(precision @ s) + r @ precision @ r - len(mu) + np.linalg.slogdet(cov)[1] - np.sum(2 * log_sigma))


def dense_meanfield_optimum(mean, cov):
    """Stationarity of the KL in (mu, s): P(mu - m) = 0 and P_ii e^{2 s_i} = 1."""
    return mean, -0.5 * np.log(np.diag(np.linalg.inv(cov)))


def f64(x):
    return np.asarray(x, np.float64)


@pytest.mark.parametrize("name", CASES)
def test_the_builder_has_the_issues_covariance_and_mean(name):
    kwargs, mean, cov = CASES[name]
    target = make_target(name, D, **kwargs)
    built = np.diag(f64(target.diag)) + float(target.shared) * np.ones((D, D))
    np.testing.assert_allclose(built, cov, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(f64(target.mean), mean, rtol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_log_density_matches_a_dense_reference(name):
    kwargs, mean, cov = CASES[name]
    target = make_target(name, D, **kwargs)
    z = np.random.default_rng(0).normal(size=(5, D)) * 1.5 + mean
    np.testing.assert_allclose(f64(target.log_density(jnp.asarray(z, jnp.float32))), dense_log_density(z, mean, cov), rtol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_kl_matches_the_dense_closed_form(name):
    kwargs, mean, cov = CASES[name]
    target = make_target(name, D, **kwargs)
    rng = np.random.default_rng(1)
    for _ in range(4):
        mu = mean + rng.normal(size=D)
        log_sigma = rng.uniform(-2.0, 1.0, size=D)
        got = float(target.kl(jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32)))
        assert got == pytest.approx(dense_kl(f64(np.float32(mu)), f64(np.float32(log_sigma)), mean, cov), rel=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_meanfield_optimum_is_the_dense_stationary_point_and_its_kl_is_the_floor(name):
    kwargs, mean, cov = CASES[name]
    target = make_target(name, D, **kwargs)
    mu, log_sigma = target.meanfield_optimum()
    ref_mu, ref_log_sigma = dense_meanfield_optimum(mean, cov)
    np.testing.assert_allclose(f64(mu), ref_mu, atol=1e-6)
    np.testing.assert_allclose(f64(log_sigma), ref_log_sigma, atol=1e-6)
    assert float(target.kl(mu, log_sigma)) == pytest.approx(dense_kl(ref_mu, ref_log_sigma, mean, cov), abs=1e-6)
    assert float(target.kl_floor()) == pytest.approx(dense_kl(ref_mu, ref_log_sigma, mean, cov), abs=1e-6)


def test_known_optima_in_closed_form():
    d = 8
    v = np.logspace(-4.0, 0.0, d)
    np.testing.assert_allclose(f64(ill_conditioned(d).meanfield_optimum()[1]), 0.5 * np.log(v), atol=1e-5)
    np.testing.assert_allclose(f64(shifted(d).meanfield_optimum()[0]), np.full(d, 10.0))
    # Equicorrelated: P_ii = (1 + (d-2) rho) / ((1 - rho)(1 + (d-1) rho)).
    rho = 0.9
    sigma2 = (1 - rho) * (1 + (d - 1) * rho) / (1 + (d - 2) * rho)
    np.testing.assert_allclose(f64(correlated(d, rho).meanfield_optimum()[1]), np.full(d, 0.5 * np.log(sigma2)), atol=1e-6)


@pytest.mark.parametrize("d", [2, 100, 10_000, 100_000])
def test_correlated_kl_floor_matches_its_closed_form_up_to_d_1e5(d):
    """1/2 [d log P_ii + log det Sigma], evaluated in float64; the float32 code must not cancel."""
    rho = 0.9
    closed = 0.5 * (
        d * np.log((1 + (d - 2) * rho) / ((1 - rho) * (1 + (d - 1) * rho))) + (d - 1) * np.log(1 - rho) + np.log1p((d - 1) * rho)
    )
    assert float(correlated(d, rho).kl_floor()) == pytest.approx(closed, rel=1e-5)
    assert float(standard_normal(d).kl_floor()) == 0.0 and float(ill_conditioned(d).kl_floor()) == 0.0


def test_kl_is_never_negative_for_any_target_at_its_optimum():
    for target in (standard_normal(1000), ill_conditioned(1000), correlated(1000), shifted(1000)):
        mu, log_sigma = target.meanfield_optimum()
        for nudge in (0.0, 1e-7, -1e-7, 1e-4):
            assert float(target.kl(mu + nudge, log_sigma + nudge)) >= float(target.kl_floor()) - 1e-6 * (1 + float(target.kl_floor()))
            assert float(target.kl(mu + nudge, log_sigma + nudge)) >= 0.0


def run_fields(**overrides):
    base = dict(
        objective="exact", estimator="reparam", num_mc=1, optimizer="adam", target="correlated", d=10,
        steps=3000, log_every=1000, lr=5e-2, seed=0, init_log_sigma=-2.0,
        optimizer_b1=0.9, optimizer_b2=0.999, optimizer_eps=1e-8, optimizer_grad_clip=None, target_rho=0.9,
    )
    base.update(overrides)
    return base


def test_the_exact_run_on_correlated_ends_at_the_closed_form_meanfield_optimum():
    d, rho = 10, 0.9
    state, rows = train_one(*split_fields(run_fields(d=d, target_rho=rho)))
    sigma2 = (1 - rho) * (1 + (d - 1) * rho) / (1 + (d - 2) * rho)
    np.testing.assert_allclose(f64(state.params.log_sigma), np.full(d, 0.5 * np.log(sigma2)), atol=1e-4)
    np.testing.assert_allclose(f64(state.params.mu), np.zeros(d), atol=1e-6)
    floor = 0.5 * (d * np.log(1 / sigma2) + (d - 1) * np.log(1 - rho) + np.log1p((d - 1) * rho))
    assert rows["kl"][-1] == pytest.approx(floor, rel=1e-5)
    assert rows["kl"][0] > floor + 1.0  # it did travel: the start is far from the optimum


@pytest.mark.parametrize("target,params", [("ill_conditioned", {"target_condition": 1e4}), ("correlated", {"target_rho": 0.9})])
def test_d_1e5_runs_with_no_dense_matrix(target, params):
    """A dense d x d float32 matrix would need 40 GB; a short MC run must just work."""
    fields = run_fields(objective="mc", num_mc=2, target=target, d=100_000, steps=4, log_every=2, lr=1e-2)
    del fields["target_rho"]
    fields.update(params)
    state, rows = train_one(*split_fields(fields))
    assert int(state.diverged_at) == 0
    assert np.all(np.isfinite(rows["kl"])) and np.all(np.isfinite(rows["loss"]))
    assert rows["kl"][-1] < rows["kl"][0]  # Adam moves log_sigma = -2 up towards its optimum everywhere


def test_targets_are_traced_so_their_parameters_vmap():
    """condition / rho / offset are pytree leaves: one program serves a grid over them."""
    rhos = jnp.array([0.1, 0.5, 0.9])
    floors = jax.vmap(lambda r: correlated(4, r).kl_floor())(rhos)
    for rho, floor in zip(np.asarray(rhos, np.float64), np.asarray(floors)):
        cov = (1 - rho) * np.eye(4) + rho * np.ones((4, 4))
        mu, ls = dense_meanfield_optimum(np.zeros(4), cov)
        assert float(floor) == pytest.approx(dense_kl(mu, ls, np.zeros(4), cov), rel=1e-4)
