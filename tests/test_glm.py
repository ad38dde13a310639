r"""Regression posteriors (logistic, Poisson) against independent float64 references.

The references below are written out here from the model's definition, in float64 numpy, and
never call the code under test (only its data and, where the K-node rule *is* the objective, its
nodes):

- the log joint :math:`\log\mathcal N(z; 0, \tau^2 I) + \sum_i \log p(y_i \mid x_i^\top z)`, with
  Bernoulli and Poisson log-pmfs (``math.lgamma``), evaluated on :math:`10^6` draws of q;
- the expected log likelihood by Gauss-Hermite quadrature with ``numpy.polynomial.hermite_e``
  and the prior and entropy terms :math:`\mathbb E_q\log\mathcal N(z;0,\tau^2 I) =
  -\tfrac d2\log(2\pi\tau^2) - \frac{\|\mu\|^2 + \|\sigma\|^2}{2\tau^2}`,
  :math:`H(q) = \sum_j s_j + \tfrac d2(1 + \log 2\pi)`;
- gradients by central finite differences of that float64 function.

Small synthetic data (n = 200, d = 5) except the tests marked as the real-dataset checks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.sweeps import composed_fields, flat_fields, grid, write_sweep
from tests.test_estimators import gradient_draws, mc_objective, within_confidence
from vi_sweep.core import datasets, regression
from vi_sweep.core.objectives import ESTIMATORS, Params
from vi_sweep.core.targets import make_target
from vi_sweep.core.trainer import as_hyper, jitted_batch_train, split_fields, train_one

D, ROWS = 5, 200
SYNTHETIC = dict(dataset="synthetic", num_rows=ROWS, feature_correlation=0.5, data_seed=3, prior_scale=1.5)
FAMILIES = {"logistic_regression": datasets.BINARY, "poisson_regression": datasets.COUNT}
NODES = 64  # the logistic builder's default


def posterior(name):
    """The synthetic posterior's builder keywords (with the logistic quadrature rule)."""
    return dict(SYNTHETIC, **({"quadrature_nodes": NODES} if name == "logistic_regression" else {}))


def synthetic_target(name, **overrides):
    return make_target(name, D, **dict(SYNTHETIC, **overrides))


def data_of(name, d=D, **params):
    params = dict(SYNTHETIC, **params)
    data = datasets.load_dataset(params["dataset"], FAMILIES[name], d, params["num_rows"], params["feature_correlation"], params["data_seed"])
    return data.features, data.response, params["prior_scale"]


def f64(x):
    return np.asarray(x, np.float64)


# --- float64 references ----------------------------------------------------------------------


def log_joint(z, x, y, name, tau):
    """log p(y, z) for z of shape (..., d), straight from the model."""
    t = z @ x.T
    if name == "logistic_regression":
        likelihood = np.sum(y * t - np.logaddexp(0.0, t), axis=-1)
    else:
        log_factorials = np.array([math.lgamma(v + 1.0) for v in y])
        likelihood = np.sum(y * t - np.exp(t) - log_factorials, axis=-1)
    d = z.shape[-1]
    return likelihood - 0.5 * np.sum(z * z, axis=-1) / tau**2 - d * np.log(tau) - 0.5 * d * np.log(2 * np.pi)


