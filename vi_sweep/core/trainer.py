r"""The trainer: pure ``init`` / ``step`` / ``train`` over small NamedTuple states.

One run is

.. code-block:: text

    key = jax.random.key(seed);  mu = 0;  log_sigma = init_log_sigma
    for t = 1..steps:
        key, subkey = split(key)                       # one split per step (the notebook's stream)
        eps = draw(subkey, d)                          # (num_mc, d) normals
        loss_t, g = value_and_grad(loss)(params, eps, target)
        params = optimizer.update(g, ...)              # skipped once a non-finite value appears
        if t in (1, steps) or t % log_every == 0 or t is a tail probe:  # a row: loss_t, the *updated* params

written as a ``lax.scan`` over logged rows around a loop over the steps between them (one
step body, traced and compiled once), so metrics cost nothing on unlogged steps and there is no
Python loop per step.

Static choices (objective, estimator, num_mc, optimizer, target, d, steps, log_every, and a
regression target's dataset and quadrature rule) form a hashable :class:`TrainSpec` bound once by
:func:`make_train`; everything numeric that may vary inside a sweep (lr, seed, init_log_sigma,
optimizer and target hyperparameters, a regression target's mean-field optimum q*) is a traced
:class:`Hyper`, so ``jax.jit(jax.vmap(make_train(spec)))`` runs a whole grid as one program and
changing those values never recompiles.

The draw is pipelined: step t's ``eps`` is drawn during step t-1 (the first one in ``init``) and
carried in the state. The stream is the same, but the normals are a loop-carried buffer computed
once per step, where XLA's CPU fusion would otherwise recompute the inverse-erf of every sample
inside each of the three fusions that read ``eps``.

Divergence: a step whose loss, gradient or new parameters are not finite is not applied; the
run records ``diverged_at`` (that step, 1-based; 0 = never), keeps its last finite parameters
and reports ``loss = nan`` afterwards. A sweep never crashes on NaN.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_sweep.core import noise
from vi_sweep.core.objectives import Params, make_objective
from vi_sweep.core.schedule import logged_steps, row_steps, tail_start  # noqa: F401 - re-exported: the rows a run has
from vi_sweep.core.optimizers import OPTIMIZERS, make_optimizer
from vi_sweep.core.targets import TARGETS, Target, make_target, reference_optimum, split_target_params


class TrainSpec(NamedTuple):
    """Everything that fixes the compiled program (shapes and code paths). Hashable."""

    objective: str
    estimator: str  # "none" for the exact objective
    num_mc: int  # 0 for the exact objective
    optimizer: str
    optimizer_static: tuple[tuple[str, Any], ...]  # booleans and "is clipping on"
    target: str
    d: int
    steps: int
    log_every: int
    target_static: tuple[tuple[str, Any], ...] = ()  # a regression target's dataset and quadrature rule (targets.split_target_params)


class Hyper(NamedTuple):
    """Traced per-run values; every leaf is a scalar (or a batch of scalars under ``vmap``)."""

    lr: jax.Array  # shape=(), float32
    seed: jax.Array  # shape=(), int32
    init_log_sigma: jax.Array  # shape=(), float32
    optimizer: dict  # name -> float32 scalar (b1, b2, eps, momentum, grad_clip, ...)
    target: dict  # name -> float32 scalar (condition, rho, offset, prior_scale)
    optimum: dict  # {} or, for a regression target, its q*: "mu", "log_sigma" -> float32 (d,)


class TrainState(NamedTuple):
    """The scan carry."""

    params: Params
    opt_state: optax.OptState
    key: jax.Array  # typed PRNG key, advanced by one split per step (one step ahead: see noise)
    noise: jax.Array  # the next step's draw, e.g. eps of shape (num_mc, d); (0, d) for exact
    step: jax.Array  # shape=(), int32: steps taken so far
    diverged_at: jax.Array  # shape=(), int32: first non-finite step (1-based), 0 = never


class StepInfo(NamedTuple):
    """What a step leaves for the next logged row."""

    loss: jax.Array  # objective at the step's parameters, before the update (nan once diverged)
    grads: Params  # the step's gradient (its global norm is logged)


class Rows(NamedTuple):
    """One row per entry of :func:`row_steps`; the parquet columns."""

    step: jax.Array  # int32: the step the row describes (the state after it)
    probe: jax.Array  # bool: a tail probe (see row_steps), not one of the notebook's logged rows
    loss: jax.Array
    kl: jax.Array  # KL(q || p); NaN where it has no closed form (regression targets: log p(y) is unknown)
    kl_excess: jax.Array  # KL(q || p) - min over mean-field q of KL(q || p) = ELBO(q*) - ELBO(q), >= 0
    mu_norm: jax.Array
    mean_error: jax.Array  # ||mu - mu*||, mu* the mean of the mean-field optimum q* (the target's mean if Gaussian)
    sigma_mean: jax.Array
    sigma_std: jax.Array
    sigma_min: jax.Array
    sigma_max: jax.Array
    grad_norm: jax.Array
    diverged: jax.Array  # bool: a non-finite value has occurred at or before this row's step


def _gaps(steps: np.ndarray) -> np.ndarray:
    """Steps to take before each row: the differences of the row steps."""
    return np.diff(np.concatenate([[0], steps])).astype(np.int32)


def _all_finite(tree: Any) -> jax.Array:
    """Whether every entry of every leaf is finite, as one fused reduction: ``x * 0`` is 0 for a
    finite ``x`` and nan for inf or nan, and a sum holding a nan is nan."""
    return jnp.isfinite(sum(jnp.sum(leaf * 0) for leaf in jax.tree_util.tree_leaves(tree)))


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


class _Parts(NamedTuple):
    """The pieces of one spec's training, shared by the one-run and the shared-stream drivers."""

    init_run: Callable  # hyper -> TrainState without its stream (key and noise left empty)
    draw_next: Callable  # key -> (key, next step's noise): one split of the stream
    step: Callable  # (hyper, state, noise) -> (state, StepInfo): one step of one run on a given draw
    row: Callable  # (hyper, state, info, probe) -> Rows
    gaps: np.ndarray
    probes: np.ndarray


