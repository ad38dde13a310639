"""Optimizers: every config option equals a hand-written optax loop (the independent reference).

The reference is the seed notebook's own ``step_mc`` (tests/seed_notebook.py) driven with an optax
optimizer built here from optax's documented signature -- not from vi_sweep's registry -- so a
wrong default, a dropped hyperparameter or a misplaced clip shows up as a different trajectory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from tests.seed_notebook import kl_diag_standard_normal, step_mc
from vi_sweep.launch.config import CONF_DIR, run_fields
from vi_sweep.core.trainer import split_fields, train_one

RUN = dict(lr=0.05, num_mc=4, d=5, steps=6, log_every=1, init_log_sigma=-1.0, seed=0)
RUN_OVERRIDES = [f"{key}={value}" for key, value in RUN.items()]

# Optax's defaults, spelled out: vi_sweep's config defaults must be these "usual hyperparameters".
DEFAULTS = {
    "adam": (lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8), {"b1", "b2", "eps"}),
    "sgd": (lambda lr: optax.sgd(lr), set()),
    "momentum": (lambda lr: optax.sgd(lr, momentum=0.9, nesterov=False), {"momentum", "nesterov"}),
    "rmsprop": (lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-8), {"decay", "eps"}),
    "adagrad": (lambda lr: optax.adagrad(lr, initial_accumulator_value=0.1, eps=1e-7), {"initial_accumulator_value", "eps"}),
    "adamw": (lambda lr: optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4), {"b1", "b2", "eps", "weight_decay"}),
}


def optax_loop(optimizer, *, lr, num_mc, d, steps, init_log_sigma, seed, **_):
    """The notebook's loop with any optax optimizer: per-step loss and KL after the update."""
    key = jax.random.key(seed)
    params = (jnp.zeros((d,)), jnp.ones((d,)) * init_log_sigma)
    opt_state = optimizer.init(params)
    losses, kls = [], []
    for _ in range(steps):
        key, opt_state, params, loss = step_mc(key, opt_state, params, optimizer, num_mc)
        losses.append(float(loss))
        kls.append(float(kl_diag_standard_normal(*params)))
    return np.asarray(losses), np.asarray(kls)


def assert_same_trajectory(rows, reference):
    losses, kls = reference
    np.testing.assert_allclose(np.asarray(rows["loss"], np.float64), losses, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rows["kl"], np.float64), kls, rtol=2e-5, atol=1e-5)


def test_every_optimizer_from_a_cli_multirun_equals_a_direct_optax_loop(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("multirun", "optimizer=" + ",".join(DEFAULTS), *RUN_OVERRIDES, "grid=none", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    frames = {frame["optimizer"].iloc[0]: frame for frame in map(pd.read_parquet, sorted(sweep.glob("*/metrics.parquet")))}
    assert set(frames) == set(DEFAULTS)
    for name, (build, hyper_names) in DEFAULTS.items():
        frame = frames[name]
        assert frame.loc[~frame["probe"], "step"].tolist() == list(range(1, RUN["steps"] + 1))
        assert_same_trajectory(frame, optax_loop(build(RUN["lr"]), **RUN))
        # Its hyperparameters, and only its own, have values (every optimizer's are columns: one table).
        columns = {c[len("optimizer_") :] for c in frame.columns if c.startswith("optimizer_") and frame[c].notna().any()}
        assert columns == hyper_names, name
        assert frame["optimizer_grad_clip"].isna().all()


NON_DEFAULT = {  # overrides -> the optax optimizer they must build
    "adam": (["optimizer.b1=0.5", "optimizer.b2=0.9", "optimizer.eps=1e-3"], lambda lr: optax.adam(lr, b1=0.5, b2=0.9, eps=1e-3)),
    "momentum": (["optimizer.momentum=0.5", "optimizer.nesterov=true"], lambda lr: optax.sgd(lr, momentum=0.5, nesterov=True)),
    "rmsprop": (["optimizer.decay=0.5", "optimizer.eps=1e-3"], lambda lr: optax.rmsprop(lr, decay=0.5, eps=1e-3)),
    "adagrad": (
        ["optimizer.initial_accumulator_value=1.0", "optimizer.eps=1e-3"],
        lambda lr: optax.adagrad(lr, initial_accumulator_value=1.0, eps=1e-3),
    ),
    "adamw": (["optimizer.b1=0.8", "optimizer.weight_decay=0.5"], lambda lr: optax.adamw(lr, b1=0.8, weight_decay=0.5)),
}


def composed_fields(*overrides):
    """The flat run fields exactly as the CLI composes them (Hydra compose, no subprocess)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return run_fields(compose("config", overrides=[*RUN_OVERRIDES, *overrides]))


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_optimizer_hyperparameters_reach_optax(name):
    overrides, build = NON_DEFAULT[name]
    fields = composed_fields(f"optimizer={name}", *overrides)
    _, rows = train_one(*split_fields(fields))
    assert_same_trajectory(rows, optax_loop(build(RUN["lr"]), **RUN))
    _, default_rows = train_one(*split_fields(composed_fields(f"optimizer={name}")))
    assert np.max(np.abs(rows["kl"] - default_rows["kl"])) > 1e-3  # the hyperparameters changed something


def test_grad_clip_from_the_cli_clips_the_global_norm_before_the_update(cli, tmp_path):
    clip, lr = 0.5, 0.1
    result = cli("run", "optimizer=sgd", f"optimizer.grad_clip={clip}", *RUN_OVERRIDES, f"lr={lr}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(tmp_path / "metrics.parquet")
    assert (frame["optimizer_grad_clip"] == clip).all()
    run = dict(RUN, lr=lr)
    assert_same_trajectory(frame, optax_loop(optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr)), **run))
    # The clip was active (raw gradients are larger than the clip norm), so unclipped SGD differs.
    assert (frame["grad_norm"] > clip).all()
    _, unclipped_kls = optax_loop(optax.sgd(lr), **run)
    assert np.max(np.abs(frame["kl"].to_numpy() - unclipped_kls)) > 0.1


def test_grad_clip_composes_with_adam_in_process():
    fields = composed_fields("optimizer=adam", "optimizer.grad_clip=0.01")
    _, rows = train_one(*split_fields(fields))
    assert_same_trajectory(rows, optax_loop(optax.chain(optax.clip_by_global_norm(0.01), optax.adam(RUN["lr"])), **RUN))
