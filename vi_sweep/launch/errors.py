"""Configuration errors as one line: Hydra's and OmegaConf's multi-line errors, and vi_sweep's own.

Validation runs on the composed config (:func:`vi_sweep.launch.config.validate`), so whatever
Hydra composes from -- vi_sweep's ``conf/``, a ``--config-dir``, ``hydra.searchpath``, an
``+experiment=...`` file -- is judged by what the trainer can run. What Hydra cannot compose at
all (an option that is in no config directory, a key the config has no place for, a value of the
wrong type, an override it cannot parse) is raised by Hydra as a multi-line message;
:func:`describe` turns each into the one line vi_sweep prints (``vi_sweep: error: ...``, exit 2),
naming the key and what is allowed.
"""

from __future__ import annotations

import re
from typing import Optional

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from vi_sweep.launch.config import RULES, SCHEMAS, ConfigError, cannot_run, unknown_group_field, unknown_key
from vi_sweep.launch.options import LauncherOptionError

CONFIG_ERRORS = (ConfigError, LauncherOptionError, HydraException, OmegaConfBaseException)
"""What :func:`describe` turns into one line; anything else is a bug and keeps its traceback."""

_IN_CONFIG = re.compile(r"^In '(?P<group>[^']+)/(?P<option>[^'/]+)': ")
_SWEEP_IN_RUN = re.compile(r"^(?:Ambiguous value for argument|Sweep parameters) '(?P<override>[^']+)'")
_UNSUPPORTED_SWEEP = re.compile(r"does not support sweep type : (?P<kind>\w+)")
_MERGING_OVERRIDE = re.compile(r"^Error merging override (?P<override>.+)$")


def describe(err: BaseException) -> Optional[str]:
    """The one line (without the ``vi_sweep: error:`` prefix) for a configuration error, or None
    if ``err`` is not one (:data:`CONFIG_ERRORS`)."""
    if isinstance(err, (ConfigError, LauncherOptionError)):
        return str(err)
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {_first_line(err.message)}"
    if isinstance(err, MissingConfigException):
        return _missing_config(err)
    if isinstance(err, ConfigCompositionException):
        return _composition(err)
    if isinstance(err, HydraException):
        match = _UNSUPPORTED_SWEEP.search(str(err))
        if match:
            return (
                f"the basic sweeper runs grids (a,b,c  range()  glob()), not a {match['kind'].lower().replace('_', ' ')}: "
                "search it with hydra/sweeper=optuna (pip install hydra-optuna-sweeper; see conf/search/)"
            )
        return _joined(err)
    if isinstance(err, OmegaConfBaseException):
        return _omegaconf(err)
    return None


def _missing_config(err: MissingConfigException) -> str:
    """An option (or a schema an option selects) that is in no config directory of the search path."""
    missing = str(err.missing_cfg_file or "")
    group, _, option = missing.rpartition("/")
    schema_group = group.removeprefix("schema/")
    if group.startswith("schema/") and schema_group in SCHEMAS:  # an option that selects a schema the trainer has no builder for
        return str(cannot_run(schema_group, option))
    if group and err.options is not None:
        choices = ", ".join(err.options) or "(none: is the directory on the search path? --config-dir, hydra.searchpath)"
        return f"{group}={option} is not a known option; choose one of {choices}"
    if group:
        return f"{missing} is not in any config directory of the search path (--config-dir, hydra.searchpath)"
    return f"config {missing!r} not found (--config-name, --config-dir)"


def _composition(err: ConfigCompositionException) -> str:
    message = str(err)
    match = _SWEEP_IN_RUN.match(message)
    if match:
        return f"{match['override']} is a sweep: use `python -m vi_sweep multirun ...`"
    cause = err.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return _no_such_key(str(cause.full_key), cause)
    match = _MERGING_OVERRIDE.match(message)
    if match and isinstance(cause, ValidationError) and cause.full_key:
        return _bad_type(match["override"], str(cause.full_key), cause)
    match = _IN_CONFIG.match(message)
    if match:  # composing a group's option failed: a user's option the trainer has no schema for
        group, option = match["group"], match["option"]
        if group in SCHEMAS and option not in SCHEMAS[group] and "not in '" in message:
            return str(cannot_run(group, option))
    return _joined(err)


def _no_such_key(key: str, cause: OmegaConfBaseException) -> str:
    """A key the composed config has no place for: a typo at the top, or a field of another option of a group."""
    group, _, field = key.partition(".")
    if group == "hydra":  # Hydra's own config (a launcher's or sweeper's options)
        return f"{key}: {_first_line(str(cause))}"
    parent = cause.parent_node
    if field and group in SCHEMAS and parent is not None and "name" in parent:
        return str(unknown_group_field(group, parent["name"], field, [str(k) for k in parent.keys()]))
    return f"{unknown_key(key)} (a key of your own is added with +{key}=...)"


def _bad_type(override: str, key: str, cause: ValidationError) -> str:
    """A value of the wrong type for its key (``lr=abc``, ``num_mc=1.5``)."""
    rule = RULES.get(key)
    allowed = f"must be {rule.allowed}" if rule is not None else _first_line(str(cause))
    return f"{override} is invalid: {allowed}"


def _omegaconf(err: OmegaConfBaseException) -> str:
    where = f"{err.full_key}: " if getattr(err, "full_key", None) else ""
    return f"{where}{_first_line(str(err))}"


def _joined(err: BaseException) -> str:
    """Hydra's message on one line: its first line (and the second, if the first only introduces
    it), and its cause's first line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else _first_line(str(err))
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        text = f"{text}: {_first_line(str(cause))}"
    return text


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