def _parts(spec: TrainSpec) -> _Parts:
    objective = make_objective(spec.objective, estimator=spec.estimator, num_mc=spec.num_mc)
    static_opt = dict(spec.optimizer_static)
    clip_on = static_opt.pop("clip", False)
    steps, probes = row_steps(spec.steps, spec.log_every)

    target_static = dict(spec.target_static)

    def build(hyper: Hyper) -> tuple[optax.GradientTransformation, Target]:
        opt_hyper = dict(hyper.optimizer)
        grad_clip = opt_hyper.pop("grad_clip", None)
        optimizer = make_optimizer(
            spec.optimizer, hyper.lr, grad_clip=grad_clip if clip_on else None, **opt_hyper, **static_opt
        )
        optimum = (hyper.optimum["mu"], hyper.optimum["log_sigma"]) if hyper.optimum else None
        target = make_target(spec.target, spec.d, optimum, **target_static, **hyper.target)
        return optimizer, target

    def draw_next(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        key, subkey = noise.split(key)  # jax.random.split, written out (see vi_sweep.core.noise)
        return key, objective.draw(subkey, spec.d)

    def init_run(hyper: Hyper) -> TrainState:
        optimizer, _ = build(hyper)
        mu = jnp.zeros((spec.d,))
        log_sigma = jnp.ones((spec.d,)) * hyper.init_log_sigma
        params = Params(mu, log_sigma)
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            key=None,
            noise=None,
            step=jnp.zeros((), jnp.int32),
            diverged_at=jnp.zeros((), jnp.int32),
        )

    def step(hyper: Hyper, state: TrainState, noise: jax.Array) -> tuple[TrainState, StepInfo]:
        optimizer, target = build(hyper)
        loss, grads = jax.value_and_grad(objective.loss)(state.params, noise, target)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        t = state.step + 1
        finite = _all_finite((loss, grads, params))
        alive = state.diverged_at == 0
        apply = alive & finite
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(apply, n, o), new, old)  # noqa: E731
        new_state = TrainState(
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            key=None,
            noise=None,
            step=t,
            diverged_at=jnp.where(alive & ~finite, t, state.diverged_at),
        )
        return new_state, StepInfo(loss=jnp.where(alive, loss, jnp.nan), grads=grads)

    def row(hyper: Hyper, state: TrainState, info: StepInfo, probe: jax.Array) -> Rows:
        _, target = build(hyper)
        mu, log_sigma = state.params
        sigma = jnp.exp(log_sigma)
        return Rows(
            step=state.step,
            probe=probe,
            loss=info.loss,
            kl=target.kl(mu, log_sigma),
            kl_excess=target.kl_excess(mu, log_sigma),
            mu_norm=jnp.linalg.norm(mu),
            mean_error=jnp.linalg.norm(mu - target.meanfield_optimum()[0]),
            sigma_mean=jnp.mean(sigma),
            sigma_std=jnp.std(sigma),
            sigma_min=jnp.min(sigma),
            sigma_max=jnp.max(sigma),
            grad_norm=_global_norm(info.grads),
            diverged=state.diverged_at > 0,
        )

    return _Parts(init_run, draw_next, step, row, _gaps(steps), probes)


