"""Paper figures as code: each figure declared once -- its sweep and its plotting call -- and a
manifest that says whether a regenerated figure is the published one.

A declarations file (the project's is ``analysis/figures.yaml``) maps figure names to

- ``sweep``: the Hydra overrides of the ``python -m vi_sweep multirun`` that makes its data
  (``[]`` is the default grid of ``conf/grid/default.yaml``);
- ``plot``: one of :data:`PLOTS`, with ``args``, its keyword arguments;
- ``more_sweeps`` (optional): further sweeps a plot draws on, a list of override lists (the
  stability edge: one Optuna search per num_mc, overlaid on the grid's phase map).

``python -m vi_sweep figures`` (:mod:`vi_sweep.figures_command`) runs the sweeps and draws each
figure with :func:`draw_figure`. This module is the part without Hydra and without processes:
reading the declarations, the plotting calls, and the manifest -- per figure the SHA-256 of its
PNG and PDF, the config that made it (its sweep, its plot, a digest of the runs it drew) -- and
the versions and CPU vector width it was made with, because the bytes are reproducible on one
machine and JAX version, not across all of them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import platform
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import pandas as pd
from matplotlib.figure import Figure

from vi_sweep.analysis.figures import compare_curves, excess_heatmap, facet_title, phase_map, select_rows, split_facets
from vi_sweep.analysis.load import trajectories_with_config
from vi_sweep.analysis.outcomes import Thresholds, classify
from vi_sweep.analysis.phase import cell_keys, facet_keys, phase_table, series_keys
from vi_sweep.analysis.read import SweepError, read_sweep
from vi_sweep.analysis.references import exact_baselines
from vi_sweep.analysis.render import theory_overlays

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
FIGURE_FILES = (".png", ".pdf")
FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # becomes a file name
DECLARATION_KEYS = ("sweep", "plot", "args", "more_sweeps")
RESERVED_OVERRIDES = ("hydra.sweep.dir",)  # the figures command chooses it (one directory per declared sweep)


class DeclarationError(ValueError):
    """A declarations file the figures command cannot use; the message is one line naming the figure and key."""


class FigureDeclaration(NamedTuple):
    """One declared figure: the sweep that makes its data and the call that draws it."""

    name: str
    sweep: tuple[str, ...]  # Hydra overrides of its multirun
    plot: str  # a key of PLOTS
    args: Mapping[str, Any]  # the plot's keyword arguments
    more_sweeps: tuple[tuple[str, ...], ...] = ()  # further sweeps the plot draws on (its ``more`` argument)

    @property
    def sweeps(self) -> tuple[tuple[str, ...], ...]:
        """Every sweep the figure needs: its own, then ``more_sweeps``."""
        return (self.sweep, *self.more_sweeps)

    def config(self) -> dict[str, Any]:
        """What the manifest records as the figure's config (plain JSON)."""
        config = {"sweep": list(self.sweep), "plot": {"kind": self.plot, "args": dict(self.args)}}
        if self.more_sweeps:
            config["more_sweeps"] = [list(sweep) for sweep in self.more_sweeps]
        return config


