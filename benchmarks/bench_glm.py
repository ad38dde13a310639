"""Memory and time per step on the real regression posteriors, with the batched launcher's machinery.

Each measurement runs in its own process (peak RSS from ``wait4`` is that process's own):

1. **compute** -- one batched training call as the launcher makes it
   (:func:`vi_sweep.launch.devices.start_batch`: ``jit(vmap(train))``, the runs sharded over the
   CPU devices, 512-bit vectors): ``--runs`` runs (lr x seed) of ``--steps`` steps on

   - ``breast_cancer`` (logistic regression, n = 569, d = 31): the exact objective (per step and
     run: the n x d predictor moments and n x K = 569 x 64 quadrature terms, forward and
     backward) and the MC objective at num_mc = 1, 8, 32 (num_mc x n x d multiply-adds for the
     predictors ``z X^T``, num_mc x n likelihood terms);
   - ``randhie`` (Poisson regression, n = 20190, d = 10), exact and num_mc = 8;
   - the standard normal at d = 31, num_mc = 8, for scale.

   Reported: compile time, the best of two further calls, microseconds per step per run
   (call time / steps / runs), and the process's peak RSS.
2. **multirun** -- ``python -m vi_sweep multirun scenario=breast_cancer`` end to end (the default
   grid: 6 lr x 2 num_mc x 3 seeds = 36 runs, 2000 steps, plus its 6 exact baselines and the
   report), cold compilation cache: wall time, peak RSS and the launcher's summary line.

Usage (from the repo root)::

    python benchmarks/bench_glm.py                    # ~2 min on 2 cores
    python benchmarks/bench_glm.py --steps 500 --skip-multirun
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grid import measure  # noqa: E402  (one child-process timer for every benchmark)

REPO = Path(__file__).resolve().parent.parent
LRS = (1e-3, 1e-2, 5e-2, 2e-1)

CASES = {  # name -> (overrides of the composed config, what one step computes per run)
    "breast_cancer exact": (("scenario=breast_cancer", "objective=exact"), "n x d = 569 x 31 moments, n x K = 569 x 64 quadrature"),
    "breast_cancer mc M=1": (("scenario=breast_cancer", "num_mc=1"), "M x n x d = 1 x 569 x 31"),
    "breast_cancer mc M=8": (("scenario=breast_cancer", "num_mc=8"), "M x n x d = 8 x 569 x 31"),
    "breast_cancer mc M=32": (("scenario=breast_cancer", "num_mc=32"), "M x n x d = 32 x 569 x 31"),
    "randhie exact": (("scenario=randhie", "objective=exact"), "n x d = 20190 x 10, closed form"),
    "randhie mc M=8": (("scenario=randhie", "num_mc=8"), "M x n x d = 8 x 20190 x 10"),
    "standard_normal d=31 mc M=8": (("d=31", "num_mc=8"), "M x d = 8 x 31"),
}


def part_compute(case: str, steps: int, runs: int) -> dict:
    """One case: compile and time ``runs`` runs as one sharded batched call."""
    sys.path.insert(0, str(REPO))
    from tests.sweeps import composed_fields
    from vi_sweep.launch.devices import init_jax, start_batch, to_numpy
    from vi_sweep.launch.options import BatchedLauncherConf

    devices = init_jax(cpu_vector_width=BatchedLauncherConf.cpu_vector_width, cwd=REPO)
    from vi_sweep.core.trainer import split_fields

    overrides, _ = CASES[case]
    base = composed_fields(*overrides, f"steps={steps}", "log_every=100")
    fields = [dict(base, lr=LRS[i % len(LRS)], seed=i // len(LRS)) for i in range(runs)]
    split = [split_fields(f) for f in fields]
    spec = split[0][0]
    traced = [t for _, t in split]
    traced += traced[-1:] * (-len(traced) % len(devices))
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        diverged_at, columns = to_numpy(start_batch(spec, traced, devices))
        timings.append(time.perf_counter() - started)
    run_s = min(timings[1:])
    return {
        "devices": len(devices),
        "compile_s": timings[0] - run_s,
        "run_s": run_s,
        "us_per_step_per_run": 1e6 * run_s / steps / len(traced),
        "final_kl_excess_median": float(sorted(columns["kl_excess"][:, -1])[len(fields) // 2]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=12, help="runs per batched call (lr x seed)")
    parser.add_argument("--skip-multirun", action="store_true")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        print(json.dumps(part_compute(args.part, args.steps, args.runs)))
        return 0

    print(f"load average before: {os.getloadavg()[0]:.1f}; {args.runs} runs x {args.steps} steps per call", flush=True)
    print("\n| case | one step, per run | devices | compile s | call s | us/step/run | peak RSS MiB | median final kl_excess |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for case, (_, work) in CASES.items():
        result = measure([sys.executable, str(Path(__file__).resolve()), "--part", case, "--steps", str(args.steps), "--runs", str(args.runs)])
        result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
        print(
            f"| {case} | {work} | {result['devices']} | {result['compile_s']:.1f} | {result['run_s']:.2f} | "
            f"{result['us_per_step_per_run']:.1f} | {result['peak_rss_mib']:.0f} | {result['final_kl_excess_median']:.3g} |",
            flush=True,
        )
    if not args.skip_multirun:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(
                [sys.executable, "-m", "vi_sweep", "multirun", "scenario=breast_cancer", f"hydra.sweep.dir={tmp}/sweep",
                 f"hydra.launcher.compilation_cache_dir={tmp}/cache"]
            )
        summary = next((line for line in result["stdout"].splitlines() if line.startswith("vi_sweep:") and " jobs " in line), "")
        print(f"\nmultirun scenario=breast_cancer (36 runs + report, cold cache): {result['wall_s']:.1f} s, "
              f"peak RSS {result['peak_rss_mib']:.0f} MiB\n  {summary}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
