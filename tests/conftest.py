"""Shared fixtures: a CLI runner (a real subprocess, as a user runs it) and the repo paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _keep_absl_off_pytests_capture() -> None:
    """absl (JAX imports it) gives its handler whatever ``sys.stderr`` is when it is imported: under
    pytest, the session's capture stream. Hydra's logging setup closes every handler ever made
    (``logging.config``), and absl's handler closes its stream unless it is ``sys.stderr`` at
    that moment -- which, in a test using ``capsys``, it is not. The capture closed, the next
    write ends the session ("lost sys.stderr"). Seen when ``main()`` ran in-process after a test
    that started JAX (``pytest tests/test_store.py tests/test_cli.py``)."""
    try:
        import absl.logging
    except ImportError:  # no absl, no such handler
        return
    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


_keep_absl_off_pytests_capture()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m vi_sweep ARGS`` in a subprocess and capture its output."""
    full_env = dict(os.environ)
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vi_sweep", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def cli():
    return run_cli
