"""The batched launcher end to end, in real processes: same files as the basic launcher and the
notebook's loop, one compile per shape, resume, SIGKILL safety, divergence as data, discovery."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli
from tests.seed_notebook import reference_rows
from vi_sweep.store.metrics import read_fields

pytestmark = pytest.mark.slow

# 16 jobs: 8 exact (only 2 distinct: the exact KL ignores num_mc and seed) + 2 mc shapes x 4 runs.
GRID = ("objective=exact,mc", "lr=0.05,0.3", "num_mc=1,3", "seed=0,1", "d=5", "steps=40", "log_every=10", "init_log_sigma=-3", "grid=none")
SUMMARY = re.compile(r"vi_sweep: (\d+) jobs \((\d+) computed, (\d+) resumed\) in (\d+) groups, (\d+) compiles, [\d.]+ s")


def summary(stdout: str) -> dict[str, int]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    return dict(zip(("jobs", "computed", "resumed", "groups", "compiles"), map(int, match.groups())))


def jobs_by_fields(sweep: Path) -> dict[tuple, Path]:
    """Job dirs keyed by (objective, lr, num_mc, seed), so two sweeps compare whatever their job order."""
    out = {}
    for path in sorted(sweep.glob("*/metrics.parquet")):
        f = read_fields(path)
        out[(f["objective"], f["lr"], f["num_mc"], f["seed"])] = path.parent
    return out


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same grid through the basic launcher and the batched one (chunks of 2 runs, no compile cache)."""
    root = tmp_path_factory.mktemp("sweeps")
    basic = run_cli("multirun", *GRID, "hydra/launcher=basic", f"hydra.sweep.dir={root / 'basic'}")
    assert basic.returncode == 0, basic.stderr
    batched = run_cli(
        "multirun", *GRID, "hydra.launcher.max_runs_per_call=2", "hydra.launcher.compilation_cache_dir=null", f"hydra.sweep.dir={root / 'batched'}"
    )
    assert batched.returncode == 0, batched.stderr
    return root, batched


def test_each_batched_job_equals_the_same_job_run_by_the_basic_launcher(sweeps):
    root, _ = sweeps
    basic, batched = jobs_by_fields(root / "basic"), jobs_by_fields(root / "batched")
    assert len(batched) == 16 and batched.keys() == basic.keys()
    for key, job in batched.items():
        a, b = pd.read_parquet(basic[key] / "metrics.parquet"), pd.read_parquet(job / "metrics.parquet")
        pd.testing.assert_frame_equal(b, a, rtol=1e-5, atol=1e-6)  # float32 round-off: vmapped vs single
        meta_a, meta_b = pq.read_schema(basic[key] / "metrics.parquet").metadata, pq.read_schema(job / "metrics.parquet").metadata
        assert meta_b[b"vi_sweep.config"] == meta_a[b"vi_sweep.config"] and meta_b[b"vi_sweep.fields"] == meta_a[b"vi_sweep.fields"]
        for name in ("config.yaml", "overrides.yaml"):
            assert (job / ".hydra" / name).read_text() == (basic[key] / ".hydra" / name).read_text()
        assert (job / ".hydra" / "hydra.yaml").exists() and (job / "vi_sweep.log").exists()
        assert job.name == basic[key].name  # same hydra.job.num -> same subdir


def test_a_batched_job_equals_the_notebooks_loop(sweeps):
    root, _ = sweeps
    jobs = jobs_by_fields(root / "batched")
    for objective, num_mc in (("mc", 3), ("exact", 1)):
        frame = pd.read_parquet(jobs[(objective, 0.05, num_mc, 1)] / "metrics.parquet")
        mode = "exact" if objective == "exact" else "mc"
        ref = reference_rows(mode=mode, seed=1, d=5, steps=40, lr=0.05, num_mc=num_mc, init_log_sigma=-3.0, log_every=10, also=set(frame["step"]))
        assert frame["step"].tolist() == ref["step"].tolist()
        for column in ("loss", "kl", "mu_norm", "sigma_mean", "sigma_std", "sigma_min"):
            assert frame[column].to_numpy() == pytest.approx(ref[column], rel=1e-4, abs=1e-5), column