class SweepData:
    """A sweep read once for all the figures drawn from it: classified runs, trajectories, a digest of its runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sweep = read_sweep(self.path)

    @cached_property
    def runs(self) -> pd.DataFrame:
        """One classified row per run (as :func:`vi_sweep.analysis.load.load_sweep`, from the sweep already read)."""
        return classify(self.sweep, exact_baselines(self.sweep), Thresholds())

    @cached_property
    def trajectories(self) -> pd.DataFrame:
        return trajectories_with_config(self.sweep)

    @cached_property
    def digest(self) -> dict[str, Any]:
        """How many runs, and the SHA-256 of their configs (fields and scenario, canonical JSON, sorted):
        the same data asked for gives the same digest, wherever and in whatever job order it ran."""
        keys = sorted(
            json.dumps({"fields": fields, "scenario": scenario}, sort_keys=True)
            for fields, scenario in zip(self.sweep.fields, self.sweep.runs["scenario"])
        )
        return {"count": len(keys), "sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()}


# --------------------------------------------------------------------------------------------
# Plotting calls: (sweep, **args) -> Figure
# --------------------------------------------------------------------------------------------


def _selected(frame: pd.DataFrame, select: Mapping[str, Any] | None) -> pd.DataFrame:
    select = dict(select or {})
    unknown = [key for key in select if key not in frame.columns]
    if unknown:
        raise SweepError(f"select: {', '.join(unknown)} is not a config column of this sweep")
    chosen = select_rows(frame, select)
    if chosen.empty:
        raise SweepError(f"select: no run of this sweep has {facet_title(select)}")
    return chosen


def _one_facet(data: SweepData, select: Mapping[str, Any] | None, kind: str) -> tuple[pd.DataFrame, dict, Sequence]:
    """The phase table of the selected runs, which must form one lr x num_mc facet, with its theory overlays."""
    runs = _selected(data.runs, select)
    keys = cell_keys(runs)
    facets = split_facets(phase_table(runs, keys=keys), keys=keys)
    if len(facets) > 1:
        shown = "; ".join(facet_title(facet) for facet, _ in facets[:4]) + ("; ..." if len(facets) > 4 else "")
        raise SweepError(f"the sweep has {len(facets)} facets ({shown}) and a figure shows one: choose it with args.select")
    facet, cells = facets[0]
    return cells, facet, theory_overlays(select_rows(runs, facet)).get(kind, ())


def plot_phase_map(data: SweepData, *, select: Mapping[str, Any] | None = None) -> Figure:
    """The report's phase map (:func:`vi_sweep.analysis.figures.phase_map`, with the SGD theory
    limits where they apply) of the runs matching ``select``, which must form one facet."""
    cells, facet, overlays = _one_facet(data, select, "phase_map")
    return phase_map(cells, facet=facet, overlays=overlays)


def plot_excess_heatmap(data: SweepData, *, select: Mapping[str, Any] | None = None) -> Figure:
    """The report's KL-excess heatmap (with the predicted SGD noise-floor levels where they apply)
    of the runs matching ``select``, which must form one facet."""
    cells, facet, overlays = _one_facet(data, select, "excess_over_exact")
    return excess_heatmap(cells, facet=facet, overlays=overlays)


def plot_compare_curves(
    data: SweepData,
    *,
    values: Sequence[str] = ("kl_excess",),
    series: Sequence[str] | None = None,
    facet_by: Sequence[str] | None = None,
    select: Mapping[str, Any] | None = None,
    log: bool = True,
) -> Figure:
    """Metrics against step, a line per series with a seed band (:func:`vi_sweep.analysis.figures.compare_curves`);
    ``series`` and ``facet_by`` default as in :func:`vi_sweep.analysis.phase.series_keys` and ``facet_keys``."""
    steps = _selected(data.trajectories, select)
    lines = series_keys(steps, series)
    return compare_curves(steps, list(values), series=lines, facet_by=facet_keys(steps, facet_by, shown=lines), log=log)


def plot_stability_edge(data: SweepData, more: Sequence[SweepData] = (), *, select: Mapping[str, Any] | None = None) -> Figure:
    """The phase map of ``data`` (one facet, as :func:`plot_phase_map`) with the stability edge
    (:func:`vi_sweep.analysis.edge.stability_edge`) read off the runs of the ``more`` sweeps --
    searches, e.g. one ``search=stability_edge`` per num_mc -- drawn over it."""
    from vi_sweep.analysis.edge import edge_overlay, stability_edge

    if not more:
        raise SweepError("the stability edge is read off further sweeps: declare them as more_sweeps")
    cells, facet, overlays = _one_facet(data, select, "phase_map")
    edges = stability_edge(pd.concat([_selected(extra.runs, select) for extra in more], ignore_index=True))
    return phase_map(cells, facet=facet, overlays=[*overlays, edge_overlay(edges)])


PLOTS: dict[str, Callable[..., Figure]] = {
    "phase_map": plot_phase_map,
    "excess_heatmap": plot_excess_heatmap,
    "compare_curves": plot_compare_curves,
    "stability_edge": plot_stability_edge,
}
MULTI_SWEEP_PLOTS = ("stability_edge",)  # plots that take the further sweeps (``more``)


def draw_figure(declaration: FigureDeclaration, data: SweepData, more: Sequence[SweepData] = ()) -> Figure:
    """Draw one declared figure from its sweep (and its ``more_sweeps``, read as ``more``)."""
    if declaration.plot in MULTI_SWEEP_PLOTS:
        return PLOTS[declaration.plot](data, more, **declaration.args)
    return PLOTS[declaration.plot](data, **declaration.args)


# --------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------


def parse_declarations(data: Any, source: str) -> list[FigureDeclaration]:
    """The figures of a parsed declarations file (``{"figures": {name: {sweep, plot, args}}}``), checked.

    Raises :class:`DeclarationError` (one line, naming ``source``, the figure and the key) for a
    wrong shape, an unknown plot or argument, or an override the command sets itself.
    """
    if not isinstance(data, Mapping) or set(data) != {"figures"} or not isinstance(data["figures"], Mapping) or not data["figures"]:
        raise DeclarationError(f"{source}: expected one key, `figures:`, mapping figure names to {{sweep, plot, args}}")
    return [_declaration(name, entry, source) for name, entry in data["figures"].items()]


def _declaration(name: Any, entry: Any, source: str) -> FigureDeclaration:
    where = f"{source}: figure {name}"
    if not isinstance(name, str) or not FIGURE_NAME.match(name):
        raise DeclarationError(f"{where}: a figure name is letters, digits, _ and - (it names its files)")
    if not isinstance(entry, Mapping):
        raise DeclarationError(f"{where}: expected a mapping with {', '.join(DECLARATION_KEYS)}")
    unknown = [key for key in entry if key not in DECLARATION_KEYS]
    if unknown or "sweep" not in entry or "plot" not in entry:
        raise DeclarationError(f"{where}: expected keys sweep, plot and optionally args, more_sweeps (got {', '.join(map(str, entry))})")
    sweep = entry["sweep"]
    if not isinstance(sweep, list) or not all(isinstance(o, str) for o in sweep):
        raise DeclarationError(f"{where}: sweep must be a list of Hydra overrides (strings), e.g. [optimizer=sgd, 'lr=0.01,0.1']")
    for override in sweep:
        if override.split("=", 1)[0].lstrip("+~") in RESERVED_OVERRIDES:
            raise DeclarationError(f"{where}: {override}: the figures command chooses the sweep directory")
    more_sweeps = entry.get("more_sweeps") or []
    if not isinstance(more_sweeps, list) or not all(isinstance(m, list) and all(isinstance(o, str) for o in m) for m in more_sweeps):
        raise DeclarationError(f"{where}: more_sweeps must be a list of override lists, e.g. [[search=stability_edge, num_mc=1]]")
    for override in [o for m in more_sweeps for o in m]:
        if override.split("=", 1)[0].lstrip("+~") in RESERVED_OVERRIDES:
            raise DeclarationError(f"{where}: {override}: the figures command chooses the sweep directory")
    plot = entry["plot"]
    if plot not in PLOTS:
        raise DeclarationError(f"{where}: unknown plot {plot!r}; plots are {', '.join(PLOTS)}")
    if more_sweeps and plot not in MULTI_SWEEP_PLOTS:
        raise DeclarationError(f"{where}: plot {plot} draws one sweep; more_sweeps is for {', '.join(MULTI_SWEEP_PLOTS)}")
    args = entry.get("args") or {}
    if not isinstance(args, Mapping):
        raise DeclarationError(f"{where}: args must be a mapping of {plot}'s keyword arguments")
    accepted = [p.name for p in inspect.signature(PLOTS[plot]).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    wrong = [key for key in args if key not in accepted]
    if wrong:
        raise DeclarationError(f"{where}: plot {plot} has no argument {', '.join(map(str, wrong))} (it takes {', '.join(accepted)})")
    return FigureDeclaration(name, tuple(sweep), plot, dict(args), tuple(tuple(m) for m in more_sweeps))


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_entry(declaration: FigureDeclaration, files: Sequence[Path], data: SweepData, more: Sequence[SweepData] = ()) -> dict[str, Any]:
    """A figure's manifest entry: its config, the digest of the runs it drew (of each further
    sweep too), its files' SHA-256."""
    entry = {**declaration.config(), "runs": data.digest, "files": {path.name: file_sha256(path) for path in sorted(files)}}
    if more:
        entry["more_runs"] = [extra.digest for extra in more]
    return entry


