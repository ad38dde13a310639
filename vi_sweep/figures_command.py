"""``python -m vi_sweep figures``: regenerate the project's paper figures from their declarations, or check them.

For every figure declared in ``analysis/figures.yaml`` (the format: :mod:`vi_sweep.analysis.paper`):

1. its sweep runs as ``python -m vi_sweep multirun OVERRIDES hydra.sweep.dir=outputs/figures/<key>``,
   ``<key>`` a digest of the overrides and of ``conf/``: a directory only ever holds the runs of
   one declared sweep (resume extends a directory by config, so an edited declaration must not
   reuse the old one), figures with the same overrides share it, and a finished one is not
   started again (an interrupted one resumes);
2. it is drawn by the analysis library and saved as PNG and PDF, byte-reproducibly;
3. ``analysis/img/manifest.json`` records per figure the SHA-256 of its files, its config (the
   overrides, the plot and its arguments, a digest of the runs drawn) and, once, the versions
   and CPU vector width it was made with.

The files go to a staging directory first and are renamed into place (the manifest last), so a
failure leaves the previous figures as they were. ``--check`` draws into a temporary directory
and compares with the committed manifest instead: each figure that differs is one line naming
it and what changed, exit 1. ``--only NAME`` limits either to some figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

CONF_GLOB = "**/*.yaml"
SWEEP_RECORD = ".vi_sweep/figure_sweep.json"  # written into a figure's sweep directory once its multirun finished


class FiguresError(Exception):
    """A problem the command reports in one line; ``status`` is its exit code (2: bad input)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vi_sweep figures``; errors are one line on stderr (exit 2 for bad input, 1 otherwise)."""
    args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    try:
        return _run(args, started)
    except FiguresError as err:
        print(f"vi_sweep: error: {err}", file=sys.stderr)
        return err.status
    except OSError as err:  # a folder that cannot be written (permissions, a full disk): say which
        print(f"vi_sweep: error: cannot write {err.filename or args.img}: {err.strerror or err}", file=sys.stderr)
        return 1


def _parse_args(argv: list[str]) -> argparse.Namespace:
    from vi_sweep.analysis.locate import project_root

    root = project_root()
    parser = argparse.ArgumentParser(
        prog="python -m vi_sweep figures",
        description="Run the sweeps of the declared paper figures (resuming what exists), draw them as PNG + PDF "
        "and write their manifest; with --check, compare with the committed manifest instead.",
    )
    parser.add_argument("--check", action="store_true", help="regenerate into a temporary directory and compare with the manifest; exit 1 naming each figure that differs")
    parser.add_argument("--only", action="append", metavar="NAME", help="only this figure (repeatable)")
    parser.add_argument("--declarations", type=Path, default=root / "analysis" / "figures.yaml", help="the figure declarations (default: analysis/figures.yaml)")
    parser.add_argument("--img", type=Path, help="where the figures and manifest.json go (default: img/ next to the declarations)")
    parser.add_argument("--sweeps", type=Path, default=root / "outputs" / "figures", help="where the figures' sweeps go (default: outputs/figures)")
    args = parser.parse_args(argv)
    args.img = args.img or args.declarations.parent / "img"
    args.root = root
    return args


def _run(args: argparse.Namespace, started: float) -> int:
    from vi_sweep.analysis.paper import MANIFEST

    declarations = chosen(read_declarations(args.declarations), args.only, args.declarations)
    check_sweeps(declarations)
    manifest_path = args.img / MANIFEST
    committed = read_manifest(manifest_path) if args.check or manifest_path.exists() else None
    sweep_dirs = {d.name: [sweep_dir(args.sweeps, overrides) for overrides in d.sweeps] for d in declarations}
    wanted = {path: overrides for d in declarations for path, overrides in zip(sweep_dirs[d.name], d.sweeps)}
    for number, (path, overrides) in enumerate(wanted.items(), start=1):
        users = [d.name for d in declarations if path in sweep_dirs[d.name]]
        run_sweep(overrides, path, cwd=args.root, label=f"sweep {number} ({', '.join(users)})")
    if args.check:
        with tempfile.TemporaryDirectory(prefix="vi_sweep-figures-") as scratch:
            fresh = draw(declarations, sweep_dirs, Path(scratch))
        return report_check(committed, fresh, declarations, args.img, manifest_path, whole=not args.only)
    args.img.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.img.name}.", dir=args.img.parent))
    try:
        fresh = draw(declarations, sweep_dirs, staging)
        install(staging, args.img, merged(committed, fresh, declarations, whole=not args.only))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"vi_sweep: {len(declarations)} figures written to {args.img} ({MANIFEST}) in {time.monotonic() - started:.1f} s")
    if not args.only:
        stale = undeclared_sweeps(args.sweeps, set(wanted))
        if stale:
            print(f"vi_sweep: {len(stale)} sweep directories under {args.sweeps} belong to no declared figure any more (delete them to free space): {', '.join(p.name for p in stale)}")
    return 0


# --------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------


def read_declarations(path: Path) -> list:
    """The declared figures of ``path`` (:func:`vi_sweep.analysis.paper.parse_declarations`)."""
    import yaml

    from vi_sweep.analysis.paper import DeclarationError, parse_declarations

    if not path.is_file():
        raise FiguresError(f"no figure declarations at {path}", status=2)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise FiguresError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}", status=2) from None
    try:
        return parse_declarations(data, str(path))
    except DeclarationError as err:
        raise FiguresError(str(err), status=2) from None


def chosen(declarations: list, only: Sequence[str] | None, path: Path) -> list:
    """The declarations named by ``--only`` (all without it), in declaration order."""
    if not only:
        return declarations
    names = [d.name for d in declarations]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise FiguresError(f"no figure named {', '.join(unknown)} in {path} (declared: {', '.join(names)})", status=2)
    return [d for d in declarations if d.name in only]


def check_sweeps(declarations: list) -> None:
    """Every sweep's overrides checked as ``python -m vi_sweep multirun`` checks them (every job
    composed and validated: :func:`vi_sweep.launch.entry.check_sweep`), before any of them runs."""
    from vi_sweep.launch.entry import check_sweep
    from vi_sweep.launch.errors import CONFIG_ERRORS, describe

    for declaration in declarations:
        try:
            for overrides in declaration.sweeps:
                check_sweep(list(overrides))
        except CONFIG_ERRORS as err:
            raise FiguresError(f"figure {declaration.name}: {describe(err) or err}", status=2) from None


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------


def conf_digest() -> dict[str, str]:
    """SHA-256 of every file Hydra composes a run from (``conf/**/*.yaml``), by relative path."""
    from vi_sweep.launch.config import CONF_DIR

    return {path.relative_to(CONF_DIR).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(CONF_DIR.glob(CONF_GLOB))}


def sweep_key(overrides: Sequence[str]) -> str:
    """A short digest of a sweep's overrides and of ``conf/``: what its runs are, before they run."""
    text = json.dumps({"overrides": list(overrides), "conf": conf_digest()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sweep_dir(sweeps: Path, overrides: Sequence[str]) -> Path:
    return sweeps.resolve() / sweep_key(overrides)


def is_finished(path: Path, overrides: Sequence[str]) -> bool:
    record = path / SWEEP_RECORD
    return record.is_file() and json.loads(record.read_text()).get("overrides") == list(overrides)


def undeclared_sweeps(sweeps: Path, declared: set[Path]) -> list[Path]:
    """The figure sweep directories under ``sweeps`` that no declared figure uses (an edited or removed declaration's)."""
    if not sweeps.is_dir():
        return []
    return sorted(path for path in sweeps.resolve().iterdir() if (path / SWEEP_RECORD).is_file() and path not in declared)


def run_sweep(overrides: Sequence[str], path: Path, *, cwd: Path, label: str) -> None:
    """``python -m vi_sweep multirun OVERRIDES hydra.sweep.dir=PATH`` (no report: the figures are
    drawn here), unless it finished before; then record that it did."""
    if is_finished(path, overrides):
        print(f"vi_sweep: {label}: finished before, in {path}")
        return
    command = [sys.executable, "-m", "vi_sweep", "multirun", *overrides, f"hydra.sweep.dir={path}", "hydra.callbacks.sweep_summary.report=false"]
    print(f"vi_sweep: {label}: python -m vi_sweep multirun {' '.join(command[4:])}", flush=True)
    status = subprocess.run(command, cwd=cwd).returncode
    if status != 0:
        raise FiguresError(f"{label} failed (exit {status}); rerun to resume it: {' '.join(command[1:])}")
    record = path / SWEEP_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(record, json.dumps({"overrides": list(overrides)}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Drawing and the manifest
# --------------------------------------------------------------------------------------------


def draw(declarations: list, sweep_dirs: Mapping[str, Sequence[Path]], out: Path) -> dict[str, dict[str, Any]]:
    """Draw every declared figure into ``out``; return their manifest entries."""
    from vi_sweep.analysis.figures import save_figure
    from vi_sweep.analysis.paper import SweepData, draw_figure, manifest_entry
    from vi_sweep.analysis.read import SkippedFileWarning, SweepError

    loaded: dict[Path, Any] = {}
    entries = {}
    for declaration in declarations:
        path, *more_paths = sweep_dirs[declaration.name]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedFileWarning)
            try:
                for needed in (path, *more_paths):
                    if needed not in loaded:
                        loaded[needed] = SweepData(needed)
                data, more = loaded[path], [loaded[p] for p in more_paths]
                files = save_figure(draw_figure(declaration, data, more), out / declaration.name)
            except SweepError as err:
                raise FiguresError(f"figure {declaration.name}: {err}") from None
        for item in caught:
            print(f"vi_sweep: warning: figure {declaration.name}: {item.message}", file=sys.stderr)
        entries[declaration.name] = manifest_entry(declaration, files, data, more)
        extra = f" and {sum(d.digest['count'] for d in more)} of {len(more)} further sweeps" if more else ""
        print(f"vi_sweep: drew {declaration.name} ({data.digest['count']} runs of {path.name}{extra})", flush=True)
    return entries


def read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FiguresError(f"no manifest at {path}: run `python -m vi_sweep figures` first", status=2)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FiguresError(f"{path} is not a vi_sweep figure manifest: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("figures"), dict):
        raise FiguresError(f"{path} is not a vi_sweep figure manifest (no `figures`)")
    return manifest


def provenance() -> dict[str, Any]:
    """The manifest's ``made_with``: versions and the vector width the sweeps' XLA code used."""
    from vi_sweep.analysis.paper import made_with
    from vi_sweep.host import cpu_vector_bits
    from vi_sweep.launch.options import BatchedLauncherConf

    asked = BatchedLauncherConf().cpu_vector_width or 256  # XLA's default: 256
    widest = cpu_vector_bits()
    return made_with(min(asked, widest) if widest else None)


def merged(committed: Mapping[str, Any] | None, fresh: Mapping[str, dict], declarations: list, *, whole: bool) -> dict[str, Any]:
    """The figures of the new manifest: the fresh entries; with ``--only``, the committed ones of the other declared figures too."""
    declared = {d.name for d in declarations}
    kept = {} if whole or committed is None else {k: v for k, v in committed["figures"].items() if k not in declared}
    return {**kept, **fresh}


def install(staging: Path, img: Path, figures: Mapping[str, dict]) -> None:
    """Rename the staged files into ``img`` one by one, write the manifest last, and delete the files of figures no longer in it."""
    from vi_sweep.analysis.paper import MANIFEST, manifest_text
    from vi_sweep.launch.interrupts import interrupts_held

    img.mkdir(parents=True, exist_ok=True)
    old = read_manifest(img / MANIFEST)["figures"] if (img / MANIFEST).exists() else {}
    text = manifest_text(figures, provenance())
    with interrupts_held():  # the files and the manifest naming them go in together
        for path in sorted(staging.iterdir()):
            os.replace(path, img / path.name)
        write_atomically(img / MANIFEST, text)
    for name, entry in old.items():
        if name not in figures:
            for file in entry.get("files", {}):
                (img / file).unlink(missing_ok=True)


def report_check(committed: Mapping[str, Any], fresh: Mapping[str, dict], declarations: list, img: Path, manifest_path: Path, *, whole: bool) -> int:
    """Print one line per figure that differs from the committed manifest (and, with ``whole``,
    per figure of the manifest no longer declared); return the exit code."""
    from vi_sweep.analysis.paper import figure_changes, files_not_in_manifest

    changed = []
    for declaration in declarations:
        entry = committed["figures"].get(declaration.name)
        reasons = figure_changes(entry, fresh[declaration.name])
        reasons += [f"{img / file} is not the file of the manifest" for file in files_not_in_manifest(entry or {}, img)]
        if reasons:
            changed.append(f"vi_sweep: figure {declaration.name} changed: {'; '.join(reasons)}")
    if whole:
        declared = {d.name for d in declarations}
        changed += [f"vi_sweep: figure {name} changed: in the manifest, no longer declared" for name in sorted(set(committed["figures"]) - declared)]
    if not changed:
        print(f"vi_sweep: {len(declarations)} figures match {manifest_path}")
        return 0
    for line in changed:
        print(line, file=sys.stderr)
    then, now = committed.get("made_with") or {}, provenance()
    differs = [key for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key)]
    if differs:
        made = ", ".join(f"{key} {then.get(key)} (here: {now.get(key)})" for key in differs)
        print(f"vi_sweep: note: the manifest was made with {made}; figures can differ for that alone", file=sys.stderr)
    print(f"vi_sweep: {len(changed)} of {len(declarations)} figures differ from {manifest_path}; regenerate them with `python -m vi_sweep figures`", file=sys.stderr)
    return 1


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
