"""One Hydra job directory, as Hydra's ``run_job`` writes it, at a fraction of its cost.

Hydra's ``run_job`` costs about 20 ms a job: two masked and two deep copies of the composed
config (~100 kB of OmegaConf nodes, ~2.5 ms each), three YAML files rendered by PyYAML's
pure-Python emitter (~4 ms) and a fresh logging configuration. The batched launcher trains a
job of the reference grid in about as long, so ``run_job`` would double a sweep's wall time.

:func:`write_job_dir` takes the same steps in the same order -- set ``hydra.runtime.output_dir``,
make the directory (and ``chdir`` into it if ``hydra.job.chdir``), configure the job's logging,
write ``.hydra/{config,hydra,overrides}.yaml``, ``on_job_start``, the task under
``hydra.job.env_set``, ``on_job_end`` -- with one ``to_container`` of the config and libyaml's
C emitter where it writes what PyYAML's Python emitter writes (:func:`to_yaml`, with OmegaConf's
own quoting of strings), so the files are byte for byte ``OmegaConf.to_yaml``'s
(``tests/test_job_dirs.py`` compares them with ``run_job``'s). The
config it is given is the job's own, freshly composed: it is not copied, it becomes the
:class:`JobReturn`'s ``hydra_cfg`` (with the task's keys too, where ``run_job``'s copy holds only
``hydra``), and while the job runs it is what ``HydraConfig.get()`` reads from -- or, with
``own_config``, a config the caller reuses for its next job, and the job's own is made when the
:class:`JobReturn`'s configs are read.

No JAX here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Hashable

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, _flush_loggers, configure_log, env_override
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf._utils import OmegaConfDumper, get_omega_conf_dumper

_Dumper: Any = getattr(yaml, "CDumper", yaml.Dumper)  # libyaml when PyYAML has it (it nearly always does)


class _YamlDumper(_Dumper):  # type: ignore[misc,valid-type]
    """PyYAML's full dumper (as ``OmegaConf.to_yaml``) with OmegaConf's string representer:
    strings that would read back as a bool, int or float are quoted."""


_YamlDumper.add_representer(str, OmegaConfDumper.str_representer)
_ANALYZER = yaml.emitter.Emitter(None)


@functools.lru_cache(maxsize=65536)  # a sweep's configs repeat almost every string
def _emitters_agree(text: str) -> bool:
    """Whether libyaml writes ``text`` byte for byte as PyYAML's Python emitter does.

    They agree on plain and single-quoted scalars of printable ASCII (and newlines): the styles
    of everything in a vi_sweep/Hydra config. They differ on double-quoted ones (line folding),
    characters outside printable ASCII, and an empty key (see :func:`_libyaml_safe`); for those the
    Python emitter is used.
    """
    if not text:
        return True
    if not all(c == "\n" or " " <= c <= "~" for c in text):
        return False
    return bool(_ANALYZER.analyze_scalar(text).allow_single_quoted)


def _libyaml_safe(node: Any) -> bool:
    if isinstance(node, str):
        return _emitters_agree(node)
    if isinstance(node, dict):
        return all(_short_key(key) and _libyaml_safe(key) and _libyaml_safe(value) for key, value in node.items())
    if isinstance(node, list):
        return all(_libyaml_safe(item) for item in node)
    return True


def _short_key(key: Any) -> bool:
    """A key both emitters write as ``key: ...`` on one line. PyYAML writes a long key (from about
    120 characters), an empty one or one that spans lines as ``? key`` and ``: value``, and
    libyaml does not always agree with it on where that starts."""
    text = key if isinstance(key, str) else repr(key)
    return 0 < len(text) < 100 and "\n" not in text


def to_yaml(container: Any) -> str:
    """``OmegaConf.to_yaml`` of a plain container (from ``OmegaConf.to_container(cfg, enum_to_str=True)``),
    with libyaml's emitter where it writes the same bytes (:func:`_emitters_agree`), and each
    mapping entry's text remembered.

    The jobs of a sweep write nearly the same ``hydra.yaml`` (4-5 kB, ~1.3 ms to emit): only a
    few entries (``hydra.job.num``, ``hydra.runtime.output_dir``, the overrides) differ. A block
    mapping's entries are emitted one after another, each starting on its own line at its
    depth's indentation, so the text of ``key: value`` at depth ``n`` is the same wherever it
    appears: kept in a bounded cache, computed by emitting it under ``n`` placeholder keys.
    A container holding the same list or dict twice (which YAML writes as an anchor and an
    alias) is emitted whole.
    """
    if type(container) is not dict or not container or _shares_containers(container):
        return _emit(container)
    try:
        return "".join(_entry_text(0, _frozen(key), key, value) for key, value in container.items())
    except _NotPlain:  # a value of another type (a Path, a user's object): no cache key for it
        return _emit(container)


def _emit(container: Any) -> str:
    dumper = _YamlDumper if _libyaml_safe(container) else get_omega_conf_dumper()
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=dumper)


def _entry_text(depth: int, frozen_key: Hashable, key: Any, value: Any) -> str:
    """The YAML text of the mapping entry ``key: value`` at ``depth`` (cached by its frozen form)."""
    if not _short_key(key):  # written as "? key" and ": value": not an entry of its own line
        raise _NotPlain(key)
    cache_key = (depth, frozen_key, _frozen(value))
    text = _ENTRY_TEXTS.get(cache_key)
    if text is None:
        if type(value) is dict and value:
            text = _head_text(depth, frozen_key, key) + "".join(_entry_text(depth + 1, _frozen(k), k, v) for k, v in value.items())
        else:
            text = "".join(_emit(_under(depth, {key: value})).splitlines(keepends=True)[depth:])
        if len(text) <= _ENTRY_TEXT_MAX_CHARS:  # a large entry is rarely repeated whole (a job's own hydra node)
            if len(_ENTRY_TEXTS) >= _ENTRY_TEXTS_MAX:
                _ENTRY_TEXTS.pop(next(iter(_ENTRY_TEXTS)))  # the oldest: bounded for sweeps of any size
            _ENTRY_TEXTS[cache_key] = text
    return text


@functools.lru_cache(maxsize=4096)
def _head_text(depth: int, frozen_key: Hashable, key: Any) -> str:
    """The line ``key:`` that opens a nested mapping at ``depth``."""
    return _emit(_under(depth, {key: {"x": None}})).splitlines(keepends=True)[depth]


def _under(depth: int, mapping: dict) -> dict:
    for _ in range(depth):
        mapping = {"x": mapping}
    return mapping


_ENTRY_TEXTS: dict[Hashable, str] = {}
_ENTRY_TEXTS_MAX = 8192
_ENTRY_TEXT_MAX_CHARS = 1024  # with the frozen keys: at most a few tens of MB


class _NotPlain(Exception):
    pass


_SCALARS = (int, float, bool, type(None), bytes)


def _frozen(value: Any) -> Hashable:
    """A hashable form of a plain value that tells apart what YAML writes differently (``1``,
    ``True`` and ``1.0`` are equal in Python; ``0.0`` and ``-0.0`` too)."""
    kind = type(value)
    if kind is str:
        return value
    if kind is dict:
        return ("dict", tuple((_frozen(k), _frozen(v)) for k, v in value.items()))
    if kind is list:
        return ("list", tuple(_frozen(item) for item in value))
    if kind in _SCALARS:
        return (kind.__name__, repr(value))
    raise _NotPlain(kind)


def _shares_containers(container: Any) -> bool:
    seen: set[int] = set()
    stack = [container]
    while stack:
        node = stack.pop()
        if type(node) in (dict, list):
            if id(node) in seen:
                return True
            seen.add(id(node))
            stack.extend(node.values() if type(node) is dict else node)
    return False


def write_job_dir(
    hydra_context: HydraContext,
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    task_function: Callable[[DictConfig], Any],
    *,
    task_reads_config: bool = True,
    own_config: Callable[[], DictConfig] | None = None,
) -> JobReturn:
    """Run ``task_function`` as Hydra's ``run_job`` would for the composed job config ``cfg``.

    ``output_dir`` is the job's directory (``hydra.sweep.dir``/``hydra.sweep.subdir`` as the
    caller resolved them). Hydra's current config is restored afterwards; the task's exception
    is returned in a FAILED :class:`JobReturn`, as ``run_job`` does.

    ``task_reads_config=False``: the task has what it needs already (the batched launcher's holds
    the job's resolved values) and is called with None; the task config ``run_job`` would pass
    it (a masked copy of ``cfg``, ~1.5 ms) is then made only if ``JobReturn.cfg`` is read.

    ``own_config``: ``cfg`` is a config the caller reuses for its next job (it holds this job's
    values only while this call runs, and leaves it as it came; callbacks must neither keep nor
    change it), and this makes the job's own, equal one: ``JobReturn.hydra_cfg`` (and ``cfg``)
    are made from it when read (a composition at that time: its ``hydra.runtime.cwd`` is the
    working directory then).
    """
    callbacks = hydra_context.callbacks
    hydra_config = HydraConfig.instance()
    previous_hydra_cfg, old_cwd = hydra_config.cfg, os.getcwd()
    output_dir = os.path.abspath(output_dir)
    # What this call changes on cfg, to undo on a reused one.
    came_with = (
        "???" if OmegaConf.is_missing(cfg.hydra.runtime, "output_dir") else cfg.hydra.runtime.output_dir,
        cfg.hydra._get_node_flag("readonly"),
    )
    _set_output_dir(cfg, output_dir, hydra_readonly=True)  # read-only as HydraConfig.set_config leaves it
    # HydraConfig.get() returns ``cfg.hydra`` of whatever it holds: the job's own config here,
    # without set_config's masked copy.
    hydra_config.cfg = cfg
    try:
        plain = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
        assert isinstance(plain, dict)
        hydra_plain = {"hydra": plain.pop("hydra")}
        task_keys = [key for key in cfg if key != "hydra"]
        ret = _JobReturn(
            None if task_reads_config else lambda: _task_config(ret.hydra_cfg, task_keys),
            None if own_config is None else functools.partial(_own_job_config, own_config, output_dir),
        )
        if own_config is None:
            # run_job's hydra_cfg is a copy holding only ``hydra``; this is the job's own config
            # (its ``hydra`` node is that copy's), not copied again, and never changed afterwards:
            # a callback may keep it.
            ret.hydra_cfg = cfg
        if task_reads_config:
            ret.cfg = _task_config(cfg, task_keys)  # made now, as run_job makes it: the task may change cfg while it runs
        ret.overrides = list(hydra_plain["hydra"]["overrides"]["task"])
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if cfg.hydra.job.chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()
        configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
        if cfg.hydra.output_subdir is not None:
            hydra_output = Path(output_dir) / str(cfg.hydra.output_subdir)
            hydra_output.mkdir(parents=True, exist_ok=True)
            for name, container in (("config.yaml", plain), ("hydra.yaml", hydra_plain), ("overrides.yaml", ret.overrides)):
                (hydra_output / name).write_text(to_yaml(container), encoding="utf-8")
        with env_override(cfg.hydra.job.env_set):
            callbacks.on_job_start(config=cfg, task_function=task_function)
            try:
                ret.return_value = task_function(ret.cfg if task_reads_config else None)
                ret.status = JobStatus.COMPLETED
            except Exception as err:  # noqa: BLE001 - run_job's contract: the job failed, the sweep goes on
                ret.return_value = err
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=cfg, job_return=ret)
        return ret
    finally:
        hydra_config.cfg = previous_hydra_cfg
        os.chdir(old_cwd)
        if own_config is not None:  # the caller reuses cfg: as it came
            _set_output_dir(cfg, *came_with)


def _task_config(cfg: DictConfig, task_keys: list) -> DictConfig:
    """The task's config as ``run_job`` makes it: every key but ``hydra``, with the root's flags."""
    task_cfg = OmegaConf.masked_copy(cfg, task_keys)
    for flag in ("struct", "readonly"):  # masked_copy drops the root's flags; run_job's deep copy keeps them
        task_cfg._set_flag(flag, cfg._get_node_flag(flag))
    return task_cfg


def _own_job_config(own_config: Callable[[], DictConfig], output_dir: str) -> DictConfig:
    """The job's own config, as :func:`write_job_dir` leaves the one it is given."""
    cfg = own_config()
    _set_output_dir(cfg, output_dir, hydra_readonly=True)
    return cfg


def _set_output_dir(cfg: DictConfig, output_dir: str, hydra_readonly: bool | None) -> None:
    """Set ``hydra.runtime.output_dir`` (``"???"``: missing) and the ``hydra`` node's read-only flag
    (None: inherited) of a job config."""
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = output_dir
    OmegaConf.set_readonly(cfg.hydra, hydra_readonly)


class _MadeWhenRead:
    """A field of :class:`_JobReturn` made by its maker (if it has one) the first time it is read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, ret: Any, owner: type | None = None) -> Any:
        if ret is None:
            return self
        makers = ret.__dict__.setdefault("_makers", {})
        if self.name in makers:
            ret.__dict__[f"_{self.name}"] = makers[self.name]()  # if it raises, the next read tries again
            del makers[self.name]
        return ret.__dict__.get(f"_{self.name}")

    def __set__(self, ret: Any, value: Any) -> None:
        ret.__dict__.setdefault("_makers", {}).pop(self.name, None)
        ret.__dict__[f"_{self.name}"] = value


class _JobReturn(JobReturn):
    """A :class:`JobReturn` whose ``cfg`` (the task's config) and ``hydra_cfg`` (the job's config)
    are made on first read. Hydra's basic sweeper never reads them, nor does a searching sweeper
    (they read ``return_value``); a callback or sweeper that does gets the configs ``run_job``
    would have given it -- unless a callback changed the job's config in ``on_job_start`` or
    ``on_job_end`` (``run_job`` copies it before either; the copy here is made when read).
    Pickled (Hydra's ``PickleJobInfoCallback``, a sweeper's checkpoint) it is a plain
    :class:`JobReturn`, both made first."""

    cfg = _MadeWhenRead()  # type: ignore[assignment]
    hydra_cfg = _MadeWhenRead()  # type: ignore[assignment]

    def __init__(
        self, make_cfg: Callable[[], DictConfig] | None = None, make_hydra_cfg: Callable[[], DictConfig] | None = None, /, **fields: Any
    ) -> None:
        super().__init__(**fields)  # dataclasses.replace passes every field
        makers = {"cfg": make_cfg, "hydra_cfg": make_hydra_cfg}
        self.__dict__["_makers"] = {name: make for name, make in makers.items() if make is not None and name not in fields}

    def __reduce__(self):
        return JobReturn, (), {field.name: getattr(self, field.name) for field in dataclasses.fields(JobReturn)}