def made_with(cpu_vector_width: int | None) -> dict[str, Any]:
    """What the bytes depend on besides the configs: versions of the numeric and drawing stack, the CPU's vector width."""
    from vi_sweep import __version__

    versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "numpy", "matplotlib")}
    return {"vi_sweep": __version__, **versions, "machine": platform.machine(), "cpu_vector_width": cpu_vector_width}


def manifest_text(figures: Mapping[str, Mapping[str, Any]], provenance: Mapping[str, Any]) -> str:
    """The manifest file, deterministic (sorted keys, no dates): the same figures give the same bytes."""
    manifest = {"format": MANIFEST_FORMAT, "made_with": dict(provenance), "figures": {name: figures[name] for name in sorted(figures)}}
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def figure_changes(committed: Mapping[str, Any] | None, fresh: Mapping[str, Any]) -> list[str]:
    """Why a regenerated figure is not the committed one (empty: it is): each differing part, in words."""
    if committed is None:
        return ["not in the manifest"]
    changes = []
    if committed.get("sweep") != fresh["sweep"]:
        changes.append(f"its sweep changed ({_overrides(committed.get('sweep'))} -> {_overrides(fresh['sweep'])})")
    if committed.get("plot") != fresh["plot"]:
        changes.append(f"its plot changed ({json.dumps(committed.get('plot'), sort_keys=True)} -> {json.dumps(fresh['plot'], sort_keys=True)})")
    if committed.get("more_sweeps") != fresh.get("more_sweeps"):
        changes.append("its further sweeps changed")
    if committed.get("more_runs") != fresh.get("more_runs"):
        changes.append("its further sweeps' runs changed")
    if committed.get("runs") != fresh["runs"]:
        old = (committed.get("runs") or {}).get("count")
        changes.append(f"its runs changed ({old} -> {fresh['runs']['count']} runs, other configs)" if old != fresh["runs"]["count"] else "its runs' configs changed")
    files = committed.get("files") or {}
    differ = sorted(name for name in set(files) | set(fresh["files"]) if files.get(name) != fresh["files"].get(name))
    if differ:
        changes.append(f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''}")
    return changes


def _overrides(sweep: Any) -> str:
    return " ".join(sweep) if isinstance(sweep, list) and sweep else "the default grid" if sweep == [] else repr(sweep)


def files_not_in_manifest(entry: Mapping[str, Any], folder: Path) -> list[str]:
    """The files of a manifest entry whose bytes in ``folder`` are not those the entry names (or are missing)."""
    return sorted(
        name for name, digest in (entry.get("files") or {}).items() if not (folder / name).is_file() or file_sha256(folder / name) != digest
    )
