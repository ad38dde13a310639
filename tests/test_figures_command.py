"""``python -m vi_sweep figures``: paper figures from their declarations, a manifest of their
bytes, and ``--check`` naming what changed. The real command in a real subprocess, on a reduced
set of figures whose two sweeps take seconds; and the project's committed figures against the
committed manifest and declarations."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from vi_sweep import figures_command
from vi_sweep.analysis.paper import DeclarationError, parse_declarations
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

TINY_SWEEP = ["objective.estimator=reparam,stl", "lr=0.01,0.5", "num_mc=1", "d=3", "steps=40", "log_every=10", "seed=range(2)", "grid=none"]
SMALL_SET = {
    "figures": {
        "tiny_phase_map": {"sweep": TINY_SWEEP, "plot": "phase_map", "args": {"select": {"estimator": "stl"}}},
        "tiny_curves": {"sweep": TINY_SWEEP, "plot": "compare_curves", "args": {"values": ["kl_excess"], "facet_by": ["lr"]}},
    }
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_declarations(folder: Path, declarations: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "figures.yaml"
    path.write_text(yaml.safe_dump(declarations, sort_keys=False))
    return path


def figures(declarations: Path, img: Path, sweeps: Path, *extra: str):
    """``python -m vi_sweep figures ...`` in a subprocess, as a user runs it."""
    return run_cli("figures", "--declarations", str(declarations), "--img", str(img), "--sweeps", str(sweeps), *extra)


def figures_here(declarations: Path, img: Path, sweeps: Path, *extra: str) -> int:
    """The same command in this process (no interpreter start, imports shared): for the tests of its details."""
    return figures_command.main(["--declarations", str(declarations), "--img", str(img), "--sweeps", str(sweeps), *extra])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The reduced set, made once: (declarations, img dir, sweeps dir, the command's result)."""
    root = tmp_path_factory.mktemp("figures")
    declarations = write_declarations(root / "analysis", SMALL_SET)
    img, sweeps = root / "analysis" / "img", root / "sweeps"
    result = figures(declarations, img, sweeps)
    assert result.returncode == 0, result.stderr
    return declarations, img, sweeps, result


