"""write_job_dir: the job directory, callbacks and JobReturn of Hydra's own ``run_job``, byte for byte."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, run_job
from hydra.experimental.callback import Callback
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict

from vi_sweep.launch.config import CONF_DIR
from vi_sweep.launch.job_dirs import to_yaml, write_job_dir

SEEN: list[tuple[str, Any]] = []  # what the recording callback saw, in order


class Recorder(Callback):
    """Records what a job's callbacks receive (and the environment they run in)."""

    def on_job_start(self, config, **kwargs) -> None:
        SEEN.append(("start", (config.lr, HydraConfig.get().job.num, os.environ.get("VI_SWEEP_TEST_ENV"))))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        SEEN.append(("end", (config.lr, job_return.status, job_return._return_value)))  # .return_value raises if FAILED


# A string that reads back as a float, one that reads back as a bool, a nested group, an env var.
OVERRIDES = ["lr=0.3", "num_mc=5", "seed=4", "optimizer=momentum", "optimizer.momentum=0.7", "+note='1e-3'", "+flag='true'"]


@pytest.fixture
def compose(tmp_path):
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))

    def compose(sweep_dir: Path, *hydra_overrides: str):
        master = loader.load_configuration(
            "config",
            [f"hydra.sweep.dir={sweep_dir}", "+hydra.job.env_set.VI_SWEEP_TEST_ENV=set", *hydra_overrides, "lr=0.1,0.3"],
            RunMode.MULTIRUN,
        )
        cfg = loader.load_sweep_config(master, list(OVERRIDES))
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = 7
            cfg.hydra.callbacks = {"recorder": {"_target_": f"{__name__}.Recorder"}}
        return cfg, HydraContext(config_loader=loader, callbacks=Callbacks(cfg))

    JobRuntime.instance().set("name", "vi_sweep")
    yield compose
    logging.getLogger().handlers.clear()  # both writers leave the job's log handlers in place
    SEEN.clear()


def task(cfg) -> dict:
    logging.getLogger("vi_sweep").info("training lr=%s", cfg.lr)
    return {"lr": cfg.lr, "cwd": os.getcwd()}


def both(compose, tmp_path: Path, task_function=task, *hydra_overrides: str):
    """The same job through run_job (sweep dir a/) and write_job_dir (b/): (dir, return) for each."""
    out = []
    for name, writer in (("a", "run_job"), ("b", "write_job_dir")):
        cfg, context = compose(tmp_path / name, *hydra_overrides)
        if writer == "run_job":
            ret = run_job(task_function, cfg, "hydra.sweep.dir", "hydra.sweep.subdir", hydra_context=context)
        else:
            ret = write_job_dir(context, cfg, tmp_path / name / "7", task_function)
        out.append((tmp_path / name / "7", ret))
    return out


def test_the_hydra_files_are_run_jobs_byte_for_byte(compose, tmp_path):
    (dir_a, _), (dir_b, _) = both(compose, tmp_path)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        a = (dir_a / ".hydra" / name).read_text().replace(str(tmp_path / "a"), str(tmp_path / "b"))
        assert (dir_b / ".hydra" / name).read_text() == a, name
    assert "note: '1e-3'" in (dir_b / ".hydra" / "config.yaml").read_text()  # still quoted: a string


def test_the_job_log_gets_the_same_lines(compose, tmp_path):
    (dir_a, _), (dir_b, _) = both(compose, tmp_path)

    def lines(path: Path) -> list[str]:
        return [re.sub(r"^\[[^]]*\]", "[time]", line) for line in path.read_text().splitlines()]

    assert lines(dir_b / "vi_sweep.log") == lines(dir_a / "vi_sweep.log") == ["[time][vi_sweep][INFO] - training lr=0.3"]


def test_a_job_logging_config_with_interpolations_anywhere_is_resolved_as_run_jobs(compose, tmp_path):
    def debug_task(cfg) -> None:
        logging.getLogger("vi_sweep.deep").debug("debug line, shown by hydra.verbose")
        logging.getLogger("vi_sweep").info("training lr=%s", cfg.lr)

    overrides = (
        "hydra.job_logging.handlers.file.filename=${hydra.runtime.output_dir}/custom_${hydra.job.num}.log",
        "hydra.job_logging.root.handlers=[console,${oc.env:VI_SWEEP_TEST_HANDLER,file}]",  # inside a list
        "hydra.job_logging.formatters.simple.format='${hydra.job.name}|%(name)s|%(message)s'",
        "hydra.verbose=[vi_sweep.deep]",
    )
    levels = []
    for name in ("a", "b"):
        cfg, context = compose(tmp_path / name, *overrides)
        if name == "a":
            run_job(debug_task, cfg, "hydra.sweep.dir", "hydra.sweep.subdir", hydra_context=context)
        else:
            write_job_dir(context, cfg, tmp_path / name / "7", debug_task)
        levels.append(logging.getLogger("vi_sweep.deep").level)
        logging.getLogger("vi_sweep.deep").setLevel(logging.NOTSET)
    written = [(tmp_path / name / "7" / "custom_7.log").read_text().splitlines() for name in ("a", "b")]
    assert written[0] == written[1] == ["vi_sweep|vi_sweep.deep|debug line, shown by hydra.verbose", "vi_sweep|vi_sweep|training lr=0.3"]
    assert levels == [logging.DEBUG, logging.DEBUG]


