"""Calibration of the outcome rules: how often a stationary run is called a trend, how often a falling run is caught.

Three families of runs on N(0, I), d = 100, each with ``--seeds`` seeds (48 by default) and each
trained at ``log_every`` 2, 20 and 200 (the trainer's rows differ, its stream does not: the same
seed gives the same run, so any change of label with ``log_every`` is the analysis's):

- **stationary**: started at the optimum (mu = 0, log sigma = 0), plain SGD with the reparam
  estimator, lr in {0.01, 0.05, 0.2}, num_mc in {1, 8}. The noise floor builds up within ~1/lr
  steps and the tail (the last 20% of 3000 steps) is stationary: every ``falling`` is a false
  ``slow``, every ``rising`` a false ``unstable``.
- **stationary, Adam**: the same with Adam after a longer burn-in (6000 steps; Adam's
  second-moment average needs ~1/(1 - b2) = 1000 steps to settle).
- **falling**: Adam from init_log_sigma = -2 at lr = 1e-3 with num_mc in {8, 32}, 2000 steps: log
  sigma moves by ~lr a step, so these runs are still falling at the end (the power).

Each run is written with vi_sweep's own writer and classified with ``load_sweep``, as a sweep
would be. Prints, per family and ``log_every``: the share of falling / rising / bursting tails,
the outcome shares and the median effective sample size of the tail; then how many runs change
outcome between ``log_every`` values. Not a timed test: run it by hand (about 2-4 minutes)::

    python benchmarks/calibrate_outcomes.py --seeds 48
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vi_sweep.analysis.load import load_sweep  # noqa: E402
from vi_sweep.core.trainer import as_hyper, jitted_batch_train, split_fields  # noqa: E402
from vi_sweep.store.metrics import metrics_table, write_metrics  # noqa: E402

LOG_EVERY = (2, 20, 200)
ADAM = dict(optimizer="adam", optimizer_b1=0.9, optimizer_b2=0.999, optimizer_eps=1e-8)


def fields(**overrides):
    base = dict(
        objective="mc", estimator="reparam", num_mc=1, optimizer="sgd", target="standard_normal", d=100,
        steps=3000, log_every=20, lr=0.01, seed=0, init_log_sigma=0.0, optimizer_grad_clip=None,
    )
    base.update(overrides)
    return base


def families(seeds: int) -> dict[str, list[dict]]:
    return {
        "stationary, SGD": [fields(lr=lr, num_mc=m, seed=s) for lr in (0.01, 0.05, 0.2) for m in (1, 8) for s in range(seeds)],
        "stationary, Adam": [fields(lr=lr, num_mc=m, seed=s, steps=6000, **ADAM) for lr in (0.003, 0.01, 0.03) for m in (1, 8) for s in range(seeds)],
        "falling, Adam": [fields(lr=1e-3, num_mc=m, seed=s, steps=2000, init_log_sigma=-2.0, **ADAM) for m in (8, 32) for s in range(seeds)],
    }


def write_runs(sweep_dir: Path, runs: list[dict]) -> None:
    """Train ``runs`` (one vmapped call per shape) and write one job directory each, as a launcher does."""
    groups: dict = defaultdict(list)
    split = [split_fields(f) for f in runs]
    for i, (spec, _) in enumerate(split):
        groups[spec].append(i)
    for spec, members in groups.items():
        state, rows = jitted_batch_train(spec)(as_hyper([split[i][1] for i in members]))
        columns = {name: np.asarray(value) for name, value in rows._asdict().items()}
        diverged_at = np.asarray(state.diverged_at)
        for j, i in enumerate(members):
            one = {name: value[j] for name, value in columns.items()}
            table = metrics_table(one, runs[i], int(diverged_at[j]), "calibration")
            write_metrics(sweep_dir / str(i), table, resolved_config=dict(runs[i]), fields=runs[i])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=48)
    args = parser.parse_args(argv)
    labels: dict[tuple[str, int], list[str]] = {}
    print("| runs | log_every | n | falling | rising | bursting | median n_eff | outcomes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="calibrate_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, runs in families(args.seeds).items():
            for log_every in LOG_EVERY:
                sweep_dir = Path(tmp) / f"{name.replace(', ', '_')}_{log_every}"
                write_runs(sweep_dir, [dict(run, log_every=log_every) for run in runs])
                classified = load_sweep(sweep_dir).sort_values(["lr", "num_mc", "seed"])
                labels[(name, log_every)] = classified["outcome"].astype(str).tolist()
                shares = classified["outcome"].astype(str).value_counts(normalize=True)
                outcomes = ", ".join(f"{o} {100 * v:.1f}%" for o, v in shares.items())
                print(
                    f"| {name} | {log_every} | {len(classified)} | {100 * classified['falling'].mean():.1f}% | "
                    f"{100 * classified['rising'].mean():.1f}% | {100 * classified['bursting'].mean():.1f}% | "
                    f"{classified['trend_n_eff'].median():.1f} | {outcomes} |",
                    flush=True,
                )
    print("\n| runs | outcome changes between log_every 2 / 20 / 200 |\n|---|---:|")
    for name in families(args.seeds):
        a, b, c = (labels[(name, k)] for k in LOG_EVERY)
        changed = sum(len({x, y, z}) > 1 for x, y, z in zip(a, b, c))
        print(f"| {name} | {changed} of {len(a)} runs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
