"""What every run is compared to: its exact-KL twin and its target's constants (the JAX side).

The **exact baseline** of a run is the ``objective=exact`` run with the same optimizer (and
optimizer hyperparameters), lr, init_log_sigma, d, steps, log_every and target (and target
hyperparameters). The exact objective ignores ``estimator``, ``num_mc`` and the seed, so one
baseline serves every estimator, sample size and seed of a cell (:data:`BASELINE_IGNORES`).

Where a baseline comes from, in order:

1. the sweep itself, if it contains an exact run with that key (``source = "sweep"``);
2. the cache ``<sweep_dir>/baselines/<hash>/metrics.parquet`` (:mod:`vi_sweep.store.baselines`), if its
   recorded fields match: the batched launcher trains the twins a sweep lacks along with its
   jobs and writes them there, and so does this module for whatever it had to train;
3. otherwise it is trained with the same trainer (``vi_sweep.core.trainer.jitted_batch_train``: all
   missing baselines with one compiled shape run as one vmapped program; deterministic, since
   the exact objective draws no random numbers) and written to the cache atomically
   (:func:`vi_sweep.store.baselines.write_baseline`). Cases 2 and 3 have ``source = "computed"``: the
   report does not depend on whether the cache was warm, so a rerun writes identical files.

The per-target constants used by the classifier are the KL excess at initialisation (``mu = 0``,
``log_sigma = init_log_sigma``), the mean-field floor ``kl_floor`` (0 for diagonal targets) and
the smallest standard deviation of the mean-field optimum q* (the scale of "variance
collapse"). For a :class:`vi_sweep.core.targets.GaussianTarget` they are closed forms, evaluated
by float64 numpy twins of the targets' methods (:func:`target_structure`,
:func:`closed_form_constants`); for a regression posterior (:mod:`vi_sweep.core.glm`) they come
from its float64 NumPy twin :mod:`vi_sweep.core.regression` and q*, cached in
``<sweep_dir>/baselines/optima/`` (:func:`regression_constants`). So a report whose baselines
are all found or cached never imports JAX.

JAX is imported inside the functions that need it, so ``import vi_sweep.analysis`` stays light.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from vi_sweep.analysis.read import RunRecord, Sweep, read_run, trajectories_frame
from vi_sweep.core.regression import POSTERIORS as REGRESSION_TARGETS  # NumPy only: no JAX
from vi_sweep.core.regression import neg_elbo, posterior_config, regression_optimum, regression_problem, split_params
from vi_sweep.store.baselines import (  # noqa: F401 - BASELINE_DIR, BASELINE_IGNORES: part of this module's API
    BASELINE_DIR,
    BASELINE_IGNORES,
    BASELINE_SCENARIO,
    baseline_fields,
    baseline_key,
    baseline_table,
    cache_file,
    write_baseline,
)
from vi_sweep.store.metrics import METRIC_COLUMNS, UnreadableRun, status_of
from vi_sweep.store.optima import posterior_params, prepare_optima

BATCH = 512  # baselines per vmapped call: bounds memory on very large sweeps


class BaselineCacheWarning(UserWarning):
    """Computed baselines could not be cached (e.g. a read-only sweep directory); results are unaffected."""


class References(NamedTuple):
    """Per-run references and the baseline trajectories.

    ``per_run`` is indexed by run id with ``baseline`` (id into ``baselines``) and the
    :data:`TARGET_CONSTANTS` (``init_kl_excess``, ``kl_floor``, ``sigma_star_min``). ``baselines`` has one row per distinct baseline
    (``baseline``, ``source``, ``status``, ``diverged_at``, ``n_logged``, its config columns);
    ``trajectories`` is their long table keyed by ``run`` = baseline id.
    """

    per_run: pd.DataFrame
    baselines: pd.DataFrame
    trajectories: pd.DataFrame


def _train(fields_list: list[dict[str, Any]]) -> list[RunRecord]:
    """Train exact runs with the sweep's trainer, one vmapped call per compiled shape."""
    from vi_sweep.core.trainer import as_hyper, jitted_batch_train, split_fields

    jobs: list[RunRecord | None] = [None] * len(fields_list)
    groups: dict[Any, list[int]] = defaultdict(list)
    split = [split_fields(fields) for fields in fields_list]
    for i, (spec, _) in enumerate(split):
        groups[spec].append(i)
    for spec, members in groups.items():
        for start in range(0, len(members), BATCH):
            chunk = members[start : start + BATCH]
            state, rows = jitted_batch_train(spec)(as_hyper([split[i][1] for i in chunk]))
            columns = {name: np.asarray(value) for name, value in rows._asdict().items()}
            diverged_at = np.asarray(state.diverged_at)
            for j, i in enumerate(chunk):
                one = {name: value[j] for name, value in columns.items()}
                table = baseline_table(one, fields_list[i], int(diverged_at[j]))
                jobs[i] = RunRecord(fields_list[i], BASELINE_SCENARIO, status_of(int(diverged_at[j])), int(diverged_at[j]), table)
    return jobs  # type: ignore[return-value]