def _scan_rows(parts: _Parts, runs: TrainState, key: jax.Array, step_runs: Callable, row_runs: Callable, blank: StepInfo):
    """The scan over rows shared by both drivers: ``gap`` steps (a loop over one traced step
    body; the last step's :class:`StepInfo` is carried, not stacked), then the row they end on.
    The stream -- ``key`` and the next step's noise -- is carried beside the runs: step t+1's
    noise is drawn during step t, so XLA computes the normals once, not inside each fusion that
    reads them."""
    key, noise = parts.draw_next(key)  # step 1's draw

    def one_step(_, carry):
        runs, key, noise, _ = carry
        runs, info = step_runs(runs, noise)
        key, noise = parts.draw_next(key)
        return runs, key, noise, info

    def advance(carry, xs):
        gap, probe = xs
        carry = jax.lax.fori_loop(0, gap, one_step, carry)
        runs, _, _, info = carry
        return carry, row_runs(runs, info, probe)

    (runs, key, noise, _), rows = jax.lax.scan(advance, (runs, key, noise, blank), (parts.gaps, parts.probes))
    return runs._replace(key=key, noise=noise), rows


def make_train(spec: TrainSpec):
    """Bind the static spec; return ``train(hyper) -> (TrainState, Rows)`` for one run (pure, jit/vmap-able)."""
    parts = _parts(spec)

    def train(hyper: Hyper) -> tuple[TrainState, Rows]:
        state = parts.init_run(hyper)
        blank = StepInfo(loss=jnp.zeros(()), grads=jax.tree_util.tree_map(jnp.zeros_like, state.params))
        return _scan_rows(
            parts,
            state,
            jax.random.key(hyper.seed),
            lambda run, noise: parts.step(hyper, run, noise),
            lambda run, info, probe: parts.row(hyper, run, info, probe),
            blank,
        )

    return train


def make_stream_train(spec: TrainSpec):
    """Bind the static spec; return ``train(hypers) -> (TrainState, Rows)`` for the runs of one stream.

    ``hypers`` has a leading axis of R runs that share their noise stream (the same seed, and the
    spec fixes ``num_mc`` and the draw's shape): the stream is split and drawn once per step and
    broadcast to the R runs, whose steps are vmapped. Each run's numbers are those of
    :func:`make_train` on its own, bit for bit: the stream depends on the seed alone. The returned
    state's run fields have the leading axis R; its key and noise are the stream's.
    """
    parts = _parts(spec)
    over_runs = functools.partial(jax.vmap, in_axes=(0, 0, None))

    def train(hypers: Hyper) -> tuple[TrainState, Rows]:
        runs = jax.vmap(parts.init_run)(hypers)
        blank = StepInfo(loss=jnp.zeros(hypers.lr.shape), grads=jax.tree_util.tree_map(jnp.zeros_like, runs.params))
        state, rows = _scan_rows(
            parts,
            runs,
            jax.random.key(hypers.seed[0]),
            lambda runs, noise: over_runs(parts.step)(hypers, runs, noise),
            lambda runs, info, probe: jax.vmap(parts.row, in_axes=(0, 0, 0, None))(hypers, runs, info, probe),
            blank,
        )
        return state, jax.tree_util.tree_map(lambda column: jnp.swapaxes(column, 0, 1), rows)  # (rows, runs) -> (runs, rows)

    return train


