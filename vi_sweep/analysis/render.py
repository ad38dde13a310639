"""One report figure as a picklable job, and the function that draws it (in the report's process or the figure helper's).

:class:`FigureJob` says what to draw and where; :func:`render_figure` draws and saves it. Both the
report (:mod:`vi_sweep.analysis.report`) and the second process that shares its drawing
(:mod:`vi_sweep.analysis.figure_helper`) import this module, so neither imports the other's.
The theory curves of :mod:`vi_sweep.analysis.theory` are added here where they apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from vi_sweep.analysis.figures import Overlay, Panel, excess_heatmap, kl_curves, phase_map, save_figure, sigma_statistics
from vi_sweep.analysis.theory import sgd_overlay_lines


class FigureJob(NamedTuple):
    """One figure of the report: what to draw, where (``stem`` + ``.png``/``.pdf``), from what."""

    kind: str  # phase_map | excess_over_exact | sigma: args = (cell table, runs, facet); kl_curves: kl_curves' args
    stem: str
    args: tuple


def render_figure(job: FigureJob) -> str:
    """Draw and save one figure; return its name. Runs in this process or in the figure helper."""
    if job.kind == "kl_curves":
        fig = kl_curves(*job.args)
    else:
        cells_table, runs, facet = job.args
        overlays = theory_overlays(runs).get(job.kind, ())
        if job.kind == "phase_map":
            fig = phase_map(cells_table, facet=facet, overlays=overlays)
        elif job.kind == "excess_over_exact":
            fig = excess_heatmap(cells_table, facet=facet, overlays=overlays)
        else:
            fig = sigma_statistics(runs, facet=facet)
    save_figure(fig, job.stem)
    return Path(job.stem).name


# The first-order theory of vi_sweep/analysis/theory.py holds for exactly this configuration.
THEORY_CONFIG = {"optimizer": "sgd", "objective": "mc", "estimator": "reparam", "target": "standard_normal"}


def theory_overlays(runs: pd.DataFrame) -> dict[str, list[Overlay]]:
    """Theory curves for the phase map and the KL-excess heatmap of one facet, if they apply.

    They apply when every run of the facet is plain SGD (no gradient clipping) with the reparam
    estimator on the standard-normal target (:data:`THEORY_CONFIG`) with one dimension ``d``: the phase map gets
    the step-size limits (lr = 1 in log sigma, lr = 2 in mu, the mean-square limit
    lr = M/(M+2)), the heatmap the iso-lines of the predicted stationary KL per dimension
    (:func:`vi_sweep.analysis.theory.sgd_overlay_lines`). Otherwise there are none.
    """
    for key, value in THEORY_CONFIG.items():
        if key not in runs.columns or set(runs[key].unique()) != {value}:
            return {}
    if "optimizer_grad_clip" in runs.columns and runs["optimizer_grad_clip"].notna().any():
        return {}  # clipping changes the step-size limits
    if runs["d"].nunique() != 1:
        return {}
    d = int(runs["d"].iloc[0])
    num_mc = np.geomspace(runs["num_mc"].min() / 2.0, runs["num_mc"].max() * 2.0, 200)

    def overlay(kind: str) -> Overlay:
        def draw(panel: Panel) -> None:
            for line, dashes in zip(sgd_overlay_lines(kind, num_mc, d=d), THEORY_DASHES):
                panel.ax.plot(
                    panel.x_of(line.lr), panel.y_of(line.num_mc), label=line.label, linestyle=dashes, **THEORY_STYLES[line.style]
                )
            # Below the axes: inside, the legend would hide cells. Its gap is in font sizes, not in
            # axes fractions, so it clears the tick labels and the axis label at any number of rows.
            # The white iso-KL lines need a grey legend box to be seen.
            panel.ax.legend(
                loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=LEGEND_GAP, fontsize="x-small",
                frameon=kind == "kl", facecolor="0.55", edgecolor="none",
            )

        return draw

    return {"phase_map": [overlay("phase")], "excess_over_exact": [overlay("kl")]}


LEGEND_GAP = 6.0  # legend font sizes between the axes and the theory legend: below the ticks and the axis label
THEORY_STYLES = {"limit": dict(color="black", linewidth=1.2), "level": dict(color="white", linewidth=1.2)}
THEORY_DASHES = ("--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))  # one per curve, so they read in greyscale
