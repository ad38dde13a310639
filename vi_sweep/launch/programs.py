"""The launcher's batched training programs, compiled once and kept on disk beside JAX's compilation cache.

A warm sweep's compiles are hits in JAX's persistent compilation cache, but JAX still traces
and lowers every program before it can look the compiled one up: ``vmap`` of ``scan`` of the
trainer's step, batched primitive by primitive, 0.4-1 s a program on this machine (the
reference grid has four), all of it on the thread that writes the job directories. So the
launcher keeps each compiled program itself (:mod:`jax.experimental.serialize_executable`, the
executable JAX's own cache holds, with its input and output trees): the first time a program is
needed it is traced, lowered, compiled and serialized into
``<compilation cache>/vi_sweep-programs/``; a later sweep loads it (~0.1 s: no tracing, no
lowering, no lookup in JAX's cache). A cold and a warm sweep run the same executable, so they
give the same bits, and the same bits as plain ``jit``.

A stored program is found by a key of everything that shapes the compiled program:
the trainer's code and data (every file under ``vi_sweep/core``, and this module), jax, jaxlib,
optax and numpy versions, the :class:`~vi_sweep.core.trainer.TrainSpec`, the inputs' tree,
shapes, dtypes and shardings, the devices in their order, the backend and its version, the
compiler options, ``XLA_FLAGS`` (and ``--xla`` arguments), the host's CPU (an executable for
one CPU's instructions must not run on another's, on a cache shared over a cluster's file
system), and every JAX flag (x64, the PRNG's implementation and seed offset, Shardy, ...). A spec
whose optimizer, target or estimator is not a function defined in ``vi_sweep/core`` (a user's
registry entry, whose code the key cannot see) is traced every time, as is everything when JAX
has no local compilation cache directory or runs without jit. A stored file carries a sha256 of
its program: one that fails it, cannot be read or does not load is traced again and replaced; a
program JAX cannot serialize, or a cache that cannot be written, is skipped. At worst the
tracing a sweep did before, never another program. A stored program is loaded as JAX loads its
cache entries: trust the cache directory as you trust JAX's. Not covered: a ``vi_sweep/core``
file edited between the sweep's start and its first program's key (the digest reads the files
then).

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
import pickle
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from vi_sweep.core.trainer import FINAL_PARAMS, Rows

log = logging.getLogger(__name__)

OUTPUTS = ("diverged_at", *Rows._fields, *FINAL_PARAMS)
"""The order of a program's outputs."""

PROGRAMS_SUBDIR = "vi_sweep-programs"
SUFFIX = ".executable"
MAGIC = b"vi_sweep program sha256="  # a file's first line: this, the sha256 of its key and the program after it, a space, its key

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
    path = Path(directory) / f"{key}{SUFFIX}"
    devices = execution_devices(leaves)
    program = None
    payload = read_stored(path, key)
    if payload is not None:
        try:
            program = _loaded(payload, devices, len(leaves))
        except Exception as err:  # noqa: BLE001 - its checksum holds but XLA cannot load it here: compile again
            log.debug("stored program %s does not load (%s): compiling it again", path, err)
    if program is None:
        program = _traced_each_time(spec, treedef).lower(*leaves).compile()  # an error here is the trainer's own: raised
        _write(path, key, program)
    _STORED[key] = program
    return program


def _loaded(payload: tuple, devices: Sequence[Any], inputs: int) -> Callable:
    """The compiled program ``payload`` (``serialize``'s bytes, input and output trees) loaded onto
    ``devices``; raises if its trees do not fit ``inputs`` flat inputs and :data:`OUTPUTS` (a
    program that would load and then fail when called)."""
    import jax
    from jax.experimental.serialize_executable import deserialize_and_load

    serialized, in_tree, out_tree = payload
    if in_tree != jax.tree_util.tree_structure((tuple(range(inputs)), {})) or out_tree != jax.tree_util.tree_structure(tuple(OUTPUTS)):
        raise ValueError(f"its trees ({in_tree}, {out_tree}) are not this program's")
    return deserialize_and_load(serialized, in_tree, out_tree, backend=devices[0].client, execution_devices=devices)


def execution_devices(leaves: Sequence[Any]) -> list:
    """The devices the program runs on, in the order of its device assignment: a mesh's order
    for a ``NamedSharding`` (the launcher's sharded chunks), else by id."""
    import jax

    for leaf in leaves:
        mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
        if mesh is not None:
            return list(mesh.devices.flat)
    found = sorted({device for leaf in leaves for device in _devices_of(leaf)}, key=lambda device: device.id)
    return found or [jax.local_devices()[0]]


