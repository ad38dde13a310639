"""What SLURM says about submitted tasks: live or ended, and why a pending one may never start.

The batched launcher's submitit engine waits on SLURM through these queries rather than through
submitit's own watcher, which reads ``sacct`` only: without accounting ``sacct`` fails, and a
task that ended without writing its result was never seen to end. ``squeue --states=all`` lists
every pending and running job, and ended ones for ``MinJobAge`` (300 s by default) after they
end, with their final state; ``sacct`` is asked only about jobs squeue no longer lists. So a
task is known to have ended as soon as squeue stops calling it live, accounting or not; only
the *state* of a task that ended long before anyone looked needs accounting.

No submitit, Hydra or JAX here: parsing is pure, and the queries are plain ``subprocess`` calls.
"""

from __future__ import annotations

import subprocess
from typing import Iterable, Mapping, NamedTuple

# squeue's states of a job that may still run (everything else has ended).
LIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
     "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED"}
)

# Reasons of a PENDING job that no amount of waiting changes: only a new request (or an admin)
# can. SLURM accepts such jobs when EnforcePartLimits is off (its default). Reasons such as
# Resources, Priority, ReqNodeNotAvail or *Limit on running jobs clear up by themselves.
NEVER_START_REASONS: Mapping[str, str] = {
    "PartitionConfig": "more CPUs, memory or GPUs than the partition's nodes have",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "timeout_min above the partition's MaxTime",
    "BadConstraints": "constraints or resources no node can meet",
    "InvalidAccount": "an account this user cannot use",
    "InvalidQOS": "a QOS this user cannot use",
    "QOSMaxCpuPerJobLimit": "more CPUs than the QOS allows a job",
    "QOSMaxMemoryPerJob": "more memory than the QOS allows a job",
    "QOSMaxGRESPerJob": "more GPUs than the QOS allows a job",
    "QOSMaxWallDurationPerJobLimit": "timeout_min above the QOS's limit",
    "AssocMaxCpuPerJobLimit": "more CPUs than the account allows a job",
    "AssocMaxWallDurationPerJobLimit": "timeout_min above the account's limit",
}

UNKNOWN = "UNKNOWN"  # neither squeue nor sacct knows the job (no accounting, or purged)


class TaskState(NamedTuple):
    """One task's state as SLURM reports it (``state`` as squeue or sacct spell it)."""

    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, FAILED, ... or UNKNOWN
    reason: str = "None"  # squeue's %r: why a pending job waits (or ended), "None" when nothing to say

    @property
    def live(self) -> bool:
        return self.state.split()[0] in LIVE_STATES

    @property
    def never_starts(self) -> bool:
        return self.state == "PENDING" and self.reason in NEVER_START_REASONS


def parse_squeue(text: str) -> dict[str, TaskState]:
    """``squeue --array --format=%i|%T|%r`` lines -> task id -> state."""
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = TaskState(parts[1], parts[2])
    return states


def parse_sacct(text: str) -> dict[str, TaskState]:
    """``sacct --allocations --parsable2 --noheader --format=JobID,State`` lines -> task id -> state.

    Steps (``12_0.batch``) are skipped; pending array ranges (``12_[1-3]``) too: squeue lists those.
    """
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 2 and parts[0] and "." not in parts[0] and "[" not in parts[0]:
            states[parts[0]] = TaskState(parts[1])
    return states


def array_ids(task_ids: Iterable[str]) -> list[str]:
    """The job ids to ask SLURM about: ``12_3`` belongs to job 12."""
    return sorted({task_id.split("_")[0] for task_id in task_ids})


def task_states(task_ids: Iterable[str]) -> dict[str, TaskState]:
    """State of each task id (``12`` or an array task ``12_3``), from squeue, else sacct, else UNKNOWN.

    Empty when squeue cannot answer now (e.g. the controller is restarting): no task is taken
    for ended on a failed query.
    """
    wanted = list(task_ids)
    if not wanted:
        return {}
    jobs = ",".join(array_ids(wanted))
    squeue = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r", f"--jobs={jobs}"], capture_output=True, text=True
    )
    if squeue.returncode != 0 and "Invalid job id" not in squeue.stderr:
        return {}
    # squeue fails with "Invalid job id specified" when it knows none of them: they ended long ago.
    known = parse_squeue(squeue.stdout) if squeue.returncode == 0 else {}
    missing = [task_id for task_id in wanted if task_id not in known]
    if missing:
        sacct = subprocess.run(
            ["sacct", "--allocations", "--parsable2", "--noheader", "--format=JobID,State", f"--jobs={','.join(array_ids(missing))}"],
            capture_output=True, text=True,
        )
        if sacct.returncode == 0:  # without accounting sacct fails: those states stay unknown
            known.update({task_id: state for task_id, state in parse_sacct(sacct.stdout).items() if task_id not in known})
    return {task_id: known.get(task_id, TaskState(UNKNOWN)) for task_id in wanted}


def cancel(task_ids: Iterable[str]) -> None:
    """``scancel`` the tasks (quietly: some may have ended meanwhile)."""
    ids = sorted(set(task_ids))
    if ids:
        subprocess.run(["scancel", "--quiet", *ids], capture_output=True)
