"""``python -m vi_sweep report SWEEP_DIR``: classify a sweep and write ``SWEEP_DIR/report/``.

The report directory holds

- ``phase_table.csv`` (one row per cell, :func:`vi_sweep.analysis.phase.phase_table`) and ``runs.csv``
  (one row per run with its statistics and outcome);
- ``summary.md``: counts, thresholds, the cells of each outcome, the figures;
- figures as PNG (300 dpi) and PDF, one per facet (the swept keys other than lr and num_mc):
  ``phase_map``, ``excess_over_exact``, ``sigma``, plus ``kl_curves`` for chosen cells.

It is written into a temporary directory next to ``report/`` and swapped in, so a crash never
leaves a half-written report, and it is byte-reproducible: inputs are sorted, figures carry no
dates, there are no timestamps or absolute paths, and whether a baseline came from the cache or
was just computed is not recorded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from vi_sweep.analysis.figure_helper import FigureHelper, draw_all, start_helper
from vi_sweep.analysis.figures import facet_title, format_value, select_rows, split_facets
from vi_sweep.analysis.outcomes import OUTCOMES, Thresholds, classify
from vi_sweep.analysis.phase import cell_keys, example_cells, phase_table
from vi_sweep.analysis.read import SkippedFileWarning, Sweep, SweepError, read_sweep
from vi_sweep.analysis.references import BASELINE_DIR, BaselineCacheWarning, exact_baselines
from vi_sweep.analysis.render import FigureJob, render_figure
from vi_sweep.host import available_cores
from vi_sweep.store.metrics import current_umask

REPORT_DIR = "report"
SUMMARY_CELL_ROWS = 200  # summary.md lists at most this many cells; phase_table.csv has all
CSV_FLOAT_FORMAT = "%.6g"


def _facet_suffix(facet: Mapping[str, Any]) -> str:
    if not facet:
        return ""
    text = ",".join(f"{k}={format_value(v)}" for k, v in facet.items() if not _is_hole(v))
    return "__" + "".join(c if c.isalnum() or c in "=,.-_" else "-" for c in text)


def _is_hole(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _number(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if np.isinf(value):
        return "never" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def summary_markdown(
    sweep_name: str,
    runs: pd.DataFrame,
    cells: pd.DataFrame,
    keys: list[str],
    baselines: pd.DataFrame,
    thresholds: Thresholds,
    figures: list[str],
    skipped: Sequence[tuple[str, str]],
    unfinished: Sequence[str],
) -> str:
    """The report's ``summary.md`` (deterministic: no dates, no absolute paths)."""
    from vi_sweep import __version__

    per_cell = runs.groupby(keys, dropna=False, observed=True).size()
    spread = f"{per_cell.min()}" if per_cell.min() == per_cell.max() else f"{per_cell.min()}-{per_cell.max()}"
    swept = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    lines = [
        f"# vi_sweep report: {sweep_name}",
        "",
        f"{len(runs)} runs in {len(cells)} cells (swept: {', '.join(swept) or 'nothing'}; {spread} runs per cell).",
        "",
        f"Exact baselines: {int((baselines['source'] == 'sweep').sum())} found in the sweep, "
        f"{int((baselines['source'] == 'computed').sum())} computed with the trainer (cached in `baselines/`).",
        "",
        "## Outcomes",
        "",
    ]
    counts = runs["outcome"].astype(str).value_counts()
    majority = cells["outcome"].astype(str).value_counts()
    table = pd.DataFrame(
        {"outcome": list(OUTCOMES), "runs": [int(counts.get(o, 0)) for o in OUTCOMES], "cells (majority)": [int(majority.get(o, 0)) for o in OUTCOMES]}
    )
    lines += [_markdown_table(table), ""]
    for name in OUTCOMES:
        members = cells[cells["outcome"].astype(str) == name]
        if len(members):
            listed = "; ".join(facet_title({k: row[k] for k in keys}) for _, row in members.head(12).iterrows())
            more = f"; ... ({len(members) - 12} more)" if len(members) > 12 else ""
            lines.append(f"- **{name}**: {listed}{more}")
    lines += [
        "",
        "## Thresholds",
        "",
        f"- tail: the rows in the last {thresholds.tail_fraction:.0%} of a run's steps (never t = 1); "
        "tail KL excess = median over the tail of the KL excess over the mean-field optimum q*",
        f"- trend: OLS slope of log excess over the tail, standard error corrected for lag-1 autocorrelation "
        f"(effective sample size n_eff), one-sided alpha = {thresholds.trend_alpha:g} each way",
        f"- diverged: a non-finite value, or tail excess > {thresholds.divergence_per_dim:g} nats/dim after some row rose above the initial excess",
        f"- collapsed: tail min sigma < {thresholds.collapse_ratio:g} x the smallest sigma of q*, and the exact run's is not",
        "- unstable: the exact run neither converges nor falls (a cycle), or the tail rises or bursts "
        f"(10%-90% spread > {thresholds.burst_factor:g}x a noise floor's) beyond the tolerance",
        f"- converged: tail excess <= reference + {thresholds.tol_per_dim:g} nats/dim "
        "(reference: the exact run's tail excess if it converged, else 0)",
        "- slow: still falling, or undecided while the exact run is still falling (budget too short)",
        f"- undetermined: fewer than {thresholds.min_tail_rows} tail rows, or no significant trend with n_eff < {thresholds.min_effective_samples:g}",
        "- stalled: none of the above (a stationary noise floor)",
        "",
        "## Cells",
        "",
    ]
    shown = cells.head(SUMMARY_CELL_ROWS)
    view = pd.DataFrame({k: [format_value(v) for v in shown[k]] for k in keys})
    view["n"] = shown["n_runs"].to_numpy()
    view["outcome"] = [f"{o} ({int(round(f * n))}/{n})" for o, f, n in zip(shown["outcome"].astype(str), shown["outcome_frac"], shown["n_runs"])]
    view["tail KL"] = [_number(v) for v in shown["tail_kl_median"]]
    view["exact tail KL"] = [_number(v) for v in shown["baseline_tail_kl"]]
    view["KL excess [bootstrap interval] (coverage)"] = [
        f"{_number(m)} [{_number(lo)}, {_number(hi)}] ({_percent(c)})"
        for m, lo, hi, c in zip(shown["excess_over_exact_median"], shown["excess_over_exact_lo"], shown["excess_over_exact_hi"], shown["excess_over_exact_coverage"])
    ]
    view["time to tol / exact"] = [_number(v) for v in shown["time_to_tol_ratio"]]
    lines += [_markdown_table(view), ""]
    if len(cells) > SUMMARY_CELL_ROWS:
        lines += [f"({len(cells) - SUMMARY_CELL_ROWS} more cells in `phase_table.csv`.)", ""]
    lines += ["## Figures", ""]
    lines += [f"![{name}]({name}.png) ([PDF]({name}.pdf))" for name in figures]
    if skipped or unfinished:
        lines += ["", "## Not included", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in skipped]
        if unfinished:
            lines.append(f"- job directories without `metrics.parquet` (unfinished?): {', '.join(unfinished)}")
    lines += ["", f"Written by vi_sweep {__version__} (`python -m vi_sweep report`).", ""]
    return "\n".join(lines)


