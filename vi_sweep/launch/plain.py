"""OmegaConf nodes as plain Python values: the one conversion the launcher, the plugin and the schemas share."""

from __future__ import annotations

from typing import Any

from omegaconf import Container, OmegaConf


def to_plain(value: Any) -> Any:
    """An OmegaConf container as plain dicts and lists, interpolations resolved; anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
