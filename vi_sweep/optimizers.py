"""Optimizers: a registry of optax constructors; the learning rate always comes from ``lr``.

Each builder takes the learning rate and the optimizer's own hyperparameters *as values that
may be traced* (``jax.Array`` scalars), so a grid over ``lr`` -- or ``b1``, ``momentum`` ... --
is one compiled program under ``vmap``. Only booleans (``nesterov``) and whether gradient
clipping is on are static.

============  =============================================================  ==================
name          update (g = gradient, eta = lr)                                 optax
============  =============================================================  ==================
``adam``      m, v EMAs of g, g^2; x -= eta * m_hat / (sqrt(v_hat) + eps)     ``optax.adam``
``sgd``       x -= eta * g                                                    ``optax.sgd``
``momentum``  m = momentum * m + g; x -= eta * m (or Nesterov)                ``optax.sgd``
``rmsprop``   v = decay * v + (1 - decay) g^2; x -= eta * g / (sqrt(v) + eps) ``optax.rmsprop``
``adagrad``   v += g^2; x -= eta * g / sqrt(v + eps)                          ``optax.adagrad``
``adamw``     adam + decoupled weight decay (Loshchilov & Hutter, 2019)       ``optax.adamw``
============  =============================================================  ==================
"""

from __future__ import annotations

from typing import Any, Callable

import optax

# Defaults are the config schemas' (one place only).
from vi_sweep.config import AdagradConf, AdamConf, AdamWConf, MomentumConf, RMSPropConf

Builder = Callable[..., optax.GradientTransformation]


def adam(lr, b1=AdamConf.b1, b2=AdamConf.b2, eps=AdamConf.eps) -> optax.GradientTransformation:
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def sgd(lr) -> optax.GradientTransformation:
    return optax.sgd(lr)


def momentum(lr, momentum=MomentumConf.momentum, nesterov=MomentumConf.nesterov) -> optax.GradientTransformation:
    return optax.sgd(lr, momentum=momentum, nesterov=nesterov)


def rmsprop(lr, decay=RMSPropConf.decay, eps=RMSPropConf.eps) -> optax.GradientTransformation:
    return optax.rmsprop(lr, decay=decay, eps=eps)


def adagrad(lr, initial_accumulator_value=AdagradConf.initial_accumulator_value, eps=AdagradConf.eps) -> optax.GradientTransformation:
    return optax.adagrad(lr, initial_accumulator_value=initial_accumulator_value, eps=eps)


def adamw(lr, b1=AdamWConf.b1, b2=AdamWConf.b2, eps=AdamWConf.eps, weight_decay=AdamWConf.weight_decay) -> optax.GradientTransformation:
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Builder] = {
    "adam": adam,
    "sgd": sgd,
    "momentum": momentum,
    "rmsprop": rmsprop,
    "adagrad": adagrad,
    "adamw": adamw,
}


def make_optimizer(name: str, lr: Any, grad_clip: Any = None, **hyperparams: Any) -> optax.GradientTransformation:
    """Build optimizer ``name``; with ``grad_clip``, clip the global gradient norm first."""
    try:
        builder = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None
    optimizer = builder(lr, **hyperparams)
    if grad_clip is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(grad_clip), optimizer)
    return optimizer
