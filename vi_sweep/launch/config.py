"""Structured configs: keys, types, defaults and validation of a run's config.

Every config group in ``conf/`` mirrors one code module of :mod:`vi_sweep.core`:

=================  ==========================  ===================================
group              yaml files                  code
=================  ==========================  ===================================
``objective``      ``conf/objective/*.yaml``   ``vi_sweep/core/objectives.py``
``optimizer``      ``conf/optimizer/*.yaml``   ``vi_sweep/core/optimizers.py``
``target``         ``conf/target/*.yaml``      ``vi_sweep/core/targets.py``
``scenario``       ``conf/scenario/*.yaml``    (overrides several keys at once)
``grid``           ``conf/grid/*.yaml``        (the default multirun grid)
=================  ==========================  ===================================

The schema of an optimizer or target option is made from its builder's signature
(:func:`schema_from_builder`): a keyword's name, type and default there are the config key's, so
a default lives in exactly one place (the code, as in optax) and a new option is one function in
the core module and one yaml file. The yaml files only select a schema stored here
(``defaults: [/schema/optimizer/adam@_here_]``). Value rules (``lr > 0``, ``num_mc >= 1`` ...)
live in :data:`RULES` and produce one-line :class:`ConfigError` messages that name the field and
what is allowed.
"""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from vi_sweep.analysis.optimized_metric import DEFAULT_METRIC, DEFAULT_NONFINITE_VALUE, OPTIMIZED_METRICS
from vi_sweep.core import datasets, objectives, optimizers, regression, targets
from vi_sweep.launch.plain import to_plain



