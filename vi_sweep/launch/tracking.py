"""An MLflow tracker: every run of a sweep in MLflow's runs table, its rows as curves, the report's figures.

Opt in with ``hydra/callbacks=mlflow`` (``conf/hydra/callbacks/mlflow.yaml``); MLflow is an
optional dependency (``pip install 'vi_sweep[mlflow]'``). Per multirun, :class:`MLflowTracker` makes

- one MLflow **experiment** per sweep directory (named by its path; a rerun that extends the
  sweep adds its new runs to it), holding a **parent run** for the sweep and
- one **child run per job** (``on_job_end``): the run's flat config as params (``lr``,
  ``num_mc``, ``optimizer_b1`` ...), its logged rows as metrics by step (``kl_excess``, ``kl``,
  ``loss``, ``sigma_min`` ... at every logged step and tail probe), its status as a tag;
- at the end (``on_multirun_end``, after the report): a child run for each finished job that has
  none yet (written before a Ctrl-C ended an earlier multirun, resumed by this one), then each child's outcome (a tag) and tail
  statistics (``tail_kl_excess``, ``excess_over_exact``, ``trend_slope`` ... as metrics, from the
  report's ``runs.csv``), and on the parent the outcome counts and the report's figures and tables
  as artifacts (``optimization_results.yaml`` too, after a search).

The store is local by default: ``sqlite:///<launch dir>/outputs/mlflow.db`` (one database for all
sweeps started there: creating one costs seconds), artifacts in ``<sweep dir>/mlflow/``; a
``tracking_uri`` (``http://host:5000``, or ``MLFLOW_TRACKING_URI``) sends everything to a server.
See the runs with ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db``.

MLflow is slow (~0.2 s a run, most of it SQL commits), so the sweep does not wait for it: the
callbacks queue their work for one thread of this process (importing MLflow, ~4 s, happens there
too), which runs while the launcher trains and writes, and the multirun's end waits for it. A
store that fails (a server that is down) is one warning line; the sweep's files are unaffected.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

ROW_METRICS = ("kl_excess", "loss", "sigma_min", "grad_norm")
"""The row columns logged as curves by default: convergence, the objective, collapse, instability.
Each point costs MLflow ~0.2 ms on top of ~0.15 s a run: choose more with ``metrics``."""
RUN_STATISTICS = (
    "tail_kl_excess", "excess_over_exact", "excess_over_exact_per_dim", "final_kl", "tail_kl", "tail_sigma_min",
    "trend_slope", "trend_n_eff", "time_to_tol_ratio", "baseline_tail_kl_excess",
)
REPORT_ARTIFACTS = ("*.png", "*.pdf", "summary.md", "phase_table.csv", "runs.csv")
MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_CALL = 100
JOB_TAG = "vi_sweep.job_dir"  # a child run's job directory
SWEEP_TAG = "vi_sweep.sweep_dir"  # a parent run's sweep directory
SEARCH_PAGE = 10_000  # runs a page when reading what an experiment holds
DEFAULT_STORE = "outputs/mlflow.db"


class TrackerUnavailable(RuntimeError):
    """MLflow is not installed; the message says how to install it."""


def default_tracking_uri(launch_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a local SQLite store under the launch directory's ``outputs/``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(launch_dir).resolve() / DEFAULT_STORE}"


@dataclass
class _Job:
    """What a child run is made of, read in the callback's thread (the job's file is whole by then)."""

    out_dir: Path
    params: dict[str, str]
    steps: list[int]
    rows: dict[str, list[float]]
    status: str
    started: int  # ms since the epoch
    tags: dict[str, str] = field(default_factory=dict)


class MLflowTracker(Callback):
    """Hydra callback logging every job of a multirun (and a single ``run``) to MLflow.

    Parameters
    ----------
    tracking_uri
        Where MLflow writes: null for :func:`default_tracking_uri`, or any MLflow tracking URI.
    experiment
        The experiment's name; null: the sweep directory's path (a ``run``: ``vi_sweep runs``).
    metrics
        The row columns logged as curves (by step).
    artifacts
        Log the report's figures and tables on the sweep's parent run.
    """

    keeps_job_config = False  # reads its hooks' config while they run (vi_sweep.launch.callbacks)

    def __init__(
        self,
        tracking_uri: Optional[str] = None,
        experiment: Optional[str] = None,
        metrics: Sequence[str] = ROW_METRICS,
        artifacts: bool = True,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.metrics = tuple(metrics)
        self.artifacts = artifacts
        self._pid: Optional[int] = None  # the process that started the sweep (jobs elsewhere log themselves)
        self._worker: Optional[_Worker] = None
        self._store: Optional[_Store] = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_worker": None, "_store": None}  # threads and clients do not pickle (submitit)

    # -- Hydra's hooks ---------------------------------------------------------------------------

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, sweep_dir=None)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start(config, sweep_dir=Path(str(config.hydra.sweep.dir)).resolve())

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.COMPLETED:
            return
        out_dir = Path(str(config.hydra.runtime.output_dir)).resolve()
        job = read_job(out_dir, self.metrics)
        if job is None:
            return
        if self._worker is None or os.getpid() != self._pid:  # a job in another process (submitit): log it here and now
            store = self._store or _Store.open(self.tracking_uri, self.experiment, out_dir.parent)
            store.log_job(job)
            return
        self._worker.submit(lambda store: store.log_job(job))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        started = self._started_ms
        artifacts, metrics = self.artifacts, self.metrics

        def log_sweep(store: _Store) -> None:
            from mlflow.exceptions import MlflowException

            try:
                store.log_unlogged(sweep_dir, metrics)
            except MlflowException as err:  # the earlier runs only: this multirun's are logged, its summary goes on
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                print(f"vi_sweep: warning: MLflow: runs of earlier multiruns not logged: {reason}", file=sys.stderr, flush=True)
            store.log_sweep(sweep_dir, since_ms=started, artifacts=artifacts)

        self._worker and self._worker.submit(log_sweep)
        self._finish()

    # -- plumbing --------------------------------------------------------------------------------

    def _start(self, config: DictConfig, sweep_dir: Optional[Path]) -> None:
        """Check MLflow is there (one line and exit 2 before anything is written if not), then
        start the thread that imports it and opens the store."""
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            print(
                "vi_sweep: error: hydra/callbacks=mlflow needs MLflow: pip install 'vi_sweep[mlflow]' (or pip install mlflow)",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(2)
        self._pid = os.getpid()
        self._started_ms = int(time.time() * 1000)
        launch_dir = Path(str(config.hydra.runtime.cwd))
        uri = self.tracking_uri or default_tracking_uri(launch_dir)
        experiment = self.experiment or (experiment_name(sweep_dir, launch_dir) if sweep_dir else "vi_sweep runs")
        artifact_root = (sweep_dir / "mlflow") if sweep_dir and uri.startswith("sqlite:") else None
        self._worker = _Worker(lambda: _Store.open(uri, experiment, sweep_dir, artifact_root=artifact_root, parent=sweep_dir is not None))

    def _finish(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    _started_ms: int = 0


def experiment_name(sweep_dir: Path, launch_dir: Path) -> str:
    """A sweep's experiment: its directory, relative to where it was started if it is below it."""
    try:
        return str(Path(sweep_dir).resolve().relative_to(Path(launch_dir).resolve()))
    except ValueError:
        return str(Path(sweep_dir).resolve())


