"""Sweep planning: deduplication, grouping by compiled shape, chunking within a budget."""

from __future__ import annotations

import pytest

from vi_sweep.core.schedule import row_steps

from vi_sweep.launch.sweep_plan import chunk_size, compiled_shape, floats_per_run, plan_sweep, runs_per_stream
from vi_sweep.core.trainer import split_fields
from tests.sweeps import flat_fields


fields = flat_fields


def jobs(*many):
    return [split_fields(f) for f in many]


def test_exact_jobs_differing_only_in_seed_num_mc_or_estimator_are_computed_once():
    grid = [fields(objective="exact", seed=s, num_mc=m, estimator=e, lr=lr) for s in (0, 1, 2) for m in (1, 8) for e in ("reparam", "stl") for lr in (0.1, 0.2)]
    plan = plan_sweep(jobs(*grid), max_batch_floats=10**9)
    assert len(plan.computations) == 2  # one per lr
    assert sorted(j for c in plan.computations for j in c.jobs) == list(range(len(grid)))
    for c in plan.computations:
        assert {grid[j]["lr"] for j in c.jobs} == {c.traced["lr"]}


def test_mc_jobs_with_different_seeds_are_distinct_and_identical_jobs_are_shared():
    grid = [fields(seed=0), fields(seed=1), fields(seed=0)]
    plan = plan_sweep(jobs(*grid), max_batch_floats=10**9)
    assert [c.jobs for c in plan.computations] == [(0, 2), (1,)]


def test_groups_follow_the_compiled_shape_in_order_of_appearance():
    grid = [fields(num_mc=1), fields(num_mc=4), fields(num_mc=1, lr=0.3), fields(num_mc=4, d=11), fields(optimizer_grad_clip=1.0)]
    plan = plan_sweep(jobs(*grid), max_batch_floats=10**9)
    assert [(g.num_mc, g.d) for g in plan.groups] == [(1, 10), (4, 10), (4, 11), (4, 10)]
    assert [c.real for c in plan.chunks] == [2, 1, 1, 1]
    assert all(len({plan.computations[i].spec for i in c.computations}) == 1 for c in plan.chunks)


def test_a_group_over_budget_is_cut_into_equal_padded_chunks():
    grid = [fields(seed=s) for s in range(10)]
    spec = split_fields(grid[0])[0]
    per_run = floats_per_run(spec)
    plan = plan_sweep(jobs(*grid), max_batch_floats=4 * per_run)
    assert [c.size for c in plan.chunks] == [4, 4, 4]  # one compiled shape
    assert [c.real for c in plan.chunks] == [4, 4, 2]
    assert plan.chunks[-1].computations == (8, 9, 9, 9)  # padded by repeating the last run
    assert [i for c in plan.chunks for i in c.computations[: c.real]] == list(range(10))


def test_floats_per_run_counts_draws_coordinates_and_rows():
    spec = split_fields(fields(num_mc=8, d=100, steps=1000, log_every=100))[0]
    rows = 1000 // 100 + 2 + 2 * 64  # the logged rows, the last step, and at most 2 x 64 tail probes
    assert floats_per_run(spec) == 6 * 8 * 100 + 16 * 100 + 11 * rows
    assert rows >= len(row_steps(1000, 100)[0])


@pytest.mark.parametrize(
    "n, per_run, budget, cap, devices, expected",
    [
        (60, 10, 10**6, None, 1, 60),  # fits: one call
        (60, 10, 10**6, None, 2, 60),
        (61, 10, 10**6, None, 2, 62),  # fits: padded up to a multiple of the devices
        (60, 10, 250, None, 1, 25),  # over budget: 25 runs per call
        (60, 10, 250, None, 2, 24),  # ... cut down to a multiple of the devices
        (60, 10, 10**6, 7, 1, 7),  # the per-call cap
        (60, 10**9, 10, None, 1, 1),  # one run over budget still runs, alone
        (60, 10**9, 10, None, 4, 4),  # ... one per device
        (3, 10, 10**6, None, 8, 8),  # more devices than runs: pad
    ],
)
def test_chunk_size(n, per_run, budget, cap, devices, expected):
    assert chunk_size(n, per_run, max_batch_floats=budget, max_runs_per_call=cap, multiple_of=devices) == expected


