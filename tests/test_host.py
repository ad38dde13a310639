"""Facts about the machine, and the XLA flag the batched launcher sets from them."""

from __future__ import annotations

import os

import pytest

from vi_sweep.host import available_cores
from vi_sweep.launch import devices
from vi_sweep.launch.devices import backend_started, prefer_cpu_vector_width


@pytest.fixture(autouse=True)
def before_jax_starts(monkeypatch):
    """As in a fresh sweep process: no JAX backend yet (this test process may have started one)."""
    monkeypatch.setattr(devices, "backend_started", lambda: False)


def test_available_cores_counts_at_least_one_core():
    assert available_cores() >= 1


def test_the_vector_width_is_added_to_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert prefer_cpu_vector_width(512)
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_prefer_vector_width=512"


def test_a_vector_width_already_in_xla_flags_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=128")
    assert not prefer_cpu_vector_width(512)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=128"


def test_no_vector_width_leaves_xla_flags_alone(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert not prefer_cpu_vector_width(None)
    assert "XLA_FLAGS" not in os.environ
    assert prefer_cpu_vector_width(256)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"


def test_the_vector_width_is_not_put_in_xla_flags_once_the_backend_runs(monkeypatch):
    # XLA read XLA_FLAGS when it started (a notebook that used JAX before its sweep): a flag
    # added now would do nothing but mislead what reads XLA_FLAGS later.
    import jax

    jax.devices()
    assert backend_started()  # the real check, not the fixture's stand-in
    monkeypatch.setattr(devices, "backend_started", lambda: True)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert prefer_cpu_vector_width(512) is False
    assert "XLA_FLAGS" not in os.environ
