"""The file's shape: value parsers and pydantic models, unknown keys forbidden."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from notifier.config.values import (
    DEFAULT_API_URL,
    ENV_PREFIX,
)
from notifier.diff import parse_condition

# ---------------------------------------------------------------------------
# Value parsers shared by the models.

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_HINT = 'expected a duration like "90s", "5m", "1h" or "1d"'


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"1h30m"`` or ``"45"``.

    :raises ValueError: when ``text`` is not a duration.
    """
    cleaned = text.strip().lower()
    try:
        return float(cleaned)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(cleaned)
    if not parts or _DURATION_PART.sub("", cleaned).strip():
        raise ValueError(f"{_DURATION_HINT}, got {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_DURATION_HINT}, got {value!r}")
    seconds = parse_duration(value) if isinstance(value, str) else float(value)
    if seconds < 0:
        raise ValueError(f"{_DURATION_HINT}, got a negative value {value!r}")
    return seconds


def _interval(value: object) -> float:
    seconds = _duration(value)
    if seconds < 1:
        raise ValueError(f"an interval must be at least 1 second, got {value!r}")
    return seconds


def _cron(text: str) -> str:
    try:
        CronTrigger.from_crontab(text)
    except ValueError as error:
        raise ValueError(
            f"expected a cron line of 5 fields like '*/5 * * * *': {error}"
        ) from None
    return text


def _timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name like 'Europe/Amsterdam'"
        ) from None
    return name


def _digest(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError:
        try:
            _cron(text)
        except ValueError:
            raise ValueError(
                f"expected a window like '1h' or a cron line like '0 8 * * *', "
                f"got {text!r}"
            ) from None
    return text


_CLOCK = r"(?:[01]\d|2[0-3]):[0-5]\d"
QUIET_HOURS = re.compile(rf"^\s*({_CLOCK})\s*-\s*({_CLOCK})\s*$")


def _quiet_hours(text: str) -> str:
    if not QUIET_HOURS.match(text):
        raise ValueError(f"expected a range like '22:00-07:00', got {text!r}")
    return text


def _when(text: str) -> str:
    # The rule engine's own parser, so that what loads is what runs.
    parse_condition(text)
    return text


Duration = Annotated[float, BeforeValidator(_duration)]
Interval = Annotated[float, BeforeValidator(_interval)]
Cron = Annotated[str, AfterValidator(_cron)]
TimeZone = Annotated[str, AfterValidator(_timezone)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]

# ---------------------------------------------------------------------------
# The file's shape: pydantic models, unknown keys forbidden at every level.


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ApiModel(_Table):
    """``[api]``."""

    url: Annotated[str, Field(pattern=r"^https?://\S+$")] = DEFAULT_API_URL
    token: str | None = None
    token_file: str | None = None
    timeout: Duration = 30.0
    rate_limit: Annotated[float, Field(gt=0)] = 1.0
    burst: Annotated[int, Field(ge=1)] = 5
    concurrency: Annotated[int, Field(ge=1)] = 4
    per_page: Annotated[int, Field(ge=1, le=250)] = 100
    max_retries: Annotated[int, Field(ge=0)] = 4
    schema_file: str | None = Field(default=None, alias="schema")


class StorageModel(_Table):
    """``[storage]``."""

    path: str | None = None
    retention_days: Annotated[float, Field(gt=0)] | None = None
    retention_events: Annotated[int, Field(ge=1)] | None = None


class DefaultsModel(_Table):
    """``[defaults]``."""

    interval: Interval = 300.0
    jitter: Duration = 10.0
    failure_threshold: Annotated[int, Field(ge=1)] = 3
    timezone: TimeZone = "UTC"
    vanish_share: Annotated[float, Field(gt=0, le=1)] = 0.5


class MetricsModel(_Table):
    """``[metrics]``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9464


class ChannelModel(_Table):
    """``[channels.NAME]``: Apprise URLs, or ``kind = "webhook"``."""

    kind: Literal["apprise", "webhook"] = "apprise"
    urls: list[str] = []
    url: str | None = None
    secret: Any = None
    secret_file: str | None = None
    format: Literal["auto", "markdown", "html", "text"] = "auto"
    digest: Annotated[str, AfterValidator(_digest)] | None = None
    quiet_hours: Annotated[str, AfterValidator(_quiet_hours)] | None = None
    timezone: TimeZone | None = None
    flood_cap: Annotated[int, Field(ge=0)] = 10
    title_template: str | None = None
    body_template: str | None = None
    timeout: Duration = 15.0
    events: list[Annotated[str, Field(pattern=r"^[a-z_*]+(\.[a-z_*]+)?$")]] = []


class RuleModel(_Table):
    """``[[projects.watches.rules]]``."""

    kinds: list[Literal["created", "updated", "deleted"]] = []
    fields: list[str] = []
    when: Annotated[str, AfterValidator(_when)] | None = None
    channels: list[str] = []


class WatchModel(_Table):
    """``[[projects.watches]]``."""

    preset: str | None = None
    query: str | None = None
    query_file: str | None = None
    name: Name | None = None
    records: str | None = None
    key: str | None = None
    entity: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    single: bool | None = None
    paginate: bool | None = None
    public: bool | None = None
    variables: dict[str, Any] = {}
    enabled: bool = True
    interval: Interval | None = None
    cron: Cron | None = None
    jitter: Duration | None = None
    ignore: list[str] = []
    rules: list[RuleModel] = []
    channels: list[str] | None = None
    baseline_events: bool = False
    per_page: Annotated[int, Field(ge=1, le=250)] | None = None
    failure_threshold: Annotated[int, Field(ge=1)] | None = None
    vanish_share: Annotated[float, Field(gt=0, le=1)] | None = None


class ProjectModel(_Table):
    """``[[projects]]``."""

    id: str
    name: str | None = None
    token: str | None = None
    token_file: str | None = None
    channels: list[str] = []
    watches: list[WatchModel] = []


class SettingsModel(BaseSettings):
    """The whole file; environment variables ``ATLETA_NOTIFIER_*`` override it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    api: ApiModel = ApiModel()
    storage: StorageModel = StorageModel()
    defaults: DefaultsModel = DefaultsModel()
    metrics: MetricsModel = MetricsModel()
    channels: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")], ChannelModel
    ] = {}
    projects: list[ProjectModel] = []


TABLES: dict[tuple[str, ...], type[BaseModel]] = {
    (): SettingsModel,
    ("api",): ApiModel,
    ("storage",): StorageModel,
    ("defaults",): DefaultsModel,
    ("metrics",): MetricsModel,
    ("channels", "*"): ChannelModel,
    ("projects", "*"): ProjectModel,
    ("projects", "*", "watches", "*"): WatchModel,
    ("projects", "*", "watches", "*", "rules", "*"): RuleModel,
}

SECRET_KEYS = frozenset({"token", "urls", "url", "secret", "secrets"})
"""Keys whose values are never shown in a message."""


class Environment(EnvSettingsSource):
    """Environment overrides read from a given mapping instead of ``os.environ``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(SettingsModel)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, None
        )
