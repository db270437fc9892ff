"""The config file: TOML plus environment, checked and turned into values.

:func:`load_config` reads one TOML file, expands ``${VAR}`` and
``${VAR:-default}`` references anywhere in it, lays environment overrides
(``ATLETA_NOTIFIER_API__TIMEOUT=5``) over it with pydantic-settings,
validates every table with unknown keys forbidden, resolves presets,
tokens, channels and schedules, and checks every query against a schema.
Every problem found is reported at once in one :class:`ConfigError`, one
line each, naming the file, the dotted key and the line where the key
sits. Secret values (tokens, Apprise URLs, webhook URLs and secrets) are
never repeated in a message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from notifier.config.builder import Builder
from notifier.config.fields import SettingsModel, parse_duration
from notifier.config.problems import (
    Problems,
    env_layer,
    expand,
    merge,
    read_toml,
    report_validation,
)
from notifier.config.values import (
    DEFAULT_API_URL,
    ApiConfig,
    Config,
    DefaultsConfig,
    Loc,
    MetricsConfig,
    StorageConfig,
)
from notifier.errors import ConfigError

__all__ = [
    "DEFAULT_API_URL",
    "ApiConfig",
    "Config",
    "ConfigError",
    "DefaultsConfig",
    "MetricsConfig",
    "StorageConfig",
    "load_config",
    "parse_duration",
]

# ---------------------------------------------------------------------------
# Loading.


def load_config(
    path: Path | str,
    *,
    environ: Mapping[str, str] | None = None,
    validate_queries: bool = True,
) -> Config:
    """Read, check and resolve the config file at ``path``.

    ``environ`` replaces ``os.environ`` (for ``${VAR}`` references, the
    ``ATLETA_NOTIFIER_*`` overrides and ``$CREDENTIALS_DIRECTORY``).
    ``validate_queries=False`` skips the schema check of the queries (for
    ``schema pull``, which must work while a query fails the old schema).

    :raises ConfigError: with every problem found, one line each.
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    text, raw = read_toml(path)
    env_values, env_keys = env_layer(path, environ)
    problems = Problems(path, text, env_keys)
    data = merge(expand(raw, (), environ, problems), env_values)
    settings, skipped = _validate(data, problems)
    if settings is None:
        raise ConfigError(problems.errors)

    builder = Builder(
        path=path,
        settings=settings,
        skipped=skipped,
        environ=environ,
        problems=problems,
        validate_queries=validate_queries,
    )
    config = builder.build()
    if problems.errors:
        raise ConfigError(problems.errors)
    return config


def _validate(
    data: dict[str, Any], problems: Problems
) -> tuple[SettingsModel | None, set[Loc]]:
    """Validate ``data``, setting bad values aside so that the rest is still checked.

    A bad value is dropped (its default applies and the problem is
    reported); if the file still does not validate, the watch, project or
    channel holding what is left is blanked and listed in the returned set.
    """
    skipped: set[Loc] = set()
    for attempt in range(4):
        try:
            return SettingsModel.model_validate(data), skipped
        except ValidationError as error:
            items = error.errors(include_url=False)
        report_validation(items, problems)
        for item in items:
            loc = tuple(item["loc"])
            if attempt < 2:
                problems.broken.add(_drop(data, loc))
            elif attempt == 2:
                skipped.add(_blank(data, loc))
    return None, skipped


def _drop(data: dict[str, Any], loc: tuple[Any, ...]) -> Loc:
    """Delete the value of the innermost key holding ``loc``; return that key."""
    if "[key]" in loc:
        key: Loc = loc[: loc.index("[key]")]
    else:
        named = [index for index, part in enumerate(loc) if isinstance(part, str)]
        key = loc[: named[-1] + 1] if named else loc[:1]
    _delete(data, key)
    return key


def _blank(data: dict[str, Any], loc: tuple[Any, ...]) -> Loc:
    """Replace the watch, project or channel holding ``loc`` by a blank one."""
    clean = tuple(part for part in loc if part != "[key]")
    if len(clean) >= 4 and clean[0] == "projects" and clean[2] == "watches":
        unit, blank = clean[:4], {}
    elif len(clean) >= 2 and clean[0] in ("projects", "channels"):
        unit, blank = clean[:2], {"id": "SKIP"} if clean[0] == "projects" else {}
    else:
        _delete(data, clean[:1])
        return clean[:1]
    try:
        container: Any = data
        for part in unit[:-1]:
            container = container[part]
        container[unit[-1]] = blank
    except (KeyError, IndexError, TypeError):
        _delete(data, unit[:1])
    return unit


def _delete(data: dict[str, Any], loc: Loc) -> None:
    container: Any = data
    try:
        for part in loc[:-1]:
            container = container[part]
        del container[loc[-1]]
    except (KeyError, IndexError, TypeError):
        pass