def find_conf_dir() -> Path:
    """The configs: ``vi_sweep/conf/`` where a wheel ships them, else the checkout's top-level ``conf/``.

    The repository keeps ``conf/`` at its top level (a source tree or an editable install reads it
    there); building a wheel copies it into the package (``setup.py``).
    """
    package = Path(__file__).resolve().parent.parent
    shipped = package / "conf"
    return shipped if (shipped / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = find_conf_dir()
"""The directory ``python -m vi_sweep`` composes from (:func:`find_conf_dir`)."""

DATASETS = tuple(datasets.DATASETS)
OBJECTIVES = tuple(objectives.OBJECTIVES)
ESTIMATORS = tuple(objectives.ESTIMATORS)
OPTIMIZERS = tuple(optimizers.OPTIMIZERS)
TARGETS = tuple(targets.TARGETS)


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line naming the field."""


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


def builder_default(builder: Callable[..., Any], name: str) -> Any:
    """The default of keyword ``name`` in ``builder``'s signature."""
    return inspect.signature(builder).parameters[name].default


@dataclass
class ObjectiveConf:
    """What is minimised.

    ``exact``: the closed-form KL(q || p). ``mc``: a Monte-Carlo negative ELBO with ``num_mc``
    draws per step, differentiated with ``estimator`` (``reparam``, the notebook's; ``stl``;
    ``score``). The exact objective ignores ``estimator``, ``num_mc`` and the seed.
    """

    name: str = MISSING
    estimator: str = builder_default(objectives.make_objective, "estimator")


@dataclass
class OptimizerConf:
    """An optax optimizer; the learning rate always comes from the top-level ``lr``.

    ``grad_clip``: if set, gradients are clipped to this global norm before the update.
    """

    name: str = MISSING
    grad_clip: Optional[float] = builder_default(optimizers.make_optimizer, "grad_clip")


@dataclass
class TargetConf:
    """A target p with an exact deterministic objective and a known mean-field optimum (closed
    form for the Gaussians, a float64 solve for the regression posteriors)."""

    name: str = MISSING


def schema_from_builder(base: type, option: str, builder: Callable[..., Any], positional: Sequence[str]) -> type:
    """A dataclass ``base`` + one field per keyword of ``builder`` (name, type and default from its signature).

    ``positional``: the builder's arguments that are not config keys (``lr``, ``d``).
    """
    hints = typing.get_type_hints(builder)
    extra = []
    for name, parameter in inspect.signature(builder).parameters.items():
        if name in positional:
            continue
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{builder.__qualname__}: keyword {name} needs a default to be a config key")
        extra.append((name, hints.get(name, type(parameter.default)), field(default=parameter.default)))
    return _named_schema(base, option, extra)


def _named_schema(base: type, option: str, extra: Sequence[tuple]) -> type:
    """``base`` with ``name = option`` and ``extra`` fields, importable as ``vi_sweep.launch.config.<Option><Base>``:
    composed configs are pickled (the template composer, submitit), and pickle finds a class by name."""
    camel = "".join(part.title() for part in option.split("_"))
    schema = make_dataclass(f"{camel}{base.__name__}", [("name", str, field(default=option)), *extra], bases=(base,))
    schema.__module__ = __name__
    globals()[schema.__name__] = schema
    return schema


@dataclass
class RunConf:
    """One training run: the notebook's ``run()`` arguments plus the chosen groups.

    Defaults are the notebook's ``run()`` defaults (mode mc, d=100, steps=2000, lr=1e-2,
    num_mc=8, init_log_sigma=-2, log_every=200, Adam).

    ``optimized_metric`` and ``nonfinite_value`` do not change the run: they choose the float the
    job returns to Hydra's sweeper (:mod:`vi_sweep.analysis.optimized_metric`), which a searching
    sweeper (``hydra/sweeper=optuna``) minimises.
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
    optimized_metric: str = DEFAULT_METRIC
    nonfinite_value: float = DEFAULT_NONFINITE_VALUE


SCHEMAS: dict[str, dict[str, type]] = {
    "objective": {name: _named_schema(ObjectiveConf, name, ()) for name in OBJECTIVES},
    "optimizer": {name: schema_from_builder(OptimizerConf, name, builder, ("lr",)) for name, builder in optimizers.OPTIMIZERS.items()},
    "target": {name: schema_from_builder(TargetConf, name, builder, ("d",)) for name, builder in targets.TARGETS.items()},
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
MAX_STEPS = 2**31 - 1  # the trainer counts steps in int32 (TrainState.step, diverged_at)
MAX_ABS_LOG_SIGMA = 40.0  # exp(2 * 40) ~ 5.5e34 is still a float32; sigma^2 at 45 is not
MAX_ROWS = 10**7  # a synthetic dataset is a constant of the compiled program: keep it in memory
MAX_QUADRATURE_NODES = 256  # numpy's hermegauss loses its weights to overflow beyond ~300 nodes


@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    allowed: str


RULES: dict[str, Rule] = {
    "lr": Rule(_positive_float, "a finite number > 0"),
    "num_mc": Rule(_int_at_least(1), "an integer >= 1"),
    "seed": Rule(lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    "d": Rule(_int_at_least(1), "an integer >= 1"),
    "steps": Rule(lambda v: _is_int(v) and 1 <= v <= MAX_STEPS, f"an integer in [1, {MAX_STEPS}]"),
    "log_every": Rule(lambda v: _is_int(v) and 1 <= v <= MAX_STEPS, f"an integer in [1, {MAX_STEPS}]"),
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
    "target.dataset": Rule(lambda v: v in DATASETS, "one of " + ", ".join(DATASETS)),
    "target.num_rows": Rule(lambda v: _is_int(v) and 1 <= v <= MAX_ROWS, f"an integer in [1, {MAX_ROWS}]"),
    "target.feature_correlation": Rule(_in_unit_interval, "a number in [0, 1)"),
    "target.data_seed": Rule(lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
    "target.prior_scale": Rule(_positive_float, "a finite number > 0"),
    "target.quadrature_nodes": Rule(
        lambda v: _is_int(v) and 1 <= v <= MAX_QUADRATURE_NODES, f"an integer in [1, {MAX_QUADRATURE_NODES}]"
    ),
    "optimized_metric": Rule(lambda v: v in OPTIMIZED_METRICS, "one of " + ", ".join(OPTIMIZED_METRICS)),
    "nonfinite_value": Rule(_finite_float, "a finite number"),
}

GROUPS = ("objective", "optimizer", "target")
"""The groups whose node the trainer reads: each option names a builder of a :mod:`vi_sweep.core` registry."""
REGISTRIES = {"objective": ("objectives", OBJECTIVES), "optimizer": ("optimizers", OPTIMIZERS), "target": ("targets", TARGETS)}


def group_options(group: str) -> list[str]:
    """The options vi_sweep ships for a config group: the yaml files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def group_fields(group: str, option: str) -> list[str]:
    """The keys of ``group=option`` (its schema's dataclass fields), e.g. ``optimizer=sgd`` -> name, grad_clip."""
    return [f.name for f in fields(SCHEMAS[group][option])]


def run_keys() -> list[str]:
    """The top-level keys of a run's config that are not groups (lr, num_mc, ...)."""
    return [f.name for f in fields(RunConf) if f.name not in SCHEMAS]


def cannot_run(group: str, name: Any) -> ConfigError:
    """The error for a ``group`` option whose ``name`` has no builder in the trainer's registry
    (a user's ``optimizer/lion.yaml``: Hydra composes it, the trainer cannot run it)."""
    module, names = REGISTRIES[group]
    return ConfigError(
        f"{group}={name}: the trainer cannot run {group} {name}; it runs {', '.join(names)} (vi_sweep/core/{module}.py)"
    )


def unknown_key(key: str) -> ConfigError:
    """The error for a top-level key vi_sweep does not have (``+foo=1``, a typo, a node of a foreign config)."""
    return ConfigError(
        f"{key} is not a vi_sweep key; keys are {', '.join(run_keys())}, "
        f"groups {', '.join(GROUPS)} and their fields (e.g. optimizer.b1)"
    )


def unknown_group_field(group: str, option: Any, field: str, known: Sequence[str]) -> ConfigError:
    """The error for a key the chosen option of ``group`` does not have (``optimizer=sgd optimizer.b1=0.5``)."""
    return ConfigError(f"{group}.{field} is not a key of {group}={option}; its keys are {', '.join(known)}")


def check_value(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` if ``key=value`` breaks its rule (keys without a rule pass)."""
    rule = RULES.get(key)
    if rule is not None and not rule.check(value):
        raise ConfigError(f"{key}={value!r} is invalid: must be {rule.allowed}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a composed run config (a plain dict or DictConfig, without ``hydra``): can the trainer run it?

    Whatever composed it -- vi_sweep's ``conf/``, a ``--config-dir``, ``hydra.searchpath``, an
    ``+experiment=...`` file, a user's own option of a group -- the config must have every key
    of :class:`RunConf` and no other, each group's ``name`` must name a builder of the core's
    registries (:func:`cannot_run`), the group's keys must be that builder's, and every value
    must keep its rule (:data:`RULES`). Raises :class:`ConfigError` (one line) on the first problem.
    """
    plain = _to_plain(cfg)
    for key in [f.name for f in fields(RunConf)]:
        if key not in plain:
            raise ConfigError(f"{key} is required and cannot be deleted")
    for key in plain:
        if key not in SCHEMAS and key not in run_keys():
            raise unknown_key(key)
    for group in GROUPS:
        node = plain[group] if isinstance(plain[group], Mapping) else {}
        name = node.get("name")
        if name not in SCHEMAS[group]:
            raise cannot_run(group, name)
        known = group_fields(group, name)
        for field_name in node:
            if field_name not in known:
                raise unknown_group_field(group, name, field_name, known)
    for key, value in _flatten(plain).items():
        check_value(key, value)
    check_dataset(plain)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def check_dataset(plain: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` if a regression target's dataset does not fit it: a real
    dataset's response must be the model's (labels for logistic, counts for Poisson) and it fixes
    ``d`` (its features and an intercept)."""
    target = plain.get("target", {})
    name, dataset = target.get("name"), target.get("dataset")
    if name not in regression.POSTERIORS or dataset not in datasets.REAL_DATASETS:
        return
    info = datasets.REAL_DATASETS[dataset]
    response = regression.POSTERIORS[name].response
    if info.response != response:
        raise ConfigError(
            f"target.dataset={dataset} has a {info.response} response; target={name} needs one of {', '.join(datasets.datasets_for(response))}"
        )
    width = datasets.dataset_width(dataset, plain.get("d"))
    if plain.get("d") != width:
        raise ConfigError(f"d={plain.get('d')!r} is invalid with target.dataset={dataset}: its {info.features} features and an intercept make d={width}")


def _to_plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    plain = to_plain(cfg)
    return plain if isinstance(plain, dict) else dict(plain)


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

