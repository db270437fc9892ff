"""The resolved config: plain frozen values the rest of the notifier uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from notifier.model import Channel, Project, Watch

ENV_PREFIX = "ATLETA_NOTIFIER_"
DEFAULT_API_URL = "https://atleta.cc/api/graphql"
DEFAULT_SCHEMA_FILE = "atleta-schema.graphql"
CREDENTIAL_TOKEN = "atleta-token"
"""File name of the API token in ``$CREDENTIALS_DIRECTORY`` (systemd)."""

Loc = tuple[str | int, ...]

# ---------------------------------------------------------------------------
# The resolved config: plain frozen values the rest of the notifier uses.


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """How to reach the Atleta API and how politely.

    ``rate_limit`` is requests per second per token; ``schema`` is where
    ``schema pull`` saves the live schema (it may not exist yet).
    """

    url: str = DEFAULT_API_URL
    token: str | None = field(default=None, repr=False, compare=False)
    timeout: float = 30.0
    rate_limit: float = 1.0
    burst: int = 5
    concurrency: int = 4
    per_page: int = 100
    max_retries: int = 4
    schema: Path = Path(DEFAULT_SCHEMA_FILE)


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Where the SQLite file lives and how long events are kept."""

    path: Path
    retention_days: float | None = None
    retention_events: int | None = None


@dataclass(frozen=True, kw_only=True)
class DefaultsConfig:
    """Values every watch and channel takes unless it sets its own."""

    interval: float = 300.0
    jitter: float = 10.0
    failure_threshold: int = 3
    timezone: str = "UTC"
    vanish_share: float = 0.5


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """The optional health and Prometheus listener."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True, kw_only=True)
class Config:
    """A loaded, checked config: every watch resolved and ready to poll.

    ``schema_source`` says which schema the queries were checked against
    (``"pulled"`` or ``"bundled"``); ``warnings`` holds what deserves a
    look but does not stop the notifier.
    """

    path: Path
    api: ApiConfig
    storage: StorageConfig
    defaults: DefaultsConfig
    metrics: MetricsConfig
    projects: tuple[Project, ...]
    watches: tuple[Watch, ...]
    channels: Mapping[str, Channel]
    warnings: tuple[str, ...] = ()
    schema_source: Literal["pulled", "bundled"] = "bundled"