def test_the_command_draws_every_figure_and_a_manifest_of_their_bytes_and_configs(made):
    declarations, img, sweeps, result = made
    assert sorted(p.name for p in img.iterdir()) == [
        "manifest.json", "tiny_curves.pdf", "tiny_curves.png", "tiny_phase_map.pdf", "tiny_phase_map.png"
    ]
    manifest = json.loads((img / "manifest.json").read_text())
    for name, declared in SMALL_SET["figures"].items():
        entry = manifest["figures"][name]
        assert entry["files"] == {f"{name}.pdf": sha256(img / f"{name}.pdf"), f"{name}.png": sha256(img / f"{name}.png")}
        assert entry["sweep"] == declared["sweep"]
        assert entry["plot"] == {"kind": declared["plot"], "args": declared["args"]}
        assert entry["runs"]["count"] == 2 * 2 * 2  # estimator x lr x seed
    assert manifest["made_with"]["jax"] == __import__("jax").__version__ and manifest["made_with"]["cpu_vector_width"] in (128, 256, 512)
    assert len(list(sweeps.iterdir())) == 1  # two figures, one sweep: run once
    assert "vi_sweep: 2 figures written to" in result.stdout
    assert not [p for p in img.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_check_regenerates_the_figures_byte_for_byte_without_rerunning_or_writing(made):
    declarations, img, sweeps, _ = made
    before = {p.name: (p.stat().st_mtime_ns, sha256(p)) for p in img.iterdir()}
    result = figures(declarations, img, sweeps, "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"vi_sweep: 2 figures match {img / 'manifest.json'}"
    assert "multirun" not in result.stdout  # the finished sweep was not started again
    assert {p.name: (p.stat().st_mtime_ns, sha256(p)) for p in img.iterdir()} == before


def test_check_names_the_figure_whose_config_changed_and_only_it(made, tmp_path):
    declarations, img, sweeps, _ = made
    changed = json.loads(json.dumps(SMALL_SET))
    changed["figures"]["tiny_curves"]["sweep"] = [o.replace("steps=40", "steps=50") for o in changed["figures"]["tiny_curves"]["sweep"]]
    result = figures(write_declarations(tmp_path, changed), img, sweeps, "--check")
    assert result.returncode == 1
    named = [line for line in result.stderr.splitlines() if line.startswith("vi_sweep: figure ")]
    assert len(named) == 1 and named[0].startswith("vi_sweep: figure tiny_curves changed: its sweep changed (")
    assert "tiny_curves.pdf, tiny_curves.png differ" in named[0]
    assert "Traceback" not in result.stderr


def test_a_committed_file_that_is_not_the_manifests_is_named_and_only_redraws_it(made, tmp_path, capsys):
    declarations, img, sweeps, _ = made
    copy = shutil.copytree(img, tmp_path / "img")
    (copy / "tiny_curves.png").write_bytes(b"not the figure")
    assert figures_here(declarations, copy, sweeps, "--check", "--only", "tiny_curves") == 1
    assert f"vi_sweep: figure tiny_curves changed: {copy / 'tiny_curves.png'} is not the file of the manifest" in capsys.readouterr().err
    assert figures_here(declarations, copy, sweeps, "--only", "tiny_curves") == 0
    assert (copy / "manifest.json").read_bytes() == (img / "manifest.json").read_bytes()  # the other figure's entry kept
    assert (copy / "tiny_curves.png").read_bytes() == (img / "tiny_curves.png").read_bytes()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d, "vi_sweep: error: no figure named nope in {declarations} (declared: tiny_phase_map, tiny_curves)"),
        (lambda d: d["figures"]["tiny_curves"].update(plot="violin"), "vi_sweep: error: {declarations}: figure tiny_curves: unknown plot 'violin'; plots are phase_map, excess_heatmap, compare_curves"),
        (lambda d: d["figures"]["tiny_phase_map"]["sweep"].append("lr=-1"), "vi_sweep: error: figure tiny_phase_map: lr=-1"),
    ],
    ids=["unknown figure", "unknown plot", "bad override"],
)
def test_bad_input_is_one_line_naming_it_exit_2_and_nothing_runs(tmp_path, capsys, change, message):
    declarations = json.loads(json.dumps(SMALL_SET))
    change(declarations)
    path = write_declarations(tmp_path, declarations)
    status = figures_here(path, tmp_path / "img", tmp_path / "sweeps", "--only", "nope" if "nope" in message else "tiny_phase_map")
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(message.format(declarations=path))
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "img").exists()


def test_a_missing_declarations_file_is_one_line(tmp_path):
    result = figures(tmp_path / "nope.yaml", tmp_path / "img", tmp_path / "sweeps")
    assert result.returncode == 2
    assert result.stderr.strip() == f"vi_sweep: error: no figure declarations at {tmp_path / 'nope.yaml'}"
    assert result.stdout == ""


def test_declarations_are_checked_before_anything_runs():
    good = SMALL_SET["figures"]["tiny_curves"]
    with pytest.raises(DeclarationError, match=r"^f.yaml: figure x: plot compare_curves has no argument colour \(it takes values, "):
        parse_declarations({"figures": {"x": dict(good, args={"colour": "red"})}}, "f.yaml")
    with pytest.raises(DeclarationError, match=r"the figures command chooses the sweep directory"):
        parse_declarations({"figures": {"x": dict(good, sweep=["hydra.sweep.dir=/tmp/x"])}}, "f.yaml")
    with pytest.raises(DeclarationError, match=r"sweep must be a list of Hydra overrides"):
        parse_declarations({"figures": {"x": dict(good, sweep="lr=0.1")}}, "f.yaml")


# The project's own figures: what the README shows is what the command wrote, as declared now.

PROJECT_IMG = REPO / "analysis" / "img"


def test_the_committed_figures_are_the_files_of_the_committed_manifest():
    manifest = json.loads((PROJECT_IMG / "manifest.json").read_text())
    for name, entry in manifest["figures"].items():
        assert sorted(entry["files"]) == [f"{name}.pdf", f"{name}.png"]
        for file, digest in entry["files"].items():
            assert sha256(PROJECT_IMG / file) == digest, f"{file} is not the file the manifest names: rerun python -m vi_sweep figures"


