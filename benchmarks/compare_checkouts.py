"""Two checkouts side by side: the reference grid's warm end-to-end multirun and its training calls, alternating.

A change that should not cost speed is measured against the commit before it on the same
shared machine, in one run, alternating A B A B ... so that load drifts hit both alike::

    git worktree add /tmp/old <commit>             # the old checkout, with its own venv or PYTHONPATH
    python benchmarks/compare_checkouts.py --old /tmp/old --old-python /tmp/old-venv/bin/python \\
        --new . --new-python python --rounds 4

Each round runs, per checkout: ``python -m vi_sweep multirun <reference grid>`` with a warm
compilation cache (its own, filled by one untimed run first), report included, and
``benchmarks/bench_grid.py --part compute`` (the batched training calls and the floor, compiled).
Prints the mean and the best of each measurement per checkout, and new / old.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_grid import grid_overrides  # noqa: E402  (the same grid as the benchmark)

sys.path.insert(0, str(HERE.parent))
from vi_sweep.host import available_cores  # noqa: E402


def timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"compare_checkouts: {' '.join(argv[:4])} in {cwd} failed:\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the old checkout's directory")
    parser.add_argument("--old-python", default=sys.executable, help="a python that imports the old checkout's vi_sweep")
    parser.add_argument("--new", type=Path, default=HERE.parent)
    parser.add_argument("--new-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)

    sides = {"old": (args.old.resolve(), args.old_python), "new": (args.new.resolve(), args.new_python)}
    results: dict[str, dict[str, list[float]]] = {side: {"end_to_end_s": [], "training_calls_s": [], "floor_s": []} for side in sides}
    with tempfile.TemporaryDirectory(prefix="compare_checkouts_") as tmp:
        tmp_path = Path(tmp)

        def multirun(side: str, name: str) -> float:
            repo, python = sides[side]
            cache = f"hydra.launcher.compilation_cache_dir={tmp_path / side / 'jax_cache'}"
            wall, _ = timed([python, "-m", "vi_sweep", "multirun", *grid_overrides(args.steps, args.seeds), cache, f"hydra.sweep.dir={tmp_path / side / name}"], repo)
            return wall

        for side in sides:
            multirun(side, "warm-up")  # fills this checkout's compilation cache
        for round_ in range(args.rounds):
            for side in (("old", "new") if round_ % 2 == 0 else ("new", "old")):
                repo, python = sides[side]
                results[side]["end_to_end_s"].append(multirun(side, f"round{round_}"))
                _, out = timed([python, str(repo / "benchmarks" / "bench_grid.py"), "--part", "compute", "--steps", str(args.steps), "--seeds", str(args.seeds), "--devices", str(available_cores())], repo)
                compute = json.loads(out.strip().splitlines()[-1])
                results[side]["training_calls_s"].append(sum(part["run_s"] for part in compute["compute"].values()))
                results[side]["floor_s"].append(sum(part["run_s"] for part in compute["floor"].values()))
                print(f"round {round_} {side}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results[side].items()), flush=True)

    print("\n| measurement | old mean (best) s | new mean (best) s | new / old (means) |\n|---|---:|---:|---:|")
    for key in results["old"]:
        old, new = results["old"][key], results["new"][key]
        print(f"| {key} | {statistics.mean(old):.2f} ({min(old):.2f}) | {statistics.mean(new):.2f} ({min(new):.2f}) | {statistics.mean(new) / statistics.mean(old):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
