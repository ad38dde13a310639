"""The sweep's record of the cluster tasks it submitted, so that a rerun collects them.

A SLURM task outlives the launcher that submitted it: a launcher killed (SIGKILL, a lost login
session) leaves its tasks queued, running or finished, their results pickled by submitit. So the
submitit engine writes one JSON line per task to ``<sweep dir>/.submitit/tasks.jsonl`` right after
submitting, before it waits: the task's id, where its result and log go, the settings that decide
its numbers, and the key of each run it computes. A rerun reads these lines and takes every run
it still needs from a task that finished with a result or is still pending or running, and
submits only the rest (:func:`vi_sweep.launch.cluster.run_on_submitit`).

The file is only appended to; a line cut short by a kill is skipped when read. No submitit, Hydra
or JAX here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from vi_sweep.launch.sweep_plan import computation_key

LEDGER_FILE = Path(".submitit") / "tasks.jsonl"


class RecordedTask(NamedTuple):
    """One submitted task, as a line of the ledger."""

    job_id: str  # SLURM's id: "12" or an array task "12_3"
    result_file: str  # submitit's pickle of the task's outcome
    log_file: str  # the task's stderr
    settings: dict[str, Any]  # what decides the task's numbers (see cluster.bits_settings)
    runs: tuple[str, ...]  # computation_id of each slot the task computes, in slot order


def computation_id(spec: Any, traced: Mapping[str, Any]) -> str:
    """A run's identity as text: what determines its rows (:func:`vi_sweep.launch.sweep_plan.computation_key`)."""
    return json.dumps(computation_key(spec, traced))


def ledger_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / LEDGER_FILE


def record_tasks(sweep_dir: Path, tasks: Sequence[RecordedTask]) -> None:
    """Append ``tasks`` to the ledger and make them durable before the launcher starts waiting."""
    path = ledger_path(sweep_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as ledger:
        for task in tasks:
            ledger.write(json.dumps(task._asdict()) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())


def recorded_tasks(sweep_dir: Path) -> list[RecordedTask]:
    """Every task the ledger holds, oldest first (none when there is no ledger)."""
    path = ledger_path(sweep_dir)
    if not path.exists():
        return []
    tasks = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            tasks.append(RecordedTask(**{**entry, "runs": tuple(entry["runs"])}))
        except (json.JSONDecodeError, TypeError, KeyError):  # a line cut short by a kill
            continue
    return tasks
