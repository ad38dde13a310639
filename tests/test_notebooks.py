"""The notebooks of analysis/notebooks/ run as users run them: headless with ``jupyter nbconvert
--execute`` and with papermill, from the repository root and from their own folder, on a sweep of
the default grid's shape and on one over ``optimizer=adam,sgd objective.estimator=reparam,stl``.

Each execution is a real kernel (the venv's ``python3``) in a real subprocess; the sweeps are
small (d = 4, 200 steps) so that an execution takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from vi_sweep.analysis import load_sweep
from tests.conftest import REPO
from tests.sweeps import composed_fields, grid, write_sweep

pytestmark = pytest.mark.slow

NOTEBOOKS = REPO / "analysis" / "notebooks"
PHASE_MAP = NOTEBOOKS / "phase_map.ipynb"
TRAJECTORIES = NOTEBOOKS / "trajectories.ipynb"
SMALL = dict(d=4, steps=200, log_every=20)
AXES = {"lr": (0.01, 0.5), "num_mc": (1, 4), "seed": (0, 1)}


def as_multirun(sweep_dir: Path) -> Path:
    """Finish a test sweep as a multirun does: Hydra's ``multirun.yaml`` (what the notebooks look
    for) and the exact baselines in ``baselines/`` (trained with the jobs, so no kernel compiles)."""
    (sweep_dir / "multirun.yaml").write_text("# written by the tests where Hydra writes its own\n")
    load_sweep(sweep_dir)
    return sweep_dir


@pytest.fixture(scope="module")
def default_sweep(tmp_path_factory):
    """The default grid's shape (Adam, reparam, lr x num_mc x seed), small."""
    sweep_dir = tmp_path_factory.mktemp("default") / "sweep"
    write_sweep(sweep_dir, grid(dict(composed_fields(), **SMALL), AXES))
    return as_multirun(sweep_dir)


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory):
    """``optimizer=adam,sgd objective.estimator=reparam,stl`` over the same small lr x num_mc x seed."""
    sweep_dir = tmp_path_factory.mktemp("mixed") / "sweep"
    runs = [
        run
        for optimizer in ("adam", "sgd")
        for estimator in ("reparam", "stl")
        for run in grid(dict(composed_fields(f"optimizer={optimizer}", f"objective.estimator={estimator}"), **SMALL), AXES)
    ]
    write_sweep(sweep_dir, runs)
    return as_multirun(sweep_dir)


