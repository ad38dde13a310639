"""Results a user can trust: a sweep dir is extended, never overwritten; every file reads as one
table; damaged, interrupted, too-large and full-disk runs end in one line, with nothing half-written.

Real processes, as a user runs them (``python -m vi_sweep ...``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli
from vi_sweep.launch.resume import scan_sweep
from vi_sweep.store.metrics import read_fields

pytestmark = pytest.mark.slow

RUN = ("d=3", "steps=60", "log_every=20", "grid=none", "hydra.callbacks.sweep_summary.report=false")
SMALL = (*RUN, "hydra.launcher.exact_baselines=false")
SUMMARY = re.compile(r"vi_sweep: (\d+) jobs \((\d+) computed, (\d+) resumed\)")


def counts(stdout: str) -> tuple[int, int, int]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    return tuple(map(int, match.groups()))  # type: ignore[return-value]


def mtimes(sweep: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.parquet")}


def by_key(sweep: Path) -> dict[str, pd.DataFrame]:
    """Every finished run of a sweep dir (either layout), keyed by its config: what 'the data of a sweep' is."""
    out = {}
    for key, run in scan_sweep(Path(sweep)).finished.items():
        frame = pd.read_parquet(run.file)
        out[key] = frame if run.job is None else frame[frame["job"] == run.job].drop(columns="job").reset_index(drop=True)
    return out


def test_extending_a_sweep_three_ways_keeps_every_finished_run_and_ends_with_the_union(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli("multirun", "lr=0.01,0.1", "num_mc=2", "seed=0", *SMALL, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr
    steps = [
        (("lr=0.001,0.01,0.1", "num_mc=2", "seed=0"), (3, 1, 2)),  # a new lr, first in the list
        (("lr=0.001,0.01,0.1", "num_mc=2", "seed=0,1"), (6, 3, 3)),  # more seeds
        (("lr=0.001,0.01,0.1", "num_mc=2,4", "seed=0,1"), (12, 6, 6)),  # another num_mc
    ]
    for overrides, expected in steps:
        before = mtimes(sweep)
        result = run_cli("multirun", *overrides, *SMALL, f"hydra.sweep.dir={sweep}")
        assert result.returncode == 0, result.stderr
        assert counts(result.stdout) == expected
        assert {p: mtimes(sweep)[p] for p in before} == before  # no finished run rewritten
    union = tmp_path / "union"
    fresh = run_cli("multirun", "lr=0.001,0.01,0.1", "num_mc=2,4", "seed=0,1", *SMALL, f"hydra.sweep.dir={union}")
    assert fresh.returncode == 0, fresh.stderr
    extended, once = by_key(sweep), by_key(union)
    assert len(list(sweep.glob("*/metrics.parquet"))) == len(extended) == len(once) == 12
    assert extended.keys() == once.keys()
    for key in once:
        pd.testing.assert_frame_equal(extended[key], once[key], check_exact=True)
    history = [json.loads(line) for line in (sweep / ".vi_sweep" / "history.jsonl").read_text().splitlines()]
    assert [h["overrides"][:3] for h in history] == [["lr=0.01,0.1", "num_mc=2", "seed=0"], *[list(o) for o, _ in steps]]
    assert sorted(p.name for p in (sweep / ".vi_sweep").glob("multirun.*.yaml")) == ["multirun.1.yaml", "multirun.2.yaml", "multirun.3.yaml"]


def test_a_launcher_that_places_jobs_by_number_refuses_to_overwrite_and_resumes_its_own(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_cli("multirun", "lr=0.01,0.1", *SMALL, f"hydra.sweep.dir={sweep}").returncode == 0
    before = mtimes(sweep)
    again = run_cli("multirun", "lr=0.01,0.1", *RUN, "hydra/launcher=basic", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr  # the same runs: resumed, not recomputed
    assert mtimes(sweep) == before
    other = run_cli("multirun", "lr=0.001,0.01", *RUN, "hydra/launcher=basic", f"hydra.sweep.dir={sweep}")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith(f"vi_sweep: error: {sweep / '0'} already holds a finished run of another config")
    assert "Traceback" not in other.stderr
    assert mtimes(sweep) == before


def test_every_file_of_a_mixed_optimizer_sweep_reads_as_one_table(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("multirun", "optimizer=sgd,adam", "optimizer.grad_clip=null,1.0", "lr=0.05", *SMALL, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    files = sorted(sweep.glob("*/metrics.parquet"), key=lambda p: int(p.parent.name))
    assert pd.read_parquet(files[0])["optimizer"].iloc[0] == "sgd"  # an SGD file first: no b1 of its own
    frame = pd.read_parquet(files)
    assert len(frame) == sum(len(pd.read_parquet(f)) for f in files)
    assert {"optimizer_b1", "optimizer_b2", "optimizer_eps", "optimizer_grad_clip", "optimizer_momentum", "target_rho"} <= set(frame.columns)
    assert frame.loc[frame["optimizer"] == "sgd", "optimizer_b1"].isna().all()
    assert (frame.loc[frame["optimizer"] == "adam", "optimizer_b1"] == 0.9).all()
    assert set(frame["optimizer_grad_clip"].dropna()) == {1.0} and frame["optimizer_grad_clip"].isna().any()
    table = ds.dataset([str(f) for f in files], format="parquet").to_table()
    assert table.num_rows == len(frame) and table.schema.field("optimizer_grad_clip").type == "double"
    assert set(frame["status"]) == {"ok"}


def test_a_damaged_page_is_named_in_one_line_and_the_run_recomputed(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_cli("multirun", "lr=0.01,0.1", *SMALL, f"hydra.sweep.dir={sweep}").returncode == 0
    damaged = sweep / "1" / "metrics.parquet"
    original = pq.read_table(damaged)
    data = bytearray(damaged.read_bytes())
    data[200:1200] = bytes((b + 77) % 256 for b in data[200:1200])
    damaged.write_bytes(bytes(data))
    assert read_fields(damaged) is None
    rerun = run_cli("multirun", "lr=0.01,0.1", *SMALL, f"hydra.sweep.dir={sweep}")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stderr.strip().splitlines() == [next(line for line in rerun.stderr.splitlines() if str(damaged) in line)]
    assert "is unreadable" in rerun.stderr and rerun.stderr.strip().endswith("recomputed")
    assert counts(rerun.stdout) == (2, 1, 1)
    assert pq.read_table(damaged).equals(original)


def test_ctrl_c_is_one_line_exit_130_and_a_rerun_finishes_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    grid = ("lr=0.01,0.03,0.1,0.3", "seed=0,1,2", "num_mc=1", "d=2", "steps=40000", "log_every=10000", "grid=none", "hydra.launcher.max_runs_per_call=2")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vi_sweep", "multirun", *grid, f"hydra.sweep.dir={sweep}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 180
    while not list(sweep.glob("*/metrics.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(r"vi_sweep: interrupted: (\d+) of 12 runs written; rerun the same command to resume", last)
    assert match, last
    written = list(sweep.glob("*/metrics.parquet"))
    assert int(match.group(1)) == len(written) and all(read_fields(p) is not None for p in written)
    assert not list(sweep.glob("*/.metrics.parquet.*"))
    rerun = run_cli("multirun", *grid, f"hydra.sweep.dir={sweep}")
    assert rerun.returncode == 0, rerun.stderr
    assert counts(rerun.stdout) == (12, 12 - len(written), len(written))


def test_a_full_disk_during_a_sweep_is_one_line_and_exit_1(tmp_path):
    sweep = tmp_path / "sweep"
    # `ulimit -f` (in KiB) stands in for a full disk: writes past it fail with EFBIG.
    command = 'ulimit -f 48 && exec "$0" -m vi_sweep "$@"'
    result = subprocess.run(
        ["bash", "-c", command, sys.executable, "multirun", "lr=0.01,0.1", "d=2", "steps=3000", "log_every=1", "grid=none",
         "hydra.launcher.exact_baselines=false", "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"vi_sweep: error: cannot write .*: File too large; \d of 2 runs written; rerun the same command to resume", last), last
    assert not list(sweep.glob("*/.metrics.parquet.*"))
    assert all(read_fields(p) is not None for p in sweep.glob("*/metrics.parquet"))


@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_a_run_too_large_for_this_machine_is_one_line_and_leaves_nothing(mode, tmp_path):
    where = "hydra.run.dir" if mode == "run" else "hydra.sweep.dir"
    lrs = "lr=0.1" if mode == "run" else "lr=0.1,0.2"
    result = run_cli(mode, "d=1000000000", "num_mc=64", lrs, "grid=none", f"{where}={tmp_path / 'out'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs about 1.6 TB of memory (d=1000000000, num_mc=64" in lines[0] and "available here" in lines[0]
    assert not (tmp_path / "out").exists()


def test_steps_past_the_trainers_integers_are_refused_before_anything_runs(tmp_path):
    result = run_cli("run", "steps=4294967396", "log_every=4294967296", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip() == "vi_sweep: error: steps=4294967396 is invalid: must be an integer in [1, 2147483647]"
    assert not (tmp_path / "out").exists()


def test_a_fully_diverged_sweep_gets_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("multirun", "optimizer=sgd", "lr=3.0", "num_mc=4", "d=10", "steps=300", "log_every=10", "seed=0,1", "grid=none", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert (sweep / "report" / "summary.md").exists()
    assert set(pd.read_csv(sweep / "report" / "runs.csv")["outcome"]) == {"diverged"}
    again = run_cli("report", str(sweep))
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_report_out_writes_elsewhere_and_names_the_runs_it_left_out(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_cli("multirun", "lr=0.01,0.1", *SMALL, f"hydra.sweep.dir={sweep}").returncode == 0
    (sweep / "7" / ".hydra").mkdir(parents=True)  # a job that never wrote its file
    out = tmp_path / "elsewhere" / "report"
    result = run_cli("report", str(sweep), "--out", str(out), "--no-cache")
    assert result.returncode == 0, result.stderr
    assert (out / "summary.md").exists() and not (sweep / "report").exists() and not (sweep / "baselines").exists()
    assert result.stderr.strip().splitlines() == [
        f"vi_sweep: warning: 1 job directories of {sweep} have no metrics.parquet (unfinished runs, left out): 7"
    ]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    refused = run_cli("report", str(sweep), "--out", str(blocker / "report"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"vi_sweep: error: cannot write the report in {blocker}")
    assert not (sweep / "baselines").exists()  # it failed before training any baseline


def test_the_batched_launcher_refuses_an_app_that_is_not_vi_sweeps(tmp_path):
    app = tmp_path / "my_app.py"
    app.write_text(textwrap.dedent("""
        import hydra

        @hydra.main(version_base="1.3", config_path=None)
        def my_task(cfg):
            print("ran", cfg)

        if __name__ == "__main__":
            my_task()
    """))
    result = subprocess.run(
        [sys.executable, str(app), "-m", "hydra/launcher=batched", "+x=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("vi_sweep: error: hydra/launcher=batched runs vi_sweep's task")
    assert "ran" not in result.stdout


def test_the_compact_layout_holds_the_same_runs_and_report_and_resumes_and_extends(tmp_path):
    grid = ("lr=0.01,0.1", "num_mc=2", "seed=0,1,2", "d=3", "steps=60", "log_every=20", "grid=none")
    jobs_dir, compact_dir = tmp_path / "jobs", tmp_path / "compact"
    assert run_cli("multirun", *grid, f"hydra.sweep.dir={jobs_dir}").returncode == 0
    compact = run_cli("multirun", *grid, "hydra.launcher.layout=compact", f"hydra.sweep.dir={compact_dir}")
    assert compact.returncode == 0, compact.stderr
    assert not list(compact_dir.glob("*/metrics.parquet")) and len(list((compact_dir / "runs").glob("jobs-*.parquet"))) == 1
    assert f"vi_sweep: 6 runs written to {compact_dir}" in compact.stdout
    one, other = by_key(jobs_dir), by_key(compact_dir)
    assert one.keys() == other.keys() and len(one) == 6
    for key in one:
        pd.testing.assert_frame_equal(one[key], other[key], check_exact=True)
    for name in ("phase_table.csv", "runs.csv", "phase_map.png", "kl_curves.png"):
        assert (jobs_dir / "report" / name).read_bytes() == (compact_dir / "report" / name).read_bytes(), name

    before = {p: p.stat().st_mtime_ns for p in (compact_dir / "runs").glob("*.parquet")}
    again = run_cli("multirun", *grid, "hydra.launcher.layout=compact", f"hydra.sweep.dir={compact_dir}")
    assert counts(again.stdout) == (6, 0, 6)
    extended = run_cli("multirun", "lr=0.001,0.01,0.1", *grid[1:], f"hydra.sweep.dir={compact_dir}")  # now with job dirs
    assert counts(extended.stdout) == (9, 3, 6)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sorted(int(p.parent.name) for p in compact_dir.glob("*/metrics.parquet")) == [6, 7, 8]  # numbers no compact run has
    assert len(by_key(compact_dir)) == 9
