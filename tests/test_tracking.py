"""The MLflow tracker against real MLflow with a local store: one child run per job, its config as
params, its rows as metrics by step, its outcome and tail statistics, the report's figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vi_sweep.store.metrics import read_run_file

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")

GRID = ("lr=0.01,0.3", "num_mc=1,4", "seed=0", "d=5", "steps=200", "log_every=50", "grid=none")


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def children_and_parent(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([found.experiment_id], max_results=1000)
    children = {r.data.tags["vi_sweep.job_dir"]: r for r in runs if "vi_sweep.job_dir" in r.data.tags}
    parents = [r for r in runs if "vi_sweep.job_dir" not in r.data.tags]
    return children, parents


@pytest.fixture(scope="module")
def tracked_sweep(tmp_path_factory):
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep = root / "sweep"
    result = run_cli("multirun", *GRID, "hydra/callbacks=mlflow", f"hydra.callbacks.mlflow.tracking_uri={uri}",
                     "hydra.callbacks.mlflow.experiment=tracked", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    return client_for(uri), sweep


def test_one_child_run_per_job_with_its_config_as_params(tracked_sweep):
    client, sweep = tracked_sweep
    children, parents = children_and_parent(client, "tracked")
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.parquet"))
    assert sorted(children) == [str(j.resolve()) for j in jobs] and len(jobs) == 4
    assert len(parents) == 1 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children.values())
    for job in jobs:
        run = children[str(job.resolve())]
        fields = read_run_file(job / "metrics.parquet").fields
        assert run.info.status == "FINISHED"
        assert {k: run.data.params[k] for k in ("lr", "num_mc", "seed", "optimizer", "optimizer_b1")} == {
            k: str(fields[k]) for k in ("lr", "num_mc", "seed", "optimizer", "optimizer_b1")
        }


def test_each_runs_rows_are_its_metrics_by_step(tracked_sweep):
    client, sweep = tracked_sweep
    children, _ = children_and_parent(client, "tracked")
    for job, run in children.items():
        frame = pd.read_parquet(f"{job}/metrics.parquet")
        for column in ("kl_excess", "loss", "sigma_min"):
            history = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
            assert [m.step for m in history] == frame["step"].tolist()
            np.testing.assert_allclose([m.value for m in history], frame[column].to_numpy(float), rtol=1e-6, equal_nan=True)


def test_outcomes_tail_statistics_and_figures_are_logged(tracked_sweep):
    client, sweep = tracked_sweep
    children, parents = children_and_parent(client, "tracked")
    runs = pd.read_csv(sweep / "report" / "runs.csv")
    for row in runs.itertuples(index=False):
        run = children[str((sweep / str(row.job)).resolve())]
        assert run.data.tags["outcome"] == row.outcome
        assert run.data.metrics["tail_kl_excess"] == pytest.approx(row.tail_kl_excess, rel=1e-5)
        assert run.data.metrics["excess_over_exact"] == pytest.approx(row.excess_over_exact, rel=1e-5, abs=1e-6)
    parent = parents[0]
    counts = runs["outcome"].value_counts()
    assert {k: v for k, v in parent.data.metrics.items() if k.startswith("runs_")} == {f"runs_{o}": float(n) for o, n in counts.items()}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/phase_map.png", "report/kl_curves.png", "report/runs.csv"} <= logged


def test_a_single_run_is_tracked_too_and_the_store_is_local_by_default(cli, tmp_path):
    from tests.conftest import REPO

    workdir = tmp_path / "work"
    workdir.mkdir()
    result = cli("run", "hydra/callbacks=mlflow", "steps=20", "log_every=10", "d=3", f"hydra.run.dir={tmp_path / 'run'}",
                 cwd=workdir, env={"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""})
    assert result.returncode == 0, result.stderr
    store = workdir / "outputs" / "mlflow.db"
    assert store.is_file()
    children, parents = children_and_parent(client_for(f"sqlite:///{store}"), "vi_sweep runs")
    assert list(children) == [str((tmp_path / "run").resolve())] and parents == []


def test_runs_written_before_a_ctrl_c_reach_mlflow_with_the_rerun(tmp_path):
    """The interrupted process never got to log them (its queue goes with it); the rerun resumes
    them without running them, and logs each finished job that has no finished child run yet."""
    from tests.conftest import run_cli
    from tests.test_interrupts import INTERRUPT_BECOMES_ANOTHER_ERROR, SMALL_GRID, run_with

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = tmp_path / "sweep"
    tracked = ("hydra/callbacks=mlflow", f"hydra.callbacks.mlflow.tracking_uri={uri}", "hydra.callbacks.mlflow.experiment=resumed",
               f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep_summary.report=true")
    interrupted = run_with(INTERRUPT_BECOMES_ANOTHER_ERROR, "multirun", *SMALL_GRID, *tracked)
    assert interrupted.returncode == 130, interrupted.stderr
    rerun = run_cli("multirun", *SMALL_GRID, *tracked)
    assert rerun.returncode == 0, rerun.stderr
    assert "6 jobs (4 computed, 2 resumed)" in rerun.stdout
    children, parents = children_and_parent(client_for(uri), "resumed")
    jobs = sorted(str(p.parent.resolve()) for p in sweep.glob("*/metrics.parquet"))
    assert sorted(children) == jobs and len(jobs) == 6
    assert all(run.info.status == "FINISHED" and "outcome" in run.data.tags for run in children.values())
    assert [p.info.status for p in parents if p.info.status != "KILLED"] == ["FINISHED"]  # the interrupted sweep's is KILLED
