"""Faults a user meets: an unwritable output directory, a full disk, a cluster launcher."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from vi_sweep.core.schedule import row_steps

from tests.conftest import REPO


def test_an_unwritable_run_dir_is_one_line_and_exit_2(cli, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = cli("run", "steps=5", "log_every=5", "d=2", f"hydra.run.dir={blocker}/run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"vi_sweep: error: hydra.run.dir {blocker}/run is not writable: Not a directory"]


def test_an_unwritable_sweep_dir_is_one_line_and_exit_2(cli, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = cli("multirun", "grid=none", "steps=5", "log_every=5", "d=2", f"hydra.sweep.dir={blocker}/sweep")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"vi_sweep: error: hydra.sweep.dir {blocker}/sweep is not writable")
    assert "Traceback" not in result.stderr


def test_a_full_disk_leaves_no_partial_parquet_and_says_so(tmp_path):
    out = tmp_path / "run"
    # `ulimit -f` (RLIMIT_FSIZE, in KiB) stands in for a full disk: writes past 16 KiB fail with
    # EFBIG (Python ignores SIGXFSZ). A shell sets it so that no fork happens in this JAX process.
    command = 'ulimit -f 16 && exec "$0" -m vi_sweep "$@"'
    result = subprocess.run(
        ["bash", "-c", command, sys.executable, "run", "steps=2000", "log_every=1", "d=2", f"hydra.run.dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"vi_sweep: error: cannot write {out}/metrics.parquet: File too large"
    assert "Traceback" not in result.stderr
    assert not (out / "metrics.parquet").exists()
    assert not list(out.glob(".metrics.parquet.*"))


@pytest.mark.slow
def test_submitit_local_gives_the_same_numbers_as_the_default_launcher(cli, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    grid = ["lr=1e-2,1e-1", "num_mc=1,4", "seed=0", "steps=40", "log_every=10", "d=3"]
    default = cli("multirun", *grid, f"hydra.sweep.dir={tmp_path / 'default'}")
    assert default.returncode == 0, default.stderr
    submitit = cli("multirun", *grid, "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'submitit'}")
    assert submitit.returncode == 0, submitit.stderr

    def load(root):
        frames = [pd.read_parquet(p) for p in sorted(root.glob("*/metrics.parquet"))]
        return pd.concat(frames).sort_values(["lr", "num_mc", "seed", "step"]).reset_index(drop=True)

    a, b = load(tmp_path / "default"), load(tmp_path / "submitit")
    assert len(a) == len(b) == 4 * len(row_steps(40, 10)[0])
    # The default launcher vmaps a group, submitit runs jobs one by one: equal to float32 round-off.
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-6)
