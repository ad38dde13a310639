"""A non-editable install: the wheel ships the configs, and the README's first command runs from anywhere.

The checkout keeps ``conf/`` at its top level; ``pip install .`` builds a wheel, which has no top
level, so the build copies ``conf/`` into ``vi_sweep/conf/`` (``setup.py``). Here a wheel is built
from a copy of this checkout, installed into a fresh virtual environment whose only view of the
test environment is its third-party packages (JAX, Hydra ... through a ``.pth`` line: the editable
vi_sweep is not visible there, its finder is never run), and ``python -m vi_sweep multirun`` -- the
default sweep and its report -- runs in an empty directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

NOT_SHIPPED = shutil.ignore_patterns(".git", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with vi_sweep installed from a wheel built from this checkout; its python."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SHIPPED)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(root / "dist"), str(source)])
    (wheel,) = (root / "dist").glob("vi_sweep-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)])
    return python


def test_the_wheel_ships_the_configs_inside_the_package(installed, tmp_path):
    code = "import vi_sweep.launch.config as c, hydra_plugins.vi_sweep_launcher as p; print(c.CONF_DIR); print(p.__file__)"
    conf_dir, plugin = run([str(installed), "-c", code], cwd=tmp_path).stdout.split()
    venv = installed.parent.parent
    assert Path(conf_dir).is_relative_to(venv) and Path(conf_dir, "config.yaml").is_file()
    assert Path(plugin).is_relative_to(venv)
    assert sorted(p.relative_to(conf_dir).as_posix() for p in Path(conf_dir).rglob("*.yaml")) == sorted(
        p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")
    )


def test_the_default_sweep_runs_from_an_empty_directory(installed, tmp_path):
    result = run([str(installed), "-m", "vi_sweep", "multirun"], cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    assert f"vi_sweep: 36 runs written to {sweep}" in result.stdout
    assert len(list(sweep.glob("*/metrics.parquet"))) == 36
    assert (sweep / "report" / "phase_map.png").is_file() and (sweep / "report" / "runs.csv").is_file()


def test_the_console_script_says_which_vi_sweep_it_is(installed, tmp_path):
    result = run([str(installed.parent / "vi-sweep"), "--version"], cwd=tmp_path)
    assert result.stdout.startswith("vi_sweep 0.1.0 (JAX ")
