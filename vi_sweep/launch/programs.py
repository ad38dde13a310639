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
the trainer's code and data (every file under ``vi_sweep/core``, and this module), jax, jaxlib,
optax and numpy versions, the :class:`~vi_sweep.core.trainer.TrainSpec`, the inputs' tree,
shapes, dtypes and shardings, the devices, the compiler options, and every JAX flag but the compilation cache's own (x64, the
PRNG's implementation and seed offset, Shardy, ...). A spec whose optimizer, target or estimator
is not a function defined in ``vi_sweep/core`` (a user's registry entry, whose code the key
cannot see) is traced every time, as is everything when JAX has no local compilation cache
directory, runs without jit, or ``flatbuffers`` (jax.export's serialization) is missing. A
stored file carries a sha256 of its program: one that fails it, cannot be deserialized or does
not compile is traced again and replaced; a cache that cannot be written is skipped. At worst
the tracing a sweep did before, never another program. Not covered: a ``vi_sweep/core`` file
edited between the sweep's start and its first program's key (the digest reads the files then).

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
MAGIC = b"vi_sweep program sha256="  # a file's first line: this, then the sha256 of the serialized program after it

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
    from vi_sweep.core.trainer import trainer_jit

    return trainer_jit(_flat_outputs(spec, treedef))


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

    path = Path(directory) / f"{key}{SUFFIX}"
    exported = read_stored(path)
    if exported is not None:
        try:
            program = _compiled(exported, leaves)
        except Exception as err:  # noqa: BLE001 - its checksum holds but its StableHLO does not parse here: trace again
            log.debug("stored program %s does not compile (%s): tracing it again", path, err)
            exported = None
    if exported is None:
        exported = jax.export.export(jax.jit(_flat_outputs(spec, treedef)), platforms=[_platform(leaves)])(*leaves)
        program = _compiled(exported, leaves)  # an error here is the trainer's own: raised
        _write(path, exported)  # only a program that compiled
    _STORED[key] = program
    return program


def _compiled(exported, leaves: tuple) -> Callable:
    """``exported`` lowered and compiled for ``leaves`` (the persistent compilation cache's hit on
    a warm cache), with the trainer's compiler options. The key fixes the shapes, dtypes and
    shardings, so the compiled program serves every later call with this key."""
    from vi_sweep.core.trainer import trainer_jit

    return trainer_jit(exported.call).lower(*leaves).compile()


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
    None if the spec uses code outside ``vi_sweep.core`` (a user's registry entry) or JAX runs
    without jit (``jax_disable_jit``: nothing to store)."""
    import jax

    from vi_sweep.core.trainer import trainer_compiler_options

    if jax.config.jax_disable_jit or not _own_code(spec):
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
        # Every JAX flag, not a list of the ones known to change tracing: x64, the PRNG's
        # implementation and seed offset, Shardy, promotion rules... A flag that does not matter
        # costs a trace when it changes, a missing one a wrong program. But not the compilation
        # cache's own settings (its path above all): none changes a traced program, and a cache
        # moved, or shared at another mount point, must still find its programs.
        repr(sorted((name, repr(value)) for name, value in jax.config.values.items() if "cache" not in name)),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def _own_code(spec) -> bool:
    """Whether every registry entry ``spec`` names is a function defined in ``vi_sweep/core``
    (inside the key's digest); by its code's file, which ``functools.wraps`` does not copy."""
    from vi_sweep.core.objectives import ESTIMATORS
    from vi_sweep.core.optimizers import OPTIMIZERS
    from vi_sweep.core.targets import TARGETS

    for registry, name in ((OPTIMIZERS, spec.optimizer), (TARGETS, spec.target), (ESTIMATORS, spec.estimator)):
        if name not in registry:
            continue  # "none" for the exact objective; an unknown name fails in the trainer itself
        code = getattr(registry[name], "__code__", None)
        if code is None or not Path(code.co_filename).resolve().is_relative_to(CORE_DIR):
            return False
    return True


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


def read_stored(path: Path):
    """The program stored at ``path``, or None if there is none or it cannot be read: a file
    whose checksum fails (a flipped bit could still parse, and run) or that JAX cannot deserialize."""
    import jax

    try:
        blob = path.read_bytes()
    except OSError:
        return None
    header, _, body = blob.partition(b"\n")
    if header != MAGIC + hashlib.sha256(body).hexdigest().encode():
        log.debug("stored program %s fails its checksum: tracing it again", path)
        return None
    try:
        return jax.export.deserialize(bytearray(body))
    except Exception as err:  # noqa: BLE001 - a file of another jax: trace again
        log.debug("stored program %s unreadable (%s): tracing it again", path, err)
        return None


def _write(path: Path, exported) -> None:
    """Store ``exported`` at ``path`` atomically (a temporary file, then a rename); skip if the cache cannot be written."""
    from vi_sweep.store.metrics import current_umask

    try:
        body = bytes(exported.serialize())
        blob = MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
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