def test_the_job_return_and_the_callbacks_are_run_jobs(compose, tmp_path):
    (_, a), (_, b) = both(compose, tmp_path)
    assert SEEN[:2] == SEEN[2:] == [("start", (0.3, 7, "set")), ("end", (0.3, JobStatus.COMPLETED, {"lr": 0.3, "cwd": os.getcwd()}))]
    assert "VI_SWEEP_TEST_ENV" not in os.environ  # hydra.job.env_set is undone afterwards
    assert (b.status, b.return_value, b.task_name, b.overrides, b.working_dir) == (
        a.status, a.return_value, a.task_name, a.overrides, a.working_dir
    )
    assert OmegaConf.to_yaml(b.cfg) == OmegaConf.to_yaml(a.cfg)
    # run_job's hydra_cfg is a copy with only `hydra`; write_job_dir's is the job's config itself
    hydra_b = OmegaConf.to_yaml(OmegaConf.masked_copy(b.hydra_cfg, ["hydra"])).replace(str(tmp_path / "b"), str(tmp_path / "a"))
    assert hydra_b == OmegaConf.to_yaml(a.hydra_cfg)


def test_a_task_that_reads_no_config_gets_none_and_its_return_still_holds_run_jobs_task_config(compose, tmp_path):
    import dataclasses
    import pickle

    (_, a), _ = both(compose, tmp_path)
    cfg, context = compose(tmp_path / "c")
    seen = []
    c = write_job_dir(context, cfg, tmp_path / "c" / "7", lambda task_cfg: seen.append(task_cfg) or "done", task_reads_config=False)
    assert seen == [None] and c.status == JobStatus.COMPLETED and c.return_value == "done"
    assert OmegaConf.to_yaml(c.cfg) == OmegaConf.to_yaml(a.cfg)  # made when read, the same as run_job's
    assert _adds_a_key(c.cfg) is False  # struct, as run_job's
    again = pickle.loads(pickle.dumps(c))
    assert type(again) is JobReturn  # a plain JobReturn: a pickle that loads without vi_sweep
    assert OmegaConf.to_yaml(again.cfg) == OmegaConf.to_yaml(a.cfg) and again.return_value == "done"
    assert dataclasses.replace(c, working_dir="elsewhere").working_dir == "elsewhere"
    c.cfg = None  # a field like any other
    assert c.cfg is None


def test_a_job_written_from_a_reused_config_returns_configs_of_its_own(compose, tmp_path):
    (_, a), _ = both(compose, tmp_path)
    shared, context = compose(tmp_path / "c")
    made = []

    def own_config():
        cfg, _ = compose(tmp_path / "c")
        made.append(cfg)
        return cfg

    c = write_job_dir(context, shared, tmp_path / "c" / "7", lambda _: "done", task_reads_config=False, own_config=own_config)
    assert made == []  # nothing made until read
    assert OmegaConf.is_missing(shared.hydra.runtime, "output_dir") and not OmegaConf.is_readonly(shared.hydra)  # left as it came
    with open_dict(shared):
        shared.lr = 99.0  # the caller reuses it for its next job
    hydra_c = c.hydra_cfg
    assert made == [hydra_c] and hydra_c is not shared and hydra_c.lr == 0.3
    assert hydra_c.hydra.runtime.output_dir == str(tmp_path / "c" / "7") and OmegaConf.is_readonly(hydra_c.hydra)
    hydra_a = OmegaConf.to_yaml(OmegaConf.masked_copy(hydra_c, ["hydra"])).replace(str(tmp_path / "c"), str(tmp_path / "a"))
    assert hydra_a == OmegaConf.to_yaml(a.hydra_cfg)
    assert OmegaConf.to_yaml(c.cfg) == OmegaConf.to_yaml(a.cfg) and len(made) == 1  # the task config: a copy of it