def _read_cache(path: Path, fields: Mapping[str, Any]) -> RunRecord | None:
    if not path.exists():
        return None
    try:
        job = read_run(path)
    except UnreadableRun:
        return None  # a damaged cache entry is recomputed and overwritten
    if json.dumps(job.fields, sort_keys=True) != json.dumps(dict(fields), sort_keys=True):
        return None
    return job


def _metrics_only(job: RunRecord) -> RunRecord:
    return job._replace(metrics=job.metrics.select(list(METRIC_COLUMNS)))


def exact_baselines(sweep: Sweep, *, cache: bool = True) -> References:
    """Find, load or compute the exact baseline of every run of ``sweep``; add target constants."""
    fields_list = list(sweep.fields)
    keys = [baseline_key(fields) for fields in fields_list]
    distinct = sorted(set(keys))
    index = {key: i for i, key in enumerate(distinct)}

    in_sweep: dict[str, int] = {}
    for run, (fields, key) in enumerate(zip(fields_list, keys)):
        if fields.get("objective") == "exact" and key not in in_sweep:
            in_sweep[key] = run

    jobs: dict[str, RunRecord] = {}
    sources: dict[str, str] = {}
    rows_of_run = sweep.trajectories.groupby("run").indices if in_sweep else {}
    for key, run in in_sweep.items():
        rows = sweep.trajectories.iloc[rows_of_run[run]]
        jobs[key] = _job_from_frame(baseline_fields(fields_list[run]), sweep.runs.iloc[run], rows)
        sources[key] = "sweep"

    to_train: list[str] = []
    prepare_optima(sweep.path if cache else None, fields_list)  # regression targets' q*: cached, or solved once
    for key in distinct:
        if key in jobs:
            continue
        sources[key] = "computed"
        cached = _read_cache(cache_file(sweep.path, key), json.loads(key)) if cache else None
        if cached is not None:
            jobs[key] = _metrics_only(cached)
        else:
            to_train.append(key)
    if to_train:
        trained = _train([json.loads(key) for key in to_train])
        for key, job in zip(to_train, trained):
            if cache:
                _try_cache(cache_file(sweep.path, key), job)
            jobs[key] = _metrics_only(job)

    ordered = [jobs[key] for key in distinct]
    baselines = pd.DataFrame(
        {
            "baseline": np.arange(len(distinct)),
            "source": [sources[key] for key in distinct],
            "status": [job.status for job in ordered],
            "diverged_at": [job.diverged_at for job in ordered],
            "n_logged": [job.metrics.num_rows for job in ordered],
            "key": distinct,
        }
    )
    per_run = target_constants(fields_list, sweep_dir=sweep.path if cache else None)
    per_run.insert(0, "baseline", [index[key] for key in keys])
    per_run.index = pd.Index(sweep.runs["run"].to_numpy(), name="run")
    return References(per_run, baselines, trajectories_frame(ordered))