def programs_dir() -> Path | None:
    """``<JAX's compilation cache dir>/vi_sweep-programs``, or None when JAX has no local cache dir or
    programs cannot be serialized."""
    import jax

    cache_dir = jax.config.jax_compilation_cache_dir
    if not cache_dir or "://" in str(cache_dir):  # a remote cache (gs://...) is JAX's to reach, not a path here
        return None
    return Path(cache_dir) / PROGRAMS_SUBDIR


def program_key(spec, treedef, leaves: Sequence[Any]) -> str | None:
    """A hex digest of everything that shapes the compiled program (see the module docstring), or
    None if the spec uses code outside ``vi_sweep.core`` (a user's registry entry) or JAX runs
    without jit (``jax_disable_jit``: nothing to store)."""
    import jax

    from vi_sweep.core.trainer import trainer_compiler_options

    if jax.config.jax_disable_jit or not _own_code(spec):
        return None
    devices = execution_devices(leaves)
    backend = devices[0].client
    parts = [
        _versions(),
        _core_digest(),
        repr(spec),
        str(treedef),
        repr([(tuple(leaf.shape), str(leaf.dtype), str(getattr(leaf, "sharding", None))) for leaf in leaves]),
        repr([(device.platform, device.device_kind, device.id, device.process_index) for device in devices]),  # in assignment order
        f"{backend.platform} {backend.platform_version}",
        repr(sorted((trainer_compiler_options() or {}).items())),
        _xla_flags(),
        _host_cpu(),
        # Every JAX flag, not a list of the ones known to change tracing: x64, the PRNG's
        # implementation and seed offset, Shardy, promotion rules... A flag that does not matter
        # costs a trace when it changes, a missing one a wrong program. But not the cache's own
        # settings (its path above all): a cache moved, or shared at another mount point, still hits.
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


@functools.lru_cache(maxsize=None)
def _versions() -> str:
    import jax
    import jaxlib
    import numpy
    import optax

    return f"jax {jax.__version__} jaxlib {jaxlib.__version__} optax {optax.__version__} numpy {numpy.__version__}"


def _xla_flags() -> str:
    """The XLA flags, as JAX's own cache key reads them: from the environment now. XLA read them
    when the backend started; the launcher never changes them after that
    (:func:`vi_sweep.launch.devices.prefer_cpu_vector_width`), but a user who changes
    ``XLA_FLAGS`` in a running process misleads this key as much as JAX's."""
    flags = [os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", "")]
    return repr([*flags, *(arg for arg in sys.argv if arg.startswith("--xla"))])


@functools.lru_cache(maxsize=None)
def _host_cpu() -> str:
    """The host's CPU: its model and instruction-set flags (Linux), else what ``platform`` knows.
    XLA:CPU compiles for the CPU it runs on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in file if ":" in line}
        return repr((platform.machine(), lines.get("model name", ""), lines.get("flags", lines.get("Features", ""))))
    except OSError:
        return repr((platform.machine(), platform.processor()))


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


def read_stored(path: Path, key: str) -> tuple | None:
    """The program stored at ``path`` under ``key`` (``serialize``'s bytes and the program's input
    and output trees), or None if there is none or it cannot be read: a file whose checksum fails
    (a flipped bit could still load, and run), that was stored under another key (copied or
    renamed), or that does not unpickle."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    header, _, body = blob.partition(b"\n")
    if header != _header(key, body):
        log.debug("stored program %s fails its checksum or is not %s: compiling it again", path, key)
        return None
    try:
        payload = pickle.loads(body)
    except Exception as err:  # noqa: BLE001 - a file of another jax: compile again
        log.debug("stored program %s unreadable (%s): compiling it again", path, err)
        return None
    if not (isinstance(payload, tuple) and len(payload) == 3 and isinstance(payload[0], bytes)):
        log.debug("stored program %s holds no program: compiling it again", path)
        return None
    return payload


def _header(key: str, body: bytes) -> bytes:
    """A stored file's first line: a sha256 over its key and its program, then the key."""
    return MAGIC + hashlib.sha256(key.encode() + b"\n" + body).hexdigest().encode() + b" " + key.encode()


def _write(path: Path, key: str, compiled) -> None:
    """Store ``compiled`` at ``path`` atomically (a temporary file, then a rename); skip if JAX
    cannot serialize it or the cache cannot be written."""
    from jax.experimental.serialize_executable import serialize

    from vi_sweep.store.metrics import current_umask

    try:
        body = pickle.dumps(serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL)
        blob = _header(key, body) + b"\n" + body
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
    except Exception as err:  # noqa: BLE001 - a cache: a program JAX cannot serialize, a read-only or full disk only cost the next sweep its tracing
        log.debug("could not store program %s (%s)", path, err)
