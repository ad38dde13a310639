"""TemplateComposer: every job's config equals Hydra's own ``load_sweep_config``, node for node."""

from __future__ import annotations

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from vi_sweep.compose import TemplateComposer
from vi_sweep.config import CONF_DIR

# Pairs with the same shape (reuse a template) and every kind of override that must not.
JOBS = [
    ["lr=0.1", "num_mc=2", "seed=0"],
    ["lr=0.3", "num_mc=5", "seed=4"],  # same shape as the first: composed from its template
    ["lr=1", "num_mc=5", "seed=4"],  # an int for a float field: converted as Hydra converts it
    ["optimizer=sgd", "lr=0.2"],  # a config group choice is part of the shape
    ["optimizer=sgd", "lr=0.5"],
    ["optimizer=momentum", "optimizer.momentum=0.5", "lr=0.2"],  # nested leaf of a chosen group
    ["optimizer=momentum", "optimizer.momentum=0.7", "lr=0.1"],
    ["scenario=seed_stress", "lr=0.3"],  # a _global_ group overriding several keys
    ["scenario=seed_stress", "lr=0.4"],
    ["objective=exact", "+extra=1", "lr=0.1"],  # an added key: always composed in full
    ["hydra.job.name=other", "lr=0.1"],  # a hydra key
    ["hydra.job.name=other", "lr=0.2"],
    ["target=ill_conditioned", "target.condition=10", "init_log_sigma=-3"],
    ["target=ill_conditioned", "target.condition=1e3", "init_log_sigma=0"],
    ["optimizer={name: sgd, grad_clip: 1.0}", "lr=0.1"],  # a dict value is merged: never templated
    ["optimizer={name: sgd, grad_clip: 2.0}", "lr=0.1"],
]


@pytest.fixture(scope="module")
def loader_and_master():
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    master = loader.load_configuration("config", ["hydra.sweep.dir=/tmp/unused", "lr=0.1,0.2"], RunMode.MULTIRUN)
    return loader, master


def assert_same_config(actual, expected):
    assert OmegaConf.to_yaml(actual) == OmegaConf.to_yaml(expected)  # unresolved, hydra node included
    assert OmegaConf.to_container(actual) == OmegaConf.to_container(expected)
    assert OmegaConf.is_struct(actual) == OmegaConf.is_struct(expected)
    assert OmegaConf.is_readonly(actual.hydra) == OmegaConf.is_readonly(expected.hydra)
    assert OmegaConf.get_type(actual, "hydra") is OmegaConf.get_type(expected, "hydra")


def test_every_job_equals_hydras_own_composition(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    for overrides in JOBS:
        assert_same_config(composer.load_sweep_config(master, overrides), loader.load_sweep_config(master, overrides))
    # shapes: plain values (3 jobs), sgd (2), momentum (2), seed_stress (2), +extra (1), hydra (2),
    # ill_conditioned (2), and the two dict values (1 each)
    assert composer.full_compositions == 9 and composer.reused_compositions == 7


def test_returned_configs_are_independent_of_the_template(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    first = composer.load_sweep_config(master, ["lr=0.1"])
    first.lr = 123.0  # a launcher sets hydra.job.num etc. on what it gets
    second = composer.load_sweep_config(master, ["lr=0.2"])
    assert second.lr == 0.2
    assert composer.load_sweep_config(master, ["lr=0.1"]).lr == 0.1


def test_an_invalid_value_fails_as_it_fails_in_hydra(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    composer.load_sweep_config(master, ["num_mc=2"])  # make the template
    for bad in (["num_mc=abc"], ["nope=1"]):
        with pytest.raises(ConfigCompositionException):
            loader.load_sweep_config(master, bad)
        with pytest.raises(ConfigCompositionException):
            composer.load_sweep_config(master, bad)


def test_a_new_master_config_never_reuses_an_old_template(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    composer.load_sweep_config(master, ["lr=0.1"])
    other = loader.load_configuration("config", ["hydra.sweep.dir=/tmp/unused", "d=7"], RunMode.MULTIRUN)
    assert_same_config(composer.load_sweep_config(other, ["lr=0.2"]), loader.load_sweep_config(other, ["lr=0.2"]))
    assert composer.full_compositions == 2
