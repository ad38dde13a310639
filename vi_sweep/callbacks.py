"""Hydra callbacks. Picklable (submitit ships them to workers), light at import (no JAX)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vi_sweep.results import METRICS_FILE


class SweepSummary(Callback):
    """At the end of a multirun, say where the sweep was written and how many jobs it holds.

    ``on_multirun_end`` receives no job results, so it scans ``hydra.sweep.dir``.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        jobs = len(list(sweep_dir.glob(f"*/{METRICS_FILE}")))
        print(f"vi_sweep: {jobs} runs written to {sweep_dir}", flush=True)