def test_a_config_whose_making_fails_is_made_again_at_the_next_read():
    from vi_sweep.launch.job_dirs import _JobReturn

    attempts = []

    def make():
        attempts.append(1)
        if len(attempts) == 1:
            raise KeyboardInterrupt  # a Ctrl-C while it composes
        return OmegaConf.create({"lr": 0.3})

    ret = _JobReturn(lambda: ret.hydra_cfg, make)
    with pytest.raises(KeyboardInterrupt):
        ret.cfg  # noqa: B018
    assert ret.cfg.lr == 0.3 and ret.hydra_cfg is ret.cfg and len(attempts) == 2


def test_a_failing_task_is_a_failed_return_not_an_exception(compose, tmp_path):
    def fails(cfg):
        raise RuntimeError("boom")

    before = HydraConfig.instance().cfg
    (_, a), (_, b) = both(compose, tmp_path, fails)
    assert a.status == b.status == JobStatus.FAILED and str(b._return_value) == "boom"
    assert HydraConfig.instance().cfg is before  # Hydra's current config is restored


def test_hydra_job_chdir_runs_the_task_in_the_job_dir_and_comes_back(compose, tmp_path):
    cwd = os.getcwd()
    (dir_a, a), (dir_b, b) = both(compose, tmp_path, task, "hydra.job.chdir=true")
    assert a.return_value["cwd"] == str(dir_a) and b.return_value["cwd"] == str(dir_b)
    assert b.working_dir == str(dir_b) and os.getcwd() == cwd


def _adds_a_key(cfg) -> bool:
    try:
        cfg.lr_typo = 1.0
    except Exception:  # noqa: BLE001 - ConfigAttributeError: struct mode, as run_job's task config
        return False
    return True


KEPT: list = []


class KeepsConfigs(Callback):
    def on_job_end(self, config, job_return, **kwargs) -> None:
        KEPT.append(config)


def test_the_task_config_refuses_new_keys_as_run_jobs_does(compose, tmp_path):
    (_, a), (_, b) = both(compose, tmp_path, _adds_a_key)
    assert a.return_value is False and b.return_value is False


def test_a_callback_that_keeps_the_jobs_config_keeps_it_whole(compose, tmp_path):
    cfg, context = compose(tmp_path / "b")
    with open_dict(cfg):
        cfg.hydra.callbacks = {"keep": {"_target_": f"{__name__}.KeepsConfigs"}}
    write_job_dir(HydraContext(config_loader=context.config_loader, callbacks=Callbacks(cfg)), cfg, tmp_path / "b" / "7", task)
    assert KEPT[-1].lr == 0.3 and KEPT[-1].hydra.job.num == 7


@pytest.mark.parametrize("text", ["run \U0001F680", "a\x85b", "x\ty " * 30, "line one \n line two " * 8, ""])
def test_to_yaml_falls_back_to_the_python_emitter_where_libyaml_writes_differently(text):
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    container = {"note": text, "items": [text], text: 1}
    python = yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=get_omega_conf_dumper())
    assert to_yaml(container) == python


def test_to_yaml_is_omegaconfs(compose, tmp_path):
    cfg, _ = compose(tmp_path)
    with open_dict(cfg):
        cfg.odd = {"yes": "yes", "num": "10", "inf": ".inf", "null_str": "null", "unicode": "σ_min", "long": "x" * 200}
    assert to_yaml(OmegaConf.to_container(cfg, enum_to_str=True)) == OmegaConf.to_yaml(cfg)


def test_to_yaml_remembers_entries_without_mixing_up_values_python_calls_equal():
    # to_yaml keeps each mapping entry's text; 1, True and 1.0 (and 0.0, -0.0) are equal keys
    # in Python but YAML writes them differently, at every depth, in any order.
    import pathlib

    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    def python(container):
        return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=get_omega_conf_dumper())

    shared = ["a", "b"]
    containers = []
    for value in (1, True, 1.0, 0.0, -0.0, None, "1", "true", "", "x y " * 30, [1, True], {}, [], {"deep": 1.0}, {"deep": True}):
        containers.append({"hydra": {"job": {"num": value, "name": "app"}, "run": {"dir": "out"}}, "lr": value, value if isinstance(value, (str, int, float)) else "k": 0})
    containers.append({"twice": shared, "again": shared})  # an anchor and an alias
    for length in (99, 100, 121, 125, 130):  # PyYAML writes a long key as "? key" then ": value"; libyaml from another length
        containers.append({"hydra": {"k" * length: {"a": 1}, "b": 2}, "k" * length: 1})
    containers.append({"hydra": {"": {"a": 1}, "line\nbreak": {"a": 1}}})
    containers.append({"path": pathlib.PurePosixPath("/tmp/x"), "n": 1})  # not a plain value: emitted whole
    for container in containers + containers[::-1]:
        assert to_yaml(container) == python(container), container
