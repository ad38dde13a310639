"""Publication figures of a classified sweep: phase map, KL-excess heatmap, KL curves, sigma
statistics, and curves that compare estimators or optimizers (:func:`compare_curves`).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, nothing left open; in a notebook the figure displays inline) and sized for one paper
column (:data:`COLUMN_WIDTH` inches). Colours are the Okabe-Ito palette (Okabe & Ito 2008,
"Color Universal Design"), distinguishable under the common colour-vision deficiencies; the
phase map also prints each cell's outcome as text, so it reads in greyscale. Rendering always
starts from matplotlib's defaults (:func:`paper_style`), whatever the user's ``matplotlibrc``.

**Overlays** (the hook for theory curves, ``analysis/theory.py``): every figure function takes
``overlays``, a sequence of callables ``overlay(panel: Panel) -> None`` called after each panel
is drawn. A :class:`Panel` carries the axes, the data drawn in it, the facet it shows and the
maps from data coordinates (lr, num_mc) to axis coordinates -- the phase map's axes are
categorical, so a stability boundary ``lr*(num_mc)`` is drawn with
``panel.ax.plot(panel.x_of(lr_star), panel.y_of(num_mc))``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import LogFormatterSciNotation

from vi_sweep.analysis.outcomes import OUTCOMES

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper (NeurIPS/ICML ~3.25, IEEE ~3.5)
PNG_DPI = 300

OUTCOME_COLOURS = {  # Okabe-Ito
    "converged": "#009E73",  # bluish green
    "slow": "#56B4E9",  # sky blue
    "stalled": "#E69F00",  # orange
    "undetermined": "#BBBBBB",  # grey: no colour claims an answer
    "unstable": "#F0E442",  # yellow
    "collapsed": "#CC79A7",  # reddish purple
    "diverged": "#D55E00",  # vermillion
}
SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
EXCESS_CMAP = "cividis"  # perceptually uniform and colour-vision-deficiency safe (Nunez et al. 2018)
KL_DISPLAY_FLOOR = 1e-3  # KL curves on a log axis: values below are drawn at this level

AXIS_LABELS = {
    "lr": "learning rate (step size)",
    "num_mc": "MC samples (num_mc)",
}

PAPER_RC: dict[str, Any] = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by paper submission systems
    # Also the PDF backend's: it sizes its font subsets by ps.fonttype (matplotlib 3.11), and at
    # the default 3 every glyph past U+00FF (the minus of log-axis labels, "\u2264") went into a
    # second copy of DejaVu Sans, and each copy costs a fontTools subsetting pass (~50 ms a PDF).
    # Keep the two equal: pdf.fonttype 3 with ps.fonttype 42 fails on those glyphs.
    "ps.fonttype": 42,
    "svg.hashsalt": "vi_sweep",  # deterministic SVG ids should anyone save SVG
}


class Panel(NamedTuple):
    """What an overlay receives for one drawn panel."""

    ax: Any  # matplotlib Axes
    data: pd.DataFrame  # the rows drawn in this panel (cells or runs)
    facet: Mapping[str, Any]  # the fixed config values of this panel (e.g. estimator)
    x_of: Callable[[Any], Any]  # data x (lr, or step) -> axis x
    y_of: Callable[[Any], Any]  # data y (num_mc, or KL) -> axis y


Overlay = Callable[[Panel], None]


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Matplotlib's defaults plus :data:`PAPER_RC`, independent of the user's rc files."""
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update(PAPER_RC)
        yield


