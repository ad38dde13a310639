"""The written-out noise stream is JAX's, bit for bit: the split, the normals, and the two
together as the trainer carries them through a scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vi_sweep.core import noise

SEEDS = (0, 1, 7, 42, 2**31 - 1)


def _bits(key: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


@pytest.mark.parametrize("seed", SEEDS)
def test_split_gives_jax_random_splits_keys(seed):
    key = jax.random.key(seed)
    ours = jax.jit(noise.split)(key)
    theirs = jax.random.split(key)
    np.testing.assert_array_equal(_bits(ours[0]), _bits(theirs[0]))
    np.testing.assert_array_equal(_bits(ours[1]), _bits(theirs[1]))


@pytest.mark.parametrize("count", (1, 2, 7, 100, 400, 1600, 4099))
def test_normal_gives_jax_random_normals_bit_for_bit(count):
    keys = jax.random.split(jax.random.key(3), 64)
    ours = jax.jit(jax.vmap(lambda key: noise.normal(key, count)))(keys)
    theirs = jax.jit(jax.vmap(lambda key: jax.random.normal(key, (count,))))(keys)
    assert ours.dtype == theirs.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_normal_covers_the_extremes_of_the_uniform_bits():
    """The words whose uniform lands on the open interval's ends (bits 0 and 2**32 - 1 give
    u = nextafter(-1, 0) and u ~ 1) stay finite and match: the same clamp as jax.random.uniform."""
    draws = jax.jit(lambda key: noise.normal(key, 1 << 20))(jax.random.key(11))
    theirs = jax.jit(lambda key: jax.random.normal(key, (1 << 20,)))(jax.random.key(11))
    np.testing.assert_array_equal(np.asarray(draws), np.asarray(theirs))
    assert np.isfinite(np.asarray(draws)).all()


def test_a_stream_of_splits_and_draws_in_a_scan_is_the_notebooks():
    """The trainer's pattern: one split per step, then a (num_mc, d) draw from the subkey."""
    num_mc, d, steps = 3, 5, 50

    def stream(step_key, split, draw):
        def one(key, _):
            key, subkey = split(key)
            return key, draw(subkey)

        return jax.lax.scan(one, step_key, None, length=steps)[1]

    ours = jax.jit(lambda key: stream(key, noise.split, lambda k: noise.normal(k, num_mc * d).reshape(num_mc, d)))
    theirs = jax.jit(lambda key: stream(key, jax.random.split, lambda k: jax.random.normal(k, (num_mc, d))))
    for seed in SEEDS:
        np.testing.assert_array_equal(np.asarray(ours(jax.random.key(seed))), np.asarray(theirs(jax.random.key(seed))))


def test_the_hash_matches_threefrys_published_known_answer():
    """Salmon et al.'s known-answer vector for Threefry-2x32 with 20 rounds (Random123's kat_vectors):
    key (0x13198a2e, 0x03707344), counter (0x243f6a88, 0x85a308d3) -> (0xc4923a9c, 0x483df7a0)."""
    u32 = np.uint32
    out = noise.threefry2x32(u32(0x13198A2E), u32(0x03707344), jnp.asarray([0x243F6A88], jnp.uint32), jnp.asarray([0x85A308D3], jnp.uint32))
    assert (int(out[0][0]), int(out[1][0])) == (0xC4923A9C, 0x483DF7A0)


def test_another_prng_implementation_uses_jax_random_itself():
    key = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(np.asarray(noise.normal(key, 10)), np.asarray(jax.random.normal(key, (10,))))
    ours, theirs = noise.split(key), jax.random.split(key)
    np.testing.assert_array_equal(_bits(ours[1]), _bits(theirs[1]))
