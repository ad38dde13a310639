"""Trainer behaviour: one compile per shape, jit == no-jit, vmap == loop, KL >= 0, NaN-safety."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_sweep.core.objectives import make_objective
from vi_sweep.core.targets import standard_normal
from tests.sweeps import flat_fields
from vi_sweep.core.trainer import (
    TrainSpec,
    as_hyper,
    jitted_batch_train,
    jitted_train,
    logged_steps,
    make_train,
    row_steps,
    tail_start,
    split_fields,
    train_one,
)


fields = flat_fields


class CompileCounter:
    """Counts XLA backend compilations while active (optax's ``log_compilations`` idea)."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        self._listener = lambda event, duration, **kw: self._on(event)
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def _on(self, event):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def test_logged_steps_follow_the_notebook_and_always_end_on_the_last_step():
    assert logged_steps(2000, 200).tolist() == [1] + list(range(200, 2001, 200))
    assert logged_steps(5, 1).tolist() == [1, 2, 3, 4, 5]
    assert logged_steps(7, 10).tolist() == [1, 7]
    assert logged_steps(25, 10).tolist() == [1, 10, 20, 25]
    assert logged_steps(50, 20).tolist() == [1, 20, 40, 50]
    assert logged_steps(1, 5).tolist() == [1]


def test_the_tail_gets_probes_whatever_log_every_is():
    steps, probe = row_steps(2000, 200)
    assert steps[~probe].tolist() == logged_steps(2000, 200).tolist()  # the notebook's rows, all there
    tail = steps[steps > tail_start(2000)]
    assert tail_start(2000) == 1600 and len(tail) >= 64 and tail[-1] == 2000
    spacing = np.gcd.reduce(np.diff(np.append(steps[probe], 2000)))
    assert spacing % 2 == 1  # odd: a period-2 or period-4 cycle is seen in all its phases
    steps, probe = row_steps(10, 5)
    assert steps.tolist() == [1, 5, 9, 10] and probe.tolist() == [False, False, True, False]  # tail: steps 9, 10
    steps, probe = row_steps(1, 1)
    assert steps.tolist() == [1] and not probe.any()


def test_rows_carry_their_step_and_probe_flag():
    spec, traced = split_fields(fields(steps=50, log_every=20))
    _, rows = train_one(spec, traced)
    expected, probe = row_steps(50, 20)
    assert rows["step"].tolist() == expected.tolist() and rows["probe"].tolist() == probe.tolist()
    assert rows["step"][-1] == 50  # the final state is always a row


def test_changing_lr_seed_and_init_never_recompiles():
    spec, traced = split_fields(fields(steps=40, log_every=10))
    train_one(spec, traced)  # first call compiles
    with CompileCounter() as counter:
        for lr, seed, init in [(0.3, 1, -1.0), (1e-4, 7, 0.5), (2.0, 123, -5.0)]:
            spec2, traced2 = split_fields(fields(steps=40, log_every=10, lr=lr, seed=seed, init_log_sigma=init))
            assert spec2 == spec
            train_one(spec2, traced2)
    assert counter.count == 0


def test_a_new_shape_compiles_exactly_once():
    spec, traced = split_fields(fields(steps=30, log_every=10, num_mc=3))
    with CompileCounter() as counter:
        train_one(spec, traced)
        first = counter.count
        train_one(spec, split_fields(fields(steps=30, log_every=10, num_mc=3, seed=5))[1])
    assert first >= 1
    assert counter.count == first


def test_jit_equals_no_jit():
    spec, traced = split_fields(fields(steps=30, log_every=10))
    _, rows_jit = jitted_train(spec)(as_hyper(traced))
    with jax.disable_jit():
        _, rows_eager = make_train(spec)(as_hyper(traced))
    for a, b in zip(rows_jit, rows_eager):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_vmapped_grid_equals_a_loop_of_single_runs():
    grid = [fields(lr=lr, seed=seed, init_log_sigma=init) for lr in (1e-3, 0.1) for seed in (0, 3) for init in (-3.0, 0.0)]
    spec = split_fields(grid[0])[0]
    batch = [split_fields(f)[1] for f in grid]
    _, rows = jitted_batch_train(spec)(as_hyper(batch))
    for i, traced in enumerate(batch):
        _, single = train_one(spec, traced)
        for name in ("loss", "kl", "mu_norm", "sigma_min"):
            np.testing.assert_allclose(np.asarray(getattr(rows, name))[i], single[name], rtol=1e-5, atol=1e-6)


def test_the_trainers_reductions_are_fused_loops_not_library_calls():
    """On CPU, XLA would hand each of a step's small reductions (over num_mc, over d) to YNNPACK:
    a library call per reduction, its (num_mc, d) input written to memory first. The trainer's
    programs keep them in XLA's fused loops (trainer.LIBRARY_FUSIONS_OFF)."""
    from vi_sweep.core.trainer import jitted_stream_train, trainer_compiler_options

    if jax.default_backend() != "cpu" or trainer_compiler_options() is None:
        pytest.skip("the option is XLA:CPU's, and this jaxlib does not take it")
    spec, traced = split_fields(fields(num_mc=16, d=100))
    hyper = as_hyper([traced, traced])
    assert "__ynn_fusion" not in jitted_train(spec).lower(as_hyper(traced)).compile().as_text()
    assert "__ynn_fusion" not in jitted_batch_train(spec).lower(hyper).compile().as_text()
    streams = jax.tree_util.tree_map(lambda x: x.reshape(1, 2), hyper)
    assert "__ynn_fusion" not in jitted_stream_train(spec).lower(streams).compile().as_text()


def test_a_jaxlib_without_the_compiler_option_compiles_with_its_defaults(monkeypatch):
    from vi_sweep.core import trainer

    monkeypatch.setattr(trainer, "LIBRARY_FUSIONS_OFF", {"xla_cpu_no_such_option_anywhere": "1"})
    trainer.trainer_compiler_options.cache_clear()
    try:
        assert trainer.trainer_compiler_options() is None
        spec, traced = split_fields(fields(steps=20, log_every=10))
        _, rows = jax.jit(make_train(spec), compiler_options=trainer.trainer_compiler_options())(as_hyper(traced))
        assert np.isfinite(np.asarray(rows.kl)).all()
    finally:
        trainer.trainer_compiler_options.cache_clear()  # the next caller probes the real option again


def test_exact_jobs_share_one_program_whatever_num_mc_and_estimator():
    a, _ = split_fields(fields(objective="exact", num_mc=1, estimator="reparam"))
    b, _ = split_fields(fields(objective="exact", num_mc=32, estimator="stl"))
    assert a == b


def test_kl_is_never_negative_at_and_near_the_optimum():
    target = standard_normal(100)
    for scale in (0.0, 1e-8, 1e-6, 1e-4, 1e-2, 0.1, 1.0):
        for sign in (1.0, -1.0):
            log_sigma = jnp.full((100,), sign * scale)
            assert float(target.kl(jnp.zeros(100), log_sigma)) >= 0.0


def test_kl_matches_the_closed_form_away_from_the_optimum():
    target = standard_normal(5)
    mu = jnp.array([0.5, -1.0, 2.0, 0.0, 0.3])
    log_sigma = jnp.array([-3.0, -0.5, 0.2, 1.0, 0.05])
    naive = 0.5 * np.sum(np.exp(2 * np.asarray(log_sigma, np.float64)) + np.asarray(mu, np.float64) ** 2 - 2 * np.asarray(log_sigma, np.float64) - 1)
    assert float(target.kl(mu, log_sigma)) == pytest.approx(naive, rel=1e-6)


def test_a_nan_stops_updates_and_records_the_step():
    # Plain SGD with a huge step overshoots log_sigma until exp() overflows: a real divergence.
    spec, traced = split_fields(
        {k: v for k, v in fields(optimizer="sgd", lr=50.0, steps=200, log_every=10).items() if not k.startswith("optimizer_b") and k != "optimizer_eps"}
    )
    state, rows = train_one(spec, traced)
    diverged_at = int(state.diverged_at)
    assert 1 <= diverged_at <= 200
    assert np.all(np.isfinite(np.asarray(state.params.mu))) and np.all(np.isfinite(np.asarray(state.params.log_sigma)))
    after = rows["step"] >= diverged_at
    assert rows["diverged"][after].all() and not rows["diverged"][~after].any()
    assert np.isnan(rows["loss"][rows["step"] > diverged_at]).all()
    assert (rows["kl"][np.isfinite(rows["kl"])] >= 0).all()


def test_a_run_that_stays_finite_reports_no_divergence():
    state, rows = train_one(*split_fields(fields()))
    assert int(state.diverged_at) == 0
    assert not rows["diverged"].any()


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("num_mc, d", [(1, 100), (16, 100), (3, 7)])
def test_the_mc_draw_is_the_notebooks_draw_bit_for_bit(num_mc, d, partitionable):
    # The objective draws num_mc * d normals flat and reshapes them (faster); the notebook draws
    # (num_mc, d). Threefry numbers elements by their row-major index in either PRNG mode.
    draw = make_objective("mc", estimator="reparam", num_mc=num_mc).draw
    keys = jax.random.split(jax.random.key(7), 5)
    with jax.threefry_partitionable(partitionable):
        ours = jax.jit(jax.vmap(lambda key: draw(key, d)))(keys)
        notebook = jax.vmap(lambda key: jax.random.normal(key, (num_mc, d)))(keys)
    assert ours.shape == (5, num_mc, d)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(notebook))