def monte_carlo_neg_elbo(mu, log_sigma, x, y, name, tau, draws=10**6, chunk=10**5, seed=0):
    """Mean and standard error of log q(z) - log p(y, z) over ``draws`` z ~ q (float64)."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(log_sigma)
    values = []
    for _ in range(draws // chunk):
        eps = rng.standard_normal((chunk, len(mu)))
        z = mu + sigma * eps
        log_q = -0.5 * np.sum(eps * eps, axis=1) - np.sum(log_sigma) - 0.5 * len(mu) * np.log(2 * np.pi)
        values.append(log_q - log_joint(z, x, y, name, tau))
    values = np.concatenate(values)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


def hermite_rule(num_nodes):
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    return nodes, weights / np.sqrt(2 * np.pi)


def quadrature_neg_elbo(mu, log_sigma, x, y, name, tau, rule):
    """-E_q log p(y | z) by the 1-d rule ``(nodes, weights)`` over each t_i ~ N(m_i, v_i), prior and entropy in closed form."""
    nodes, weights = rule
    sigma = np.exp(log_sigma)
    m, r = x @ mu, np.sqrt((x * x) @ (sigma * sigma))
    t = m[:, None] + r[:, None] * nodes[None, :]
    if name == "logistic_regression":
        log_lik = (y[:, None] * t - np.logaddexp(0.0, t)) @ weights
    else:
        log_factorials = np.array([math.lgamma(v + 1.0) for v in y])
        log_lik = (y[:, None] * t - np.exp(t)) @ weights - log_factorials
    d = len(mu)
    expected_log_prior = -0.5 * d * np.log(2 * np.pi * tau**2) - (mu @ mu + sigma @ sigma) / (2 * tau**2)
    entropy = np.sum(log_sigma) + 0.5 * d * (1 + np.log(2 * np.pi))
    return -(np.sum(log_lik) + expected_log_prior + entropy)


def finite_difference_gradient(function, mu, log_sigma, h=1e-5):
    point = np.concatenate([mu, log_sigma])
    d = len(mu)
    grad = np.zeros_like(point)
    for k in range(len(point)):
        up, down = point.copy(), point.copy()
        up[k] += h
        down[k] -= h
        grad[k] = (function(up[:d], up[d:]) - function(down[:d], down[d:])) / (2 * h)
    return grad


def points(target):
    """Where the checks are made: q* itself, a point away from it, and the trainer's start."""
    mu_star, log_sigma_star = (f64(v) for v in target.meanfield_optimum())
    return {
        "optimum": (mu_star, log_sigma_star),
        "away": (mu_star + np.array([0.4, -0.3, 0.2, 0.5, -0.6]), log_sigma_star + np.array([0.5, -0.4, 0.3, 0.8, -0.2])),
        "start": (np.zeros(D), np.full(D, -2.0)),
    }


def jax_value(method, mu, log_sigma):
    return float(method(jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32)))


def rounded(x):
    """The float32 value the target sees, back in float64 (references take the same point)."""
    return np.float32(x).astype(np.float64)


# --- the exact objective -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_exact_objective_equals_a_million_draw_monte_carlo_estimate(name):
    target = synthetic_target(name)
    x, y, tau = data_of(name)
    for label in ("away",):  # 10^6 draws x 200 observations: one point (the quadrature tests cover the others)
        mu, log_sigma = (rounded(v) for v in points(target)[label])
        estimate, stderr = monte_carlo_neg_elbo(mu, log_sigma, x, y, name, tau)
        exact = jax_value(target.neg_elbo, mu, log_sigma)
        assert abs(exact - estimate) <= 5 * stderr + 1e-6 * abs(estimate), (label, exact, estimate, stderr)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_exact_objective_equals_a_quadrature_with_four_times_the_nodes(name):
    """Logistic: the 64-node rule against 256 nodes; Poisson: its closed form against 256 nodes."""
    target = synthetic_target(name)
    x, y, tau = data_of(name)
    for label, (mu, log_sigma) in points(target).items():
        mu, log_sigma = rounded(mu), rounded(log_sigma)
        reference = quadrature_neg_elbo(mu, log_sigma, x, y, name, tau, hermite_rule(4 * NODES))
        assert jax_value(target.neg_elbo, mu, log_sigma) == pytest.approx(reference, rel=1e-6), label


