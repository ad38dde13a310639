"""Composing thousands of sweep jobs quickly: one Hydra composition per *shape* of override list.

Hydra composes every job of a sweep from scratch (defaults list, yaml files, merges): about
50-100 ms per job for vi_sweep's config, and the basic sweeper composes each job twice (once to
validate the batch, once in the launcher). For a 10,000-job grid that is minutes of pure
overhead before any training.

Most jobs of a grid differ only in *leaf values* (``lr=0.1`` vs ``lr=0.3``). Such overrides
cannot change the defaults list -- Hydra applies them to the composed config after composition
(``ConfigLoaderImpl._load_configuration_impl``) -- so two jobs whose override lists agree in
everything but those values compose to the same config up to those values and the bookkeeping
derived from the override list (``hydra.overrides.task``, ``hydra.job.override_dirname``).

:class:`TemplateComposer` wraps Hydra's config loader: the first job of each shape is composed by
Hydra itself and kept as a template; every other job of that shape is a copy of the template
with its value overrides applied by Hydra's own override code. Anything else (config group
choices, ``+key``/``++key``/``~key``, ``hydra.*`` keys, dict or list values, which OmegaConf
*merges* into the old value, keys that are not leaves) is part of the shape, so such jobs fall
back to a full composition. The result equals ``load_sweep_config`` exactly
(``tests/test_compose.py`` compares them node for node).

The template is kept pickled: unpickling a composed config takes about 0.4 ms against 2.4 ms
for ``copy.deepcopy``, and a derived job about 1.5 ms in all. A caller that only reads a job's
config and drops it before composing the next (validation, collecting fields) can have it
composed into one reused copy of the template instead (:meth:`TemplateComposer.scratch_sweep_config`,
about 0.5 ms).

A caller that needs only the job's task values (everything but ``hydra``, as plain Python) gets
them without any config nodes (:meth:`TemplateComposer.plain_task`, a few microseconds): the
template's values with the job's value overrides set, each distinct override line converted by
Hydra's own override code once per shape -- a grid of 18,000 jobs has about 1,000 distinct lines.
That holds when nothing in the template's task part is an interpolation (which might read an
overridden value); otherwise the job is composed.

No JAX here: Hydra plugins import this module at start-up.
"""

from __future__ import annotations

import pickle
from typing import Any, Hashable, List, NamedTuple, Optional, Sequence, Tuple

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.types import RunMode
from omegaconf import Container, DictConfig, OmegaConf, open_dict, read_write

from vi_sweep.launch.plain import to_plain


class PlainTask(NamedTuple):
    """A job's config without config nodes (:meth:`TemplateComposer.plain_task`)."""

    values: dict  # the task part (every key but ``hydra``) as plain values, interpolations resolved
    hydra: dict  # its shape's ``hydra`` node, unresolved (interpolations as their text): the same for
    # every job of the shape but hydra.job.num/id, hydra.overrides.task and hydra.job.override_dirname


