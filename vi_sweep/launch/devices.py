"""JAX on this process's devices: set it up, start a batch of runs, collect it, count compilations.

One module for both ways a batch runs: the local engine (:mod:`vi_sweep.launch.batched`) and a
submitit task (:mod:`vi_sweep.launch.cluster`). No Hydra; JAX is imported inside the functions,
so that :func:`prefer_cpu_vector_width` can still act before JAX starts a backend.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vi_sweep.host import available_cores, available_memory_bytes

log = logging.getLogger(__name__)

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
XLA_VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width"


def quiet_jax_logs() -> None:
    """Hydra's job logging shows INFO; JAX's backend probing (TPU/GPU not found) is noise there."""
    for name in ("jax._src.xla_bridge", "jax._src.compiler", "jax._src.dispatch"):
        logging.getLogger(name).setLevel(logging.WARNING)


def prefer_cpu_vector_width(bits: int | None) -> bool:
    """Ask XLA's CPU compiler for ``bits``-wide vectors (``XLA_FLAGS``); return whether it was set.

    XLA reads ``XLA_FLAGS`` when JAX starts its first backend, so this only acts before that. A
    width the user already put in ``XLA_FLAGS`` wins; ``None`` leaves XLA's default (256). The
    width changes how many lanes XLA's loops fill: elementwise work (the draws) gives the same
    bits; a reduction may round differently at some sizes (float32 round-off; the reference
    grid and ``tests/test_launcher.py``'s grid are bit for bit the same). A CPU without AVX-512
    cannot go wider than 256 bits, and GPUs ignore ``xla_cpu_*`` flags.
    """
    if bits is None or backend_started():
        # Once started, XLA does not read XLA_FLAGS again: setting it would only mislead what
        # reads it later (JAX's persistent cache key reads it from the environment).
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_VECTOR_WIDTH_FLAG in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {XLA_VECTOR_WIDTH_FLAG}={int(bits)}".strip()
    return True


def backend_started() -> bool:
    """Whether this process has started a JAX backend already (a notebook that used JAX before a sweep)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src.xla_bridge import backends_are_initialized  # no public equivalent
    except ImportError:
        return False
    return bool(backends_are_initialized())


def init_jax(
    *,
    cpu_devices: Optional[int] = None,
    cpu_vector_width: Optional[int] = None,
    shard: bool = True,
    compilation_cache_dir: Optional[str] = None,
    cwd: Path,
) -> list:
    """Configure JAX for a sweep (CPU vector width and device count, persistent cache); return the devices to shard over.

    The arguments are ``hydra.launcher.*`` (:class:`vi_sweep.launch.options.BatchedLauncherConf`);
    a relative ``compilation_cache_dir`` is taken relative to ``cwd``.
    """
    prefer_cpu_vector_width(cpu_vector_width)  # before JAX starts a backend, else no effect
    import jax

    count = cpu_devices or available_cores()
    if count > 1:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:  # JAX already initialised in this process (e.g. called from a notebook)
            if cpu_devices is not None:
                log.warning("JAX is already initialised: hydra.launcher.cpu_devices=%d has no effect", count)
    if compilation_cache_dir is not None:
        cache_dir = Path(compilation_cache_dir)
        cache_dir = cache_dir if cache_dir.is_absolute() else cwd / cache_dir
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        # Cache every program: a sweep's programs compile in about a second, JAX's default threshold.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from vi_sweep.core.trainer import trainer_compiler_options

    trainer_compiler_options()  # its one probe compile now, not among the sweep's counted compiles
    return jax.local_devices() if shard else jax.local_devices()[:1]


def device_memory_bytes(devices: Sequence[Any]) -> Optional[int]:
    """Memory one of ``devices`` can give a batch: its own (a GPU's ``bytes_limit``) or, for CPU
    devices, the host's available memory shared by all of them; None if unknown."""
    if not devices or devices[0].platform == "cpu":
        return available_memory_bytes()
    stats = devices[0].memory_stats() or {}
    return stats.get("bytes_limit")


def start_batch(spec, traced: Sequence[dict], devices, runs_per_stream: int = 1) -> tuple:
    """Start the trainer on ``traced`` for ``spec``: streams of ``runs_per_stream`` runs each,
    laid out stream by stream (their number a multiple of the device count), the stream axis
    sharded over ``devices``. Returns futures in :data:`vi_sweep.launch.programs.OUTPUTS` order
    (:func:`vi_sweep.launch.programs.stream_program`: ``jit(vmap(make_stream_train(spec)))``,
    its traced form kept on disk beside JAX's compilation cache)."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from vi_sweep.core.trainer import as_hyper
    from vi_sweep.launch.programs import stream_program

    streams = len(traced) // runs_per_stream
    hyper = jax.tree_util.tree_map(lambda leaf: leaf.reshape(streams, runs_per_stream, *leaf.shape[1:]), as_hyper(list(traced)))
    if len(devices) > 1:
        sharding = NamedSharding(Mesh(devices, ("streams",)), PartitionSpec("streams"))
        hyper = jax.device_put(hyper, sharding)
    else:
        hyper = jax.device_put(hyper, devices[0] if devices else None)
    leaves, treedef = jax.tree_util.tree_flatten(hyper)
    return tuple(stream_program(spec, treedef, leaves)(*leaves))


def to_numpy(outputs) -> tuple:
    """Block on the futures of :func:`start_batch`; return ``(diverged_at, {column: array})`` as
    numpy, one entry per run in the order they were given, the columns with each run's final
    parameters (``vi_sweep.core.trainer.FINAL_PARAMS``)."""
    import numpy as np

    from vi_sweep.launch.programs import OUTPUTS

    flat = lambda value: np.asarray(value).reshape(-1, *np.shape(value)[2:])  # noqa: E731 - (streams, runs, ...) -> (runs, ...)
    named = dict(zip(OUTPUTS, outputs, strict=True))
    diverged_at = named.pop("diverged_at")
    return flat(diverged_at), {name: flat(value) for name, value in named.items()}


@dataclass
class CompileCounts:
    compiled: int = 0  # XLA compilations (persistent-cache hits excluded)
    cache_hits: int = 0  # programs loaded from the persistent compilation cache


def count_compiles(counts: CompileCounts) -> Callable[[], None]:
    """Count XLA compilations and persistent-cache hits into ``counts`` until the returned function is called."""
    import jax

    lock = threading.Lock()  # events may come from JAX's threads

    def on_duration(event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT:  # fired for a compile *or* a load from the persistent cache
            with lock:
                counts.compiled += 1

    def on_event(event: str, **kwargs: Any) -> None:
        if event == CACHE_HIT_EVENT:
            with lock:
                counts.cache_hits += 1
                counts.compiled -= 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    def stop() -> None:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)

    return stop