def test_on_the_real_dataset_64_nodes_are_within_1e_6_of_256_at_q_star():
    """The rule's own error (float64, both rules), where breast cancer's predictors are widest (r up to ~12)."""
    name = "logistic_regression"
    config = regression.posterior_config(name, 31, {"dataset": "breast_cancer", "prior_scale": 1.0, "quadrature_nodes": NODES})
    problem = regression.regression_problem(config)
    mu, log_sigma = regression.regression_optimum(name, 31, dataset="breast_cancer", prior_scale=1.0, quadrature_nodes=NODES)
    mine = quadrature_neg_elbo(mu, log_sigma, problem.features, problem.response, name, 1.0, hermite_rule(NODES))
    finer = quadrature_neg_elbo(mu, log_sigma, problem.features, problem.response, name, 1.0, hermite_rule(4 * NODES))
    assert mine == pytest.approx(finer, rel=1e-6)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_gradient_of_the_exact_objective_matches_finite_differences(name):
    target = synthetic_target(name)
    x, y, tau = data_of(name)
    rule = hermite_rule(4 * NODES)
    grad = jax.grad(lambda p: target.neg_elbo(p.mu, p.log_sigma))
    for label, (mu, log_sigma) in points(target).items():
        mu, log_sigma = rounded(mu), rounded(log_sigma)
        reference = finite_difference_gradient(lambda m, s: quadrature_neg_elbo(m, s, x, y, name, tau, rule), mu, log_sigma)
        g = grad(Params(jnp.asarray(mu, jnp.float32), jnp.asarray(log_sigma, jnp.float32)))
        mine = np.concatenate([f64(g.mu), f64(g.log_sigma)])
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=2e-4 * (1 + np.max(np.abs(reference))), err_msg=label)


def test_the_poisson_closed_form_matches_quadrature_per_observation():
    """E exp(t) = exp(m + v/2) for t ~ N(m, v): the closed form against a 200-node rule, one observation at a time."""
    target = synthetic_target("poisson_regression")
    x, y, _ = data_of("poisson_regression")
    nodes, weights = hermite_rule(200)
    for mu, log_sigma in points(target).values():
        mu, log_sigma = rounded(mu), rounded(log_sigma)
        m, r = x @ mu, np.sqrt((x * x) @ np.exp(2 * log_sigma))
        rate = np.exp(m[:, None] + r[:, None] * nodes[None, :]) @ weights
        closed = f64(target.expected_neg_log_likelihood(jnp.asarray(m, jnp.float32), jnp.asarray(r * r, jnp.float32)))
        scale = rate + np.abs(y * m)  # float32 keeps ~1e-7 of each part of the difference
        assert np.all(np.abs(closed - (rate - y * m)) <= 1e-6 * scale), np.max(np.abs(closed - (rate - y * m)) / scale)


# --- Monte-Carlo estimators ----------------------------------------------------------------------


@pytest.mark.parametrize("num_mc", [1, 3])
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_estimator_is_unbiased_on_the_regression_targets(name, estimator, num_mc):
    """As tests/test_estimators.py does for the Gaussians: 20 000 draws, every coordinate within 5 standard errors."""
    target = synthetic_target(name)
    x, y, tau = data_of(name)
    rule = hermite_rule(4 * NODES)
    for label in ("away", "start"):
        mu, log_sigma = (rounded(v) for v in points(target)[label])
        reference = finite_difference_gradient(lambda m, s: quadrature_neg_elbo(m, s, x, y, name, tau, rule), mu, log_sigma)
        draws = gradient_draws(mc_objective(estimator, num_mc), target, mu, log_sigma, n=20_000)
        ok = within_confidence(draws, reference)
        assert ok.all(), f"{estimator} biased on {name} at {label}: {draws.mean(0)} vs {reference}"


# --- q* and the KL excess -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_q_star_is_stationary_for_the_exact_objective(name):
    """Finite differences of the float64 reference objective (the same K-node rule for logistic) vanish at q*."""
    x, y, tau = data_of(name)
    mu, log_sigma = regression.regression_optimum(name, D, **posterior(name))
    rule = regression.gauss_hermite(NODES) if name == "logistic_regression" else hermite_rule(200)
    grad = finite_difference_gradient(lambda m, s: quadrature_neg_elbo(m, s, x, y, name, tau, rule), mu, log_sigma)
    assert np.max(np.abs(grad)) < 1e-6, grad


