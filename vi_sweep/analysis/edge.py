"""The stability edge: for each num_mc, the largest lr whose run still ends within the tolerance of its exact twin.

A search (``python -m vi_sweep multirun search=stability_edge num_mc=M``, Optuna minimising
``optimized_metric=stability_edge``) samples lr densely near the edge; :func:`stability_edge`
reads the edge off any classified sweep's runs (:func:`vi_sweep.analysis.load_sweep`: searched
or gridded, several sweeps concatenated) with the search's own criterion, ``excess_over_exact <=
tolerance`` (0.01 nats/dim over the exact run's tail excess) and finite, and :func:`edge_overlay`
draws it on a phase map (:func:`vi_sweep.analysis.figures.phase_map`)::

    edges = stability_edge(pd.concat([load_sweep(d) for d in searched_dirs]))
    phase_map(phase_table(load_sweep(grid_dir)), overlays=[edge_overlay(edges)])
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

EDGE_COLOUR = "#000000"


def stability_edge(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per ``num_mc``: ``lr_edge`` (the largest lr within tolerance), ``lr_beyond`` (the
    smallest larger lr that is not; NaN if none was run), ``n_runs``, ``n_within``.

    ``runs``: rows of :func:`vi_sweep.analysis.load_sweep` (``lr``, ``num_mc``,
    ``excess_over_exact``, ``tolerance``, ``nonfinite``).
    """
    within = (runs["excess_over_exact"] <= runs["tolerance"]) & ~runs["nonfinite"].astype(bool)
    rows = []
    for num_mc, group in runs.assign(within=within).groupby("num_mc", sort=True):
        inside = group.loc[group["within"], "lr"]
        edge = float(inside.max()) if len(inside) else np.nan
        beyond = group.loc[~group["within"] & (group["lr"] > (edge if edge == edge else -np.inf)), "lr"]
        rows.append(
            {
                "num_mc": int(num_mc),
                "lr_edge": edge,
                "lr_beyond": float(beyond.min()) if len(beyond) else np.nan,
                "n_runs": int(len(group)),
                "n_within": int(group["within"].sum()),
            }
        )
    return pd.DataFrame(rows, columns=["num_mc", "lr_edge", "lr_beyond", "n_runs", "n_within"])


def edge_overlay(edges: pd.DataFrame, *, label: str = "stability edge (search)") -> Callable:
    """A phase-map overlay: the edge of each num_mc as a marker (the bracket to ``lr_beyond`` as a
    bar), joined by a line; a num_mc between the map's rows is placed between them (log scale)."""

    def draw(panel) -> None:
        found = edges.dropna(subset=["lr_edge"]).sort_values("num_mc")
        if found.empty:
            return
        x = panel.x_of(found["lr_edge"].to_numpy(float))
        y = panel.y_of(found["num_mc"].to_numpy(float))
        beyond = found["lr_beyond"].to_numpy(float)
        right = np.where(np.isfinite(beyond), panel.x_of(np.where(np.isfinite(beyond), beyond, 1.0)), x)
        panel.ax.plot(x, y, color=EDGE_COLOUR, linewidth=0.8, marker="D", markersize=2.5, label=label, zorder=5)
        panel.ax.hlines(y, x, right, color=EDGE_COLOUR, linewidth=1.6, zorder=5)
        panel.ax.legend(loc="upper right", fontsize=5, frameon=True, framealpha=0.8, handlelength=1.5)

    return draw
