"""Finding a project's sweeps from wherever a notebook or script runs.

A notebook's kernel starts in the notebook's folder (Jupyter, ``jupyter nbconvert --execute``) or
in the folder papermill was started from, while sweeps live under the ``outputs/`` of the folder
``python -m vi_sweep multirun`` ran in -- usually the repository root. So paths are never taken
relative to the working directory alone: :func:`project_root` walks up from it to the project,
and :func:`find_sweep` resolves what the user asked for in this order:

1. a sweep directory given explicitly (relative paths: from the working directory, else from
   the project root);
2. the environment variable ``VI_SWEEP_DIR`` (same rules);
3. the newest sweep under the project's ``outputs/`` (:func:`newest_sweep`).

A **sweep** is a directory a Hydra multirun wrote: it holds Hydra's ``multirun.yaml`` (every
launcher writes it; resuming into the directory rewrites it). The newest is the one whose
``multirun.yaml`` was written last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from vi_sweep.analysis.read import SweepError

SWEEP_DIR_ENV = "VI_SWEEP_DIR"
SWEEP_MARKER = "multirun.yaml"  # Hydra writes it into every multirun's sweep directory
OUTPUTS = "outputs"
NOT_SWEEPS = ("baselines", "report")  # folders inside a sweep that hold no sweep (hidden ones are skipped too)


class NoSweepError(SweepError):
    """The project has no sweep yet (the message says which folder was searched and what to run)."""


def is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is a vi_sweep checkout: ``pyproject.toml`` next to Hydra's ``conf/config.yaml``."""
    return (folder / "pyproject.toml").is_file() and (folder / "conf" / "config.yaml").is_file()


def installed_checkout() -> Path | None:
    """The checkout this vi_sweep is imported from (an editable install), or None (a wheel)."""
    folder = Path(__file__).resolve().parents[2]
    return folder if is_checkout(folder) else None


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The project folder for ``start`` (default: the working directory).

    The nearest folder at or above ``start`` that is a vi_sweep checkout or whose ``outputs/``
    holds a sweep; failing that, the checkout vi_sweep is installed from; failing that, ``start``.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder) or next(sweeps_under(folder / OUTPUTS), None) is not None:
            return folder
    return installed_checkout() or here


def sweeps_under(outputs: Path) -> Iterator[Path]:
    """Every sweep directory below ``outputs`` (not looking inside a sweep, nor into hidden folders)."""
    for folder, subfolders, files in os.walk(outputs):
        if SWEEP_MARKER in files:
            subfolders.clear()  # a sweep's job folders hold no sweeps: ~10,000 of them need not be listed
            yield Path(folder)
        else:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in NOT_SWEEPS)


def newest_sweep(start: str | os.PathLike | None = None) -> Path:
    """The sweep under the project's ``outputs/`` whose ``multirun.yaml`` was written last.

    Raises :class:`NoSweepError` (one line: where it looked, what to run) if there is none.
    """
    outputs = project_root(start) / OUTPUTS
    found = [((path / SWEEP_MARKER).stat().st_mtime_ns, path) for path in sweeps_under(outputs)] if outputs.is_dir() else []
    if not found:
        raise NoSweepError(f"no sweep under {outputs}: run `python -m vi_sweep multirun` first")
    return max(found)[1]  # ties (same timestamp): the last path in sorted order


def resolve_sweep_dir(path: str | os.PathLike, start: str | os.PathLike | None = None) -> Path:
    """``path`` as given if it exists (absolute, or relative to the working directory), else relative
    to the project root; raises :class:`SweepError` naming it if neither exists."""
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [Path(start or Path.cwd()) / given, project_root(start) / given]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise SweepError(f"sweep directory {path} does not exist (looked in {', '.join(str(c.parent) for c in candidates)})")


def find_sweep(sweep_dir: str | os.PathLike | None = None, *, start: str | os.PathLike | None = None) -> Path:
    """The sweep to analyse: ``sweep_dir`` if given, else ``$VI_SWEEP_DIR``, else :func:`newest_sweep`.

    What a notebook's parameters cell feeds it: ``SWEEP_DIR = None`` finds the newest sweep of the
    project from wherever the kernel runs (see the module docstring).
    """
    chosen = sweep_dir if sweep_dir not in (None, "") else os.environ.get(SWEEP_DIR_ENV) or None
    if chosen is None:
        return newest_sweep(start)
    return resolve_sweep_dir(chosen, start)
