"""The report: the default grid's story, reproducible files, CLI errors, the multirun callback.

(The notebooks of analysis/notebooks/ are run in tests/test_notebooks.py.)"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vi_sweep.analysis import load_sweep, phase_table, write_report
from vi_sweep.analysis.figures import Panel, excess_heatmap, kl_curves, phase_map, sigma_statistics
from vi_sweep.analysis.read import read_sweep
from vi_sweep.analysis.outcomes import OUTCOMES
from vi_sweep.analysis.report import main as report_main
from vi_sweep.core.schedule import row_steps
from tests.conftest import REPO
from tests.sweeps import STORY_GRID, composed_fields, grid, write_sweep

REPORT_FILES = {
    "phase_table.csv",
    "runs.csv",
    "summary.md",
    *(f"{name}.{ext}" for name in ("phase_map", "excess_over_exact", "sigma", "kl_curves") for ext in ("png", "pdf")),
}


@pytest.fixture(scope="module")
def story_sweep(tmp_path_factory):
    """The default grid (d=100, 2000 steps, Adam, init_log_sigma=-2), reduced to 5 lr x 2 num_mc x 2 seeds."""
    sweep_dir = tmp_path_factory.mktemp("story")
    write_sweep(sweep_dir, grid(composed_fields(), STORY_GRID))
    return sweep_dir


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """8 short runs at d=4: for the tests that only need *a* sweep."""
    sweep_dir = tmp_path_factory.mktemp("tiny")
    base = dict(composed_fields(), d=4, steps=40, log_every=10)
    write_sweep(sweep_dir, grid(base, {"lr": (0.01, 0.5), "num_mc": (1, 4), "seed": (0, 1)}))
    return sweep_dir


def copy_sweep(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("report", "baselines"))
    return target


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_default_grid_tells_the_notebooks_story(story_sweep):
    cells = phase_table(load_sweep(story_sweep)).set_index(["lr", "num_mc"])["outcome"].astype(str)
    assert cells[(0.05, 32)] == "converged"  # the notebook's good cell
    assert cells[(0.2, 1)] == "stalled"  # the notebook's stress cell: KL ~12 at a noise floor
    assert cells[(1e-4, 1)] == cells[(1e-4, 32)] == "slow"  # the exact run is not done either
    assert cells[(10.0, 1)] == cells[(10.0, 32)] == "diverged"  # ends far above the initial KL
    assert cells[(1.0, 1)] == "collapsed"  # min sigma < 1e-3 with one sample at lr = 1


def test_report_writes_every_file_and_is_byte_identical_on_a_rerun(story_sweep, tmp_path):
    sweep_dir = copy_sweep(story_sweep, tmp_path)
    report = write_report(sweep_dir)  # cold: computes and caches the exact baselines
    assert report == sweep_dir / "report"
    assert {p.name for p in report.iterdir()} == REPORT_FILES
    first = digests(report)
    assert len(list((sweep_dir / "baselines").glob("*/metrics.parquet"))) == 5  # one per lr
    write_report(sweep_dir)  # warm: baselines from the cache
    assert digests(report) == first
    write_report(sweep_dir, parallel=False)  # every figure drawn in this process, none in the helper
    assert digests(report) == first
    assert not [p.name for p in sweep_dir.iterdir() if p.name.startswith(".report")]

    table = pd.read_csv(report / "phase_table.csv")
    assert len(table) == 10 and set(table["outcome"]) <= set(OUTCOMES)
    # The story's five outcomes; which label a borderline cell such as (0.05, 1) gets is not this test's business.
    assert {"slow", "converged", "stalled", "collapsed", "diverged"} <= set(table["outcome"])
    summary = (report / "summary.md").read_text()
    assert "20 runs in 10 cells (swept: lr, num_mc; 2 runs per cell)" in summary
    assert "5 computed with the trainer" in summary
    assert "![phase_map](phase_map.png)" in summary
    assert "| 0.05 | 32 | 2 | converged (2/2) |" in summary
    assert (report / "phase_map.pdf").read_bytes().startswith(b"%PDF")
    assert b"CreationDate" not in (report / "phase_map.pdf").read_bytes()
    # One embedded font per PDF, the minus of the log-scale colorbar included (PAPER_RC's ps.fonttype).
    assert (report / "excess_over_exact.pdf").read_bytes().count(b"/FontFile2") == 1


def test_figures_call_overlays_with_panel_coordinates(story_sweep):
    sweep = read_sweep(story_sweep)
    runs = load_sweep(story_sweep)
    cells = phase_table(runs)
    seen: list[Panel] = []
    for make in (lambda o: phase_map(cells, overlays=o), lambda o: excess_heatmap(cells, overlays=o), lambda o: sigma_statistics(runs, overlays=o)):
        make([seen.append])
    assert len(seen) == 1 + 1 + 2  # the sigma figure has two panels
    grid_panel = seen[0]
    assert grid_panel.x_of(0.05) == 1 and grid_panel.y_of(32) == 1  # categorical positions
    assert 1 < grid_panel.x_of(0.1) < 2  # log-interpolated between 0.05 and 0.2
    assert len(grid_panel.data) == 10
    from vi_sweep.analysis.references import exact_baselines

    references = exact_baselines(sweep)
    curves: list[Panel] = []
    kl_curves(runs, sweep.trajectories, references.trajectories, [{"lr": 0.2, "num_mc": 1}], overlays=[curves.append])
    assert curves[0].facet == {"lr": 0.2, "num_mc": 1} and set(curves[0].data["step"]) == set(row_steps(2000, 200)[0])


def test_log_axes_label_their_ticks_in_plain_text_with_superscripts_not_mathtext(story_sweep):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vi_sweep.analysis import load_trajectories
    from vi_sweep.analysis.figures import compare_curves, paper_style

    sweep = read_sweep(story_sweep)
    runs = load_sweep(story_sweep)
    cells = phase_table(runs)
    from vi_sweep.analysis.references import exact_baselines

    references = exact_baselines(sweep)
    figures = {
        "excess_over_exact": excess_heatmap(cells),  # its colour bar is a log axis
        "sigma": sigma_statistics(runs),
        "kl_curves": kl_curves(runs, sweep.trajectories, references.trajectories, [{"lr": 0.2, "num_mc": 1}]),
        "compare_curves": compare_curves(load_trajectories(story_sweep), ["kl_excess"], series=["num_mc"], facet_by=["lr"]),
    }
    for name, figure in figures.items():
        FigureCanvasAgg(figure)
        with paper_style():
            figure.canvas.draw()
        labels = [label.get_text() for ax in figure.axes for axis in (ax.xaxis, ax.yaxis) for label in axis.get_ticklabels(which="both")]
        shown = [text for text in labels if text]
        assert shown, name
        assert not [text for text in shown if "$" in text], (name, shown)  # no mathtext left
        assert any(text.startswith("10") and text[2:3] in "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079" for text in shown), (name, shown)


def test_a_colour_bar_keeps_its_text_labels_when_its_scale_changes(story_sweep):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vi_sweep.analysis.figures import TextLogFormatter

    figure = excess_heatmap(phase_table(load_sweep(story_sweep)))
    FigureCanvasAgg(figure)
    bar_axes = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert bar_axes
    bar_axes[0]._colorbar.mappable.set_clim(1e-5, 1.0)  # a notebook user rescales the colours
    figure.canvas.draw()
    assert isinstance(bar_axes[0].yaxis.get_major_formatter(), TextLogFormatter)
    assert not [t.get_text() for t in bar_axes[0].yaxis.get_ticklabels() if "$" in t.get_text()]


def test_text_log_labels_read_as_matplotlibs_mathtext_did():
    from vi_sweep.analysis.figures import _mathtext_as_text

    assert _mathtext_as_text(r"$\mathdefault{10^{-3}}$") == "10\u207b\u00b3"
    assert _mathtext_as_text(r"$\mathdefault{10^{0}}$") == "10\u2070"
    assert _mathtext_as_text(r"$\mathdefault{10^{12}}$") == "10\u00b9\u00b2"
    assert _mathtext_as_text(r"$\mathdefault{2\times10^{-3}}$") == "2\u00d710\u207b\u00b3"
    assert _mathtext_as_text(r"$\mathdefault{0}$") == r"$\mathdefault{0}$"  # anything else is left to matplotlib
    assert _mathtext_as_text("") == ""


def test_compare_curves_draws_a_line_per_series_in_a_panel_per_facet_and_value(story_sweep):
    from vi_sweep.analysis import load_trajectories
    from vi_sweep.analysis.figures import compare_curves

    steps = load_trajectories(story_sweep)
    steps = steps.assign(estimator=np.where(steps["seed"] == 0, "reparam", "stl"))  # two series of one seed each
    fig = compare_curves(steps, ["kl_excess", "sigma_mean"], series=["estimator"], facet_by=["lr", "num_mc"])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 10 * 2  # 5 lr x 2 num_mc facets, each with its two values side by side
    assert all(len(ax.get_lines()) == 2 for ax in panels)
    assert [line.get_label() for line in panels[0].get_lines()] == ["estimator=reparam", "estimator=stl"]
    assert {line.get_color() for ax in panels for line in ax.get_lines() if line.get_label() == "estimator=stl"} == {"#E69F00"}
    kl, sigma = panels[0], panels[1]  # lr = 1e-4, num_mc = 1: KL falls from 151 to 131, sigma stays within a decade
    assert (kl.get_title(), kl.get_yscale(), sigma.get_yscale()) == ("lr=1e-4, num_mc=1", "linear", "linear")
    assert panels[2 * 2].get_yscale() == "log"  # lr = 0.05: the KL excess falls by decades


def test_report_cli_missing_dir_is_one_line_exit_2(cli, tmp_path):
    result = cli("report", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"vi_sweep: error: sweep directory {tmp_path / 'missing'} does not exist"]
    assert result.stdout == ""


def test_report_cli_empty_dir_and_bad_cell_are_one_line_errors(tiny_sweep, tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"vi_sweep: error: no readable metrics.parquet under {tmp_path}"
    sweep_dir = copy_sweep(tiny_sweep, tmp_path)
    assert report_main([str(sweep_dir), "--cell", "lr=0.07"]) == 2
    assert capsys.readouterr().err.strip() == "vi_sweep: error: cell lr=0.07: no run of this sweep has these values"
    assert not (sweep_dir / "report").exists()


def test_report_cli_names_a_corrupt_file_in_one_line_and_reports_the_rest(tiny_sweep, tmp_path, capsys):
    sweep_dir = copy_sweep(tiny_sweep, tmp_path)
    bad = sweep_dir / "3" / "metrics.parquet"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    assert report_main([str(sweep_dir), "--cell", "lr=0.5,num_mc=4"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vi_sweep: warning: skipping {bad}: ")
    assert captured.out.strip() == f"vi_sweep: report written to {sweep_dir / 'report'}"
    summary = (sweep_dir / "report" / "summary.md").read_text()
    assert "7 runs in 4 cells" in summary and "`3/metrics.parquet`" in summary
    assert (sweep_dir / "report" / "kl_curves.png").exists()


@pytest.mark.slow
def test_multirun_ends_by_writing_the_report_and_printing_its_path(cli, tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("multirun", "lr=1e-2,0.5", "num_mc=1,4", "seed=range(1)", "steps=30", "log_every=10", "d=3", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert f"vi_sweep: report written to {sweep.resolve() / 'report'}" in result.stdout
    assert {p.name for p in (sweep / "report").iterdir()} == REPORT_FILES
    assert "Traceback" not in result.stderr and "pruned" not in result.stdout + result.stderr


def test_a_failing_report_is_one_line_and_does_not_raise(tiny_sweep, tmp_path, capsys, monkeypatch):
    from omegaconf import OmegaConf

    import vi_sweep.analysis.report
    from vi_sweep.launch.callbacks import SweepSummary

    def broken(argv, **kwargs):
        raise RuntimeError("figure backend exploded\nsecond line")

    monkeypatch.setattr(vi_sweep.analysis.report, "main", broken)
    sweep_dir = copy_sweep(tiny_sweep, tmp_path)
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    captured = capsys.readouterr()
    assert captured.out.strip() == f"vi_sweep: 8 runs written to {sweep_dir.resolve()}"
    assert captured.err.strip().splitlines() == [
        f"vi_sweep: warning: report not written (RuntimeError: figure backend exploded); rerun it with: python -m vi_sweep report {sweep_dir.resolve()}"
    ]
    SweepSummary(report=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    assert capsys.readouterr().err == ""


def test_the_sweep_process_imports_the_report_while_jobs_run_and_workers_do_not(monkeypatch):
    import pickle

    from omegaconf import OmegaConf

    import vi_sweep.launch.callbacks
    import vi_sweep.host
    from vi_sweep.launch.callbacks import SweepSummary

    imported = []
    monkeypatch.setattr(vi_sweep.launch.callbacks, "_import_quietly", imported.append)
    monkeypatch.setattr(vi_sweep.host, "available_cores", lambda: 1)  # no figure helper in this test
    config = OmegaConf.create({})
    in_sweep = SweepSummary()
    in_sweep.on_multirun_start(config)
    in_sweep.on_job_start(config)
    in_sweep.on_job_start(config)  # once per sweep
    in_sweep._prefetch.join()
    assert imported == ["vi_sweep.analysis.report"]
    # As submitit ships it to a worker: the thread is not pickled, and the worker (another
    # process, here faked by another pid) does not import the report.
    worker = pickle.loads(pickle.dumps(in_sweep))
    worker._sweep_pid += 1
    worker.on_job_start(config)
    assert worker._prefetch is None
    assert SweepSummary(report=False)._prefetch is None


def test_the_figure_helper_starts_with_the_sweep_and_its_report_uses_and_ends_it(tiny_sweep, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import vi_sweep.analysis.report
    import vi_sweep.host
    from vi_sweep.launch.callbacks import SweepSummary

    monkeypatch.setattr(vi_sweep.host, "available_cores", lambda: 2)
    given = []
    write_report = vi_sweep.analysis.report.write_report

    def spy(*args, helper=None, **kwargs):
        given.append(helper)
        return write_report(*args, helper=helper, **kwargs)

    monkeypatch.setattr(vi_sweep.analysis.report, "write_report", spy)
    sweep_dir = copy_sweep(tiny_sweep, tmp_path)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    callback = SweepSummary()
    callback.on_multirun_start(config)  # it imports matplotlib while Hydra composes the jobs
    helper = callback._figure_helper
    assert helper is not None and helper.proc.poll() is None
    callback.on_multirun_end(config)
    assert given == [helper] and helper.proc.poll() == 0
    assert (sweep_dir / "report" / "summary.md").exists()

    assert SweepSummary(report=False)._figure_helper is None
    off = SweepSummary(report=False)
    off.on_multirun_start(config)
    assert off._figure_helper is None
    empty = SweepSummary()  # a sweep that wrote no run has no report: its helper is stopped
    empty.on_multirun_start(config)
    helper = empty._figure_helper
    empty.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}}))
    assert helper.proc.poll() is not None


def test_a_report_that_fails_before_drawing_stops_the_helper_it_was_given(tmp_path, capsys):
    import vi_sweep.analysis.report
    from vi_sweep.analysis.figure_helper import FigureHelper

    helper = FigureHelper()
    assert vi_sweep.analysis.report.main([str(tmp_path / "missing")], helper=helper) == 2
    assert helper.proc.poll() is not None
    assert capsys.readouterr().err.startswith("vi_sweep: error: ")


def test_import_analysis_gives_its_exports_and_submodules_lazily():
    code = (
        "import sys, vi_sweep.analysis as analysis; assert 'pandas' not in sys.modules; "
        "analysis.load_sweep; analysis.report.write_report; analysis.figures.phase_map; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_figures_are_shared_with_the_helper_and_drawn_here_if_it_fails():
    import time

    from vi_sweep.analysis.figure_helper import FigureHelper, draw_all

    jobs = [f"job{i}" for i in range(60)]
    drawn_here = []

    def draw_slowly(job):  # 6 s for all 60 here: the helper is up long before that
        if "job0" not in drawn_here:  # (the helper's failures, drawn again at the end, go fast)
            time.sleep(0.1)
        drawn_here.append(job)

    helper = FigureHelper()
    try:
        # The helper draws with vi_sweep.analysis.render.render_figure, which fails on these jobs: it
        # answers each with an error, and every job it took is drawn here once more.
        draw_all(jobs, draw_slowly, helper)
    finally:
        helper.close()
    assert sorted(drawn_here) == sorted(jobs) and len(drawn_here) == len(jobs)
    taken_here_first = drawn_here[: drawn_here.index("job0")]
    assert taken_here_first == jobs[::-1][: len(taken_here_first)]  # this process took from the back
    assert len(taken_here_first) < len(jobs)  # and the helper took some from the front
    assert helper.proc.returncode == 0


def test_a_dead_helper_leaves_every_figure_to_this_process():
    from vi_sweep.analysis.figure_helper import FigureHelper, draw_all

    helper = FigureHelper()
    helper.proc.kill()
    helper.proc.wait()
    drawn_here = []
    draw_all(list(range(5)), drawn_here.append, helper)
    helper.close()
    assert sorted(drawn_here) == [0, 1, 2, 3, 4]


def test_a_figure_failing_here_stops_the_helper_and_leaves_no_report(tiny_sweep, tmp_path, monkeypatch):
    import vi_sweep.analysis.report

    def broken(job):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(vi_sweep.analysis.report, "render_figure", broken)  # this process only, not the helper
    sweep_dir = copy_sweep(tiny_sweep, tmp_path)
    with pytest.raises(RuntimeError, match="backend exploded"):
        write_report(sweep_dir)
    assert not (sweep_dir / "report").exists()
    assert not [p.name for p in sweep_dir.iterdir() if p.name.startswith(".report")]


@pytest.mark.parametrize("interrupted_after_renames", [1, 2])
def test_a_ctrl_c_between_the_reports_renames_leaves_one_whole_report_and_nothing_aside(tiny_sweep, tmp_path, monkeypatch, interrupted_after_renames):
    """The new report replaces the old by two renames (old aside, new in): a Ctrl-C after the first
    puts the old one back; after the second, the new one stays. No ``.report.old.*`` is left."""
    sweep_dir = copy_sweep(tiny_sweep, tmp_path)
    write_report(sweep_dir)
    (sweep_dir / "report" / "mark").write_text("the old report")
    real_rename, renames = Path.rename, []

    def rename_then_interrupt(self, target):
        result = real_rename(self, target)
        renames.append(target)
        if len(renames) == interrupted_after_renames:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(Path, "rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_report(sweep_dir)
    monkeypatch.undo()
    assert (sweep_dir / "report" / "phase_table.csv").is_file()
    assert (sweep_dir / "report" / "mark").exists() == (interrupted_after_renames == 1)
    assert not [p.name for p in sweep_dir.iterdir() if p.name.startswith(".report")]


def test_a_helper_that_never_gets_ready_does_not_hold_up_the_report(tmp_path, monkeypatch):
    from vi_sweep.analysis.figure_helper import FigureHelper, draw_all

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")  # a sys.executable that is no plain Python
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    helper = FigureHelper()
    drawn_here = []
    draw_all([1, 2, 3], drawn_here.append, helper)  # returns at once: the helper held nothing
    helper.close()
    assert drawn_here == [3, 2, 1] and helper.proc.returncode is not None


def test_a_job_that_cannot_be_sent_to_the_helper_is_drawn_here():
    import threading
    import time

    from vi_sweep.analysis.figure_helper import FigureHelper, draw_all

    jobs = [("job", i, threading.Lock() if i == 0 else None) for i in range(6)]  # job 0 does not pickle
    drawn_here = []

    def draw(job):
        if not drawn_here:
            time.sleep(3)  # the helper gets ready and takes job 0 meanwhile
        drawn_here.append(job[1])

    helper = FigureHelper()
    try:
        draw_all(jobs, draw, helper)
    finally:
        helper.close()
    assert sorted(drawn_here) == list(range(6))


def test_the_helper_imports_what_this_process_imports_not_the_cwds_packages(tmp_path, monkeypatch):
    import pickle

    from vi_sweep.analysis.figure_helper import READY, FigureHelper

    marker = tmp_path / "executed"
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")] + [Path("/nonexistent")])  # a Path entry too
    helper = FigureHelper()
    try:
        assert pickle.load(helper.proc.stdout) == READY
    finally:
        helper.close()
    assert not marker.exists()


def test_no_helper_on_one_core():
    from vi_sweep.analysis.figure_helper import start_helper

    assert start_helper(cores=1) is None


def test_save_figure_keeps_dots_in_facet_names_and_writes_reproducible_bytes(tmp_path):
    from matplotlib.figure import Figure

    from vi_sweep.analysis.figures import save_figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    written = save_figure(fig, tmp_path / "phase_map__lr=0.05,target_rho=0.9")
    assert [p.name for p in written] == ["phase_map__lr=0.05,target_rho=0.9.png", "phase_map__lr=0.05,target_rho=0.9.pdf"]
    first = digests(tmp_path)
    save_figure(fig, tmp_path / "phase_map__lr=0.05,target_rho=0.9")
    assert digests(tmp_path) == first


@pytest.fixture(scope="module")
def sgd_sweep(tmp_path_factory):
    """Plain SGD with the reparam estimator on N(0, I): the configuration the theory describes."""
    sweep_dir = tmp_path_factory.mktemp("sgd")
    base = dict(composed_fields("optimizer=sgd"), d=20, steps=200, log_every=50, init_log_sigma=0.0)
    write_sweep(sweep_dir, grid(base, {"lr": (0.01, 0.1, 0.5, 1.5), "num_mc": (1, 8), "seed": (0,)}))
    return sweep_dir


def _theory_lines(figure):
    return [line for ax in figure.axes for line in ax.get_lines() if "lr =" in str(line.get_label()) or "KL =" in str(line.get_label())]


def test_sgd_sweeps_get_the_theory_overlays_and_adam_sweeps_do_not(sgd_sweep, story_sweep):
    from vi_sweep.analysis.render import theory_overlays
    from vi_sweep.analysis.theory import stability_limit_lr

    runs = load_sweep(sgd_sweep)
    overlays = theory_overlays(runs)
    assert set(overlays) == {"phase_map", "excess_over_exact"}
    cells = phase_table(runs)
    figure = phase_map(cells, overlays=overlays["phase_map"])
    labels = sorted(str(line.get_label()) for line in _theory_lines(figure))
    assert labels == sorted(
        ["exact-gradient limit in log sigma: lr = 1", "exact-gradient limit in mu: lr = 2", "SGD mean-square limit lr = M/(M+2)"]
    )
    # The mean-square limit is drawn where theory puts it: lr = M/(M+2) at the num_mc = 8 row.
    (limit,) = [line for line in _theory_lines(figure) if "M/(M+2)" in str(line.get_label())]
    x, y = limit.get_data()
    row = int(np.argmin(np.abs(np.asarray(y) - 1.0)))  # num_mc = 8 sits at category 1
    lr_positions = sorted(cells["lr"].unique())
    expected_x = np.interp(np.log10(stability_limit_lr(8.0)), np.log10(lr_positions), np.arange(len(lr_positions)))
    assert x[row] == pytest.approx(expected_x, abs=0.05)
    heatmap = excess_heatmap(cells, overlays=overlays["excess_over_exact"])
    assert any("noise floor" in str(line.get_label()) for line in _theory_lines(heatmap))
    assert theory_overlays(load_sweep(story_sweep)) == {}


def test_the_theory_legend_sits_below_the_axis_label_however_few_rows_the_map_has(sgd_sweep):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vi_sweep.analysis.render import theory_overlays

    runs = load_sweep(sgd_sweep)
    overlays = theory_overlays(runs)
    cells = phase_table(runs)
    for rows in (cells[cells["num_mc"] == 1], cells):  # one row of cells, and two
        for figure in (phase_map(rows, overlays=overlays["phase_map"]), excess_heatmap(rows, overlays=overlays["excess_over_exact"])):
            canvas = FigureCanvasAgg(figure)
            canvas.draw()  # places the axis label
            renderer = canvas.get_renderer()
            ax = figure.axes[0]
            legend, label = ax.get_legend().get_window_extent(renderer), ax.xaxis.label.get_window_extent(renderer)
            assert legend.y1 < label.y0  # display coordinates: y grows upwards


def test_runs_started_at_the_optimum_go_wrong_only_past_the_stability_limits(sgd_sweep):
    runs = load_sweep(sgd_sweep).set_index(["lr", "num_mc"])
    wrong = {"diverged", "unstable", "collapsed"}
    # Initial KL is 0 here: a small noise floor is neither a divergence nor an instability nor a collapse...
    assert runs.loc[(0.01, 1), "outcome"] not in wrong
    assert runs.loc[(0.1, 8), "outcome"] not in wrong
    # ...but SGD beyond lr = M/(M+2) (0.33 at M = 1) and beyond the exact limit lr = 1 is.
    assert runs.loc[(0.5, 1), "outcome"] in wrong
    assert set(runs.xs(1.5, level="lr")["outcome"].astype(str)) <= wrong
