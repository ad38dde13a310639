"""Structured configs: the single source of truth for keys, types, defaults and validation.

Every config group in ``conf/`` mirrors one code module and one dataclass family here:

=================  ==========================  ===============================
group              yaml files                  code
=================  ==========================  ===============================
``objective``      ``conf/objective/*.yaml``   ``vi_sweep/objectives.py``
``optimizer``      ``conf/optimizer/*.yaml``   ``vi_sweep/optimizers.py``
``target``         ``conf/target/*.yaml``      ``vi_sweep/targets.py``
``scenario``       ``conf/scenario/*.yaml``    (overrides several keys at once)
``grid``           ``conf/grid/*.yaml``        (the default multirun grid)
=================  ==========================  ===============================

The yaml files only select a schema stored here (``defaults: [/schema/optimizer/adam@_here_]``), so a default value
lives in exactly one place. Value rules (``lr > 0``, ``num_mc >= 1`` ...) live in :data:`RULES`
and produce one-line :class:`ConfigError` messages that name the field and what is allowed.

This module must stay importable without JAX: Hydra plugins and the CLI's pre-check import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The top-level ``conf/`` directory of the checkout (vi_sweep runs from a source/editable install)."""

OBJECTIVES = ("exact", "mc")
ESTIMATORS = ("reparam", "stl", "score")
OPTIMIZERS = ("adam", "sgd", "momentum", "rmsprop", "adagrad", "adamw")
TARGETS = ("standard_normal", "ill_conditioned", "correlated", "shifted")


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line naming the field."""


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


@dataclass
class ObjectiveConf:
    """What is minimised.

    ``exact``: the closed-form KL(q || p). ``mc``: a Monte-Carlo negative ELBO with ``num_mc``
    draws per step, differentiated with ``estimator`` (``reparam``, the notebook's; ``stl``;
    ``score``). The exact objective ignores ``estimator``, ``num_mc`` and the seed.
    """

    name: str = MISSING
    estimator: str = "reparam"


@dataclass
class ExactObjectiveConf(ObjectiveConf):
    name: str = "exact"


@dataclass
class MCObjectiveConf(ObjectiveConf):
    name: str = "mc"


@dataclass
class OptimizerConf:
    """An optax optimizer; the learning rate always comes from the top-level ``lr``.

    ``grad_clip``: if set, gradients are clipped to this global norm before the update.
    """

    name: str = MISSING
    grad_clip: Optional[float] = None


@dataclass
class AdamConf(OptimizerConf):
    name: str = "adam"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


@dataclass
class SGDConf(OptimizerConf):
    name: str = "sgd"


@dataclass
class MomentumConf(OptimizerConf):
    name: str = "momentum"
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class RMSPropConf(OptimizerConf):
    name: str = "rmsprop"
    decay: float = 0.9
    eps: float = 1e-8


@dataclass
class AdagradConf(OptimizerConf):
    name: str = "adagrad"
    initial_accumulator_value: float = 0.1
    eps: float = 1e-7


@dataclass
class AdamWConf(OptimizerConf):
    name: str = "adamw"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-4


@dataclass
class TargetConf:
    """A Gaussian target p, so that the exact KL and the optimum are closed form."""

    name: str = MISSING


@dataclass
class StandardNormalConf(TargetConf):
    name: str = "standard_normal"


@dataclass
class IllConditionedConf(TargetConf):
    """N(0, diag(v)), v log-spaced from 1/condition to 1."""

    name: str = "ill_conditioned"
    condition: float = 1e4


@dataclass
class CorrelatedConf(TargetConf):
    """N(0, (1 - rho) I + rho 11^T)."""

    name: str = "correlated"
    rho: float = 0.9


@dataclass
class ShiftedConf(TargetConf):
    """N(offset * 1, I)."""

    name: str = "shifted"
    offset: float = 10.0


@dataclass
class RunConf:
    """One training run: the notebook's ``run()`` arguments plus the chosen groups.

    Defaults are the notebook's ``run()`` defaults (mode mc, d=100, steps=2000, lr=1e-2,
    num_mc=8, init_log_sigma=-2, log_every=200, Adam).
    """

    objective: ObjectiveConf = MISSING
    optimizer: OptimizerConf = MISSING
    target: TargetConf = MISSING
    lr: float = 1e-2
    num_mc: int = 8
    seed: int = 0
    d: int = 100
    steps: int = 2000
    init_log_sigma: float = -2.0
    log_every: int = 200


SCHEMAS: dict[str, dict[str, type]] = {
    "objective": {"exact": ExactObjectiveConf, "mc": MCObjectiveConf},
    "optimizer": {
        "adam": AdamConf,
        "sgd": SGDConf,
        "momentum": MomentumConf,
        "rmsprop": RMSPropConf,
        "adagrad": AdagradConf,
        "adamw": AdamWConf,
    },
    "target": {
        "standard_normal": StandardNormalConf,
        "ill_conditioned": IllConditionedConf,
        "correlated": CorrelatedConf,
        "shifted": ShiftedConf,
    },
}


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="vi_sweep_schema", node=RunConf)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            # Under schema/<group>/ so that `--help` lists only the yaml options of each group.
            cs.store(group=f"schema/{group}", name=name, node=node)


register_configs()

# --------------------------------------------------------------------------------------------
# Validation: one rule per key, one line per error
# --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_float(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _finite_float(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and value >= low


def _optional_positive(value: Any) -> bool:
    return value is None or _positive_float(value)


def _in_unit_interval(value: Any) -> bool:
    return _finite_float(value) and 0.0 <= value < 1.0


def _nonnegative_float(value: Any) -> bool:
    return _finite_float(value) and value >= 0


MAX_SEED = 2**31 - 1  # seeds are traced as int32
MAX_ABS_LOG_SIGMA = 40.0  # exp(2 * 40) ~ 5.5e34 is still a float32; sigma^2 at 45 is not


@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    allowed: str


RULES: dict[str, Rule] = {
    "lr": Rule(_positive_float, "a finite number > 0"),
    "num_mc": Rule(_int_at_least(1), "an integer >= 1"),
    "seed": Rule(lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    "d": Rule(_int_at_least(1), "an integer >= 1"),
    "steps": Rule(_int_at_least(1), "an integer >= 1"),
    "log_every": Rule(_int_at_least(1), "an integer >= 1"),
    "init_log_sigma": Rule(
        lambda v: _finite_float(v) and abs(v) <= MAX_ABS_LOG_SIGMA, f"a number in [-{MAX_ABS_LOG_SIGMA:g}, {MAX_ABS_LOG_SIGMA:g}]"
    ),
    "objective.estimator": Rule(lambda v: v in ESTIMATORS, "one of " + ", ".join(ESTIMATORS)),
    "optimizer.grad_clip": Rule(_optional_positive, "null or a finite number > 0"),
    "optimizer.b1": Rule(_in_unit_interval, "a number in [0, 1)"),
    "optimizer.b2": Rule(_in_unit_interval, "a number in [0, 1)"),
    "optimizer.decay": Rule(_in_unit_interval, "a number in [0, 1)"),
    "optimizer.momentum": Rule(_in_unit_interval, "a number in [0, 1)"),
    "optimizer.eps": Rule(_positive_float, "a finite number > 0"),
    "optimizer.weight_decay": Rule(_nonnegative_float, "a finite number >= 0"),
    "optimizer.initial_accumulator_value": Rule(_nonnegative_float, "a finite number >= 0"),
    "optimizer.nesterov": Rule(lambda v: isinstance(v, bool), "true or false"),
    "target.condition": Rule(lambda v: _finite_float(v) and v >= 1, "a finite number >= 1"),
    "target.rho": Rule(_in_unit_interval, "a number in [0, 1)"),
    "target.offset": Rule(_finite_float, "a finite number"),
}

GROUPS = ("objective", "optimizer", "target", "scenario", "grid")


def group_options(group: str) -> list[str]:
    """The options of a config group: the yaml files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def defaults_choices(path: Path) -> dict[str, str]:
    """The group options a yaml file's defaults list selects (``optimizer: adam``, ``override /target: x``)."""
    from omegaconf import DictConfig, OmegaConf

    choices: dict[str, str] = {}
    for entry in OmegaConf.load(path).get("defaults") or []:
        if isinstance(entry, DictConfig):
            for key, value in entry.items():
                choices[str(key).removeprefix("override ").lstrip("/")] = str(value)
    return choices