def _job_from_frame(fields: dict[str, Any], run_row: pd.Series, rows: pd.DataFrame) -> RunRecord:
    table = pa.Table.from_pandas(rows[list(METRIC_COLUMNS)], preserve_index=False)
    return RunRecord(fields, str(run_row["scenario"]), str(run_row["status"]), int(run_row["diverged_at"]), table)


def _try_cache(path: Path, job: RunRecord) -> None:
    try:
        write_baseline(path, job.metrics, job.fields)
    except OSError as err:
        warnings.warn(f"could not cache an exact baseline in {path.parent}: {err}", BaselineCacheWarning, stacklevel=3)


def target_constants(fields_list: Iterable[Mapping[str, Any]], *, sweep_dir: Path | None = None) -> pd.DataFrame:
    r"""``init_kl_excess``, ``kl_floor`` and ``sigma_star_min`` for each run's fields.

    ``init_kl_excess`` is the KL excess over the mean-field optimum of :math:`q_0` at
    :math:`\mu = 0`, :math:`\log\sigma =` ``init_log_sigma`` -- *before* the first step (the
    first logged row is after it, and at a large lr one step can already move :math:`\log\sigma`
    by lr). ``kl_floor`` is the KL of the mean-field optimum :math:`q^*` (0 for diagonal targets),
    ``sigma_star_min`` the smallest standard deviation of :math:`q^*` (the scale of "variance
    collapse"). Computed once per distinct (target, d, target hyperparameters, init_log_sigma),
    in float64 numpy (:func:`closed_form_constants`): they equal ``vi_sweep.core.targets``'
    float32 methods to float32 round-off, and no XLA program is compiled for three numbers.

    A regression target (:mod:`vi_sweep.core.glm`) has no closed form: its q* is solved once per
    posterior in float64 (:func:`vi_sweep.store.optima.prepare_optima`: read from
    ``<sweep_dir>/baselines/optima/`` when ``sweep_dir`` is given, else solved in memory), and
    :func:`regression_constants` evaluates the float64 objective there. Its ``kl_floor`` is NaN:
    the KL of q* needs the unknown log evidence (nothing in the classification uses it; the
    excess is what is compared).
    """
    fields_list = list(fields_list)
    if any(fields.get("target") in REGRESSION_TARGETS for fields in fields_list):
        prepare_optima(sweep_dir, fields_list)
    cache: dict[str, tuple[float, float, float]] = {}
    rows = []
    for fields in fields_list:
        name = fields["target"]
        params = {k[len("target_") :]: v for k, v in fields.items() if k.startswith("target_")}
        key = json.dumps([name, fields["d"], params, fields["init_log_sigma"]], sort_keys=True)
        if key not in cache:
            if name in REGRESSION_TARGETS:
                cache[key] = regression_constants(name, int(fields["d"]), posterior_params(fields), float(fields["init_log_sigma"]))
            else:
                floats = {k: float(v) for k, v in params.items()}
                mean, diag, shared = target_structure(name, int(fields["d"]), floats)
                cache[key] = closed_form_constants(mean, diag, shared, float(fields["init_log_sigma"]))
        rows.append(cache[key])
    return pd.DataFrame(rows, columns=list(TARGET_CONSTANTS), dtype=float)


def regression_constants(name: str, d: int, params: Mapping[str, Any], init_log_sigma: float) -> tuple[float, float, float]:
    r"""``(init_kl_excess, nan, sigma_star_min)`` of a regression target, float64 (:mod:`vi_sweep.core.regression`):
    :math:`F(0, s_0) - F(q^*)` with :math:`F` the exact negative ELBO and :math:`s_0` =
    ``init_log_sigma`` rounded to float32, and :math:`\min_j \sigma_j^*`."""
    static, traced = split_params(name, params)
    problem = regression_problem(posterior_config(name, d, {**static, **traced}))
    optimum = regression_optimum(name, d, **static, **traced)
    start = np.full(d, float(np.float32(init_log_sigma)))
    init_excess = neg_elbo(problem, np.zeros(d), start) - neg_elbo(problem, optimum.mu, optimum.log_sigma)
    return float(max(init_excess, 0.0)), float("nan"), float(np.exp(np.min(optimum.log_sigma)))


