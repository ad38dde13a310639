"""The reference-grid benchmark: the notebook's loop vs Hydra's basic launcher vs the batched launcher vs the floor.

Reference grid (issue 3): d=100, steps=10000, log_every=100, init_log_sigma=-3, Adam,
lr in {1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1}, num_mc in {1, 4, 16}, seeds 0-9: 180 runs.

Measured side by side, each in its own process (so peak RSS is per measurement, from ``wait4``):

1. **notebook** -- the seed notebook's ``run()`` (``tests/seed_notebook.py``, verbatim: a Python
   loop of jitted steps, ``float()`` syncs at logged steps, printing to /dev/null). Each call
   builds a new ``optax.adam`` and so recompiles its step. For each num_mc one whole run of the
   grid's length is timed (best of 3), and the grid is ``sum over num_mc of 60 * time(10000)``;
   per-step and per-run costs (from runs of 100 steps) are printed alongside.
2. **basic** -- ``python -m vi_sweep multirun <grid> hydra/launcher=basic``, end to end.
3. **batched** -- ``python -m vi_sweep multirun <grid>`` (the default launcher), end to end:
   process start, composition, compile, training, 180 job dirs with parquet; ``cold`` with an
   empty compilation cache, ``warm`` with the cache the cold run left, and warm again on one
   CPU device (``hydra.launcher.cpu_devices=1``) to show what sharding over the cores buys.
   Each multirun ends with its report (``<sweep dir>/report/``, the ``SweepSummary`` callback);
   once more warm without it, and ``python -m vi_sweep report`` alone.
4. **floor** -- a ``jit(vmap(lax.scan))`` that only splits the keys and draws the same normals
   (``(num_mc, d)`` per step and run, drawn flat as the trainer does: the same bits, faster),
   sharded over the same devices and compiled with the same XLA flags as the launcher
   (``hydra.launcher.cpu_vector_width``); its compute time after compilation. The same process also times the trainer's batched
   calls alone (``compute``), which separates training cost from Hydra's per-job cost.

Usage (from the repo root)::

    python benchmarks/bench_grid.py                 # the reference grid, prints a markdown table
    python benchmarks/bench_grid.py --steps 1000 --skip-basic   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
NUM_MCS = (1, 4, 16)
D, LOG_EVERY, INIT_LOG_SIGMA = 100, 100, -3.0


def grid_overrides(steps: int, seeds: int) -> list[str]:
    return [
        "lr=" + ",".join(map(str, LRS)),
        "num_mc=" + ",".join(map(str, NUM_MCS)),
        f"seed=range(0,{seeds})",
        f"d={D}",
        f"steps={steps}",
        f"log_every={LOG_EVERY}",
        f"init_log_sigma={INIT_LOG_SIGMA}",
        "optimizer=adam",
        "grid=none",
    ]


# ---------------------------------------------------------------------------------------------
# Measurements that run inside a child process (python bench_grid.py --part ...)
# ---------------------------------------------------------------------------------------------


def part_notebook(steps: int, seeds: int) -> dict:
    """The notebook's loop timed on whole runs of the grid's length, per num_mc, times the grid's runs.

    Each num_mc: one warm-up run, then the best of 3 runs of ``steps`` steps and of ``LOG_EVERY``
    steps (a run's fixed cost: building ``optax.adam`` and recompiling its step). The grid is
    ``sum over num_mc of (runs per num_mc) * time(steps)``, measured, not fitted; the per-step
    time ``(time(steps) - time(LOG_EVERY)) / (steps - LOG_EVERY)`` is reported alongside.
    """
    import contextlib
    import io

    sys.path.insert(0, str(REPO))
    from tests.seed_notebook import run

    fits = {}
    for num_mc in NUM_MCS:
        def timed(n: int) -> float:
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                run(mode="mc", seed=0, d=D, steps=n, lr=1e-2, num_mc=num_mc, init_log_sigma=INIT_LOG_SIGMA, log_every=LOG_EVERY)
            return time.perf_counter() - started

        timed(LOG_EVERY)  # first call: JAX start-up and tracing caches
        # Best of 3: other processes on a shared machine only ever add time.
        short = min(timed(LOG_EVERY) for _ in range(3))
        full = min(timed(steps) for _ in range(3))
        per_step = max(full - short, 0.0) / max(steps - LOG_EVERY, 1)
        fits[num_mc] = {"per_step_us": per_step * 1e6, "per_run_s": max(short - LOG_EVERY * per_step, 0.0), "run_s": full}
    runs_per_num_mc = len(LRS) * seeds
    grid_seconds = sum(runs_per_num_mc * fit["run_s"] for fit in fits.values())
    return {"fits": fits, "grid_seconds": grid_seconds}


def part_compute(steps: int, seeds: int, devices: int, *, lrs=LRS, num_mcs=NUM_MCS, d: int = D, log_every: int = LOG_EVERY) -> dict:
    """The floors (keys + normals only; per run, and once per shared stream) and the trainer's
    batched calls alone (as the launcher lays them out, and with a draw per run), on ``devices`` CPU devices."""
    sys.path.insert(0, str(REPO))
    from vi_sweep.launch.devices import prefer_cpu_vector_width
    from vi_sweep.launch.options import BatchedLauncherConf

    prefer_cpu_vector_width(BatchedLauncherConf.cpu_vector_width)  # as the launcher, before JAX starts
    import jax

    if devices > 1:
        jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from vi_sweep.core import trainer
    from vi_sweep.core.trainer import as_hyper, make_train, split_fields

    jitted_batch_train = getattr(trainer, "jitted_batch_train", None)  # with the trainer's compiler options, where it has them

    mesh_devices = jax.local_devices()
    sharding = NamedSharding(Mesh(mesh_devices, ("runs",)), PartitionSpec("runs"))
    runs = len(lrs) * seeds

    def padded_to_devices(n: int) -> int:
        return n + (-n % len(mesh_devices))

    try:  # the written-out stream (bit for bit jax.random's), where this checkout has it
        from vi_sweep.core import noise as written_out
    except ImportError:
        written_out = None

    def floor_program(num_mc: int, split=jax.random.split, normal=lambda key, n: jax.random.normal(key, (n,))):
        def one_stream(seed):
            def step(carry, _):
                key, total = carry
                key, subkey = split(key)
                eps = normal(subkey, num_mc * d).reshape(num_mc, d)  # = jax.random.normal(subkey, (num_mc, d))
                return (key, total + jnp.sum(eps)), None  # consume the draw so XLA cannot drop it

            (_, total), _ = jax.lax.scan(step, (jax.random.key(seed), jnp.zeros(())), None, length=steps)
            return total

        return jax.jit(jax.vmap(one_stream))

    def timed(fn, *args) -> tuple[float, float]:
        """(first call: compile + run, best of 3 further calls: run)."""
        times = []
        for _ in range(4):
            started = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - started)
        return times[0], min(times[1:])

    out = {"devices": len(mesh_devices), "floor": {}, "floor_shared": {}, "floor_written_out": {}, "compute": {}, "compute_per_run": {}}
    for num_mc in num_mcs:
        floors = [("floor", runs, {}), ("floor_shared", seeds, {})]  # jax.random's draw: per run; per seed
        if written_out is not None:  # the same draws per run, written out as the trainer draws them
            floors.append(("floor_written_out", runs, dict(split=written_out.split, normal=written_out.normal)))
        for name, streams, draw in floors:
            seeds_arg = jax.device_put(np.arange(padded_to_devices(streams), dtype=np.int32), sharding)
            first, again = timed(floor_program(num_mc, **draw), seeds_arg)
            out[name][num_mc] = {"compile_s": first - again, "run_s": again}

        fields = [
            dict(
                objective="mc", estimator="reparam", optimizer="adam", target="standard_normal", d=d, steps=steps,
                log_every=log_every, init_log_sigma=INIT_LOG_SIGMA, optimizer_b1=0.9, optimizer_b2=0.999,
                optimizer_eps=1e-8, optimizer_grad_clip=None, lr=lr, num_mc=num_mc, seed=seed,
            )
            for lr in lrs
            for seed in range(seeds)
        ]
        spec = split_fields(fields[0])[0]
        per_run = fields + fields[-1:] * (padded_to_devices(runs) - runs)
        hyper = jax.device_put(as_hyper([split_fields(f)[1] for f in per_run]), sharding)
        first, again = timed(jitted_batch_train(spec) if jitted_batch_train else jax.jit(jax.vmap(make_train(spec))), hyper)
        out["compute_per_run"][num_mc] = {"compile_s": first - again, "run_s": again}
        if (REPO / "vi_sweep" / "launch" / "sweep_plan.py").exists():  # this checkout's launcher layout
            out["compute"][num_mc] = _time_launcher_calls(fields, mesh_devices, timed)
        else:
            out["compute"][num_mc] = out["compute_per_run"][num_mc]
    return out


def _time_launcher_calls(fields: list[dict], devices, timed) -> dict:
    """The batched launcher's own calls for ``fields``: planned (streams, chunks) and started as it does."""
    from vi_sweep.core.trainer import split_fields
    from vi_sweep.launch.devices import start_batch
    from vi_sweep.launch.options import BatchedLauncherConf
    from vi_sweep.launch.sweep_plan import plan_sweep

    plan = plan_sweep([split_fields(f) for f in fields], max_batch_floats=BatchedLauncherConf().batch_floats(devices[0].platform), multiple_of=len(devices))

    def all_chunks():
        return [start_batch(c.spec, [plan.computations[i].traced for i in c.computations], devices, c.runs_per_stream) for c in plan.chunks]

    first, again = timed(all_chunks)
    layout = ", ".join(f"{c.streams} streams x {c.runs_per_stream} runs" for c in plan.chunks)
    return {"compile_s": first - again, "run_s": again, "layout": layout}


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def measure(argv: list[str], *, cwd: Path = REPO) -> dict:
    """Run a child process; return its wall time, its own peak RSS (MiB, ``wait4``) and its output."""
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves: rusage of this child only
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"bench_grid: {' '.join(argv[:5])} ... failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": stdout, "stderr": stderr}  # ru_maxrss: KiB


