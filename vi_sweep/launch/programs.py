"""The launcher's batched training programs, traced once and kept on disk beside JAX's compilation cache.

A warm sweep's compiles are hits in JAX's persistent compilation cache, but JAX still traces
and lowers every program before it can look the compiled one up: ``vmap`` of ``scan`` of the
trainer's step, batched primitive by primitive, 0.4-1 s a program on this machine (the
reference grid has four), all of it on the thread that writes the job directories. So the
launcher calls each program through :mod:`jax.export`: the first time a program is needed it is
traced, lowered and serialized (StableHLO) into ``<compilation cache>/vi_sweep-programs/``; a
later sweep deserializes it (a few ms) and JAX lowers only a thin call around it (~0.1 s), whose
compiled form is again a persistent-cache hit. The same path with or without a file on disk,
so a cold and a warm sweep run the same compiled program and give the same bits.

A stored program is found by a key of everything that shapes the traced program:
the trainer's code and data (every file under ``vi_sweep/core``, and this module), jax, jaxlib, optax and numpy
versions, the :class:`~vi_sweep.core.trainer.TrainSpec`, the inputs' tree, shapes, dtypes and
shardings, the devices, the compiler options, and JAX's flags that change tracing (x64, PRNG
implementation, ...). A spec whose optimizer, target or estimator is not vi_sweep's own (a
user's registry entry, whose code the key cannot see) is traced every time, as is everything
when JAX has no compilation cache directory or ``flatbuffers`` (jax.export's serialization) is
missing. A stored file that cannot be read is traced again and replaced; a cache that cannot be
written is skipped. Never a wrong program, at worst today's tracing.

Output of every program: a flat tuple in :data:`OUTPUTS` order (``diverged_at``, the rows'
columns, the final parameters), each ``(streams, runs per stream, ...)``: what the launcher
writes, nothing it does not (the optimizer state and PRNG key stay on the device).

No Hydra here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from vi_sweep.core.trainer import FINAL_PARAMS, Rows

log = logging.getLogger(__name__)

OUTPUTS = ("diverged_at", *Rows._fields, *FINAL_PARAMS)
"""The order of a program's outputs."""

PROGRAMS_SUBDIR = "vi_sweep-programs"
SUFFIX = ".jaxexport"

# JAX flags that change what tracing produces (dtypes, the PRNG's bits, promotion, precision).
TRACE_FLAGS = (
    "jax_enable_x64",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_default_matmul_precision",
    "jax_numpy_rank_promotion",
    "jax_numpy_dtype_promotion",
    "jax_enable_checks",
    "jax_debug_nans",
    "jax_debug_infs",
)
CORE_DIR = Path(__file__).resolve().parent.parent / "core"


def _flat_outputs(spec, treedef) -> Callable:
    """``vmap(make_stream_train(spec))`` over the flat leaves of a ``Hyper`` with ``treedef``,
    returning :data:`OUTPUTS`."""
    import jax

    from vi_sweep.core.trainer import make_stream_train

    train = jax.vmap(make_stream_train(spec))

    def flat(*leaves):
        state, rows = train(jax.tree_util.tree_unflatten(treedef, leaves))
        return (state.diverged_at, *rows, state.params.mu, state.params.log_sigma)

    return flat


@functools.lru_cache(maxsize=None)
def _traced_each_time(spec, treedef) -> Callable:
    """The plain path: ``jit`` with the trainer's compiler options (JAX traces it once per process and shape)."""
    import jax

    from vi_sweep.core.trainer import trainer_compiler_options

    return jax.jit(_flat_outputs(spec, treedef), compiler_options=trainer_compiler_options())


def stream_program(spec, treedef, leaves: Sequence[Any]) -> Callable:
    """The program that trains ``leaves`` (a flattened, batched ``Hyper`` with ``treedef``, as
    placed on its devices) for ``spec``; called as ``program(*leaves)``, returns :data:`OUTPUTS`."""
    directory = programs_dir()
    key = None if directory is None else program_key(spec, treedef, leaves)
    if key is None:
        return _traced_each_time(spec, treedef)
    return _stored(spec, treedef, key, str(directory), tuple(leaves))


_STORED: dict[str, Callable] = {}  # key -> the loaded program, for this process's later chunks


def forget_loaded() -> None:
    """Drop the programs this process has loaded or traced (by key), as a new process starts:
    the next call reads its program from disk again."""
    _STORED.clear()


