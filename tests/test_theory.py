"""The SGD theory overlays (vi_sweep/analysis/theory.py) against the trainer and against their own algebra.

Main check: a measured SGD sweep (the vmapped trainer, reparam estimator, standard normal, d = 100,
started *at* the optimum) settles at the predicted noise-floor KL in the small-lr regime.

Tolerance, justified: the tail KL of each run is averaged over steps 1000..4000 (>= 5 relaxation
times 1/lr of mu after a burn-in of >= 5 relaxation times, so the start at KL = 0 has decayed by
e^-10); the 16 seeds are independent replicates, so their spread gives an honest standard error
(SE ~ 0.5-0.8 % of the prediction). The linearisation neglects terms of relative size ~lr/(4M)
and O(lr^2): at lr <= 0.02 that is < 0.5 % (measured 0.4 % with 20 000-step runs). We allow
1 % model error + 4 SE (Student t with 15 dof: P(|t| > 4) ~ 1e-3 per cell).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vi_sweep.analysis.theory import (  # noqa: E402
    LR_LIMIT_LOG_SIGMA,
    LR_LIMIT_MU,
    draw_sgd_overlays,
    lr_for_stationary_kl,
    sgd_overlay_lines,
    stability_limit_lr,
    stationary_kl,
    stationary_var_log_sigma,
    stationary_var_mu,
)
from vi_sweep.core.trainer import as_hyper, jitted_batch_train, row_steps, split_fields, train_one

D, STEPS, BURN_IN, LOG_EVERY, SEEDS = 100, 4000, 1000, 10, 16
LRS = (0.005, 0.01, 0.02)


def sgd_fields(**overrides):
    base = dict(
        objective="mc", estimator="reparam", num_mc=1, optimizer="sgd", target="standard_normal", d=D,
        steps=STEPS, log_every=LOG_EVERY, lr=0.01, seed=0, init_log_sigma=0.0, optimizer_grad_clip=None,
    )
    base.update(overrides)
    return base


@pytest.mark.parametrize("num_mc", [1, 4])
def test_measured_sgd_noise_floor_matches_stationary_kl(num_mc):
    spec, _ = split_fields(sgd_fields(num_mc=num_mc))
    batch = [split_fields(sgd_fields(num_mc=num_mc, lr=lr, seed=seed))[1] for lr in LRS for seed in range(SEEDS)]
    _, rows = jitted_batch_train(spec)(as_hyper(batch))
    steps, probe = row_steps(STEPS, LOG_EVERY)
    tail = (steps > BURN_IN) & ~probe  # the logged rows after the burn-in, evenly spaced
    per_seed = np.asarray(rows.kl, np.float64)[:, tail].mean(axis=1).reshape(len(LRS), SEEDS)
    for lr, runs in zip(LRS, per_seed):
        predicted = float(stationary_kl(lr, num_mc, D))
        measured, stderr = runs.mean(), runs.std(ddof=1) / np.sqrt(SEEDS)
        assert abs(measured - predicted) <= 0.01 * predicted + 4 * stderr, (lr, num_mc, measured, stderr, predicted)
        if lr == max(LRS) and num_mc == 1:
            # The finite-lr correction is visible: the small-lr limit 3 d lr / (4M) is rejected.
            assert abs(measured - 0.75 * D * lr / num_mc) > 0.02 * predicted + 4 * stderr


def exact_sgd(lr, **overrides):
    fields = sgd_fields(objective="exact", steps=400, log_every=100, lr=lr, **overrides)
    return train_one(*split_fields(fields))


def test_the_exact_gradient_step_size_limit_in_log_sigma_is_1():
    state, rows = exact_sgd(0.95 * LR_LIMIT_LOG_SIGMA, init_log_sigma=0.05)
    assert rows["kl"][-1] < 1e-10 and np.allclose(np.asarray(state.params.log_sigma), 0.0, atol=1e-6)
    state, rows = exact_sgd(1.05 * LR_LIMIT_LOG_SIGMA, init_log_sigma=0.05)
    assert rows["kl"][-1] > 1e-3  # settled into the period-2 oscillation, not at the optimum
    assert np.all(np.abs(np.asarray(state.params.log_sigma)) > 0.05)


def test_the_exact_gradient_step_size_limit_in_mu_is_2():
    shifted = dict(target="shifted", target_offset=1.0, init_log_sigma=0.0)  # mu starts 1 away per coordinate
    _, rows = exact_sgd(0.95 * LR_LIMIT_MU, **shifted)
    assert rows["mean_error"][-1] < 1e-4
    _, rows = exact_sgd(1.05 * LR_LIMIT_MU, **shifted)
    assert rows["mean_error"][-1] > rows["mean_error"][0]


def test_formulas_small_lr_limit_and_stability_limits():
    lr = np.array([1e-5, 1e-4])
    for m in (1, 4, 32):
        np.testing.assert_allclose(stationary_kl(lr, m, D), 0.75 * D * lr / m, rtol=1e-3)
        np.testing.assert_allclose(stationary_var_mu(lr, m), lr / (2 * m), rtol=1e-3)
    assert stability_limit_lr(1) == pytest.approx(1 / 3)
    assert stability_limit_lr(1e9) == pytest.approx(LR_LIMIT_LOG_SIGMA)
    assert np.isinf(stationary_var_log_sigma(0.34, 1)) and np.isfinite(stationary_var_log_sigma(0.33, 1))
    assert np.isinf(stationary_var_mu(2.0, 1))


def test_lr_for_stationary_kl_inverts_stationary_kl():
    for m in (1, 2, 8, 64):
        lr = np.geomspace(1e-5, 0.999 * float(stability_limit_lr(m)), 25)
        kl = stationary_kl(lr, m, D)
        np.testing.assert_allclose(lr_for_stationary_kl(kl, m, D), lr, rtol=1e-9)


def test_overlay_lines_for_a_phase_map_and_a_kl_heatmap():
    num_mc = np.array([1.0, 4.0, 32.0])
    phase = sgd_overlay_lines("phase", num_mc)
    assert [line.lr.tolist() for line in phase] == [[1.0] * 3, [2.0] * 3, [1 / 3, 4 / 6, 32 / 34]]
    kl = sgd_overlay_lines("kl", num_mc, d=50, kl_per_dim_levels=(0.01,))
    np.testing.assert_allclose(stationary_kl(kl[0].lr, num_mc, 50), 0.01 * 50)
    assert kl[-1].label == phase[-1].label
    with pytest.raises(ValueError, match="kind"):
        sgd_overlay_lines("heat", num_mc)


def test_draw_sgd_overlays_draws_in_data_coordinates_and_keeps_the_limits():
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-4, 10.0)
    ax.set_ylim(1.0, 32.0)
    artists = draw_sgd_overlays(ax, kind="phase")
    assert ax.get_xlim() == pytest.approx((1e-4, 10.0)) and ax.get_ylim() == pytest.approx((1.0, 32.0))
    ms = artists[-1]
    np.testing.assert_allclose(ms.get_xdata(), stability_limit_lr(ms.get_ydata()))
    assert ms.get_ydata()[0] == pytest.approx(1.0) and ms.get_ydata()[-1] == pytest.approx(32.0)
    assert len(draw_sgd_overlays(ax, kind="kl", d=100, kl_per_dim_levels=(1e-3, 1e-2))) == 3
    plt.close(fig)
