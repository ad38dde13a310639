"""Planning a batched sweep: which jobs share a computation, which share a compiled program, and
how the runs of one program are cut into calls that fit a memory budget.

Three levels, from jobs to calls:

1. **Computations.** Jobs with the same :class:`~vi_sweep.core.trainer.TrainSpec` and the same traced
   values compute the same rows. For the exact objective the seed is irrelevant too (the
   closed-form KL never reads the key, and ``split_fields`` already drops ``num_mc`` and
   ``estimator``), so ``objective=exact`` jobs that differ only in seed, ``num_mc`` or
   ``estimator`` are computed once and their rows written to each job.
2. **Groups.** Computations with one spec run in one compiled program.
3. **Streams.** Within a group, MC runs with the same seed draw the same noise (the stream
   depends on the seed, num_mc and the draw's shape only, and the spec fixes the last two): they
   are laid out as streams x runs-per-stream, the noise drawn once per stream and step and
   broadcast to its runs (:func:`vi_sweep.core.trainer.make_stream_train`), with the same bits
   as each run drawing its own. :func:`runs_per_stream` picks the layout that pads least.
4. **Chunks.** A group larger than the memory budget is cut into equal chunks of whole stream
   pieces; the last one is padded by repeating a piece, so every chunk has the same shape and
   the program compiles once. A chunk's streams are also padded to a multiple of the device
   count so they can be sharded.

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
    """One compiled call: ``streams x runs_per_stream`` computations (positions in
    :attr:`Plan.computations`), stream by stream. ``padding`` marks the entries that only fill the
    shape (a repeat of a real one)."""

    spec: Any
    computations: tuple[int, ...]
    padding: tuple[bool, ...]
    runs_per_stream: int

    @property
    def size(self) -> int:
        return len(self.computations)

    @property
    def streams(self) -> int:
        return self.size // self.runs_per_stream

    @property
    def real(self) -> int:
        """Entries that are distinct work."""
        return self.size - sum(self.padding)

    @property
    def real_computations(self) -> list[int]:
        """The computations of the entries that are not padding, in layout order."""
        return [position for position, padding in zip(self.computations, self.padding) if not padding]


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


def stream_key(spec: Any, traced: Mapping[str, Any]) -> Hashable:
    """The noise stream a computation draws from: its seed for the MC objective; none for the
    exact objective, which draws nothing (each exact computation is its own stream)."""
    return traced["seed"] if spec.num_mc > 0 else None


def runs_per_stream(stream_sizes: Sequence[int], *, capacity: int, multiple_of: int, draw_weight: float) -> int:
    """The runs per stream piece that make a group cheapest.

    A group's streams (``stream_sizes`` computations each) are cut into pieces of R runs, padded
    to R; pieces are laid out ``capacity // R`` to a call, their count padded to a multiple of
    ``multiple_of`` (R is at most ``capacity // multiple_of``, so a call stays within the budget). The cost of a layout is its padded run slots plus ``draw_weight`` per piece
    (a piece draws its stream's noise once per step); the cheapest R wins, the larger on a tie.
    """
    best, best_cost = 1, math.inf
    for r in range(1, max(stream_sizes) + 1):
        if r > 1 and r * multiple_of > capacity:  # a call of one piece per device would break the budget
            break
        pieces = sum(-(-n // r) for n in stream_sizes)
        per_call = max(1, capacity // r)
        if pieces <= per_call:
            slots = _round_up(pieces, multiple_of)
        else:
            per_call = max(multiple_of, per_call - per_call % multiple_of)
            slots = per_call * -(-pieces // per_call)
        cost = slots * (r + draw_weight)
        if cost <= best_cost:
            best, best_cost = r, cost
    return best


def plan_sweep(
    jobs: Sequence[tuple[Any, Mapping[str, Any]]],
    *,
    max_batch_floats: int,
    max_runs_per_call: Optional[int] = None,
    multiple_of: int = 1,
    compiled_shapes: Optional[Mapping[Any, tuple[int, int]]] = None,
) -> Plan:
    """Deduplicate ``(spec, traced)`` jobs into computations, group them by spec, lay each group
    out in streams, cut it into chunks.

    ``compiled_shapes``: spec -> ``(streams, runs_per_stream)`` of a call its program was already
    compiled for (an earlier batch of the same sweep: a searching sweeper hands over a few
    trials at a time; :func:`compiled_shape`). A group that fits in one call of that shape is laid
    out in it, padded, so it runs on the compiled program instead of compiling another (a compile
    costs more than a few padded runs).
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
        streams: dict[Hashable, list[int]] = {}
        for position in positions:
            key = stream_key(spec, computations[position].traced)
            streams.setdefault(position if key is None else ("seed", key), []).append(position)
        capacity = chunk_size(
            len(positions), floats_per_run(spec), max_batch_floats=max_batch_floats, max_runs_per_call=max_runs_per_call, multiple_of=1
        )
        r = runs_per_stream([len(v) for v in streams.values()], capacity=capacity, multiple_of=multiple_of, draw_weight=1.0 if spec.num_mc else 0.0)
        compiled = (compiled_shapes or {}).get(spec)
        if compiled is not None and len(streams) <= compiled[0] and max(len(v) for v in streams.values()) <= compiled[1]:
            r = compiled[1]  # one call of the shape compiled before, padded
        pieces = [_padded(members_[i : i + r], r) for members_ in streams.values() for i in range(0, len(members_), r)]
        per_call = max(1, capacity // r)
        if compiled is not None and r == compiled[1] and len(pieces) <= compiled[0]:
            per_call = compiled[0]
        elif len(pieces) <= per_call:
            per_call = _round_up(len(pieces), multiple_of)
        else:
            per_call = max(multiple_of, per_call - per_call % multiple_of)
        for start in range(0, len(pieces), per_call):
            part = pieces[start : start + per_call]
            part = part + [(part[-1][0], (True,) * r)] * (per_call - len(part))
            chunks.append(Chunk(spec, sum((p[0] for p in part), ()), sum((p[1] for p in part), ()), r))
    return Plan(computations, list(members), chunks)


def compiled_shape(chunk: Chunk) -> tuple[int, int]:
    """The ``(streams, runs_per_stream)`` shape a chunk's program is compiled for (:func:`plan_sweep`'s ``compiled_shapes``)."""
    return chunk.streams, chunk.runs_per_stream


def _padded(positions: Sequence[int], size: int) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """``positions`` with its last entry repeated up to ``size``, and which entries are repeats."""
    extra = size - len(positions)
    return tuple(positions) + (positions[-1],) * extra, (False,) * len(positions) + (True,) * extra