def test_poisson_q_star_solves_its_closed_form_fixed_point():
    r"""Stationarity in closed form: :math:`X^\top(\lambda - y) + \mu/\tau^2 = 0` and
    :math:`\sigma_j^{-2} = \sum_i \lambda_i x_{ij}^2 + 1/\tau^2`, :math:`\lambda_i = e^{m_i + v_i/2}`."""
    x, y, tau = data_of("poisson_regression")
    mu, log_sigma = regression.regression_optimum("poisson_regression", D, **posterior("poisson_regression"))
    variance = np.exp(2 * log_sigma)
    rate = np.exp(x @ mu + 0.5 * (x * x) @ variance)
    np.testing.assert_allclose(x.T @ (rate - y) + mu / tau**2, 0.0, atol=1e-8)
    np.testing.assert_allclose(1.0 / variance, (x * x).T @ rate + 1.0 / tau**2, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_kl_excess_is_the_float64_elbo_gap_and_zero_at_q_star(name):
    target = synthetic_target(name)
    x, y, tau = data_of(name)
    rule = regression.gauss_hermite(NODES) if name == "logistic_regression" else hermite_rule(200)
    mu_star, log_sigma_star = (f64(v) for v in target.meanfield_optimum())  # float32 q*, as the target holds it
    at_optimum = quadrature_neg_elbo(mu_star, log_sigma_star, x, y, name, tau, rule)
    assert jax_value(target.kl_excess, mu_star, log_sigma_star) == 0.0
    for scale in (1.0, 1e-2, 1e-4):
        for label, (mu, log_sigma) in points(target).items():
            mu = rounded(mu_star + scale * (mu - mu_star))
            log_sigma = rounded(log_sigma_star + scale * (log_sigma - log_sigma_star))
            reference = quadrature_neg_elbo(mu, log_sigma, x, y, name, tau, rule) - at_optimum
            mine = jax_value(target.kl_excess, mu, log_sigma)
            assert mine == pytest.approx(reference, rel=1e-4, abs=1e-7), (label, scale)
            assert jax_value(target.kl, mu, log_sigma) != jax_value(target.kl, mu, log_sigma)  # NaN: no closed-form KL


def exact_fields(name, **overrides):
    params = {f"target_{key}": value for key, value in SYNTHETIC.items()}
    if name == "logistic_regression":
        params["target_quadrature_nodes"] = NODES
    return flat_fields(**{**dict(objective="exact", target=name, d=D, steps=1500, log_every=100, lr=0.05), **params, **overrides})


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_kl_excess_never_goes_below_minus_1e_5_on_an_exact_run(name):
    state, rows = train_one(*split_fields(exact_fields(name)))
    assert np.min(rows["kl_excess"]) >= -1e-5
    assert rows["kl_excess"][-1] < 1e-4 and rows["kl_excess"][0] > 1.0  # it also gets there
    assert np.all(np.isnan(rows["kl"]))
    mu_star, _ = regression.regression_optimum(name, D, **posterior(name))
    np.testing.assert_allclose(rows["mean_error"][-1], np.linalg.norm(f64(state.params.mu) - mu_star), rtol=1e-3, atol=1e-6)


def test_on_the_real_dataset_an_exact_adam_run_reaches_1e_3():
    """The breast_cancer scenario (logistic, d = 31) with its own defaults; every logged row >= -1e-5."""
    fields = composed_fields("scenario=breast_cancer", "objective=exact", "lr=0.05", "steps=2000")
    state, rows = train_one(*split_fields(fields))
    assert rows["kl_excess"][-1] < 1e-3
    assert np.min(rows["kl_excess"]) >= -1e-5


# --- the trainer: static data, traced prior scale -------------------------------------------------


def test_the_prior_scale_is_traced_and_the_dataset_static():
    spec_a, traced_a = split_fields(exact_fields("poisson_regression", target_prior_scale=1.5))
    spec_b, traced_b = split_fields(exact_fields("poisson_regression", target_prior_scale=0.5))
    assert spec_a == spec_b  # one compiled program for both prior scales
    assert dict(spec_a.target_static) == {"dataset": "synthetic", "num_rows": ROWS, "feature_correlation": 0.5, "data_seed": 3}
    assert traced_a["target"] == {"prior_scale": 1.5}
    assert not np.allclose(traced_a["optimum"]["log_sigma"], traced_b["optimum"]["log_sigma"])  # each its own q*
    spec_c, _ = split_fields(exact_fields("poisson_regression", target_data_seed=4))
    assert spec_c != spec_a  # another dataset is another program
    real, _ = split_fields(composed_fields("scenario=randhie", "target.num_rows=7", "target.data_seed=9"))
    assert dict(real.target_static) == {"dataset": "randhie"}  # a real dataset ignores the synthetic one's keys
    gaussian, _ = split_fields(flat_fields())
    assert gaussian.target_static == ()


def test_two_prior_scales_train_as_one_vmapped_call_to_their_own_optima():
    split = [split_fields(exact_fields("logistic_regression", target_prior_scale=scale, steps=3000)) for scale in (0.5, 3.0)]
    spec = split[0][0]
    state, rows = jitted_batch_train(spec)(as_hyper([traced for _, traced in split]))
    for run, (_, traced) in enumerate(split):
        np.testing.assert_allclose(f64(state.params.mu[run]), traced["optimum"]["mu"], atol=2e-3)
        assert float(rows.kl_excess[run, -1]) < 1e-4
        assert float(jnp.min(rows.kl_excess[run])) >= -1e-5


# --- datasets ----------------------------------------------------------------------------------


def test_the_shipped_breast_cancer_data_are_standardised_with_an_intercept():
    data = datasets.load_dataset("breast_cancer", datasets.BINARY, 31)
    assert data.features.shape == (569, 31) and np.all(data.features[:, 0] == 1.0)
    np.testing.assert_allclose(data.features[:, 1:].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.features[:, 1:].std(axis=0), 1.0, atol=1e-6)
    assert set(np.unique(data.response)) == {0.0, 1.0} and int(data.response.sum()) == 357  # UCI: 357 benign, 212 malignant
    assert np.all(data.features == np.float32(data.features))  # float32 values: the trainer's constants exactly


def test_the_shipped_randhie_data_are_counts_with_nine_covariates():
    data = datasets.load_dataset("randhie", datasets.COUNT, 10)
    assert data.features.shape == (20190, 10) and np.all(data.features[:, 0] == 1.0)
    assert data.response.min() == 0 and np.all(data.response == np.round(data.response))
    assert data.response.mean() == pytest.approx(2.8604, abs=1e-4)  # mdvis, as statsmodels ships it


def test_the_synthetic_dataset_is_a_function_of_its_seed_and_shape():
    a = datasets.load_dataset("synthetic", datasets.BINARY, 6, 300, 0.8, 1)
    b = datasets.synthetic(datasets.BINARY, 6, 300, 0.8, 1)
    np.testing.assert_array_equal(a.features, b[0])
    assert a.features.shape == (300, 6) and set(np.unique(a.response)) == {0.0, 1.0}
    correlation = np.corrcoef(a.features[:, 1:].T)[np.triu_indices(5, 1)]
    assert np.all(np.abs(correlation - 0.8) < 0.1)
    counts = datasets.load_dataset("synthetic", datasets.COUNT, 6, 300, 0.0, 1).response
    assert counts.min() >= 0 and counts.max() > 1
    assert not np.array_equal(datasets.load_dataset("synthetic", datasets.BINARY, 6, 300, 0.8, 2).features, a.features)


def test_a_dataset_that_does_not_fit_is_one_error_line():
    with pytest.raises(ValueError, match="d must be 31, not 30"):
        datasets.load_dataset("breast_cancer", datasets.BINARY, 30)
    with pytest.raises(ValueError, match="count response; a binary model needs one of synthetic, breast_cancer"):
        datasets.load_dataset("randhie", datasets.BINARY, 10)
    with pytest.raises(ValueError, match="unknown dataset 'iris'"):
        datasets.load_dataset("iris", datasets.BINARY, 5)


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("target=logistic_regression", "target.dataset=iris"), "target.dataset='iris' is invalid: must be one of synthetic, breast_cancer, randhie"),
        (("target=poisson_regression", "target.prior_scale=-1.0"), "target.prior_scale=-1.0 is invalid: must be a finite number > 0"),
        (("target=logistic_regression", "target.quadrature_nodes=0"), "target.quadrature_nodes=0 is invalid: must be an integer in [1, 256]"),
        (("target=logistic_regression", "target.num_rows=0"), "target.num_rows=0 is invalid: must be an integer in [1, 10000000]"),
        (("scenario=breast_cancer", "d=30"), "d=30 is invalid with target.dataset=breast_cancer: its 30 features and an intercept make d=31"),
        (("scenario=breast_cancer", "target=poisson_regression"), "target.dataset=breast_cancer has a binary response; target=poisson_regression needs one of synthetic, randhie"),
    ],
)
def test_bad_regression_settings_are_one_line_naming_the_field(overrides, message):
    from hydra import compose, initialize_config_dir

    from vi_sweep.launch.config import CONF_DIR, ConfigError, validate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="config", overrides=list(overrides))
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    assert str(caught.value) == message