def group_fields(group: str, option: str) -> list[str]:
    """The keys of ``group=option`` (its schema's dataclass fields), e.g. ``optimizer=sgd`` -> name, grad_clip."""
    return [f.name for f in fields(SCHEMAS[group][option])]


def check_group_field(group: str, options: Sequence[str], field: str) -> None:
    """Raise :class:`ConfigError` if ``group.field`` is not a key of every option it may apply to.

    Hydra reports this (``optimizer=sgd optimizer.b1=0.5``) as a multi-line error; this gives
    the one line that names the key, the option and the keys it has.
    """
    for option in options:
        known = group_fields(group, option) if option in SCHEMAS.get(group, {}) else None
        if known is not None and field not in known:
            raise ConfigError(f"{group}.{field} is not a key of {group}={option}; its keys are {', '.join(known)}")


def check_value(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` if ``key=value`` breaks its rule (unknown keys pass)."""
    if key in GROUPS:
        options = group_options(key)
        if value not in options:
            raise ConfigError(f"{key}={value} is not a known option; choose one of {', '.join(options)}")
        return
    rule = RULES.get(key)
    if rule is not None and not rule.check(value):
        raise ConfigError(f"{key}={value!r} is invalid: must be {rule.allowed}")


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a composed config (a plain dict or DictConfig) against :data:`RULES`.

    Group names are checked against the code registries' names, every ruled key against its rule.
    """
    plain = _to_plain(cfg)
    for group, names in (("objective", OBJECTIVES), ("optimizer", OPTIMIZERS), ("target", TARGETS)):
        name = plain.get(group, {}).get("name")
        if name not in names:
            raise ConfigError(f"{group}={name} is not a known option; choose one of {', '.join(names)}")
    for key, value in _flatten(plain).items():
        if key in RULES:
            check_value(key, value)


def _to_plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def run_fields(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The flat, JSON-able description of a run used for parquet columns and grouping.

    ``objective``/``optimizer``/``target`` become their names; their other fields are prefixed
    (``optimizer_b1``, ``target_condition``).
    """
    plain = _to_plain(cfg)
    out: dict[str, Any] = {}
    for group in ("objective", "optimizer", "target"):
        node = dict(plain[group])
        out[group] = node.pop("name")
        if group == "objective":
            estimator = node.pop("estimator")
            # The exact objective has no estimator: recording one would split its runs into cells.
            out["estimator"] = "none" if out[group] == "exact" else estimator
        for key, value in sorted(node.items()):
            out[f"{group}_{key}"] = value
    for key in ("lr", "num_mc", "seed", "d", "steps", "init_log_sigma", "log_every"):
        out[key] = plain[key]
    return out