TARGET_CONSTANTS = ("init_kl_excess", "kl_floor", "sigma_star_min")
"""The per-run constants of :func:`target_constants` (columns of ``References.per_run``)."""


def target_structure(name: str, d: int, params: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, float]:
    r"""``(mean, diag, shared)`` of ``vi_sweep.core.targets.make_target(name, d, **params)`` in float64 numpy.

    :math:`p = \mathcal N(m, \operatorname{diag}(a) + b\,\mathbf 1\mathbf 1^\top)` for each builder of
    :data:`vi_sweep.core.targets.TARGETS` (a test checks this mirror against every one of them).
    Hyperparameters are rounded to float32 first, as the trainer's targets hold them (rho = 0.9
    is 0.89999998); a missing one takes its builder's default.
    """
    if name == "standard_normal":
        return np.zeros(d), np.ones(d), 0.0
    if name == "ill_conditioned":
        exponents = np.linspace(-1.0, 0.0, d) if d > 1 else np.zeros(1)
        return np.zeros(d), _target_param(name, params, "condition") ** exponents, 0.0
    if name == "correlated":
        rho = _target_param(name, params, "rho")
        return np.zeros(d), np.full(d, 1.0 - rho), rho
    if name == "shifted":
        return np.full(d, _target_param(name, params, "offset")), np.ones(d), 0.0
    raise ValueError(f"unknown target {name!r}; choose one of standard_normal, ill_conditioned, correlated, shifted")


def _target_param(name: str, params: Mapping[str, float], key: str) -> float:
    if key in params:
        return float(np.float32(params[key]))
    import inspect

    from vi_sweep.core.targets import TARGETS  # only for hand-written fields without the hyperparameter

    return float(np.float32(inspect.signature(TARGETS[name]).parameters[key].default))


def closed_form_constants(mean: np.ndarray, diag: np.ndarray, shared: float, init_log_sigma: float) -> tuple[float, float, float]:
    r"""``(init_kl_excess, kl_floor, sigma_star_min)`` of :math:`\mathcal N(m, \operatorname{diag}(a) + b\mathbf 1\mathbf 1^\top)`.

    The float64 twins of ``GaussianTarget.kl_excess`` at :math:`\mu = 0`, :math:`\log\sigma_i = s`,
    ``kl_floor`` and the mean-field optimum's :math:`\sigma^*_i = P_{ii}^{-1/2}` (the same formulas;
    see :mod:`vi_sweep.core.targets`). With :math:`c = b / (1 + b\sum_i 1/a_i)` (Sherman-Morrison)
    and :math:`\log P_{ii} = -\log a_i + \operatorname{log1p}(-c/a_i)`:

    .. math::
        \mathrm{KL}_{\text{floor}} = \tfrac12\Big[\sum_i \operatorname{log1p}(-c/a_i)
            + \operatorname{log1p}\big(b\textstyle\sum_i 1/a_i\big)\Big],\qquad
        \text{excess}_0 = \tfrac12 \sum_i f(2s + \log P_{ii}) + \tfrac12\, m^\top P m,

    :math:`f(x) = e^x - 1 - x \ge 0`. Every term is clamped at 0, so round-off can never make a KL negative.
    """
    inv_diag = 1.0 / diag
    c = shared / (1.0 + shared * np.sum(inv_diag))
    log_precision_diag = -np.log(diag) + np.log1p(-c * inv_diag)
    floor = max(0.5 * (np.sum(np.log1p(-c * inv_diag)) + np.log1p(shared * np.sum(inv_diag))), 0.0)
    # In float64 expm1(x) - x loses ~1e-16/|x| relative, far below float32's round-off: no Taylor branch needed.
    x = 2.0 * float(np.float32(init_log_sigma)) + log_precision_diag
    spread = 0.5 * np.sum(np.maximum(np.expm1(x) - x, 0.0))
    s = np.sum(mean * inv_diag)
    location = 0.5 * max(np.sum(mean * mean * inv_diag) - c * s * s, 0.0)
    return float(spread + location), float(floor), float(np.exp(-0.5 * np.max(log_precision_diag)))