def test_the_committed_manifest_was_made_from_the_declarations_as_they_are():
    manifest = json.loads((PROJECT_IMG / "manifest.json").read_text())
    declared = parse_declarations(yaml.safe_load((REPO / "analysis" / "figures.yaml").read_text()), "analysis/figures.yaml")
    recorded = {name: {k: e[k] for k in ("sweep", "plot", "more_sweeps") if k in e} for name, e in manifest["figures"].items()}
    assert {d.name: d.config() for d in declared} == recorded


def test_every_figure_of_the_readme_is_a_file_of_the_manifest():
    manifest = json.loads((PROJECT_IMG / "manifest.json").read_text())
    shown = re.findall(r"\]\(analysis/img/([^)]+)\)", (REPO / "README.md").read_text())
    files = {file for entry in manifest["figures"].values() for file in entry["files"]}
    assert shown and set(shown) <= files


def test_a_figure_drawn_from_further_sweeps_runs_each_and_records_their_runs(tmp_path):
    """``more_sweeps``: the stability edge read off further sweeps (searches in the project's
    declarations; two tiny grids here), each run into its own directory, each one's runs in the manifest."""
    grid = [o for o in TINY_SWEEP if not o.startswith("objective.estimator")]
    edge_sweeps = [[*grid, "lr=0.003,0.01,0.03,0.1"], [*grid, "lr=0.3,1.0"]]
    edge_sweeps = [[o for o in sweep if o != "lr=0.01,0.5"] for sweep in edge_sweeps]
    declarations = write_declarations(
        tmp_path / "analysis", {"figures": {"tiny_edge": {"sweep": grid, "more_sweeps": edge_sweeps, "plot": "stability_edge"}}}
    )
    img, sweeps = tmp_path / "analysis" / "img", tmp_path / "sweeps"
    result = figures(declarations, img, sweeps)
    assert result.returncode == 0, result.stderr
    assert len([p for p in sweeps.iterdir() if p.is_dir()]) == 3
    entry = json.loads((img / "manifest.json").read_text())["figures"]["tiny_edge"]
    assert entry["more_sweeps"] == edge_sweeps and [runs["count"] for runs in entry["more_runs"]] == [8, 4]
    assert "vi_sweep: drew tiny_edge (4 runs of" in result.stdout and "and 12 of 2 further sweeps" in result.stdout


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"sweep": [], "plot": "phase_map", "more_sweeps": [["num_mc=1"]]}, "plot phase_map draws one sweep; more_sweeps is for stability_edge"),
        ({"sweep": [], "plot": "stability_edge", "more_sweeps": ["num_mc=1"]}, "more_sweeps must be a list of override lists"),
    ],
)
def test_more_sweeps_is_checked_with_the_declaration(entry, message):
    with pytest.raises(DeclarationError, match=re.escape(message)):
        parse_declarations({"figures": {"f": entry}}, "figures.yaml")


def test_a_ctrl_c_while_figures_are_installed_lands_after_the_manifest(tmp_path, monkeypatch):
    """The figures and the manifest that names them go in together: a Ctrl-C after the first file
    is renamed in waits until the last is, and the manifest written."""
    import signal

    import vi_sweep.figures_command as figures_command
    from vi_sweep.analysis.paper import MANIFEST

    staging, img = tmp_path / "staging", tmp_path / "img"
    staging.mkdir()
    for name in ("a.png", "a.pdf", "b.png"):
        (staging / name).write_bytes(name.encode())
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(figures_command.os, "replace", replace_then_interrupt)
    figures = {"a": {"files": {"a.png": "x", "a.pdf": "y"}}, "b": {"files": {"b.png": "z"}}}
    with pytest.raises(KeyboardInterrupt):
        figures_command.install(staging, img, figures)
    assert sorted(p.name for p in img.iterdir() if not p.name.startswith(".")) == sorted(["a.png", "a.pdf", "b.png", MANIFEST])