@pytest.mark.parametrize("estimator", ["reparam", "stl", "score"])
def test_runs_sharing_a_stream_get_the_numbers_of_runs_drawing_their_own_bit_for_bit(estimator):
    from vi_sweep.core.trainer import jitted_stream_train

    runs = [fields(d=20, steps=120, log_every=40, num_mc=4, lr=lr, seed=s, estimator=estimator) for s in (0, 1, 2) for lr in (1e-3, 1e-2, 1e-1, 50.0)]
    spec = split_fields(runs[0])[0]
    hyper = as_hyper([split_fields(f)[1] for f in runs])
    state, rows = jitted_batch_train(spec)(hyper)  # each run splits and draws its own stream
    shared_state, shared = jitted_stream_train(spec)(jax.tree_util.tree_map(lambda x: x.reshape(3, 4), hyper))  # 3 seeds x 4 lr
    for name, each, once in zip(rows._fields, rows, shared):
        np.testing.assert_array_equal(np.asarray(once).reshape(np.shape(each)), np.asarray(each), err_msg=name)
    np.testing.assert_array_equal(np.asarray(shared_state.diverged_at).ravel(), np.asarray(state.diverged_at))
    assert np.asarray(state.diverged_at)[3::4].all() and not np.asarray(state.diverged_at)[0::4].any()  # lr = 50 blows up, 1e-3 does not
