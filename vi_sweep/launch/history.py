"""What was asked of a sweep directory: one line per multirun started into it, and every earlier ``multirun.yaml``.

Hydra writes ``<sweep dir>/multirun.yaml`` at the start of every multirun, over the previous one.
A sweep directory that is extended (:mod:`vi_sweep.launch.resume`) keeps its history in
``<sweep dir>/.vi_sweep/``:

- ``history.jsonl``: one JSON line per multirun started into it (time, the command line's
  overrides, the launcher, the vi_sweep version);
- ``multirun.<k>.yaml``: the ``multirun.yaml`` a later multirun was about to replace.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

HISTORY_DIR = ".vi_sweep"
HISTORY_FILE = "history.jsonl"

STARTED_HERE: list[Path] = []
"""The sweep directories this process recorded a start in (:func:`record_start`), so that a
sweep rejected before its first job can be removed again (:func:`abandon_if_fresh`)."""


def sweep_history_entries(sweep_dir: Path) -> int:
    """How many multiruns were started into ``sweep_dir`` (0 if it has no history)."""
    try:
        with open(Path(sweep_dir) / HISTORY_DIR / HISTORY_FILE, encoding="utf-8") as lines:
            return sum(1 for line in lines if line.strip())
    except FileNotFoundError:
        return 0


def record_start(sweep_dir: Path, *, overrides: Sequence[str], launcher: str, argv: Sequence[str]) -> None:
    """Keep the previous ``multirun.yaml`` (if any) and append this multirun's line to the history."""
    from vi_sweep import __version__

    history = Path(sweep_dir) / HISTORY_DIR
    history.mkdir(parents=True, exist_ok=True)
    previous = Path(sweep_dir) / "multirun.yaml"
    count = sweep_history_entries(sweep_dir)
    if previous.exists():
        shutil.copy2(previous, history / f"multirun.{max(count, 1)}.yaml")
    entry: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "overrides": list(overrides),
        "argv": list(argv),
        "launcher": launcher,
        "vi_sweep": __version__,
    }
    with open(history / HISTORY_FILE, "a", encoding="utf-8") as lines:
        lines.write(json.dumps(entry, sort_keys=True) + "\n")
    STARTED_HERE.append(Path(sweep_dir))


def abandon_if_fresh(sweep_dir: Path) -> None:
    """Remove a sweep directory created for a sweep that was rejected before any job: it holds
    nothing but Hydra's ``multirun.yaml`` and the one history line this sweep began."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir() or not {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml", HISTORY_DIR}:
        return
    if (sweep_dir / HISTORY_DIR).exists() and sweep_history_entries(sweep_dir) > 1:
        return  # an earlier sweep was started here
    shutil.rmtree(sweep_dir, ignore_errors=True)