def test_one_compile_per_shape_and_exact_jobs_computed_once(sweeps):
    _, batched = sweeps
    # 3 shapes (exact, mc x num_mc=1, mc x num_mc=3) cut into 2-run chunks: 5 calls, 3 programs.
    assert summary(batched.stdout) == {"jobs": 16, "computed": 16, "resumed": 0, "groups": 3, "compiles": 3}
    assert re.search(r"16 jobs -> 10 distinct runs in 3 groups, 5 calls", batched.stdout + batched.stderr)


def test_no_progress_bar_when_stderr_is_not_a_terminal(sweeps):
    _, batched = sweeps
    assert "run/s" not in batched.stderr and "\r" not in batched.stderr


def test_a_progress_bar_when_stderr_is_a_terminal(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    chunks: list[bytes] = []

    def drain() -> None:  # read while the child writes: a full pty buffer would block it
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: no writer left
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vi_sweep", "multirun", "lr=0.1,0.2", "num_mc=1,2", "grid=none", "steps=5", "d=2", f"hydra.sweep.dir={tmp_path}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=slave, env=env, timeout=600,
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    stderr = b"".join(chunks)
    assert proc.returncode == 0
    bar = stderr.decode(errors="replace")
    # Groups: num_mc=1, num_mc=2 and the exact baselines the launcher trains for the report.
    assert "run/s" in bar and "4/4" in bar and "groups 3/3" in bar


def test_rerunning_a_finished_sweep_computes_nothing_and_rewrites_nothing(sweeps, tmp_path):
    root, _ = sweeps
    sweep = tmp_path / "sweep"
    shutil.copytree(root / "batched", sweep)
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.parquet")}
    rerun = run_cli("multirun", *GRID, f"hydra.sweep.dir={sweep}")
    assert rerun.returncode == 0, rerun.stderr
    assert summary(rerun.stdout) == {"jobs": 16, "computed": 0, "resumed": 16, "groups": 0, "compiles": 0}
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.parquet")} == before
    assert "vi_sweep: 16 runs written to" in rerun.stdout


def test_resume_recomputes_exactly_the_missing_partial_and_foreign_jobs(sweeps, tmp_path):
    root, _ = sweeps
    sweep = tmp_path / "sweep"
    shutil.copytree(root / "batched", sweep)
    jobs = jobs_by_fields(sweep)
    original = {key: pd.read_parquet(job / "metrics.parquet") for key, job in jobs.items()}
    missing, partial, foreign = jobs[("mc", 0.05, 1, 0)], jobs[("mc", 0.05, 1, 1)], jobs[("mc", 0.3, 1, 0)]
    (missing / "metrics.parquet").unlink()
    (missing / ".metrics.parquet.abc123.tmp").write_bytes(b"PAR1 half")  # a write killed half-way
    data = (partial / "metrics.parquet").read_bytes()
    (partial / "metrics.parquet").write_bytes(data[: len(data) // 2])  # e.g. copied by a non-atomic tool
    shutil.copy(jobs[("mc", 0.3, 3, 0)] / "metrics.parquet", foreign / "metrics.parquet")  # another job's file
    untouched = {p: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.parquet") if p.parent not in (missing, partial, foreign)}

    rerun = run_cli("multirun", *GRID, "hydra.launcher.max_runs_per_call=2", "hydra.launcher.compilation_cache_dir=null", f"hydra.sweep.dir={sweep}")
    assert rerun.returncode == 0, rerun.stderr
    assert summary(rerun.stdout) == {"jobs": 16, "computed": 3, "resumed": 13, "groups": 1, "compiles": 1}
    # The foreign file is a finished run of another config: kept, and its job computed into a new dir.
    assert "1 computed under new job numbers (their own held other configs' runs)" in rerun.stdout
    assert f"{partial / 'metrics.parquet'} is unreadable" in rerun.stderr and "recomputed" in rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert not list(sweep.glob("*/.metrics.parquet.*"))
    assert read_fields(foreign / "metrics.parquet") == read_fields(jobs[("mc", 0.3, 3, 0)] / "metrics.parquet")
    for key, job in jobs_by_fields(sweep).items():
        pd.testing.assert_frame_equal(pd.read_parquet(job / "metrics.parquet"), original[key], check_exact=True)
    assert set(jobs_by_fields(sweep)) == set(original)


def test_resume_finds_job_dirs_named_through_hydra_resolvers(tmp_path):
    # The launcher must resolve each job's dir exactly as Hydra's run_job does, or resume misses it.
    args = ("lr=0.1,0.2", "grid=none", "steps=5", "d=2", "hydra.sweep.subdir=run_${hydra:job.num}_${hydra.job.override_dirname}", f"hydra.sweep.dir={tmp_path}")
    first = run_cli("multirun", *args)
    assert first.returncode == 0, first.stderr
    assert sorted(p.parent.name for p in tmp_path.glob("*/metrics.parquet")) == [
        "run_0_d=2,grid=none,lr=0.1,steps=5", "run_1_d=2,grid=none,lr=0.2,steps=5",
    ]
    again = run_cli("multirun", *args)
    assert summary(again.stdout)["resumed"] == 2


def test_a_sweep_killed_mid_way_and_rerun_ends_with_exactly_an_uninterrupted_sweeps_data(tmp_path):
    # One shape, 2 runs per call, long runs: jobs appear every fraction of a second.
    grid = ("lr=0.01,0.03,0.1,0.3", "seed=0,1,2", "num_mc=1", "d=2", "steps=40000", "log_every=10000", "grid=none", "hydra.launcher.max_runs_per_call=2")
    cache = f"hydra.launcher.compilation_cache_dir={tmp_path / 'cache'}"
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vi_sweep", "multirun", *grid, cache, f"hydra.sweep.dir={killed}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(killed.glob("*/metrics.parquet"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = list(killed.glob("*/metrics.parquet"))
    assert 2 <= len(done) < 12, f"{len(done)} jobs written before SIGKILL: the sweep must be killed mid-way"
    assert all(read_fields(p) is not None for p in done)  # every file there is complete

    rerun = run_cli("multirun", *grid, cache, f"hydra.sweep.dir={killed}")
    assert rerun.returncode == 0, rerun.stderr
    counts = summary(rerun.stdout)
    assert counts["resumed"] == len(done) and counts["computed"] == 12 - len(done)
    uninterrupted = run_cli("multirun", *grid, cache, f"hydra.sweep.dir={clean}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    names = sorted(p.parent.name for p in clean.glob("*/metrics.parquet"))
    assert sorted(p.parent.name for p in killed.glob("*/metrics.parquet")) == names and len(names) == 12
    assert not list(killed.glob("*/.metrics.parquet.*"))
    for name in names:
        a, b = pq.read_table(killed / name / "metrics.parquet"), pq.read_table(clean / name / "metrics.parquet")
        assert a.equals(b), name  # same values, bit for bit
        assert a.schema.metadata[b"vi_sweep.config"] == b.schema.metadata[b"vi_sweep.config"]


def test_a_diverged_run_is_data_and_the_sweep_succeeds(tmp_path):
    result = run_cli(
        "multirun", "optimizer=sgd", "lr=0.01,50", "d=10", "steps=200", "log_every=50", "grid=none",
        "hydra.launcher.compilation_cache_dir=null", f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    frames = {float(pd.read_parquet(p)["lr"].iloc[0]): pd.read_parquet(p) for p in tmp_path.glob("*/metrics.parquet")}
    assert (frames[50.0]["status"] == "nonfinite").all() and 1 <= frames[50.0]["diverged_at"].iloc[0] <= 200
    assert (frames[0.01]["status"] == "ok").all()
    assert summary(result.stdout)["computed"] == 2


def test_an_invalid_value_from_a_composed_config_is_one_line_and_leaves_nothing(tmp_path):
    # The grid lives in hydra.sweeper.params: the command-line pre-check cannot see its values.
    sweep = tmp_path / "sweep"
    result = run_cli("multirun", 'hydra.sweeper.params.lr="0.1,-0.1"', "steps=5", "d=2", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vi_sweep: error: lr=-0.1 is invalid: must be a finite number > 0 (job ")
    assert not sweep.exists()


@pytest.mark.parametrize(
    "option, message",
    [
        ("max_batch_floats=0", "hydra.launcher.max_batch_floats=0 is invalid: must be null or an integer >= 1"),
        ("cpu_vector_width=300", "hydra.launcher.cpu_vector_width=300 is invalid: must be null or one of 128, 256, 512"),
    ],
)
def test_an_invalid_launcher_option_is_one_line(option, message, tmp_path):
    result = run_cli("multirun", "lr=0.1", "grid=none", f"hydra.launcher.{option}", f"hydra.sweep.dir={tmp_path / 's'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"vi_sweep: error: {message}"
    assert not (tmp_path / "s").exists()


def test_the_cpu_vector_width_changes_speed_not_numbers_on_a_small_grid(tmp_path):
    # XLA's vector width decides how many lanes its loops fill: on this grid the launcher's
    # default (512 bits) and XLA's own (null: 256) write the same bits (d=37 and num_mc=3 leave
    # remainders at either width). Not at every size: some reductions at d=1000 round
    # differently. (Where the CPU has no AVX-512 both are 256.)
    grid = ("lr=0.05,0.3", "num_mc=1,3", "seed=0", "d=37", "steps=40", "log_every=10", "grid=none")
    frames = {}
    for width in ("512", "null"):
        sweep = tmp_path / width
        result = run_cli(
            "multirun", *grid, f"hydra.launcher.cpu_vector_width={width}", "hydra.launcher.compilation_cache_dir=null",
            "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={sweep}",
            env={"XLA_FLAGS": ""},  # not this process's: an in-process launcher test may have set it
        )
        assert result.returncode == 0, result.stderr
        frames[width] = {key: pd.read_parquet(job / "metrics.parquet") for key, job in jobs_by_fields(sweep).items()}
    assert len(frames["512"]) == 4 and frames["512"].keys() == frames["null"].keys()
    for key, frame in frames["512"].items():
        pd.testing.assert_frame_equal(frame, frames["null"][key], check_exact=True)


@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_the_launcher_plugin_is_discovered(where, tmp_path):
    # From another directory the package comes from PYTHONPATH (this checkout), and the plugin
    # must be found among the other distributions' hydra_plugins (namespace package).
    env = {"PYTHONPATH": str(REPO)} if where == "elsewhere" else None
    result = run_cli("--info", "plugins", cwd=REPO if where == "repo" else tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    launchers = result.stdout.split("Launcher:")[1].split("Sweeper:")[0]
    assert "BatchedLauncher" in launchers and "BasicLauncher" in launchers


def test_importing_the_plugin_does_not_import_jax():
    # Hydra imports every plugin at start-up, for every command.
    code = "import sys, hydra_plugins.vi_sweep_launcher.vi_sweep_launcher; print('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_launcher_trains_the_exact_baselines_the_report_would_train(tmp_path, monkeypatch):
    import vi_sweep.analysis.references
    from vi_sweep.analysis.read import read_sweep

    # An MC-only sweep has no exact jobs: the launcher trains each distinct exact twin (one per
    # lr here) along with the jobs, into baselines/, where the report looks first.
    grid = ("lr=0.05,0.3", "num_mc=1,3", "seed=0", "d=5", "steps=40", "log_every=10", "grid=none", "hydra.launcher.compilation_cache_dir=null")
    sweep = tmp_path / "sweep"
    result = run_cli("multirun", *grid, "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout)["groups"] == 3  # num_mc=1, num_mc=3 and the baselines
    assert re.search(r" compiles, [\d.]+ s; and 2 exact baselines for the report\n", result.stdout)
    ours = sorted((sweep / "baselines").glob("*/metrics.parquet"))
    assert len(ours) == 2

    # They are the files the report trains when they are missing, byte for byte (the launcher
    # runs a group of baselines unsharded, on one device, as the report does) ...
    without = tmp_path / "without"
    shutil.copytree(sweep, without, ignore=shutil.ignore_patterns("baselines"))
    vi_sweep.analysis.references.exact_baselines(read_sweep(without))
    for path in ours:
        assert (without / path.relative_to(sweep)).read_bytes() == path.read_bytes()

    # ... so the report takes them and trains nothing.
    monkeypatch.setattr(vi_sweep.analysis.references, "_train", lambda fields: pytest.fail(f"trained {len(fields)} baselines"))
    references = vi_sweep.analysis.references.exact_baselines(read_sweep(sweep))
    assert list(references.baselines["source"]) == ["computed", "computed"]

    # A rerun finds them (no new baselines); with exact_baselines=false none are trained.
    rerun = run_cli("multirun", *grid, "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={sweep}")
    assert summary(rerun.stdout) == {"jobs": 4, "computed": 0, "resumed": 4, "groups": 0, "compiles": 0}
    assert "exact baselines" not in rerun.stdout
    off = tmp_path / "off"
    result = run_cli("multirun", *grid, "hydra.launcher.exact_baselines=false", "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={off}")
    assert result.returncode == 0 and summary(result.stdout)["groups"] == 2
    assert not (off / "baselines").exists()


TINY = ("num_mc=1", "seed=0", "d=3", "steps=20", "log_every=10", "grid=none", "hydra.launcher.compilation_cache_dir=null")


def test_a_baseline_killed_mid_write_is_rewritten_without_its_temporary_file(tmp_path):
    # As for a job's file: a rerun finds the baseline missing, trains it again and removes the
    # temporary file the killed write left, so the sweep ends with an uninterrupted one's data.
    sweep = tmp_path / "sweep"
    args = ("multirun", "lr=0.05", *TINY, "hydra.callbacks.sweep_summary.report=false", f"hydra.sweep.dir={sweep}")
    assert run_cli(*args).returncode == 0
    (baseline,) = sweep.glob("baselines/*/metrics.parquet")
    written = baseline.read_bytes()
    baseline.unlink()  # killed between mkstemp and os.replace
    stale = baseline.parent / ".metrics.parquet.k1ll3d.tmp"
    stale.write_bytes(b"PAR1 half a file")
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert baseline.read_bytes() == written
    assert sorted(p.name for p in baseline.parent.iterdir()) == ["metrics.parquet"]


def test_a_baseline_that_cannot_be_written_is_one_warning_and_the_report_trains_it(tmp_path):
    # A file where baselines/ should be stands for any OSError there (read-only, disk full).
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "baselines").write_text("not a directory")
    result = run_cli("multirun", "lr=0.05", *TINY, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("vi_sweep: warning: 1 exact baselines not written (") and lines[0].endswith("the report trains them itself")
    assert all(line.startswith("vi_sweep: warning: ") for line in lines)  # the report's own cache warning follows
    assert (sweep / "report" / "summary.md").exists()


def test_a_user_module_named_analysis_does_not_shadow_the_report(tmp_path):
    # The analysis library lives inside the package (vi_sweep.analysis): a user's own analysis.py
    # or analysis/ package where the sweep starts is theirs, and the report is written as usual.
    (tmp_path / "analysis.py").write_text("raise ImportError('the user module was imported')\n")
    result = run_cli("multirun", "lr=0.05", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert (tmp_path / "sweep" / "report" / "summary.md").exists()
    report = run_cli("report", str(tmp_path / "sweep"), cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert report.returncode == 0 and report.stderr == "", report.stderr


def test_chunks_of_baselines_have_their_own_bound_in_flight(monkeypatch):
    # Up to CHUNKS_IN_FLIGHT chunks of jobs and one of baselines, whatever the plan holds.
    from types import SimpleNamespace

    import vi_sweep.launch.batched as batched

    kinds = ["jobs"] * 4 + ["baselines"] * 10 + ["jobs"] * 2
    chunks = [SimpleNamespace(size=2, spec=SimpleNamespace(num_mc=0 if kind == "baselines" else 1)) for kind in kinds]
    in_flight: set[int] = set()
    peak = {"jobs": 0, "baselines": 0}
    order = []

    position = {id(chunk): index for index, chunk in enumerate(chunks)}

    def dispatch(chunk, plan, devices):
        index = position[id(chunk)]
        in_flight.add(index)
        for kind in peak:
            peak[kind] = max(peak[kind], sum(kinds[i] == kind for i in in_flight))
        return index

    def write_chunk(index, outputs):
        in_flight.discard(index)
        order.append(index)

    monkeypatch.setattr(batched, "dispatch", dispatch)
    monkeypatch.setattr(batched, "to_numpy", lambda outputs: outputs)
    monkeypatch.setattr(batched, "count_compiles", lambda counters: (lambda: None))
    small = frozenset(i for i, kind in enumerate(kinds) if kind == "baselines")
    batched._run_here(SimpleNamespace(chunks=chunks), ["cpu0", "cpu1"], batched.CompileCounts(), write_chunk, small=small)
    assert peak == {"jobs": batched.CHUNKS_IN_FLIGHT, "baselines": 1}
    assert order == list(range(len(kinds)))  # written in plan order


class RecordsJobEvents:
    """A user's callback: every job start and end, and whether the job's files are in place then."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _record(self, event: str, config) -> None:
        out_dir = Path(str(config.hydra.runtime.output_dir))
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(f"{event} {config.hydra.job.num} {(out_dir / 'metrics.parquet').exists()} {(out_dir / 'params.parquet').exists()}\n")

    def on_job_start(self, config, **kwargs) -> None:
        self._record("start", config)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self._record("end", config)


def test_callbacks_see_each_job_start_and_end_in_turn_with_its_files_written_by_its_end(tmp_path):
    # The launcher composes the next job while this job's files are written on another thread:
    # a callback must still see start 0, end 0 (files in place), start 1, end 1, ...
    events = tmp_path / "events.txt"
    sweep = tmp_path / "sweep"
    result = run_cli(
        "multirun", "lr=0.01,0.02,0.03,0.05,0.1,0.2", *TINY, "hydra.callbacks.sweep_summary.report=false",
        "+hydra.callbacks.record._target_=tests.test_launcher.RecordsJobEvents", f"+hydra.callbacks.record.path={events}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    lines = events.read_text().splitlines()
    assert lines == [line for num in range(6) for line in (f"start {num} False False", f"end {num} True True")]


class RecordsConfigs:
    """A user's callback that says whether it keeps the job configs it is given
    (``VI_SWEEP_TEST_KEEPS``: 1 or 0) and records, per job, the config's identity and a few values."""

    keeps_job_config = os.environ.get("VI_SWEEP_TEST_KEEPS") != "0"  # read in the sweep's process

    def __init__(self, path: str) -> None:
        self.path = path

    def on_job_end(self, config, job_return, **kwargs) -> None:
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(f"{id(config)} {config.hydra.job.num} {config.lr} {config.hydra.runtime.output_dir}\n")


def test_jobs_written_from_a_reused_config_have_the_files_of_jobs_written_from_their_own(tmp_path):
    # A callback that keeps no job config lets the launcher write each job from one config reused
    # for its shape (two shapes here: adam and sgd); one that may keep it gets a config per job.
    # The job directories are the same byte for byte, and each callback saw each job's own values.
    seen = {}
    for keeps in ("0", "1"):
        sweep = tmp_path / f"keeps{keeps}"
        result = run_cli(
            "multirun", "lr=0.01,0.1", "optimizer=adam,sgd", "num_mc=1,4", *[o for o in TINY if not o.startswith("num_mc")],
            "hydra.callbacks.sweep_summary.report=false",
            "+hydra.callbacks.record._target_=tests.test_launcher.RecordsConfigs", f"+hydra.callbacks.record.path={tmp_path / f'events{keeps}.txt'}",
            f"hydra.sweep.dir={sweep}",
            env={"VI_SWEEP_TEST_KEEPS": keeps},
        )
        assert result.returncode == 0, result.stderr
        seen[keeps] = [line.split() for line in (tmp_path / f"events{keeps}.txt").read_text().splitlines()]
    reused, own = seen["0"], seen["1"]
    assert len({config for config, *_ in reused}) == 2 and len({config for config, *_ in own}) == 8  # one config per shape / per job
    assert [values[:2] for _, *values in reused] == [values[:2] for _, *values in own]  # each job's own number and lr
    assert all(Path(output_dir).name == num for _, num, _, output_dir in reused) and len(reused) == 8  # the job's own dir
    a, b = tmp_path / "keeps0", tmp_path / "keeps1"
    for job in range(8):
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            text = (a / str(job) / ".hydra" / name).read_text().replace(str(a), str(b)).replace("events0", "events1")
            assert text == (b / str(job) / ".hydra" / name).read_text(), (job, name)
        for name in ("metrics.parquet", "params.parquet"):
            assert pq.read_table(a / str(job) / name).equals(pq.read_table(b / str(job) / name)), (job, name)


def test_only_callbacks_that_say_so_on_their_own_class_let_jobs_share_a_config():
    from types import SimpleNamespace

    from vi_sweep.launch.batched import callbacks_keep_no_config
    from vi_sweep.launch.callbacks import StartGuard, SweepSummary

    class KeepsThem(SweepSummary):  # inherits keeps_job_config = False, and may keep its configs
        pass

    assert callbacks_keep_no_config(SimpleNamespace(callbacks=[StartGuard(), SweepSummary(report=False)]))
    assert not callbacks_keep_no_config(SimpleNamespace(callbacks=[StartGuard(), KeepsThem(report=False)]))
    assert not callbacks_keep_no_config(SimpleNamespace(callbacks=[StartGuard(), RecordsJobEvents("unused")]))
    assert not callbacks_keep_no_config(object())  # not Hydra's Callbacks: nothing is known
