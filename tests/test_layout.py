"""The house: data flows one way (config -> core -> store -> analysis), with no circles and no borrowed privates.

Every import of every module is read from its source (top-level and inside functions alike: a
lazy import is still a dependency), so these tests see the graph a reader sees.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("vi_sweep", "hydra_plugins")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


MODULES = all_modules()


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def project_edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names in imports_of(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
            edges[name].update(t for t in targets if t in MODULES and t != name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_anywhere():
    assert cycles(project_edges()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names():
    borrowed = [
        f"{name}: from {module} import {n}"
        for name, path in MODULES.items()
        for module, names in imports_of(path)
        if module.split(".")[0] in PACKAGES
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert borrowed == []


# Which rooms may import which: the folders show the data flow.
ALLOWED = {
    "vi_sweep.core": ("vi_sweep.core",),
    "vi_sweep.store": ("vi_sweep.store", "vi_sweep.core", "vi_sweep"),  # core only inside functions: field types
    "vi_sweep.analysis": ("vi_sweep.analysis", "vi_sweep.store", "vi_sweep.core", "vi_sweep.host", "vi_sweep"),
    "hydra_plugins": ("vi_sweep.launch.options", "vi_sweep.launch.compose", "vi_sweep.launch.batched", "vi_sweep.launch.plain"),
}


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_each_room_imports_only_what_comes_before_it_in_the_data_flow(room):
    edges = project_edges()
    allowed = ALLOWED[room]
    wrong = sorted(
        f"{name} -> {other}"
        for name, others in edges.items()
        if name == room or name.startswith(room + ".")
        for other in others
        if not any(other == a or (a != "vi_sweep" and other.startswith(a + ".")) for a in allowed)
    )
    assert wrong == []


def imported_after(code: str) -> set[str]:
    """The top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_the_core_imports_jax_and_optax_and_nothing_of_hydra_pandas_or_pyarrow():
    loaded = imported_after("import vi_sweep.core.trainer, vi_sweep.core.targets, vi_sweep.core.objectives, vi_sweep.core.optimizers")
    assert {"jax", "optax"} <= loaded
    assert not loaded & {"hydra", "omegaconf", "pandas", "pyarrow", "matplotlib"}


def test_the_analysis_library_never_imports_hydra():
    code = (
        "import vi_sweep.analysis.load, vi_sweep.analysis.report, vi_sweep.analysis.phase, vi_sweep.analysis.render, "
        "vi_sweep.analysis.figure_helper, vi_sweep.analysis.theory, vi_sweep.analysis.locate, vi_sweep.analysis.paper\n"
        "from vi_sweep.analysis import load_sweep, phase_table, write_report"
    )
    loaded = imported_after(code)
    assert {"pandas", "matplotlib"} <= loaded
    assert not loaded & {"hydra", "omegaconf"}


def test_the_regression_math_and_the_data_are_numpy_only():
    """The analysis solves q* and computes its constants from these without importing JAX."""
    loaded = imported_after("import vi_sweep.core.regression, vi_sweep.core.datasets, vi_sweep.store.optima, vi_sweep.store.params")
    assert "numpy" in loaded
    assert not loaded & {"jax", "optax", "hydra", "pandas", "matplotlib"}


def test_the_store_is_pyarrow_only():
    loaded = imported_after("import vi_sweep.store.metrics, vi_sweep.store.baselines")
    assert "pyarrow" in loaded
    assert not loaded & {"hydra", "omegaconf", "pandas", "jax", "matplotlib"}


def test_the_hydra_plugin_imports_no_jax_at_hydra_start_up():
    loaded = imported_after("import hydra_plugins.vi_sweep_launcher.vi_sweep_launcher")
    assert "hydra" in loaded
    assert not loaded & {"jax", "optax", "pandas", "matplotlib"}


def test_the_top_level_analysis_folder_is_a_workspace_not_a_package():
    assert not (REPO / "analysis" / "__init__.py").exists()
    assert not list((REPO / "analysis").glob("*.py"))  # scripts and notebooks import vi_sweep.analysis
    # The paper figures are declared in a config file there; their code lives in the package.
    assert (REPO / "analysis" / "figures.yaml").is_file() and (REPO / "vi_sweep" / "analysis" / "paper.py").is_file()