def test_runs_with_one_seed_share_a_stream_and_streams_are_sharded():
    grid = [fields(seed=s, lr=lr) for s in range(5) for lr in (0.01, 0.03, 0.1, 0.3)]
    plan = plan_sweep(jobs(*grid), max_batch_floats=10**9, multiple_of=2)
    (chunk,) = plan.chunks
    assert chunk.runs_per_stream == 4 and chunk.streams == 6  # 5 seeds, padded to a multiple of 2 devices
    layout = [plan.computations[i].traced["seed"] for i in chunk.computations]
    assert layout == [s for s in (0, 1, 2, 3, 4, 4) for _ in range(4)]  # stream by stream
    assert chunk.padding == (False,) * 20 + (True,) * 4 and chunk.real == 20
    assert sorted(i for i, pad in zip(chunk.computations, chunk.padding) if not pad) == list(range(20))


def test_exact_runs_draw_nothing_and_are_laid_out_one_per_stream():
    grid = [fields(objective="exact", lr=lr) for lr in (0.01, 0.03, 0.1)]
    (chunk,) = plan_sweep(jobs(*grid), max_batch_floats=10**9, multiple_of=2).chunks
    assert chunk.runs_per_stream == 1 and chunk.size == 4 and chunk.real == 3


def test_stream_pieces_fit_the_budget_and_pad_least():
    # One seed, 12 lr values, a budget of 4 runs a call, 2 devices: pieces of 2 runs, 2 pieces a call.
    grid = [fields(seed=0, lr=0.01 * (k + 1)) for k in range(12)]
    spec = split_fields(grid[0])[0]
    plan = plan_sweep(jobs(*grid), max_batch_floats=4 * floats_per_run(spec), multiple_of=2)
    assert {c.size for c in plan.chunks} == {4} and all(c.streams % 2 == 0 for c in plan.chunks)
    assert sum(c.real for c in plan.chunks) == 12
    assert runs_per_stream([6, 6, 6, 6], capacity=100, multiple_of=2, draw_weight=1.0) == 6  # 4 streams on 2 devices
    assert runs_per_stream([6, 6, 6], capacity=100, multiple_of=2, draw_weight=1.0) == 3  # 3 on 2: halves pad less than a whole stream
    assert runs_per_stream([1] * 10, capacity=100, multiple_of=2, draw_weight=1.0) == 1
    assert runs_per_stream([6], capacity=100, multiple_of=2, draw_weight=1.0) == 3  # one stream of 6 on 2 devices: 2 pieces of 3


def test_a_later_batch_that_fits_a_compiled_shape_is_padded_to_it():
    """A searching sweeper hands over a few trials at a time: a batch that fits in a call shape
    compiled for an earlier batch runs in that shape (padded), so the search compiles once."""
    first = plan_sweep(jobs(*[fields(seed=0, lr=0.01 * (k + 1)) for k in range(8)]), max_batch_floats=10**9, multiple_of=2)
    (compiled,) = first.chunks
    shapes = {compiled.spec: compiled_shape(compiled)}
    assert shapes[compiled.spec] == (compiled.streams, compiled.runs_per_stream)
    later = plan_sweep(jobs(*[fields(seed=0, lr=0.5 + k) for k in range(3)]), max_batch_floats=10**9, multiple_of=2, compiled_shapes=shapes)
    (chunk,) = later.chunks
    assert compiled_shape(chunk) == shapes[compiled.spec] and chunk.real == 3
    # A batch that does not fit (more streams than compiled) is planned on its own.
    wider = plan_sweep(jobs(*[fields(seed=s, lr=0.5) for s in range(5)]), max_batch_floats=10**9, multiple_of=2, compiled_shapes=shapes)
    assert [compiled_shape(c) for c in wider.chunks] != [shapes[compiled.spec]] and sum(c.real for c in wider.chunks) == 5


def test_the_memory_budget_defaults_to_small_calls_on_cpu_and_large_ones_on_accelerators():
    from vi_sweep.launch.options import BatchedLauncherConf

    assert BatchedLauncherConf().batch_floats("cpu") == 2**23  # enough runs to keep every core busy, little memory
    assert BatchedLauncherConf().batch_floats("gpu") == BatchedLauncherConf().batch_floats("tpu") == 2**27
    assert BatchedLauncherConf(max_batch_floats=1000).batch_floats("gpu") == 1000  # a value given wins
