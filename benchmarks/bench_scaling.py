"""How cost grows: the same 1.8 M run-steps cut into more, shorter runs, and 2x steps, num_mc or d.

Every row is measured in this one run, each measurement in its own process, side by side with
two floors for the same grid, both compiled and timed in one child process:

- the **per-run floor**: split the keys and draw the normals, one stream per run;
- the **shared-stream floor**: the same, one stream per seed (what runs that share a seed need);
- the per-run floor with the draw **written out** as the trainer draws it (``vi_sweep.core.noise``:
  the same bits, the hash and ``erf_inv`` fused into one loop).

Rows (Adam, d = 100, lr in 6 values, num_mc in {1, 4, 16}, init_log_sigma = -3, unless noted):

====================  =======  ======  =========  ================================
row                   runs     steps   log_every  what it shows
====================  =======  ======  =========  ================================
reference             180      10000   100        the issue's reference grid
1,800 x 1,000         1800     1000    100        the same run-steps, 10x the jobs
18,000 x 100          18000    100     10         the same run-steps, 100x the jobs
2x steps              180      20000   100        cost linear in steps
2x num_mc             180      10000   100        num_mc in {2, 8, 32}
2x d                  180      10000   100        d = 200
====================  =======  ======  =========  ================================

Each grid runs as ``python -m vi_sweep multirun`` (warm compilation cache: an untimed run of the
same grid first fills it; no report), in the default job-directory layout and with
``hydra.launcher.layout=compact``. Per row: seconds, run-steps per second, peak RSS of the
sweep's process, the training calls alone (compiled, the launcher's layout), and the per-job
overhead ``(end to end - training calls - start-up) / jobs``, start-up measured as a one-job
sweep. Not a timed test: run it by hand on a quiet machine::

    python benchmarks/bench_scaling.py            # all rows, ~10 minutes here
    python benchmarks/bench_scaling.py --rows reference,1800x1000 --layouts compact
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_grid import measure, part_compute  # noqa: E402  (the same process, RSS and floor measurements)

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
ROWS = {
    "reference": dict(seeds=10, steps=10000, log_every=100, num_mcs=(1, 4, 16), d=100),
    "1800x1000": dict(seeds=100, steps=1000, log_every=100, num_mcs=(1, 4, 16), d=100),
    "18000x100": dict(seeds=1000, steps=100, log_every=10, num_mcs=(1, 4, 16), d=100),
    "2x steps": dict(seeds=10, steps=20000, log_every=100, num_mcs=(1, 4, 16), d=100),
    "2x num_mc": dict(seeds=10, steps=10000, log_every=100, num_mcs=(2, 8, 32), d=100),
    "2x d": dict(seeds=10, steps=10000, log_every=100, num_mcs=(1, 4, 16), d=200),
}


def overrides(row: dict) -> list[str]:
    return [
        "lr=" + ",".join(map(str, LRS)),
        "num_mc=" + ",".join(map(str, row["num_mcs"])),
        f"seed=range(0,{row['seeds']})",
        f"d={row['d']}",
        f"steps={row['steps']}",
        f"log_every={row['log_every']}",
        "init_log_sigma=-3.0",
        "optimizer=adam",
        "grid=none",
        "hydra.callbacks.sweep_summary.report=false",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--layouts", default="jobs,compact")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from vi_sweep.host import available_cores

    cores = available_cores()
    table = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        tmp_path = Path(tmp)
        cache = f"hydra.launcher.compilation_cache_dir={tmp_path / 'jax_cache'}"
        one_job = [sys.executable, "-m", "vi_sweep", "multirun", "lr=0.1", "d=2", "steps=2", "log_every=1", "grid=none",
                   "hydra.callbacks.sweep_summary.report=false", "hydra.launcher.exact_baselines=false", cache]
        measure([*one_job, f"hydra.sweep.dir={tmp_path / 'startup-warm-up'}"])  # its program in the cache
        startup = measure([*one_job, f"hydra.sweep.dir={tmp_path / 'startup'}"])["wall_s"]
        for name in args.rows.split(","):
            row = ROWS[name]
            runs = len(LRS) * len(row["num_mcs"]) * row["seeds"]
            floors = json.loads(measure([sys.executable, __file__, "--part", json.dumps(row), str(cores)])["stdout"].strip().splitlines()[-1])
            for layout in args.layouts.split(","):
                argv = [sys.executable, "-m", "vi_sweep", "multirun", *overrides(row), cache, f"hydra.launcher.layout={layout}"]
                measure([*argv, f"hydra.sweep.dir={tmp_path / name / layout / 'warm-up'}"])
                result = measure([*argv, f"hydra.sweep.dir={tmp_path / name / layout / 'timed'}"])
                overhead = (result["wall_s"] - floors["training_s"] - startup) / runs
                table.append((name, layout, runs, row["steps"], result["wall_s"], runs * row["steps"] / result["wall_s"],
                              result["peak_rss_mib"], floors["training_s"], floors["floor_s"], floors["floor_shared_s"],
                              floors["floor_written_out_s"], overhead * 1e3))
                print(f"{name} {layout}: {result['wall_s']:.1f} s", file=sys.stderr, flush=True)
    print(f"{cores} CPU cores; load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}; one-job sweep (start-up): {startup:.1f} s\n")
    print("| row | layout | runs x steps | end to end s | run-steps/s | peak RSS MiB | training calls s | per-run floor s "
          "| shared-stream floor s | written-out floor s | per-job overhead ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, layout, runs, steps, wall, rate, rss, train, floor, shared, written_out, overhead in table:
        print(f"| {name} | {layout} | {runs} x {steps} | {wall:.1f} | {rate:,.0f} | {rss:.0f} | {train:.1f} | {floor:.1f} "
              f"| {shared:.1f} | {written_out:.1f} | {overhead:.1f} |")
    return 0


def part_floors(row: dict, devices: int) -> dict:
    """Compiled floors and training calls for one row's grid, summed over num_mc (run inside a child process)."""
    out = part_compute(row["steps"], row["seeds"], devices, lrs=LRS, num_mcs=row["num_mcs"], d=row["d"], log_every=row["log_every"])
    total = lambda key: sum(part["run_s"] for part in out[key].values())  # noqa: E731
    return {"training_s": total("compute"), "floor_s": total("floor"), "floor_shared_s": total("floor_shared"),
            "floor_written_out_s": total("floor_written_out")}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--part":
        print(json.dumps(part_floors(json.loads(sys.argv[2]), int(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit(main())
