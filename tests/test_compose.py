"""TemplateComposer: every job's config equals Hydra's own ``load_sweep_config``, node for node."""

from __future__ import annotations

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from vi_sweep.launch.compose import TemplateComposer
from vi_sweep.launch.config import CONF_DIR
from vi_sweep.launch.plain import to_plain

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


def test_scratch_configs_equal_hydras_and_reuse_one_copy_per_shape(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    seen = {}
    for overrides in JOBS:
        cfg = composer.scratch_sweep_config(master, overrides)
        assert_same_config(cfg, loader.load_sweep_config(master, overrides))
        seen.setdefault(id(cfg), []).append(overrides)
    # the two plain-value jobs after the first share one scratch copy (the first is Hydra's own)
    assert [["lr=0.3", "num_mc=5", "seed=4"], ["lr=1", "num_mc=5", "seed=4"]] in seen.values()


def test_a_failed_scratch_composition_does_not_leak_into_the_next_job(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    composer.scratch_sweep_config(master, ["num_mc=2", "lr=0.1"])  # the template
    composer.scratch_sweep_config(master, ["num_mc=3", "lr=0.2"])  # the scratch copy
    with pytest.raises(ConfigCompositionException):
        composer.scratch_sweep_config(master, ["num_mc=4", "lr=abc"])  # num_mc is set, then lr fails
    assert_same_config(composer.scratch_sweep_config(master, ["num_mc=5", "lr=0.3"]), loader.load_sweep_config(master, ["num_mc=5", "lr=0.3"]))


def test_while_only_checking_a_job_is_checked_not_composed(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    composer.load_sweep_config(master, ["lr=0.1", "num_mc=2"])  # the template
    composer.only_checking = True  # as the batched launcher sets it while Hydra's basic sweeper validates
    first = composer.load_sweep_config(master, ["lr=0.2", "num_mc=3"])
    assert composer.load_sweep_config(master, ["lr=0.3", "num_mc=4"]) is first  # one scratch config, handed out again
    for bad in (["lr=abc", "num_mc=2"], ["lr=0.1", "num_mc=1.5"]):  # a bad value still fails as in Hydra
        with pytest.raises(ConfigCompositionException):
            composer.load_sweep_config(master, bad)
    assert composer.load_sweep_config(master, ["optimizer=sgd", "lr=0.2"]).lr == 0.2  # a new shape is composed in full
    assert composer.full_compositions == 2
    composer.only_checking = False
    first, second = composer.load_sweep_config(master, ["lr=0.2"]), composer.load_sweep_config(master, ["lr=0.3"])
    assert first is not second and (first.lr, second.lr) == (0.2, 0.3)


def task_part(cfg):
    return {key: to_plain(cfg[key]) for key in cfg if key != "hydra"}


def test_plain_task_values_equal_those_of_hydras_own_composition(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    for overrides in JOBS:
        expected = task_part(loader.load_sweep_config(master, overrides))
        plain = composer.plain_task(master, overrides)
        if plain is None:  # the first job of its shape (or one that is never templated): composed
            composer.load_sweep_config(master, overrides)
            plain = composer.plain_task(master, overrides)
        if plain is not None:
            assert plain.values == expected
            assert {key: type(value) for key, value in plain.values.items()} == {key: type(value) for key, value in expected.items()}
            assert plain.hydra["runtime"]["choices"] == OmegaConf.to_container(loader.load_sweep_config(master, overrides).hydra.runtime.choices)
    assert type(composer.plain_task(master, ["lr=1", "num_mc=5", "seed=4"]).values["lr"]) is float  # converted as Hydra converts it
    assert composer.plain_task(master, ["objective=exact", "d=3"]) is None  # a shape not composed yet


def test_plain_tasks_share_only_what_no_job_overrides(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    composer.load_sweep_config(master, ["optimizer=momentum", "optimizer.momentum=0.5"])
    first = composer.plain_task(master, ["optimizer=momentum", "optimizer.momentum=0.6"]).values
    second = composer.plain_task(master, ["optimizer=momentum", "optimizer.momentum=0.7"]).values
    assert (first["optimizer"]["momentum"], second["optimizer"]["momentum"]) == (0.6, 0.7)
    assert first["target"] is second["target"]  # not overridden: one dict for both


def test_plain_task_fails_as_hydra_does_for_a_value_it_cannot_set(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    composer.load_sweep_config(master, ["num_mc=2"])
    with pytest.raises(ConfigCompositionException):
        composer.plain_task(master, ["num_mc=abc"])
    assert composer.plain_task(master, ["num_mc=3"]).values["num_mc"] == 3


def test_a_task_part_with_interpolations_is_always_composed(loader_and_master):
    loader, master = loader_and_master
    composer = TemplateComposer(loader)
    composer.load_sweep_config(master, ["+label=lr_${lr}", "lr=0.1"])
    assert composer.plain_task(master, ["+label=lr_${lr}", "lr=0.2"]) is None  # label reads the job's lr
    assert composer.load_sweep_config(master, ["+label=lr_${lr}", "lr=0.2"]).label == "lr_0.2"