def read_job(out_dir: Path, metrics: Sequence[str]) -> Optional[_Job]:
    """A job's child run from its ``metrics.parquet`` (None if it has none: a failed job)."""
    from vi_sweep.store.metrics import METRICS_FILE, UnreadableRun, read_run_file

    try:
        run = read_run_file(out_dir / METRICS_FILE, columns=["step", "status", "scenario", *metrics])
    except UnreadableRun:
        return None
    table = run.table
    params = {key: "null" if value is None else str(value) for key, value in run.fields.items()}
    params["scenario"] = str(table.column("scenario")[0].as_py())
    rows = {name: table.column(name).to_pylist() for name in metrics}
    return _Job(
        out_dir=out_dir,
        params=params,
        steps=[int(s) for s in table.column("step").to_pylist()],
        rows=rows,
        status=str(table.column("status")[0].as_py()),
        started=int(os.stat(out_dir / METRICS_FILE).st_mtime * 1000),
    )


class _Worker:
    """One thread that owns the MLflow client: tasks ``task(store)`` run in order; the first
    opens the store (importing MLflow). A store error is one warning line; later tasks are skipped."""

    def __init__(self, open_store: Callable[[], "_Store"]) -> None:
        self._tasks: queue.Queue = queue.Queue()
        self._open = open_store
        self._error: Optional[BaseException] = None  # a bug in a task: raised again by close()
        self._thread = threading.Thread(target=self._run, name="vi_sweep-mlflow", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[["_Store"], None]) -> None:
        self._tasks.put(task)

    def close(self) -> None:
        """Wait for every task queued so far; raise here what a task raised that was not the store's failure."""
        self._tasks.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as err:  # noqa: BLE001 - not swallowed: close() raises it in the sweep's thread
            self._error = err

    def _serve(self) -> None:
        from mlflow.exceptions import MlflowException

        store: Optional[_Store] = None
        failed = False
        while True:
            task = self._tasks.get()
            if task is None:
                return
            if failed:
                continue
            try:
                store = store or self._open()
                task(store)
            except (MlflowException, OSError) as err:  # the store, not the sweep: say so once, keep the sweep going
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                print(f"vi_sweep: warning: MLflow: {reason}; the sweep's files are complete", file=sys.stderr, flush=True)
                failed = True


