"""The one build step pyproject.toml cannot say: the configs ship inside the wheel.

The repository keeps Hydra's configs at its top level (``conf/``, next to ``vi_sweep/``), where a
source checkout and an editable install read them. A wheel has no top level: building one copies
``conf/`` into the package as ``vi_sweep/conf/``, where :func:`vi_sweep.launch.config.find_conf_dir`
looks first. Everything else about the build is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConfigs(build_py):
    """``build_py``, then ``conf/`` -> ``<build>/vi_sweep/conf/`` (not for an editable install,
    which reads ``conf/`` where it is)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "vi_sweep" / "conf"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CONF, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConfigs})
