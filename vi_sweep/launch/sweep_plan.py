"""Planning a batched sweep: which jobs share a computation, which share a compiled program, and
how the runs of one program are cut into calls that fit a memory budget.

Three levels, from jobs to calls:

1. **Computations.** Jobs with the same :class:`~vi_sweep.core.trainer.TrainSpec` and the same traced
   values compute the same rows. For the exact objective the seed is irrelevant too (the
   closed-form KL never reads the key, and ``split_fields`` already drops ``num_mc`` and
   ``estimator``), so ``objective=exact`` jobs that differ only in seed, ``num_mc`` or
   ``estimator`` are computed once and their rows written to each job.
2. **Groups.** Computations with one spec run in one ``jit(vmap(train))`` program.
3. **Chunks.** A group larger than the memory budget is cut into equal chunks; the last one is
   padded by repeating a run so every chunk has the same batch shape and the program compiles
   once. A chunk is also padded to a multiple of the device count so it can be sharded.

Pure Python: no JAX, no Hydra (the trainer's specs are only read).
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, NamedTuple, Optional, Sequence

from vi_sweep.core.schedule import max_rows

# Float32 values one run keeps alive per element of its (num_mc, d) draw and per coordinate:
# the draw, z and their cotangents, and the next step's draw carried in and out of the loop
# (6 per draw element); mu, log_sigma, their gradients, the
# optimizer's moments and the where-selected copies of the divergence guard (16 per coordinate).
FLOATS_PER_DRAW = 6
FLOATS_PER_COORDINATE = 16
ROW_COLUMNS = 11  # fields of vi_sweep.core.trainer.Rows


class Computation(NamedTuple):
    """One distinct training run and the jobs that receive its rows."""

    spec: Any  # vi_sweep.core.trainer.TrainSpec
    traced: Mapping[str, Any]
    jobs: tuple[int, ...]  # positions in the job list given to plan_sweep


class Chunk(NamedTuple):
    """One compiled call: ``computations`` (positions in :attr:`Plan.computations`), padded."""

    spec: Any
    computations: tuple[int, ...]
    real: int  # the first ``real`` entries are distinct work; the rest repeat the last one

    @property
    def size(self) -> int:
        return len(self.computations)


class Plan(NamedTuple):
    computations: list[Computation]
    groups: list[Any]  # distinct specs in order of first appearance
    chunks: list[Chunk]  # grouped by spec, in the order of ``groups``


def computation_key(spec: Any, traced: Mapping[str, Any]) -> Hashable:
    """What determines a run's rows: the spec and the traced values (minus the seed for ``exact``)."""
    values = dict(traced)
    if spec.objective == "exact":
        values.pop("seed", None)
    return spec, _freeze(values)


def _freeze(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    return value


def floats_per_run(spec: Any) -> int:
    """A float32 count proportional to one run's working set inside a batched call.

    ``6 * num_mc * d + 16 * d + 11 * rows`` (rows: at most :func:`vi_sweep.core.schedule.max_rows`): see :data:`FLOATS_PER_DRAW` and
    :data:`FLOATS_PER_COORDINATE`. An estimate for budgeting, not an exact allocation count.
    """
    rows = max_rows(spec.steps, spec.log_every)
    return FLOATS_PER_DRAW * spec.num_mc * spec.d + FLOATS_PER_COORDINATE * spec.d + ROW_COLUMNS * rows


BYTES_PER_FLOAT = 4  # float32


class SizeError(ValueError):
    """A run too large for the memory it would run in; the message is one line naming it."""


def bytes_per_run(spec: Any) -> int:
    """The working-set estimate of one run (:func:`floats_per_run`) in bytes."""
    return BYTES_PER_FLOAT * floats_per_run(spec)


def check_fits(spec: Any, available_bytes: Optional[int], name: str) -> None:
    """Raise :class:`SizeError` naming the run (``name``) if one run of ``spec`` needs more than ``available_bytes``."""
    need = bytes_per_run(spec)
    if available_bytes is None or need <= available_bytes:
        return
    from vi_sweep.host import format_bytes

    rows = max_rows(spec.steps, spec.log_every)
    raise SizeError(
        f"{name} needs about {format_bytes(need)} of memory (d={spec.d}, num_mc={spec.num_mc}, up to {rows} rows), "
        f"more than the {format_bytes(available_bytes)} available here"
    )


def chunk_size(
    n_runs: int,
    per_run: int,
    *,
    max_batch_floats: int,
    max_runs_per_call: Optional[int] = None,
    multiple_of: int = 1,
) -> int:
    """Runs per call for a group of ``n_runs``: as many as the budget allows, a multiple of the devices.

    A group that fits in one call is padded *up* to the next multiple of ``multiple_of`` (at most
    ``multiple_of - 1`` extra runs); a group that needs several calls is cut *down* to a multiple
    so each call stays within the budget. At least ``multiple_of`` runs per call (one per device)
    even when a single run exceeds the budget.
    """
    cap = min(n_runs, max(1, max_batch_floats // max(per_run, 1)))
    if max_runs_per_call is not None:
        cap = min(cap, max_runs_per_call)
    cap = max(cap, 1)
    if cap == n_runs:
        return _round_up(cap, multiple_of)
    return max(multiple_of, cap - cap % multiple_of)


def _round_up(n: int, multiple: int) -> int:
    return multiple * math.ceil(n / multiple)


def plan_sweep(
    jobs: Sequence[tuple[Any, Mapping[str, Any]]],
    *,
    max_batch_floats: int,
    max_runs_per_call: Optional[int] = None,
    multiple_of: int = 1,
    compiled_sizes: Optional[Mapping[Any, int]] = None,
) -> Plan:
    """Deduplicate ``(spec, traced)`` jobs into computations, group them by spec, cut groups into chunks.

    ``compiled_sizes``: spec -> a chunk size its program was already compiled for (an earlier
    batch of the same sweep: a searching sweeper hands over a few trials at a time). A group that
    fits in one smaller chunk is padded up to that size, so it runs on the compiled program
    instead of compiling another (a compile costs more than a few padded runs).
    """
    computations: list[Computation] = []
    index: dict[Hashable, int] = {}
    for job, (spec, traced) in enumerate(jobs):
        key = computation_key(spec, traced)
        if key in index:
            c = computations[index[key]]
            computations[index[key]] = c._replace(jobs=c.jobs + (job,))
        else:
            index[key] = len(computations)
            computations.append(Computation(spec, traced, (job,)))

    members: dict[Any, list[int]] = {}
    for position, computation in enumerate(computations):
        members.setdefault(computation.spec, []).append(position)

    chunks: list[Chunk] = []
    for spec, positions in members.items():
        size = chunk_size(
            len(positions),
            floats_per_run(spec),
            max_batch_floats=max_batch_floats,
            max_runs_per_call=max_runs_per_call,
            multiple_of=multiple_of,
        )
        compiled = (compiled_sizes or {}).get(spec, 0)
        if size < compiled and len(positions) <= size:
            size = compiled
        for start in range(0, len(positions), size):
            part = positions[start : start + size]
            padded = tuple(part) + (part[-1],) * (size - len(part))
            chunks.append(Chunk(spec, padded, len(part)))
    return Plan(computations, list(members), chunks)