LIBRARY_FUSIONS_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}
"""XLA options for the trainer's programs: on CPU, XLA compiles reductions and dots itself, in
fused loops, instead of handing them to YNNPACK (its default since ~jaxlib 0.9).

Why: XLA's CPU backend hands each reduction (the sums over ``num_mc`` and over ``d`` in every
step) to YNNPACK as a separate call, and the elementwise work feeding it -- the samples ``z``, the
gradient through them, shape ``(runs, num_mc, d)`` -- is written to memory first. A step is
dozens of such small reductions; kept in XLA, each is fused with its producer into one loop. The
reference grid's training calls: 4.8 s -> 2.7 s on 2 cores (``benchmarks/bench_grid.py``), in
line with jax-ml/jax#37465 (whose workaround turns off YNNPACK's reductions only). Why dots too:
with YNNPACK's dots kept and its reductions off (``LIBRARY_FUSION_TYPE_DOT``), jaxlib 0.10.2
miscompiled the vmapped regression targets' ``kl_excess`` (values off by up to 10 nats, negative;
``tests/test_glm.py`` checks the batched value against one run's). Sums are added in XLA's order,
not YNNPACK's: the same numbers up to float32 round-off (the notebook's printed tables hold to
their last printed digit, ``tests/test_notebook_tables.py``). The option is per program, not
process-wide (``jax.jit(compiler_options=...)``), so a user's own JAX code is untouched; GPUs
ignore it; a jaxlib that does not know it compiles with its defaults (:func:`trainer_compiler_options`).
"""


@functools.lru_cache(maxsize=None)
def trainer_compiler_options() -> dict[str, str] | None:
    """:data:`LIBRARY_FUSIONS_OFF` if this jaxlib's XLA accepts it (tried once on a tiny program,
    on the default backend), else ``None``: XLA's defaults."""
    try:
        jax.jit(jnp.sum, compiler_options=LIBRARY_FUSIONS_OFF).lower(np.zeros(2, np.float32)).compile()
    except Exception:  # noqa: BLE001 - "No such compile option" or a value this XLA cannot parse: its defaults
        return None
    return dict(LIBRARY_FUSIONS_OFF)


def trainer_jit(fn):
    """``jax.jit(fn)`` with :func:`trainer_compiler_options`: how every trainer program is jitted
    (here, and the launcher's programs in ``vi_sweep.launch.programs``)."""
    return jax.jit(fn, compiler_options=trainer_compiler_options())


@functools.lru_cache(maxsize=None)
def jitted_train(spec: TrainSpec):
    """``jit(make_train(spec))``: compiled once per spec, reused for every lr/seed/init."""
    return trainer_jit(make_train(spec))


@functools.lru_cache(maxsize=None)
def jitted_batch_train(spec: TrainSpec):
    """``jit(vmap(make_train(spec)))``: a batch of runs with one spec as one program, each drawing its own noise."""
    return trainer_jit(jax.vmap(make_train(spec)))


@functools.lru_cache(maxsize=None)
def jitted_stream_train(spec: TrainSpec):
    """``jit(vmap(make_stream_train(spec)))``: streams x runs-per-stream as one program; each
    stream's noise drawn once for its runs. ``hypers`` leaves have the shape ``(streams, runs)``."""
    return trainer_jit(jax.vmap(make_stream_train(spec)))


# ---------------------------------------------------------------------------------------------
# From flat config fields (see vi_sweep.launch.config.run_fields) to (spec, hyper)
# ---------------------------------------------------------------------------------------------

_SPEC_KEYS = ("objective", "estimator", "num_mc", "optimizer", "target", "d", "steps", "log_every")

RUN_FIELD_TYPES = {
    "objective": str,
    "estimator": str,
    "optimizer": str,
    "target": str,
    "lr": float,
    "num_mc": int,
    "seed": int,
    "d": int,
    "steps": int,
    "init_log_sigma": float,
    "log_every": int,
    "optimizer_grad_clip": float,
}
"""The fields every run has, and their types (``optimizer_grad_clip`` may be None: no clipping)."""


def field_types() -> dict[str, type]:
    """Every flat field any run can have, with its type: :data:`RUN_FIELD_TYPES` and each
    optimizer's and target's keyword hyperparameters (``optimizer_b1``, ``target_rho`` ...).

    A run has only its own optimizer's and target's hyperparameters; the others are missing from
    its fields. Files that store every field with its type (nulls for the missing ones) read as
    one table whatever mix of optimizers and targets a sweep holds.
    """
    return dict(_field_types_of(tuple(OPTIMIZERS.values()), tuple(TARGETS.values())))


@functools.lru_cache(maxsize=8)
def _field_types_of(optimizers: tuple[Callable, ...], targets: tuple[Callable, ...]) -> tuple[tuple[str, type], ...]:
    """:func:`field_types` for these registries' builders: read from their signatures once (every
    job's files need it; ~4 ms of ``inspect`` and ``get_type_hints`` a call here), again only if a
    registry changes."""
    types = dict(RUN_FIELD_TYPES)
    for group, builders, positional in (("optimizer", optimizers, "lr"), ("target", targets, "d")):
        for builder in builders:
            hints = typing.get_type_hints(builder)
            for name, parameter in inspect.signature(builder).parameters.items():
                if name != positional:
                    types.setdefault(f"{group}_{name}", hints.get(name, type(parameter.default)))
    return tuple(types.items())