def save_figure(fig: Figure, stem: str | Path, *, producer: str = "vi_sweep") -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` byte-reproducibly (no dates, fixed producer)."""
    # PDF font subsetting (fontTools) logs every table at INFO, and inside a Hydra multirun the
    # root logger shows INFO: that would be hundreds of lines per report.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    stem = Path(stem)
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")  # stems may hold dots (lr=0.05)
    with paper_style():
        fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
        fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None, "Producer": producer, "Creator": producer})
    return [png, pdf]


class TextLogFormatter(LogFormatterSciNotation):
    """Log-axis tick labels as plain text with Unicode superscripts (``10\u207b\u00b3``,
    ``2\u00d710\u207b\u00b3``) where matplotlib's default writes mathtext (``$10^{-3}$``).

    The same labels at the same ticks, in the figure's own font (DejaVu Sans has the
    superscripts); mathtext parses every label afresh for every renderer, about 15 % of a
    report's drawing time. A label that is not a plain power of ten or a multiple of one keeps
    matplotlib's text.
    """

    def __call__(self, x, pos=None) -> str:
        label = super().__call__(x, pos)
        # LaTeX (text.usetex, a user's rc in a notebook) knows no superscript characters: mathtext it is.
        return label if mpl.rcParams["text.usetex"] else _mathtext_as_text(label)


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")
_POWER = re.compile(r"^\$\\mathdefault\{(-?)(?:([0-9.]+)\\times)?(\d+)\^\{(-?\d+)\}\}\$$")


def _mathtext_as_text(label: str) -> str:
    """``$\\mathdefault{10^{-3}}$`` -> ``10\u207b\u00b3``, ``$\\mathdefault{2\\times10^{-3}}$`` -> ``2\u00d710\u207b\u00b3``; anything else unchanged."""
    match = _POWER.match(label)
    if match is None:
        return label
    sign, coefficient, base, exponent = match.groups()
    minus, times = "\u2212", "\u00d7"
    return (minus if sign else "") + (coefficient + times if coefficient else "") + base + exponent.translate(_SUPERSCRIPT)


def text_log_labels(fig: Figure) -> None:
    """Give every log axis of ``fig`` (colour bars included) :class:`TextLogFormatter` labels,
    keeping each formatter's settings (labelled decades, minor thresholds).

    The formatter itself becomes one (a subclass with no state of its own), not a copy: a colour
    bar keeps its formatter and puts it back when its image changes (``set_clim``)."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for formatter in (axis.get_major_formatter(), axis.get_minor_formatter()):
                if type(formatter) is LogFormatterSciNotation:
                    formatter.__class__ = TextLogFormatter


def finish_layout(fig: Figure) -> None:
    """Text log labels (:func:`text_log_labels`), then ``tight_layout``: the last step of every figure here."""
    text_log_labels(fig)
    fig.tight_layout()


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """Compact tick text: 0.0001 -> 1e-4, 0.05 -> 0.05, 10.0 -> 10, 32 -> 32."""
    if isinstance(value, (float, np.floating)):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            mantissa, exponent = f"{value:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def facet_title(facet: Mapping[str, Any]) -> str:
    """``lr=0.05, num_mc=32``; NaN values (another optimizer's hyperparameter) are left out."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in facet.items() if not _is_hole(v))


def _is_hole(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and np.isnan(value)


def select_rows(frame: pd.DataFrame, values: Mapping[str, Any]) -> pd.DataFrame:
    """Rows of ``frame`` whose columns equal ``values`` (NaN matches NaN: mixed-optimizer sweeps)."""
    mask = np.ones(len(frame), dtype=bool)
    for key, value in values.items():
        column = frame[key]
        mask &= (column.isna() & pd.isna(value)).to_numpy() if _is_hole(value) or value is None else (column == value).to_numpy()
    return frame[mask]


def split_facets(table: pd.DataFrame, axes: Sequence[str] = ("lr", "num_mc"), keys: Sequence[str] | None = None) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Split a table into panels: one per combination of ``keys`` (default: every column named in
    ``table.attrs["cell_keys"]`` that is not an axis), in sorted order."""
    keys = [k for k in (keys if keys is not None else table.attrs.get("cell_keys", [])) if k not in axes]
    if not keys:
        return [({}, table)]
    out = []
    for values, sub in table.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        out.append((dict(zip(keys, values)), sub))
    return out


def _categorical_position(values: Sequence[float], log: bool) -> Callable[[Any], Any]:
    """Map data values to positions 0..n-1 of sorted categories, interpolating (log-)linearly between them."""
    grid = np.asarray(sorted(values), dtype=float)
    scale = np.log10 if log else (lambda v: np.asarray(v, dtype=float))
    coords = scale(grid)

    def position(value):
        v = scale(np.asarray(value, dtype=float))
        if len(coords) == 1:
            return np.zeros_like(v)
        inside = np.interp(v, coords, np.arange(len(coords)))
        below = (v - coords[0]) / (coords[1] - coords[0])
        above = len(coords) - 1 + (v - coords[-1]) / (coords[-1] - coords[-2])
        return np.where(v < coords[0], below, np.where(v > coords[-1], above, inside))

    return position


def _grid_axes(ax, lrs: Sequence[float], mcs: Sequence[int]) -> None:
    ax.set_xticks(range(len(lrs)), [format_value(v) for v in lrs])
    ax.set_yticks(range(len(mcs)), [format_value(v) for v in mcs])
    ax.set_xlim(-0.5, len(lrs) - 0.5)
    ax.set_ylim(-0.5, len(mcs) - 0.5)
    ax.set_xlabel(AXIS_LABELS["lr"])
    ax.set_ylabel(AXIS_LABELS["num_mc"])
    ax.tick_params(length=2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def log_axis(ax, which: str, values: np.ndarray, *, around: float) -> None:
    """A log scale on ``ax``'s ``which`` axis; with no positive finite value to show (every run of
    the panel non-finite), the range is a decade either side of ``around`` instead of an error."""
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    shown = np.asarray(values, float)
    if not np.any(np.isfinite(shown) & (shown > 0)):
        (ax.set_ylim if which == "y" else ax.set_xlim)(around / 10.0, around * 10.0)


def _mix_with_white(colour: str, amount: float) -> tuple[float, float, float]:
    """``amount`` = 1 is the colour, 0 is white: a minority outcome reads lighter."""
    rgb = np.asarray(to_rgb(colour))
    return tuple(1.0 - amount * (1.0 - rgb))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def phase_map(cells: pd.DataFrame, *, facet: Mapping[str, Any] | None = None, overlays: Sequence[Overlay] = ()) -> Figure:
    """The phase map over lr x num_mc: each cell coloured by its majority outcome.

    The fill is lighter when the majority is not unanimous (the colour is mixed with white in
    proportion to the majority's fraction), and the cell reads ``outcome`` and ``k/n`` seeds.

    Parameters
    ----------
    cells
        Rows of :func:`vi_sweep.analysis.phase.phase_table` for one facet (one row per lr x num_mc).
    facet
        Fixed config values of this panel, shown in the title.
    overlays
        See the module docstring.
    """
    lrs = sorted(cells["lr"].unique())
    mcs = sorted(cells["num_mc"].unique())
    width = COLUMN_WIDTH
    height = 0.9 + 0.32 * len(mcs)
    fig = Figure(figsize=(width, height))
    with paper_style():
        ax = fig.add_subplot()
        for row in cells.itertuples(index=False):
            x, y = lrs.index(row.lr), mcs.index(row.num_mc)
            outcome, share = str(row.outcome), float(row.outcome_frac)
            fill = _mix_with_white(OUTCOME_COLOURS[outcome], 0.35 + 0.65 * share)
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=fill, edgecolor="white", linewidth=1.0))
            count = int(round(share * row.n_runs))
            ax.text(x, y, f"{outcome}\n{count}/{row.n_runs}", ha="center", va="center", fontsize=5.5, linespacing=1.1)
        _grid_axes(ax, lrs, mcs)
        if facet:
            ax.set_title(facet_title(facet))
        handles = [Patch(facecolor=OUTCOME_COLOURS[o], label=o) for o in OUTCOMES]
        fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, handlelength=1.0, columnspacing=0.9, bbox_to_anchor=(0.5, 1.0))  # two rows: one column wide
        _run_overlays(overlays, Panel(ax, cells, dict(facet or {}), _categorical_position(lrs, log=True), _categorical_position(mcs, log=True)))
        finish_layout(fig)
    return fig


def excess_heatmap(
    cells: pd.DataFrame, *, facet: Mapping[str, Any] | None = None, floor: float = 1e-4, overlays: Sequence[Overlay] = ()
) -> Figure:
    """Median tail-KL excess over the exact baseline per dimension, lr x num_mc, log colour scale.

    Values below ``floor`` nats/dim (including zero and negative excesses, e.g. when the exact run
    diverged too) are drawn at ``floor`` and printed as ``<floor``. Cells whose exact baseline
    did not converge are hatched: their excess compares two unfinished runs.
    """
    lrs = sorted(cells["lr"].unique())
    mcs = sorted(cells["num_mc"].unique())
    values = cells["excess_over_exact_per_dim_median"].to_numpy(float)
    finite = values[np.isfinite(values)]
    top = max(float(np.max(finite)) if len(finite) else floor * 10, floor * 10)
    norm = LogNorm(vmin=floor, vmax=top)
    fig = Figure(figsize=(COLUMN_WIDTH, 0.8 + 0.32 * len(mcs)))
    with paper_style():
        ax = fig.add_subplot()
        cmap = mpl.colormaps[EXCESS_CMAP]
        for row in cells.itertuples(index=False):
            x, y = lrs.index(row.lr), mcs.index(row.num_mc)
            value = float(row.excess_over_exact_per_dim_median)
            shown = min(max(value, floor), top) if np.isfinite(value) else np.nan
            colour = cmap(norm(shown)) if np.isfinite(shown) else (0.85, 0.85, 0.85, 1.0)
            hatch = None if row.baseline_outcome == "converged" else "////"
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=colour, edgecolor="white", linewidth=1.0, hatch=hatch))
            luminance = np.dot(colour[:3], (0.299, 0.587, 0.114))
            box = dict(boxstyle="square,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85) if hatch else None
            ax.text(x, y, _excess_text(value, floor), ha="center", va="center", fontsize=5.5, bbox=box, color="black" if hatch or luminance > 0.5 else "white")
        _grid_axes(ax, lrs, mcs)
        if facet:
            ax.set_title(facet_title(facet))
        mappable = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        bar = fig.colorbar(mappable, ax=ax, fraction=0.05, pad=0.03)
        bar.set_label("median tail KL excess\nover exact (nats / dim)")
        bar.ax.tick_params(labelsize=6, length=2)
        if (cells["baseline_outcome"] != "converged").any():
            hatched = Patch(facecolor="white", edgecolor="0.3", hatch="////", label="exact run did not converge")
            fig.legend(handles=[hatched], loc="lower center", frameon=False, bbox_to_anchor=(0.5, 1.0))
        _run_overlays(overlays, Panel(ax, cells, dict(facet or {}), _categorical_position(lrs, log=True), _categorical_position(mcs, log=True)))
        finish_layout(fig)
    return fig


def _excess_text(value: float, floor: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    if value <= 0:
        return "\u22640"  # the MC runs did as well as the exact one (or it did worse, e.g. diverged)
    return f"<{format_value(floor)}" if value < floor else f"{value:.2g}"


def kl_curves(
    runs: pd.DataFrame,
    trajectories: pd.DataFrame,
    baseline_trajectories: pd.DataFrame,
    cells: Sequence[Mapping[str, Any]],
    *,
    overlays: Sequence[Overlay] = (),
) -> Figure:
    """KL excess over q* against step for chosen cells: median over seeds, min-max band, and the exact baseline.

    Parameters
    ----------
    runs
        Classified runs (:func:`vi_sweep.analysis.load.load_sweep`): config, ``outcome``, ``baseline``,
        ``reference_kl_excess``, ``tolerance``.
    trajectories
        The sweep's long table (``run``, ``step``, ``kl_excess``).
    baseline_trajectories
        The baselines' long table, keyed by ``run`` = baseline id.
    cells
        One mapping of config values per panel (e.g. ``{"lr": 0.05, "num_mc": 32}``); every run
        matching all of them is drawn in that panel.
    """
    n = max(1, len(cells))
    ncols = 1 if n == 1 else 2
    nrows = int(np.ceil(n / ncols))
    fig = Figure(figsize=(COLUMN_WIDTH, 0.35 + 1.1 * nrows))
    with paper_style():
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=False)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        for ax, cell in zip(axes.ravel(), cells):
            members = select_rows(runs, cell)
            if members.empty:
                ax.set_visible(False)
                continue
            rows = trajectories[trajectories["run"].isin(members["run"])]
            table = rows.pivot(index="step", columns="run", values="kl_excess")
            steps = table.index.to_numpy()
            kl = np.maximum(table.to_numpy(float), KL_DISPLAY_FLOOR)
            majority = members["outcome"].astype(str).value_counts()
            outcome = majority.index[0]
            colour = OUTCOME_COLOURS[outcome]
            with np.errstate(all="ignore"):
                ax.fill_between(steps, np.nanmin(kl, axis=1), np.nanmax(kl, axis=1), color=colour, alpha=0.3, linewidth=0)
                ax.plot(steps, np.nanmedian(kl, axis=1), color=colour, label=f"MC, {len(members)} seeds")
            base = baseline_trajectories[baseline_trajectories["run"] == members["baseline"].iloc[0]]
            ax.plot(base["step"], np.maximum(base["kl_excess"].to_numpy(float), KL_DISPLAY_FLOOR), color="black", linestyle="--", linewidth=0.8, label="exact")
            level = float(members["reference_kl_excess"].iloc[0]) + float(members["tolerance"].iloc[0])
            ax.axhline(max(level, KL_DISPLAY_FLOOR), color="0.5", linestyle=":", linewidth=0.8, label="tolerance")
            log_axis(ax, "y", np.concatenate([kl.ravel(), base["kl_excess"].to_numpy(float)]), around=max(level, KL_DISPLAY_FLOOR))
            ax.set_title(f"{facet_title(cell)}: {outcome} {majority.iloc[0]}/{len(members)}", fontsize=6)
            ax.set_xlabel("step")
            ax.set_ylabel("KL excess over q* (nats)")
            ax.tick_params(length=2)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            _run_overlays(overlays, Panel(ax, rows, dict(cell), lambda v: v, lambda v: v))
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.0))
        finish_layout(fig)
    return fig


VALUE_LABELS = {  # short: a label must fit the height of one panel
    "kl_excess": "KL excess (nats)",
    "kl": "KL(q || p) (nats)",
    "loss": "neg. ELBO (MC)",
    "sigma_mean": "mean of sigma",
    "sigma_min": "min of sigma",
    "sigma_max": "max of sigma",
    "sigma_std": "std of sigma",
    "mu_norm": "|mu|",
    "mean_error": "|mu - m|",
    "grad_norm": "gradient norm",
}
SERIES_DASHES = ("-", "--", "-.", ":")  # with the colours, so that lines read in greyscale too


def compare_curves(
    trajectories: pd.DataFrame,
    values: Sequence[str] = ("kl_excess",),
    *,
    series: Sequence[str] = (),
    facet_by: Sequence[str] = (),
    log: bool = True,
    overlays: Sequence[Overlay] = (),
) -> Figure:
    """Metrics against step: one line per series (e.g. per estimator), one panel per facet and value.

    Each line is the median over the runs of its series in the panel -- the seeds, when
    ``series`` and ``facet_by`` hold every swept key -- and its band their min-max range. Colours
    and dashes follow the sorted series values, the same in every panel.

    Parameters
    ----------
    trajectories
        One row per logged step per run with its config columns
        (:func:`vi_sweep.analysis.load.load_trajectories`): ``run``, ``step``, the ``values``.
    values
        Metric columns to draw (:data:`VALUE_LABELS`): one column of panels each. With one value
        the facets fill two columns.
    series, facet_by
        Config keys drawn as separate lines, and with one panel per value
        (:func:`vi_sweep.analysis.phase.series_keys`, :func:`vi_sweep.analysis.phase.facet_keys`).
    log
        Log y axes where a panel's values span more than a decade; KL values below
        :data:`KL_DISPLAY_FLOOR` are drawn at it, other non-positive values are left out.
    """
    values, series = list(values), list(series)
    facets = split_facets(trajectories, axes=(), keys=list(facet_by))
    lines = [dict(zip(series, combo)) for combo in trajectories[series].drop_duplicates().sort_values(series).itertuples(index=False)] if series else [{}]
    panels = [(facet, rows, value) for facet, rows in facets for value in values]
    ncols = len(values) if len(values) > 1 else min(2, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    fig = Figure(figsize=(COLUMN_WIDTH, 0.45 + 1.15 * nrows))
    with paper_style():
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.ravel()[len(panels) :]:
            ax.set_visible(False)
        for ax, (facet, rows, value) in zip(axes.ravel(), panels):
            for i, line in enumerate(lines):
                members = select_rows(rows, line)
                if members.empty:
                    continue
                table = members.pivot(index="step", columns="run", values=value)
                shown = _shown_values(table.to_numpy(float), value, log)
                colour, dashes = SERIES_COLOURS[i % len(SERIES_COLOURS)], SERIES_DASHES[i % len(SERIES_DASHES)]
                with np.errstate(all="ignore"), _quiet_all_nan():
                    ax.fill_between(table.index, np.nanmin(shown, axis=1), np.nanmax(shown, axis=1), color=colour, alpha=0.25, linewidth=0)
                    ax.plot(table.index, np.nanmedian(shown, axis=1), color=colour, linestyle=dashes, label=facet_title(line) or "all runs")
            shown = _shown_values(rows[value].to_numpy(float), value, log)
            if log and _decades(shown) > 1:  # within a decade a log axis reads worse (a label per minor tick)
                log_axis(ax, "y", shown, around=1.0)
            title = facet_title(facet)
            if title:
                ax.set_title(title, fontsize=6)
            row, column = divmod(list(axes.ravel()).index(ax), ncols)
            if row == nrows - 1 or (row + 1) * ncols + column >= len(panels):  # the lowest panel of its column
                ax.set_xlabel("step")
            if len(values) > 1:  # one value: a single label for the figure, below
                ax.set_ylabel(VALUE_LABELS.get(value, value))
            ax.tick_params(length=2)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            _run_overlays(overlays, Panel(ax, rows, dict(facet), lambda v: v, lambda v: v))
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), frameon=False, bbox_to_anchor=(0.5, 1.0),
            title="median over seeds, band: min to max", title_fontsize=6,
        )
        if len(values) == 1:
            fig.supylabel(VALUE_LABELS.get(values[0], values[0]), fontsize=mpl.rcParams["axes.labelsize"])
        finish_layout(fig)
    return fig


def _shown_values(values: np.ndarray, column: str, log: bool) -> np.ndarray:
    """What a curve draws: finite values; on a log axis KLs floored at :data:`KL_DISPLAY_FLOOR`, other non-positive values dropped."""
    values = np.where(np.isfinite(values), values, np.nan)
    if not log:
        return values
    if column.startswith("kl"):
        return np.maximum(values, KL_DISPLAY_FLOOR)
    return np.where(values > 0, values, np.nan)


def _decades(values: np.ndarray) -> float:
    """How many decades the positive finite ``values`` span (inf if none: a log axis then shows an empty decade range)."""
    positive = values[np.isfinite(values) & (values > 0)]
    return float(np.log10(positive.max() / positive.min())) if len(positive) else float("inf")


@contextlib.contextmanager
def _quiet_all_nan() -> Iterator[None]:
    """numpy warns on a step where every run of a line is NaN (e.g. all diverged); the curve just has a gap there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        yield


def sigma_statistics(runs: pd.DataFrame, *, facet: Mapping[str, Any] | None = None, overlays: Sequence[Overlay] = ()) -> Figure:
    """Tail sigma statistics against lr, one line per num_mc (medians over seeds, min-max bars).

    Left: the median over the tail of mean(sigma), with the smallest sigma of the mean-field
    optimum q*. Right: the tail's min sigma, log scale, with the collapse threshold
    (``collapse_ratio`` x the smallest sigma of q*).
    """
    fig = Figure(figsize=(COLUMN_WIDTH, 1.75))
    with paper_style():
        left, right = fig.subplots(1, 2)
        for i, (num_mc, group) in enumerate(runs.groupby("num_mc", sort=True)):
            colour, marker = SERIES_COLOURS[i % len(SERIES_COLOURS)], SERIES_MARKERS[i % len(SERIES_MARKERS)]
            for ax, column in ((left, "tail_sigma_mean"), (right, "tail_sigma_min")):
                stats = group.groupby("lr")[column].agg(["median", "min", "max"]).sort_index()
                lrs = stats.index.to_numpy(float)
                with np.errstate(invalid="ignore"):  # all-NaN cells (every run non-finite) draw no bar
                    low = np.nan_to_num(np.maximum(stats["median"] - stats["min"], 0), nan=0.0, posinf=0.0)
                    high = np.nan_to_num(np.maximum(stats["max"] - stats["median"], 0), nan=0.0, posinf=0.0)
                median = stats["median"].where(np.isfinite(stats["median"]))  # an overflowed sigma has no point
                ax.errorbar(lrs, median, yerr=[low, high], color=colour, marker=marker, capsize=1.5, elinewidth=0.6, label=f"num_mc={num_mc}")
        threshold = float(runs["collapse_threshold"].min())
        right.axhline(threshold, color=OUTCOME_COLOURS["collapsed"], linestyle="--", linewidth=0.8, label="collapse threshold")
        left.axhline(float(runs["sigma_star_min"].min()), color="0.5", linestyle=":", linewidth=0.8, label="smallest sigma of q*")
        left.set_ylabel("tail mean of sigma")
        right.set_ylabel("tail min of sigma")
        log_axis(right, "y", runs["tail_sigma_min"].to_numpy(float), around=threshold)
        lrs = runs["lr"].to_numpy(float)
        for ax, column in ((left, "tail_sigma_mean"), (right, "tail_sigma_min")):
            shown = runs[column].to_numpy(float)
            ax.set_xscale("log")
            if not np.isfinite(shown).any():  # nothing drawn: the lr range itself, not matplotlib's default (0, 1)
                ax.set_xlim(lrs.min() / 10.0, lrs.max() * 10.0)
        for ax in (left, right):
            ax.set_xlabel(AXIS_LABELS["lr"])
            ax.tick_params(length=2)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            _run_overlays(overlays, Panel(ax, runs, dict(facet or {}), lambda v: v, lambda v: v))
        if facet:
            fig.suptitle(facet_title(facet))
        legend = dict(zip(*reversed(right.get_legend_handles_labels())))
        legend.update(zip(*reversed(left.get_legend_handles_labels())))
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 1.0))
        finish_layout(fig)
    return fig


def _run_overlays(overlays: Sequence[Overlay], panel: Panel) -> None:
    for overlay in overlays:
        overlay(panel)
