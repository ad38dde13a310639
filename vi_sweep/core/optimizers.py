"""Optimizers: a registry of optax constructors; the learning rate always comes from ``lr``.

Every default lives in its builder's signature (as in optax); the Hydra schemas of
``conf/optimizer/*.yaml`` are read from these signatures (:mod:`vi_sweep.launch.config`), so a new
optimizer is one function here and one yaml file.

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

from typing import Any, Callable, Union

import jax
import optax

Builder = Callable[..., optax.GradientTransformation]
Scalar = Union[float, jax.Array]  # a Python number, or a traced scalar under jit/vmap


def adam(lr: Scalar, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam (Kingma & Ba, 2015), optax's defaults."""
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def sgd(lr: Scalar) -> optax.GradientTransformation:
    """Plain gradient descent."""
    return optax.sgd(lr)


def momentum(lr: Scalar, momentum: float = 0.9, nesterov: bool = False) -> optax.GradientTransformation:
    """Heavy-ball (or Nesterov) momentum."""
    return optax.sgd(lr, momentum=momentum, nesterov=nesterov)


def rmsprop(lr: Scalar, decay: float = 0.9, eps: float = 1e-8) -> optax.GradientTransformation:
    """RMSProp (Tieleman & Hinton, 2012), optax's defaults."""
    return optax.rmsprop(lr, decay=decay, eps=eps)


def adagrad(lr: Scalar, initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> optax.GradientTransformation:
    """Adagrad (Duchi et al., 2011), optax's defaults."""
    return optax.adagrad(lr, initial_accumulator_value=initial_accumulator_value, eps=eps)


def adamw(lr: Scalar, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), optax's defaults."""
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