def split_fields(fields: Mapping[str, Any]) -> tuple[TrainSpec, dict[str, Any]]:
    """Split a run's flat fields into the static :class:`TrainSpec` and plain traced values.

    The exact objective does not depend on ``estimator`` or ``num_mc``; they are normalised away
    so that such jobs share one compiled program. A regression target's dataset and quadrature
    rule are static (``TrainSpec.target_static``), its prior scale traced, and its mean-field
    optimum q* is solved here on the host (float64, once per posterior) and traced too
    (``traced["optimum"]``: tuples of floats, so the values stay hashable and picklable).
    """
    optimizer_static: list[tuple[str, Any]] = []
    optimizer_traced: dict[str, float] = {}
    target_params: dict[str, Any] = {}
    for key, value in sorted(fields.items()):
        if key.startswith("optimizer_"):
            name = key[len("optimizer_") :]
            if name == "grad_clip":
                optimizer_static.append(("clip", value is not None))
                optimizer_traced["grad_clip"] = float(value) if value is not None else math.inf
            elif isinstance(value, bool):
                optimizer_static.append((name, value))
            else:
                optimizer_traced[name] = float(value)
        elif key.startswith("target_"):
            target_params[key[len("target_") :]] = value
    target_static, target_traced = split_target_params(fields["target"], target_params)
    spec_values = {key: fields[key] for key in _SPEC_KEYS}
    if spec_values["objective"] == "exact":
        spec_values.update(estimator="none", num_mc=0)
    spec = TrainSpec(
        optimizer_static=tuple(sorted(optimizer_static)), target_static=tuple(sorted(target_static.items())), **spec_values
    )
    traced = dict(
        lr=float(fields["lr"]),
        seed=int(fields["seed"]),
        init_log_sigma=float(fields["init_log_sigma"]),
        optimizer=optimizer_traced,
        target=target_traced,
    )
    optimum = reference_optimum(spec.target, spec.d, **target_static, **target_traced)
    if optimum is not None:  # a float64 host solve, once per posterior (cached)
        traced["optimum"] = {"mu": tuple(map(float, optimum[0])), "log_sigma": tuple(map(float, optimum[1]))}
    return spec, traced


def as_hyper(traced: Mapping[str, Any] | list[Mapping[str, Any]]) -> Hyper:
    """Stack plain traced values (one dict, or a list for a batch) into a :class:`Hyper` of arrays."""
    batch = [traced] if isinstance(traced, Mapping) else list(traced)

    def stack(get, dtype):
        return np.asarray([get(t) for t in batch], dtype=dtype)

    hyper = Hyper(
        lr=stack(lambda t: t["lr"], np.float32),
        seed=stack(lambda t: t["seed"], np.int32),
        init_log_sigma=stack(lambda t: t["init_log_sigma"], np.float32),
        optimizer={k: stack(lambda t, k=k: t["optimizer"][k], np.float32) for k in batch[0]["optimizer"]},
        target={k: stack(lambda t, k=k: t["target"][k], np.float32) for k in batch[0]["target"]},
        optimum={k: stack(lambda t, k=k: t["optimum"][k], np.float32) for k in batch[0].get("optimum", {})},
    )
    if isinstance(traced, Mapping):
        hyper = jax.tree_util.tree_map(lambda x: x[0], hyper)
    return hyper


FINAL_PARAMS = ("final_mu", "final_log_sigma")
"""Entries beside the rows' columns in a run's output (:func:`train_one`, the launcher's chunks):
its last ``mu`` and ``log_sigma``, saved next to its metrics (``params.parquet``)."""


def final_params(state: TrainState) -> dict[str, np.ndarray]:
    """The :data:`FINAL_PARAMS` of a (possibly batched) final state, as numpy."""
    return {"final_mu": np.asarray(state.params.mu), "final_log_sigma": np.asarray(state.params.log_sigma)}


def train_one(spec: TrainSpec, traced: Mapping[str, Any]) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Train one run; return the final state and its rows as numpy arrays (with :data:`FINAL_PARAMS`)."""
    state, rows = jitted_train(spec)(as_hyper(traced))
    return state, {**{name: np.asarray(value) for name, value in rows._asdict().items()}, **final_params(state)}
