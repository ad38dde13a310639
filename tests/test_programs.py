"""The launcher's programs kept on disk (vi_sweep.launch.programs): a warm sweep skips tracing,
gets the same bits as tracing, and never runs a program that is not its own."""

from __future__ import annotations

import contextlib
import hashlib
import stat

import jax
import numpy as np
import pytest

from tests.sweeps import flat_fields
from vi_sweep.core import optimizers
from vi_sweep.core.trainer import as_hyper, split_fields
from vi_sweep.launch import programs
from vi_sweep.launch.devices import start_batch, to_numpy
from vi_sweep.store.metrics import current_umask

pytest.importorskip("flatbuffers")  # jax.export's serialization; without it every sweep traces (tested below)


@contextlib.contextmanager
def jax_cache_dir(path):
    """JAX's compilation cache directory set to ``path`` (as ``init_jax`` sets it) for the block; in-process caches fresh."""
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None if path is None else str(path))
    programs.forget_loaded()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
        programs.forget_loaded()


def batch(optimizer: str = "adam", **overrides):
    base = {"d": 6, "steps": 50, "log_every": 10, "num_mc": 3, "optimizer": optimizer, **overrides}
    runs = [flat_fields(**base, lr=lr, seed=seed) for seed in (0, 1) for lr in (1e-2, 3e-1)]
    spec = split_fields(runs[0])[0]
    return spec, [split_fields(run)[1] for run in runs]


def trained(spec, traced):
    """Two streams (seeds) of two runs (lr) each, on this process's first device, as the launcher runs a chunk."""
    diverged_at, columns = to_numpy(start_batch(spec, traced, jax.local_devices()[:1], runs_per_stream=2))
    return diverged_at, columns


def assert_same(one, other):
    np.testing.assert_array_equal(one[0], other[0])
    assert one[1].keys() == other[1].keys()
    for name in one[1]:
        np.testing.assert_array_equal(one[1][name], other[1][name], err_msg=name)


def never_trace(*args, **kwargs):
    raise AssertionError("traced the trainer although its program is on disk")


def test_a_program_is_stored_once_and_a_later_sweep_runs_it_without_tracing_the_trainer(tmp_path, monkeypatch):
    spec, traced = batch()
    with jax_cache_dir(None):
        reference = trained(spec, traced)  # no cache: JAX traces as usual
    with jax_cache_dir(tmp_path):
        first = trained(spec, traced)
        stored = list((tmp_path / programs.PROGRAMS_SUBDIR).glob(f"*{programs.SUFFIX}"))
        assert len(stored) == 1
        assert stat.S_IMODE(stored[0].stat().st_mode) == 0o666 & ~current_umask()  # as JAX's own entries, not mkstemp's 0600
    with jax_cache_dir(tmp_path), monkeypatch.context() as patched:  # a new sweep: nothing in memory, the file on disk
        patched.setattr(programs, "_flat_outputs", never_trace)
        second = trained(spec, traced)
    assert_same(first, reference)
    assert_same(second, reference)
    assert (first[0] == 0).all() and np.isfinite(first[1]["kl"]).all()


def test_a_corrupt_stored_program_is_traced_again_and_replaced(tmp_path):
    spec, traced = batch()
    with jax_cache_dir(tmp_path):
        reference = trained(spec, traced)
    [path] = (tmp_path / programs.PROGRAMS_SUBDIR).glob(f"*{programs.SUFFIX}")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a sweep killed mid-write by an older version, a full disk
    with jax_cache_dir(tmp_path):
        again = trained(spec, traced)
    assert_same(again, reference)
    assert programs.read_stored(path) is not None  # replaced by a whole program
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_cache_costs_only_the_tracing(tmp_path):
    spec, traced = batch()
    blocked = tmp_path / "cache"
    blocked.mkdir()
    (blocked / programs.PROGRAMS_SUBDIR).write_text("a file where the directory would go")
    with jax_cache_dir(None):
        reference = trained(spec, traced)
    with jax_cache_dir(blocked):
        assert_same(trained(spec, traced), reference)


