"""The store's tables: one compact table for many runs holds exactly what their own files hold."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vi_sweep.store.metrics import METRIC_TYPES, compact_table, metrics_table


def rows_of(steps: int, offset: float) -> dict[str, np.ndarray]:
    rows = {name: np.full(steps, offset + index, np.float32) for index, name in enumerate(METRIC_TYPES)}
    rows["step"] = np.arange(steps, dtype=np.int32) * 10
    rows["probe"] = np.arange(steps) % 2 == 0
    rows["diverged"] = np.arange(steps) > steps - 2
    return rows


ADAM = {"lr": 0.1, "num_mc": 4, "seed": 0, "optimizer": "adam", "optimizer_b1": 0.9, "optimizer_grad_clip": None}
SGD = {"lr": 0.3, "num_mc": 1, "seed": 7, "optimizer": "sgd"}  # no b1: a null in the b1 column


def test_a_compact_table_is_the_runs_own_tables_stacked_under_their_job_numbers():
    runs = [
        (3, rows_of(4, 0.0), ADAM, 0, "none"),
        (10, rows_of(4, 1.5), SGD, 17, "seed_stress"),  # a diverged run in another scenario
        (12, rows_of(6, -2.0), {**ADAM, "seed": 5}, 0, "none"),  # another number of rows
    ]
    expected = pa.concat_tables(
        [metrics_table(rows, fields, diverged_at, scenario).add_column(0, "job", pa.array(np.full(len(rows["step"]), job, np.int64))) for job, rows, fields, diverged_at, scenario in runs]
    )
    table = compact_table(runs)
    assert table.schema == expected.schema
    assert table.equals(expected.combine_chunks())
    assert table.column("job").to_pylist() == [3] * 4 + [10] * 4 + [12] * 6
    assert all(column.num_chunks == 1 for column in table.columns)  # one chunk a column: a fast parquet write


def test_a_compact_params_file_left_without_its_jobs_file_gives_no_run_its_parameters(tmp_path):
    """A Ctrl-C (or kill -9) between a chunk's params file and its jobs file leaves the params file
    alone; job numbers it names may later hold other runs (an extension), which keep their own q."""
    from vi_sweep.analysis import load_params
    from vi_sweep.store.metrics import write_compact
    from vi_sweep.store.params import compact_params_files, write_compact_params

    fields = [{**ADAM, "d": 3, "seed": 0}, {**ADAM, "d": 3, "seed": 1}]
    table = compact_table([(job, rows_of(4, 0.0), fields[job], 0, "none") for job in (0, 1)])
    write_compact_params(tmp_path, [(job, np.full(3, job, np.float32), np.zeros(3, np.float32)) for job in (0, 1)])
    write_compact(tmp_path, table, [{"job": job, "fields": fields[job], "scenario": "none", "overrides": []} for job in (0, 1)])
    # The interrupted chunk: jobs 0-2 of a d=2 sweep, parameters written, jobs file never.
    orphan = write_compact_params(tmp_path, [(job, np.full(2, 9.0, np.float32), np.zeros(2, np.float32)) for job in (0, 1, 2)])
    assert orphan.name == "params-000000-000002.parquet" and orphan not in compact_params_files(tmp_path)
    params = load_params(tmp_path).set_index("job")  # a job's name, as load_sweep gives it
    np.testing.assert_array_equal(params.loc["0", "mu"], np.zeros(3, np.float32))
    np.testing.assert_array_equal(params.loc["1", "mu"], np.ones(3, np.float32))