def child(part: str, *args: str) -> dict:
    result = measure([sys.executable, str(Path(__file__).resolve()), "--part", part, *args])
    result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
    return result


def has_report() -> bool:
    """Whether this checkout has the report (an old checkout, measured side by side, may not)."""
    return any((REPO / where / "report.py").exists() for where in ("vi_sweep/analysis", "analysis"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--skip-basic", action="store_true", help="skip Hydra's basic launcher (the slow one)")
    parser.add_argument("--part", choices=("notebook", "compute"), help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.part == "notebook":
        print(json.dumps(part_notebook(args.steps, args.seeds)))
        return 0
    if args.part == "compute":
        print(json.dumps(part_compute(args.steps, args.seeds, args.devices)))
        return 0

    sys.path.insert(0, str(REPO))
    from vi_sweep.host import available_cores

    cores = available_cores()
    load_before = os.getloadavg()[0]  # a shared machine: say how busy it was
    grid = grid_overrides(args.steps, args.seeds)
    runs = len(LRS) * len(NUM_MCS) * args.seeds
    rows: list[tuple[str, float, float]] = []  # (what, seconds, peak RSS MiB)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_grid_") as tmp:
        tmp_path = Path(tmp)
        cli = [sys.executable, "-m", "vi_sweep", "multirun", *grid]

        notebook = child("notebook", "--steps", str(args.steps), "--seeds", str(args.seeds))
        rows.append(("1. notebook loop (60 runs x time of one run, per num_mc)", notebook["grid_seconds"], notebook["peak_rss_mib"]))
        for num_mc, fit in notebook["fits"].items():
            notes.append(
                f"notebook num_mc={num_mc}: {fit['run_s']:.2f} s a run of {args.steps} steps "
                f"({fit['per_step_us']:.0f} us/step + {fit['per_run_s']:.2f} s/run to recompile)"
            )

        if not args.skip_basic:
            basic = measure([*cli, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path / 'basic'}"])
            rows.append(("2. multirun, basic launcher", basic["wall_s"], basic["peak_rss_mib"]))

        cache = f"hydra.launcher.compilation_cache_dir={tmp_path / 'jax_cache'}"
        cold = measure([*cli, cache, f"hydra.sweep.dir={tmp_path / 'cold'}"])
        # Best of two: other processes on a shared machine only ever add time (as for the notebook).
        warm = min((measure([*cli, cache, f"hydra.sweep.dir={tmp_path / f'warm{i}'}"]) for i in range(2)), key=lambda r: r["wall_s"])
        one_device_cli = [*cli, cache, "hydra.launcher.cpu_devices=1"]
        measure([*one_device_cli, f"hydra.sweep.dir={tmp_path / 'one_device_cold'}"])  # fills the cache for 1 device
        one_device = measure([*one_device_cli, f"hydra.sweep.dir={tmp_path / 'one_device'}"])
        for label, result in (("cold", cold), ("warm", warm), ("warm, 1 device", one_device)):
            line = next(l for l in result["stdout"].splitlines() if l.startswith("vi_sweep: ") and " jobs (" in l)
            notes.append(f"batched {label}: {line}")
        # The multirun writes its report itself (the SweepSummary callback), so 3a-3c include it;
        # 3d is 3b without it, and the report is also timed on its own.
        no_report = measure([*cli, cache, "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={tmp_path / 'no_report'}"])
        if has_report():
            report = measure([sys.executable, "-m", "vi_sweep", "report", str(tmp_path / "no_report")])
            notes.append(f"report alone (`python -m vi_sweep report`, its own process): {report['wall_s']:.1f} s, peak {report['peak_rss_mib']:.0f} MiB")
        else:
            notes.append("report: not in this checkout, not timed")
        rows.append(("3a. multirun, batched launcher, cold cache, with its report", cold["wall_s"], cold["peak_rss_mib"]))
        rows.append(("3b. multirun, batched launcher, warm cache, with its report", warm["wall_s"], warm["peak_rss_mib"]))
        rows.append(("3c. as 3b on 1 CPU device (no sharding)", one_device["wall_s"], one_device["peak_rss_mib"]))
        rows.append(("3d. as 3b without the report", no_report["wall_s"], no_report["peak_rss_mib"]))

        compute = child("compute", "--steps", str(args.steps), "--seeds", str(args.seeds), "--devices", str(cores))
        floor_s = sum(part["run_s"] for part in compute["floor"].values())
        seconds = {key: sum(part["run_s"] for part in compute[key].values()) for key in ("compute", "compute_per_run", "floor_shared")}
        rows.append(("   batched training calls alone (compiled, the launcher's shared streams)", seconds["compute"], compute["peak_rss_mib"]))
        rows.append(("   the same with a draw per run", seconds["compute_per_run"], compute["peak_rss_mib"]))
        rows.append(("4. floor: split keys + draw normals, per run (compiled)", floor_s, compute["peak_rss_mib"]))
        rows.append(("   floor, once per shared stream (seed)", seconds["floor_shared"], compute["peak_rss_mib"]))
        if compute["floor_written_out"]:
            written_out_s = sum(part["run_s"] for part in compute["floor_written_out"].values())
            rows.append(("   floor per run, the draw written out (vi_sweep.core.noise, same bits)", written_out_s, compute["peak_rss_mib"]))
        notes.append("launcher layout per num_mc: " + "; ".join(f"{m}: {part.get('layout', 'per run')}" for m, part in compute["compute"].items()))
        notes.append(
            "compile s per num_mc (trainer / floor): "
            + ", ".join(f"{m}: {compute['compute'][m]['compile_s']:.1f} / {compute['floor'][m]['compile_s']:.1f}" for m in compute["floor"])
        )

    print(f"Reference grid: {runs} runs, d={D}, steps={args.steps}, log_every={LOG_EVERY}, Adam; "
          f"{cores} CPU core(s), launcher and floor on {compute['devices']} device(s); "
          f"load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}\n")
    print("| measurement | seconds | vs notebook | vs floor | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    notebook_s = rows[0][1]
    for what, seconds, rss in rows:
        print(f"| {what} | {seconds:.1f} | {notebook_s / seconds:.1f}x faster | {seconds / floor_s:.2f}x | {rss:.0f} |")
    print()
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
