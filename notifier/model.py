"""The values that flow through the notifier: watches, snapshots, changes, events.

Every type here is a frozen, keyword-only dataclass. Pydantic lives only at
the config edge (``notifier.config``), which turns a config file into these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

ChangeKind = Literal["created", "updated", "deleted"]
DeliveryStatus = Literal["pending", "delivered", "dead"]

JSON = Any
"""A value decoded from JSON: dict, list, str, int, float, bool or None."""

# Log lines and error texts mask secrets as substrings only from this
# length on: a two- or three-letter password also spells parts of ordinary
# words ("ok", "run"), and replacing those garbles every line while guarding
# next to nothing. A shorter secret still never reaches a log or an error,
# because neither ever quotes a secret in the first place; masking is the
# second line of defence.
MIN_SECRET_LENGTH = 6


def canonical_json(value: JSON) -> str:
    """Serialise ``value`` the same way every time (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """Format an aware datetime as ISO 8601 in UTC with a ``Z`` suffix."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_isoformat(text: str) -> datetime:
    """Parse what :func:`isoformat` wrote back into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass(frozen=True, kw_only=True)
class Project:
    """An Atleta project: its 4-character code and display name."""

    id: str
    name: str


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """When a watch polls: every ``interval`` seconds, or on a ``cron`` line."""

    interval: float | None = None
    cron: str | None = None
    jitter: float = 0.0
    timezone: str = "UTC"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A condition that turns a change into an event.

    A change passes when its kind is in ``kinds`` (all kinds when empty),
    at least one path in ``fields`` changed (any when empty), and, with
    ``when`` (``"waitlist_size >= 50"``), the condition went from false on
    the previous record to true on the new one. ``channels`` narrows where
    the events of this rule go (the watch's channels when empty).
    """

    kinds: tuple[ChangeKind, ...] = ()
    fields: tuple[str, ...] = ()
    when: str | None = None
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Watch:
    """One query polled for one project on one schedule.

    ``records`` is the dotted path from ``data`` to the record list (or to
    the single object when ``single``). ``token`` is the resolved secret the
    poll sends, or None for a public watch; it is kept out of ``repr`` and
    equality so that it never lands in a log line.
    """

    project: Project
    name: str
    entity: str
    query: str
    records: str
    key: str = "id"
    preset: str | None = None
    single: bool = False
    paginate: bool = True
    per_page: int = 100
    public: bool = False
    variables: Mapping[str, JSON] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    channels: tuple[str, ...] = ()
    schedule: Schedule = field(default_factory=lambda: Schedule(interval=300.0))
    enabled: bool = True
    notify_baseline: bool = False
    failure_threshold: int = 3
    vanish_share: float = 0.5
    token: str | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        """``PROJECT/name``, the watch's name everywhere (logs, CLI, tables)."""
        return f"{self.project.id}/{self.name}"

    def fingerprint(self) -> str:
        """A hash of what decides the records; a new value re-baselines."""
        shape = {
            "query": self.query,
            "records": self.records,
            "key": self.key,
            "single": self.single,
            "ignore": sorted(self.ignore),
            "variables": self.variables,
        }
        return hashlib.sha256(canonical_json(shape).encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class SnapshotRecord:
    """One record of a snapshot: its normalised content and that content's hash.

    ``text`` is the canonical JSON the hash was computed from, when the
    record was just hashed; the store writes it as is instead of encoding
    the record a second time (a large first poll spends a third of its
    commit on that). It takes no part in equality.
    """

    hash: str
    record: JSON
    text: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The last complete set of records of a watch.

    ``generation`` counts committed polls (0: never polled). ``missing``
    holds the keys that a walk could not prove deleted, with how many
    walks in a row have missed them; they are still part of ``records``.
    """

    watch: str
    generation: int = 0
    fingerprint: str | None = None
    records: Mapping[str, SnapshotRecord] = field(default_factory=dict)
    missing: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FieldChange:
    """One changed dotted path of a record, with its value before and after."""

    path: str
    before: JSON
    after: JSON

    def to_json(self) -> dict[str, JSON]:
        """The ``changes[]`` item of the event JSON."""
        return {"path": self.path, "before": self.before, "after": self.after}


@dataclass(frozen=True, kw_only=True)
class Change:
    """A record created, updated or deleted between two snapshots.

    ``record`` is None for a deletion and ``previous`` is None for a
    creation.
    """

    kind: ChangeKind
    key: str
    record: JSON
    previous: JSON
    changes: tuple[FieldChange, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Event:
    """A change as delivered, with an id stable across retries and re-diffs.

    ``type`` is ``<entity>.<kind>`` (``registration.created``) or, for the
    notifier's own alerts, ``watch.failing``, ``watch.recovered`` and
    ``channel.failing``. ``watch`` is the watch's name within its project.
    """

    id: str
    type: str
    occurred_at: datetime
    project: Project
    watch: str
    key: str | None
    record: JSON
    previous: JSON
    changes: tuple[FieldChange, ...] = ()

    @property
    def kind(self) -> str:
        """The part of ``type`` after the last dot (``created``)."""
        return self.type.rsplit(".", 1)[-1]

    @property
    def entity(self) -> str:
        """The part of ``type`` before the last dot (``registration``)."""
        return self.type.rsplit(".", 1)[0]

    def to_json(self) -> dict[str, JSON]:
        """The event JSON of the contract: webhook body and ``history --json``."""
        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": isoformat(self.occurred_at),
            "project": {"id": self.project.id, "name": self.project.name},
            "watch": self.watch,
            "key": self.key,
            "record": self.record,
            "previous": self.previous,
            "changes": [change.to_json() for change in self.changes],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> Event:
        """Rebuild an event from what :meth:`to_json` returned."""
        return cls(
            id=data["id"],
            type=data["type"],
            occurred_at=parse_isoformat(data["occurred_at"]),
            project=Project(id=data["project"]["id"], name=data["project"]["name"]),
            watch=data["watch"],
            key=data["key"],
            record=data["record"],
            previous=data["previous"],
            changes=tuple(
                FieldChange(path=c["path"], before=c["before"], after=c["after"])
                for c in data["changes"]
            ),
        )


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where one delivery goes: a channel and the index of one of its URLs.

    A webhook channel has the single target 0. Apprise URLs carry bot
    tokens and passwords, so only the index is stored, never the URL.
    """

    channel: str
    index: int = 0


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One event to one channel target, with its attempts and status."""

    id: int
    event_id: str
    channel: str
    target: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class PollCommit:
    """Everything one poll writes, in one transaction.

    It is applied only if the watch is still at ``expected_generation``.
    ``upserts`` and ``deletes`` turn the old snapshot into the new one;
    ``missing`` replaces the watch's held-missing keys; one pending
    delivery is created per (event id, target) pair in ``deliveries``.
    """

    watch: str
    expected_generation: int
    fingerprint: str
    upserts: Mapping[str, SnapshotRecord]
    deletes: tuple[str, ...]
    missing: Mapping[str, int]
    events: tuple[Event, ...]
    deliveries: tuple[tuple[str, Target], ...]
    replace_all: bool = False
    """True on a baseline or re-baseline: drop every old record first."""


@dataclass(frozen=True, kw_only=True)
class Channel:
    """A named destination: Apprise URLs, or one signed webhook.

    ``urls`` and ``secrets`` carry credentials (bot tokens, passwords,
    ``whsec_`` keys) and are kept out of ``repr``; only a channel's name and
    a URL's index are ever stored or logged. ``secrets[0]`` signs; every
    entry signs during a secret rotation. ``events`` holds event type
    patterns (``registration.*``) the channel accepts, all when empty.
    ``digest_interval`` (seconds) or ``digest_cron`` collect events into one
    message; ``quiet_hours`` (start, end) defers delivery in ``timezone``.
    ``flood_cap`` is the most messages a minute (0: no cap).
    """

    name: str
    kind: Literal["apprise", "webhook"]
    urls: tuple[str, ...] = field(repr=False)
    format: Literal["auto", "markdown", "html", "text"] = "auto"
    digest_interval: float | None = None
    digest_cron: str | None = None
    quiet_hours: tuple[str, str] | None = None
    timezone: str = "UTC"
    flood_cap: int = 10
    title_template: str | None = None
    body_template: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)
    timeout: float = 15.0
    events: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[Target, ...]:
        """One target per URL (a webhook has exactly one)."""
        return tuple(Target(channel=self.name, index=i) for i in range(len(self.urls)))


@dataclass(frozen=True, kw_only=True)
class WatchState:
    """What the store knows about a watch's health and size."""

    watch: str
    project: str
    name: str
    generation: int = 0
    records: int = 0
    last_poll_at: datetime | None = None
    last_success_at: datetime | None = None
    consecutive_failures: int = 0
    last_error_kind: str | None = None
    last_error: str | None = None
    failing_alerted: bool = False
    held: int = 0  # snapshot records missing from a walk, held until confirmed