def test_a_bad_dataset_on_the_command_line_exits_2_and_writes_nothing(cli, tmp_path):
    result = cli("run", "target=logistic_regression", "target.dataset=iris", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == "vi_sweep: error: target.dataset='iris' is invalid: must be one of synthetic, breast_cancer, randhie"
    assert not (tmp_path / "run").exists()


# --- the analysis: constants, cached q*, final parameters ----------------------------------------


def sweep_fields(name, **overrides):
    params = {f"target_{key}": value for key, value in posterior(name).items()}
    return dict(composed_fields(f"target={name}", f"d={D}", "steps=300", "log_every=50"), **params, **overrides)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_target_constants_of_a_regression_target_are_the_float32_excess_at_the_start(name):
    from vi_sweep.analysis.references import target_constants

    for s in (-3.0, -2.0, 0.5):
        ours = target_constants([sweep_fields(name, init_log_sigma=s)]).iloc[0]
        target = synthetic_target(name)
        assert ours.init_kl_excess == pytest.approx(jax_value(target.kl_excess, np.zeros(D), np.full(D, s)), rel=1e-5)
        assert np.isnan(ours.kl_floor)  # the KL of q* needs the unknown log evidence
        assert ours.sigma_star_min == pytest.approx(float(np.exp(np.min(f64(target.meanfield_optimum()[1])))), rel=1e-6)


def test_q_star_is_cached_beside_the_baselines_and_read_back_instead_of_solved(tmp_path, monkeypatch):
    from vi_sweep.store.optima import optimum_file, prepare_optima, read_optimum

    fields = [sweep_fields("poisson_regression", lr=lr) for lr in (0.01, 0.1)] + [flat_fields()]
    assert prepare_optima(tmp_path, fields) in (0, 1)  # one posterior (maybe solved earlier in this process)
    files = list((tmp_path / "baselines" / "optima").glob("*.npz"))
    assert len(files) == 1
    key = regression.optimum_key(regression.posterior_config("poisson_regression", D, posterior("poisson_regression")))
    assert files[0] == optimum_file(tmp_path, key)
    mu, log_sigma = read_optimum(files[0], key)
    np.testing.assert_array_equal(mu, regression.regression_optimum("poisson_regression", D, **posterior("poisson_regression")).mu)

    def refuse(problem):
        raise AssertionError("solved again instead of read from the cache")

    monkeypatch.setattr(regression, "_OPTIMA", {})  # a new process: nothing in memory
    monkeypatch.setattr(regression, "solve_meanfield_optimum", refuse)
    assert prepare_optima(tmp_path, fields) == 0
    np.testing.assert_array_equal(regression.regression_optimum("poisson_regression", D, **posterior("poisson_regression")).log_sigma, log_sigma)
    assert read_optimum(files[0], key + "x") is None  # another posterior's file is not taken


def test_load_params_returns_every_runs_final_q(tmp_path):
    from vi_sweep.analysis import load_params, load_sweep

    runs = [sweep_fields("logistic_regression", objective="mc", num_mc=2, lr=lr) for lr in (0.01, 0.1)] + [flat_fields(d=3)]
    write_sweep(tmp_path, runs)
    params = load_params(tmp_path)
    assert params["run"].tolist() == [0, 1, 2] and params["target"].tolist() == ["logistic_regression"] * 2 + ["standard_normal"]
    for run, fields in enumerate(runs):
        state, _ = train_one(*split_fields(fields))  # one run alone: the batch's values up to float32 round-off
        np.testing.assert_allclose(params.loc[run, "mu"], np.asarray(state.params.mu), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(params.loc[run, "log_sigma"], np.asarray(state.params.log_sigma), rtol=1e-5, atol=1e-6)
        assert params.loc[run, "mu"].dtype == np.float32 and params.loc[run, "mu"].shape == (fields["d"],)
    classified = load_sweep(tmp_path)
    assert classified["outcome"].notna().all() and (classified["init_kl_excess"] > 0).all()
    assert np.isnan(classified.loc[0, "kl_floor"]) and classified.loc[2, "kl_floor"] == 0.0


@pytest.mark.slow
def test_a_regression_multirun_writes_params_q_star_and_a_report(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli(
        "multirun", "target=poisson_regression", "target.num_rows=100", "d=4", "lr=0.01,0.3", "num_mc=1,8", "seed=0",
        "steps=200", "log_every=50", "grid=none", f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    assert len(list(sweep.glob("*/params.parquet"))) == 4 and len(list(sweep.glob("*/metrics.parquet"))) == 4
    assert len(list((sweep / "baselines" / "optima").glob("*.npz"))) == 1
    assert (sweep / "report" / "phase_map.png").exists()
    from vi_sweep.analysis import load_params, load_sweep

    runs = load_sweep(sweep)
    assert set(runs["outcome"]) <= {"converged", "slow", "stalled", "undetermined", "unstable", "collapsed", "diverged"}
    assert all(len(mu) == 4 for mu in load_params(sweep)["mu"])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mc", "exact"])
def test_a_batch_of_regression_runs_reports_the_kl_excess_each_run_reports_alone(objective):
    """The batched program (vmap over runs, the launcher's) and one run's program give the same
    kl_excess row by row. jaxlib 0.10.2 with YNNPACK's dots on and its reductions off miscompiled
    the vmapped kl_excess (up to 10 nats off, negative) while the loss stayed right: a compiler
    option of the trainer must keep this equal (vi_sweep.core.trainer.LIBRARY_FUSIONS_OFF)."""
    base = dict(composed_fields("scenario=breast_cancer"), objective=objective, num_mc=8, steps=300, log_every=100)
    runs = [dict(base, lr=lr, seed=seed) for lr in (0.05, 0.2) for seed in (0, 1)]
    spec = split_fields(runs[0])[0]
    _, batched = jitted_batch_train(spec)(as_hyper([split_fields(run)[1] for run in runs]))
    for i, run in enumerate(runs):
        _, alone = train_one(*split_fields(run))
        assert (alone["kl_excess"] >= -1e-4).all()
        np.testing.assert_allclose(np.asarray(batched.kl_excess)[i], alone["kl_excess"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(np.asarray(batched.loss)[i], alone["loss"], rtol=1e-4)


def test_on_the_real_dataset_the_phase_map_has_a_stalled_and_a_converged_cell(tmp_path):
    """Two cells of the README's breast_cancer map (default grid, Adam, 2000 steps): lr = 0.05 with
    32 samples converges, lr = 0.2 with one sample stalls while its exact twin converges."""
    from vi_sweep.analysis import load_sweep, phase_table

    base = composed_fields("scenario=breast_cancer")
    runs = [dict(base, lr=0.05, num_mc=32, seed=seed) for seed in (0, 1)] + [dict(base, lr=0.2, num_mc=1, seed=seed) for seed in (0, 1)]
    write_sweep(tmp_path, runs, scenario="breast_cancer")
    cells = phase_table(load_sweep(tmp_path)).set_index(["lr", "num_mc"])
    assert cells.loc[(0.05, 32), "outcome"] == "converged"
    assert cells.loc[(0.2, 1), "outcome"] == "stalled" and cells.loc[(0.2, 1), "baseline_outcome"] == "converged"


def test_a_regression_run_prints_its_kl_excess_where_a_gaussian_prints_its_kl():
    from vi_sweep.launch.task import format_row

    row = {"step": [7], "loss": [3.5], "kl": [np.nan], "kl_excess": [0.25], "mu_norm": [1.0], "sigma_mean": [0.5], "sigma_std": [0.1], "sigma_min": [0.2]}
    assert "  KL excess= 0.250000  " in format_row(row, 0)
    assert "  KL= 0.500000  " in format_row(dict(row, kl=[0.5]), 0)


@pytest.mark.slow
def test_the_compact_layout_keeps_final_params_too(cli, tmp_path):
    """``layout=compact``: no job directories, so a chunk's final q sits in ``runs/params-*.parquet``
    beside its ``jobs-*.parquet``; load_params gives what the job-directory layout gives."""
    from vi_sweep.analysis import load_params

    common = ("d=3", "lr=0.01,0.3", "num_mc=1,4", "seed=0", "steps=60", "log_every=20", "grid=none", "hydra.callbacks.sweep_summary.report=false")
    frames = {}
    for layout in ("jobs", "compact"):
        sweep = tmp_path / layout
        result = cli("multirun", *common, f"hydra.launcher.layout={layout}", f"hydra.sweep.dir={sweep}")
        assert result.returncode == 0, result.stderr
        frames[layout] = load_params(sweep)
    runs_dir = tmp_path / "compact" / "runs"
    assert len(list(runs_dir.glob("params-*.parquet"))) == len(list(runs_dir.glob("jobs-*.parquet"))) >= 1  # one per compiled chunk
    assert not list((tmp_path / "compact").glob("*/params.parquet"))
    jobs, compact = frames["jobs"], frames["compact"]
    assert compact[["lr", "num_mc"]].equals(jobs[["lr", "num_mc"]]) and len(compact) == 4
    for run in range(4):
        np.testing.assert_array_equal(compact.loc[run, "mu"], jobs.loc[run, "mu"])
        np.testing.assert_array_equal(compact.loc[run, "log_sigma"], jobs.loc[run, "log_sigma"])


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_a_zip"])
def test_a_damaged_q_star_file_is_solved_again_not_a_crash(tmp_path, damage, monkeypatch):
    """An empty or cut-off .npz (a crash of the machine before the data reached the disk) is a
    cache miss: solved again and rewritten, as a missing file is."""
    from vi_sweep.store.optima import prepare_optima, read_optimum

    fields = [sweep_fields("poisson_regression")]
    prepare_optima(tmp_path, fields)
    (file,) = (tmp_path / "baselines" / "optima").glob("*.npz")
    data = file.read_bytes()
    file.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "not_a_zip": b"PK\x03\x04 not really"}[damage])
    key = regression.optimum_key(regression.posterior_config("poisson_regression", D, posterior("poisson_regression")))
    assert read_optimum(file, key) is None
    monkeypatch.setattr(regression, "_OPTIMA", {})  # a new process: nothing in memory
    assert prepare_optima(tmp_path, fields) == 1
    assert read_optimum(file, key) is not None