def write_report(
    sweep_dir: str | os.PathLike,
    *,
    cells: Sequence[Mapping[str, Any]] | None = None,
    cache_baselines: bool = True,
    thresholds: Thresholds | None = None,
    parallel: bool = True,
    helper: FigureHelper | None = None,
    out: str | os.PathLike | None = None,
) -> Path:
    """Classify the sweep in ``sweep_dir`` and write ``sweep_dir/report/`` (or ``out``); return its path.

    Parameters
    ----------
    sweep_dir
        A sweep directory (``<sweep_dir>/<job>/metrics.parquet``).
    cells
        Cells for the KL-curve figure (mappings of config values); default
        :func:`vi_sweep.analysis.phase.example_cells`, the clearest cell of each outcome.
    cache_baselines
        Cache computed exact baselines in ``sweep_dir/baselines/``.
    thresholds
        Classifier thresholds (default :class:`vi_sweep.analysis.outcomes.Thresholds`).
    parallel
        Draw the figures on two cores where there are two (:mod:`vi_sweep.analysis.figure_helper`); the
        files are the same either way.
    helper
        A figure helper started earlier (it imports matplotlib while the caller does something
        else, e.g. a sweep's start-up), used instead of starting one (unless ``parallel`` is
        false); closed here either way.
    out
        Where to write the report instead of ``sweep_dir/report`` (for a sweep you cannot write
        to). It is replaced as a whole, atomically.
    """
    thresholds = thresholds or Thresholds()
    try:
        sweep = read_sweep(sweep_dir)  # a missing or empty sweep fails here, before any process starts
    except BaseException:
        if helper is not None:
            helper.close(kill=True)
        raise
    if not parallel and helper is not None:
        helper.close(kill=True)
        helper = None
    if helper is None and parallel:
        helper = start_helper(available_cores())  # it imports while the runs are classified
    try:
        return _write_report(sweep, sweep_dir, cells, cache_baselines, thresholds, helper, Path(out) if out is not None else None)
    finally:
        if helper is not None:
            helper.close()


