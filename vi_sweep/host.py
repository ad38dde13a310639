"""Facts about the machine this process runs on. No JAX, no Hydra: the analysis side uses it too."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


XLA_VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width"
CPU_VECTOR_WIDTHS = (128, 256, 512)


def prefer_cpu_vector_width(bits: int | None) -> bool:
    """Ask XLA's CPU compiler for ``bits``-wide vectors (``XLA_FLAGS``); return whether it was set.

    XLA reads ``XLA_FLAGS`` when JAX starts its first backend, so this only acts before that. A
    width the user already put in ``XLA_FLAGS`` wins; ``None`` leaves XLA's default (256). The
    width changes how many lanes XLA's loops fill: elementwise work (the draws) gives the same
    bits; a reduction may round differently at some sizes (float32 round-off; the reference
    grid and ``tests/test_launcher.py``'s grid are bit for bit the same). A CPU without AVX-512 cannot
    go wider than 256 bits, and GPUs ignore ``xla_cpu_*`` flags.
    """
    if bits is None:
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_VECTOR_WIDTH_FLAG in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {XLA_VECTOR_WIDTH_FLAG}={int(bits)}".strip()
    return True