def _stored(spec, treedef, key: str, directory: str, leaves: tuple) -> Callable:
    if key in _STORED:
        return _STORED[key]
    import jax

    from vi_sweep.core.trainer import trainer_compiler_options

    path = Path(directory) / f"{key}{SUFFIX}"
    exported = _read(path)
    if exported is None:
        exported = jax.export.export(jax.jit(_flat_outputs(spec, treedef)), platforms=[_platform(leaves)])(*leaves)
        _write(path, exported)
    program = jax.jit(exported.call, compiler_options=trainer_compiler_options())
    _STORED[key] = program
    return program


def programs_dir() -> Path | None:
    """``<JAX's compilation cache dir>/vi_sweep-programs``, or None when JAX has no local cache dir or
    programs cannot be serialized."""
    import jax

    cache_dir = jax.config.jax_compilation_cache_dir
    if not cache_dir or "://" in str(cache_dir) or not _can_serialize():  # a remote cache (gs://...) is JAX's to reach, not a path here
        return None
    return Path(cache_dir) / PROGRAMS_SUBDIR


@functools.lru_cache(maxsize=None)
def _can_serialize() -> bool:
    try:
        import flatbuffers  # noqa: F401 - jax.export's serialization needs it
    except ImportError:
        log.debug("flatbuffers is not installed: the trainer's programs are traced on every sweep")
        return False
    return True


def program_key(spec, treedef, leaves: Sequence[Any]) -> str | None:
    """A hex digest of everything that shapes the traced program (see the module docstring), or
    None if the spec uses code outside ``vi_sweep.core`` (a user's registry entry)."""
    import jax

    from vi_sweep.core.trainer import trainer_compiler_options

    if not _own_code(spec):
        return None
    devices = sorted({device for leaf in leaves for device in _devices_of(leaf)}, key=lambda device: device.id)
    parts = [
        _versions(),
        _core_digest(),
        repr(spec),
        str(treedef),
        repr([(tuple(leaf.shape), str(leaf.dtype), str(getattr(leaf, "sharding", None))) for leaf in leaves]),
        repr([(device.platform, device.device_kind, device.id) for device in devices]),
        repr(sorted((trainer_compiler_options() or {}).items())),
        repr([(flag, str(getattr(jax.config, flag, None))) for flag in TRACE_FLAGS]),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def _own_code(spec) -> bool:
    """Whether every registry entry ``spec`` names is vi_sweep's own code (inside the key's digest)."""
    from vi_sweep.core.objectives import ESTIMATORS
    from vi_sweep.core.optimizers import OPTIMIZERS
    from vi_sweep.core.targets import TARGETS

    used = [OPTIMIZERS.get(spec.optimizer), TARGETS.get(spec.target), ESTIMATORS.get(spec.estimator)]
    return all(entry is None or str(getattr(entry, "__module__", "")).startswith("vi_sweep.core") for entry in used)


def _devices_of(leaf) -> Sequence[Any]:
    sharding = getattr(leaf, "sharding", None)
    return sorted(sharding.device_set, key=lambda device: device.id) if sharding is not None else []


def _platform(leaves: Sequence[Any]) -> str:
    import jax

    for leaf in leaves:
        for device in _devices_of(leaf):
            return device.platform
    return jax.default_backend()


@functools.lru_cache(maxsize=None)
def _versions() -> str:
    import jax
    import jaxlib
    import numpy
    import optax

    return f"jax {jax.__version__} jaxlib {jaxlib.__version__} optax {optax.__version__} numpy {numpy.__version__}"


@functools.lru_cache(maxsize=None)
def _core_digest() -> str:
    """sha256 over every file under ``vi_sweep/core`` (its code and its datasets) and this module
    (whose ``_flat_outputs`` is part of every program), by path inside the package."""
    digest = hashlib.sha256()
    for path in [*sorted(CORE_DIR.rglob("*")), Path(__file__).resolve()]:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(CORE_DIR.parent)).encode() + b"\0")  # core/trainer.py, launch/programs.py, ...
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _read(path: Path):
    """The program stored at ``path``, or None if there is none or it cannot be read (traced again, replaced)."""
    import jax

    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        return jax.export.deserialize(bytearray(blob))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file: trace again
        log.debug("stored program %s unreadable (%s): tracing it again", path, err)
        return None


def _write(path: Path, exported) -> None:
    """Store ``exported`` at ``path`` atomically (a temporary file, then a rename); skip if the cache cannot be written."""
    from vi_sweep.store.metrics import current_umask

    try:
        blob = exported.serialize()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(blob)
            os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600: a cache shared as JAX's is
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except Exception as err:  # noqa: BLE001 - a cache: a read-only or full disk only costs the next sweep its tracing
        log.debug("could not store program %s (%s)", path, err)
