"""Finding the sweep to analyse from wherever a notebook's kernel runs (vi_sweep/analysis/locate.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vi_sweep.analysis import NoSweepError, SweepError, find_sweep, newest_sweep
from vi_sweep.analysis.locate import project_root
from tests.conftest import REPO


def make_sweep(folder: Path, *, written_at: int) -> Path:
    """A folder as a Hydra multirun leaves it (multirun.yaml, a job), ``multirun.yaml`` dated ``written_at``."""
    (folder / "0").mkdir(parents=True)
    (folder / "0" / "metrics.parquet").write_bytes(b"")
    marker = folder / "multirun.yaml"
    marker.write_text("hydra: {}\n")
    os.utime(marker, (written_at, written_at))
    return folder


@pytest.fixture
def project(tmp_path):
    """A project with three sweeps; the one written last is not the last in name order."""
    root = tmp_path / "project"
    (root / "analysis" / "notebooks").mkdir(parents=True)
    make_sweep(root / "outputs" / "multiruns" / "2026-01-01" / "10-00-00", written_at=1_000)
    make_sweep(root / "outputs" / "my_sweep", written_at=3_000)
    make_sweep(root / "outputs" / "multiruns" / "2026-01-02" / "09-00-00", written_at=2_000)
    return root


def test_the_newest_sweep_is_found_from_the_project_root_and_from_a_notebook_folder(project):
    assert newest_sweep(project) == project / "outputs" / "my_sweep"
    assert newest_sweep(project / "analysis" / "notebooks") == project / "outputs" / "my_sweep"


def test_the_newest_sweep_is_the_one_written_last_into(project):
    resumed = project / "outputs" / "multiruns" / "2026-01-01" / "10-00-00" / "multirun.yaml"
    os.utime(resumed, (4_000, 4_000))  # a rerun into the same directory rewrites multirun.yaml
    assert newest_sweep(project) == resumed.parent


def test_folders_inside_a_sweep_are_not_sweeps(project):
    sweep = project / "outputs" / "my_sweep"
    make_sweep(sweep / "baselines", written_at=9_000)  # (never written there; even so, not a sweep of its own)
    make_sweep(sweep / "0" / "nested", written_at=9_000)
    make_sweep(project / "outputs" / ".jax_cache" / "x", written_at=9_000)
    assert newest_sweep(project) == sweep


def test_no_sweep_yet_is_one_line_that_says_what_to_run(tmp_path):
    (tmp_path / "conf").mkdir()  # a fresh checkout: no outputs/ yet
    (tmp_path / "conf" / "config.yaml").write_text("defaults: []\n")
    (tmp_path / "pyproject.toml").write_text("")
    with pytest.raises(NoSweepError) as raised:
        newest_sweep(tmp_path)
    assert str(raised.value) == f"no sweep under {tmp_path / 'outputs'}: run `python -m vi_sweep multirun` first"
    assert raised.value._render_traceback_() == [f"NoSweepError: {raised.value}"]  # what IPython shows: one line


def test_find_sweep_takes_the_argument_then_vi_sweep_dir_then_the_newest(project, monkeypatch):
    notebooks = project / "analysis" / "notebooks"
    other = project / "outputs" / "multiruns" / "2026-01-01" / "10-00-00"
    monkeypatch.delenv("VI_SWEEP_DIR", raising=False)
    assert find_sweep(start=notebooks) == project / "outputs" / "my_sweep"
    monkeypatch.setenv("VI_SWEEP_DIR", str(other))
    assert find_sweep(start=notebooks) == other
    assert find_sweep(project / "outputs" / "multiruns" / "2026-01-02" / "09-00-00", start=notebooks).name == "09-00-00"


def test_a_relative_sweep_dir_is_taken_from_the_working_directory_else_from_the_project_root(project, monkeypatch):
    notebooks = project / "analysis" / "notebooks"
    monkeypatch.chdir(notebooks)
    assert find_sweep("outputs/my_sweep") == project / "outputs" / "my_sweep"  # as typed at the repository root
    assert find_sweep("../../outputs/my_sweep") == project / "outputs" / "my_sweep"
    with pytest.raises(SweepError, match=r"^sweep directory outputs/nope does not exist \(looked in "):
        find_sweep("outputs/nope")


def test_a_folder_outside_any_project_falls_back_to_the_checkout_vi_sweep_runs_from(tmp_path):
    (tmp_path / "outputs" / ".jax_cache").mkdir(parents=True)  # some other run's outputs/, without a sweep
    assert project_root(tmp_path) == REPO
