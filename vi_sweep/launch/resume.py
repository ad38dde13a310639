"""Resume: which jobs of a sweep are already on disk, and the Hydra result that stands for them.

A job is finished when its ``<job dir>/metrics.parquet`` is complete and records the job's own
flat fields (:func:`vi_sweep.store.metrics.read_fields`); such a job is not recomputed and not
rewritten, and the launcher returns a COMPLETED :class:`~hydra.core.utils.JobReturn` for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from vi_sweep.store.metrics import METRICS_FILE, read_fields


def completed_summary(out_dir: Path, fields: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The summary of ``out_dir``'s finished ``metrics.parquet`` if it records ``fields``, else None."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return None
    if read_fields(path) != json.loads(json.dumps(dict(fields))):
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["kl", "diverged_at"])
    diverged_at = table.column("diverged_at")[-1].as_py() or 0
    return {
        "status": "diverged" if diverged_at else "ok",
        "diverged_at": int(diverged_at),
        "final_kl": float(table.column("kl")[-1].as_py()),
        "metrics": str(path),
    }


def resumed_return(cfg: DictConfig, summary: dict[str, Any]) -> JobReturn:
    """A COMPLETED :class:`JobReturn` (as ``run_job`` would build it) for a job already on disk."""
    ret = JobReturn(
        overrides=list(OmegaConf.to_container(cfg.hydra.overrides.task)),
        cfg=OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]),
        hydra_cfg=OmegaConf.masked_copy(cfg, ["hydra"]),
        working_dir=os.getcwd(),
        task_name=str(cfg.hydra.job.name),
        status=JobStatus.COMPLETED,
    )
    ret.return_value = summary
    return ret
