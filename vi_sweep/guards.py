"""Fail early and in one line when the output directory cannot be written.

Hydra creates the run (or sweep) directory itself and reports an ``OSError`` there with a stack
trace. This callback creates it first, at ``on_run_start``/``on_multirun_start``, and turns a
failure into one line naming the directory, exit code 2, before anything is computed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def ensure_writable_dir(path: str | Path, what: str) -> None:
    """Create ``path`` (and parents) and prove it writable; exit 2 with one line if not."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".vi_sweep_write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        print(f"vi_sweep: error: {what} {directory} is not writable: {reason}", file=sys.stderr, flush=True)
        sys.exit(2)


class OutputDirGuard(Callback):
    """Checks ``hydra.run.dir`` (run) or ``hydra.sweep.dir`` (multirun) before any job starts."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        ensure_writable_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        ensure_writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