def _write_report(
    sweep: Sweep,
    sweep_dir: str | os.PathLike,
    cells: Sequence[Mapping[str, Any]] | None,
    cache_baselines: bool,
    thresholds: Thresholds,
    helper: FigureHelper | None,
    out: Path | None,
) -> Path:
    final = out if out is not None else Path(sweep_dir) / REPORT_DIR
    # The staging directory first: a report that cannot be written fails now, before any baseline is trained.
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        _fill_report(sweep, Path(sweep_dir), cells, cache_baselines and _can_cache(Path(sweep_dir)), thresholds, helper, staging)
        _swap_in(staging, final)
    except BaseException:
        if helper is not None:  # it may still be writing into the staging directory
            helper.close(kill=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _can_cache(sweep_dir: Path) -> bool:
    """Whether computed baselines can be kept in ``sweep_dir/baselines/``; says once if not."""
    where = sweep_dir / BASELINE_DIR
    if os.access(where if where.exists() else sweep_dir, os.W_OK):
        return True
    warnings.warn(f"{where} is not writable: exact baselines are trained for this report and not kept", BaselineCacheWarning, stacklevel=2)
    return False


def _fill_report(
    sweep: Sweep,
    sweep_dir: Path,
    cells: Sequence[Mapping[str, Any]] | None,
    cache_baselines: bool,
    thresholds: Thresholds,
    helper: FigureHelper | None,
    staging: Path,
) -> None:
    """Classify the sweep and write every file of its report into ``staging``."""
    references = exact_baselines(sweep, cache=cache_baselines)
    runs = classify(sweep, references, thresholds)
    keys = cell_keys(runs)
    cells_table = phase_table(runs, keys=keys)
    chosen = list(cells) if cells is not None else example_cells(cells_table, keys)
    for cell in chosen:
        _check_cell(runs, cell)

    _write_csv(cells_table, staging / "phase_table.csv")
    _write_csv(runs, staging / "runs.csv")
    runs.attrs["cell_keys"] = keys
    jobs: list[FigureJob] = []
    for facet, sub in split_facets(cells_table, keys=keys):
        suffix = _facet_suffix(facet)
        facet_runs = select_rows(runs, facet)
        for kind in ("phase_map", "excess_over_exact", "sigma"):
            jobs.append(FigureJob(kind, str(staging / f"{kind}{suffix}"), (sub, facet_runs, facet)))
    if chosen:
        jobs.append(FigureJob("kl_curves", str(staging / "kl_curves"), (runs, sweep.trajectories, references.trajectories, chosen)))
    # The helper takes jobs from the front, this process from the back: the KL curves (the
    # slowest figure) go first, so the two ends carry about the same work.
    draw_all(sorted(jobs, key=lambda job: job.kind != "kl_curves"), render_figure, helper)
    figures = [Path(job.stem).name for job in jobs]
    summary = summary_markdown(
        sweep_dir.resolve().name, runs, cells_table, keys, references.baselines, thresholds, figures, sweep.skipped, sweep.unfinished
    )
    (staging / "summary.md").write_text(summary, encoding="utf-8")


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.0f}%"