class _Store:
    """An MLflow client bound to one experiment (and the sweep's parent run)."""

    def __init__(self, client: Any, experiment_id: str, parent_id: Optional[str]) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.children: dict[Path, str] = {}  # job directory -> the child run logged for it here

    @classmethod
    def open(
        cls,
        uri: Optional[str],
        experiment: Optional[str],
        sweep_dir: Optional[Path],
        *,
        artifact_root: Optional[Path] = None,
        parent: bool = False,
    ) -> "_Store":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri or default_tracking_uri(Path.cwd()))
        name = experiment or "vi_sweep runs"
        found = client.get_experiment_by_name(name)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = artifact_root.as_uri() if artifact_root is not None else None
            experiment_id = client.create_experiment(name, artifact_location=location)
        parent_id = None
        if parent and sweep_dir is not None:
            run = client.create_run(experiment_id, run_name=f"sweep {sweep_dir.name}", tags={SWEEP_TAG: str(sweep_dir)})
            parent_id = run.info.run_id
        return cls(client, experiment_id, parent_id)

    def log_job(self, job: _Job) -> None:
        """One child run: params, rows as metrics by step, status; three SQL commits in all."""
        from mlflow.entities import Metric, Param, RunTag

        tags = {JOB_TAG: str(job.out_dir), "vi_sweep.status": job.status, **job.tags}
        if self.parent_id is not None:
            tags["mlflow.parentRunId"] = self.parent_id
        name = f"{job.out_dir.name}: " + " ".join(f"{k}={job.params[k]}" for k in ("lr", "num_mc", "seed") if k in job.params)
        run = self.client.create_run(self.experiment_id, start_time=job.started, tags=tags, run_name=name)
        metrics = [
            Metric(key, float(value), job.started, step)
            for key, values in job.rows.items()
            for step, value in zip(job.steps, values)
            if value is not None
        ]
        params = [Param(key, value[:6000]) for key, value in sorted(job.params.items())]
        for start in range(0, max(len(metrics), len(params), 1), MAX_METRICS_PER_CALL):
            self.client.log_batch(
                run.info.run_id,
                metrics=metrics[start : start + MAX_METRICS_PER_CALL],
                params=params[start : start + MAX_PARAMS_PER_CALL] if start == 0 else [],
            )
        self.client.set_terminated(run.info.run_id, status="FINISHED", end_time=job.started)
        self.children[job.out_dir] = run.info.run_id

    def log_unlogged(self, sweep_dir: Path, metrics: Sequence[str]) -> int:
        """Log each finished job of the sweep that has no finished child run in the experiment;
        return how many. A Ctrl-C (or a kill) ends the sweep's process before its queue is logged,
        and the next multirun resumes those jobs instead of running them (no ``on_job_end``).

        The experiment is read only when some job of the sweep was not logged by this process
        (~1 ms a run). Then a child run left unfinished by such a process is deleted and logged
        anew, and a parent run of this sweep directory left running is marked KILLED."""
        from vi_sweep.store.metrics import job_files

        logged = set(self.children)
        out_dirs = [metrics_file.parent.resolve() for metrics_file in job_files(sweep_dir)]
        if all(out_dir in logged for out_dir in out_dirs):  # the usual case: every job ran, and was logged, here
            return 0
        for run in self._runs():
            tags, finished = run.data.tags, run.info.status == "FINISHED"
            if JOB_TAG in tags:
                if finished:
                    logged.add(Path(tags[JOB_TAG]))
                elif Path(tags[JOB_TAG]).is_relative_to(sweep_dir):
                    self.client.delete_run(run.info.run_id)
            elif tags.get(SWEEP_TAG) == str(sweep_dir) and not finished and run.info.run_id != self.parent_id:
                self.client.set_terminated(run.info.run_id, status="KILLED")
        count = 0
        for out_dir in out_dirs:
            job = None if out_dir in logged else read_job(out_dir, metrics)
            if job is not None:
                self.log_job(job)
                count += 1
        return count

    def _runs(self) -> Any:
        """Every run of the experiment, page by page."""
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=SEARCH_PAGE, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def log_sweep(self, sweep_dir: Path, *, since_ms: int, artifacts: bool) -> None:
        """The report's view of each run logged here (outcome, tail statistics) on its child run,
        and on the parent the sweep's outcome counts and the report's files."""
        from mlflow.entities import Metric, RunTag

        runs = sweep_runs(sweep_dir, since_ms=since_ms)
        now = int(time.time() * 1000)
        for row in runs.itertuples(index=False):
            run_id = self.children.get((sweep_dir / str(row.job)).resolve())
            if run_id is None:
                continue
            values = {name: getattr(row, name) for name in RUN_STATISTICS if hasattr(row, name)}
            metrics = [Metric(name, float(v), now, 0) for name, v in values.items() if v == v and v is not None]
            self.client.log_batch(run_id, metrics=metrics, tags=[RunTag("outcome", str(row.outcome)), RunTag("reason", str(row.reason)[:5000])])
        if self.parent_id is None:
            return
        counts = runs["outcome"].astype(str).value_counts()
        self.client.log_batch(self.parent_id, metrics=[Metric(f"runs_{o}", float(n), now, 0) for o, n in counts.items()])
        if artifacts:
            report = sweep_dir / "report"
            for pattern in REPORT_ARTIFACTS:
                for path in sorted(report.glob(pattern)):
                    self.client.log_artifact(self.parent_id, str(path), artifact_path="report")
            results = sweep_dir / "optimization_results.yaml"
            if results.is_file():
                self.client.log_artifact(self.parent_id, str(results))
        self.client.set_terminated(self.parent_id, status="FINISHED")


def sweep_runs(sweep_dir: Path, *, since_ms: int) -> Any:
    """The report's runs table of a sweep: its ``runs.csv`` if the report was written during this
    multirun, else classified now (:func:`vi_sweep.analysis.load_sweep`)."""
    import pandas as pd

    csv = sweep_dir / "report" / "runs.csv"
    if csv.is_file() and csv.stat().st_mtime * 1000 >= since_ms:
        return pd.read_csv(csv)
    from vi_sweep.analysis import load_sweep

    runs = load_sweep(sweep_dir)
    return runs.assign(job=runs["job"].astype(str))