def test_the_key_tells_apart_what_changes_the_program():
    spec, traced = batch()
    other_steps, _ = batch(steps=60)
    other_target, _ = batch(target="ill_conditioned")

    def key(spec, runs):
        hyper = jax.tree_util.tree_map(lambda leaf: leaf.reshape(2, len(runs) // 2, *leaf.shape[1:]), as_hyper(runs))
        leaves, treedef = jax.tree_util.tree_flatten(jax.device_put(hyper, jax.local_devices()[0]))
        return programs.program_key(spec, treedef, leaves)

    keys = {key(spec, traced), key(spec, traced + traced), key(other_steps, traced), key(other_target, batch(target="ill_conditioned")[1])}
    assert len(keys) == 4 and None not in keys
    assert key(spec, traced) == key(spec, list(reversed(traced)))  # values are inputs, not part of the program
    with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):
        assert key(spec, traced) not in keys  # the PRNG's bits change with it


def test_a_users_own_optimizer_is_traced_every_time_never_stored(tmp_path, monkeypatch):
    import optax

    def my_adam(lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):  # a registry entry from outside vi_sweep.core: its code is not in the key
        return optax.adam(lr, b1=b1, b2=b2, eps=eps)

    monkeypatch.setitem(optimizers.OPTIMIZERS, "my_adam", my_adam)
    spec, traced = batch(optimizer="my_adam")
    with jax_cache_dir(tmp_path):
        diverged_at, columns = trained(spec, traced)
    assert np.isfinite(columns["kl"]).all()
    assert not list(tmp_path.rglob(f"*{programs.SUFFIX}"))


def test_without_flatbuffers_every_sweep_traces(tmp_path, monkeypatch):
    spec, traced = batch()
    monkeypatch.setattr(programs, "_can_serialize", lambda: False)
    with jax_cache_dir(tmp_path):
        assert np.isfinite(trained(spec, traced)[1]["kl"]).all()
    assert not list(tmp_path.rglob(f"*{programs.SUFFIX}"))


def test_a_remote_compilation_cache_is_left_to_jax(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with jax_cache_dir("gs://some-bucket/jax-cache"):  # JAX reaches it through its own file system layer; never a local "gs:" folder
        assert programs.programs_dir() is None
    assert not (tmp_path / "gs:").exists()


def test_a_stored_program_damaged_under_a_valid_checksum_is_traced_again_and_replaced(tmp_path):
    # A file whose wrapper deserializes but whose StableHLO does not parse (written by a broken
    # tool, or damaged before its checksum was taken): it must not stop every later sweep.
    spec, traced = batch()
    with jax_cache_dir(tmp_path):
        reference = trained(spec, traced)
    [path] = (tmp_path / programs.PROGRAMS_SUBDIR).glob(f"*{programs.SUFFIX}")
    _, _, body = path.read_bytes().partition(b"\n")
    start = body.index(b"ML\xefR") + 400  # inside the serialized MLIR bytecode
    body = body[:start] + bytes(64) + body[start + 64 :]
    damaged = programs.MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    path.write_bytes(damaged)
    assert programs.read_stored(path) is not None  # it passes the checksum and deserializes
    with jax_cache_dir(tmp_path):
        again = trained(spec, traced)
    assert_same(again, reference)
    assert path.read_bytes() != damaged


def test_a_flipped_bit_fails_the_checksum(tmp_path):
    spec, traced = batch()
    with jax_cache_dir(tmp_path):
        trained(spec, traced)
    [path] = (tmp_path / programs.PROGRAMS_SUBDIR).glob(f"*{programs.SUFFIX}")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    path.write_bytes(bytes(blob))
    assert programs.read_stored(path) is None


def test_every_jax_flag_is_in_the_key_the_seed_offset_too(tmp_path):
    spec, traced = batch()
    with jax_cache_dir(tmp_path):
        plain = trained(spec, traced)  # stored without an offset
    jax.config.update("jax_random_seed_offset", 1)  # jax.random.key(seed) inside the program adds it
    try:
        with jax_cache_dir(None):
            offset_reference = trained(spec, traced)
        with jax_cache_dir(tmp_path):
            offset_cached = trained(spec, traced)
    finally:
        jax.config.update("jax_random_seed_offset", 0)
    assert_same(offset_cached, offset_reference)
    assert not np.array_equal(offset_cached[1]["kl"], plain[1]["kl"])
    assert len(list((tmp_path / programs.PROGRAMS_SUBDIR).glob(f"*{programs.SUFFIX}"))) == 2


def test_a_wrapped_user_function_is_not_mistaken_for_vi_sweeps_own(monkeypatch):
    import functools

    import optax

    @functools.wraps(optimizers.adam)  # copies __module__ and __name__: still the user's code
    def not_adam(lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        return optax.sgd(lr)

    spec, traced = batch()
    hyper_leaves, treedef = jax.tree_util.tree_flatten(jax.device_put(jax.tree_util.tree_map(lambda x: x.reshape(2, 2), as_hyper(traced))))
    assert programs.program_key(spec, treedef, hyper_leaves) is not None
    monkeypatch.setitem(optimizers.OPTIMIZERS, "adam", not_adam)
    assert programs.program_key(spec, treedef, hyper_leaves) is None


def test_a_moved_cache_still_finds_its_programs(tmp_path, monkeypatch):
    spec, traced = batch()
    with jax_cache_dir(tmp_path / "here"):
        reference = trained(spec, traced)
    (tmp_path / "here").rename(tmp_path / "moved")
    with jax_cache_dir(tmp_path / "moved"), monkeypatch.context() as patched:
        patched.setattr(programs, "_flat_outputs", never_trace)
        assert_same(trained(spec, traced), reference)