def _check_cell(runs: pd.DataFrame, cell: Mapping[str, Any]) -> None:
    for key in cell:
        if key not in runs.columns:
            raise SweepError(f"cell {facet_title(cell)}: {key} is not a config column of this sweep")
    if select_rows(runs, cell).empty:
        raise SweepError(f"cell {facet_title(cell)}: no run of this sweep has these values")


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging``: rename the old report aside, rename the new one in, delete
    the old. Stopped half-way (a Ctrl-C between the renames), the old report is put back."""
    old = final.with_name(f".{final.name}.old.{os.getpid()}") if final.exists() else None
    try:
        if old is not None:
            final.rename(old)
        staging.rename(final)
    except BaseException:
        if old is not None and old.exists():
            if final.exists():  # the new one got in: only the old one is left to delete
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def parse_cell(text: str) -> dict[str, Any]:
    """``"lr=0.05,num_mc=32"`` -> ``{"lr": 0.05, "num_mc": 32}`` (ints, then floats, else strings)."""
    cell: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--cell {text}: expected KEY=VALUE[,KEY=VALUE...]")
        cell[key.strip()] = _parse_value(value.strip())
    return cell


def _parse_value(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def main(argv: Sequence[str] | None = None, *, helper: FigureHelper | None = None) -> int:
    """Entry point of ``python -m vi_sweep report``. Errors are one line on stderr, exit code 2.

    ``helper``: a figure helper started earlier (see :func:`write_report`); the multirun's
    report starts one with the sweep."""
    try:
        return _main(argv, helper)
    finally:
        if helper is not None:  # write_report closed it, unless it never got there (then: stop it)
            helper.close(kill=True)


def _main(argv: Sequence[str] | None, helper: FigureHelper | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vi_sweep report", description="Classify the runs of a sweep and write SWEEP_DIR/report/.")
    parser.add_argument("sweep_dir", help="a sweep directory (hydra.sweep.dir of a multirun)")
    parser.add_argument("--cell", action="append", metavar="KEY=VALUE[,...]", help="a cell to draw KL curves for (repeatable), e.g. lr=0.05,num_mc=32")
    parser.add_argument("--no-cache", action="store_true", help="do not write computed exact baselines to SWEEP_DIR/baselines/")
    parser.add_argument("--out", metavar="DIR", help="write the report to DIR instead of SWEEP_DIR/report (e.g. for a sweep you cannot write to)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        warnings.simplefilter("always", BaselineCacheWarning)
        try:
            cells = [parse_cell(text) for text in args.cell] if args.cell else None
            path = write_report(args.sweep_dir, cells=cells, cache_baselines=not args.no_cache, helper=helper, out=args.out)
        except SweepError as err:
            _print_warnings(caught)
            print(f"vi_sweep: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # e.g. a read-only sweep directory
            _print_warnings(caught)
            where = err.filename or args.out or args.sweep_dir
            hint = "" if args.out else "; write it elsewhere with --out DIR"
            print(f"vi_sweep: error: cannot write the report in {where}: {err.strerror or err}{hint}", file=sys.stderr)
            return 1
    _print_warnings(caught)
    print(f"vi_sweep: report written to {path}")
    return 0


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Our warnings as one line each; anything else as Python would have shown it."""
    for item in caught:
        if issubclass(item.category, (SkippedFileWarning, BaselineCacheWarning)):
            print(f"vi_sweep: warning: {item.message}", file=sys.stderr)
        else:
            warnings.showwarning(item.message, item.category, item.filename, item.lineno)
