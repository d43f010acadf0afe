"""Settings given as a mapping: defaults filled in, unknown keys refused with the valid ones named.

Model, method, augmentation and search-index settings all come from YAML presets or
``key=value`` overrides, where a typo must be an error and never a silently ignored key.
"""

from __future__ import annotations

from typing import Any, Mapping

from vgssl_core.errors import ConfigError


def fill_defaults(given: Mapping[str, Any] | None, defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``defaults`` updated with ``given``; ``ConfigError`` naming ``what`` for a non-mapping or an unknown key."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{what} must be a mapping of keys to values, got {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {what} key '{unknown[0]}'; valid keys: {', '.join(defaults) or '(none)'}")
    return {**defaults, **given}