def kernel_env(sweep_dir: Path | None = None) -> dict[str, str]:
    """This interpreter's environment, its folder first on PATH (the ``python3`` kernel starts ``python``)."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("VI_SWEEP_DIR", None)
    if sweep_dir is not None:
        env["VI_SWEEP_DIR"] = str(sweep_dir)
    return env


def nbconvert(notebook: Path, *, cwd: Path, out_dir: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """``jupyter nbconvert --to notebook --execute NOTEBOOK`` as a user types it; return the executed notebook."""
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", str(notebook), "--output-dir", str(out_dir)]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return nbformat.read(out_dir / notebook.name, as_version=4)


def papermill(notebook: Path, *, cwd: Path, out: Path, parameters: dict, env: dict[str, str]) -> nbformat.NotebookNode:
    """``papermill NOTEBOOK OUT -y PARAMETERS`` (the tagged parameters cell); return the executed notebook."""
    command = [sys.executable, "-m", "papermill", str(notebook), str(out), "-k", "python3", "--no-progress-bar", "-y", json.dumps(parameters)]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return nbformat.read(out, as_version=4)


def outputs_of(notebook: nbformat.NotebookNode) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in outputs_of(notebook) if o.output_type == "stream")


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs_of(notebook))


def assert_ran_cleanly(notebook: nbformat.NotebookNode) -> None:
    assert not [o for o in outputs_of(notebook) if o.output_type == "error"]


@pytest.mark.parametrize("path", [PHASE_MAP, TRAJECTORIES], ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs_and_with_a_tagged_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code)
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and "SWEEP_DIR = None" in parameters[0].source and "FACET_BY = None" in parameters[0].source


def test_phase_map_notebook_with_nbconvert_from_the_repository_root(default_sweep, tmp_path):
    notebook = nbconvert(PHASE_MAP, cwd=REPO, out_dir=tmp_path, env=kernel_env(default_sweep))
    assert_ran_cleanly(notebook)
    assert f"sweep: {default_sweep}" in printed(notebook)
    assert images(notebook) == 2  # one facet: its phase map and its KL-excess heatmap


def test_phase_map_notebook_with_papermill_from_its_folder_facets_optimizers_and_estimators(mixed_sweep, tmp_path):
    parameters = {"SWEEP_DIR": str(mixed_sweep), "FACET_BY": ["optimizer", "estimator"]}
    notebook = papermill(PHASE_MAP, cwd=NOTEBOOKS, out=tmp_path / "out.ipynb", parameters=parameters, env=kernel_env())
    assert_ran_cleanly(notebook)
    text = printed(notebook)
    assert "4 facets by optimizer, estimator" in text
    assert "optimizer=sgd, estimator=stl" in text
    assert images(notebook) == 2 * 4


def test_trajectories_notebook_with_papermill_from_the_repository_root_compares_estimators_and_optimizers(mixed_sweep, tmp_path):
    notebook = papermill(TRAJECTORIES, cwd=REPO, out=tmp_path / "out.ipynb", parameters={"SWEEP_DIR": str(mixed_sweep)}, env=kernel_env())
    assert_ran_cleanly(notebook)
    text = printed(notebook)
    assert "lines: estimator, optimizer (4 series); panels: lr, num_mc (4 panels)" in text
    assert images(notebook) == 2  # KL excess, sigma


def test_trajectories_notebook_with_nbconvert_from_its_folder_on_the_default_grid(default_sweep, tmp_path):
    notebook = nbconvert(TRAJECTORIES, cwd=NOTEBOOKS, out_dir=tmp_path, env=kernel_env(default_sweep))
    assert_ran_cleanly(notebook)
    assert "lines: none (1 series); panels: lr, num_mc (4 panels)" in printed(notebook)


def copy_project(root: Path) -> Path:
    """A project folder of one's own: its notebooks, no checkout markers, and an outputs/ with sweeps."""
    shutil.copytree(NOTEBOOKS, root / "analysis" / "notebooks")
    return root


def test_notebooks_find_the_newest_sweep_of_their_project_from_wherever_they_run(default_sweep, mixed_sweep, tmp_path):
    root = copy_project(tmp_path / "project")
    older = shutil.copytree(default_sweep, root / "outputs" / "multiruns" / "2026-01-02" / "10-00-00")
    newer = shutil.copytree(mixed_sweep, root / "outputs" / "multiruns" / "2026-01-01" / "10-00-00")
    os.utime(older / "multirun.yaml", (1_000, 1_000))  # written first, though later in name order
    copied = root / "analysis" / "notebooks"
    # nbconvert runs the kernel in the notebook's folder; papermill in the folder it is started from.
    by_nbconvert = nbconvert(copied / "phase_map.ipynb", cwd=root, out_dir=tmp_path / "a", env=kernel_env())
    by_papermill = papermill(copied / "trajectories.ipynb", cwd=root, out=tmp_path / "b.ipynb", parameters={}, env=kernel_env())
    for notebook in (by_nbconvert, by_papermill):
        assert_ran_cleanly(notebook)
        assert f"sweep: {newer}" in printed(notebook)
    assert "4 facets by estimator, optimizer" in printed(by_nbconvert)  # by default: every swept key


def test_a_notebook_without_a_sweep_says_what_to_run_in_one_line(tmp_path, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    root = copy_project(tmp_path / "project")
    (root / "conf").mkdir()  # a fresh checkout: conf/, pyproject.toml, no outputs/ yet
    (root / "conf" / "config.yaml").write_text("defaults: []\n")
    (root / "pyproject.toml").write_text("")
    notebook = nbformat.read(root / "analysis" / "notebooks" / "phase_map.ipynb", as_version=4)
    monkeypatch.setenv("PATH", kernel_env()["PATH"])
    monkeypatch.delenv("VI_SWEEP_DIR", raising=False)
    # In process (nbclient, the engine under nbconvert), to read the error as the notebook shows it.
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root / "analysis" / "notebooks")}})
    with pytest.raises(CellExecutionError):
        client.execute()
    errors = [o for o in outputs_of(notebook) if o.output_type == "error"]
    assert [e.traceback for e in errors] == [[f"NoSweepError: no sweep under {root / 'outputs'}: run `python -m vi_sweep multirun` first"]]
