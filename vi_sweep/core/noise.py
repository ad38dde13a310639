r"""The notebook's noise stream -- ``jax.random.split`` and ``jax.random.normal`` -- written out.

The seed notebook draws, at every step, ``key, subkey = jax.random.split(key)`` and
``eps = jax.random.normal(subkey, (num_mc, d))``. With JAX's default PRNG (threefry2x32,
``jax_threefry_partitionable`` on, float32) both are one counter-mode hash:

.. code-block:: text

    (y0, y1)  = threefry2x32(key, (hi, lo))        # hi, lo: the 64-bit index of each output word
    split     = stack([y0, y1], -1)[i] for i = 0, 1 # the two new keys
    bits      = y0 ^ y1                            # normal(key, (n,)): indices 0..n-1, hi = 0
    u         = max(lo_u, (bitcast(bits >> 9 | 0x3F800000) - 1) * (1 - lo_u) + lo_u),  lo_u = nextafter(-1, 0)
    eps       = sqrt(2) * erf_inv(u)

:func:`split` and :func:`normal` compute exactly that with ``jnp`` operations, so the numbers are
JAX's bit for bit (``tests/test_noise.py`` checks keys, shapes and inside a scan). Why not call
JAX's: its CPU lowering of the hash is a rolled 5-iteration loop over the whole count array
(``use_rolled_loops`` in ``jax/_src/random/threefry2x32.py``, chosen for compile time), one pass
over memory per iteration, and the uniform-to-normal conversion another pass after it. Written
out, XLA fuses the 20 rounds, the conversion and ``erf_inv`` into one loop that keeps each word
in registers: the reference grid's per-run draws take 4.2 s instead of 6.4 s, its training calls
4.8 s instead of 6.2 s (``benchmarks/bench_grid.py``, 2 cores). On a GPU it is one elementwise
kernel, as JAX's own GPU lowering is.

Any other setup -- another PRNG implementation (``jax.random.key(seed, impl="rbg")``),
``jax_threefry_partitionable`` off, ``jax_enable_x64`` on (float64 draws) -- uses ``jax.random``
itself, so the stream is always JAX's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)  # Threefry's key-schedule constant (Salmon et al., 2011)
_MANTISSA_BITS = 23  # float32
_ONE_BITS = np.array(1.0, np.float32).view(np.uint32)
_UNIFORM_LOW = np.nextafter(np.float32(-1.0), np.float32(0.0))  # jax.random.normal's open lower end
_UNIFORM_SPAN = np.float32(1.0) - _UNIFORM_LOW  # float32 arithmetic, as jax.random.uniform does it
_SQRT2 = np.float32(np.sqrt(2.0))


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(key0: jax.Array, key1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al., 2011, "Parallel random numbers: as easy as
    1, 2, 3"): the hash of the counter words ``(x0, x1)`` under the key ``(key0, key1)``, all
    uint32, the rounds unrolled. ``x0``, ``x1`` may be arrays (elementwise); the keys are scalars."""
    schedule = (key0, key1, key0 ^ key1 ^ _KEY_PARITY)
    x0 = x0 + schedule[0]
    x1 = x1 + schedule[1]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, rotation) ^ x0
        x0 = x0 + schedule[(block + 1) % 3]
        x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _written_out(key: jax.Array) -> bool:
    """Whether :func:`split` and :func:`normal` compute this key's stream themselves (decided
    while tracing: the key's implementation and JAX's flags are static)."""
    return (
        str(jax.random.key_impl(key)) == "threefry2x32"
        and bool(jax.config.jax_threefry_partitionable)
        and not bool(jax.config.jax_enable_x64)
    )


@functools.partial(jax.jit, static_argnums=1)
def _hash_counts(key: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The two hash words for the output indices ``0 .. count - 1`` (their high 32 bits are 0).

    Jitted (not inlined) as ``jax.random``'s own functions are: JAX traces the ~130 operations
    of the hash once per count and a program holds one call of it (XLA inlines and fuses it),
    where traced inline they were traced again -- and batched op by op under ``vmap`` -- in every
    program a sweep builds (~0.3 s a program on this machine, even on a warm compilation cache)."""
    words = jax.random.key_data(key)
    low = jax.lax.iota(np.uint32, count)
    return threefry2x32(words[0], words[1], jnp.zeros_like(low), low)


def split(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``key, subkey = jax.random.split(key)``, bit for bit, for one typed key."""
    if not _written_out(key):
        key, subkey = jax.random.split(key)
        return key, subkey
    first, second = _hash_counts(key, 2)
    impl = jax.random.key_impl(key)
    return (
        jax.random.wrap_key_data(jnp.stack([first[0], second[0]]), impl=impl),
        jax.random.wrap_key_data(jnp.stack([first[1], second[1]]), impl=impl),
    )


def normal(key: jax.Array, count: int) -> jax.Array:
    """``jax.random.normal(key, (count,))``, bit for bit, for one typed key; float32."""
    if not _written_out(key):
        return jax.random.normal(key, (count,))
    if count >= 2**32:
        raise ValueError(f"a draw of {count} normals needs 64-bit counters; at most 2**32 - 1 are supported")
    first, second = _hash_counts(key, count)
    bits = first ^ second
    unit = jax.lax.bitcast_convert_type((bits >> np.uint32(32 - _MANTISSA_BITS)) | _ONE_BITS, jnp.float32) - np.float32(1.0)
    uniform = jnp.maximum(_UNIFORM_LOW, unit * _UNIFORM_SPAN + _UNIFORM_LOW)
    return _SQRT2 * jax.lax.erf_inv(uniform)
