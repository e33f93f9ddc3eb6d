"""The one error type of configuration problems and the check every section's `__post_init__` uses."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, raised before any compute, naming the field and the fix."""


def require(cond: bool, field_path: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{field_path}: {msg}")
