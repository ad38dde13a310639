"""Test sweeps written the way a launcher writes them, without starting Hydra jobs.

Fields come from composing the real ``conf/`` (so they are exactly what ``python -m vi_sweep``
records), runs are trained with ``vi_sweep.core.trainer`` (one vmapped call per compiled shape) and
written with ``vi_sweep.store.metrics``: ``<sweep_dir>/<job>/metrics.parquet``, jobs numbered in order.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from vi_sweep.launch.config import CONF_DIR, run_fields
from vi_sweep.store.metrics import metrics_table, write_metrics
from vi_sweep.store.params import write_params
from vi_sweep.core.trainer import as_hyper, final_params, jitted_batch_train, split_fields

# The default grid of conf/grid/default.yaml, reduced to the cells of the notebook's story plus a
# collapse: too-small lr, the good cell (0.05, 32), the stress cell (0.2, 1), lr = 1, lr = 10.
STORY_GRID = {"lr": (1e-4, 5e-2, 2e-1, 1.0, 10.0), "num_mc": (1, 32), "seed": (0, 1)}


def composed_fields(*overrides: str) -> dict[str, Any]:
    """The flat fields of ``python -m vi_sweep run OVERRIDES`` (composed from conf/, not hand-written)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="config", overrides=list(overrides))
    return run_fields(cfg)


def grid(base: Mapping[str, Any], axes: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``axes`` over ``base`` fields, in Hydra's order (last key fastest)."""
    names = list(axes)
    return [dict(base, **dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def write_sweep(sweep_dir: Path, runs: list[Mapping[str, Any]], *, scenario: str = "none", first_job: int = 0) -> list[Path]:
    """Train ``runs`` (flat fields) and write one ``metrics.parquet`` (and ``params.parquet``) per job; return the metrics files."""
    groups: dict[Any, list[int]] = defaultdict(list)
    split = [split_fields(fields) for fields in runs]
    for i, (spec, _) in enumerate(split):
        groups[spec].append(i)
    paths: list[Path | None] = [None] * len(runs)
    for spec, members in groups.items():
        state, rows = jitted_batch_train(spec)(as_hyper([split[i][1] for i in members]))
        columns = {name: np.asarray(value) for name, value in rows._asdict().items()}
        finals = final_params(state)
        for j, i in enumerate(members):
            one = {name: value[j] for name, value in columns.items()}
            diverged_at = int(np.asarray(state.diverged_at)[j])
            write_params(sweep_dir / str(first_job + i), finals["final_mu"][j], finals["final_log_sigma"][j], runs[i])
            table = metrics_table(one, runs[i], diverged_at, scenario)
            paths[i] = write_metrics(sweep_dir / str(first_job + i), table, resolved_config=dict(runs[i]), fields=runs[i])
    return paths  # type: ignore[return-value]


def flat_fields(**overrides: Any) -> dict[str, Any]:
    """Hand-written flat fields of a small Adam run (d=10, 60 steps), for unit tests of the trainer side."""
    base = dict(
        objective="mc", estimator="reparam", num_mc=4, optimizer="adam", target="standard_normal",
        d=10, steps=60, log_every=20, lr=1e-2, seed=0, init_log_sigma=-2.0,
        optimizer_b1=0.9, optimizer_b2=0.999, optimizer_eps=1e-8, optimizer_grad_clip=None,
    )
    base.update(overrides)
    return base