class TemplateComposer(ConfigLoader):
    """A :class:`~hydra.core.config_loader.ConfigLoader` that reuses one composition per override shape.

    Every method but :meth:`load_sweep_config` delegates to the wrapped loader.

    Parameters
    ----------
    loader
        Hydra's config loader (``hydra_context.config_loader``).
    """

    def __init__(self, loader: ConfigLoader) -> None:
        self._loader = loader
        self._parser = OverridesParser.create()
        self._templates: dict[Hashable, tuple[DictConfig, bytes]] = {}  # shape -> (master, pickled template)
        self._parsed: dict[str, tuple[Override, bool]] = {}  # override line -> (parsed, is a value override)
        self._scratch: dict[Hashable, DictConfig] = {}  # shape -> the reused copy of its template
        self._is_group: dict[str, bool] = {}  # key -> whether it names a config group
        self._plain: dict[Hashable, Optional[PlainTask]] = {}  # shape -> its template's (None: its task part holds interpolations)
        self._converted: dict[Tuple[Hashable, str], Any] = {}  # (shape, value override line) -> the value Hydra sets
        self.full_compositions = 0  # how many jobs Hydra composed from scratch
        self.reused_compositions = 0  # how many were copied from a template
        # While true, load_sweep_config only checks that a job composes, and returns its shape's
        # scratch config without the job's values in it: for a caller known to drop what it gets,
        # such as Hydra's basic sweeper validating a batch (Sweeper.validate_batch_is_legal).
        self.only_checking = False

    @property
    def wrapped(self) -> ConfigLoader:
        return self._loader

    # -- the fast path ----------------------------------------------------------------------

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        """``load_sweep_config`` of the wrapped loader, computed from a template when possible."""
        if self.only_checking:
            shape, parsed = self._shape(master_config, sweep_overrides)
            if self._has_template(shape, master_config):
                for override, value in parsed:
                    if value:
                        self._value_of(shape, override)  # raises as Hydra's composition would
                return self._scratch_of(shape)
        return self._compose(master_config, sweep_overrides, reuse=self.only_checking)

    def plain_task(self, master_config: DictConfig, sweep_overrides: List[str]) -> Optional[PlainTask]:
        """The job's task config (every key but ``hydra``) as plain values, interpolations resolved,
        equal to ``to_plain`` of each key of :meth:`load_sweep_config`, with its shape's unresolved
        ``hydra`` node -- or None where that needs a composition: the job's shape has no template
        yet, or its template's task part holds an interpolation. Raises as Hydra's composition
        would for a value it cannot set.

        Nested dicts the job does not override are shared with the template's values and other
        jobs' (and ``hydra`` with every job of the shape): read them, never change them.
        """
        shape, parsed = self._shape(master_config, sweep_overrides)
        if not self._has_template(shape, master_config):
            return None
        if shape not in self._plain:
            self._plain[shape] = _plain_values(pickle.loads(self._templates[shape][1]))
        template = self._plain[shape]
        if template is None:
            return None
        values = dict(template.values)
        for override, value in parsed:
            if value:
                *parents, leaf = override.key_or_group.split(".")
                node = values
                for key in parents:  # copy the dicts on the way down, share the rest
                    node[key] = dict(node[key])
                    node = node[key]
                node[leaf] = self._value_of(shape, override)
        self.reused_compositions += 1
        return PlainTask(values, template.hydra)

    def _shape(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> tuple[Hashable, list[tuple[Override, bool]]]:
        parsed = [self._parse(line) for line in sweep_overrides]
        # Two jobs share a template if they agree in everything but their value overrides' values.
        shape = (id(master_config),) + tuple(("value", o.key_or_group) if value else ("other", o.input_line) for o, value in parsed)
        return shape, parsed

    def _has_template(self, shape: Hashable, master_config: DictConfig) -> bool:
        master, _ = self._templates.get(shape, (None, None))
        return master is master_config  # holding the master keeps its id from being reused

    def _scratch_of(self, shape: Hashable) -> DictConfig:
        if shape not in self._scratch:
            self._scratch[shape] = pickle.loads(self._templates[shape][1])
        return self._scratch[shape]

    def _value_of(self, shape: Hashable, override: Override) -> Any:
        """The plain value Hydra's override code sets for a value override line of this shape (cached)."""
        key = (shape, override.input_line)
        if key not in self._converted:
            scratch = self._scratch_of(shape)
            ConfigLoaderImpl._apply_overrides_to_config([override], scratch)
            self._converted[key] = to_plain(OmegaConf.select(scratch, override.key_or_group))
        return self._converted[key]

    def scratch_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        """The same config as :meth:`load_sweep_config`, to be read and dropped before the next call.

        A job whose shape has a template is composed into one copy of that template, reused for
        every job of the shape (each sets the same keys anew): no unpickling, no new nodes.
        """
        return self._compose(master_config, sweep_overrides, reuse=True)

    def _compose(self, master_config: DictConfig, sweep_overrides: List[str], *, reuse: bool) -> DictConfig:
        shape, parsed = self._shape(master_config, sweep_overrides)
        if not self._has_template(shape, master_config):
            cfg = self._loader.load_sweep_config(master_config, list(sweep_overrides))
            self.full_compositions += 1
            if all(_is_leaf(cfg, o.key_or_group) for o, value in parsed if value):
                self._templates[shape] = (master_config, pickle.dumps(cfg))
            return cfg
        self.reused_compositions += 1
        cfg = self._scratch_of(shape) if reuse else pickle.loads(self._templates[shape][1])
        return _apply_job_overrides(cfg, master_config, [o for o, _ in parsed], [o for o, value in parsed if value])

    def _parse(self, line: str) -> tuple[Override, bool]:
        """The parsed override and whether it is a value override (cached: the same lines recur across jobs)."""
        if line not in self._parsed:
            (override,) = self._parser.parse_overrides([line])
            self._parsed[line] = (override, self._is_value_override(override))
        return self._parsed[line]

    def _is_value_override(self, override: Override) -> bool:
        """``key=scalar`` on a config key: set after composition, never changes the defaults list."""
        if override.type != OverrideType.CHANGE or override.package is not None:
            return False
        if override.value_type != ValueType.ELEMENT or override.is_hydra_override():
            return False
        if isinstance(override.value(), (dict, list)):  # merged into the old value, not set
            return False
        return not self._names_a_group(override.key_or_group)

    def _names_a_group(self, key: str) -> bool:
        """Whether ``key`` is a config group (cached per key: each ``get_group_options`` call deep-copies
        Hydra's config repository, ~5 ms, and a grid has one override line per value, not per key)."""
        if key not in self._is_group:
            self._is_group[key] = bool(self._loader.get_group_options(key))
        return self._is_group[key]

    # -- plain delegation -------------------------------------------------------------------

    def load_configuration(
        self,
        config_name: Optional[str],
        overrides: List[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        return self._loader.load_configuration(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)

    def get_search_path(self):
        return self._loader.get_search_path()

    def get_sources(self):
        return self._loader.get_sources()

    def list_groups(self, parent_name: str) -> List[str]:
        return self._loader.list_groups(parent_name)

    def get_group_options(
        self,
        group_name: str,
        results_filter: Optional[ObjectType] = ObjectType.CONFIG,
        config_name: Optional[str] = None,
        overrides: Optional[List[str]] = None,
    ) -> List[str]:
        return self._loader.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(self, config_name: Optional[str], overrides: List[str], run_mode: RunMode) -> Any:
        return self._loader.compute_defaults_list(config_name, overrides, run_mode)


def _is_leaf(cfg: DictConfig, key: str) -> bool:
    value = OmegaConf.select(cfg, key, throw_on_missing=False, throw_on_resolution_failure=False)
    return not isinstance(value, Container)


def _plain_values(cfg: DictConfig) -> Optional[PlainTask]:
    """A composed config as a :class:`PlainTask`, or None if any of its task part is an
    interpolation or a missing value (what it resolves to may depend on the job)."""
    unresolved = OmegaConf.to_container(cfg, resolve=False)  # interpolations as their "${...}" text, missing values as "???"
    hydra = unresolved.pop("hydra")
    if _holds_interpolation(unresolved):
        return None
    return PlainTask({key: to_plain(cfg[key]) for key in cfg if key != "hydra"}, hydra)


def _holds_interpolation(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_interpolation(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_interpolation(item) for item in value)
    return isinstance(value, str) and ("${" in value or value == "???")


def _apply_job_overrides(
    cfg: DictConfig, master_config: DictConfig, parsed: Sequence[Override], value_overrides: List[Override]
) -> DictConfig:
    """Redo the per-job part of ``ConfigLoaderImpl._load_configuration_impl`` on a copy of the template."""
    ConfigLoaderImpl._apply_overrides_to_config(value_overrides, cfg)
    app_overrides = [o for o in parsed if not o.is_hydra_override()]
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task = [o.input_line for o in app_overrides]
        naming = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app_overrides, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys
        )
    OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
    return cfg
